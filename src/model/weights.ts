import type { Backend } from "../backend/backend.js";
import { type DType, decodeFloats, dtypeBytes, encodeFloats } from "../backend/dtype.js";
import { Tensor } from "../backend/tensor.js";
import { SafetensorsCheckpoint } from "../formats/safetensors.js";
import { ConfigError, type ModelConfig } from "./config.js";

/** Where weights come from, by Hugging Face tensor name. */
export interface WeightSource {
  readonly description: string;
  /** Bytes of all tensors, for progress reporting. */
  readonly totalBytes: number;
  info(name: string): { dtype: DType; shape: readonly number[] } | undefined;
  readInto(name: string, dest: Uint8Array): void;
  close(): void;
}

export class SafetensorsSource implements WeightSource {
  private ckpt: SafetensorsCheckpoint;
  constructor(readonly dir: string) {
    this.ckpt = new SafetensorsCheckpoint(dir);
  }
  get description(): string {
    return `${this.dir} (safetensors)`;
  }
  get totalBytes(): number {
    let n = 0;
    for (const t of this.ckpt.tensors.values()) n += t.byteLength;
    return n;
  }
  info(name: string) {
    return this.ckpt.get(name);
  }
  readInto(name: string, dest: Uint8Array): void {
    this.ckpt.readInto(this.ckpt.get(name)!, dest);
  }
  close(): void {
    this.ckpt.close();
  }
}

export interface LayerWeights<T = Tensor> {
  inputNorm: T;
  /** q, k and v projections stacked by rows: [(hq + 2·hkv)·d, hidden] */
  qkv: T;
  qkvBias?: T;
  qNorm?: T;
  kNorm?: T;
  o: T;
  oBias?: T;
  postNorm: T;
  /** gate and up projections stacked by rows: [2·intermediate, hidden] */
  gateUp: T;
  gateUpBias?: T;
  down: T;
  downBias?: T;
}

export interface LlamaWeights<T = Tensor> {
  embed: T;
  layers: LayerWeights<T>[];
  norm: T;
  lmHead: T;
}

export interface LoadOptions {
  /** dtype for matrices; default: as stored in the file. Norms and biases use the backend's activation dtype. */
  dtype?: DType;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

export class WeightError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WeightError";
  }
}

/**
 * Checks every tensor the config needs against the source (present, right
 * shape, fusable dtypes) without reading or allocating anything, and returns
 * the bytes the weights will take on the backend: a mismatch in the last layer
 * fails before the first one is read.
 */
export function checkLlamaWeights(config: ModelConfig, source: WeightSource, matrixDType: DType | undefined, vectorDType: DType): number {
  const checker = new Checker(source, matrixDType, vectorDType);
  readLlamaWeights(config, source, checker);
  return checker.bytes;
}

/**
 * Reads the weights of a Llama-family model onto the backend, one tensor at a
 * time straight into its destination (never a whole file in memory), after
 * checking every tensor's presence and shape. q/k/v and gate/up are fused into
 * single matrices so each is one matrix product.
 */
export function loadLlamaWeights(config: ModelConfig, source: WeightSource, backend: Backend, opts: LoadOptions = {}): LlamaWeights {
  const loader = new Loader(source, backend, opts);
  try {
    checkLlamaWeights(config, source, opts.dtype, backend.activationDType);
    return readLlamaWeights(config, source, loader);
  } catch (err) {
    loader.abandon();
    throw err;
  } finally {
    source.close();
  }
}

/**
 * The sizes in config.json against the tensors that show them, so a config
 * that does not belong to these weights (or has a corrupt size) is reported as
 * the key that is wrong rather than as a tensor that does not fit.
 */
export function checkConfigAgainstWeights(config: ModelConfig, source: WeightSource, where: string): void {
  const rows = (name: string) => source.info(name)?.shape[0];
  const sizes: [string, number, number | undefined, string][] = [
    ["hidden_size", config.hiddenSize, rows("model.norm.weight"), "model.norm.weight has % rows"],
    ["vocab_size", config.vocabSize, rows("model.embed_tokens.weight"), "model.embed_tokens.weight has % rows"],
    [
      "intermediate_size",
      config.intermediateSize,
      rows("model.layers.0.mlp.up_proj.weight"),
      "model.layers.0.mlp.up_proj.weight has % rows",
    ],
  ];
  // More layers in the files than in the config is fine (e.g. multi-token-prediction layers); fewer is not.
  const hasLayer = (l: number) => source.info(`model.layers.${l}.input_layernorm.weight`) !== undefined;
  if (!hasLayer(config.numLayers - 1)) {
    let present = 0;
    while (hasLayer(present)) present++;
    sizes.push(["num_hidden_layers", config.numLayers, present, "the weights have % layers"]);
  }
  for (const [key, want, got, what] of sizes) {
    if (got !== undefined && got !== want) {
      throw new ConfigError(`${where}: "${key}" is ${want}, but ${what.replace("%", String(got))}; the config does not match the weights`);
    }
  }
}

/** Give the weights' storages back (the tied LM head shares the embedding's). */
export function freeLlamaWeights(backend: Backend, w: LlamaWeights): void {
  const tensors = [w.embed, w.lmHead, w.norm];
  for (const layer of w.layers) tensors.push(...Object.values(layer).filter((t): t is Tensor => t instanceof Tensor));
  for (const storage of new Set(tensors.map((t) => t.storage))) backend.free(storage);
}

/** One fused parameter: matrices stacked by rows, or 1-D vectors concatenated. */
interface PartReader<T> {
  matrix(names: string[], rows: number[], cols: number, label: string): T;
  vectors(names: string[], sizes: number[], label: string): T;
}

function readLlamaWeights<T>(config: ModelConfig, source: WeightSource, r: PartReader<T>): LlamaWeights<T> {
  const { hiddenSize: H, headDim: D, numHeads: Hq, numKvHeads: Hkv, intermediateSize: I } = config;
  const vector = (name: string, n: number) => r.vectors([name], [n], name);
  const layers: LayerWeights<T>[] = [];
  for (let l = 0; l < config.numLayers; l++) {
    const p = `model.layers.${l}`;
    const qkvNames = ["q_proj", "k_proj", "v_proj"].map((n) => `${p}.self_attn.${n}`);
    const qkvRows = [Hq * D, Hkv * D, Hkv * D];
    layers.push({
      inputNorm: vector(`${p}.input_layernorm.weight`, H),
      qkv: r.matrix(
        qkvNames.map((n) => `${n}.weight`),
        qkvRows,
        H,
        `${p}.qkv`,
      ),
      qkvBias: config.qkvBias
        ? r.vectors(
            qkvNames.map((n) => `${n}.bias`),
            qkvRows,
            `${p}.qkv_bias`,
          )
        : undefined,
      qNorm: config.qkNorm ? vector(`${p}.self_attn.q_norm.weight`, D) : undefined,
      kNorm: config.qkNorm ? vector(`${p}.self_attn.k_norm.weight`, D) : undefined,
      o: r.matrix([`${p}.self_attn.o_proj.weight`], [H], Hq * D, `${p}.o_proj`),
      oBias: config.oBias ? vector(`${p}.self_attn.o_proj.bias`, H) : undefined,
      postNorm: vector(`${p}.post_attention_layernorm.weight`, H),
      gateUp: r.matrix([`${p}.mlp.gate_proj.weight`, `${p}.mlp.up_proj.weight`], [I, I], H, `${p}.gate_up`),
      gateUpBias: config.mlpBias ? r.vectors([`${p}.mlp.gate_proj.bias`, `${p}.mlp.up_proj.bias`], [I, I], `${p}.gate_up_bias`) : undefined,
      down: r.matrix([`${p}.mlp.down_proj.weight`], [H], I, `${p}.down_proj`),
      downBias: config.mlpBias ? vector(`${p}.mlp.down_proj.bias`, H) : undefined,
    });
  }
  const embed = r.matrix(["model.embed_tokens.weight"], [config.vocabSize], H, "embed_tokens");
  const norm = vector("model.norm.weight", H);
  const tied = config.tieWordEmbeddings || !source.info("lm_head.weight");
  const lmHead = tied ? embed : r.matrix(["lm_head.weight"], [config.vocabSize], H, "lm_head");
  return { embed, layers, norm, lmHead };
}

/** Checks names, shapes and dtypes and counts the bytes they will take; reads and allocates nothing. */
class Checker implements PartReader<number> {
  bytes = 0;

  constructor(
    private source: WeightSource,
    private matrixDType: DType | undefined,
    private vectorDType: DType,
  ) {}

  private require(name: string, shape: readonly number[]): { dtype: DType; shape: readonly number[] } {
    const info = this.source.info(name);
    if (!info) throw new WeightError(`${this.source.description}: tensor "${name}" is missing (expected shape [${shape}])`);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new WeightError(`${this.source.description}: tensor "${name}" has shape [${info.shape}], expected [${shape}]`);
    }
    return info;
  }

  matrix(names: string[], rows: number[], cols: number): number {
    const infos = names.map((n, i) => this.require(n, [rows[i]!, cols]));
    const fileDtype = infos[0]!.dtype;
    if (infos.some((x) => x.dtype !== fileDtype)) {
      throw new WeightError(`${this.source.description}: tensors ${names.join(", ")} must share one dtype to be fused`);
    }
    return this.count(rows.reduce((a, b) => a + b, 0) * cols, this.matrixDType ?? fileDtype);
  }

  vectors(names: string[], sizes: number[]): number {
    names.forEach((n, i) => this.require(n, [sizes[i]!]));
    return this.count(
      sizes.reduce((a, b) => a + b, 0),
      this.vectorDType,
    );
  }

  private count(numel: number, dtype: DType): number {
    const bytes = numel * dtypeBytes(dtype);
    this.bytes += bytes;
    return bytes;
  }
}

/** Reads tensors already checked by Checker onto the backend. */
class Loader implements PartReader<Tensor> {
  private done = 0;
  private allocated: Tensor[] = [];
  private readonly total: number;

  constructor(
    private source: WeightSource,
    private backend: Backend,
    private opts: LoadOptions,
  ) {
    this.total = source.totalBytes;
  }

  /** Matrices stacked by rows into one tensor, in the requested or stored dtype. */
  matrix(names: string[], rows: number[], cols: number, label: string): Tensor {
    const fileDtype = this.source.info(names[0]!)!.dtype;
    const total = rows.reduce((a, b) => a + b, 0);
    const out = this.alloc([total, cols], this.opts.dtype ?? fileDtype, label);
    let row = 0;
    names.forEach((name, i) => {
      this.readConverted(name, fileDtype, out.rows(row, rows[i]!));
      row += rows[i]!;
    });
    return out;
  }

  /** 1-D parameters concatenated, converted to the backend's activation dtype. */
  vectors(names: string[], sizes: number[], label: string): Tensor {
    const total = sizes.reduce((a, b) => a + b, 0);
    const values = new Float32Array(total);
    let at = 0;
    names.forEach((name, i) => {
      const { dtype } = this.source.info(name)!;
      const bytes = new Uint8Array(sizes[i]! * dtypeBytes(dtype));
      this.source.readInto(name, bytes);
      values.set(decodeFloats(bytes, dtype, sizes[i]!), at);
      at += sizes[i]!;
      this.progress(bytes.byteLength);
    });
    const out = this.alloc([total], this.backend.activationDType, label);
    this.backend.write(out, values);
    return out;
  }

  private readConverted(name: string, fileDtype: DType, dest: Tensor): void {
    const n = dest.numel;
    const bytes = new Uint8Array(n * dtypeBytes(fileDtype));
    this.source.readInto(name, bytes);
    this.backend.writeBytes(dest, fileDtype === dest.dtype ? bytes : encodeFloats(decodeFloats(bytes, fileDtype, n), dest.dtype));
    this.progress(bytes.byteLength);
  }

  private progress(bytes: number): void {
    this.done += bytes;
    this.opts.onProgress?.(this.done, Math.max(this.total, this.done));
  }

  private alloc(shape: number[], dtype: DType, label: string): Tensor {
    const t = this.backend.alloc(shape, dtype, "weights", label);
    this.allocated.push(t);
    return t;
  }

  /** Free what was loaded so far (a load that fails leaves nothing behind). */
  abandon(): void {
    for (const t of this.allocated) this.backend.free(t.storage);
    this.allocated = [];
  }
}

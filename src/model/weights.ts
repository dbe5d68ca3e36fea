import type { AllocOptions, Backend } from "../backend/backend.js";
import { type DType, elementType, isFloatType, tensorBytes } from "../backend/dtype.js";
import { Tensor } from "../backend/tensor.js";
import { SafetensorsCheckpoint } from "../formats/safetensors.js";
import { convertMatrix, decodeMatrix } from "../quant/convert.js";
import { ConfigError, type ModelConfig } from "./config.js";
import { Linear, type LinearPart } from "./linear.js";
import { quantMethod, type QuantMethod, type QuantizationName } from "./quant-method.js";

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

export interface LayerWeights<M = Linear, V = Tensor> {
  inputNorm: V;
  /** q, k and v projections stacked by output features: [(hq + 2·hkv)·d, hidden], with their biases (Qwen2) */
  qkv: M;
  qNorm?: V;
  kNorm?: V;
  o: M;
  postNorm: V;
  /** gate and up projections stacked by output features: [2·intermediate, hidden] */
  gateUp: M;
  down: M;
}

export interface LlamaWeights<M = Linear, V = Tensor> {
  embed: V;
  layers: LayerWeights<M, V>[];
  norm: V;
  lmHead: M;
}

export interface LoadOptions {
  /** dtype for matrices; default: as stored in the file. Norms and biases use the backend's activation dtype. */
  dtype?: DType;
  /** Quantize the matrices at load (--quantization): int8 or fp8 weights with per-channel scales. */
  quantization?: QuantizationName;
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
 * shape, a usable encoding) without reading or allocating anything, and returns
 * the bytes the weights will take on the backend: a mismatch in the last layer
 * fails before the first one is read.
 */
export function checkLlamaWeights(
  config: ModelConfig,
  source: WeightSource,
  opts: Omit<LoadOptions, "onProgress">,
  vectorDType: DType,
): number {
  const checker = new Checker(source, quantMethod(opts), vectorDType);
  readLlamaWeights(config, source, checker);
  return checker.bytes;
}

/**
 * Reads the weights of a Llama-family model onto the backend, one tensor at a
 * time straight into its destination (never a whole file in memory), after
 * checking every tensor's presence and shape. q/k/v and gate/up become single
 * Linear layers so that each is one matrix product where their encodings agree.
 */
export function loadLlamaWeights(config: ModelConfig, source: WeightSource, backend: Backend, opts: LoadOptions = {}): LlamaWeights {
  const loader = new Loader(source, backend, quantMethod(opts), opts);
  try {
    checkLlamaWeights(config, source, opts, backend.activationDType);
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
  const tensors = [w.embed, w.norm, ...w.lmHead.tensors()];
  for (const layer of w.layers) {
    for (const part of Object.values(layer)) {
      if (part instanceof Tensor) tensors.push(part);
      else if (part instanceof Linear) tensors.push(...part.tensors());
    }
  }
  for (const storage of new Set(tensors.map((t) => t.storage))) backend.free(storage);
}

/** One fused projection: matrices stacked by output features, with optional biases. */
interface LinearSpec {
  label: string;
  names: string[];
  rows: number[];
  cols: number;
  biasNames?: string[];
  /** The LM head: like the embedding table it keeps its stored encoding under --quantization (as vLLM's ParallelLMHead). */
  head?: boolean;
}

/** What the architecture's declaration asks a reader for: the one list of weights the checker, the loader and the plan share. */
interface PartReader<M, V> {
  linear(spec: LinearSpec): M;
  /** 1-D parameters concatenated (norm weights), in the activation dtype. */
  vectors(names: string[], sizes: number[], label: string): V;
  /** The token embedding table, kept in its stored encoding (never quantized at load). */
  table(name: string, rows: number, cols: number, label: string): V;
  /** The LM head when it is the embedding table. */
  tiedHead(embed: V, label: string): M;
}

function readLlamaWeights<M, V>(config: ModelConfig, source: WeightSource, r: PartReader<M, V>): LlamaWeights<M, V> {
  const { hiddenSize: H, headDim: D, numHeads: Hq, numKvHeads: Hkv, intermediateSize: I } = config;
  const vector = (name: string, n: number) => r.vectors([name], [n], name);
  const layers: LayerWeights<M, V>[] = [];
  for (let l = 0; l < config.numLayers; l++) {
    const p = `model.layers.${l}`;
    const qkvNames = ["q_proj", "k_proj", "v_proj"].map((n) => `${p}.self_attn.${n}`);
    const mlp = [`${p}.mlp.gate_proj`, `${p}.mlp.up_proj`];
    layers.push({
      inputNorm: vector(`${p}.input_layernorm.weight`, H),
      qkv: r.linear({
        label: `${p}.qkv`,
        names: qkvNames.map((n) => `${n}.weight`),
        rows: [Hq * D, Hkv * D, Hkv * D],
        cols: H,
        biasNames: config.qkvBias ? qkvNames.map((n) => `${n}.bias`) : undefined,
      }),
      qNorm: config.qkNorm ? vector(`${p}.self_attn.q_norm.weight`, D) : undefined,
      kNorm: config.qkNorm ? vector(`${p}.self_attn.k_norm.weight`, D) : undefined,
      o: r.linear({
        label: `${p}.o_proj`,
        names: [`${p}.self_attn.o_proj.weight`],
        rows: [H],
        cols: Hq * D,
        biasNames: config.oBias ? [`${p}.self_attn.o_proj.bias`] : undefined,
      }),
      postNorm: vector(`${p}.post_attention_layernorm.weight`, H),
      gateUp: r.linear({
        label: `${p}.gate_up`,
        names: mlp.map((n) => `${n}.weight`),
        rows: [I, I],
        cols: H,
        biasNames: config.mlpBias ? mlp.map((n) => `${n}.bias`) : undefined,
      }),
      down: r.linear({
        label: `${p}.down_proj`,
        names: [`${p}.mlp.down_proj.weight`],
        rows: [H],
        cols: I,
        biasNames: config.mlpBias ? [`${p}.mlp.down_proj.bias`] : undefined,
      }),
    });
  }
  const embed = r.table("model.embed_tokens.weight", config.vocabSize, H, "embed_tokens");
  const norm = vector("model.norm.weight", H);
  const tied = config.tieWordEmbeddings || !source.info("lm_head.weight");
  const lmHead = tied
    ? r.tiedHead(embed, "lm_head")
    : r.linear({ label: "lm_head", names: ["lm_head.weight"], rows: [config.vocabSize], cols: H, head: true });
  return { embed, layers, norm, lmHead };
}

/** A tensor of the architecture's declaration. */
export interface DeclaredTensor {
  /** Hugging Face name; per-layer tensors are named as layer 0's. */
  name: string;
  shape: readonly number[];
  role: "matrix" | "vector" | "table";
  /** One of these per layer. */
  perLayer: boolean;
}

/**
 * The tensors the architecture declares (readLlamaWeights, the one declaration the loader and
 * the checker read), for one layer and the model-level ones: what `tokamak plan` counts and the
 * converter checks a checkpoint against.
 */
export function declaredLlamaTensors(config: ModelConfig): DeclaredTensor[] {
  const out: DeclaredTensor[] = [];
  const perLayer = (name: string) => name.startsWith("model.layers.");
  const recorder: PartReader<null, null> = {
    linear(spec) {
      spec.names.forEach((name, i) => out.push({ name, shape: [spec.rows[i]!, spec.cols], role: "matrix", perLayer: perLayer(name) }));
      spec.biasNames?.forEach((name, i) => out.push({ name, shape: [spec.rows[i]!], role: "vector", perLayer: perLayer(name) }));
      return null;
    },
    vectors(names, sizes) {
      names.forEach((name, i) => out.push({ name, shape: [sizes[i]!], role: "vector", perLayer: perLayer(name) }));
      return null;
    },
    table(name, rows, cols) {
      out.push({ name, shape: [rows, cols], role: "table", perLayer: false });
      return null;
    },
    tiedHead: () => null,
  };
  const lmHead = { dtype: "f32" as DType, shape: [config.vocabSize, config.hiddenSize] };
  const source: WeightSource = {
    description: "the declaration",
    totalBytes: 0,
    info: (name) => (name === "lm_head.weight" && !config.tieWordEmbeddings ? lmHead : undefined),
    readInto: () => {},
    close: () => {},
  };
  readLlamaWeights({ ...config, numLayers: 1 }, source, recorder);
  return out;
}

/** A backend buffer's size: the element bytes rounded up to 4, as the allocators do. */
function bufferBytes(dtype: DType, numel: number): number {
  return Math.ceil(tensorBytes(dtype, numel) / 4) * 4;
}

/** The scale tensor beside an FP8 checkpoint's weight (llm-compressor / vLLM's name). */
function scaleName(weightName: string): string {
  return weightName.replace(/\.weight$/, ".weight_scale");
}

/** An FP8 weight needs its weight_scale: one for the tensor ([], [1]) or one per output row ([rows], [rows, 1]). */
function checkScale(source: WeightSource, weightName: string, rows: number): void {
  const name = scaleName(weightName);
  const info = source.info(name);
  if (!info) {
    const blockWise = source.info(weightName.replace(/\.weight$/, ".weight_scale_inv"));
    throw new WeightError(
      blockWise
        ? `${source.description}: "${weightName}" has block-wise FP8 scales (weight_scale_inv, as DeepSeek and Qwen3 FP8 checkpoints); supported are per-tensor and per-channel weight_scale`
        : `${source.description}: "${weightName}" is FP8 e4m3 but "${name}" is missing; expected its per-tensor or per-channel scale`,
    );
  }
  const n = info.shape.reduce((a, b) => a * b, 1);
  if (!isFloatType(info.dtype) || (n !== 1 && n !== rows) || (n === rows && info.shape[0] !== rows)) {
    throw new WeightError(
      `${source.description}: "${name}" is ${info.dtype} [${info.shape}]; expected a float scale per tensor ([] or [1]) or per output row ([${rows}] or [${rows}, 1])`,
    );
  }
}

/** How the matrices of one Linear are stored: one part per run of matrices sharing an encoding. */
function planParts(source: WeightSource, method: QuantMethod, spec: LinearSpec): { names: number[]; dtype: DType }[] {
  const parts: { names: number[]; dtype: DType }[] = [];
  spec.names.forEach((name, i) => {
    const file = source.info(name)!.dtype;
    const dtype = spec.head ? method.tableDType(file) : method.storedDType(file, spec.label);
    const last = parts[parts.length - 1];
    if (last && last.dtype === dtype) last.names.push(i);
    else parts.push({ names: [i], dtype });
  });
  return parts;
}

/** Checks names, shapes and encodings and counts the bytes they will take; reads and allocates nothing. */
class Checker implements PartReader<number, number> {
  bytes = 0;

  constructor(
    private source: WeightSource,
    private method: QuantMethod,
    private vectorDType: DType,
  ) {}

  private require(name: string, shape: readonly number[]): { dtype: DType; shape: readonly number[] } {
    const info = this.source.info(name);
    if (!info) throw new WeightError(`${this.source.description}: tensor "${name}" is missing (expected shape [${shape}])`);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new WeightError(`${this.source.description}: tensor "${name}" has shape [${info.shape}], expected [${shape}]`);
    }
    const block = elementType(info.dtype).blockSize;
    if (shape[shape.length - 1]! % block !== 0) {
      throw new WeightError(
        `${this.source.description}: tensor "${name}" is ${info.dtype} with rows of ${shape[shape.length - 1]}; rows must be whole ${block}-element blocks`,
      );
    }
    return info;
  }

  linear(spec: LinearSpec): number {
    spec.names.forEach((n, i) => {
      const info = this.require(n, [spec.rows[i]!, spec.cols]);
      if (elementType(info.dtype).kind === "channel") checkScale(this.source, n, spec.rows[i]!);
    });
    spec.biasNames?.forEach((n, i) => this.require(n, [spec.rows[i]!]));
    let bytes = 0;
    for (const part of planParts(this.source, this.method, spec)) {
      const rows = part.names.reduce((a, i) => a + spec.rows[i]!, 0);
      const stored = elementType(part.dtype);
      if (spec.cols % stored.blockSize !== 0) {
        throw new WeightError(`${spec.label}: rows of ${spec.cols} are not whole ${stored.blockSize}-element blocks of ${part.dtype}`);
      }
      bytes += bufferBytes(part.dtype, rows * spec.cols);
      if (this.method.scaled(part.dtype)) bytes += bufferBytes("f32", rows);
    }
    if (spec.biasNames)
      bytes += bufferBytes(
        this.vectorDType,
        spec.rows.reduce((a, b) => a + b, 0),
      );
    this.bytes += bytes;
    return bytes;
  }

  vectors(names: string[], sizes: number[]): number {
    names.forEach((n, i) => this.require(n, [sizes[i]!]));
    const bytes = bufferBytes(
      this.vectorDType,
      sizes.reduce((a, b) => a + b, 0),
    );
    this.bytes += bytes;
    return bytes;
  }

  table(name: string, rows: number, cols: number): number {
    const info = this.require(name, [rows, cols]);
    const bytes = bufferBytes(this.method.tableDType(info.dtype), rows * cols);
    this.bytes += bytes;
    return bytes;
  }

  tiedHead(): number {
    return 0;
  }
}

/** Reads tensors already checked by Checker onto the backend. */
class Loader implements PartReader<Linear, Tensor> {
  private done = 0;
  private allocated: Tensor[] = [];
  private readonly total: number;

  constructor(
    private source: WeightSource,
    private backend: Backend,
    private method: QuantMethod,
    private opts: LoadOptions,
  ) {
    this.total = source.totalBytes;
  }

  linear(spec: LinearSpec): Linear {
    const bias = spec.biasNames ? this.vectors(spec.biasNames, spec.rows, `${spec.label}.bias`) : undefined;
    const parts: LinearPart[] = [];
    let col = 0;
    for (const part of planParts(this.source, this.method, spec)) {
      const rows = part.names.reduce((a, i) => a + spec.rows[i]!, 0);
      const label = part.names.length === spec.names.length ? spec.label : `${spec.label}[${part.names.join(",")}]`;
      const weight = this.alloc([rows, spec.cols], part.dtype, label);
      const scale = this.method.scaled(part.dtype) ? this.alloc([rows], "f32", `${label}.scale`, { kernelResident: true }) : undefined;
      const scales = scale ? new Float32Array(rows) : undefined;
      let row = 0;
      for (const i of part.names) {
        const n = spec.rows[i]!;
        const bytes = this.readRaw(spec.names[i]!);
        const from = this.source.info(spec.names[i]!)!.dtype;
        const fileScales = elementType(from).kind === "channel" ? this.readScales(spec.names[i]!, n) : undefined;
        const conv = convertMatrix(bytes, from, n, spec.cols, part.dtype, fileScales);
        this.backend.writeBytes(weight.rows(row, n), conv.data);
        if (scales && conv.scales) scales.set(conv.scales, row);
        row += n;
      }
      if (scale && scales) this.backend.write(scale, scales);
      parts.push({ weight, scale, bias: bias?.rows(col, rows), col });
      col += rows;
    }
    return new Linear(spec.label, spec.cols, col, parts, this.method.name);
  }

  /** 1-D parameters concatenated, converted to the backend's activation dtype. */
  vectors(names: string[], sizes: number[], label: string): Tensor {
    const total = sizes.reduce((a, b) => a + b, 0);
    const values = new Float32Array(total);
    let at = 0;
    names.forEach((name, i) => {
      const { dtype } = this.source.info(name)!;
      values.set(decodeMatrix(this.readRaw(name), dtype, 1, sizes[i]!), at);
      at += sizes[i]!;
    });
    const out = this.alloc([total], this.backend.activationDType, label);
    this.backend.write(out, values);
    return out;
  }

  table(name: string, rows: number, cols: number, label: string): Tensor {
    const from = this.source.info(name)!.dtype;
    const dtype = this.method.tableDType(from);
    const out = this.alloc([rows, cols], dtype, label);
    this.backend.writeBytes(out, convertMatrix(this.readRaw(name), from, rows, cols, dtype).data);
    return out;
  }

  tiedHead(embed: Tensor, label: string): Linear {
    return new Linear(label, embed.shape[1]!, embed.shape[0]!, [{ weight: embed, col: 0 }], "none");
  }

  /** A per-channel checkpoint's weight_scale (per tensor or per output row) as one scale per row. */
  private readScales(weightName: string, rows: number): Float32Array {
    const name = scaleName(weightName);
    const info = this.source.info(name)!;
    const n = info.shape.reduce((a, b) => a * b, 1);
    const values = decodeMatrix(this.readRaw(name), info.dtype, 1, n);
    return n === 1 ? new Float32Array(rows).fill(values[0]!) : values;
  }

  private readRaw(name: string): Uint8Array {
    const info = this.source.info(name)!;
    const bytes = new Uint8Array(
      tensorBytes(
        info.dtype,
        info.shape.reduce((a, b) => a * b, 1),
      ),
    );
    this.source.readInto(name, bytes);
    this.progress(bytes.byteLength);
    return bytes;
  }

  private progress(bytes: number): void {
    this.done += bytes;
    this.opts.onProgress?.(this.done, Math.max(this.total, this.done));
  }

  private alloc(shape: number[], dtype: DType, label: string, opts?: AllocOptions): Tensor {
    const t = this.backend.alloc(shape, dtype, "weights", label, opts);
    this.allocated.push(t);
    return t;
  }

  /** Free what was loaded so far (a load that fails leaves nothing behind). */
  abandon(): void {
    for (const t of this.allocated) this.backend.free(t.storage);
    this.allocated = [];
  }
}

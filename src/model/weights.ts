import type { Backend } from "../backend/backend.js";
import { type DType, decodeFloats, dtypeBytes, encodeFloats } from "../backend/dtype.js";
import type { Tensor } from "../backend/tensor.js";
import { SafetensorsCheckpoint } from "../formats/safetensors.js";
import type { ModelConfig } from "./config.js";

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

export interface LayerWeights {
  inputNorm: Tensor;
  /** q, k and v projections stacked by rows: [(hq + 2·hkv)·d, hidden] */
  qkv: Tensor;
  qkvBias?: Tensor;
  qNorm?: Tensor;
  kNorm?: Tensor;
  o: Tensor;
  oBias?: Tensor;
  postNorm: Tensor;
  /** gate and up projections stacked by rows: [2·intermediate, hidden] */
  gateUp: Tensor;
  gateUpBias?: Tensor;
  down: Tensor;
  downBias?: Tensor;
}

export interface LlamaWeights {
  embed: Tensor;
  layers: LayerWeights[];
  norm: Tensor;
  lmHead: Tensor;
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
 * Reads the weights of a Llama-family model onto the backend, one tensor at a
 * time straight into its destination (never a whole file in memory), checking
 * every tensor's presence and shape. q/k/v and gate/up are fused into single
 * matrices so each is one matrix product.
 */
export function loadLlamaWeights(config: ModelConfig, source: WeightSource, backend: Backend, opts: LoadOptions = {}): LlamaWeights {
  const loader = new Loader(source, backend, opts);
  try {
    return readLlamaWeights(config, source, loader);
  } catch (err) {
    loader.abandon();
    throw err;
  } finally {
    source.close();
  }
}

function readLlamaWeights(config: ModelConfig, source: WeightSource, loader: Loader): LlamaWeights {
  const { hiddenSize: H, headDim: D, numHeads: Hq, numKvHeads: Hkv, intermediateSize: I } = config;
  const layerCount = config.numLayers;
  const layers: LayerWeights[] = [];
  for (let l = 0; l < layerCount; l++) {
    const p = `model.layers.${l}`;
    const qkvNames = ["q_proj", "k_proj", "v_proj"].map((n) => `${p}.self_attn.${n}`);
    const qkvRows = [Hq * D, Hkv * D, Hkv * D];
    layers.push({
      inputNorm: loader.vector(`${p}.input_layernorm.weight`, H),
      qkv: loader.matrix(
        qkvNames.map((n) => `${n}.weight`),
        qkvRows,
        H,
        `${p}.qkv`,
      ),
      qkvBias: config.qkvBias
        ? loader.vectors(
            qkvNames.map((n) => `${n}.bias`),
            qkvRows,
            `${p}.qkv_bias`,
          )
        : undefined,
      qNorm: config.qkNorm ? loader.vector(`${p}.self_attn.q_norm.weight`, D) : undefined,
      kNorm: config.qkNorm ? loader.vector(`${p}.self_attn.k_norm.weight`, D) : undefined,
      o: loader.matrix([`${p}.self_attn.o_proj.weight`], [H], Hq * D, `${p}.o_proj`),
      oBias: config.oBias ? loader.vector(`${p}.self_attn.o_proj.bias`, H) : undefined,
      postNorm: loader.vector(`${p}.post_attention_layernorm.weight`, H),
      gateUp: loader.matrix([`${p}.mlp.gate_proj.weight`, `${p}.mlp.up_proj.weight`], [I, I], H, `${p}.gate_up`),
      gateUpBias: config.mlpBias
        ? loader.vectors([`${p}.mlp.gate_proj.bias`, `${p}.mlp.up_proj.bias`], [I, I], `${p}.gate_up_bias`)
        : undefined,
      down: loader.matrix([`${p}.mlp.down_proj.weight`], [H], I, `${p}.down_proj`),
      downBias: config.mlpBias ? loader.vector(`${p}.mlp.down_proj.bias`, H) : undefined,
    });
  }
  const embed = loader.matrix(["model.embed_tokens.weight"], [config.vocabSize], H, "embed_tokens");
  const norm = loader.vector("model.norm.weight", H);
  const tied = config.tieWordEmbeddings || !source.info("lm_head.weight");
  const lmHead = tied ? embed : loader.matrix(["lm_head.weight"], [config.vocabSize], H, "lm_head");
  return { embed, layers, norm, lmHead };
}

class Loader {
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

  private require(name: string, shape: readonly number[]): { dtype: DType; shape: readonly number[] } {
    const info = this.source.info(name);
    if (!info) throw new WeightError(`${this.source.description}: tensor "${name}" is missing (expected shape [${shape}])`);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new WeightError(`${this.source.description}: tensor "${name}" has shape [${info.shape}], expected [${shape}]`);
    }
    return info;
  }

  /** Matrices stacked by rows into one tensor, in the requested or stored dtype. */
  matrix(names: string[], rows: number[], cols: number, label: string): Tensor {
    const infos = names.map((n, i) => this.require(n, [rows[i]!, cols]));
    const fileDtype = infos[0]!.dtype;
    const mixed = infos.find((x) => x.dtype !== fileDtype);
    if (mixed) throw new WeightError(`${this.source.description}: tensors ${names.join(", ")} must share one dtype to be fused`);
    const dtype = this.opts.dtype ?? fileDtype;
    const total = rows.reduce((a, b) => a + b, 0);
    const out = this.alloc([total, cols], dtype, label);
    let row = 0;
    names.forEach((name, i) => {
      this.readConverted(name, fileDtype, out.rows(row, rows[i]!));
      row += rows[i]!;
    });
    return out;
  }

  vector(name: string, n: number): Tensor {
    return this.vectors([name], [n], name);
  }

  /** 1-D parameters concatenated, converted to the backend's activation dtype. */
  vectors(names: string[], sizes: number[], label: string): Tensor {
    const total = sizes.reduce((a, b) => a + b, 0);
    const values = new Float32Array(total);
    let at = 0;
    names.forEach((name, i) => {
      const info = this.require(name, [sizes[i]!]);
      const bytes = new Uint8Array(sizes[i]! * dtypeBytes(info.dtype));
      this.source.readInto(name, bytes);
      values.set(decodeFloats(bytes, info.dtype, sizes[i]!), at);
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

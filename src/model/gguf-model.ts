/**
 * A GGUF file as a model: the hyper-parameters from its metadata (`{arch}.*` keys) as a
 * ModelConfig, and its tensors as a WeightSource under Hugging Face names, so the one weight
 * declaration (weights.ts) loads it. Quantized tensors keep their encoding: the bytes are read
 * once, straight into their backend tensor.
 *
 * llama.cpp's "llama" architecture stores the rows of Q and K (and their biases) permuted per head
 * for its interleaved RoPE; the source undoes that on read (whole rows move, so quantized rows
 * move intact) so that the forward pass sees Hugging Face's rotate-half layout.
 */
import { type DType, dtypeOfGgml, ELEMENT_TYPES, tensorBytes } from "../backend/dtype.js";
import { GgufFile, type GgufMetadata, type GgufTensorInfo, plainGgufValue } from "../formats/gguf.js";
import { FormatError } from "../formats/safetensors.js";
import { type Architecture, ConfigError, type ModelConfig, parseConfig } from "./config.js";
import { hfToGgufName } from "./gguf-names.js";
import type { WeightSource } from "./weights.js";

const ARCH_OF_GGUF: Record<string, Architecture> = {
  llama: "LlamaForCausalLM",
  qwen2: "Qwen2ForCausalLM",
  qwen3: "Qwen3ForCausalLM",
};

export function isGgufPath(path: string): boolean {
  return path.toLowerCase().endsWith(".gguf");
}

function metaValue(m: GgufMetadata, key: string): unknown {
  const v = m.get(key);
  return v === undefined ? undefined : plainGgufValue(v);
}

/** The GGUF architecture name, checked against those Tokamak runs. */
export function ggufArchitecture(m: GgufMetadata, path: string): string {
  const arch = metaValue(m, "general.architecture");
  if (typeof arch !== "string") throw new ConfigError(`${path}: no "general.architecture" string in the GGUF metadata`);
  if (!(arch in ARCH_OF_GGUF)) {
    throw new ConfigError(`${path}: GGUF architecture "${arch}" is not supported; supported: ${Object.keys(ARCH_OF_GGUF).join(", ")}`);
  }
  return arch;
}

/** The model's hyper-parameters from GGUF metadata, validated by the same rules as config.json. */
export function configFromGguf(file: GgufFile): ModelConfig {
  const m = file.metadata;
  const path = file.path;
  const arch = ggufArchitecture(m, path);
  const get = (key: string) => metaValue(m, `${arch}.${key}`);
  const embd = file.tensors.find((t) => t.name === "token_embd.weight");
  if (!embd) throw new FormatError(`${path}: no "token_embd.weight" tensor`);
  const tokens = metaValue(m, "tokenizer.ggml.tokens");
  const heads = get("attention.head_count");
  const hidden = get("embedding_length");
  const raw: Record<string, unknown> = {
    architectures: [ARCH_OF_GGUF[arch]],
    model_type: arch,
    hidden_size: hidden,
    intermediate_size: get("feed_forward_length"),
    num_hidden_layers: get("block_count"),
    num_attention_heads: heads,
    num_key_value_heads: get("attention.head_count_kv") ?? heads,
    head_dim: get("attention.key_length") ?? (typeof hidden === "number" && typeof heads === "number" ? hidden / heads : undefined),
    vocab_size: get("vocab_size") ?? (Array.isArray(tokens) ? tokens.length : embd.shape[0]),
    rms_norm_eps: get("attention.layer_norm_rms_epsilon"),
    rope_theta: get("rope.freq_base"),
    max_position_embeddings: get("context_length"),
    tie_word_embeddings: !file.tensors.some((t) => t.name === "output.weight"),
    attention_bias: arch === "llama" && file.tensors.some((t) => t.name === "blk.0.attn_q.bias"),
    bos_token_id: metaValue(m, "tokenizer.ggml.bos_token_id"),
    eos_token_id: metaValue(m, "tokenizer.ggml.eos_token_id"),
  };
  const scaling = get("rope.scaling.type");
  if (scaling === "linear") raw.rope_scaling = { rope_type: "linear", factor: get("rope.scaling.factor") };
  else if (scaling !== undefined && scaling !== "none") {
    throw new ConfigError(`${path}: "${arch}.rope.scaling.type" is "${String(scaling)}"; supported: none, linear`);
  }
  for (const [key, value] of Object.entries(raw)) if (value === undefined) delete raw[key];
  const config = parseConfig(raw, `${path} (GGUF metadata)`);
  const freqs = file.tensors.find((t) => t.name === "rope_freqs.weight");
  if (freqs) {
    if (freqs.typeName !== "F32" || freqs.shape.length !== 1 || freqs.shape[0] !== config.headDim / 2) {
      throw new FormatError(`${path}: rope_freqs.weight is ${freqs.typeName} [${freqs.shape}]; expected F32 [${config.headDim / 2}]`);
    }
    config.ropeScaling = { type: "factors", factors: Array.from(file.readFloats(freqs)) };
  }
  return config;
}

export class GgufSource implements WeightSource {
  private readonly byName: Map<string, GgufTensorInfo>;

  constructor(
    private readonly file: GgufFile,
    private readonly config: ModelConfig,
  ) {
    this.byName = new Map(file.tensors.map((t) => [t.name, t]));
  }

  get description(): string {
    return `${this.file.path} (GGUF)`;
  }

  get totalBytes(): number {
    return this.file.tensors.reduce((a, t) => a + t.byteLength, 0);
  }

  private lookup(name: string): GgufTensorInfo | undefined {
    const g = hfToGgufName(name);
    return g === undefined ? undefined : this.byName.get(g);
  }

  info(name: string): { dtype: DType; shape: readonly number[] } | undefined {
    const t = this.lookup(name);
    if (!t) return undefined;
    const dtype = dtypeOfGgml(t.ggmlType);
    if (!dtype || dtype === "i32") {
      const known = Object.values(ELEMENT_TYPES).flatMap((e) => (e.ggmlName && e.name !== "i32" ? [e.ggmlName] : []));
      throw new FormatError(`${this.file.path}: tensor "${t.name}" is ${t.typeName}; Tokamak computes with ${known.join(", ")}`);
    }
    return { dtype, shape: t.shape };
  }

  readInto(name: string, dest: Uint8Array): void {
    const t = this.lookup(name)!;
    const heads = this.permutedHeads(t.name);
    if (heads === 0) {
      this.file.readInto(t, dest);
      return;
    }
    const raw = new Uint8Array(t.byteLength);
    this.file.readInto(t, raw);
    const { dtype, shape } = this.info(name)!;
    const rowBytes = tensorBytes(dtype, shape.length > 1 ? shape[1]! : 1);
    const headDim = shape[0]! / heads;
    const half = headDim / 2;
    // Stored row 2j+i of a head is Hugging Face's row i·half + j.
    for (let h = 0; h < heads; h++) {
      for (let j = 0; j < half; j++) {
        for (let i = 0; i < 2; i++) {
          const from = (h * headDim + 2 * j + i) * rowBytes;
          dest.set(raw.subarray(from, from + rowBytes), (h * headDim + i * half + j) * rowBytes);
        }
      }
    }
  }

  /** Heads whose rows llama.cpp's "llama" converter interleaved in this tensor, or 0. */
  private permutedHeads(ggufTensor: string): number {
    if (this.config.architecture !== "LlamaForCausalLM" && this.config.architecture !== "MistralForCausalLM") return 0;
    if (/\.attn_q\.(weight|bias)$/.test(ggufTensor)) return this.config.numHeads;
    if (/\.attn_k\.(weight|bias)$/.test(ggufTensor)) return this.config.numKvHeads;
    return 0;
  }

  close(): void {
    this.file.close();
  }
}

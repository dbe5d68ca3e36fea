import { existsSync } from "node:fs";
import { join } from "node:path";
import { type DType, parseDType } from "../backend/dtype.js";
import { readJsonFile } from "../formats/regular-file.js";

/** Architectures written against the Llama forward pass, and what differs between them. */
export const ARCHITECTURES = {
  LlamaForCausalLM: { qkvBias: false, qkNorm: false },
  MistralForCausalLM: { qkvBias: false, qkNorm: false },
  Qwen2ForCausalLM: { qkvBias: true, qkNorm: false },
  Qwen3ForCausalLM: { qkvBias: false, qkNorm: true },
} as const;
export type Architecture = keyof typeof ARCHITECTURES;

export type RopeScaling =
  | { type: "none" }
  | { type: "linear"; factor: number }
  | { type: "llama3"; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number }
  /** A divisor per frequency, as GGUF files carry llama3 scaling (the rope_freqs tensor). */
  | { type: "factors"; factors: readonly number[] };

/** The hyper-parameters the forward pass needs, validated and with defaults filled in. */
export interface ModelConfig {
  architecture: Architecture;
  modelType: string;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** Bias on the q, k, v projections (Qwen2, or Llama with attention_bias). */
  qkvBias: boolean;
  /** Bias on the output projection (Llama with attention_bias). */
  oBias: boolean;
  mlpBias: boolean;
  /** Per-head RMSNorm on q and k before RoPE (Qwen3). */
  qkNorm: boolean;
  /** Mistral-style sliding window, or null for full attention. */
  slidingWindow: number | null;
  torchDtype: DType | null;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

export function loadConfig(modelDir: string): ModelConfig {
  const path = join(modelDir, "config.json");
  if (!existsSync(path)) throw new ConfigError(`${path}: not found; a Hugging Face model folder needs a config.json`);
  return parseConfig(readJsonFile(path, ConfigError), path);
}

export function parseConfig(raw: unknown, where: string): ModelConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new ConfigError(`${where}: expected a JSON object`);
  const c = raw as Record<string, unknown>;
  const archs = c.architectures;
  if (!Array.isArray(archs) || archs.length === 0 || typeof archs[0] !== "string") {
    throw new ConfigError(`${where}: missing "architectures"; expected e.g. ["LlamaForCausalLM"]`);
  }
  const architecture = archs[0] as string;
  if (!(architecture in ARCHITECTURES)) {
    throw new ConfigError(`${where}: unsupported architecture "${architecture}"; supported: ${Object.keys(ARCHITECTURES).join(", ")}`);
  }
  const arch = architecture as Architecture;
  const traits = ARCHITECTURES[arch];
  const int = (key: string, fallback?: number): number => {
    const v = c[key] ?? fallback;
    if (v === undefined) throw new ConfigError(`${where}: missing required key "${key}" (a positive integer)`);
    if (!Number.isInteger(v) || (v as number) <= 0 || (v as number) > MAX_INT32)
      throw new ConfigError(`${where}: "${key}" must be a positive integer at most ${MAX_INT32}, got ${JSON.stringify(v)}`);
    return v as number;
  };
  const num = (key: string, fallback: number): number => {
    const v = c[key] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0)
      throw new ConfigError(`${where}: "${key}" must be a positive number, got ${JSON.stringify(v)}`);
    return v;
  };
  const hiddenSize = int("hidden_size");
  const numHeads = int("num_attention_heads");
  const numKvHeads = int("num_key_value_heads", numHeads);
  const headDim = c.head_dim == null ? hiddenSize / numHeads : int("head_dim");
  if (!Number.isInteger(headDim))
    throw new ConfigError(`${where}: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads}`);
  if (numHeads % numKvHeads !== 0) {
    throw new ConfigError(`${where}: num_attention_heads ${numHeads} must be a multiple of num_key_value_heads ${numKvHeads}`);
  }
  if (headDim % 2 !== 0) throw new ConfigError(`${where}: head_dim ${headDim} must be even for rotary embeddings`);
  const attentionBias = c.attention_bias === true;
  // Qwen2 configs carry a sliding_window they do not use unless use_sliding_window is set; only a window in effect is checked.
  const windowed = arch === "Qwen2ForCausalLM" ? c.use_sliding_window === true : c.use_sliding_window !== false;
  const slidingWindow = windowed && c.sliding_window != null ? int("sliding_window") : null;
  const config: ModelConfig = {
    architecture: arch,
    modelType: typeof c.model_type === "string" ? c.model_type : arch,
    hiddenSize,
    intermediateSize: int("intermediate_size"),
    numLayers: int("num_hidden_layers"),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int("vocab_size"),
    rmsNormEps: num("rms_norm_eps", 1e-6),
    ropeTheta: num("rope_theta", 10000),
    ropeScaling: parseRopeScaling(c.rope_scaling, where),
    maxPositionEmbeddings: int("max_position_embeddings", 2048),
    tieWordEmbeddings: c.tie_word_embeddings === true,
    qkvBias: traits.qkvBias || attentionBias,
    oBias: attentionBias,
    mlpBias: c.mlp_bias === true,
    qkNorm: traits.qkNorm,
    slidingWindow,
    torchDtype: typeof c.torch_dtype === "string" ? parseDType(c.torch_dtype, `${where}: "torch_dtype"`) : null,
    bosTokenId: typeof c.bos_token_id === "number" ? c.bos_token_id : null,
    eosTokenIds: tokenIdList(c.eos_token_id),
  };
  checkTensorSizes(config, where);
  return config;
}

/** Sizes, token ids and positions are int32 in the kernels. */
const MAX_INT32 = 2 ** 31 - 1;
/** About twice the largest tensor of any released model (Llama 3.1 405B's embedding, 2.1e9 elements). */
const MAX_TENSOR_ELEMENTS = 2 ** 32;

/** A product of sizes no real checkpoint has means a corrupt config: say so before anything is sized by it. */
function checkTensorSizes(c: ModelConfig, where: string): void {
  const tensors: [string, [string, number][]][] = [
    [
      "model.embed_tokens.weight",
      [
        ["vocab_size", c.vocabSize],
        ["hidden_size", c.hiddenSize],
      ],
    ],
    [
      "q_proj.weight",
      [
        ["num_attention_heads", c.numHeads],
        ["head_dim", c.headDim],
        ["hidden_size", c.hiddenSize],
      ],
    ],
    [
      "mlp.gate_proj.weight",
      [
        ["intermediate_size", c.intermediateSize],
        ["hidden_size", c.hiddenSize],
      ],
    ],
  ];
  for (const [tensor, keys] of tensors) {
    const elements = keys.reduce((a, [, v]) => a * v, 1);
    if (elements > MAX_TENSOR_ELEMENTS) {
      throw new ConfigError(
        `${where}: ${keys.map(([k, v]) => `"${k}" ${v}`).join(" × ")} make ${tensor} ${elements.toExponential(2)} elements, ` +
          `more than any model's tensor (at most ${MAX_TENSOR_ELEMENTS}); the config is corrupt`,
      );
    }
  }
}

export function tokenIdList(v: unknown): number[] {
  if (typeof v === "number") return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === "number");
  return [];
}

function parseRopeScaling(v: unknown, where: string): RopeScaling {
  if (v == null) return { type: "none" };
  if (typeof v !== "object") throw new ConfigError(`${where}: "rope_scaling" must be an object or null`);
  const r = v as Record<string, unknown>;
  const type = r.rope_type ?? r.type;
  const factor = (): number => {
    if (typeof r.factor !== "number" || r.factor <= 0) throw new ConfigError(`${where}: rope_scaling.factor must be a positive number`);
    return r.factor;
  };
  switch (type) {
    case "default":
      return { type: "none" };
    case "linear":
      return { type: "linear", factor: factor() };
    case "llama3":
      return parseLlama3Scaling(r, factor(), where);
    default:
      throw new ConfigError(`${where}: rope_scaling type ${JSON.stringify(type)} is not supported; supported: default, linear, llama3`);
  }
}

function parseLlama3Scaling(r: Record<string, unknown>, factor: number, where: string): RopeScaling {
  const positive = (key: string, fallback: number): number => {
    const v = r[key] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0)
      throw new ConfigError(`${where}: rope_scaling.${key} must be a positive number, got ${JSON.stringify(v)}`);
    return v;
  };
  const lowFreqFactor = positive("low_freq_factor", 1);
  const highFreqFactor = positive("high_freq_factor", 4);
  // The blend between them divides by their difference.
  if (highFreqFactor <= lowFreqFactor) {
    throw new ConfigError(`${where}: rope_scaling.high_freq_factor ${highFreqFactor} must exceed low_freq_factor ${lowFreqFactor}`);
  }
  return {
    type: "llama3",
    factor,
    lowFreqFactor,
    highFreqFactor,
    originalMaxPositions: positive("original_max_position_embeddings", 8192),
  };
}

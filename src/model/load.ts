import { join } from "node:path";
import type { Backend, RopeTable } from "../backend/backend.js";
import { type DType, dtypeBytes } from "../backend/dtype.js";
import { loadConfig, type ModelConfig } from "./config.js";
import { LlamaModel, type ModelLimits, planActivations } from "./llama.js";
import { formatBytes, kvBytesPerTokenOf, ropeTableBytes } from "./memory-plan.js";
import { buildRopeTable } from "./rope.js";
import { GgufFile } from "../formats/gguf.js";
import { configFromGguf, GgufSource, isGgufPath } from "./gguf-model.js";
import type { QuantizationName } from "./quant-method.js";
import {
  checkConfigAgainstWeights,
  checkLlamaWeights,
  freeLlamaWeights,
  loadLlamaWeights,
  SafetensorsSource,
  type WeightSource,
} from "./weights.js";
import { ENGINE_DEFAULTS } from "../defaults.js";

export interface LoadModelOptions {
  /** Longest context served; default: the model's max_position_embeddings. */
  maxModelLen?: number;
  /**
   * Tokens the KV cache will hold, when the caller knows before loading (e.g.
   * from --kv-cache-memory): a longer max model len is refused before anything
   * is allocated rather than after the weights and rotary tables are built.
   */
  kvCacheTokens?: number;
  /** Most tokens per forward pass. */
  maxNumTokens?: number;
  /** Most sequences (logits rows) per forward pass. */
  maxNumSeqs?: number;
  /** dtype of the weight matrices; default: as stored. */
  dtype?: DType;
  /** Quantize the matrices at load: int8 or fp8 (e4m3) with per-channel scales. */
  quantization?: QuantizationName;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

export interface LoadedModel {
  config: ModelConfig;
  model: LlamaModel;
  maxModelLen: number;
}

/**
 * Load a Hugging Face model folder onto a backend: config, weights, rotary
 * tables and the activation arena. Everything is checked (tensor shapes, the
 * memory it will take) before the first allocation, and a load that fails
 * part-way gives back what it took.
 */
export function loadModel(modelPath: string, backend: Backend, opts: LoadModelOptions = {}): LoadedModel {
  const { config, source, where } = openModel(modelPath);
  const weightOpts = { dtype: opts.dtype, quantization: opts.quantization, backendDType: backend.capabilities.weightDType };
  let maxModelLen: number;
  let limits: ModelLimits;
  try {
    maxModelLen = resolveMaxModelLen(config, opts);
    limits = {
      maxNumTokens: opts.maxNumTokens ?? Math.min(ENGINE_DEFAULTS.maxNumBatchedTokens, maxModelLen),
      maxNumLogits: opts.maxNumSeqs ?? ENGINE_DEFAULTS.maxNumSeqs,
    };
    checkConfigAgainstWeights(config, source, where);
    const weightBytes = checkLlamaWeights(config, source, weightOpts, backend.activationDType);
    checkMemoryBudget(modelPath, config, backend, { weightBytes, maxModelLen, limits });
  } catch (err) {
    source.close();
    throw err;
  }
  const weights = loadLlamaWeights(config, source, backend, { ...weightOpts, onProgress: opts.onProgress });
  let rope: RopeTable | undefined;
  try {
    rope = buildRopeTable(backend, config, maxModelLen);
    return { config, model: new LlamaModel(config, weights, backend, rope, limits), maxModelLen };
  } catch (err) {
    if (rope) for (const t of [rope.cos, rope.sin]) backend.free(t.storage);
    freeLlamaWeights(backend, weights);
    throw err;
  }
}

/** The hyper-parameters of a Hugging Face folder (config.json) or a GGUF file (its metadata). */
export function loadModelConfig(modelPath: string): ModelConfig {
  if (!isGgufPath(modelPath)) return loadConfig(modelPath);
  const file = GgufFile.open(modelPath);
  try {
    return configFromGguf(file);
  } finally {
    file.close();
  }
}

/** A Hugging Face folder or a GGUF file: its config and its weights under Hugging Face names. */
export function openModel(modelPath: string): { config: ModelConfig; source: WeightSource; where: string } {
  if (isGgufPath(modelPath)) {
    const file = GgufFile.open(modelPath);
    try {
      const config = configFromGguf(file);
      return { config, source: new GgufSource(file, config), where: `${modelPath} (GGUF metadata)` };
    } catch (err) {
      file.close();
      throw err;
    }
  }
  const config = loadConfig(modelPath);
  return { config, source: new SafetensorsSource(modelPath), where: join(modelPath, "config.json") };
}

/** The requested length, or max_position_embeddings; within the sliding window and what the KV cache holds. */
function resolveMaxModelLen(config: ModelConfig, opts: LoadModelOptions): number {
  let len = opts.maxModelLen ?? config.maxPositionEmbeddings;
  if (!Number.isInteger(len) || len < 1) throw new RangeError(`the max model length must be a positive integer, got ${len}`);
  // Full attention equals sliding-window attention while the context fits in the window.
  if (config.slidingWindow !== null && len > config.slidingWindow) len = config.slidingWindow;
  if (opts.kvCacheTokens !== undefined && opts.kvCacheTokens < len) {
    const from = opts.maxModelLen === undefined ? " (max_position_embeddings in config.json)" : "";
    throw new RangeError(
      `the KV cache holds ${opts.kvCacheTokens} tokens, fewer than the max model length ${len}${from}; ` +
        `raise --kv-cache-memory or lower --max-model-len`,
    );
  }
  return len;
}

/**
 * Whatever the KV budget turns out to be, the weights, rotary tables,
 * activation arena and the KV cache of one full-length sequence must fit on
 * the device: refuse now instead of failing (or swapping) halfway through.
 */
function checkMemoryBudget(
  modelDir: string,
  config: ModelConfig,
  backend: Backend,
  s: { weightBytes: number; maxModelLen: number; limits: ModelLimits },
): void {
  const parts = {
    weights: s.weightBytes,
    "rotary tables": ropeTableBytes(config, s.maxModelLen),
    activations: planActivations(config, s.limits, dtypeBytes(backend.activationDType)).totalBytes,
    [`KV cache for one ${s.maxModelLen}-token sequence`]: s.maxModelLen * kvBytesPerTokenOf(config, backend.activationDType),
  };
  const need = Object.values(parts).reduce((a, b) => a + b, 0);
  const device = backend.memoryReport().device;
  if (need > device.totalBytes) {
    const list = Object.entries(parts).map(([what, bytes]) => `${what} ${formatBytes(bytes)}`);
    throw new RangeError(
      `${modelDir}: loading needs ${formatBytes(need)} (${list.join(", ")}), more than ${device.name} has (${formatBytes(device.totalBytes)}); ` +
        `lower --max-model-len (max_position_embeddings is ${config.maxPositionEmbeddings}) or use a smaller --dtype`,
    );
  }
}

import type { Backend } from "../backend/backend.js";
import type { DType } from "../backend/dtype.js";
import { loadConfig, type ModelConfig } from "./config.js";
import { LlamaModel } from "./llama.js";
import { buildRopeTable } from "./rope.js";
import { loadLlamaWeights, SafetensorsSource } from "./weights.js";

export interface LoadModelOptions {
  /** Longest context served; default: the model's max_position_embeddings. */
  maxModelLen?: number;
  /** Most tokens per forward pass. */
  maxNumTokens?: number;
  /** Most sequences (logits rows) per forward pass. */
  maxNumSeqs?: number;
  /** dtype of the weight matrices; default: as stored. */
  dtype?: DType;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

export interface LoadedModel {
  config: ModelConfig;
  model: LlamaModel;
  maxModelLen: number;
}

/** Load a Hugging Face model folder onto a backend: config, weights, rotary tables and the activation arena. */
export function loadModel(modelDir: string, backend: Backend, opts: LoadModelOptions = {}): LoadedModel {
  const config = loadConfig(modelDir);
  let maxModelLen = opts.maxModelLen ?? config.maxPositionEmbeddings;
  if (config.slidingWindow !== null && maxModelLen > config.slidingWindow) {
    // Full attention equals sliding-window attention while the context fits in the window.
    maxModelLen = config.slidingWindow;
  }
  const source = new SafetensorsSource(modelDir);
  const weights = loadLlamaWeights(config, source, backend, { dtype: opts.dtype, onProgress: opts.onProgress });
  const maxNumTokens = opts.maxNumTokens ?? Math.min(8192, maxModelLen);
  const rope = buildRopeTable(backend, config, maxModelLen);
  const model = new LlamaModel(config, weights, backend, rope, { maxNumTokens, maxNumLogits: opts.maxNumSeqs ?? 256 });
  return { config, model, maxModelLen };
}

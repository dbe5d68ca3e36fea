import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Backend } from "../backend/backend.js";
import { CpuBackend } from "../backend/cpu/cpu-backend.js";
import type { DType } from "../backend/dtype.js";
import { loadGenerationDefaults } from "../model/generation-config.js";
import { kvBytesPerToken } from "../model/llama.js";
import { loadModel, type LoadedModel } from "../model/load.js";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import { EngineCore, type EngineConfig, type RequestOutput } from "./engine-core.js";
import { ModelRunner } from "./model-runner.js";
import type { FinishReason } from "./request.js";
import type { TokenLogprob } from "./sampler.js";
import { resolveSamplingParams, type SamplingParams } from "./sampling-params.js";

export interface EngineOptions {
  maxModelLen?: number;
  /** Token budget per step (default 8192); longer prompts are prefilled in chunks. */
  maxNumBatchedTokens?: number;
  maxNumSeqs?: number;
  blockSize?: number;
  /** Bytes for the KV cache (CPU). */
  kvCacheMemory?: number;
  /** Or an exact number of KV blocks (overrides kvCacheMemory). */
  numBlocks?: number;
  enablePrefixCaching?: boolean;
  policy?: "fcfs" | "priority";
  dtype?: DType;
  threads?: number;
  /** Ignore generation_config.json's sampling defaults (vLLM's --generation-config vllm). */
  ignoreGenerationConfig?: boolean;
  /** Seeds the random streams of requests that give no seed of their own, so a run is reproducible. */
  seed?: number;
  onProgress?: (done: number, total: number) => void;
}

export const DEFAULT_KV_CACHE_MEMORY = 4 * 2 ** 30;

/** The engine's resolved settings, vLLM's defaults where not given. */
export function resolveEngineConfig(loaded: LoadedModel, backend: Backend, o: EngineOptions): EngineConfig {
  const blockSize = o.blockSize ?? 16;
  const perBlock = blockSize * kvBytesPerToken(loaded.config, backend);
  const numBlocks = o.numBlocks ?? Math.floor((o.kvCacheMemory ?? DEFAULT_KV_CACHE_MEMORY) / perBlock);
  const maxModelLen = loaded.maxModelLen;
  // Like vLLM: a KV cache that cannot hold one full-length request could never finish it.
  if (numBlocks * blockSize < maxModelLen) {
    throw new RangeError(
      `the KV cache holds ${numBlocks * blockSize} tokens (${numBlocks} blocks of ${blockSize}), fewer than the max model length ${maxModelLen}; ` +
        `raise --kv-cache-memory (needs ${Math.ceil(maxModelLen / blockSize) * perBlock} bytes) or lower --max-model-len`,
    );
  }
  return {
    blockSize,
    numBlocks,
    enablePrefixCaching: o.enablePrefixCaching ?? true,
    maxNumBatchedTokens: o.maxNumBatchedTokens ?? 8192,
    maxNumSeqs: o.maxNumSeqs ?? 256,
    maxModelLen,
    policy: o.policy ?? "fcfs",
  };
}

export interface CompletionOutput {
  index: number;
  text: string;
  tokenIds: number[];
  finishReason: FinishReason | null;
  stopReason: number | string | null;
  logprobs: { logprob: number; top?: TokenLogprob[] }[];
}

export interface GenerationResult {
  requestId: string;
  promptTokenIds: number[];
  numCachedTokens: number;
  outputs: CompletionOutput[];
}

/**
 * Offline inference, vLLM's `LLM` class: load a model, hand it many prompts,
 * get every completion back. Drives the same EngineCore as the server.
 */
export class LLM {
  readonly core: EngineCore;
  private nextId = 0;

  private constructor(
    readonly backend: Backend,
    readonly loaded: LoadedModel,
    readonly runner: ModelRunner,
    readonly tokenizer: Tokenizer | null,
    readonly samplingDefaults: Partial<SamplingParams>,
    config: EngineConfig,
    eos: number[],
  ) {
    this.core = new EngineCore(runner, config, eos, tokenizer);
  }

  private ownsBackend = false;

  /** Load a model folder. Without a backend, a CPU backend is made (and disposed by close()). */
  static open(modelDir: string, opts: EngineOptions = {}, backend?: Backend): LLM {
    if (!backend) {
      const own = new CpuBackend({ threads: opts.threads });
      try {
        const llm = LLM.open(modelDir, opts, own);
        llm.ownsBackend = true;
        return llm;
      } catch (err) {
        own.dispose();
        throw err;
      }
    }
    const maxNumBatchedTokens = opts.maxNumBatchedTokens ?? 8192;
    const loaded = loadModel(modelDir, backend, {
      maxModelLen: opts.maxModelLen,
      maxNumTokens: maxNumBatchedTokens,
      maxNumSeqs: opts.maxNumSeqs ?? 256,
      dtype: opts.dtype,
      onProgress: opts.onProgress,
    });
    let runner: ModelRunner | undefined;
    try {
      const config = resolveEngineConfig(loaded, backend, { ...opts, maxNumBatchedTokens });
      const tokenizer = existsSync(join(modelDir, "tokenizer.json")) ? Tokenizer.fromDir(modelDir) : null;
      const gen = loadGenerationDefaults(modelDir);
      const eos = [...new Set([...(tokenizer?.eosTokenIds ?? []), ...gen.eosTokenIds, ...loaded.config.eosTokenIds])];
      runner = new ModelRunner(loaded.model, { numBlocks: config.numBlocks, blockSize: config.blockSize, maxModelLen: loaded.maxModelLen });
      const llm = new LLM(backend, loaded, runner, tokenizer, opts.ignoreGenerationConfig ? {} : gen.sampling, config, eos);
      if (opts.seed !== undefined) llm.core.seed(opts.seed);
      return llm;
    } catch (err) {
      runner?.dispose();
      loaded.model.dispose();
      throw err;
    }
  }

  /** Generate for every prompt (text or token ids); returns results in prompt order. */
  generate(prompts: readonly (string | readonly number[])[], sampling: Partial<SamplingParams> = {}): GenerationResult[] {
    const results = prompts.map((prompt) => {
      const ids = typeof prompt === "string" ? this.encode(prompt) : [...prompt];
      const params = resolveSamplingParams(sampling, this.samplingDefaults);
      const requestId = `offline-${this.nextId++}`;
      this.core.addRequest({ requestId, promptTokenIds: ids, sampling: params });
      const outputs = Array.from({ length: params.n }, (_, index) => ({
        index,
        text: "",
        tokenIds: [],
        finishReason: null,
        stopReason: null,
        logprobs: [],
      }));
      return { requestId, promptTokenIds: ids, numCachedTokens: 0, outputs } as GenerationResult;
    });
    const byId = new Map(results.map((r) => [r.requestId, r]));
    while (this.core.hasUnfinished) for (const o of this.core.step()) collect(byId.get(o.requestId), o);
    return results;
  }

  private encode(text: string): number[] {
    if (!this.tokenizer) throw new Error("this model folder has no tokenizer.json; pass token ids instead of text");
    return this.tokenizer.encode(text);
  }

  close(): void {
    this.runner.dispose();
    this.loaded.model.dispose();
    if (this.ownsBackend) this.backend.dispose();
  }
}

function collect(result: GenerationResult | undefined, o: RequestOutput): void {
  if (!result) return;
  const c = result.outputs[o.index]!;
  c.tokenIds.push(...o.newTokenIds);
  c.text += o.newText;
  c.logprobs.push(...o.newLogprobs);
  c.finishReason = o.finishReason;
  c.stopReason = o.stopReason;
  result.numCachedTokens = o.numCachedTokens;
}

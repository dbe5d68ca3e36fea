import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Backend } from "../backend/backend.js";
import { createBackend, createBackendAsync, type CreatedBackend } from "../backend/create-backend.js";
import type { DeviceRequest, DeviceSelection } from "../backend/cuda/device.js";
import type { DType } from "../backend/dtype.js";
import { loadGenerationDefaults } from "./generation-config.js";
import { kvBytesPerToken } from "../model/llama.js";
import { loadModel, loadModelConfig, type LoadedModel } from "../model/load.js";
import { isGgufPath } from "../model/gguf-model.js";
import type { QuantizationName } from "../model/quant-method.js";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import { EngineCore, type EngineConfig, type RequestOutput } from "./engine-core.js";
import { ModelRunner } from "./model-runner.js";
import type { FinishReason } from "./request.js";
import type { TokenLogprob } from "../backend/sampling.js";
import { resolveSamplingParams, type SamplingParams } from "./sampling-params.js";
import { ENGINE_DEFAULTS, mergeEosTokenIds } from "../defaults.js";

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
  /** Schedule the next step while this one runs (vLLM's --async-scheduling; default on). */
  asyncScheduling?: boolean;
  dtype?: DType;
  /** Quantize the weight matrices at load (--quantization int8|fp8). */
  quantization?: QuantizationName;
  /** The KV cache's element type: auto (the activation dtype) or fp8 (e4m3, vLLM's --kv-cache-dtype). */
  kvCacheDtype?: "auto" | "fp8" | "fp8_e4m3";
  /** auto (CUDA when usable, else CPU), cpu or cuda. */
  device?: DeviceRequest;
  /** Fraction of the GPU's memory the engine may use in all (weights, activations, KV cache); default 0.9. */
  gpuMemoryUtilization?: number;
  threads?: number;
  /** Ignore generation_config.json's sampling defaults (vLLM's --generation-config vllm). */
  ignoreGenerationConfig?: boolean;
  /** Seeds the random streams of requests that give no seed of their own, so a run is reproducible. */
  seed?: number;
  onProgress?: (done: number, total: number) => void;
}

export const DEFAULT_KV_CACHE_MEMORY = ENGINE_DEFAULTS.cpuKvCacheBytes;
export const DEFAULT_GPU_MEMORY_UTILIZATION = ENGINE_DEFAULTS.gpuMemoryUtilization;

/**
 * Bytes for the KV cache. On CPU a fixed size (--kv-cache-memory, default 4 GiB, like vLLM's
 * VLLM_CPU_KVCACHE_SPACE). On a GPU, vLLM's rule: gpuMemoryUtilization of the device's memory
 * minus what the engine already holds once the model is loaded (weights, the activation arena
 * planned for the largest step, workspace), which `tokamak plan` computes the same way.
 */
export function kvCacheBudget(backend: Backend, o: EngineOptions): number {
  if (o.kvCacheMemory !== undefined || backend.capabilities.hostMemory) return o.kvCacheMemory ?? DEFAULT_KV_CACHE_MEMORY;
  const util = o.gpuMemoryUtilization ?? DEFAULT_GPU_MEMORY_UTILIZATION;
  const report = backend.memoryReport();
  const held = report.stats.total;
  const budget = Math.floor(report.device.totalBytes * util - held);
  if (budget <= 0) {
    throw new RangeError(
      `no memory left for the KV cache: --gpu-memory-utilization ${util} of ${report.device.totalBytes} bytes is ${Math.floor(report.device.totalBytes * util)}, ` +
        `and the model already holds ${held} (weights ${report.stats.byTag.weights}, activations ${report.stats.byTag.activations}); ` +
        `raise --gpu-memory-utilization, lower --max-num-batched-tokens or --max-num-seqs, or use a smaller dtype`,
    );
  }
  // Other processes may hold memory the fraction assumed ours: never plan past what is actually free.
  const headroom = 256 * 2 ** 20;
  return Math.min(budget, Math.max(0, report.device.freeBytes - headroom));
}

/**
 * The KV cache's capacity in tokens when it is known before the weights load (a block count, or a fixed
 * byte budget as on CPU), so a max model length it cannot hold fails before anything is allocated.
 * Undefined on a GPU sized by utilization: that budget is what remains after loading.
 */
function kvCacheTokensBeforeLoad(modelDir: string, backend: Backend, o: EngineOptions): number | undefined {
  const blockSize = o.blockSize ?? ENGINE_DEFAULTS.blockSize;
  if (o.numBlocks !== undefined) return o.numBlocks * blockSize;
  if (o.kvCacheMemory === undefined && !backend.capabilities.hostMemory) return undefined;
  const perBlock = blockSize * kvBytesPerToken(loadModelConfig(modelDir), backend, kvCacheDType(backend, o));
  return Math.floor(kvCacheBudget(backend, o) / perBlock) * blockSize;
}

/** The KV cache's element type for --kv-cache-dtype, refused by name where the backend has no kernels for it. */
export function kvCacheDType(backend: Backend, o: EngineOptions): DType {
  const want = o.kvCacheDtype ?? "auto";
  if (want === "auto") return backend.activationDType;
  if (want !== "fp8" && want !== "fp8_e4m3") throw new RangeError(`--kv-cache-dtype must be auto, fp8 or fp8_e4m3, got "${String(want)}"`);
  if (!backend.capabilities.kvCacheDTypes.includes("fp8_e4m3")) {
    throw new RangeError(`--kv-cache-dtype ${want}: the ${backend.name} backend has no fp8 KV cache kernels yet; use auto`);
  }
  return "fp8_e4m3";
}

/** The engine's resolved settings, vLLM's defaults where not given. */
export function resolveEngineConfig(loaded: LoadedModel, backend: Backend, o: EngineOptions): EngineConfig {
  const blockSize = o.blockSize ?? ENGINE_DEFAULTS.blockSize;
  const kvDType = kvCacheDType(backend, o);
  const perBlock = blockSize * kvBytesPerToken(loaded.config, backend, kvDType);
  const numBlocks = o.numBlocks ?? Math.floor(kvCacheBudget(backend, o) / perBlock);
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
    enablePrefixCaching: o.enablePrefixCaching ?? ENGINE_DEFAULTS.enablePrefixCaching,
    maxNumBatchedTokens: o.maxNumBatchedTokens ?? ENGINE_DEFAULTS.maxNumBatchedTokens,
    maxNumSeqs: o.maxNumSeqs ?? ENGINE_DEFAULTS.maxNumSeqs,
    maxModelLen,
    policy: o.policy ?? ENGINE_DEFAULTS.policy,
    asyncScheduling: o.asyncScheduling ?? ENGINE_DEFAULTS.asyncScheduling,
    kvCacheDType: kvDType,
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
  /** Which device --device picked and why (set when LLM made its own backend). */
  deviceSelection: DeviceSelection | null = null;

  /** Load a model folder. Without a backend, one is made for opts.device (and disposed by close()); WebGPU needs LLM.create. */
  static open(modelDir: string, opts: EngineOptions = {}, backend?: Backend): LLM {
    if (!backend) return LLM.onOwnBackend(modelDir, opts, createBackend(LLM.backendOptions(modelDir, opts)));
    return LLM.load(modelDir, opts, backend);
  }

  /** LLM.open for every device, WebGPU included (opened asynchronously); `auto` may pick a hardware WebGPU adapter. */
  static async create(modelDir: string, opts: EngineOptions = {}): Promise<LLM> {
    return LLM.onOwnBackend(modelDir, opts, await createBackendAsync(LLM.backendOptions(modelDir, opts)));
  }

  private static backendOptions(modelDir: string, opts: EngineOptions) {
    return { device: opts.device, threads: opts.threads, dtype: opts.dtype, modelDType: loadModelConfig(modelDir).torchDtype };
  }

  private static onOwnBackend(modelDir: string, opts: EngineOptions, { backend: own, selection }: CreatedBackend): LLM {
    try {
      // A device backend multiplies weights in its activation dtype; the CPU reads any stored dtype directly.
      const llm = LLM.load(modelDir, own.capabilities.anyWeightDType ? opts : { ...opts, dtype: own.activationDType }, own);
      llm.ownsBackend = true;
      llm.deviceSelection = selection;
      return llm;
    } catch (err) {
      own.dispose();
      throw err;
    }
  }

  private static load(modelDir: string, opts: EngineOptions, backend: Backend): LLM {
    const maxNumBatchedTokens = opts.maxNumBatchedTokens ?? ENGINE_DEFAULTS.maxNumBatchedTokens;
    // Read before the weights: a bad generation_config.json fails in a moment, not after a long load.
    const gen = loadGenerationDefaults(modelDir, { ignoreSampling: opts.ignoreGenerationConfig });
    const loaded = loadModel(modelDir, backend, {
      maxModelLen: opts.maxModelLen,
      kvCacheTokens: kvCacheTokensBeforeLoad(modelDir, backend, opts),
      maxNumTokens: maxNumBatchedTokens,
      maxNumSeqs: opts.maxNumSeqs ?? ENGINE_DEFAULTS.maxNumSeqs,
      dtype: opts.dtype,
      quantization: opts.quantization,
      onProgress: opts.onProgress,
    });
    let runner: ModelRunner | undefined;
    try {
      const config = resolveEngineConfig(loaded, backend, { ...opts, maxNumBatchedTokens });
      const tokenizer = isGgufPath(modelDir) || existsSync(join(modelDir, "tokenizer.json")) ? Tokenizer.fromDir(modelDir) : null;
      const eos = mergeEosTokenIds(tokenizer?.eosTokenIds, gen.eosTokenIds, loaded.config.eosTokenIds);
      runner = new ModelRunner(loaded.model, {
        numBlocks: config.numBlocks,
        blockSize: config.blockSize,
        maxModelLen: loaded.maxModelLen,
        kvCacheDType: config.kvCacheDType,
      });
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
  async generate(prompts: readonly (string | readonly number[])[], sampling: Partial<SamplingParams> = {}): Promise<GenerationResult[]> {
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
    while (this.core.hasUnfinished) for (const o of await this.core.step()) collect(byId.get(o.requestId), o);
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

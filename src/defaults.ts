/**
 * The engine's defaults, vLLM's where it has one, in one place: the CLI, the offline LLM class, the
 * engine thread, the memory plan and the model loader all read them here. A leaf module (constants
 * only), so every layer may import it.
 */
export const ENGINE_DEFAULTS = {
  /** Tokens per KV block. */
  blockSize: 16,
  /** Token budget of one step (prefill chunks and decodes together). */
  maxNumBatchedTokens: 8192,
  /** Sequences running at once. */
  maxNumSeqs: 256,
  enablePrefixCaching: true,
  policy: "fcfs" as "fcfs" | "priority",
  /** Schedule the next step while this one runs (vLLM's --async-scheduling, on by default). */
  asyncScheduling: true,
  /** KV cache bytes on the CPU (vLLM's VLLM_CPU_KVCACHE_SPACE default). */
  cpuKvCacheBytes: 4 * 2 ** 30,
  /** Fraction of a GPU's memory the engine may use in all. */
  gpuMemoryUtilization: 0.9,
} as const;

/** End-of-sequence ids from every source that names them (tokenizer_config, generation_config, config.json), each once, in that order. */
export function mergeEosTokenIds(...sources: readonly (readonly number[] | undefined)[]): number[] {
  return [...new Set(sources.flatMap((s) => s ?? []))];
}

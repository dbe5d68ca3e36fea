import type { CacheRequest } from "./kv-cache-manager.js";
import { Rng, type SamplingState, type TokenLogprob } from "./sampler.js";
import type { SamplingParams } from "./sampling-params.js";

export type RequestStatus = "waiting" | "running" | "preempted" | "finished";
export type FinishReason = "stop" | "length" | "abort";

/** One sequence being generated: its tokens, its progress through the KV cache, and its sampling state. */
export class Request implements CacheRequest, SamplingState {
  status: RequestStatus = "waiting";
  readonly outputTokenIds: number[] = [];
  readonly allTokenIds: number[];
  readonly outputCounts = new Map<number, number>();
  readonly blockHashes: string[] = [];
  readonly rng: Rng;
  /** Tokens whose K/V are in the cache. */
  numComputedTokens = 0;
  /** Prompt tokens found in the prefix cache when first admitted. */
  numCachedTokens = 0;
  numPreemptions = 0;
  finishReason: FinishReason | null = null;
  /** The stop token id or stop string that ended it, if any. */
  stopReason: number | string | null = null;
  /** Per output token: its log-probability and the top alternatives (when requested). */
  readonly logprobs: { logprob: number; top?: TokenLogprob[] }[] = [];
  /** Engine step at which the request was first scheduled (for queue-time metrics). */
  firstScheduledStep = -1;
  /** performance.now() when first scheduled (arrivalTime is on the same clock). */
  firstScheduledTime = -1;

  constructor(
    readonly requestId: string,
    readonly promptTokenIds: readonly number[],
    readonly sampling: SamplingParams,
    readonly eosTokenIds: readonly number[],
    readonly arrivalTime: number,
    readonly priority = 0,
    readonly cacheSalt = "",
  ) {
    this.allTokenIds = [...promptTokenIds];
    this.rng = new Rng(sampling.seed ?? (Math.random() * 2 ** 32) >>> 0);
  }

  get numTokens(): number {
    return this.allTokenIds.length;
  }

  get numOutputTokens(): number {
    return this.outputTokenIds.length;
  }

  get isFinished(): boolean {
    return this.status === "finished";
  }

  appendToken(token: number): void {
    this.outputTokenIds.push(token);
    this.allTokenIds.push(token);
    this.outputCounts.set(token, (this.outputCounts.get(token) ?? 0) + 1);
  }

  /**
   * Whether the token just appended ends the request: a stop token id, an
   * end-of-sequence token (unless ignore_eos), or max_tokens; none before
   * min_tokens. Stop strings are checked on the detokenized text elsewhere.
   */
  checkStop(maxModelLen: number): boolean {
    const p = this.sampling;
    const n = this.outputTokenIds.length;
    const last = this.outputTokenIds[n - 1]!;
    if (n >= p.minTokens) {
      if ((!p.ignoreEos && this.eosTokenIds.includes(last)) || p.stopTokenIds.includes(last)) {
        this.finish("stop", p.stopTokenIds.includes(last) ? last : null);
        return true;
      }
    }
    if (n >= p.maxTokens || this.numTokens >= maxModelLen) {
      this.finish("length");
      return true;
    }
    return false;
  }

  finish(reason: FinishReason, stopReason: number | string | null = null): void {
    this.status = "finished";
    this.finishReason = reason;
    this.stopReason = stopReason;
  }
}

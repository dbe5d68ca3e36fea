import type { CacheRequest } from "./kv-cache-manager.js";
import type { TokenLogprob } from "../backend/sampling.js";
import type { SamplingParams } from "./sampling-params.js";

export type RequestStatus = "waiting" | "running" | "preempted" | "finished";
export type FinishReason = "stop" | "length" | "abort";

/** One sequence being generated: its tokens, its progress through the KV cache, and its sampling state. */
export class Request implements CacheRequest {
  status: RequestStatus = "waiting";
  readonly outputTokenIds: number[] = [];
  readonly allTokenIds: number[];
  readonly outputCounts = new Map<number, number>();
  readonly blockHashes: string[] = [];
  /**
   * Tokens whose K/V are in the cache or being written by a scheduled step (advanced when a step is
   * scheduled, as vLLM does, so the next step can be scheduled before this one's results are back).
   */
  numComputedTokens = 0;
  /** Tokens scheduled steps will sample for it whose values are not back yet (0 or 1, 2 under async scheduling). */
  numPendingTokens = 0;
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
    /** The 32-bit key of its random stream: its n-th output token uses draw n. */
    readonly key: number = (Math.random() * 2 ** 32) >>> 0,
    readonly cacheSalt = "",
  ) {
    this.allTokenIds = [...promptTokenIds];
  }

  get numTokens(): number {
    return this.allTokenIds.length;
  }

  get numOutputTokens(): number {
    return this.outputTokenIds.length;
  }

  /** Tokens the next step may feed: those known, plus those being sampled now. */
  get numTokensWithPending(): number {
    return this.allTokenIds.length + this.numPendingTokens;
  }

  /** Whether the tokens being sampled will end it by length, so nothing more is scheduled for it. */
  endsWithPending(maxModelLen: number): boolean {
    if (this.numPendingTokens === 0) return false;
    return this.outputTokenIds.length + this.numPendingTokens >= this.sampling.maxTokens || this.numTokensWithPending >= maxModelLen;
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

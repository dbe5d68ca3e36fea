import type { DType } from "../backend/dtype.js";
import type { TokenLogprob } from "../backend/sampling.js";
import { foldSeed, Rng } from "../backend/rng.js";
import { IncrementalDetokenizer, type TokenDecoder } from "./detokenizer.js";
import { KVCacheManager } from "./kv-cache-manager.js";
import { type FinishReason, Request } from "./request.js";
import { samplingRowParams, type SamplingParams } from "./sampling-params.js";
import { type SampledToken, Scheduler, type SchedulerConfig, type SchedulerOutput } from "./scheduler.js";
import type { BatchAdd, ScheduledSequence, StepExecutor, StepInput, StepOutput } from "./step.js";

export type { StepExecutor } from "./step.js";

export interface EngineConfig extends SchedulerConfig {
  blockSize: number;
  numBlocks: number;
  enablePrefixCaching: boolean;
  /**
   * Schedule step N+1 while step N runs, assuming one token for each request N samples, and reconcile when
   * N's tokens arrive (vLLM's --async-scheduling, on by default). Outputs are identical either way.
   */
  asyncScheduling?: boolean;
  /** The KV cache's element type: the backend's activation dtype, or fp8_e4m3 (--kv-cache-dtype fp8). */
  kvCacheDType?: DType;
}

/** A step failed: the requests it held (by the ids they were added under) were ended; everything else goes on. */
export class StepFailedError extends Error {
  constructor(
    override readonly cause: Error,
    readonly requestIds: readonly string[],
  ) {
    super(`engine step failed: ${cause.message}`);
    this.name = "StepFailedError";
  }
}

/** A step handed to the executor: its plan, what was sent, and the promise of its tokens. */
interface Launched {
  plan: SchedulerOutput;
  /** The requests sampled, in the order of the step's sampled sequences. */
  sampled: Request[];
  result: Promise<StepOutput>;
}

export interface AddRequest {
  requestId: string;
  promptTokenIds: readonly number[];
  sampling: SamplingParams;
  priority?: number;
  /** Text of the prompt, if the caller has it (returned in outputs). */
  prompt?: string;
}

/** What one step reports for one sequence. */
export interface RequestOutput {
  requestId: string;
  /** Which of the request's n completions. */
  index: number;
  newTokenIds: number[];
  /** Text to append (stop strings and incomplete characters held back). */
  newText: string;
  newLogprobs: { logprob: number; top?: TokenLogprob[] }[];
  finished: boolean;
  finishReason: FinishReason | null;
  stopReason: number | string | null;
  numPromptTokens: number;
  numCachedTokens: number;
  numOutputTokens: number;
  /** On the finishing output: milliseconds from arrival to first being scheduled. */
  queueMs?: number;
}

export interface EngineStats {
  numRunning: number;
  numWaiting: number;
  kvCacheUsage: number;
  numBlocks: number;
  numFreeBlocks: number;
  prefixCacheQueries: number;
  prefixCacheHits: number;
  numPreemptions: number;
  steps: number;
  promptTokens: number;
  generationTokens: number;
}

/** One live request, as the dashboard shows it. */
export interface RequestSnapshot {
  /** The sequence id (`req#1` for the second of n). */
  id: string;
  state: "running" | "waiting" | "preempted";
  promptTokens: number;
  outputTokens: number;
  cachedTokens: number;
  numPreemptions: number;
  blocks: number[];
  ageMs: number;
}

/** The engine's state at one instant: every KV block's state and every live request. */
export interface EngineSnapshot {
  blockSize: number;
  numBlocks: number;
  /** Per block, base64 of one byte each: 0 free, 1 free but holding a cached prefix, 2 in use. */
  blockStates: string;
  requests: RequestSnapshot[];
  stats: EngineStats;
}

interface Tracked {
  request: Request;
  index: number;
  parentId: string;
  detok: IncrementalDetokenizer | null;
}

/**
 * The engine's heart, single-threaded: requests in, one step() at a time — schedule, run one flat batch
 * (sampling included) on the executor, take the tokens back, detokenize — outputs out. With async
 * scheduling the next step is scheduled while the executor runs this one. The worker-thread engine and
 * the offline LLM class both drive it.
 */
export class EngineCore {
  readonly scheduler: Scheduler;
  readonly kv: KVCacheManager;
  readonly asyncScheduling: boolean;
  private tracked = new Map<string, Tracked>();
  private children = new Map<string, string[]>();
  /** Requests in the executor's persistent batch, with the incarnation (preemption count) their row was built for. */
  private inBatch = new Map<string, number>();
  private inflight: Launched | null = null;
  private steps = 0;
  private promptTokens = 0;
  private generationTokens = 0;
  /** Milliseconds the executor's steps took (launch to tokens back), and the host's time between steps. */
  readonly timing = { executorMs: 0, hostGapMs: 0, lastResolved: -1 };

  constructor(
    readonly executor: StepExecutor,
    readonly config: EngineConfig,
    readonly eosTokenIds: readonly number[],
    readonly decoder: TokenDecoder | null = null,
  ) {
    this.kv = new KVCacheManager(config.numBlocks, config.blockSize, config.enablePrefixCaching);
    this.scheduler = new Scheduler(config, this.kv);
    this.asyncScheduling = config.asyncScheduling ?? true;
  }

  /** Queue a request (n > 1 becomes n sequences sharing the prompt's cached blocks). Throws on bad input, changing nothing. */
  addRequest(r: AddRequest): void {
    if (this.children.has(r.requestId)) throw new Error(`request id "${r.requestId}" is already in use`);
    const vocab = this.executor.vocabSize;
    const badToken = r.promptTokenIds.find((t) => !Number.isInteger(t) || t < 0 || t >= vocab);
    if (badToken !== undefined)
      throw new RangeError(`request ${r.requestId}: prompt token id ${badToken} is outside the vocabulary [0, ${vocab})`);
    const ids: string[] = [];
    const requests: Request[] = [];
    for (let i = 0; i < r.sampling.n; i++) {
      const id = r.sampling.n === 1 ? r.requestId : `${r.requestId}#${i}`;
      const key =
        r.sampling.seed !== null
          ? (foldSeed(r.sampling.seed) + i) >>> 0
          : this.seedRng
            ? this.seedRng.nextU32()
            : (Math.random() * 2 ** 32) >>> 0;
      requests.push(new Request(id, r.promptTokenIds, r.sampling, this.eosTokenIds, performance.now(), r.priority ?? 0, key));
      ids.push(id);
    }
    for (const req of requests) this.scheduler.add(req); // the first add validates lengths before anything is tracked
    requests.forEach((request, index) => {
      const detok = this.decoder
        ? new IncrementalDetokenizer(this.decoder, r.promptTokenIds, {
            skipSpecialTokens: r.sampling.skipSpecialTokens,
            stop: r.sampling.stop,
            includeStopStrInOutput: r.sampling.includeStopStrInOutput,
          })
        : null;
      this.tracked.set(request.requestId, { request, index, parentId: r.requestId, detok });
    });
    this.children.set(r.requestId, ids);
  }

  /** Abort a request (all its completions); blocks return to the pool now. Returns false if unknown or already done. */
  abort(requestId: string): boolean {
    const ids = this.children.get(requestId);
    if (!ids) return false;
    for (const id of ids) {
      this.scheduler.abort(id);
      this.tracked.delete(id);
    }
    this.children.delete(requestId);
    this.dropDeadInflight();
    return true;
  }

  /** A step in flight whose every request has ended needs no collecting: its tokens would be thrown away. */
  private dropDeadInflight(): void {
    const f = this.inflight;
    if (!f || f.plan.scheduled.some((g) => !g.request.isFinished)) return;
    this.inflight = null;
    this.kv.endStep(f.plan.step);
  }

  private seedRng: Rng | null = null;

  /** Derive the seeds of requests that bring none from this one (otherwise they are random). */
  seed(seed: number): void {
    this.seedRng = new Rng(seed);
  }

  /** The id a sequence was added under (`req` for `req#2`), if it is still tracked. */
  parentOf(sequenceId: string): string | undefined {
    return this.tracked.get(sequenceId)?.parentId;
  }

  get hasUnfinished(): boolean {
    return this.scheduler.hasUnfinished || this.inflight !== null;
  }

  /**
   * One engine iteration: the outputs of every sequence that produced a token or finished. Synchronous
   * scheduling runs one step start to end. Async scheduling keeps one step in flight across calls: it
   * schedules the next step, waits for the one in flight, reconciles, launches the next, and returns
   * the outputs of the one that completed. A failed step throws StepFailedError after ending its requests.
   */
  async step(): Promise<RequestOutput[]> {
    if (!this.asyncScheduling) {
      const plan = this.scheduler.schedule();
      const launched = this.launch(plan);
      if (!launched) return this.finishedWithoutStep(plan);
      return this.emit(await this.collect(launched, null));
    }
    if (!this.inflight) {
      const plan = this.scheduler.schedule();
      this.inflight = this.launch(plan);
      if (!this.inflight) return this.finishedWithoutStep(plan);
    }
    const current = this.inflight;
    this.inflight = null;
    const next = this.scheduler.hasUnfinished ? this.scheduler.schedule() : null;
    const taken = await this.collect(current, next);
    // The next step runs while this one's text is detokenized and its outputs built.
    if (next) this.inflight = this.launch(next);
    return this.emit(taken);
  }

  /** A plan with nothing to run (everything left was dropped): nothing to report. */
  private finishedWithoutStep(plan: SchedulerOutput): RequestOutput[] {
    this.kv.endStep(plan.step);
    return [];
  }

  /**
   * Hand a plan to the executor: drop grants of requests that finished since it was made, fill in the
   * tokens (a decode's was still being sampled when it was scheduled), and build the batch diff.
   */
  private launch(plan: SchedulerOutput): Launched | null {
    const seqs: ScheduledSequence[] = [];
    const sampled: Request[] = [];
    const added: BatchAdd[] = [];
    const removed: string[] = this.pendingRemoval;
    this.pendingRemoval = [];
    const ids = new Set<string>();
    let kept = 0;
    for (const g of plan.scheduled) {
      const r = g.request;
      if (r.isFinished || g.incarnation !== r.numPreemptions) continue;
      plan.scheduled[kept++] = g;
      if (g.start + g.numNewTokens > r.numTokens) throw new Error(`engine: ${r.requestId} is scheduled past its known tokens`);
      const sample = g.start + g.numNewTokens === r.numTokens;
      seqs.push({
        id: r.requestId,
        tokens: r.allTokenIds.slice(g.start, g.start + g.numNewTokens),
        numCached: g.start,
        blocks: this.kv.blockIds(r.requestId),
        sample,
      });
      if (sample) sampled.push(r);
      ids.add(r.requestId);
      const row = this.inBatch.get(r.requestId);
      if (row !== r.numPreemptions) {
        // New, or preempted since its row was built (its blocks are new): the row is rebuilt.
        if (row !== undefined) removed.push(r.requestId);
        added.push({
          id: r.requestId,
          sampling: samplingRowParams(r.sampling, r.key, this.eosTokenIds),
          promptTokenIds: r.promptTokenIds,
          outputTokenIds: r.outputTokenIds,
        });
        this.inBatch.set(r.requestId, r.numPreemptions);
      }
    }
    plan.scheduled.length = kept;
    for (const id of this.inBatch.keys()) {
      if (ids.has(id)) continue;
      removed.push(id);
      this.inBatch.delete(id);
    }
    if (seqs.length === 0) {
      this.pendingRemoval = removed; // sent with the next step that runs
      return null;
    }
    const step: StepInput = { added, removed, seqs };
    this.steps++;
    const t = performance.now();
    if (this.timing.lastResolved >= 0) this.timing.hostGapMs += t - this.timing.lastResolved;
    const result = this.executor.execute(step).then((out) => {
      this.timing.executorMs += performance.now() - t;
      this.timing.lastResolved = performance.now();
      return out;
    });
    result.catch(() => undefined); // observed in complete(); never an unhandled rejection meanwhile
    return { plan, sampled, result };
  }

  /** Wait for a launched step and fold its tokens in; on failure end its requests and take back `next`'s grants. */
  private async collect(launched: Launched, next: SchedulerOutput | null): Promise<SampledToken[]> {
    let out: StepOutput;
    try {
      out = await launched.result;
    } catch (err) {
      throw this.fail(launched, next, err as Error);
    }
    const { plan, sampled } = launched;
    for (const g of plan.scheduled) {
      const r = g.request;
      this.promptTokens += Math.max(0, Math.min(g.numNewTokens, r.promptTokenIds.length - g.start));
    }
    const tokens: SampledToken[] = new Array<SampledToken>(sampled.length);
    for (let i = 0; i < sampled.length; i++) {
      const lp = out.logprobs[i];
      tokens[i] = lp ? { request: sampled[i]!, token: out.tokens[i]!, logprob: lp } : { request: sampled[i]!, token: out.tokens[i]! };
    }
    return this.scheduler.updateFromOutput(plan, tokens);
  }

  /** Detokenize the tokens taken (a stop string may end a request here) and build the outputs. */
  private emit(taken: readonly SampledToken[]): RequestOutput[] {
    const outputs: RequestOutput[] = [];
    for (const s of taken) {
      const t = this.tracked.get(s.request.requestId);
      if (!t) continue;
      if (t.detok) {
        const r = s.request;
        if (!s.ended) {
          const stop = t.detok.push(s.token);
          if (stop !== null) this.scheduler.finishByStopString(r, stop);
        } else if (r.finishReason === "length") t.detok.push(s.token); // its text still counts; a stop token's does not
      }
      const o = this.output(t, s);
      outputs.push(o);
      if (o.finished) this.forget(o);
    }
    return outputs;
  }

  private fail(launched: Launched, next: SchedulerOutput | null, cause: Error): StepFailedError {
    const ended = new Set<string>();
    for (const g of launched.plan.scheduled) {
      const parent = this.parentOf(g.request.requestId);
      if (parent !== undefined && !ended.has(parent) && this.abort(parent)) ended.add(parent);
    }
    for (const r of launched.sampled) r.numPendingTokens = Math.max(0, r.numPendingTokens - 1);
    this.kv.endStep(launched.plan.step);
    if (next) this.scheduler.rollBack(next);
    // The executor's batch no longer matches: everyone re-enters it at the next step.
    this.resetBatch();
    return new StepFailedError(cause, [...ended]);
  }

  private resetBatch(): void {
    for (const id of this.inBatch.keys()) this.pendingRemoval.push(id);
    this.inBatch.clear();
  }

  /** Rows the executor still holds that the engine no longer counts in its batch (after a failed step). */
  private pendingRemoval: string[] = [];

  private output(t: Tracked, s: SampledToken): RequestOutput {
    const r = s.request;
    this.generationTokens++;
    return {
      requestId: t.parentId,
      index: t.index,
      newTokenIds: [s.token],
      newText: t.detok ? t.detok.takeDelta(r.isFinished) : "",
      newLogprobs: s.logprob ? [s.logprob] : [],
      finished: r.isFinished,
      finishReason: r.finishReason,
      stopReason: r.stopReason,
      numPromptTokens: r.promptTokenIds.length,
      numCachedTokens: r.numCachedTokens,
      numOutputTokens: r.numOutputTokens,
      queueMs: r.isFinished ? r.firstScheduledTime - r.arrivalTime : undefined,
    };
  }

  private forget(o: RequestOutput): void {
    const ids = this.children.get(o.requestId);
    if (!ids) return;
    const id = ids.length === 1 ? ids[0]! : `${o.requestId}#${o.index}`;
    this.tracked.delete(id);
    if (ids.every((c) => !this.tracked.has(c))) this.children.delete(o.requestId);
  }

  snapshot(): EngineSnapshot {
    const pool = this.kv.pool;
    const states = new Uint8Array(pool.numBlocks);
    for (const b of pool.blocks) states[b.id] = b.refCount > 0 ? 2 : b.hash !== null ? 1 : 0;
    const now = performance.now();
    const describe = (r: Request): RequestSnapshot => ({
      id: r.requestId,
      state: r.status === "running" ? "running" : r.numPreemptions > 0 ? "preempted" : "waiting",
      promptTokens: r.promptTokenIds.length,
      outputTokens: r.numOutputTokens,
      cachedTokens: r.numCachedTokens,
      numPreemptions: r.numPreemptions,
      blocks: [...this.kv.blockIds(r.requestId)],
      ageMs: now - r.arrivalTime,
    });
    return {
      blockSize: this.kv.blockSize,
      numBlocks: pool.numBlocks,
      blockStates: Buffer.from(states.buffer, states.byteOffset, states.byteLength).toString("base64"),
      requests: [...this.scheduler.running.map(describe), ...this.scheduler.waiting.map(describe)],
      stats: this.stats(),
    };
  }

  stats(): EngineStats {
    const pool = this.kv.pool;
    return {
      numRunning: this.scheduler.running.length,
      numWaiting: this.scheduler.waiting.length,
      kvCacheUsage: pool.usage,
      numBlocks: pool.numBlocks,
      numFreeBlocks: pool.numFreeBlocks,
      prefixCacheQueries: this.kv.stats.queries,
      prefixCacheHits: this.kv.stats.hits,
      numPreemptions: this.scheduler.numPreemptions,
      steps: this.steps,
      promptTokens: this.promptTokens,
      generationTokens: this.generationTokens,
    };
  }
}

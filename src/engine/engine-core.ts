import { IncrementalDetokenizer, type TokenDecoder } from "./detokenizer.js";
import { KVCacheManager } from "./kv-cache-manager.js";
import type { ScheduledSequence } from "./model-runner.js";
import { type FinishReason, Request } from "./request.js";
import { foldSeed, Rng, sampleToken, type TokenLogprob } from "./sampler.js";
import type { SamplingParams } from "./sampling-params.js";
import { Scheduler, type SchedulerConfig } from "./scheduler.js";

/** What runs one flat batch: the real ModelRunner, or a stub for measuring the engine itself. */
export interface StepExecutor {
  /** Logits rows [numWanted · vocab], in the order of sequences with wantLogits. */
  execute(seqs: readonly ScheduledSequence[]): Float32Array;
  readonly vocabSize: number;
}

export interface EngineConfig extends SchedulerConfig {
  blockSize: number;
  numBlocks: number;
  enablePrefixCaching: boolean;
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
 * The engine's heart, synchronous and single-threaded: requests in, one
 * step() at a time — schedule, run one flat batch, sample, detokenize —
 * outputs out. The worker-thread engine and the offline LLM class both drive it.
 */
export class EngineCore {
  readonly scheduler: Scheduler;
  readonly kv: KVCacheManager;
  private tracked = new Map<string, Tracked>();
  private children = new Map<string, string[]>();
  private steps = 0;
  private promptTokens = 0;
  private generationTokens = 0;

  constructor(
    readonly executor: StepExecutor,
    readonly config: EngineConfig,
    readonly eosTokenIds: readonly number[],
    readonly decoder: TokenDecoder | null = null,
  ) {
    this.kv = new KVCacheManager(config.numBlocks, config.blockSize, config.enablePrefixCaching);
    this.scheduler = new Scheduler(config, this.kv);
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
      const seed =
        r.sampling.seed !== null ? (foldSeed(r.sampling.seed) + i) >>> 0 : this.seedRng ? Math.floor(this.seedRng.next() * 2 ** 32) : null;
      requests.push(new Request(id, r.promptTokenIds, { ...r.sampling, seed }, this.eosTokenIds, performance.now(), r.priority ?? 0));
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
    return true;
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
    return this.scheduler.hasUnfinished;
  }

  /** One engine iteration. Returns the outputs of every sequence that produced a token or finished. */
  step(): RequestOutput[] {
    const plan = this.scheduler.schedule();
    if (plan.scheduled.length === 0) return [];
    this.steps++;
    const seqs: ScheduledSequence[] = plan.scheduled.map(({ request: r, numNewTokens: n }) => ({
      tokens: r.allTokenIds.slice(r.numComputedTokens, r.numComputedTokens + n),
      numCached: r.numComputedTokens,
      blocks: this.kv.blockIds(r.requestId),
      wantLogits: r.numComputedTokens + n === r.numTokens,
    }));
    const logits = this.executor.execute(seqs);
    const V = this.executor.vocabSize;
    const outputs: RequestOutput[] = [];
    let row = 0;
    plan.scheduled.forEach(({ request: r, numNewTokens: n }, i) => {
      this.promptTokens += Math.max(0, Math.min(n, r.promptTokenIds.length - r.numComputedTokens));
      r.numComputedTokens += n;
      this.kv.commitComputed(r);
      if (!seqs[i]!.wantLogits) return;
      const sampled = sampleToken(logits.subarray(row * V, (row + 1) * V), r.sampling, r);
      row++;
      outputs.push(this.acceptToken(r, sampled.token, sampled.logprob, sampled.topLogprobs));
    });
    this.scheduler.retireFinished();
    for (const o of outputs) if (o.finished) this.forget(o);
    return outputs;
  }

  private acceptToken(r: Request, token: number, logprob?: number, top?: TokenLogprob[]): RequestOutput {
    const t = this.tracked.get(r.requestId)!;
    r.appendToken(token);
    this.generationTokens++;
    const newLogprobs = logprob === undefined ? [] : [{ logprob, top }];
    r.checkStop(this.config.maxModelLen);
    if (t.detok && !r.isFinished) {
      const stop = t.detok.push(token);
      if (stop !== null) r.finish("stop", stop);
    } else if (t.detok && r.finishReason === "length") {
      t.detok.push(token); // the last token's text still counts
    }
    return {
      requestId: t.parentId,
      index: t.index,
      newTokenIds: [token],
      newText: t.detok ? t.detok.takeDelta(r.isFinished) : "",
      newLogprobs,
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
      blocks: this.kv.blockIds(r.requestId),
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

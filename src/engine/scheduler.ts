import type { KVCacheManager } from "./kv-cache-manager.js";
import type { Request } from "./request.js";

export interface SchedulerConfig {
  /** Token budget of one step (prefill chunks + decodes). */
  maxNumBatchedTokens: number;
  /** Most sequences running at once. */
  maxNumSeqs: number;
  maxModelLen: number;
  /** "fcfs" (arrival order) or "priority" (lower value first, then arrival). */
  policy: "fcfs" | "priority";
  /** Longest prefill chunk a request gets per step (default: the whole budget). */
  longPrefillTokenThreshold?: number;
}

export interface ScheduledRequest {
  request: Request;
  /** Tokens fed this step, starting at request.numComputedTokens. */
  numNewTokens: number;
}

export interface SchedulerOutput {
  scheduled: ScheduledRequest[];
  /** Requests preempted this step (blocks freed, to be recomputed). */
  preempted: Request[];
  totalTokens: number;
}

/**
 * vLLM V1-style scheduling: no prefill or decode phases, just a token budget
 * per step. Running requests go first, each granted what it still needs (one
 * token for a decode, the rest of its prompt — chunked by the budget — for a
 * prefill). When the KV cache has no room, the lowest-priority running
 * request (the newest, under FCFS) is preempted: its blocks are freed and it
 * goes back to the front of the queue to be recomputed. Waiting requests are
 * admitted only in steps that preempted nothing.
 */
export class Scheduler {
  readonly waiting: Request[] = [];
  readonly running: Request[] = [];
  numPreemptions = 0;
  private step = 0;

  constructor(
    readonly config: SchedulerConfig,
    readonly kv: KVCacheManager,
  ) {}

  add(req: Request): void {
    if (req.promptTokenIds.length === 0) throw new RangeError(`request ${req.requestId}: the prompt is empty; expected at least one token`);
    if (req.promptTokenIds.length >= this.config.maxModelLen) {
      throw new RangeError(
        `request ${req.requestId}: the prompt has ${req.promptTokenIds.length} tokens, but the max model length is ${this.config.maxModelLen} (the prompt plus at least one generated token must fit)`,
      );
    }
    this.insertWaiting(req);
  }

  private insertWaiting(req: Request, front = false): void {
    if (this.config.policy === "fcfs") {
      if (front) this.waiting.unshift(req);
      else this.waiting.push(req);
      return;
    }
    const at = this.waiting.findIndex((w) => comparePriority(req, w) < 0);
    this.waiting.splice(at === -1 ? this.waiting.length : at, 0, req);
  }

  get hasUnfinished(): boolean {
    return this.waiting.length > 0 || this.running.length > 0;
  }

  schedule(): SchedulerOutput {
    this.step++;
    this.kv.beginStep();
    let budget = this.config.maxNumBatchedTokens;
    const scheduled: ScheduledRequest[] = [];
    const preempted: Request[] = [];
    const chunkCap = this.config.longPrefillTokenThreshold ?? Infinity;

    for (let i = 0; i < this.running.length && budget > 0;) {
      const req = this.running[i]!;
      const numNew = Math.min(req.numTokens - req.numComputedTokens, budget, chunkCap);
      if (numNew <= 0) {
        i++;
        continue;
      }
      let fits = this.kv.allocateSlots(req, numNew);
      while (!fits) {
        const victim = this.pickVictim();
        const at = this.running.indexOf(victim);
        this.preempt(victim);
        preempted.push(victim);
        if (victim === req) break;
        if (at < i) i--;
        // Under priority order the victim may already hold a grant this step: take it back.
        const granted = scheduled.findIndex((g) => g.request === victim);
        if (granted >= 0) budget += scheduled.splice(granted, 1)[0]!.numNewTokens;
        fits = this.kv.allocateSlots(req, numNew);
      }
      if (!fits) continue; // req itself was preempted and removed from running
      scheduled.push({ request: req, numNewTokens: numNew });
      budget -= numNew;
      i++;
    }

    if (preempted.length === 0) {
      while (this.waiting.length > 0 && budget > 0 && this.running.length < this.config.maxNumSeqs) {
        const req = this.waiting[0]!;
        const prefix = req.numComputedTokens === 0 ? this.kv.findCachedPrefix(req) : { blocks: [], numTokens: 0 };
        if (req.numComputedTokens === 0 && scheduled.length > 0 && this.kv.waitsForPending(req, prefix.blocks.length)) break;
        const numNew = Math.min(req.numTokens - req.numComputedTokens - prefix.numTokens, budget, chunkCap);
        if (!this.kv.allocateSlots(req, numNew, prefix.blocks)) break;
        this.waiting.shift();
        if (req.numComputedTokens === 0) this.kv.recordLookup(req, prefix.numTokens);
        req.numComputedTokens += prefix.numTokens;
        if (req.firstScheduledStep < 0) {
          req.numCachedTokens = prefix.numTokens;
          req.firstScheduledStep = this.step;
          req.firstScheduledTime = performance.now();
        }
        req.status = "running";
        this.running.push(req);
        scheduled.push({ request: req, numNewTokens: numNew });
        budget -= numNew;
      }
    }
    return { scheduled, preempted, totalTokens: this.config.maxNumBatchedTokens - budget };
  }

  /** The running request to give up first: the newest (FCFS) or the lowest priority. */
  private pickVictim(): Request {
    if (this.config.policy === "fcfs") return this.running[this.running.length - 1]!;
    return this.running.reduce((worst, r) => (comparePriority(r, worst) > 0 ? r : worst));
  }

  private preempt(req: Request): void {
    this.running.splice(this.running.indexOf(req), 1);
    this.kv.free(req.requestId);
    req.numComputedTokens = 0;
    req.numPreemptions++;
    this.numPreemptions++;
    req.status = "preempted";
    this.insertWaiting(req, true);
  }

  /** Drop finished requests from the running list and free their blocks. */
  retireFinished(): void {
    for (let i = this.running.length - 1; i >= 0; i--) {
      const r = this.running[i]!;
      if (r.isFinished) {
        this.running.splice(i, 1);
        this.kv.free(r.requestId);
      }
    }
  }

  /** Abort a request wherever it is; its blocks return to the pool now. */
  abort(requestId: string): Request | undefined {
    for (const list of [this.running, this.waiting]) {
      const i = list.findIndex((r) => r.requestId === requestId);
      if (i >= 0) {
        const [req] = list.splice(i, 1);
        this.kv.free(requestId);
        req!.finish("abort");
        return req;
      }
    }
    return undefined;
  }
}

function comparePriority(a: Request, b: Request): number {
  return a.priority - b.priority || a.arrivalTime - b.arrivalTime;
}

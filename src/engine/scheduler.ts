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
  /** Tokens fed this step, starting at `start`. */
  numNewTokens: number;
  /** request.numComputedTokens when it was scheduled (the first position fed). */
  start: number;
  /** Whether this step samples a token for it (its grant reaches every token it has, pending ones included). */
  samples: boolean;
  /** request.numPreemptions when it was scheduled: a preemption since then means its blocks are gone. */
  incarnation: number;
}

export interface SchedulerOutput {
  /** Numbered from 1. */
  step: number;
  scheduled: ScheduledRequest[];
  /** Requests preempted this step (blocks freed, to be recomputed). */
  preempted: Request[];
  totalTokens: number;
}

/** What one sampled sequence of a completed step brought back. */
export interface SampledToken {
  request: Request;
  token: number;
  /** Set by updateFromOutput: whether this token ended its request (a stop id, end of sequence, a length limit). */
  ended?: boolean;
  logprob?: { logprob: number; top?: { token: number; logprob: number }[] };
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

  /**
   * Grant this step's tokens. Each grant advances its request's numComputedTokens at once (and, when it
   * samples, numPendingTokens), so the next step can be scheduled before this one has run: a decode
   * then feeds the token this step is sampling.
   */
  schedule(): SchedulerOutput {
    this.step++;
    this.kv.beginStep(this.step);
    let budget = this.config.maxNumBatchedTokens;
    const scheduled: ScheduledRequest[] = [];
    const preempted: Request[] = [];
    const chunkCap = this.config.longPrefillTokenThreshold ?? Infinity;

    for (let i = 0; i < this.running.length && budget > 0;) {
      const req = this.running[i]!;
      const numNew = req.endsWithPending(this.config.maxModelLen)
        ? 0
        : Math.min(req.numTokensWithPending - req.numComputedTokens, budget, chunkCap);
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
      scheduled.push(this.grant(req, numNew));
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
        scheduled.push(this.grant(req, numNew));
        budget -= numNew;
      }
    }
    // Grants are final now (a revoked one was never applied): advance each request past its grant.
    for (const g of scheduled) {
      g.request.numComputedTokens += g.numNewTokens;
      if (g.samples) g.request.numPendingTokens++;
    }
    return { step: this.step, scheduled, preempted, totalTokens: this.config.maxNumBatchedTokens - budget };
  }

  private grant(req: Request, numNew: number): ScheduledRequest {
    return {
      request: req,
      numNewTokens: numNew,
      start: req.numComputedTokens,
      samples: req.numComputedTokens + numNew === req.numTokensWithPending,
      incarnation: req.numPreemptions,
    };
  }

  /**
   * The one place request progress moves after a step: the KV it wrote becomes findable, sampled tokens
   * are appended, token-level stops are decided (stop ids, end of sequence, max_tokens, the context
   * length) and finished requests leave with their blocks freed. Returns the tokens taken, each marked
   * when it ended its request. A request preempted since the step was scheduled keeps its token (it was
   * computed from the right context) but commits nothing; one that ended meanwhile takes nothing.
   */
  updateFromOutput(plan: SchedulerOutput, sampled: readonly SampledToken[]): SampledToken[] {
    for (const g of plan.scheduled) {
      const r = g.request;
      if (r.isFinished || g.incarnation !== r.numPreemptions) continue;
      this.kv.commitComputed(r, g.start + g.numNewTokens);
    }
    this.kv.endStep(plan.step);
    const taken: SampledToken[] = [];
    for (const s of sampled) {
      const r = s.request;
      r.numPendingTokens--;
      if (r.isFinished) continue;
      r.appendToken(s.token);
      if (s.logprob) r.logprobs.push(s.logprob);
      const ended = r.checkStop(this.config.maxModelLen);
      if (ended) this.remove(r);
      s.ended = ended;
      taken.push(s);
    }
    return taken;
  }

  /** A stop string was found in the text: the request ends here (a step already scheduled for it is discarded). */
  finishByStopString(r: Request, stop: string): void {
    if (r.isFinished) return;
    r.finish("stop", stop);
    this.remove(r);
  }

  /**
   * A step failed: its requests' KV is unknown, so the caller ends them (`failed`); grants of a step
   * scheduled after it (not yet run) are taken back from everyone else.
   */
  rollBack(plan: SchedulerOutput): void {
    for (const g of plan.scheduled) {
      const r = g.request;
      if (r.isFinished || g.incarnation !== r.numPreemptions) continue;
      r.numComputedTokens -= g.numNewTokens;
      if (g.samples) r.numPendingTokens--;
    }
    this.kv.endStep(plan.step);
  }

  /** Take a finished request out of whichever list holds it and free its blocks. */
  private remove(r: Request): void {
    const i = this.running.indexOf(r);
    if (i >= 0) this.running.splice(i, 1);
    else {
      const w = this.waiting.indexOf(r); // preempted while its last step ran
      if (w >= 0) this.waiting.splice(w, 1);
    }
    this.kv.free(r.requestId);
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

/**
 * A request's engine streams on the server side: launching every prompt's request, and the one loop
 * over their outputs (streamed or whole answers alike), timing each for the latency metrics and the
 * dashboard's windows.
 */
import { randomUUID } from "node:crypto";
import { type AsyncEngine, EngineRequestError } from "../engine/async-engine.js";
import type { RequestOutput } from "../engine/engine-core.js";
import type { SamplingParams } from "../engine/sampling-params.js";
import type { SlidingWindow } from "./dashboard.js";
import { ApiError } from "./errors.js";
import type { Metrics } from "./metrics.js";

/** Why an engine request was aborted by the server itself (its own drain timeout), as opposed to the client leaving. */
export const SHUTDOWN = Symbol("shutdown");

/** One sequence's timing, for the latency histograms. */
interface Timing {
  first: number;
  last: number;
}

/** A launched request: its id, one engine stream per prompt, and the timings of its sequences. */
export interface Launched {
  id: string;
  streams: AsyncIterable<RequestOutput>[];
  timings: Map<number, Timing>;
  arrival: number;
}

const now = () => performance.now();

export class OutputStreams {
  constructor(
    private readonly engine: AsyncEngine,
    private readonly metrics: Metrics,
    private readonly ttft: SlidingWindow,
    private readonly itl: SlidingWindow,
    /** The error for a request the server itself aborted (its drain), if that is why `ac` fired. */
    private readonly interruption: (ac: AbortController) => ApiError | undefined,
  ) {}

  /** Start every prompt's request in the engine; streams come back in prompt order. */
  launch(prompts: number[][], samplings: SamplingParams[], prefix: string, ac: AbortController): Launched {
    // A client that left while its prompt was tokenized gets nothing started for it.
    if (ac.signal.aborted)
      throw (
        this.interruption(ac) ?? new ApiError(400, "the client closed the connection before the request started", "invalid_request_error")
      );
    const id = `${prefix}-${randomUUID().replaceAll("-", "")}`;
    const streams = prompts.map((p, i) =>
      this.engine.generate({ requestId: prompts.length === 1 ? id : `${id}-${i}`, promptTokenIds: p, sampling: samplings[i]! }, ac.signal),
    );
    return { id, streams, timings: new Map(), arrival: now() };
  }

  private observe(o2: RequestOutput, key: number, timings: Map<number, Timing>, arrival: number): void {
    const t = now();
    const tm = timings.get(key);
    if (!tm) {
      timings.set(key, { first: t, last: t });
      if (o2.index === 0) this.metrics.observePrompt(o2.numPromptTokens);
    } else {
      this.metrics.observeInterToken((t - tm.last) / 1000);
      this.itl.add(t - tm.last, t);
      tm.last = t;
    }
    if (o2.finished) {
      const first = timings.get(key)!.first;
      this.ttft.add(first - arrival, t);
      this.metrics.observeFinished({
        reason: o2.finishReason ?? "stop",
        ttft: (first - arrival) / 1000,
        e2e: (t - arrival) / 1000,
        queue: o2.queueMs === undefined ? undefined : o2.queueMs / 1000,
        promptTokens: o2.numPromptTokens,
        outputTokens: o2.numOutputTokens,
      });
    }
  }

  /**
   * The one loop over a request's outputs, streamed or not: every output of every prompt's stream as it
   * arrives, timed for the metrics, with its choice index (prompt p's completion i is p·n + i).
   */
  async forEachOutput(
    launched: { streams: AsyncIterable<RequestOutput>[]; timings: Map<number, Timing>; arrival: number },
    n: number,
    fn: (index: number, prompt: number, out: RequestOutput) => void,
  ): Promise<void> {
    const { streams, timings, arrival } = launched;
    let finished = 0;
    const each = (p: number, out: RequestOutput) => {
      const index = p * n + out.index;
      this.observe(out, index, timings, arrival);
      if (out.finished) finished++;
      fn(index, p, out);
    };
    try {
      if (streams.length === 1) for await (const out of streams[0]!) each(0, out);
      else for await (const [p, out] of this.merged(streams)) each(p, out);
    } catch (err) {
      // Sequences cut by an abort (the client left, or the server's drain ran out) count as vLLM counts them.
      if (err instanceof EngineRequestError && err.kind === "AbortError") this.metrics.observeAborted(streams.length * n - finished);
      throw err;
    }
  }

  /** Merge the prompt streams into one, tagging each output with its prompt's position. */
  private async *merged(streams: AsyncIterable<RequestOutput>[]): AsyncGenerator<[number, RequestOutput]> {
    const its = streams.map((s) => s[Symbol.asyncIterator]());
    const pending = new Map<number, Promise<[number, IteratorResult<RequestOutput>]>>();
    const pull = (i: number) =>
      pending.set(
        i,
        its[i]!.next().then((r) => [i, r] as [number, IteratorResult<RequestOutput>]),
      );
    its.forEach((_, i) => pull(i));
    try {
      while (pending.size > 0) {
        const [i, r] = await Promise.race(pending.values());
        if (r.done) {
          pending.delete(i);
          continue;
        }
        pull(i);
        yield [i, r.value];
      }
    } finally {
      for (const it of its) void it.return?.();
    }
  }
}

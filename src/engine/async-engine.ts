/**
 * The engine as the server sees it: an EngineCore running in its own worker
 * thread, driven by messages. `generate()` streams one request's outputs as an
 * async iterable; leaving the loop early (a client that went away) aborts the
 * request in the engine at once, freeing its KV blocks.
 */
import { EventEmitter } from "node:events";
import { Worker } from "node:worker_threads";
import type { AddRequest, EngineStats, RequestOutput } from "./engine-core.js";
import type { EngineInfo, FromWorker, Snapshot, ToWorker, WorkerInit } from "./engine-protocol.js";
import type { EngineOptions } from "./llm.js";

export class EngineRequestError extends Error {
  constructor(
    message: string,
    /** The error class the engine raised (RangeError for a prompt too long, ...). */
    readonly kind: string,
  ) {
    super(message);
    this.name = "EngineRequestError";
  }
}

export class EngineDeadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "EngineDeadError";
  }
}

/** One request's stream: outputs queue up here until the consumer takes them. */
class Stream {
  readonly queue: RequestOutput[] = [];
  error: Error | null = null;
  finished = 0;
  done = false;
  notify: (() => void) | null = null;

  constructor(readonly n: number) {}

  push(o: RequestOutput): void {
    this.queue.push(o);
    if (o.finished && ++this.finished === this.n) this.done = true;
    this.wake();
  }

  fail(e: Error): void {
    this.error = e;
    this.done = true;
    this.wake();
  }

  private wake(): void {
    const n = this.notify;
    this.notify = null;
    n?.();
  }
}

export interface AsyncEngineEvents {
  /** After every engine step that produced outputs. */
  step: [outputs: RequestOutput[], stats: EngineStats];
  progress: [done: number, total: number];
}

export class AsyncEngine extends EventEmitter<AsyncEngineEvents> {
  private streams = new Map<string, Stream>();
  private statsWaiters = new Map<number, (s: EngineStats) => void>();
  private snapshotWaiters = new Map<number, (s: Snapshot) => void>();
  private nextStatsId = 0;
  private dead: Error | null = null;
  private closing: Promise<void> | null = null;
  /** The latest statistics the engine reported (updated every step). */
  lastStats: EngineStats | null = null;

  private constructor(
    private readonly worker: Worker,
    readonly info: EngineInfo,
  ) {
    super();
  }

  /** Start the engine thread and load the model; resolves once it can take requests. */
  static start(
    modelDir: string,
    options: EngineOptions = {},
    extra: { stubModel?: boolean; stubStepMs?: number } = {},
  ): Promise<AsyncEngine> {
    const { onProgress, ...rest } = options;
    const init: WorkerInit = { modelDir, options: rest, stubModel: extra.stubModel, stubStepMs: extra.stubStepMs };
    const worker = new Worker(new URL("./engine-worker.js", import.meta.url), { workerData: init });
    return new Promise((resolve, reject) => {
      const onExit = (code: number) => reject(new EngineDeadError(`the engine thread exited (code ${code}) while loading ${modelDir}`));
      const onError = (err: Error) => reject(err);
      worker.once("exit", onExit);
      worker.once("error", onError);
      const onMessage = (m: FromWorker) => {
        if (m.type === "progress") onProgress?.(m.done, m.total);
        else if (m.type === "failed") {
          worker.off("message", onMessage);
          void worker.terminate();
          reject(new Error(m.message));
        } else if (m.type === "ready") {
          worker.off("message", onMessage);
          worker.off("exit", onExit);
          worker.off("error", onError);
          const engine = new AsyncEngine(worker, m.info);
          engine.attach();
          resolve(engine);
        }
      };
      worker.on("message", onMessage);
    });
  }

  private attach(): void {
    this.worker.on("message", (m: FromWorker) => this.onMessage(m));
    this.worker.on("error", (err) => this.die(new EngineDeadError(`the engine thread failed: ${err.message}`)));
    this.worker.on("exit", (code) => {
      if (!this.closing) this.die(new EngineDeadError(`the engine thread exited unexpectedly (code ${code})`));
    });
  }

  private onMessage(m: FromWorker): void {
    switch (m.type) {
      case "outputs":
        this.lastStats = m.stats;
        for (const o of m.outputs) {
          const s = this.streams.get(o.requestId);
          if (!s) continue;
          s.push(o);
          if (s.done) this.streams.delete(o.requestId);
        }
        this.emit("step", m.outputs, m.stats);
        break;
      case "rejected": {
        const s = this.streams.get(m.requestId);
        this.streams.delete(m.requestId);
        s?.fail(new EngineRequestError(m.message, m.name));
        break;
      }
      case "snapshot":
        this.lastStats = m.snapshot.engine.stats;
        this.snapshotWaiters.get(m.id)?.(m.snapshot);
        this.snapshotWaiters.delete(m.id);
        break;
      case "stats":
        this.lastStats = m.stats;
        this.statsWaiters.get(m.id)?.(m.stats);
        this.statsWaiters.delete(m.id);
        break;
      default:
        break;
    }
  }

  private die(err: Error): void {
    if (this.dead) return;
    this.dead = err;
    for (const s of this.streams.values()) s.fail(err);
    this.streams.clear();
  }

  private send(m: ToWorker): void {
    if (this.dead) throw this.dead;
    this.worker.postMessage(m);
  }

  get isAlive(): boolean {
    return this.dead === null && this.closing === null;
  }

  /** Requests the client is still streaming. */
  get numInFlight(): number {
    return this.streams.size;
  }

  /** Sequences not yet finished over all streaming requests (a request with n=4 counts up to 4). */
  get numSequencesInFlight(): number {
    let n = 0;
    for (const s of this.streams.values()) n += s.n - s.finished;
    return n;
  }

  /**
   * Queue a request and stream its outputs (for n > 1, every completion's,
   * tagged by index). Breaking out of the loop, or `signal` firing, aborts it.
   */
  generate(request: AddRequest, signal?: AbortSignal): AsyncIterable<RequestOutput> {
    if (this.dead) throw this.dead;
    if (this.closing) throw new EngineDeadError("the engine is shutting down");
    if (this.streams.has(request.requestId)) throw new Error(`request id "${request.requestId}" is already in use`);
    const stream = new Stream(request.sampling.n);
    this.streams.set(request.requestId, stream);
    this.send({ type: "add", request });
    const onAbort = () => this.abort(request.requestId);
    signal?.addEventListener("abort", onAbort, { once: true });
    if (signal?.aborted) onAbort();
    return this.iterate(request.requestId, stream, signal, onAbort);
  }

  /** The stream as an async iterator, written out by hand: one promise per output, not a generator's chain of them. */
  private iterate(id: string, stream: Stream, signal: AbortSignal | undefined, onAbort: () => void): AsyncIterableIterator<RequestOutput> {
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      signal?.removeEventListener("abort", onAbort);
      if (!stream.done) this.abort(id); // the consumer left early
    };
    const it: AsyncIterableIterator<RequestOutput> = {
      next: (): Promise<IteratorResult<RequestOutput>> => {
        if (closed) return Promise.resolve({ value: undefined, done: true });
        if (stream.queue.length > 0) return Promise.resolve({ value: stream.queue.shift()!, done: false });
        if (stream.error) {
          const e = stream.error;
          close();
          return Promise.reject(e);
        }
        if (stream.done) {
          close();
          return Promise.resolve({ value: undefined, done: true });
        }
        return new Promise<void>((resolve) => (stream.notify = resolve)).then(() => it.next());
      },
      return: (): Promise<IteratorResult<RequestOutput>> => {
        close();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]: () => it,
    };
    return it;
  }

  /** Abort a request: its blocks return to the pool in the engine's next loop turn. */
  abort(requestId: string): void {
    const s = this.streams.get(requestId);
    this.streams.delete(requestId);
    if (s && !s.done) s.fail(new EngineRequestError(`request ${requestId} was aborted`, "AbortError"));
    if (!this.dead && !this.closing) this.worker.postMessage({ type: "abort", requestId } satisfies ToWorker);
  }

  /** Fresh statistics from the engine thread. */
  stats(): Promise<EngineStats> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextStatsId++;
    return new Promise((resolve) => {
      this.statsWaiters.set(id, resolve);
      this.send({ type: "stats", id });
    });
  }

  /** Every KV block's state, every live request, and where the memory goes. */
  snapshot(): Promise<Snapshot> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextStatsId++;
    return new Promise((resolve) => {
      this.snapshotWaiters.set(id, resolve);
      this.send({ type: "snapshot", id });
    });
  }

  /** Stop the engine thread, freeing the model; in-flight requests end with an error. */
  shutdown(timeoutMs = Infinity): Promise<void> {
    if (this.closing) return this.closing;
    this.closing = new Promise<void>((resolve) => {
      if (this.dead) return resolve();
      this.worker.once("exit", () => resolve());
      this.worker.postMessage({ type: "shutdown" } satisfies ToWorker);
      // The thread reads the message between steps; one long step (a big prefill) must not outlast a deadline.
      if (Number.isFinite(timeoutMs)) setTimeout(() => void this.worker.terminate(), timeoutMs).unref();
    }).then(() => this.die(new EngineDeadError("the engine was shut down")));
    return this.closing;
  }
}

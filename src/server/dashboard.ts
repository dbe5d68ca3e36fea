/**
 * The live memory dashboard: `GET /dashboard` (a self-contained page),
 * `GET /dashboard/events` (a server-sent stream of snapshots) and
 * `GET /v1/admin/memory` (the same snapshot as JSON).
 */
import type { FastifyInstance } from "fastify";
import type { AllocationInfo } from "../backend/allocator.js";
import type { AsyncEngine } from "../engine/async-engine.js";
import type { RequestSnapshot } from "../engine/engine-core.js";
import { DASHBOARD_HTML } from "./dashboard-page.js";
import { openEventStream } from "./sse.js";

/** Timestamped samples kept for a sliding window, for percentiles "over the last minute". */
/**
 * Percentiles of the last minute of latency samples, cheap enough to feed on every token and
 * query 4 times a second under full load: samples go into log-spaced bins (BINS_PER_DOUBLING
 * per factor of two, so a reported value is within ~2% of the true one) kept per second of a
 * ring; a running total over the live seconds answers queries in O(bins), and a second that
 * falls out of the window is subtracted from it. (Sorting a minute of inter-token latencies at
 * a few thousand tokens/s on every dashboard update cost the server a fifth of its throughput.)
 */
export class SlidingWindow {
  static readonly BINS_PER_DOUBLING = 32;
  /** Bins cover [MIN, MIN · 2^DOUBLINGS); values outside go to the first or last bin. */
  static readonly MIN = 1e-3;
  static readonly DOUBLINGS = 30;
  private static readonly NBINS = SlidingWindow.BINS_PER_DOUBLING * SlidingWindow.DOUBLINGS;
  private readonly slots: number;
  private readonly slotMs: number;
  /** Per ring slot: its histogram and which period (t / slotMs, floored) it holds. */
  private readonly ring: Uint32Array[];
  private readonly period: Float64Array;
  private readonly total = new Float64Array(SlidingWindow.NBINS);
  private count = 0;

  constructor(
    readonly windowMs = 60_000,
    slots = 60,
  ) {
    this.slots = slots;
    this.slotMs = windowMs / slots;
    this.ring = Array.from({ length: slots }, () => new Uint32Array(SlidingWindow.NBINS));
    this.period = new Float64Array(slots).fill(-Infinity);
  }

  static binOf(value: number): number {
    const b = Math.floor(Math.log2(Math.max(value, SlidingWindow.MIN) / SlidingWindow.MIN) * SlidingWindow.BINS_PER_DOUBLING);
    return Math.min(SlidingWindow.NBINS - 1, Math.max(0, b));
  }

  /** The value a bin stands for: the geometric middle of its edges. */
  static valueOf(bin: number): number {
    return SlidingWindow.MIN * 2 ** ((bin + 0.5) / SlidingWindow.BINS_PER_DOUBLING);
  }

  add(value: number, t = performance.now()): void {
    if (!Number.isFinite(value)) return;
    const slot = this.slotFor(t);
    const b = SlidingWindow.binOf(value);
    this.ring[slot]![b]!++;
    this.total[b]!++;
    this.count++;
  }

  /** The ring slot for time t, emptied first if it still holds an older period (which has left the window). */
  private slotFor(t: number): number {
    const p = Math.floor(t / this.slotMs);
    const slot = ((p % this.slots) + this.slots) % this.slots;
    if (this.period[slot] !== p) {
      this.evict(slot);
      this.period[slot] = p;
    }
    return slot;
  }

  private evict(slot: number): void {
    const h = this.ring[slot]!;
    for (let b = 0; b < h.length; b++) {
      if (h[b] === 0) continue;
      this.total[b]! -= h[b]!;
      this.count -= h[b]!;
      h[b] = 0;
    }
  }

  /** Percentiles (p in [0, 100]) of the samples of the last windowMs, in the unit they were added. */
  percentiles(ps: number[], t = performance.now()): { count: number; values: Record<string, number | null> } {
    const now = Math.floor(t / this.slotMs);
    for (let s = 0; s < this.slots; s++) {
      if (this.period[s]! > now - this.slots) continue;
      this.evict(s);
      this.period[s] = -Infinity;
    }
    const values: Record<string, number | null> = {};
    for (const p of ps) values[`p${p}`] = this.count === 0 ? null : this.quantile(p / 100);
    return { count: this.count, values };
  }

  /** The value of the sample of rank ceil(q · count) (nearest rank, like the sorted version it replaced). */
  private quantile(q: number): number {
    const rank = Math.min(this.count, Math.max(1, Math.ceil(q * this.count)));
    let seen = 0;
    for (let b = 0; b < this.total.length; b++) {
      seen += this.total[b]!;
      if (seen >= rank) return SlidingWindow.valueOf(b);
    }
    return SlidingWindow.valueOf(this.total.length - 1);
  }
}

export interface MemoryGroup {
  name: string;
  tag: string;
  bytes: number;
  count: number;
}

/** Allocations grouped for a memory map: weights by layer, the rest by label family. */
export function groupAllocations(allocs: readonly AllocationInfo[]): MemoryGroup[] {
  const groups = new Map<string, MemoryGroup>();
  for (const a of allocs) {
    const layer = /layers\.(\d+)\./.exec(a.label) ?? /layer (\d+)/.exec(a.label);
    let name: string;
    if (a.tag === "weights") {
      if (layer) name = `layer ${layer[1]}`;
      else if (/embed/.test(a.label)) name = "embeddings";
      else if (/lm_head/.test(a.label)) name = "lm_head";
      else if (/rope/.test(a.label)) name = "rotary tables";
      else name = "other weights";
    } else if (a.tag === "kv-cache") name = layer ? `kv layer ${layer[1]}` : "kv cache";
    else name = a.label.replace(/\d+/g, "#");
    const key = `${a.tag}/${name}`;
    const g = groups.get(key) ?? { name, tag: a.tag, bytes: 0, count: 0 };
    g.bytes += a.bytes;
    g.count++;
    groups.set(key, g);
  }
  return [...groups.values()];
}

export interface DashboardDeps {
  engine: AsyncEngine;
  modelName: string;
  ttft: SlidingWindow;
  itl: SlidingWindow;
  /** Fires when the server starts shutting down: the event streams end. */
  closing: AbortSignal;
  /** Snapshots per second on the event stream. */
  updateHz?: number;
}

/** The snapshot the dashboard draws and /v1/admin/memory returns. */
export async function buildSnapshot(d: DashboardDeps, rates: RateTracker) {
  const { engine: eng, memory } = await d.engine.snapshot();
  const info = d.engine.info;
  const states = Buffer.from(eng.blockStates, "base64");
  let used = 0;
  let cached = 0;
  for (const s of states) {
    if (s === 2) used++;
    else if (s === 1) cached++;
  }
  const now = performance.now();
  const r = rates.update(now, eng.stats.promptTokens, eng.stats.generationTokens);
  const counts = { running: 0, waiting: 0, preempted: 0 };
  for (const q of eng.requests) counts[q.state]++;
  const bytesPerBlock = info.kvBytesPerToken * eng.blockSize;
  return {
    time: new Date().toISOString(),
    model: d.modelName,
    backend: info.backend,
    device: memory.device,
    memory: {
      byTag: memory.stats.byTag,
      total: memory.stats.total,
      peak: memory.stats.peak,
      allocations: memory.stats.allocations,
      groups: groupAllocations(memory.allocations),
      arena: info.arena,
    },
    kv: {
      numBlocks: eng.numBlocks,
      blockSize: eng.blockSize,
      bytesPerBlock,
      used,
      cached,
      free: eng.numBlocks - used - cached,
      usage: eng.stats.kvCacheUsage,
      blockStates: eng.blockStates,
      prefixCacheQueries: eng.stats.prefixCacheQueries,
      prefixCacheHits: eng.stats.prefixCacheHits,
    },
    counts: { ...counts, preemptionsTotal: eng.stats.numPreemptions },
    throughput: { promptTokensPerSecond: r.prompt, generationTokensPerSecond: r.generation, history: rates.history() },
    latency: {
      ttftMs: d.ttft.percentiles([50, 90, 99], now),
      itlMs: d.itl.percentiles([50, 90, 99], now),
    },
    requests: eng.requests.map((q: RequestSnapshot) => ({ ...q, ageMs: Math.round(q.ageMs) })),
  };
}

/** Token rates from cumulative counters, over the last few seconds, plus a minute of history for the chart. */
export class RateTracker {
  private samples: { t: number; prompt: number; gen: number }[] = [];
  private hist: { t: number; prompt: number; generation: number }[] = [];
  private lastHist = 0;

  update(t: number, prompt: number, gen: number): { prompt: number; generation: number } {
    this.samples.push({ t, prompt, gen });
    while (this.samples.length > 2 && this.samples[0]!.t < t - 3000) this.samples.shift();
    const a = this.samples[0]!;
    const dt = (t - a.t) / 1000;
    const rate = dt > 0.05 ? { prompt: (prompt - a.prompt) / dt, generation: (gen - a.gen) / dt } : { prompt: 0, generation: 0 };
    if (t - this.lastHist >= 1000) {
      this.hist.push({ t: Date.now(), ...rate });
      if (this.hist.length > 60) this.hist.shift();
      this.lastHist = t;
    }
    return rate;
  }

  history(): { t: number; prompt: number; generation: number }[] {
    return this.hist;
  }
}

export function registerDashboard(app: FastifyInstance, d: DashboardDeps): void {
  const rates = new RateTracker();
  const hz = d.updateHz ?? 4;
  // The page itself holds no data (it asks for the key and sends it on its event stream): it is public.
  app.get("/dashboard", { config: { public: true } }, async (_req, reply) =>
    reply.type("text/html; charset=utf-8").header("cache-control", "no-store").send(DASHBOARD_HTML),
  );
  app.get("/v1/admin/memory", async () => buildSnapshot(d, rates));
  app.get("/dashboard/events", async (_request, reply) => {
    const raw = openEventStream(reply);
    let closed = false;
    raw.on("close", () => (closed = true));
    while (!closed && d.engine.isAlive && !d.closing.aborted) {
      const started = performance.now();
      try {
        const snap = await buildSnapshot(d, rates);
        if (!closed) raw.write(`data: ${JSON.stringify(snap)}\n\n`);
      } catch {
        break; // the engine went away
      }
      const wait = Math.max(0, 1000 / hz - (performance.now() - started));
      await new Promise((r) => setTimeout(r, wait));
    }
    if (!raw.writableEnded) raw.end();
  });
}

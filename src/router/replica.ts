/**
 * One replica as the router sees it: where it is, whether it may take work, how loaded it is (its own
 * `/metrics` plus the router's in-flight count), its round-trip time, and a circuit breaker.
 */
import type { ChildProcess } from "node:child_process";

export type ReplicaState = "starting" | "ready" | "unhealthy" | "draining";

/** What a replica's `/metrics` says; Tokamak's `tokamak:` names and vLLM's `vllm:` names are both read. */
export interface ReplicaLoad {
  running: number;
  waiting: number;
  kvUsage: number;
  prefixQueries: number;
  prefixHits: number;
  /** When it was read (ms, performance.now()); 0: never. */
  at: number;
}

export interface ReplicaSpec {
  url: string;
  region?: string;
}

/** `URL[@region=R]` (the `--replica` flag's form) → a spec; throws naming what is wrong. */
export function parseReplicaSpec(s: string): ReplicaSpec {
  const at = s.lastIndexOf("@");
  let url = s;
  let region: string | undefined;
  if (at > s.indexOf("://") + 2 && /^@[a-z_]+=/i.test(s.slice(at))) {
    url = s.slice(0, at);
    for (const kv of s.slice(at + 1).split(",")) {
      const [k, v] = kv.split("=", 2);
      if (k === "region" && v) region = v;
      else throw new Error(`--replica ${s}: unknown attribute "${kv}"; expected URL@region=NAME`);
    }
  }
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`--replica ${s}: "${url}" is not a URL; expected e.g. http://127.0.0.1:8001 or http://host:8000@region=eu`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:")
    throw new Error(`--replica ${s}: only http:// and https:// replicas are supported`);
  if (u.pathname !== "/" || u.search || u.hash)
    throw new Error(`--replica ${s}: give the server's root URL, without a path (the router adds /v1/...)`);
  return { url: u.origin, region };
}

/** Sum of every sample of each named metric in Prometheus' text format (all label sets). */
export function parsePrometheusSums(text: string, names: readonly string[]): Map<string, number> {
  const want = new Set(names);
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line.length === 0 || line[0] === "#") continue;
    const brace = line.indexOf("{");
    const space = line.indexOf(" ");
    const end = brace >= 0 && brace < space ? brace : space;
    if (end <= 0) continue;
    const name = line.slice(0, end);
    if (!want.has(name)) continue;
    // The value follows the label set (whose quoted values may hold spaces); a timestamp may follow it.
    const afterLabels = brace >= 0 && brace < space ? line.slice(line.lastIndexOf("}") + 1) : line.slice(end);
    const value = Number(afterLabels.trim().split(/\s+/)[0]);
    if (Number.isFinite(value)) out.set(name, (out.get(name) ?? 0) + value);
  }
  return out;
}

const METRIC_NAMES = [
  "num_requests_running",
  "num_requests_waiting",
  "kv_cache_usage_perc",
  "prefix_cache_queries_total",
  "prefix_cache_hits_total",
];
const PREFIXED = METRIC_NAMES.flatMap((n) => [`tokamak:${n}`, `vllm:${n}`]);

export function loadFromMetrics(text: string, at: number): ReplicaLoad {
  const sums = parsePrometheusSums(text, PREFIXED);
  const get = (n: string) => sums.get(`tokamak:${n}`) ?? sums.get(`vllm:${n}`) ?? 0;
  return {
    running: get("num_requests_running"),
    waiting: get("num_requests_waiting"),
    kvUsage: get("kv_cache_usage_perc"),
    prefixQueries: get("prefix_cache_queries_total"),
    prefixHits: get("prefix_cache_hits_total"),
    at,
  };
}

export interface BreakerOptions {
  /** Consecutive failures (requests that could not connect, failed probes) that open the breaker. */
  failureThreshold: number;
  /** First open period; doubles on each failed probe, up to `maxOpenMs`. */
  openMs: number;
  maxOpenMs: number;
}

export const DEFAULT_BREAKER: BreakerOptions = { failureThreshold: 3, openMs: 2000, maxOpenMs: 30_000 };

export class Replica {
  state: ReplicaState;
  /** Requests the router has sent and not yet seen finish. */
  inFlight = 0;
  load: ReplicaLoad = { running: 0, waiting: 0, kvUsage: 0, prefixQueries: 0, prefixHits: 0, at: 0 };
  /** Smoothed round-trip time of the health probe, ms; undefined until measured. */
  rttMs: number | undefined;
  consecutiveFailures = 0;
  /** While now < openUntil the breaker is open: no requests, no probes. */
  openUntil = 0;
  openMs: number;
  lastError: string | undefined;
  readonly addedAt = Date.now();
  /** The process the autoscaler started, if it did. */
  process: ChildProcess | undefined;
  /** Resolves when a drain has finished and the replica is gone. */
  drained: Promise<void> | undefined;
  /** Times the breaker opened. */
  trips = 0;

  constructor(
    readonly id: string,
    readonly url: string,
    readonly region: string | undefined,
    private readonly breaker: BreakerOptions = DEFAULT_BREAKER,
    initial: ReplicaState = "starting",
  ) {
    this.state = initial;
    this.openMs = breaker.openMs;
  }

  get breakerOpen(): boolean {
    return performance.now() < this.openUntil;
  }

  /** May take new requests. */
  get routable(): boolean {
    return this.state === "ready" && !this.breakerOpen;
  }

  /** The load the router balances on: what the replica last reported, or what the router itself has sent since, whichever is more. */
  get score(): number {
    return Math.max(this.inFlight, this.load.running + this.load.waiting);
  }

  /** A request or probe succeeded. */
  succeeded(): void {
    this.consecutiveFailures = 0;
    this.openMs = this.breaker.openMs;
    this.lastError = undefined;
  }

  /** A request could not reach the replica, or a probe failed: the replica takes no more work until a probe succeeds. */
  failed(reason: string): void {
    this.lastError = reason;
    this.consecutiveFailures++;
    if (this.state === "ready") this.state = "unhealthy";
    if (this.consecutiveFailures >= this.breaker.failureThreshold) {
      if (!this.breakerOpen) this.trips++;
      this.openUntil = performance.now() + this.openMs;
      this.openMs = Math.min(this.openMs * 2, this.breaker.maxOpenMs);
    }
  }

  describe(): Record<string, unknown> {
    return {
      id: this.id,
      url: this.url,
      region: this.region ?? null,
      state: this.state,
      breaker: this.breakerOpen ? "open" : this.consecutiveFailures > 0 ? "half-open" : "closed",
      in_flight: this.inFlight,
      running: this.load.running,
      waiting: this.load.waiting,
      kv_cache_usage: this.load.kvUsage,
      prefix_cache_hit_rate: this.load.prefixQueries > 0 ? this.load.prefixHits / this.load.prefixQueries : null,
      rtt_ms: this.rttMs === undefined ? null : Math.round(this.rttMs * 100) / 100,
      consecutive_failures: this.consecutiveFailures,
      last_error: this.lastError ?? null,
      spawned: this.process !== undefined,
      pid: this.process?.pid ?? null,
    };
  }
}

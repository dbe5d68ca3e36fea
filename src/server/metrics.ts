/**
 * Prometheus metrics with vLLM's names and meanings under the `tokamak:`
 * prefix (or `vllm:` with `--metrics-prefix vllm`) (vLLM exposes counters with a `_total` suffix; so do we), every one
 * labelled with the served model name.
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { EngineStats } from "../engine/engine-core.js";

const LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
const ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
function lengthBuckets(max: number): number[] {
  const out: number[] = [];
  for (let e = 0; ; e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v > max) return out;
      out.push(v);
    }
  }
}

export const METRICS_PREFIXES = ["tokamak", "vllm"] as const;
export type MetricsPrefix = (typeof METRICS_PREFIXES)[number];

export class Metrics {
  readonly registry = new Registry();
  private readonly labels: { model_name: string };
  private last: EngineStats | null = null;
  readonly running: Gauge;
  readonly waiting: Gauge;
  readonly kvUsage: Gauge;
  readonly prefixQueries: Counter;
  readonly prefixHits: Counter;
  readonly preemptions: Counter;
  readonly promptTokens: Counter;
  readonly generationTokens: Counter;
  readonly success: Counter;
  readonly ttft: Histogram;
  readonly itl: Histogram;
  readonly e2e: Histogram;
  readonly queue: Histogram;
  readonly promptLen: Histogram;
  readonly genLen: Histogram;

  /** @param prefix the metric names' prefix: "tokamak" (default) or "vllm", so vLLM's Grafana dashboards read them unchanged. */
  constructor(modelName: string, maxModelLen: number, prefix: MetricsPrefix = "tokamak") {
    this.labels = { model_name: modelName };
    const r = [this.registry];
    const labelNames = ["model_name"] as const;
    const gauge = (name: string, help: string) => new Gauge({ name, help, labelNames, registers: r });
    const counter = (name: string, help: string, extra: string[] = []) =>
      new Counter({ name, help, labelNames: [...labelNames, ...extra], registers: r });
    const hist = (name: string, help: string, buckets: number[]) => new Histogram({ name, help, labelNames, buckets, registers: r });
    this.running = gauge(`${prefix}:num_requests_running`, "Number of requests in model execution batches.");
    this.waiting = gauge(`${prefix}:num_requests_waiting`, "Number of requests waiting to be processed.");
    this.kvUsage = gauge(`${prefix}:kv_cache_usage_perc`, "KV-cache usage. 1 means 100 percent usage.");
    this.prefixQueries = counter(`${prefix}:prefix_cache_queries_total`, "Prefix cache queries, in terms of number of queried tokens.");
    this.prefixHits = counter(`${prefix}:prefix_cache_hits_total`, "Prefix cache hits, in terms of number of cached tokens.");
    this.preemptions = counter(`${prefix}:num_preemptions_total`, "Cumulative number of preemptions from the engine.");
    this.promptTokens = counter(`${prefix}:prompt_tokens_total`, "Number of prefill tokens processed.");
    this.generationTokens = counter(`${prefix}:generation_tokens_total`, "Number of generation tokens processed.");
    this.success = counter(`${prefix}:request_success_total`, "Count of successfully processed requests.", ["finished_reason"]);
    this.ttft = hist(`${prefix}:time_to_first_token_seconds`, "Histogram of time to first token in seconds.", LATENCY_BUCKETS);
    this.itl = hist(`${prefix}:inter_token_latency_seconds`, "Histogram of inter-token latency in seconds.", ITL_BUCKETS);
    this.e2e = hist(`${prefix}:e2e_request_latency_seconds`, "Histogram of end to end request latency in seconds.", LATENCY_BUCKETS);
    this.queue = hist(`${prefix}:request_queue_time_seconds`, "Histogram of time spent in WAITING phase for request.", LATENCY_BUCKETS);
    this.promptLen = hist(`${prefix}:request_prompt_tokens`, "Number of prefill tokens processed.", lengthBuckets(maxModelLen));
    this.genLen = hist(`${prefix}:request_generation_tokens`, "Number of generation tokens processed.", lengthBuckets(maxModelLen));
    // Every series present from the start, at zero, as vLLM exposes them.
    for (const g of [this.running, this.waiting, this.kvUsage]) g.set(this.labels, 0);
    for (const c of [this.prefixQueries, this.prefixHits, this.preemptions, this.promptTokens, this.generationTokens])
      c.inc(this.labels, 0);
    for (const reason of ["stop", "length", "abort"]) this.success.inc({ ...this.labels, finished_reason: reason }, 0);
  }

  /** Engine statistics (cumulative) → gauges and counter increments. */
  observeEngine(s: EngineStats): void {
    const l = this.labels;
    this.running.set(l, s.numRunning);
    this.waiting.set(l, s.numWaiting);
    this.kvUsage.set(l, s.kvCacheUsage);
    const p = this.last;
    const inc = (c: Counter, now: number, before: number | undefined) => {
      if (now > (before ?? 0)) c.inc(l, now - (before ?? 0));
    };
    inc(this.prefixQueries, s.prefixCacheQueries, p?.prefixCacheQueries);
    inc(this.prefixHits, s.prefixCacheHits, p?.prefixCacheHits);
    inc(this.preemptions, s.numPreemptions, p?.numPreemptions);
    inc(this.generationTokens, s.generationTokens, p?.generationTokens);
    this.last = s;
  }

  /** One finished sequence: latencies in seconds. */
  observeFinished(o: {
    reason: string;
    ttft: number;
    e2e: number;
    queue: number | undefined;
    promptTokens: number;
    outputTokens: number;
  }): void {
    const l = this.labels;
    this.success.inc({ ...l, finished_reason: o.reason });
    this.ttft.observe(l, o.ttft);
    this.e2e.observe(l, o.e2e);
    if (o.queue !== undefined && o.queue >= 0) this.queue.observe(l, o.queue);
    this.promptLen.observe(l, o.promptTokens);
    this.genLen.observe(l, o.outputTokens);
  }

  /** Sequences that ended by an abort before finishing (request_success_total{finished_reason="abort"}). */
  observeAborted(sequences: number): void {
    if (sequences > 0) this.success.inc({ ...this.labels, finished_reason: "abort" }, sequences);
  }

  /** A request's prompt, counted once when its first token comes out (cached tokens included, as vLLM counts). */
  observePrompt(tokens: number): void {
    this.promptTokens.inc(this.labels, tokens);
  }

  observeInterToken(seconds: number): void {
    this.itl.observe(this.labels, seconds);
  }
}

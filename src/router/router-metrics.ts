/** The router's own Prometheus metrics (`tokamak_router_*`), per replica. */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { ReplicaPool } from "./pool.js";

const LATENCY = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160];

export class RouterMetrics {
  readonly registry = new Registry();
  readonly requests: Counter;
  readonly errors: Counter;
  readonly retries: Counter;
  readonly latency: Histogram;
  readonly firstByte: Histogram;
  readonly decisions: Counter;
  readonly affinityHits: Counter;
  readonly regionDecisions: Counter;
  readonly scaleEvents: Counter;
  readonly desiredReplicas: Gauge;

  constructor(pool: ReplicaPool) {
    const registers = [this.registry];
    this.requests = new Counter({
      name: "tokamak_router_requests_total",
      help: "Requests the router answered, by replica (none: no replica could take it), route and HTTP status.",
      labelNames: ["replica", "route", "status"],
      registers,
    });
    this.errors = new Counter({
      name: "tokamak_router_errors_total",
      help: "Failures talking to replicas: connect (before the first byte, retried), midstream (after it), refused (a 503 from a replica, retried).",
      labelNames: ["replica", "kind"],
      registers,
    });
    this.retries = new Counter({
      name: "tokamak_router_retries_total",
      help: "Requests sent again to another replica after this one failed before answering.",
      labelNames: ["replica"],
      registers,
    });
    this.latency = new Histogram({
      name: "tokamak_router_request_duration_seconds",
      help: "Time from a request's arrival at the router to the end of its response, by replica.",
      labelNames: ["replica", "route"],
      buckets: LATENCY,
      registers,
    });
    this.firstByte = new Histogram({
      name: "tokamak_router_time_to_first_byte_seconds",
      help: "Time from a request's arrival to the first byte of its response body from the replica (for streams, the first event).",
      labelNames: ["replica", "route"],
      buckets: LATENCY,
      registers,
    });
    this.decisions = new Counter({
      name: "tokamak_router_routing_decisions_total",
      help: "Routing decisions by policy, reason (prefix, least-cache, balance, least-load, round-robin, in-region:*, failover-down, failover-saturated) and replica.",
      labelNames: ["policy", "reason", "replica"],
      registers,
    });
    this.affinityHits = new Counter({
      name: "tokamak_router_cache_affinity_hits_total",
      help: "Requests sent to a replica that had seen more than --cache-threshold of their prompt.",
      labelNames: ["replica"],
      registers,
    });
    this.regionDecisions = new Counter({
      name: "tokamak_router_region_decisions_total",
      help: "Region policy decisions: the region asked for, the region served, and whether it failed over.",
      labelNames: ["wanted", "served", "outcome"],
      registers,
    });
    this.scaleEvents = new Counter({
      name: "tokamak_router_scale_events_total",
      help: "Replicas the autoscaler started (up) or drained (down).",
      labelNames: ["direction"],
      registers,
    });
    this.desiredReplicas = new Gauge({
      name: "tokamak_router_desired_replicas",
      help: "The autoscaler's current desired replica count.",
      registers,
    });
    const perReplica = (name: string, help: string, value: (r: import("./replica.js").Replica) => number | undefined) =>
      new Gauge({
        name,
        help,
        labelNames: ["replica", "region", "url"],
        registers,
        collect() {
          this.reset();
          for (const r of pool.replicas.values()) {
            const v = value(r);
            if (v !== undefined) this.set({ replica: r.id, region: r.region ?? "", url: r.url }, v);
          }
        },
      });
    perReplica("tokamak_router_replica_ready", "1 when the replica takes new requests (ready, breaker closed), else 0.", (r) =>
      r.routable ? 1 : 0,
    );
    perReplica("tokamak_router_replica_in_flight", "Requests the router has on the replica now.", (r) => r.inFlight);
    perReplica("tokamak_router_replica_waiting", "The replica's own waiting queue, as its /metrics last said.", (r) => r.load.waiting);
    perReplica("tokamak_router_replica_running", "The replica's running batch, as its /metrics last said.", (r) => r.load.running);
    perReplica(
      "tokamak_router_replica_kv_cache_usage_perc",
      "The replica's KV-cache usage, as its /metrics last said.",
      (r) => r.load.kvUsage,
    );
    perReplica("tokamak_router_replica_rtt_seconds", "Smoothed round-trip time of the replica's /health probe.", (r) =>
      r.rttMs === undefined ? undefined : r.rttMs / 1000,
    );
    perReplica("tokamak_router_replica_breaker_open", "1 while the replica's circuit breaker is open.", (r) => (r.breakerOpen ? 1 : 0));
    new Gauge({
      name: "tokamak_router_replicas",
      help: "Replicas in the pool by state (starting, ready, unhealthy, draining).",
      labelNames: ["state"],
      registers,
      collect() {
        this.reset();
        const n: Record<string, number> = { starting: 0, ready: 0, unhealthy: 0, draining: 0 };
        for (const r of pool.replicas.values()) n[r.state] = (n[r.state] ?? 0) + 1;
        for (const [state, v] of Object.entries(n)) this.set({ state }, v);
      },
    });
  }
}

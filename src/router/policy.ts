/** Which replica takes a request: round-robin, least-load, cache-aware (SGLang's rule) and region-aware. */
import type { PrefixTree } from "./prefix-tree.js";
import type { Replica } from "./replica.js";

export const POLICIES = ["cache-aware", "least-load", "round-robin", "region"] as const;
export type PolicyName = (typeof POLICIES)[number];

export interface PolicyOptions {
  /** Load imbalance (max − min of running + waiting) past which cache affinity gives way to the least-loaded replica... */
  balanceAbsThreshold: number;
  /** ...when also max > min × this. */
  balanceRelThreshold: number;
  /** Fraction of the prompt a replica must have seen for the prefix match to decide. */
  cacheThreshold: number;
  /** The region of requests that name none (the router's own). */
  defaultRegion: string | undefined;
  /** A replica with this many requests waiting is saturated: the region policy looks elsewhere when all of a region's are. */
  regionSaturationWaiting: number;
  /** Milliseconds of round-trip time one unit of load is worth when weighing replicas of other regions. */
  regionLoadWeightMs: number;
}

export const DEFAULT_POLICY_OPTIONS: PolicyOptions = {
  balanceAbsThreshold: 64,
  balanceRelThreshold: 1.5,
  cacheThreshold: 0.5,
  defaultRegion: undefined,
  regionSaturationWaiting: 8,
  regionLoadWeightMs: 10,
};

export interface RouteRequest {
  /** The prompt's text (or token ids) the prefix tree is keyed on; "" when unknown. */
  key: string;
  /** The client's region (`x-tokamak-region`), if it sent one. */
  region: string | undefined;
}

export interface Decision {
  replica: Replica;
  /** Why: balance, prefix, least-cache, least-load, round-robin, in-region, failover-down, failover-saturated, any-region. */
  reason: string;
  /** Fraction of the prompt the chosen replica had seen (cache-aware and region policies). */
  matchRatio: number;
  /** The region the request asked for (region policy). */
  wantedRegion?: string;
}

export class Router {
  private rr = 0;

  constructor(
    readonly policy: PolicyName,
    readonly tree: PrefixTree,
    readonly o: PolicyOptions = DEFAULT_POLICY_OPTIONS,
  ) {}

  /** Pick among `candidates` (the routable replicas, never empty); records the prompt against the choice. */
  choose(candidates: Replica[], req: RouteRequest): Decision {
    if (candidates.length === 0) throw new Error("Router.choose: no candidates");
    let d: Decision;
    switch (this.policy) {
      case "round-robin":
        d = { replica: candidates[this.rr++ % candidates.length]!, reason: "round-robin", matchRatio: 0 };
        break;
      case "least-load":
        d = { replica: this.leastLoaded(candidates), reason: "least-load", matchRatio: 0 };
        break;
      case "cache-aware":
        d = this.cacheAware(candidates, req.key);
        break;
      case "region":
        d = this.regional(candidates, req);
        break;
    }
    if (req.key.length > 0 && (this.policy === "cache-aware" || this.policy === "region")) this.tree.insert(req.key, d.replica.id);
    return d;
  }

  /** Lowest load; among equals, the one least recently picked by this rule (rotating), so ties spread. */
  leastLoaded(c: Replica[]): Replica {
    const start = this.rr++ % c.length;
    let best = c[start]!;
    for (let i = 1; i < c.length; i++) {
      const r = c[(start + i) % c.length]!;
      if (r.score < best.score) best = r;
    }
    return best;
  }

  private cacheAware(c: Replica[], key: string): Decision {
    let min = Infinity;
    let max = -Infinity;
    for (const r of c) {
      min = Math.min(min, r.score);
      max = Math.max(max, r.score);
    }
    if (max - min > this.o.balanceAbsThreshold && max > min * this.o.balanceRelThreshold) {
      return { replica: this.leastLoaded(c), reason: "balance", matchRatio: 0 };
    }
    const m = this.tree.match(key);
    let best: Replica | undefined;
    let bestLen = 0;
    for (const r of c) {
      const len = m.matched.get(r.id) ?? 0;
      if (len > bestLen || (len === bestLen && len > 0 && best !== undefined && r.score < best.score)) {
        best = r;
        bestLen = len;
      }
    }
    const ratio = m.length > 0 ? bestLen / m.length : 0;
    if (best !== undefined && ratio > this.o.cacheThreshold) return { replica: best, reason: "prefix", matchRatio: ratio };
    // No replica has seen enough of it: the one holding the least cached text takes it (then the least loaded).
    let pick = c[0]!;
    for (const r of c.slice(1)) {
      const a = this.tree.charsOf(r.id);
      const b = this.tree.charsOf(pick.id);
      if (a < b || (a === b && r.score < pick.score)) pick = r;
    }
    return { replica: pick, reason: "least-cache", matchRatio: m.length > 0 ? (m.matched.get(pick.id) ?? 0) / m.length : 0 };
  }

  private regional(c: Replica[], req: RouteRequest): Decision {
    const wanted = req.region ?? this.o.defaultRegion;
    if (wanted === undefined) return { ...this.cacheAware(c, req.key), wantedRegion: undefined };
    const local = c.filter((r) => r.region === wanted);
    const open = local.filter((r) => r.load.waiting < this.o.regionSaturationWaiting);
    if (open.length > 0) {
      const d = this.cacheAware(open, req.key);
      return { ...d, reason: `in-region:${d.reason}`, wantedRegion: wanted };
    }
    // The region is down (no routable replica) or saturated: the rest, weighing round-trip time with load.
    const others = c.filter((r) => r.region !== wanted);
    const pool = others.length > 0 ? others : c;
    const cost = (r: Replica) => (r.rttMs ?? 0) + this.o.regionLoadWeightMs * r.score;
    let best = pool[0]!;
    for (const r of pool.slice(1)) if (cost(r) < cost(best)) best = r;
    const reason = local.length === 0 ? "failover-down" : "failover-saturated";
    return { replica: best, reason, matchRatio: 0, wantedRegion: wanted };
  }
}

/** The text a request's prompt is keyed on: chat messages' roles and text, or the completion prompt (its first, if a batch). */
export function routingKey(body: unknown, route: "chat" | "completion"): string {
  if (typeof body !== "object" || body === null) return "";
  const b = body as Record<string, unknown>;
  if (route === "chat") {
    if (!Array.isArray(b.messages)) return "";
    let s = "";
    for (const m of b.messages as unknown[]) {
      if (typeof m !== "object" || m === null) continue;
      const msg = m as Record<string, unknown>;
      s += `<${String(msg.role)}>`;
      if (typeof msg.content === "string") s += msg.content;
      else if (Array.isArray(msg.content))
        for (const p of msg.content as unknown[]) {
          const t = (p as Record<string, unknown> | null)?.text;
          if (typeof t === "string") s += t;
        }
      s += "\n";
    }
    return s;
  }
  let p = b.prompt;
  if (Array.isArray(p) && p.length > 0 && (typeof p[0] === "string" || Array.isArray(p[0]))) p = p[0];
  if (typeof p === "string") return p;
  if (Array.isArray(p)) return p.map((t) => `${String(t)},`).join("");
  return "";
}

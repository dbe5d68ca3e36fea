/**
 * The replicas behind the router: added, drained and removed at run time, probed on `/health` and read
 * on `/metrics` every health interval, and optionally discovered from a DNS name (a Kubernetes headless
 * Service) whose addresses are resolved on the same beat.
 */
import { lookup } from "node:dns/promises";
import { Agent as HttpAgent, request as httpRequest } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { PrefixTree } from "./prefix-tree.js";
import { type BreakerOptions, DEFAULT_BREAKER, loadFromMetrics, parseReplicaSpec, Replica, type ReplicaState } from "./replica.js";

export interface PoolOptions {
  healthIntervalMs: number;
  /** A probe that takes longer fails. */
  probeTimeoutMs: number;
  breaker: BreakerOptions;
  /** Sent on probes (a replica's /metrics may need its API key). */
  replicaApiKey?: string;
  /** `host:port` whose A/AAAA records are the replicas (re-resolved every interval). */
  discoverDns?: string;
  /** Region given to discovered replicas. */
  discoverRegion?: string;
  maxTreeCharsPerReplica: number;
}

export const DEFAULT_POOL_OPTIONS: PoolOptions = {
  healthIntervalMs: 2000,
  probeTimeoutMs: 2000,
  breaker: DEFAULT_BREAKER,
  maxTreeCharsPerReplica: 1 << 21,
};

/** One keep-alive agent per scheme: requests and probes reuse connections, so a probe's time is one round trip. */
export const agents = {
  http: new HttpAgent({ keepAlive: true, maxSockets: Infinity, keepAliveMsecs: 1000 }),
  https: new HttpsAgent({ keepAlive: true, maxSockets: Infinity, keepAliveMsecs: 1000 }),
};

export function requestFn(url: string) {
  return url.startsWith("https:") ? { request: httpsRequest, agent: agents.https } : { request: httpRequest, agent: agents.http };
}

/** GET `url` and read the body, failing after `timeoutMs`. */
function get(url: string, timeoutMs: number, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  const { request, agent } = requestFn(url);
  return new Promise((resolve, reject) => {
    const req = request(url, { method: "GET", agent, headers, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end();
  });
}

export class ReplicaPool {
  readonly replicas = new Map<string, Replica>();
  readonly tree: PrefixTree;
  private nextId = 1;
  private timer: NodeJS.Timeout | undefined;
  private probing: Promise<void> | undefined;
  private readonly listeners = new Set<(r: Replica, event: "added" | "removed" | ReplicaState) => void>();
  /** Replicas that left the pool (removed or drained), for the admin API's history and the tests. */
  readonly removed: { id: string; url: string; at: number; how: "removed" | "drained" }[] = [];

  constructor(readonly o: PoolOptions = DEFAULT_POOL_OPTIONS) {
    this.tree = new PrefixTree(o.maxTreeCharsPerReplica);
  }

  on(listener: (r: Replica, event: "added" | "removed" | ReplicaState) => void): void {
    this.listeners.add(listener);
  }

  private emit(r: Replica, event: "added" | "removed" | ReplicaState): void {
    for (const l of this.listeners) l(r, event);
  }

  /** Add a replica; it takes work once its first probe succeeds. Throws on a bad spec or a URL already in the pool. */
  add(spec: string, extra: { id?: string; region?: string } = {}): Replica {
    const s = parseReplicaSpec(spec);
    const region = extra.region ?? s.region;
    for (const r of this.replicas.values())
      if (r.url === s.url) throw new PoolError(409, `a replica at ${s.url} is already in the pool (id ${r.id})`);
    const id = extra.id ?? `r${this.nextId++}`;
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(id)) throw new PoolError(400, `replica id "${id}" must be 1–64 letters, digits, '.', '_' or '-'`);
    if (this.replicas.has(id)) throw new PoolError(409, `a replica with id ${id} is already in the pool`);
    const r = new Replica(id, s.url, region, this.o.breaker);
    this.replicas.set(id, r);
    this.emit(r, "added");
    void this.probe(r);
    return r;
  }

  get(id: string): Replica {
    const r = this.replicas.get(id);
    if (!r)
      throw new PoolError(404, `no replica "${id}"; GET /admin/replicas lists them (${[...this.replicas.keys()].join(", ") || "none"})`);
    return r;
  }

  /** Take a replica out now; requests already on it run on (their connections stay open). */
  remove(id: string, how: "removed" | "drained" = "removed"): Replica {
    const r = this.get(id);
    this.replicas.delete(id);
    this.tree.removeReplica(id);
    this.removed.push({ id, url: r.url, at: Date.now(), how });
    if (this.removed.length > 256) this.removed.shift();
    this.emit(r, "removed");
    return r;
  }

  /**
   * Stop sending new work to `id`, wait for its in-flight requests to finish, then remove it (and stop its
   * process, if the autoscaler started it). Resolves when it is gone.
   */
  drain(id: string): Promise<void> {
    const r = this.get(id);
    if (r.drained) return r.drained;
    r.state = "draining";
    this.emit(r, "draining");
    r.drained = (async () => {
      while (r.inFlight > 0) await new Promise((res) => setTimeout(res, 25));
      if (this.replicas.get(id) === r) this.remove(id, "drained");
      await stopProcess(r);
    })();
    return r.drained;
  }

  /** The replicas that may take a request now. */
  routable(): Replica[] {
    const out: Replica[] = [];
    for (const r of this.replicas.values()) if (r.routable) out.push(r);
    return out;
  }

  /** Probe `/health` (its time is the round trip) and, when healthy, read `/metrics`. */
  async probe(r: Replica): Promise<void> {
    if (r.breakerOpen || r.state === "draining") return;
    const headers: Record<string, string> = this.o.replicaApiKey ? { authorization: `Bearer ${this.o.replicaApiKey}` } : {};
    const t0 = performance.now();
    try {
      const h = await get(`${r.url}/health`, this.o.probeTimeoutMs, headers);
      const rtt = performance.now() - t0;
      if (h.status !== 200) throw new Error(`/health answered ${h.status}`);
      r.rttMs = r.rttMs === undefined ? rtt : 0.7 * r.rttMs + 0.3 * rtt;
      const m = await get(`${r.url}/metrics`, this.o.probeTimeoutMs, headers);
      if (m.status === 200) r.load = loadFromMetrics(m.body, performance.now());
      if (!this.replicas.has(r.id) || (r.state as ReplicaState) === "draining") return;
      r.succeeded();
      if (r.state !== "ready") {
        r.state = "ready";
        this.emit(r, "ready");
      }
    } catch (err) {
      if (!this.replicas.has(r.id) || (r.state as ReplicaState) === "draining") return;
      const was = r.state;
      // A replica still loading its model is not failing: it stays "starting" (no breaker) until its first 200.
      if (was === "starting") r.lastError = (err as Error).message;
      else {
        r.failed((err as Error).message);
        if (was !== r.state) this.emit(r, r.state);
      }
    }
  }

  /** Probe every replica now (and re-resolve the DNS name); resolves when all probes have answered or timed out. */
  probeAll(): Promise<void> {
    return (this.probing ??= (async () => {
      try {
        if (this.o.discoverDns) await this.discover(this.o.discoverDns);
        await Promise.all([...this.replicas.values()].map((r) => this.probe(r)));
      } finally {
        this.probing = undefined;
      }
    })());
  }

  private async discover(hostPort: string): Promise<void> {
    const { host, port } = splitHostPort(hostPort);
    let addresses: string[];
    try {
      addresses = (await lookup(host, { all: true })).map((a) => (a.family === 6 ? `[${a.address}]` : a.address));
    } catch {
      addresses = []; // NXDOMAIN while no pod is ready: no replicas, not an error
    }
    const want = new Set(addresses.map((a) => `http://${a}:${port}`));
    for (const r of [...this.replicas.values()]) {
      if (r.id.startsWith("dns-") && !want.has(r.url) && r.state !== "draining") void this.drain(r.id);
    }
    const have = new Set([...this.replicas.values()].map((r) => r.url));
    for (const url of want)
      if (!have.has(url)) this.add(url, { id: `dns-${url.slice(7).replace(/[^A-Za-z0-9.-]/g, "_")}`, region: this.o.discoverRegion });
  }

  start(): void {
    if (this.timer) return;
    void this.probeAll();
    this.timer = setInterval(() => void this.probeAll(), this.o.healthIntervalMs);
    this.timer.unref();
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await Promise.all([...this.replicas.values()].map((r) => stopProcess(r)));
  }
}

export class PoolError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export function splitHostPort(s: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(s);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port > 0 && port < 65536))
    throw new Error(`--discover-dns ${s}: expected NAME:PORT, e.g. tokamak-replicas-headless.tokamak.svc.cluster.local:8000`);
  return { host: m[1]!.replace(/^\[|\]$/g, ""), port };
}

/** SIGTERM a replica process the router started (it drains itself), and wait for it to exit; SIGKILL after 30 s. */
export async function stopProcess(r: Replica): Promise<void> {
  const p = r.process;
  if (!p || p.exitCode !== null || p.signalCode !== null) return;
  await new Promise<void>((resolve) => {
    const kill = setTimeout(() => p.kill("SIGKILL"), 30_000);
    p.once("exit", () => {
      clearTimeout(kill);
      resolve();
    });
    p.kill("SIGTERM");
  });
}

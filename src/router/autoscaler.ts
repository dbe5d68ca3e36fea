/**
 * The one-box autoscaler: starts replica processes from a `--spawn` command when the waiting queue
 * passes its target and drains them when idle, by the Kubernetes HPA's rules so both behave alike:
 * desired = ceil(current × metric / target) with a 10% tolerance (the metric is the mean waiting
 * queue per replica, replicas not ready yet counting 0, as the HPA counts them when scaling up);
 * scale-up limited to max(4 replicas, 100%) per decision; a stabilisation window per direction (the
 * lowest recommendation of the scale-up window, the highest of the scale-down window); and
 * [min, max] bounds.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import type { ReplicaPool } from "./pool.js";
import type { Replica } from "./replica.js";
import type { RouterMetrics } from "./router-metrics.js";

export interface AutoscalerOptions {
  /** The command that starts one replica; `{port}` is replaced by a free port. */
  spawn: string;
  minReplicas: number;
  maxReplicas: number;
  /** The mean waiting requests per replica the autoscaler steers to (the HPA's averageValue). */
  targetWaiting: number;
  /** Scale-down stabilisation window (the HPA's default is 300 s). */
  scaleDownAfterMs: number;
  /** Scale-up stabilisation window (the HPA's default is 0). */
  scaleUpAfterMs: number;
  /** Time between decisions (the HPA controller's sync period is 15 s). */
  intervalMs: number;
  /** A replica not healthy this long after its start is stopped. */
  startupTimeoutMs: number;
  tolerance: number;
  region?: string;
  /** Lines a spawned replica writes on stderr go here, prefixed with its id; default: the router's stderr. */
  log?: (line: string) => void;
}

/** The HPA's core rule: the desired count for one metric reading (before windows, rate limits and bounds). */
export function hpaDesired(current: number, totalWaiting: number, targetWaiting: number, tolerance: number): number {
  if (current === 0) return totalWaiting > 0 ? 1 : 0;
  const ratio = totalWaiting / (current * targetWaiting);
  if (Math.abs(ratio - 1) <= tolerance) return current;
  return Math.ceil(current * ratio);
}

/**
 * The HPA's behaviour rules on one raw recommendation: it joins `history` (pruned to the longer
 * window); the count rises to the lowest recommendation of the scale-up window (at most max(4, 100%)
 * more than now) and falls to the highest of the scale-down window; then [min, max].
 */
export function stabilize(
  history: { at: number; desired: number }[],
  t: number,
  current: number,
  raw: number,
  o: Pick<AutoscalerOptions, "scaleDownAfterMs" | "scaleUpAfterMs" | "minReplicas" | "maxReplicas">,
): number {
  history.push({ at: t, desired: raw });
  const horizon = Math.max(o.scaleDownAfterMs, o.scaleUpAfterMs);
  while (history.length > 0 && history[0]!.at < t - horizon) history.shift();
  // Kubernetes' stabilizeRecommendationWithBehaviors: up to the lowest recommendation of the up window
  // only if all of it is above the current count, down to the highest of the down window only if all of it is below.
  let up = Infinity;
  let down = -Infinity;
  for (const r of history) {
    if (r.at >= t - o.scaleUpAfterMs) up = Math.min(up, r.desired);
    if (r.at >= t - o.scaleDownAfterMs) down = Math.max(down, r.desired);
  }
  let desired = current;
  if (desired < up) desired = Math.min(up, current + Math.max(4, current)); // the default rate: max(4 pods, 100%) per period
  if (desired > down) desired = down;
  return Math.min(o.maxReplicas, Math.max(o.minReplicas, desired));
}

/** Shell-like words: spaces split, single and double quotes group, backslash escapes (no expansion: nothing runs a shell). */
export function splitCommand(cmd: string): string[] {
  const out: string[] = [];
  let cur = "";
  let has = false;
  let quote: '"' | "'" | null = null;
  for (let i = 0; i < cmd.length; i++) {
    const c = cmd[i]!;
    if (quote) {
      if (c === quote) quote = null;
      else if (c === "\\" && quote === '"' && i + 1 < cmd.length) cur += cmd[++i];
      else cur += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      has = true;
    } else if (c === "\\" && i + 1 < cmd.length) {
      cur += cmd[++i];
      has = true;
    } else if (/\s/.test(c)) {
      if (has || cur.length > 0) out.push(cur);
      cur = "";
      has = false;
    } else cur += c;
  }
  if (quote) throw new Error(`--spawn: unterminated ${quote} quote in "${cmd}"`);
  if (has || cur.length > 0) out.push(cur);
  return out;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

const CLI = fileURLToPath(new URL("../cli/main.js", import.meta.url));

export class Autoscaler {
  private readonly recommendations: { at: number; desired: number }[] = [];
  private timer: NodeJS.Timeout | undefined;
  private nextId = 1;
  private ticking = false;
  private stopped = false;
  desired: number;
  lastDecision: { at: string; current: number; waiting: number; raw: number; desired: number } | undefined;
  /** Spawned replicas that exited on their own (not by a drain). */
  crashes = 0;

  constructor(
    readonly pool: ReplicaPool,
    readonly o: AutoscalerOptions,
    private readonly metrics?: RouterMetrics,
  ) {
    if (!o.spawn.includes("{port}"))
      throw new Error(`--spawn "${o.spawn}": the command must contain {port}, where the router puts the port each replica listens on`);
    if (splitCommand(o.spawn).length === 0) throw new Error("--spawn: the command is empty");
    if (!(o.minReplicas >= 0 && o.maxReplicas >= Math.max(1, o.minReplicas)))
      throw new Error(`--min-replicas ${o.minReplicas} / --max-replicas ${o.maxReplicas}: need 0 ≤ min ≤ max and max ≥ 1`);
    if (!(o.targetWaiting > 0)) throw new Error(`--target-waiting ${o.targetWaiting}: must be > 0`);
    this.desired = o.minReplicas;
  }

  /** The replicas counted as the current size: all but those draining. */
  private current(): Replica[] {
    return [...this.pool.replicas.values()].filter((r) => r.state !== "draining");
  }

  /** Start the minimum, then decide every interval. */
  async start(): Promise<void> {
    const n = this.o.minReplicas - this.current().length;
    await Promise.all(Array.from({ length: Math.max(0, n) }, () => this.spawnOne()));
    this.timer = setInterval(() => void this.tick(), this.o.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One decision (exposed for tests and for the admin API's view). */
  async tick(): Promise<void> {
    if (this.ticking || this.stopped) return;
    this.ticking = true;
    try {
      const current = this.current();
      const n = current.length;
      let waiting = 0;
      for (const r of current) if (r.state === "ready") waiting += r.load.waiting;
      const raw = hpaDesired(n, waiting, this.o.targetWaiting, this.o.tolerance);
      const desired = stabilize(this.recommendations, performance.now(), n, raw, this.o);
      this.desired = desired;
      this.metrics?.desiredReplicas.set(desired);
      this.lastDecision = { at: new Date().toISOString(), current: n, waiting, raw, desired };
      if (desired > n) {
        this.metrics?.scaleEvents.inc({ direction: "up" }, desired - n);
        await Promise.all(Array.from({ length: desired - n }, () => this.spawnOne()));
      } else if (desired < n) {
        // Drain the spawned ones doing least: not yet ready first, then the fewest in flight.
        const victims = current
          .filter((r) => r.process !== undefined)
          .sort((a, b) => Number(a.state === "ready") - Number(b.state === "ready") || a.inFlight - b.inFlight || b.addedAt - a.addedAt)
          .slice(0, n - desired);
        this.metrics?.scaleEvents.inc({ direction: "down" }, victims.length);
        for (const v of victims) void this.pool.drain(v.id);
      }
    } finally {
      this.ticking = false;
    }
  }

  describe(): Record<string, unknown> {
    return {
      min_replicas: this.o.minReplicas,
      max_replicas: this.o.maxReplicas,
      target_waiting: this.o.targetWaiting,
      desired_replicas: this.desired,
      last_decision: this.lastDecision ?? null,
      crashes: this.crashes,
    };
  }

  private async spawnOne(): Promise<Replica> {
    const port = await freePort();
    const words = splitCommand(this.o.spawn.replaceAll("{port}", String(port)));
    // `tokamak ...` runs this very CLI (no global install needed), with an IPC channel: the replica exits if the router dies.
    const own = words[0] === "tokamak";
    const [cmd, ...args] = own ? [process.execPath, CLI, ...words.slice(1)] : words;
    const id = `spawn-${this.nextId++}`;
    const log = this.o.log ?? ((line: string) => process.stderr.write(`${line}\n`));
    const child: ChildProcess = spawn(cmd!, args, { stdio: ["ignore", "ignore", "pipe", ...(own ? (["ipc"] as const) : [])] });
    const tail: string[] = [];
    let buffered = "";
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (s: string) => {
      buffered += s;
      let nl: number;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        tail.push(line);
        if (tail.length > 20) tail.shift();
        log(`[${id}] ${line}`);
      }
    });
    const r = this.pool.add(`http://127.0.0.1:${port}`, { id, region: this.o.region });
    r.process = child;
    const startedAt = performance.now();
    child.once("error", (err) => log(`[${id}] could not start "${cmd}": ${err.message}`));
    child.once("exit", (code, signal) => {
      if (!this.stopped && r.state !== "draining" && this.pool.replicas.get(id) === r) {
        this.crashes++;
        log(`[${id}] exited (${signal ?? `code ${code}`}) while not draining; last output: ${tail.slice(-3).join(" | ") || "(none)"}`);
        this.pool.remove(id);
      }
    });
    // A replica that never becomes healthy is stopped, so a broken command cannot fill the box.
    const watch = setInterval(() => {
      if (r.state !== "starting" || this.pool.replicas.get(id) !== r) return clearInterval(watch);
      if (performance.now() - startedAt > this.o.startupTimeoutMs) {
        clearInterval(watch);
        log(`[${id}] not healthy after ${Math.round(this.o.startupTimeoutMs / 1000)} s; stopping it`);
        this.pool.remove(id);
        child.kill("SIGKILL");
      }
    }, 500);
    watch.unref();
    return r;
  }
}

/**
 * The region policy over a real network: two network namespaces (regions eu and us), each with two stub
 * replicas behind a veth pair, and 40 ms of round trip between the regions (`tc netem` where the kernel
 * has it, else a userspace delay line). The router runs in the root namespace as region eu and shows:
 * it measures the distance; requests stay in-region while eu has capacity; they fail over to us when
 * eu's replicas die; they come back once eu is up again; and its metrics count both outcomes.
 * Needs root (namespaces and veths); skips, saying why, without it.
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test, type TestContext } from "node:test";
import { fileURLToPath } from "node:url";
import { DEFAULT_BREAKER } from "../src/router/replica.js";
import { type DelayLine, startDelayLine } from "./helpers/delay-line.js";
import { ROUTER_TEST_MODEL } from "./helpers/processes.js";
import { writeTinyModel } from "./helpers/tiny-model.js";

const repoRoot = fileURLToPath(new URL("../..", import.meta.url)); // dist/test/ → the repository
const cli = fileURLToPath(new URL("../src/cli/main.js", import.meta.url));
const HEALTH_INTERVAL_MS = 500;
const ONE_WAY_DELAY_MS = 20;
const REPLICA_PORTS = [8001, 8002];
const ADMIN_KEY = "regions-test-admin-key-0123456789";

const pid = process.pid;
const octet = 64 + (pid % 128);
interface Region {
  name: "eu" | "us";
  ns: string;
  hostIf: string;
  nsIf: string;
  hostIp: string;
  nsIp: string;
}
const regions: Record<"eu" | "us", Region> = {
  eu: { name: "eu", ns: `tk-eu-${pid}`, hostIf: `tkeu${pid}h`, nsIf: `tkeu${pid}n`, hostIp: `10.${octet}.1.1`, nsIp: `10.${octet}.1.2` },
  us: { name: "us", ns: `tk-us-${pid}`, hostIf: `tkus${pid}h`, nsIf: `tkus${pid}n`, hostIp: `10.${octet}.2.1`, nsIp: `10.${octet}.2.2` },
};

const children = new Set<ChildProcess>();
const relays: DelayLine[] = [];
const made = { netns: [] as string[], links: [] as string[] };
let workDir: string | undefined;

function ip(...args: string[]): void {
  execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
}

/** Everything this test made goes, whatever state it is in: processes, veths, namespaces, files. */
async function cleanup(): Promise<void> {
  const exits = [...children].map((c) => exited(c, 5000));
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  await Promise.all(exits);
  // Anything still inside our namespaces (it can only be ours: they are named after this process).
  for (const ns of made.netns) {
    const r = spawnSync("ip", ["netns", "pids", ns], { encoding: "utf8" });
    for (const p of (r.stdout ?? "").split(/\s+/).filter(Boolean)) {
      try {
        process.kill(Number(p), "SIGKILL");
      } catch {
        // already gone
      }
    }
  }
  for (const r of relays) await r.close();
  for (const l of made.links) spawnSync("ip", ["link", "del", l], { stdio: "ignore" });
  for (const ns of made.netns) spawnSync("ip", ["netns", "del", ns], { stdio: "ignore" });
  made.links = [];
  made.netns = [];
  if (workDir) rmSync(workDir, { recursive: true, force: true });
  workDir = undefined;
}
after(cleanup);
// A backstop should the process go without running `after` (an uncaught error, a signal handler's exit).
process.on("exit", () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  for (const l of made.links) spawnSync("ip", ["link", "del", l], { stdio: "ignore" });
  for (const ns of made.netns) spawnSync("ip", ["netns", "del", ns], { stdio: "ignore" });
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

function exited(c: ChildProcess, timeoutMs: number): Promise<void> {
  return new Promise((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) return resolve();
    const t = setTimeout(resolve, timeoutMs);
    c.once("exit", () => {
      clearTimeout(t);
      resolve();
    });
  });
}

/** Start a process and wait for the `OpenAI-compatible API at URL/v1` line. */
function launch(command: string, args: string[], what: string): Promise<{ child: ChildProcess; url: string; log: () => string }> {
  const child = spawn(command, args, { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  child.once("exit", () => children.delete(child));
  let log = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: no banner within 60 s:\n${log}`)), 60_000);
    const onData = (d: Buffer) => {
      log += d.toString();
      const m = /OpenAI-compatible API at (http:\/\/[^\s/]+)\/v1/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve({ child, url: m[1]!, log: () => log });
      }
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.once("exit", (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${code ?? sig}) before serving:\n${log}`));
    });
  });
}

function startReplica(modelDir: string, r: Region, port: number) {
  return launch(
    "ip",
    [
      "netns",
      "exec",
      r.ns,
      process.execPath,
      cli,
      "serve",
      modelDir,
      "--stub-model",
      "--stub-step-ms",
      "5",
      "--host",
      r.nsIp,
      "--port",
      String(port),
      "--max-model-len",
      "2048",
    ],
    `replica ${r.name}:${port}`,
  );
}

/** A namespace for the region, joined to the root namespace by a veth pair. */
function makeRegion(r: Region): void {
  ip("netns", "add", r.ns);
  made.netns.push(r.ns);
  ip("link", "add", r.hostIf, "type", "veth", "peer", "name", r.nsIf);
  made.links.push(r.hostIf);
  ip("link", "set", r.nsIf, "netns", r.ns);
  ip("addr", "add", `${r.hostIp}/24`, "dev", r.hostIf);
  ip("link", "set", r.hostIf, "up");
  ip("-n", r.ns, "addr", "add", `${r.nsIp}/24`, "dev", r.nsIf);
  ip("-n", r.ns, "link", "set", r.nsIf, "up");
  ip("-n", r.ns, "link", "set", "lo", "up");
}

/** netem on both ends of the region's veth; the error text when the kernel cannot. */
function tryNetem(r: Region): string | undefined {
  const delay = ["root", "netem", "delay", `${ONE_WAY_DELAY_MS}ms`];
  const a = spawnSync("tc", ["qdisc", "add", "dev", r.hostIf, ...delay], { encoding: "utf8" });
  if (a.error || a.status !== 0) return (a.error?.message ?? a.stderr).trim();
  const b = spawnSync("ip", ["netns", "exec", r.ns, "tc", "qdisc", "add", "dev", r.nsIf, ...delay], { encoding: "utf8" });
  if (b.error || b.status !== 0) {
    spawnSync("tc", ["qdisc", "del", "dev", r.hostIf, "root"], { stdio: "ignore" });
    return (b.error?.message ?? b.stderr).trim();
  }
  return undefined;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const end = performance.now() + timeoutMs;
  let last: unknown;
  while (performance.now() < end) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    await sleep(50);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${String(last)})` : ""}`);
}

interface AdminReplica {
  id: string;
  url: string;
  region: string | null;
  state: string;
  breaker: string;
  rtt_ms: number | null;
}

interface Served {
  status: number;
  replica: string;
  region: string;
  route: string;
  body: string;
}

let requestNo = 0;

/** One completion through the router; streams are read to the end and must finish with [DONE] and no error event. */
async function complete(router: string, region: string | undefined, stream: boolean): Promise<Served> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (region !== undefined) headers["x-tokamak-region"] = region;
  const res = await fetch(`${router}/v1/completions`, {
    method: "POST",
    headers,
    body: JSON.stringify({ prompt: `request ${requestNo++} from ${region ?? "(default)"}: tell me about regions`, max_tokens: 4, stream }),
  });
  const body = await res.text();
  const served = {
    status: res.status,
    replica: res.headers.get("x-tokamak-replica") ?? "",
    region: res.headers.get("x-tokamak-region") ?? "",
    route: res.headers.get("x-tokamak-route") ?? "",
    body,
  };
  if (res.status === 200 && stream) {
    assert.ok(body.trimEnd().endsWith("data: [DONE]"), `a stream ends with [DONE]: ${body}`);
    assert.ok(!body.includes('"error"'), `a stream without an error event: ${body}`);
  }
  return served;
}

function reason(s: Served): string {
  return /reason=([^;]+)/.exec(s.route)?.[1] ?? "";
}

/** `name{labels} value` samples of one metric, labels parsed. */
function samples(text: string, name: string): { labels: Record<string, string>; value: number }[] {
  const out: { labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`)) continue;
    const close = line.lastIndexOf("}");
    const labels: Record<string, string> = {};
    for (const m of line.slice(name.length + 1, close).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[m[1]!] = m[2]!;
    out.push({
      labels,
      value: Number(
        line
          .slice(close + 1)
          .trim()
          .split(/\s+/)[0],
      ),
    });
  }
  return out;
}

function skipReason(): string | undefined {
  if (process.platform !== "linux") return "network namespaces are Linux only";
  if (process.getuid?.() !== 0) return "needs root (ip netns, veth pairs, tc); CI runs it as root";
  const probe = `tk-probe-${pid}`;
  const r = spawnSync("ip", ["netns", "add", probe], { encoding: "utf8" });
  if (r.error || r.status !== 0) return `\`ip netns add\` failed: ${(r.error?.message ?? r.stderr).trim()}`;
  spawnSync("ip", ["netns", "del", probe], { stdio: "ignore" });
  const addrs = spawnSync("ip", ["-o", "-4", "addr"], { encoding: "utf8" }).stdout ?? "";
  const routes = spawnSync("ip", ["-4", "route"], { encoding: "utf8" }).stdout ?? "";
  if (addrs.includes(` 10.${octet}.`) || routes.includes(`10.${octet}.`))
    return `10.${octet}.0.0/16 is in use on this machine; the test's subnets would clash`;
  return undefined;
}

test(
  "regions: in-region while eu has capacity, failover to us when eu dies, back when it returns (netns + veth + 40 ms RTT)",
  { timeout: 120_000 },
  async (t: TestContext) => {
    const why = skipReason();
    if (why) {
      t.diagnostic(`skipped: ${why}`);
      t.skip(why);
      return;
    }
    const t0 = performance.now();
    const since = () => `${((performance.now() - t0) / 1000).toFixed(1)} s`;
    workDir = mkdtempSync(join(tmpdir(), "tokamak-regions-"));
    const modelDir = join(workDir, "tiny-qwen3");
    writeTinyModel(modelDir, ROUTER_TEST_MODEL);

    makeRegion(regions.eu);
    makeRegion(regions.us);

    // The replicas start while the delay is set up (they take a few seconds).
    const started = {
      eu: REPLICA_PORTS.map((p) => startReplica(modelDir, regions.eu, p)),
      us: REPLICA_PORTS.map((p) => startReplica(modelDir, regions.us, p)),
    };

    // 40 ms round trip between the regions: only the path to us is delayed (the router is in eu).
    const netemError = tryNetem(regions.us);
    let usUrls: string[];
    if (netemError === undefined) {
      t.diagnostic(`delay: tc netem, ${ONE_WAY_DELAY_MS} ms each way on ${regions.us.hostIf} and ${regions.us.ns}:${regions.us.nsIf}`);
      usUrls = REPLICA_PORTS.map((p) => `http://${regions.us.nsIp}:${p}`);
    } else {
      for (const p of REPLICA_PORTS) relays.push(await startDelayLine({ host: regions.us.nsIp, port: p }, ONE_WAY_DELAY_MS));
      t.diagnostic(
        `delay: userspace TCP delay line (${ONE_WAY_DELAY_MS} ms each way, in the root namespace, in front of us's replicas); ` +
          `tc netem is unavailable here: ${netemError}`,
      );
      usUrls = relays.map((r) => `http://${r.host}:${r.port}`);
    }
    const euUrls = REPLICA_PORTS.map((p) => `http://${regions.eu.nsIp}:${p}`);

    const euProcs = await Promise.all(started.eu);
    await Promise.all(started.us);
    t.diagnostic(`${since()}: 4 replicas up`);

    const router = await launch(
      process.execPath,
      [
        cli,
        "router",
        ...euUrls.map((u) => ["--replica", `${u}@region=eu`]).flat(),
        ...usUrls.map((u) => ["--replica", `${u}@region=us`]).flat(),
        "--policy",
        "region",
        "--region",
        "eu",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--health-interval",
        String(HEALTH_INTERVAL_MS / 1000),
        "--admin-key",
        ADMIN_KEY,
      ],
      "router",
    );
    const base = router.url;
    const admin = async (): Promise<AdminReplica[]> => {
      const res = await fetch(`${base}/admin/replicas`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
      assert.equal(res.status, 200);
      return ((await res.json()) as { replicas: AdminReplica[] }).replicas;
    };
    const ids = async (region: string) => new Set((await admin()).filter((r) => r.region === region).map((r) => r.id));

    // 1. The router measures the distance: every replica ready, and a few probes into the RTT average.
    await waitFor("all replicas ready with an RTT", 20_000, async () => {
      const rs = await admin();
      return rs.length === 4 && rs.every((r) => r.state === "ready" && r.rtt_ms !== null) ? rs : undefined;
    });
    await sleep(4 * HEALTH_INTERVAL_MS);
    const measured = await admin();
    const rtt = (region: string) => measured.filter((r) => r.region === region).map((r) => r.rtt_ms!);
    t.diagnostic(`${since()}: rtt_ms eu ${rtt("eu").join(", ")}; us ${rtt("us").join(", ")}`);
    assert.ok(
      Math.min(...rtt("us")) - Math.max(...rtt("eu")) >= 30,
      `us replicas are ≥ 30 ms further than eu's: eu ${rtt("eu")}, us ${rtt("us")}`,
    );
    const euIds = await ids("eu");
    const usIds = await ids("us");

    // 2. eu healthy: eu's requests (named, and by default) stay in eu, streams and not.
    const inRegion = await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        await sleep(i * 10);
        return complete(base, i % 5 === 4 ? undefined : "eu", i % 4 === 0);
      }),
    );
    for (const s of inRegion) {
      assert.equal(s.status, 200, s.body);
      assert.equal(s.region, "eu", `served in eu: ${s.route}`);
      assert.ok(euIds.has(s.replica), `an eu replica: ${s.replica}`);
      assert.match(reason(s), /^in-region:/);
    }
    const usBefore = await complete(base, "us", false);
    assert.equal(usBefore.region, "us");
    assert.match(reason(usBefore), /^in-region:/);
    t.diagnostic(`${since()}: 20 eu requests in eu (${[...new Set(inRegion.map(reason))].join(", ")})`);

    // 3. eu's replicas die (SIGKILL: a crash, no drain, their connections reset; the namespace and the route stay).
    const killedAt = performance.now();
    for (const p of euProcs) p.child.kill("SIGKILL");
    await Promise.all(euProcs.map((p) => exited(p.child, 5000)));
    // Requests in the first interval already succeed: a refused connection is retried elsewhere before answering.
    const early = await complete(base, "eu", false);
    assert.equal(early.status, 200, `a request right after the crash is retried and answered: ${early.body}`);
    // Within one health interval (plus margin for the probes' own time) the router knows eu is down.
    await waitFor("eu marked down", HEALTH_INTERVAL_MS + 1000, async () => {
      const rs = await admin();
      return rs.filter((r) => r.region === "eu").every((r) => r.state !== "ready") ? true : undefined;
    });
    t.diagnostic(`${since()}: eu down in the router's view ${Math.round(performance.now() - killedAt)} ms after the kill`);
    const failover = await Promise.all([
      ...Array.from({ length: 10 }, (_, i) => complete(base, i % 5 === 4 ? undefined : "eu", i % 3 === 0)),
      ...Array.from({ length: 5 }, (_, i) => complete(base, "us", i % 2 === 0)),
    ]);
    for (const [i, s] of failover.entries()) {
      assert.equal(s.status, 200, s.body);
      assert.equal(s.region, "us", `served in us: ${s.route}`);
      assert.ok(usIds.has(s.replica), `a us replica: ${s.replica}`);
      assert.match(reason(s), i < 10 ? /^failover-down$/ : /^in-region:/, s.route);
    }
    t.diagnostic(`${since()}: eu requests fail over to us (failover-down); us requests stay in us`);

    // 4. eu comes back on the same ports; once the replicas answer, eu's requests return to eu.
    const restarted = await Promise.all(REPLICA_PORTS.map((p) => startReplica(modelDir, regions.eu, p)));
    const healthyAt = performance.now();
    const outageMs = healthyAt - killedAt;
    // The router probes a replica whose breaker opened less often (its open period doubles on each failed
    // probe), so the return can take up to about the outage's length on top of the health interval.
    // A replica whose breaker opened during the outage is probed again only when the breaker's (doubling) open period ends.
    const breakerLagMs = Math.min(outageMs + DEFAULT_BREAKER.openMs, DEFAULT_BREAKER.maxOpenMs);
    const backWithin = breakerLagMs + 2 * HEALTH_INTERVAL_MS + 1000;
    const back = await waitFor(`eu requests back in eu within ${Math.round(backWithin)} ms`, backWithin, async () => {
      const s = await complete(base, "eu", false);
      assert.equal(s.status, 200, s.body);
      return s.region === "eu" ? s : undefined;
    });
    const backMs = performance.now() - healthyAt;
    t.diagnostic(
      `${since()}: eu back ${Math.round(backMs)} ms after its replicas were healthy ` +
        `(outage ${Math.round(outageMs)} ms; health interval ${HEALTH_INTERVAL_MS} ms)`,
    );
    assert.ok(euIds.has(back.replica));
    assert.match(reason(back), /^in-region:/);
    // Both eu replicas routable again, then every eu request stays in eu.
    await waitFor("both eu replicas ready again", 30_000, async () => {
      const rs = await admin();
      return rs.filter((r) => r.region === "eu").every((r) => r.state === "ready" && r.breaker !== "open") ? true : undefined;
    });
    const returned = await Promise.all(Array.from({ length: 10 }, (_, i) => complete(base, "eu", i % 3 === 0)));
    for (const s of returned) {
      assert.equal(s.status, 200, s.body);
      assert.equal(s.region, "eu", `back in eu: ${s.route}`);
      assert.match(reason(s), /^in-region:/);
    }
    assert.ok(restarted.every((p) => p.child.exitCode === null));

    // 5. The router's metrics count both outcomes for eu's requests.
    const metrics = await (await fetch(`${base}/metrics`)).text();
    const decisions = samples(metrics, "tokamak_router_region_decisions_total");
    const count = (wanted: string, served: string, outcome: string) =>
      decisions
        .filter((d) => d.labels.wanted === wanted && d.labels.served === served && d.labels.outcome === outcome)
        .reduce((a, d) => a + d.value, 0);
    t.diagnostic(`decisions: ${decisions.map((d) => `${JSON.stringify(d.labels)} ${d.value}`).join("; ")}`);
    assert.ok(count("eu", "eu", "in-region") >= 20 + 10 + 1, "in-region decisions for eu");
    assert.ok(count("eu", "us", "failover-down") >= 10, "failover-down decisions for eu");
    assert.ok(count("us", "us", "in-region") >= 6, "in-region decisions for us");
    const rttSamples = samples(metrics, "tokamak_router_replica_rtt_seconds");
    assert.equal(rttSamples.length, 4, "an RTT gauge per replica");
    t.diagnostic(`${since()}: done`);
  },
);

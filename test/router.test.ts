/**
 * `tokamak router`: the prefix tree, the policies and the HPA rules on their own, then the router in
 * front of real `tokamak serve --stub-model` replica processes on loopback (and one real tiny model):
 * affinity and prefix-cache hits against round-robin, streams passed through, client disconnects,
 * retries before a response only, drain under load, a replica killed mid-load, and the admin API.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import OpenAI from "openai";
import { hpaDesired, splitCommand, stabilize } from "../src/router/autoscaler.js";
import { DEFAULT_POLICY_OPTIONS, type PolicyName, Router, routingKey } from "../src/router/policy.js";
import { DEFAULT_POOL_OPTIONS, ReplicaPool } from "../src/router/pool.js";
import { PrefixTree } from "../src/router/prefix-tree.js";
import { parsePrometheusSums, parseReplicaSpec, Replica } from "../src/router/replica.js";
import { buildRouterApp } from "../src/router/router-app.js";
import { RouterMetrics } from "../src/router/router-metrics.js";
import { type Proc, startCli, startStubReplica, ROUTER_TEST_MODEL } from "./helpers/processes.js";
import { writeTinyModel } from "./helpers/tiny-model.js";
import { startServer } from "../src/server/serve.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

describe("prefix tree", () => {
  test("each replica's longest match, splits and re-inserts", () => {
    const t = new PrefixTree();
    t.insert("system: you are helpful. user: hi", "a");
    t.insert("system: you are helpful. user: bye", "b");
    t.insert("system: you are terse.", "c");
    const m = t.match("system: you are helpful. user: hello");
    assert.equal(m.matched.get("a"), "system: you are helpful. user: h".length);
    assert.equal(m.matched.get("b"), "system: you are helpful. user: ".length);
    assert.equal(m.matched.get("c"), "system: you are ".length);
    assert.equal(t.match("nothing alike").matched.size, 0);
    assert.equal(t.match("").matched.size, 0);
    // Characters held per replica count every label it is marked on.
    assert.equal(t.charsOf("a"), "system: you are helpful. user: hi".length);
    t.removeReplica("a");
    assert.equal(t.match("system: you are helpful. user: hi").matched.get("a"), undefined);
    assert.equal(t.match("system: you are helpful. user: hi").matched.get("b"), "system: you are helpful. user: ".length);
  });

  test("a replica's share stays bounded; its least recently used prompts go first, shared prefixes stay", () => {
    const t = new PrefixTree(1000);
    const shared = "S".repeat(200);
    for (let i = 0; i < 50; i++) t.insert(`${shared}${String(i).padStart(3, "0")}${"x".repeat(40)}`, "a");
    assert.ok(t.charsOf("a") <= 1000, `held ${t.charsOf("a")}`);
    // The newest prompt is whole, the oldest is gone but for the shared prefix.
    const newest = `${shared}049${"x".repeat(40)}`;
    assert.equal(t.match(newest).matched.get("a"), newest.length);
    const oldest = t.match(`${shared}000${"x".repeat(40)}`).matched.get("a")!;
    assert.ok(oldest >= shared.length && oldest < shared.length + 3, `the oldest prompt kept ${oldest} characters`);
    t.insert("other", "b");
    assert.equal(t.charsOf("b"), 5);
  });
});

describe("replica specs and metrics", () => {
  test("URL@region=R; bad specs say what was expected", () => {
    assert.deepEqual(parseReplicaSpec("http://10.0.0.5:8000@region=eu"), { url: "http://10.0.0.5:8000", region: "eu" });
    assert.deepEqual(parseReplicaSpec("http://user@host:8000"), { url: "http://host:8000", region: undefined });
    assert.throws(() => parseReplicaSpec("localhost:8000"), /not a URL|only http/);
    assert.throws(() => parseReplicaSpec("http://h:1/v1"), /without a path/);
    assert.throws(() => parseReplicaSpec("http://h:1@zone=a"), /unknown attribute "zone=a"/);
  });

  test("Prometheus text: sums over label sets, quoted spaces, vLLM's names", () => {
    const text = [
      "# HELP tokamak:num_requests_waiting waiting",
      'tokamak:num_requests_waiting{model_name="a b"} 3',
      'tokamak:num_requests_waiting{model_name="c"} 2 1700000000',
      "vllm:num_requests_running 4",
      "tokamak:num_requests_waiting_other 99",
    ].join("\n");
    const s = parsePrometheusSums(text, ["tokamak:num_requests_waiting", "vllm:num_requests_running"]);
    assert.equal(s.get("tokamak:num_requests_waiting"), 5);
    assert.equal(s.get("vllm:num_requests_running"), 4);
  });

  test("routing keys: chat roles and text, completion prompts and token ids", () => {
    assert.equal(
      routingKey(
        {
          messages: [
            { role: "system", content: "S" },
            { role: "user", content: [{ type: "text", text: "U" }] },
          ],
        },
        "chat",
      ),
      "<system>S\n<user>U\n",
    );
    assert.equal(routingKey({ prompt: ["first", "second"] }, "completion"), "first");
    assert.equal(routingKey({ prompt: [1, 2, 3] }, "completion"), "1,2,3,");
    assert.equal(routingKey("not an object", "chat"), "");
  });
});

function fakeReplicas(n: number, regions: (string | undefined)[] = []): Replica[] {
  return Array.from({ length: n }, (_, i) => {
    const r = new Replica(`r${i}`, `http://127.0.0.1:${9000 + i}`, regions[i], undefined, "ready");
    r.rttMs = 1;
    return r;
  });
}

describe("policies", () => {
  test("round-robin cycles; least-load takes the lowest load", () => {
    const rs = fakeReplicas(3);
    const rr = new Router("round-robin", new PrefixTree());
    assert.deepEqual(
      [0, 1, 2, 3].map(() => rr.choose(rs, { key: "x", region: undefined }).replica.id),
      ["r0", "r1", "r2", "r0"],
    );
    rs[0]!.inFlight = 3;
    rs[1]!.load.waiting = 2;
    const ll = new Router("least-load", new PrefixTree());
    assert.equal(ll.choose(rs, { key: "", region: undefined }).replica.id, "r2");
  });

  test("cache-aware: new prompts spread by cached size, repeats follow their prefix, imbalance past both thresholds balances", () => {
    const rs = fakeReplicas(3);
    const r = new Router("cache-aware", new PrefixTree());
    const sys = ["alpha ", "bravo ", "charlie "].map((w) => w.repeat(40));
    const first = sys.map((s) => r.choose(rs, { key: `${s}q0`, region: undefined }));
    assert.deepEqual(new Set(first.map((d) => d.replica.id)).size, 3, "three new prompts on three replicas");
    assert.ok(first.every((d) => d.reason === "least-cache"));
    for (let i = 1; i < 5; i++) {
      sys.forEach((s, j) => {
        const d = r.choose(rs, { key: `${s}q${i}`, region: undefined });
        assert.equal(d.replica.id, first[j]!.replica.id);
        assert.equal(d.reason, "prefix");
        assert.ok(d.matchRatio > 0.9);
      });
    }
    // The replica holding "alpha" is overloaded: 100 vs 0 passes 64 and 1.5×.
    const alpha = rs.find((x) => x.id === first[0]!.replica.id)!;
    alpha.load.waiting = 100;
    const d = r.choose(rs, { key: `${sys[0]}q9`, region: undefined });
    assert.equal(d.reason, "balance");
    assert.notEqual(d.replica.id, alpha.id);
    // 60 vs 0 is under the absolute threshold: affinity holds.
    alpha.load.waiting = 60;
    assert.equal(r.choose(rs, { key: `${sys[0]}q10`, region: undefined }).replica.id, alpha.id);
  });

  test("region: in-region while there is capacity; down or saturated fails over by round-trip time and load", () => {
    const rs = fakeReplicas(4, ["eu", "eu", "us", "ap"]);
    rs[2]!.rttMs = 40;
    rs[3]!.rttMs = 120;
    const r = new Router("region", new PrefixTree(), { ...DEFAULT_POLICY_OPTIONS, defaultRegion: "eu" });
    for (let i = 0; i < 4; i++) {
      const d = r.choose(rs, { key: `k${i}`, region: undefined });
      assert.equal(d.replica.region, "eu");
      assert.match(d.reason, /^in-region:/);
    }
    assert.equal(r.choose(rs, { key: "k", region: "us" }).replica.id, "r2");
    // eu saturated: the nearest other region.
    rs[0]!.load.waiting = 8;
    rs[1]!.load.waiting = 9;
    let d = r.choose(rs, { key: "k", region: "eu" });
    assert.equal(d.reason, "failover-saturated");
    assert.equal(d.replica.id, "r2");
    // eu down: the candidates no longer hold it; us loaded enough that ap's longer trip is cheaper.
    rs[2]!.load.waiting = 10;
    d = r.choose(rs.slice(2), { key: "k", region: "eu" });
    assert.equal(d.reason, "failover-down");
    assert.equal(d.replica.id, "r3");
  });
});

describe("autoscaler rules (the HPA's)", () => {
  test("desired = ceil(current × metric / target), with a 10% tolerance", () => {
    assert.equal(hpaDesired(1, 12, 4, 0.1), 3);
    assert.equal(hpaDesired(3, 12.5, 4, 0.1), 3); // ratio 1.04: within tolerance
    assert.equal(hpaDesired(3, 0, 4, 0.1), 0);
    assert.equal(hpaDesired(2, 9, 4, 0.1), 3);
    assert.equal(hpaDesired(0, 1, 4, 0.1), 1);
  });

  test("scale-up at once (limited to max(4, 100%)), scale-down only after the window's highest recommendation falls", () => {
    const o = { scaleDownAfterMs: 60_000, scaleUpAfterMs: 0, minReplicas: 1, maxReplicas: 20 };
    const h: { at: number; desired: number }[] = [];
    assert.equal(stabilize(h, 0, 1, 12, o), 5); // 1 + max(4, 1)
    assert.equal(stabilize(h, 15_000, 5, 12, o), 10); // 5 + max(4, 5)
    assert.equal(stabilize(h, 30_000, 10, 1, o), 10); // idle, but 12 was recommended within 60 s
    assert.equal(stabilize(h, 74_000, 10, 1, o), 10);
    assert.equal(stabilize(h, 90_001, 10, 1, o), 1);
    // A scale-up window: up only to the lowest recommendation within it.
    const w = { ...o, scaleUpAfterMs: 30_000 };
    const g: { at: number; desired: number }[] = [];
    assert.equal(stabilize(g, 0, 2, 2, w), 2);
    assert.equal(stabilize(g, 10_000, 2, 6, w), 2);
    assert.equal(stabilize(g, 30_001, 2, 6, w), 6);
    assert.equal(stabilize(h, 100_000, 1, 0, o), 1); // the minimum
    assert.equal(stabilize([], 0, 1, 50, { ...o, maxReplicas: 3 }), 3);
  });

  test("spawn commands split like a shell's words, without a shell", () => {
    assert.deepEqual(splitCommand(`tokamak serve "/models/my model" --port {port} --x 'a b' c\\ d`), [
      "tokamak",
      "serve",
      "/models/my model",
      "--port",
      "{port}",
      "--x",
      "a b",
      "c d",
    ]);
    assert.throws(() => splitCommand('tokamak "open'), /unterminated/);
  });
});

// ---------------------------------------------------------------------------------------------
// Against real replica processes.

interface TestRouter {
  url: string;
  pool: ReplicaPool;
  metrics: RouterMetrics;
  close(): Promise<void>;
}

const ADMIN = "admin-key-for-tests";

async function makeRouter(policy: PolicyName, urls: string[], healthIntervalMs = 500): Promise<TestRouter> {
  const pool = new ReplicaPool({ ...DEFAULT_POOL_OPTIONS, healthIntervalMs, probeTimeoutMs: 1000 });
  for (const u of urls) pool.add(u);
  const router = new Router(policy, pool.tree, DEFAULT_POLICY_OPTIONS);
  const metrics = new RouterMetrics(pool);
  const app = buildRouterApp({ pool, router, metrics, adminKey: ADMIN });
  pool.start();
  const url = await app.listen({ host: "127.0.0.1", port: 0 });
  await waitFor(() => pool.routable().length === urls.length, "the replicas to be ready");
  return {
    url,
    pool,
    metrics,
    close: async () => {
      // A client that stopped reading without closing its socket (undici, after an abort) would hold a graceful close for minutes.
      const closing = app.close();
      app.server.closeAllConnections();
      await closing;
      await pool.close();
    },
  };
}

async function metricSums(url: string, names: string[]): Promise<Map<string, number>> {
  return parsePrometheusSums(await (await fetch(`${url}/metrics`)).text(), names);
}

/** request_success_total per finished_reason, summed over label sets. */
async function successes(url: string): Promise<number> {
  return (await metricSums(url, ["tokamak:request_success_total"])).get("tokamak:request_success_total") ?? 0;
}

interface StreamResult {
  status: number;
  replica: string | null;
  events: unknown[];
  done: boolean;
  text: string;
}

async function chat(url: string, body: Record<string, unknown>, headers: Record<string, string> = {}): Promise<StreamResult> {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify({ max_tokens: 4, ...body }),
  });
  const replica = res.headers.get("x-tokamak-replica");
  const raw = await res.text();
  if (!body.stream) return { status: res.status, replica, events: [JSON.parse(raw)], done: true, text: raw };
  const events: unknown[] = [];
  let done = false;
  for (const block of raw.split("\n\n")) {
    if (!block.startsWith("data: ")) continue;
    const data = block.slice(6);
    if (data === "[DONE]") done = true;
    else events.push(JSON.parse(data));
  }
  return { status: res.status, replica, events, done, text: raw };
}

const WORDS = "river stone quiet lantern orbit meadow copper signal harbor velvet ember canyon thistle marble".split(" ");
function systemPrompt(seed: number, words = 120): string {
  let s = `You are assistant number ${seed}.`;
  let x = seed * 7919 + 13;
  for (let i = 0; i < words; i++) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    s += ` ${WORDS[x % WORDS.length]}`;
  }
  return s;
}

describe("the router in front of replica processes", () => {
  let dir: string;
  let replicas: Proc[] = [];
  const extra: Proc[] = [];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "tokamak-router-"));
    writeTinyModel(join(dir, "m"), ROUTER_TEST_MODEL);
    replicas = await Promise.all([0, 1, 2].map(() => startStubReplica(join(dir, "m"))));
  });

  after(async () => {
    await Promise.all([...replicas, ...extra].map((p) => p.stop("SIGKILL")));
    rmSync(dir, { recursive: true, force: true });
  });

  test("cache-aware routing keeps ≥ 90% affinity on 4 shared system prompts and beats round-robin's prefix-cache hit rate", async () => {
    const urls = replicas.map((p) => p.url);
    const run = async (policy: PolicyName, seeds: number[]) => {
      const r = await makeRouter(policy, urls);
      const names = ["tokamak:prefix_cache_hits_total", "tokamak:prefix_cache_queries_total"];
      const before = await Promise.all(urls.map((u) => metricSums(u, names)));
      const placed = new Map<number, Map<string, number>>();
      const jobs = Array.from({ length: 40 }, (_, i) => ({ sys: seeds[i % 4]!, q: i }));
      let next = 0;
      await Promise.all(
        Array.from({ length: 4 }, async () => {
          while (next < jobs.length) {
            const j = jobs[next++]!;
            const res = await chat(r.url, {
              messages: [
                { role: "system", content: systemPrompt(j.sys) },
                { role: "user", content: `question ${j.q}: ${WORDS[j.q % WORDS.length]}?` },
              ],
            });
            assert.equal(res.status, 200, res.text);
            const m = placed.get(j.sys) ?? new Map<string, number>();
            m.set(res.replica!, (m.get(res.replica!) ?? 0) + 1);
            placed.set(j.sys, m);
          }
        }),
      );
      const after = await Promise.all(urls.map((u) => metricSums(u, names)));
      let hits = 0;
      let queries = 0;
      urls.forEach((_, i) => {
        hits += after[i]!.get(names[0]!)! - before[i]!.get(names[0]!)!;
        queries += after[i]!.get(names[1]!)! - before[i]!.get(names[1]!)!;
      });
      let modal = 0;
      for (const m of placed.values()) modal += Math.max(...m.values());
      const affinityHits =
        (await metricSums(r.url, ["tokamak_router_cache_affinity_hits_total"])).get("tokamak_router_cache_affinity_hits_total") ?? 0;
      await r.close();
      return { affinity: modal / jobs.length, hitRate: hits / queries, affinityHits };
    };
    // Fresh system prompts for each run, so both start with cold caches.
    const ca = await run("cache-aware", [1, 2, 3, 4]);
    const rr = await run("round-robin", [5, 6, 7, 8]);
    assert.ok(ca.affinity >= 0.9, `cache-aware affinity ${ca.affinity}`);
    assert.ok(
      ca.hitRate > rr.hitRate,
      `prefix-cache hit rate: cache-aware ${ca.hitRate.toFixed(3)} vs round-robin ${rr.hitRate.toFixed(3)}`,
    );
    assert.ok(ca.affinityHits >= 36, `the router counted ${ca.affinityHits} affinity hits`);
    process.stderr.write(
      `# affinity: cache-aware ${ca.affinity.toFixed(3)}, round-robin ${rr.affinity.toFixed(3)}; prefix-cache hit rate ${ca.hitRate.toFixed(3)} vs ${rr.hitRate.toFixed(3)}\n`,
    );
  });

  test("streams pass through (the official OpenAI client), and a client that disconnects aborts its request on the replica", async () => {
    const r = await makeRouter(
      "least-load",
      replicas.map((p) => p.url),
    );
    try {
      const client = new OpenAI({ baseURL: `${r.url}/v1`, apiKey: "unused", maxRetries: 0 });
      const stream = await client.chat.completions.create({
        model: "m",
        messages: [{ role: "user", content: "hi" }],
        max_tokens: 6,
        stream: true,
      });
      let chunks = 0;
      let finish: string | null = null;
      for await (const c of stream) {
        chunks++;
        finish = c.choices[0]?.finish_reason ?? finish;
      }
      assert.ok(chunks >= 6);
      assert.equal(finish, "length");
      const full = await client.completions.create({ model: "m", prompt: "hello", max_tokens: 3 });
      assert.equal(full.usage?.completion_tokens, 3);

      // A long stream, cut after its first event: the replica stops generating long before its 1500 tokens.
      const gen = (u: string) => metricSums(u, ["tokamak:generation_tokens_total"]).then((m) => m.get("tokamak:generation_tokens_total")!);
      const genBefore = await Promise.all(replicas.map((p) => gen(p.url)));
      const ac = new AbortController();
      const res = await fetch(`${r.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "go on", max_tokens: 1500, stream: true, ignore_eos: true }),
        signal: ac.signal,
      });
      const id = res.headers.get("x-tokamak-replica");
      const i = replicas.findIndex((p) => r.pool.replicas.get(id!)?.url === p.url);
      assert.ok(i >= 0, `served by ${id}`);
      const reader = res.body!.getReader();
      await reader.read();
      ac.abort();
      const running = async () =>
        (await metricSums(replicas[i]!.url, ["tokamak:num_requests_running"])).get("tokamak:num_requests_running");
      await waitFor(async () => (await running()) === 0, "the replica to stop the request", 10_000);
      const generated = (await gen(replicas[i]!.url)) - genBefore[i]!;
      assert.ok(generated < 750, `the replica generated ${generated} of the 1500 tokens before it saw the client go`);
      const aborts = async () => {
        const m = /tokamak:request_success_total\{[^}]*finished_reason="abort"[^}]*\} (\S+)/.exec(
          await (await fetch(`${replicas[i]!.url}/metrics`)).text(),
        );
        return Number(m?.[1] ?? 0);
      };
      await waitFor(async () => (await aborts()) >= 1, 'the replica to count the abort (finished_reason="abort")', 5000);
      await waitFor(() => r.pool.routable().every((x) => x.inFlight === 0), "the router to count it finished");
    } finally {
      await r.close();
    }
  });

  test("a replica that cannot be reached is retried elsewhere (before any byte), then its breaker opens; the admin API adds and removes replicas", async () => {
    const r = await makeRouter("round-robin", [replicas[0]!.url]);
    try {
      // Admin: authentication, validation, add, list.
      const admin = (path: string, init: RequestInit = {}) =>
        fetch(`${r.url}${path}`, {
          ...init,
          headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json", ...init.headers },
        });
      assert.equal((await fetch(`${r.url}/admin/replicas`)).status, 401);
      assert.equal((await fetch(`${r.url}/admin/replicas`, { headers: { authorization: "Bearer wrong" } })).status, 401);
      const bad = await admin("/admin/replicas", { method: "POST", body: JSON.stringify({ url: "ftp://x" }) });
      assert.equal(bad.status, 400);
      assert.match(((await bad.json()) as { error: { message: string } }).error.message, /only http/);
      assert.equal((await admin("/admin/replicas", { method: "POST", body: JSON.stringify({ url: replicas[0]!.url }) })).status, 409);
      assert.equal((await admin("/admin/replicas/nope/drain", { method: "POST" })).status, 404);
      // A port nothing listens on, forced ready as a probe would have left it a moment before the process died.
      const dead = await admin("/admin/replicas", { method: "POST", body: JSON.stringify({ url: "http://127.0.0.1:9", id: "dead" }) });
      assert.equal(dead.status, 201);
      const d = r.pool.get("dead");
      await waitFor(() => d.lastError !== undefined, "the first probe to fail");
      d.state = "ready";
      const results = [];
      for (let i = 0; i < 4; i++) results.push(await chat(r.url, { messages: [{ role: "user", content: `n${i}` }] }));
      assert.ok(
        results.every((x) => x.status === 200 && x.replica === "r1"),
        JSON.stringify(results.map((x) => [x.status, x.replica])),
      );
      const retries = (await metricSums(r.url, ["tokamak_router_retries_total"])).get("tokamak_router_retries_total");
      assert.equal(retries, 1, "one request went to the dead replica and was sent again");
      assert.equal(d.state, "unhealthy");
      // Probes keep failing: the breaker opens and no probe is sent while it is.
      await waitFor(() => d.breakerOpen, "the breaker to open", 10_000);
      const list = (await (await admin("/admin/replicas")).json()) as { replicas: { id: string; breaker: string }[] };
      assert.equal(list.replicas.find((x) => x.id === "dead")!.breaker, "open");
      assert.equal((await admin("/admin/replicas/dead", { method: "DELETE" })).status, 200);
      assert.equal(r.pool.replicas.has("dead"), false);
    } finally {
      await r.close();
    }
  });

  test("drain under continuous load: no request lost or duplicated, and the drained replica gets no new work", async () => {
    const r = await makeRouter(
      "least-load",
      replicas.map((p) => p.url),
    );
    try {
      const base = await Promise.all(replicas.map((p) => successes(p.url)));
      let stop = false;
      let sent = 0;
      const failures: string[] = [];
      const load = Promise.all(
        Array.from({ length: 6 }, async (_, w) => {
          while (!stop) {
            sent++;
            const res = await chat(r.url, { messages: [{ role: "user", content: `w${w} ${sent}` }], max_tokens: 20, stream: w % 2 === 0 });
            const ok = res.status === 200 && res.done && (res.events.at(-1) as { error?: unknown } | undefined)?.error === undefined;
            if (!ok) failures.push(res.text.slice(0, 200));
          }
        }),
      );
      await sleep(800);
      const drained = await fetch(`${r.url}/admin/replicas/r2/drain?wait=1`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN}` },
      });
      assert.equal(drained.status, 200);
      assert.equal(r.pool.replicas.has("r2"), false);
      const atDrain = await successes(replicas[1]!.url);
      await sleep(800);
      stop = true;
      await load;
      assert.deepEqual(failures, []);
      assert.equal(await successes(replicas[1]!.url), atDrain, "the drained replica took nothing after its drain");
      const done = await Promise.all(replicas.map((p) => successes(p.url)));
      const served = done.reduce((a, b, i) => a + b - base[i]!, 0);
      assert.equal(served, sent, `replicas finished ${served} requests for ${sent} sent: none lost, none run twice`);
      assert.ok(atDrain > base[1]!, "the drained replica had served some before its drain");
    } finally {
      await r.close();
    }
  });

  test("a replica killed mid-load: only its streams fail, each with an SSE error event; new requests go elsewhere within one health interval", async () => {
    const victim = await startStubReplica(join(dir, "m"));
    extra.push(victim);
    const interval = 500;
    const r = await makeRouter("round-robin", [replicas[0]!.url, replicas[2]!.url, victim.url], interval);
    try {
      const victimId = r.pool.routable().find((x) => x.url === victim.url)!.id;
      // 12 long streams and 6 long plain requests, spread round-robin: a third on the victim.
      const streams = Array.from({ length: 12 }, (_, i) =>
        chat(r.url, { messages: [{ role: "user", content: `s${i}` }], max_tokens: 400, stream: true, ignore_eos: true }),
      );
      // All streams placed before the plain requests, so round-robin puts exactly 4 of them on each replica.
      await waitFor(() => r.pool.routable().reduce((a, x) => a + x.inFlight, 0) >= 12, "the streams to be placed");
      const plain = Array.from({ length: 6 }, (_, i) =>
        chat(r.url, { messages: [{ role: "user", content: `p${i}` }], max_tokens: 300, ignore_eos: true }),
      );
      await waitFor(() => r.pool.get(victimId).inFlight >= 6, "requests on the victim");
      await sleep(200);
      await victim.stop("SIGKILL");
      const killedAt = Date.now();
      const s = await Promise.all(streams);
      const onVictim = s.filter((x) => x.replica === victimId);
      assert.equal(onVictim.length, 4);
      for (const x of onVictim) {
        const last = x.events.at(-1) as { error?: { type: string; message: string } };
        assert.equal(last.error?.type, "replica_failed", x.text.slice(-300));
        assert.ok(x.done, "the error event is followed by [DONE]");
        assert.ok(x.events.length > 1, "some of the stream had come through");
      }
      for (const x of s.filter((y) => y.replica !== victimId)) {
        const last = x.events.at(-1) as { choices: { finish_reason: string | null }[] };
        assert.equal(last.choices[0]!.finish_reason, "length");
      }
      // Plain requests on the victim had no byte of their answer yet: they were sent again and succeed.
      for (const x of await Promise.all(plain)) assert.equal(x.status, 200, x.text);
      // Within one health interval of the kill, nothing goes to it.
      await sleep(Math.max(0, interval + 100 - (Date.now() - killedAt)));
      for (let i = 0; i < 6; i++) {
        const x = await chat(r.url, { messages: [{ role: "user", content: `after ${i}` }] });
        assert.equal(x.status, 200);
        assert.notEqual(x.replica, victimId);
      }
      const errs = await metricSums(r.url, ["tokamak_router_errors_total"]);
      assert.ok((errs.get("tokamak_router_errors_total") ?? 0) >= 4);
    } finally {
      await r.close();
    }
  });

  test("a replica with --metrics-prefix vllm exposes vLLM's names only, and the router reads its load from them", async () => {
    const s = await startServer(join(dir, "m"), { port: 0, stubModel: true, metricsPrefix: "vllm", engine: { maxModelLen: 2048 } });
    const r = await makeRouter("least-load", [s.url]);
    try {
      const body = await (await fetch(`${s.url}/metrics`)).text();
      assert.match(body, /^vllm:num_requests_waiting\{model_name="m"\} 0$/m);
      assert.match(body, /^vllm:request_success_total\{/m);
      assert.doesNotMatch(body, /tokamak:/);
      assert.equal((await chat(r.url, { messages: [{ role: "user", content: "count me" }] })).status, 200);
      const rep = r.pool.routable()[0]!;
      await waitFor(() => rep.load.prefixQueries > 0, "the router to read vllm:prefix_cache_queries_total");
    } finally {
      await r.close();
      await s.shutdown(500);
    }
  });

  test("end to end with a real tiny model: the same greedy text through the router as direct", async () => {
    writeTinyModel(join(dir, "real"), { ...ROUTER_TEST_MODEL, maxPositionEmbeddings: 512, seed: 7 });
    const real = await startCli(["serve", join(dir, "real"), "--port", "0", "--threads", "1", "--kv-cache-memory", "64MiB"]);
    extra.push(real);
    const r = await makeRouter("cache-aware", [real.url]);
    try {
      const body = { messages: [{ role: "user", content: "Tell me about rivers." }], max_tokens: 12, temperature: 0 };
      const direct = await chat(real.url, body);
      const routed = await chat(r.url, body);
      const text = (x: StreamResult) => (x.events[0] as { choices: { message: { content: string } }[] }).choices[0]!.message.content;
      assert.equal(routed.status, 200);
      assert.ok(text(direct).length > 0);
      assert.equal(text(routed), text(direct));
      const streamed = await chat(r.url, { ...body, stream: true });
      const joined = streamed.events
        .map((e) => (e as { choices: { delta: { content?: string } }[] }).choices[0]?.delta.content ?? "")
        .join("");
      assert.equal(joined, text(direct));
    } finally {
      await r.close();
    }
  });
});

/**
 * `tokamak router` on this machine, two figures, each against real `tokamak serve` and `tokamak router`
 * child processes over loopback HTTP:
 *
 * 1. the router's overhead: one stub-model replica (free forward pass), driven by `tokamak bench serve`'s
 *    client directly and through the router, alternated round by round so drift on the machine costs
 *    both alike; then once more with --stub-step-ms 10 (a device's pace);
 * 2. cache-aware vs round-robin routing: three replicas of a tiny random-weight Qwen3 (real forward
 *    passes on CPU, one thread each), a shared-prefix chat workload (a few long system prompts × short
 *    distinct user suffixes); TTFT, throughput, the replicas' prefix-cache hit rate and the affinity.
 *    Both policies run against the same replicas, each with its own system prompts, so both start cold.
 *
 *   npm run bench:router -- [--requests 1000] [--rounds 3] [--concurrency 16] [--prefixes 8] [--per-prefix 12]
 *                           [--prefix-concurrency 6] [--cache-rounds 2] [--skip overhead,slow,cache]
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { Agent, type IncomingMessage, request as httpRequest } from "node:http";
import { join } from "node:path";
import { type BenchResult, percentile, runServeBenchmark } from "../src/cli/bench-serve.js";
import { type TinyModelOptions, writeTinyModel } from "../test/helpers/tiny-model.js";
import { flag, machine, numFlag, REPO_ROOT, rng, saveResult } from "./common.js";

const CLI = join(REPO_ROOT, "dist", "src", "cli", "main.js");
const skip = new Set(flag("skip", "").split(",").filter(Boolean));
const requests = numFlag("requests", 1000);
const rounds = numFlag("rounds", 3);
const concurrency = numFlag("concurrency", 16);
const prefixes = numFlag("prefixes", 8);
const perPrefix = numFlag("per-prefix", 12);
const prefixConcurrency = numFlag("prefix-concurrency", 6);
const cacheRounds = numFlag("cache-rounds", 2);

/** The cache figure's model: small, but a ~300-token prefill costs a visible time on one CPU thread. */
const ROUTER_MODEL: TinyModelOptions = {
  arch: "qwen3",
  dtype: "bf16",
  hiddenSize: 256,
  numLayers: 4,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 64,
  intermediateSize: 512,
  maxPositionEmbeddings: 4096,
  tieWordEmbeddings: true,
};
const modelDir = join(REPO_ROOT, ".cache", "router-model");
if (!existsSync(join(modelDir, "config.json"))) writeTinyModel(modelDir, ROUTER_MODEL);

// ---------------------------------------------------------------- child processes

interface Proc {
  name: string;
  /** Its stderr so far. */
  log: () => string;
  url: string;
  child: ChildProcess;
}
const children = new Set<ChildProcess>();

function killAll(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
}
process.on("exit", killAll);
for (const sig of ["SIGINT", "SIGTERM"] as const)
  process.on(sig, () => {
    killAll();
    process.exit(130);
  });

/** Start `tokamak <args>` and resolve once it prints its API banner. */
function start(name: string, args: string[]): Promise<Proc> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "ignore", "pipe"] });
  children.add(child);
  child.once("exit", () => children.delete(child));
  let log = "";
  return new Promise<Proc>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start within 60 s:\n${log}`)), 60_000);
    child.stderr!.on("data", (d: Buffer) => {
      log += d.toString();
      const m = /OpenAI-compatible API at (http:\/\/[^\s/]+)\/v1/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve({ name, url: m[1]!, child, log: () => log });
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code} before listening:\n${log}`));
    });
  });
}

async function stop(...ps: Proc[]): Promise<void> {
  await Promise.all(
    ps.map((p) => {
      if (p.child.exitCode !== null || p.child.signalCode !== null) return Promise.resolve();
      const exited = new Promise((r) => p.child.once("exit", r));
      p.child.kill("SIGTERM");
      return exited;
    }),
  );
}

const replicaArgs = (extra: string[]) => [
  "serve",
  modelDir,
  "--port",
  "0",
  "--served-model-name",
  "bench",
  "--max-model-len",
  "2048",
  "--max-queue-len",
  "100000",
  ...extra,
];

function startRouter(policy: string, replicas: Proc[]): Promise<Proc> {
  const args = ["router", "--port", "0", "--policy", policy, "--health-interval", "0.5"];
  for (const r of replicas) args.push("--replica", r.url);
  return start(`router (${policy})`, args);
}

/** Poll the router's /health until all `n` replicas are ready. */
async function waitReady(router: Proc, n: number): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`${router.url}/health`);
      if (res.ok && ((await res.json()) as { ready_replicas: number }).ready_replicas >= n) return;
    } catch {
      // not yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${router.name}: fewer than ${n} replicas ready after 30 s`);
}

// ---------------------------------------------------------------- figure 1: the router's overhead

/** CPU seconds a child has used (user + system, from /proc; Linux only, else NaN). */
function cpuSeconds(p: Proc): number {
  try {
    const f = readFileSync(`/proc/${p.child.pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

interface Stats {
  reqPerS: number;
  outTokPerS: number;
  ttftMean: number;
  ttftP50: number;
  ttftP99: number;
  ok: string;
  /** CPU milliseconds per request: the replica's, and the router's (0 direct). */
  replicaCpuMs: number;
  routerCpuMs: number;
}
const fromBench = (r: BenchResult): Stats => ({
  reqPerS: r.request_throughput,
  outTokPerS: r.output_throughput,
  ttftMean: r.mean_ttft_ms!,
  ttftP50: r.median_ttft_ms!,
  ttftP99: r.p99_ttft_ms!,
  ok: `${r.completed}/${r.num_prompts}`,
  replicaCpuMs: 0,
  routerCpuMs: 0,
});
const meanOf = (xs: Stats[]): Stats => {
  const m = (k: keyof Omit<Stats, "ok">) => xs.reduce((a, s) => a + s[k], 0) / xs.length;
  return {
    reqPerS: m("reqPerS"),
    outTokPerS: m("outTokPerS"),
    ttftMean: m("ttftMean"),
    ttftP50: m("ttftP50"),
    ttftP99: m("ttftP99"),
    ok: xs.map((s) => s.ok).join(", "),
    replicaCpuMs: m("replicaCpuMs"),
    routerCpuMs: m("routerCpuMs"),
  };
};

function load(baseUrl: string, numPrompts: number, seed: number): Promise<BenchResult> {
  return runServeBenchmark({
    baseUrl,
    endpoint: "/v1/completions",
    numPrompts,
    maxConcurrency: concurrency,
    randomInputLen: 32,
    randomOutputLen: 32,
    randomVocabSize: 30000,
    ignoreEos: true,
    seed,
    percentileMetrics: "ttft",
    metricPercentiles: "50,99",
  });
}

interface OverheadFigure {
  stepMs: number;
  rounds: number;
  requests: number;
  /** "direct", then one entry per router policy; each a list of rounds. */
  paths: Record<string, Stats[]>;
}
const overhead: OverheadFigure[] = [];

async function overheadFigure(stepMs: number, nRounds: number, numPrompts: number, policies: string[]): Promise<void> {
  const replica = await start(
    `stub replica (step ${stepMs} ms)`,
    replicaArgs(["--stub-model", "--stub-step-ms", String(stepMs), "--max-num-seqs", "64"]),
  );
  const routers: Proc[] = [];
  try {
    for (const p of policies) routers.push(await startRouter(p, [replica]));
    for (const r of routers) await waitReady(r, 1);
    const targets: [string, string, Proc | undefined][] = [
      ["direct", replica.url, undefined],
      ...routers.map((r, i): [string, string, Proc] => [`router, ${policies[i]}`, r.url, r]),
    ];
    for (const [, url] of targets) await load(url, 64, 100); // warm up every path (JIT, keep-alive connections)
    const fig: OverheadFigure = { stepMs, rounds: nRounds, requests: numPrompts, paths: Object.fromEntries(targets.map(([n]) => [n, []])) };
    for (let i = 0; i < nRounds; i++) {
      const line: string[] = [];
      for (const [name, url, router] of targets) {
        const cpu0 = [cpuSeconds(replica), router ? cpuSeconds(router) : 0];
        const s = fromBench(await load(url, numPrompts, i));
        s.replicaCpuMs = ((cpuSeconds(replica) - cpu0[0]!) * 1000) / numPrompts;
        s.routerCpuMs = router ? ((cpuSeconds(router) - cpu0[1]!) * 1000) / numPrompts : 0;
        fig.paths[name]!.push(s);
        line.push(`${name} ${s.outTokPerS.toFixed(0)} tok/s (TTFT p50 ${s.ttftP50.toFixed(1)} ms)`);
      }
      process.stderr.write(`step ${stepMs} ms, round ${i + 1}: ${line.join(", ")}\n`);
    }
    overhead.push(fig);
  } finally {
    await stop(...routers, replica);
  }
}

// ---------------------------------------------------------------- figure 2: cache-aware vs round-robin

const WORDS = (
  "the of and to in is that for it as was with be by on not he this are or his from at which but have an they " +
  "you were her all she there would their we him been has when who will more no if out so said what up its about " +
  "into than them can only other new some could time these two may then do first any my now such like our over man " +
  "me even most made after also did many before must through back years where much your way well down should because " +
  "each just those people how too little state good very make world still own see men work long get here between both " +
  "life being under never day same another know while last might us great old year off come since against go came right " +
  "used take three states himself few house use during without again place american around however home small found"
).split(" ");

/** A system prompt of about `n` words (one Qwen3 token each, mostly), seeded. */
function systemPrompt(seed: number, n: number): string {
  const r = rng(seed);
  const words = Array.from({ length: n }, () => WORDS[Math.floor(r() * WORDS.length)]!);
  return `You are assistant number ${seed}. ${words.join(" ")}.`;
}

interface ChatOutcome {
  ok: boolean;
  error: string;
  ttft: number;
  latency: number;
  outputTokens: number;
  replica: string;
  reason: string;
}

const agent = new Agent({ keepAlive: true });

/**
 * One streamed chat completion, timed as `tokamak bench serve` times it (TTFT: the first chunk carrying
 * text or a finish_reason). Its client takes only the random dataset, so this figure sends its own.
 */
function chat(baseUrl: string, system: string, user: string, maxTokens: number): Promise<ChatOutcome> {
  const body = JSON.stringify({
    model: "bench",
    messages: [
      { role: "system", content: system },
      { role: "user", content: user },
    ],
    max_tokens: maxTokens,
    temperature: 0,
    ignore_eos: true,
    stream: true,
    stream_options: { include_usage: true },
  });
  const t0 = performance.now();
  const out: ChatOutcome = { ok: false, error: "", ttft: 0, latency: 0, outputTokens: 0, replica: "", reason: "" };
  return new Promise((resolve) => {
    const req = httpRequest(`${baseUrl}/v1/chat/completions`, {
      method: "POST",
      agent,
      headers: { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) },
    });
    req.once("error", (err) => resolve({ ...out, error: err.message }));
    req.once("response", (res: IncomingMessage) => {
      out.replica = String(res.headers["x-tokamak-replica"] ?? "");
      out.reason = /reason=([^;]+)/.exec(String(res.headers["x-tokamak-route"] ?? ""))?.[1] ?? "";
      res.setEncoding("utf8");
      let buf = "";
      res.on("data", (chunk: string) => {
        buf += chunk;
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const ev = JSON.parse(data) as {
            choices?: { delta?: { content?: string | null }; finish_reason?: string | null }[];
            usage?: { completion_tokens?: number } | null;
            error?: unknown;
          };
          if (ev.error) out.error = JSON.stringify(ev.error);
          const c = ev.choices?.[0];
          if (c && ((c.delta?.content ?? "") !== "" || c.finish_reason != null) && out.ttft === 0) out.ttft = performance.now() - t0;
          if (ev.usage?.completion_tokens !== undefined) out.outputTokens = ev.usage.completion_tokens;
        }
      });
      res.once("end", () => {
        out.latency = performance.now() - t0;
        out.ok = res.statusCode === 200 && out.error === "" && out.ttft > 0;
        if (res.statusCode !== 200) out.error = `HTTP ${res.statusCode}: ${buf.slice(0, 200)}`;
        resolve(out);
      });
      res.once("error", (err) => resolve({ ...out, error: err.message }));
    });
    req.end(body);
  });
}

/** Sum of the replicas' prefix-cache counters (tokens). */
async function prefixCounters(replicas: Proc[]): Promise<{ hits: number; queries: number }> {
  let hits = 0;
  let queries = 0;
  for (const r of replicas) {
    const text = await (await fetch(`${r.url}/metrics`)).text();
    for (const line of text.split("\n")) {
      const m = /^tokamak:prefix_cache_(hits|queries)_total(?:\{[^}]*\})?\s+([0-9.eE+-]+)/.exec(line);
      if (m) {
        if (m[1] === "hits") hits += Number(m[2]);
        else queries += Number(m[2]);
      }
    }
  }
  return { hits, queries };
}

interface CacheRun {
  policy: string;
  ok: number;
  total: number;
  duration: number;
  reqPerS: number;
  outTokPerS: number;
  ttftMean: number;
  ttftP50: number;
  ttftP99: number;
  hitRate: number;
  affinity: number;
  perPrefix: { prefix: number; replicas: Record<string, number> }[];
  reasons: Record<string, number>;
  promptTokens: number;
}
const cacheRuns: CacheRun[] = [];

async function cacheRun(policy: string, replicas: Proc[], seedBase: number): Promise<void> {
  const router = await startRouter(policy, replicas);
  try {
    await waitReady(router, replicas.length);
    const systems = Array.from({ length: prefixes }, (_, i) => systemPrompt(seedBase + i, 280));
    const r = rng(seedBase);
    const jobs = systems.flatMap((s, p) =>
      Array.from({ length: perPrefix }, (_, j) => ({
        p,
        system: s,
        user: `Question ${j}: what about ${WORDS[Math.floor(r() * WORDS.length)]}?`,
      })),
    );
    for (let i = jobs.length - 1; i > 0; i--) {
      const k = Math.floor(r() * (i + 1));
      [jobs[i], jobs[k]] = [jobs[k]!, jobs[i]!];
    }
    const before = await prefixCounters(replicas);
    const outcomes: (ChatOutcome & { p: number })[] = [];
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: prefixConcurrency }, async () => {
        for (let i = next++; i < jobs.length; i = next++) {
          const j = jobs[i]!;
          outcomes.push({ ...(await chat(router.url, j.system, j.user, 8)), p: j.p });
        }
      }),
    );
    const duration = (performance.now() - t0) / 1000;
    await new Promise((res) => setTimeout(res, 200));
    const after = await prefixCounters(replicas);
    const ok = outcomes.filter((o) => o.ok);
    const failed = outcomes.filter((x) => !x.ok);
    for (const o of failed.slice(0, 3)) process.stderr.write(`${policy}: failed request: ${o.error}\n`);
    if (failed.length > 0) process.stderr.write(`${router.name} at ${router.url}, its stderr:\n${router.log()}\n`);
    const ttfts = ok.map((o) => o.ttft);
    const perPrefixCounts = systems.map((_, p) => {
      const replicasOf: Record<string, number> = {};
      for (const o of ok.filter((x) => x.p === p)) replicasOf[o.replica] = (replicasOf[o.replica] ?? 0) + 1;
      return { prefix: p, replicas: replicasOf };
    });
    const mostUsed = perPrefixCounts.reduce((a, c) => a + Math.max(0, ...Object.values(c.replicas)), 0);
    const reasons: Record<string, number> = {};
    for (const o of ok) reasons[o.reason] = (reasons[o.reason] ?? 0) + 1;
    const tok = await fetch(`${replicas[0]!.url}/tokenize`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: systems[0], add_special_tokens: false }),
    });
    const run: CacheRun = {
      policy,
      ok: ok.length,
      total: outcomes.length,
      duration,
      reqPerS: ok.length / duration,
      outTokPerS: ok.reduce((a, o) => a + o.outputTokens, 0) / duration,
      ttftMean: ttfts.reduce((a, b) => a + b, 0) / Math.max(1, ttfts.length),
      ttftP50: percentile(ttfts, 50),
      ttftP99: percentile(ttfts, 99),
      hitRate: (after.hits - before.hits) / Math.max(1, after.queries - before.queries),
      affinity: mostUsed / Math.max(1, ok.length),
      perPrefix: perPrefixCounts,
      reasons,
      promptTokens: tok.ok ? ((await tok.json()) as { count: number }).count : NaN,
    };
    cacheRuns.push(run);
    process.stderr.write(
      `${policy}: ${run.ok}/${run.total} ok in ${duration.toFixed(1)} s, TTFT mean ${run.ttftMean.toFixed(0)} / p50 ${run.ttftP50.toFixed(0)} / p99 ${run.ttftP99.toFixed(0)} ms, ` +
        `hit rate ${(run.hitRate * 100).toFixed(1)}%, affinity ${(run.affinity * 100).toFixed(0)}%, reasons ${JSON.stringify(reasons)}, per prefix ${JSON.stringify(perPrefixCounts.map((c) => c.replicas))}\n`,
    );
  } finally {
    await stop(router);
  }
}

async function cacheFigure(): Promise<void> {
  const replicas: Proc[] = [];
  try {
    for (let i = 0; i < 3; i++) replicas.push(await start(`replica ${i}`, replicaArgs(["--threads", "1", "--kv-cache-memory", "256MiB"])));
    // Warm each replica (JIT) with a prompt unrelated to both runs' system prompts.
    await Promise.all(replicas.map((r, i) => chat(r.url, systemPrompt(900 + i, 60), "hello", 4)));
    // A-B-B-A, each run with fresh system prompts: drift on the shared machine costs both policies alike.
    const order = cacheRounds >= 2 ? ["cache-aware", "round-robin", "round-robin", "cache-aware"] : ["cache-aware", "round-robin"];
    for (const [i, policy] of order.entries()) await cacheRun(policy, replicas, 1000 * (i + 1));
  } finally {
    await stop(...replicas);
  }
}

// ---------------------------------------------------------------- run, print, save

const t0 = performance.now();
try {
  if (!skip.has("overhead")) await overheadFigure(0, rounds, requests, ["cache-aware", "round-robin"]);
  if (!skip.has("slow")) await overheadFigure(10, 1, Math.max(64, Math.round(requests / 2)), ["cache-aware"]);
  if (!skip.has("cache")) await cacheFigure();
} finally {
  killAll();
}

const f1 = (x: number) => x.toFixed(1);
const f0 = (x: number) => x.toFixed(0);
const out: string[] = [];
out.push(`machine: ${machine()}; total bench time ${((performance.now() - t0) / 1000).toFixed(0)} s`);
if (overhead.length > 0) {
  out.push("");
  out.push(
    `Router overhead: one stub replica (--max-num-seqs 64), /v1/completions streamed, ${concurrency} clients, in 32 / out 32 tokens (ignore_eos); ` +
      "direct and through each router alternated within every round; mean of the rounds",
  );
  out.push("");
  out.push(
    "| stub step | path | rounds × requests | req/s | output tok/s | TTFT mean ms | TTFT p50 ms | TTFT p99 ms | CPU ms/request: replica, router | tok/s vs direct (per round) |",
  );
  out.push("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const f of overhead) {
    const direct = f.paths.direct!;
    for (const [name, rs] of Object.entries(f.paths)) {
      const m = meanOf(rs);
      const ratio =
        name === "direct"
          ? ""
          : `**${(m.outTokPerS / meanOf(direct).outTokPerS).toFixed(3)}** (${rs.map((x, i) => (x.outTokPerS / direct[i]!.outTokPerS).toFixed(3)).join(", ")})`;
      out.push(
        `| ${f.stepMs} ms | ${name} | ${f.rounds} × ${f.requests} | ${f1(m.reqPerS)} | ${f0(m.outTokPerS)} | ${f1(m.ttftMean)} | ${f1(m.ttftP50)} | ${f1(m.ttftP99)} | ${m.replicaCpuMs.toFixed(2)}, ${m.routerCpuMs.toFixed(2)} | ${ratio} |`,
      );
    }
  }
}
if (cacheRuns.length > 0) {
  const c = cacheRuns[0]!;
  out.push("");
  out.push(
    `Cache-aware vs round-robin: 3 replicas of a random-weight Qwen3 (hidden 256, 4 layers, 4 heads / 2 KV heads, head_dim 64, intermediate 512, bf16, --threads 1), ` +
      `${prefixes} system prompts of ${c.promptTokens} tokens × ${perPrefix} requests with distinct short user turns, shuffled, chat streamed, max_tokens 8 (ignore_eos), ${prefixConcurrency} clients; ` +
      `the same replicas for every run, in the order of the rows (A-B-B-A), each run with its own system prompts (cold for each)`,
  );
  out.push("");
  out.push("| policy, run | ok | req/s | output tok/s | TTFT mean ms | TTFT p50 ms | TTFT p99 ms | prefix-cache hit rate | affinity |");
  out.push("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
  const rowsOf = cacheRuns.map((r, i) => ({ ...r, label: `${r.policy}, run ${i + 1}` }));
  for (const policy of ["cache-aware", "round-robin"]) {
    const rs = cacheRuns.filter((r) => r.policy === policy);
    if (rs.length < 2) continue;
    const m = (k: "reqPerS" | "outTokPerS" | "ttftMean" | "ttftP50" | "ttftP99" | "hitRate" | "affinity") =>
      rs.reduce((a, r) => a + r[k], 0) / rs.length;
    rowsOf.push({
      ...rs[0]!,
      label: `**${policy}, mean**`,
      ok: rs.reduce((a, r) => a + r.ok, 0),
      total: rs.reduce((a, r) => a + r.total, 0),
      reqPerS: m("reqPerS"),
      outTokPerS: m("outTokPerS"),
      ttftMean: m("ttftMean"),
      ttftP50: m("ttftP50"),
      ttftP99: m("ttftP99"),
      hitRate: m("hitRate"),
      affinity: m("affinity"),
    });
  }
  for (const r of rowsOf)
    out.push(
      `| ${r.label} | ${r.ok}/${r.total} | ${r.reqPerS.toFixed(2)} | ${f1(r.outTokPerS)} | ${f0(r.ttftMean)} | ${f0(r.ttftP50)} | ${f0(r.ttftP99)} | ${(r.hitRate * 100).toFixed(1)}% | ${(r.affinity * 100).toFixed(0)}% |`,
    );
}
console.log(out.join("\n"));
console.log(`saved ${saveResult("router", { overhead, cacheRuns })}`);

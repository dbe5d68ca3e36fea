/**
 * Online serving on this machine, three figures, each against a real `tokamak serve` child
 * process driven over loopback HTTP by `tokamak bench serve`'s own client:
 *
 * 1. the CPU demo model (npm start's random-weight Qwen3 shape) at two request rates;
 * 2. the server's own streaming capacity: the stub model (config + tokenizer, free logits)
 *    with 256 concurrent SSE streams, output tokens/s through HTTP;
 * 3. the dashboard's cost: the stub-model workload with the dashboard closed and open in
 *    headless Chromium, alternated so drift on the machine costs both alike.
 *
 *   npm run bench:serve -- [--rates 0.5,2] [--stub-prompts 1024] [--dashboard-rounds 3] [--skip demo,stub,dashboard]
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import puppeteer, { type Browser } from "puppeteer-core";
import { type BenchResult, runServeBenchmark, type ServeBenchOptions } from "../src/cli/bench-serve.js";
import { writeTinyModel } from "../test/helpers/tiny-model.js";
import { flag, machine, numFlag, REPO_ROOT, saveResult } from "./common.js";
import { DEMO_MODEL } from "./models.js";

const CLI = join(REPO_ROOT, "dist", "src", "cli", "main.js");
const CHROMIUM = [process.env.CHROMIUM_PATH, "/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => p && existsSync(p));

const skip = new Set(flag("skip", "").split(",").filter(Boolean));
const rates = flag("rates", "0.5,2").split(",").map(Number);
const stubPrompts = numFlag("stub-prompts", 1024);
const dashboardRounds = numFlag("dashboard-rounds", 3);

const modelDir = join(REPO_ROOT, ".cache", "demo-model");
if (!existsSync(join(modelDir, "config.json"))) writeTinyModel(modelDir, DEMO_MODEL);

interface Server {
  url: string;
  child: ChildProcess;
}

async function startServer(extra: string[]): Promise<Server> {
  const args = [CLI, "serve", modelDir, "--port", "0", "--served-model-name", "bench", "--max-queue-len", "100000", ...extra];
  const child = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr!.on("data", (d: Buffer) => {
      log += d.toString();
      const m = /OpenAI-compatible API at (http:\/\/[^\s/]+)\/v1/.exec(log);
      if (m) resolve(m[1]!);
    });
    child.on("exit", (code) => reject(new Error(`tokamak serve exited with ${code} before listening:\n${log}`)));
  });
  return { url, child };
}

async function stopServer(s: Server): Promise<void> {
  const exited = new Promise((r) => s.child.once("exit", r));
  s.child.kill("SIGTERM");
  await exited;
}

function bench(s: Server, o: ServeBenchOptions): Promise<BenchResult> {
  return runServeBenchmark({
    baseUrl: s.url,
    ignoreEos: true,
    seed: 0,
    percentileMetrics: "ttft,tpot,itl,e2el",
    metricPercentiles: "50,99",
    ...o,
  });
}

interface Row {
  figure: string;
  result: BenchResult;
}
const rows: Row[] = [];
const summary = (r: BenchResult) =>
  `${r.completed}/${r.num_prompts} ok, ${r.output_throughput.toFixed(1)} output tok/s, ${r.request_throughput.toFixed(2)} req/s, ` +
  `TTFT p50 ${r.median_ttft_ms!.toFixed(0)} / p99 ${r.p99_ttft_ms!.toFixed(0)} ms, TPOT p50 ${r.median_tpot_ms!.toFixed(1)} ms, ` +
  `ITL p50 ${r.median_itl_ms!.toFixed(1)} / p99 ${r.p99_itl_ms!.toFixed(1)} ms`;

if (!skip.has("demo")) {
  const s = await startServer(["--kv-cache-memory", "1GiB"]);
  try {
    await bench(s, { numPrompts: 4, randomInputLen: 32, randomOutputLen: 8, randomVocabSize: 30000 }); // warm up
    for (const rate of rates) {
      const result = await bench(s, {
        numPrompts: 48,
        requestRate: rate,
        randomInputLen: 128,
        randomOutputLen: 64,
        randomVocabSize: 30000,
      });
      rows.push({ figure: `demo model, ${rate} req/s, in 128 / out 64`, result });
      process.stderr.write(`demo @ ${rate} req/s: ${summary(result)}\n`);
    }
  } finally {
    await stopServer(s);
  }
}

async function stubRun(s: Server, prompts: number): Promise<BenchResult> {
  return bench(s, { numPrompts: prompts, maxConcurrency: 256, randomInputLen: 32, randomOutputLen: 128, randomVocabSize: 30000 });
}

if (!skip.has("stub")) {
  const s = await startServer(["--stub-model", "--max-num-seqs", "256"]);
  try {
    await stubRun(s, 64);
    const result = await stubRun(s, stubPrompts);
    rows.push({ figure: "stub model, 256 concurrent streams, in 32 / out 128", result });
    process.stderr.write(`stub, 256 streams: ${summary(result)}\n`);
  } finally {
    await stopServer(s);
  }
}

/**
 * The dashboard's cost, three ways in rotation: closed; open as its event stream read by a
 * plain HTTP client (what a browser on another machine costs the server: the snapshots, their
 * JSON and the writes); open in headless Chromium on this same machine (that, plus the page's
 * rendering competing for the same cores).
 */
const dashboard = { closed: [] as number[], stream: [] as number[], chromium: [] as number[], updatesPerSecond: [] as number[] };

/** Read /dashboard/events as a remote browser would (parse every snapshot), until stopped. */
function streamReader(url: string): { stop: () => Promise<number> } {
  const ctrl = new AbortController();
  let events = 0;
  const done = (async () => {
    try {
      const res = await fetch(`${url}/dashboard/events`, { signal: ctrl.signal });
      const decoder = new TextDecoder();
      let buf = "";
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += decoder.decode(chunk, { stream: true });
        let i: number;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const ev = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (ev.startsWith("data: ")) {
            JSON.parse(ev.slice(6));
            events++;
          }
        }
      }
    } catch (err) {
      if ((err as Error).name !== "AbortError") throw err;
    }
  })();
  return {
    stop: async () => {
      ctrl.abort();
      await done;
      return events;
    },
  };
}

if (!skip.has("dashboard")) {
  if (!CHROMIUM)
    throw new Error("the dashboard figure needs Chromium: apt-get install chromium, or set CHROMIUM_PATH, or --skip dashboard");
  const s = await startServer(["--stub-model", "--max-num-seqs", "256"]);
  let browser: Browser | undefined;
  try {
    await stubRun(s, 64);
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    });
    for (let i = 0; i < dashboardRounds; i++) {
      const closed = await stubRun(s, stubPrompts / 2);
      dashboard.closed.push(closed.output_throughput);

      const reader = streamReader(s.url);
      const t0 = performance.now();
      const streamed = await stubRun(s, stubPrompts / 2);
      const events = await reader.stop();
      dashboard.updatesPerSecond.push(events / ((performance.now() - t0) / 1000));
      dashboard.stream.push(streamed.output_throughput);

      const page = await browser.newPage();
      await page.setViewport({ width: 1400, height: 1000 });
      await page.goto(`${s.url}/dashboard`, { waitUntil: "load" });
      await new Promise((r) => setTimeout(r, 1500));
      const rendered = await stubRun(s, stubPrompts / 2);
      dashboard.chromium.push(rendered.output_throughput);
      await page.close();
      process.stderr.write(
        `dashboard round ${i + 1}: closed ${closed.output_throughput.toFixed(0)}, event stream read ${streamed.output_throughput.toFixed(0)} ` +
          `(${dashboard.updatesPerSecond.at(-1)!.toFixed(1)} updates/s), Chromium here ${rendered.output_throughput.toFixed(0)} output tok/s\n`,
      );
    }
  } finally {
    await browser?.close();
    await stopServer(s);
  }
}

console.log(`tokamak serve on ${machine()}; client: tokamak bench serve, ignore_eos, random token ids`);
console.log("| figure | ok | output tok/s | req/s | TTFT p50 / p99 ms | TPOT p50 ms | ITL p50 / p99 ms |");
console.log("|---|---:|---:|---:|---:|---:|---:|");
for (const { figure, result: r } of rows) {
  console.log(
    `| ${figure} | ${r.completed}/${r.num_prompts} | ${r.output_throughput.toFixed(1)} | ${r.request_throughput.toFixed(2)} | ` +
      `${r.median_ttft_ms!.toFixed(0)} / ${r.p99_ttft_ms!.toFixed(0)} | ${r.median_tpot_ms!.toFixed(1)} | ${r.median_itl_ms!.toFixed(1)} / ${r.p99_itl_ms!.toFixed(1)} |`,
  );
}
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
const costs = { stream: null as number | null, chromium: null as number | null };
if (dashboard.closed.length > 0) {
  const closed = mean(dashboard.closed);
  costs.stream = 1 - mean(dashboard.stream) / closed;
  costs.chromium = 1 - mean(dashboard.chromium) / closed;
  console.log(
    `dashboard over ${dashboardRounds} rotating rounds: closed ${closed.toFixed(0)} output tok/s; ` +
      `event stream read by a client ${mean(dashboard.stream).toFixed(0)} (cost ${(costs.stream * 100).toFixed(1)}%, ${mean(dashboard.updatesPerSecond).toFixed(1)} updates/s); ` +
      `rendered by Chromium on the same cores ${mean(dashboard.chromium).toFixed(0)} (cost ${(costs.chromium * 100).toFixed(1)}%)`,
  );
}
const saved = saveResult("serve", {
  rows: rows.map(({ figure, result }) => ({
    figure,
    ...result,
    input_lens: undefined,
    output_lens: undefined,
    ttfts: undefined,
    itls: undefined,
    generated_texts: undefined,
  })),
  dashboard: { ...dashboard, costs },
});
console.log(`saved ${saved}`);

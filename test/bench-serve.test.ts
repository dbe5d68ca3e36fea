/**
 * `tokamak bench serve` against a real server in-process (a tiny random Qwen3):
 * counts, token totals and timings, arrival scheduling and the concurrency limit,
 * the chat endpoint, failures counted rather than thrown, vLLM's summary table and
 * result JSON, and the CLI wiring.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Command } from "commander";
import {
  arrivalTimes,
  type BenchResult,
  defaultResultFilename,
  formatSummary,
  percentile,
  registerBenchServe,
  runServeBenchmark,
  sampleRandomRequests,
  transport,
} from "../src/cli/bench-serve.js";
import { startServer, type RunningServer } from "../src/server/serve.js";
import { writeTinyModel } from "./helpers/tiny-model.js";

const root = mkdtempSync(join(tmpdir(), "tokamak-bench-serve-"));
let server: RunningServer;

before(async () => {
  const modelDir = join(root, "tiny-qwen3");
  writeTinyModel(modelDir, { arch: "qwen3", dtype: "bf16", hiddenSize: 64, numLayers: 2, tieWordEmbeddings: true });
  server = await startServer(modelDir, { port: 0, servedModelName: ["tiny"], engine: { maxModelLen: 256, numBlocks: 128, threads: 1 } });
});
after(async () => {
  await server?.shutdown(1000);
  rmSync(root, { recursive: true, force: true });
});

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const mean = (xs: number[]) => sum(xs) / xs.length;

/** Count, per prompt, the SSE events with choices that the server sends, by teeing fetch's response bodies. */
async function countingChunks<T>(run: () => Promise<T>): Promise<{ value: T; chunks: Map<string, number> }> {
  const realPost = transport.post;
  const chunks = new Map<string, number>();
  const pending: Promise<void>[] = [];
  transport.post = async (url, headers, body) => {
    const res = await realPost(url, headers, body);
    if (!url.endsWith("/v1/completions") || res.statusCode !== 200) return res;
    const key = JSON.stringify((JSON.parse(body) as { prompt: number[] }).prompt);
    let text = "";
    res.on("data", (d: Buffer | string) => (text += String(d)));
    pending.push(
      new Promise<void>((resolve) =>
        res.once("end", () => {
          const events = text.split("\n\n").filter((e) => e.startsWith("data: {"));
          chunks.set(key, events.filter((e) => ((JSON.parse(e.slice(6)) as { choices: unknown[] }).choices ?? []).length > 0).length);
          resolve();
        }),
      ),
    );
    return res;
  };
  try {
    const value = await run();
    await Promise.all(pending);
    return { value, chunks };
  } finally {
    transport.post = realPost;
  }
}

function assertSummaryShape(text: string): void {
  const lines = text.trimEnd().split("\n");
  assert.equal(lines[0], "============ Serving Benchmark Result ============");
  assert.equal(lines.at(-1), "=".repeat(50));
  for (const line of lines.slice(1, -1)) {
    if (/^-+[A-Z]/.test(line)) assert.equal(line.length, 50, `section header "${line}" is 50 wide`);
    else {
      assert.ok(
        line.slice(0, 40).trimEnd().endsWith(":") && line[40] === " " && line[41] !== " ",
        `"${line}": the label padded to 40, then the value`,
      );
      assert.ok(line.length >= 51, `"${line}": the value padded to 10`);
    }
  }
}

describe("bench serve: statistics and schedules", () => {
  it("percentiles interpolate linearly, as numpy's", () => {
    assert.equal(percentile([1, 2, 3, 4], 50), 2.5);
    assert.ok(Math.abs(percentile([10, 7, 4, 3, 2, 1], 99) - 9.85) < 1e-12);
    assert.equal(percentile([5], 99), 5);
    assert.equal(percentile([], 99), 0);
  });

  it("inter-arrival times: mean 1/rate; burstiness sets the spread (gamma shape); seeded", () => {
    assert.deepEqual(arrivalTimes(3, Infinity, 1, 0), [0, 0, 0]);
    for (const [burstiness, cv] of [
      [1, 1],
      [0.25, 2],
      [4, 0.5],
    ] as const) {
      const t = arrivalTimes(20001, 50, burstiness, 7);
      assert.equal(t[0], 0);
      const gaps = t.slice(1).map((x, i) => x - t[i]!);
      const m = mean(gaps);
      const sd = Math.sqrt(mean(gaps.map((g) => (g - m) ** 2)));
      assert.ok(Math.abs(m - 0.02) < 0.02 * 0.05, `burstiness ${burstiness}: mean gap ${m}, expected 0.02`);
      assert.ok(Math.abs(sd / m - cv) < cv * 0.08, `burstiness ${burstiness}: coefficient of variation ${sd / m}, expected ${cv}`);
    }
    assert.deepEqual(arrivalTimes(50, 10, 1, 3), arrivalTimes(50, 10, 1, 3));
    assert.notDeepEqual(arrivalTimes(50, 10, 1, 3), arrivalTimes(50, 10, 1, 4));
  });

  it("random dataset: lengths within the range ratio, ids within the vocabulary range, seeded", () => {
    const reqs = sampleRandomRequests({ numPrompts: 200, inputLen: 100, outputLen: 10, rangeRatio: 0.5, seed: 1 });
    const ins = reqs.map((r) => r.promptTokenIds.length);
    const outs = reqs.map((r) => r.outputLen);
    assert.ok(
      Math.min(...ins) >= 50 && Math.max(...ins) <= 150 && Math.max(...ins) - Math.min(...ins) > 60,
      `${Math.min(...ins)}..${Math.max(...ins)}`,
    );
    assert.ok(Math.min(...outs) >= 5 && Math.max(...outs) <= 15);
    const ids = reqs.flatMap((r) => r.promptTokenIds);
    assert.ok(Math.min(...ids) >= 1000 && Math.max(...ids) < 30000);
    const fixed = sampleRandomRequests({ numPrompts: 5, inputLen: 7, outputLen: 3, rangeRatio: 0, seed: 1, vocab: [0, 10] });
    assert.ok(fixed.every((r) => r.promptTokenIds.length === 7 && r.outputLen === 3 && r.promptTokenIds.every((t) => t >= 0 && t < 10)));
    assert.deepEqual(
      sampleRandomRequests({ numPrompts: 3, inputLen: 9, outputLen: 3, rangeRatio: 0.3, seed: 2 }),
      sampleRandomRequests({ numPrompts: 3, inputLen: 9, outputLen: 3, rangeRatio: 0.3, seed: 2 }),
    );
  });

  it("the default file name is vLLM's: {backend}-{rate}qps[-concurrency{n}]-{model}-{date}.json", () => {
    const r = { request_rate: 100, max_concurrency: 2, model_id: "Qwen/Qwen3-0.6B", date: "20250101-120000" } as BenchResult;
    assert.equal(defaultResultFilename(r), "tokamak-100.0qps-concurrency2-Qwen3-0.6B-20250101-120000.json");
    assert.equal(
      defaultResultFilename({ ...r, request_rate: "inf", max_concurrency: null } as BenchResult),
      "tokamak-infqps-Qwen3-0.6B-20250101-120000.json",
    );
  });
});

describe("bench serve against a running server", () => {
  it("8 prompts at rate inf: all complete, 64 tokens, positive TTFTs, one ITL per chunk after the first", async () => {
    const opts = { numPrompts: 8, randomInputLen: 16, randomOutputLen: 8, ignoreEos: true, seed: 0 };
    const { value: r, chunks } = await countingChunks(() => runServeBenchmark({ baseUrl: server.url, ...opts }));
    assert.deepEqual(r.errors, Array(8).fill(""));
    assert.equal(r.completed, 8);
    assert.equal(r.failed, 0);
    assert.equal(r.model_id, "tiny", "the model defaults to the first of /v1/models");
    assert.deepEqual(r.input_lens, Array(8).fill(16));
    assert.equal(r.total_input_tokens, 128);
    assert.deepEqual(r.output_lens, Array(8).fill(8), "ignore_eos: every request generates exactly max_tokens (usage.completion_tokens)");
    assert.equal(r.total_output_tokens, 64);
    assert.ok(r.ttfts.every((t) => t > 0 && t < r.duration));
    // The server sends a chunk per token unless the token's text is held back (an incomplete UTF-8 character), so
    // each request has at most 7 gaps; exactly one per chunk the server sent, less one.
    const sampled = sampleRandomRequests({ numPrompts: 8, inputLen: 16, outputLen: 8, rangeRatio: 0, seed: 0 });
    r.itls.forEach((itl, i) => {
      const sent = chunks.get(JSON.stringify(sampled[i]!.promptTokenIds));
      assert.ok(sent !== undefined, `request ${i} was sent with the sampled prompt`);
      assert.equal(itl.length, sent - 1, `request ${i}: ${sent} chunks with choices`);
      assert.ok(itl.length >= 1 && itl.length <= 7);
      assert.ok(itl.every((g) => g >= 0));
    });
    const itls = r.itls.flat();
    assert.ok(itls.length <= 56);
    // Statistics are numpy's over the per-request lists.
    assert.ok(Math.abs(r.mean_ttft_ms! - mean(r.ttfts) * 1000) < 1e-9);
    assert.ok(Math.abs(r.median_ttft_ms! - percentile(r.ttfts, 50) * 1000) < 1e-9);
    assert.ok(Math.abs(r.p99_itl_ms! - percentile(itls, 99) * 1000) < 1e-9);
    assert.ok(Math.abs(r.mean_itl_ms! - mean(itls) * 1000) < 1e-9);
    assert.ok(r.mean_tpot_ms! > 0 && r.p99_tpot_ms! >= r.median_tpot_ms! && r.std_ttft_ms! >= 0);
    assert.ok(Math.abs(r.request_throughput - 8 / r.duration) < 1e-9);
    assert.ok(Math.abs(r.output_throughput - 64 / r.duration) < 1e-9);
    assert.ok(Math.abs(r.total_token_throughput - 192 / r.duration) < 1e-9);
    assert.equal(r.request_rate, "inf");
    assert.equal(r.max_concurrency, null);
    assert.ok(!("mean_e2el_ms" in r), "e2el only when asked, as vLLM");
    const text = formatSummary(r);
    assertSummaryShape(text);
    assert.match(text, /\nSuccessful requests: {21}8 {9}\n/);
    assert.match(text, /\nTotal generated tokens: {18}64 {8}\n/);
    assert.match(
      text,
      /\n---------------Time to First Token----------------\nMean TTFT \(ms\): +\d+\.\d\d +\nMedian TTFT \(ms\): +\d+\.\d\d +\nP99 TTFT \(ms\): /,
    );
    assert.match(text, /\n-----Time per Output Token \(excl\. 1st token\)------\nMean TPOT/);
    assert.match(text, /\n---------------Inter-token Latency----------------\nMean ITL/);
    assert.doesNotMatch(text, /Request rate configured|Maximum request concurrency/);
  });

  it("rate 50/s with --max-concurrency 2: never more than 2 in flight, sent on schedule, lengths as sampled", async () => {
    const opts = { numPrompts: 8, randomInputLen: 16, randomOutputLen: 8, randomRangeRatio: 0.5, ignoreEos: true, seed: 3 };
    let maxInFlight = 0;
    const poll = setInterval(() => (maxInFlight = Math.max(maxInFlight, server.engine.numInFlight)), 2);
    let r: BenchResult;
    try {
      r = await runServeBenchmark({ baseUrl: server.url, model: "tiny", requestRate: 50, maxConcurrency: 2, ...opts });
    } finally {
      clearInterval(poll);
    }
    assert.equal(r.completed, 8, r.errors.join("; "));
    assert.ok(maxInFlight >= 1 && maxInFlight <= 2, `at most 2 requests in flight, saw ${maxInFlight}`);
    const sampled = sampleRandomRequests({ numPrompts: 8, inputLen: 16, outputLen: 8, rangeRatio: 0.5, seed: 3 });
    assert.deepEqual(
      r.input_lens,
      sampled.map((s) => s.promptTokenIds.length),
    );
    assert.deepEqual(
      r.output_lens,
      sampled.map((s) => s.outputLen),
    );
    assert.equal(r.total_output_tokens, sum(sampled.map((s) => s.outputLen)));
    assert.ok(new Set(r.output_lens).size > 1, "the range ratio varies the lengths");
    assert.ok(r.duration >= arrivalTimes(8, 50, 1, 3)[7]!, "the last request is not sent before its arrival time");
    r.itls.forEach((itl, i) => assert.ok(itl.length >= 1 && itl.length <= r.output_lens[i]! - 1));
    assert.equal(r.request_rate, 50);
    assert.equal(r.max_concurrency, 2);
    const text = formatSummary(r);
    assertSummaryShape(text);
    assert.match(text, /\nMaximum request concurrency: {13}2 {9}\nRequest rate configured \(RPS\): {11}50\.00 {5}\n/);
  });

  it("chat endpoint: prompts decoded by /detokenize, counted by /tokenize, sent as a user message", async () => {
    const r = await runServeBenchmark({
      baseUrl: server.url,
      endpoint: "/v1/chat/completions",
      numPrompts: 4,
      randomInputLen: 16,
      randomOutputLen: 4,
      ignoreEos: true,
    });
    assert.equal(r.completed, 4, r.errors.join("; "));
    assert.equal(r.total_output_tokens, 16);
    assert.ok(
      r.input_lens.every((n) => n >= 8 && n <= 40),
      `prompt lengths ${r.input_lens}`,
    );
    assert.equal(r.total_input_tokens, sum(r.input_lens));
    assert.ok(r.ttfts.every((t) => t > 0));
    r.itls.forEach((itl) => assert.ok(itl.length <= 3, "the role-only opening chunk is not a token"));
  });

  it("a wrong model: every request fails with the server's message, counted, nothing thrown", async () => {
    const r = await runServeBenchmark({ baseUrl: server.url, model: "nope", numPrompts: 4, randomInputLen: 16, randomOutputLen: 4 });
    assert.equal(r.completed, 0);
    assert.equal(r.failed, 4);
    for (const e of r.errors) assert.match(e, /^HTTP 404: the model "nope" does not exist; this server serves "tiny"/);
    assert.equal(r.total_output_tokens, 0);
    assert.deepEqual(r.output_lens, [0, 0, 0, 0]);
    assert.equal(r.mean_ttft_ms, 0);
    const text = formatSummary(r);
    assertSummaryShape(text);
    assert.match(text, /\nFailed requests: {25}4 {9}\n/);
  });

  it("an unreachable server: without --model it says so; with --model every request fails with the cause", async () => {
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, "127.0.0.1", () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    const baseUrl = `http://127.0.0.1:${port}`;
    await assert.rejects(
      runServeBenchmark({ baseUrl, numPrompts: 2 }),
      /could not reach the server: GET http:\/\/127\.0\.0\.1:\d+\/v1\/models failed: .*ECONNREFUSED/,
    );
    const r = await runServeBenchmark({ baseUrl, model: "tiny", numPrompts: 2 });
    assert.equal(r.failed, 2);
    for (const e of r.errors) assert.match(e, /ECONNREFUSED/);
  });

  it("bad arguments are errors that say what was wrong and what is expected", async () => {
    const base = { baseUrl: server.url, numPrompts: 1 };
    await assert.rejects(
      runServeBenchmark({ ...base, datasetName: "sharegpt" }),
      /--dataset-name "sharegpt" is not supported; this build supports: random/,
    );
    await assert.rejects(
      runServeBenchmark({ ...base, endpoint: "/v1/embeddings" }),
      /--endpoint must be \/v1\/completions or \/v1\/chat\/completions, got "\/v1\/embeddings"/,
    );
    await assert.rejects(
      runServeBenchmark({ ...base, percentileMetrics: "ttft,foo" }),
      /unknown metric "foo"; expected a comma-separated list of ttft, tpot, itl, e2el/,
    );
    await assert.rejects(runServeBenchmark({ ...base, metricPercentiles: "99,abc" }), /"abc" is not a percentile/);
    await assert.rejects(
      runServeBenchmark(base),
      /--random-input-len 1024 and --random-output-len 128 .* up to 1152 tokens, but the model "tiny" has max_model_len 256/,
    );
  });
});

describe("tokamak bench serve (CLI)", () => {
  function program(): { program: Command; out: string[]; err: string[] } {
    const out: string[] = [];
    const err: string[] = [];
    const p = new Command("tokamak").exitOverride().configureOutput({ writeOut: () => {}, writeErr: () => {} });
    registerBenchServe(p, { out: (s) => out.push(s), err: (s) => err.push(s) });
    return { program: p, out, err };
  }

  it("prints vLLM's table and saves the result JSON with vLLM's fields", async () => {
    const dir = join(root, "results");
    const { program: p, out, err } = program();
    const args = ["--num-prompts", "4", "--random-input-len", "16", "--random-output-len", "4", "--ignore-eos", "--disable-tqdm"];
    await p.parseAsync(
      [
        "bench",
        "serve",
        "--base-url",
        server.url,
        ...args,
        "--save-result",
        "--result-dir",
        dir,
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,99.9",
      ],
      { from: "user" },
    );
    const text = out.join("");
    assertSummaryShape(text);
    assert.match(text, /\nSuccessful requests: +4 +\n/);
    for (const m of ["TTFT", "TPOT", "ITL", "E2EL"])
      assert.match(text, new RegExp(`\\nP50 ${m} \\(ms\\): +\\d+\\.\\d\\d +\\nP99\\.9 ${m} \\(ms\\): `));
    assert.match(text, /\n----------------End-to-end Latency----------------\n/);
    assert.match(err.join(""), /Traffic request rate: inf\nBurstiness factor: 1 \(Poisson process\)\nMaximum request concurrency: None\n/);
    const files = readdirSync(dir);
    assert.equal(files.length, 1);
    assert.match(files[0]!, /^tokamak-infqps-tiny-\d{8}-\d{6}\.json$/);
    assert.match(err.join(""), new RegExp(`saved the result to .*${files[0]!.replace(/\./g, "\\.")}`));
    const j = JSON.parse(readFileSync(join(dir, files[0]!), "utf8")) as Record<string, unknown>;
    for (const key of [
      "date",
      "duration",
      "completed",
      "total_input_tokens",
      "total_output_tokens",
      "request_throughput",
      "output_throughput",
      "total_token_throughput",
      "input_lens",
      "output_lens",
      "ttfts",
      "itls",
      "errors",
      "generated_texts",
    ])
      assert.ok(key in j, `the result JSON has "${key}"`);
    for (const m of ["ttft", "tpot", "itl", "e2el"])
      for (const s of ["mean", "median", "std", "p50", "p99.9"]) assert.equal(typeof j[`${s}_${m}_ms`], "number", `${s}_${m}_ms`);
    assert.equal(j.backend, "tokamak");
    assert.equal(j.model_id, "tiny");
    assert.equal(j.num_prompts, 4);
    assert.equal(j.request_rate, "inf");
    assert.equal(j.burstiness, 1);
    assert.equal(j.max_concurrency, null);
    assert.equal(j.completed, 4);
    assert.equal(j.total_output_tokens, 16);
    assert.deepEqual(j.errors, ["", "", "", ""]);
    assert.equal((j.itls as number[][]).length, 4);
  });

  it("--host/--port, --request-rate, --max-concurrency and --result-filename; failures reported, not thrown", async () => {
    const dir = join(root, "results2");
    const { program: p, out, err } = program();
    const port = new URL(server.url).port;
    await p.parseAsync(
      [
        "bench",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "--model",
        "nope",
        "--num-prompts",
        "3",
        "--random-input-len",
        "8",
        "--random-output-len",
        "2",
        "--request-rate",
        "100",
        "--max-concurrency",
        "2",
        "--result-dir",
        dir,
        "--result-filename",
        "run.json",
      ],
      { from: "user" },
    );
    assert.match(out.join(""), /\nFailed requests: +3 +\n/);
    assert.match(
      err.join(""),
      /3 of 3 requests failed \(all of them: check the benchmark's arguments\):\n {2}3 × HTTP 404: the model "nope" does not exist/,
    );
    const j = JSON.parse(readFileSync(join(dir, "run.json"), "utf8")) as BenchResult;
    assert.equal(j.request_rate, 100);
    assert.equal(j.max_concurrency, 2);
    assert.equal(j.failed, 3);
  });

  it("rejects bad flags with what was expected", async () => {
    await assert.rejects(
      program().program.parseAsync(["bench", "serve", "--request-rate", "fast"], { from: "user" }),
      /--request-rate must be a positive number or inf, got "fast"/,
    );
    await assert.rejects(
      program().program.parseAsync(["bench", "serve", "--num-prompts", "0"], { from: "user" }),
      /--num-prompts must be an integer >= 1, got "0"/,
    );
    await assert.rejects(
      program().program.parseAsync(["bench", "serve", "--base-url", server.url, "--port", "1"], { from: "user" }),
      /give either --base-url or --host\/--port, not both/,
    );
    await assert.rejects(
      program().program.parseAsync(["bench", "serve", "--base-url", server.url, "--dataset-name", "sonnet"], { from: "user" }),
      /--dataset-name "sonnet" is not supported; this build supports: random/,
    );
  });
});

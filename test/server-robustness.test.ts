/**
 * The server under abuse: hundreds of generated malformed requests, a storm of
 * clients that disconnect mid-stream, and /metrics checked as Prometheus text
 * against the requests actually made.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { startServer, type RunningServer } from "../src/server/serve.js";
import { writeTinyModel } from "./helpers/tiny-model.js";

const VOCAB = 4096;
const MAX_LEN = 256;
const root = mkdtempSync(join(tmpdir(), "tokamak-robust-"));
const modelDir = join(root, "tiny-llama");
let server: RunningServer;

before(async () => {
  writeTinyModel(modelDir, { arch: "llama", dtype: "bf16", vocabSize: VOCAB, seed: 5 });
  server = await startServer(modelDir, {
    port: 0,
    servedModelName: ["tiny"],
    maxQueueLen: 1000,
    engine: { maxModelLen: MAX_LEN, numBlocks: 96, maxNumSeqs: 16, threads: 1 },
  });
});
after(async () => {
  await server?.shutdown(1000);
  rmSync(root, { recursive: true, force: true });
});

async function post(path: string, body: string): Promise<{ status: number; text: string }> {
  const res = await fetch(`${server.url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body });
  return { status: res.status, text: await res.text() };
}

async function waitIdle(): Promise<void> {
  for (let i = 0; i < 500; i++) {
    const s = await server.engine.stats();
    if (s.numRunning + s.numWaiting === 0 && server.engine.numInFlight === 0) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail("the engine did not become idle");
}

// ---------------------------------------------------------------------------
// Malformed requests: a valid body with exactly one thing wrong.

const notANumber = fc.oneof(
  fc.string(),
  fc.boolean(),
  fc.constant(null).map(() => [] as unknown),
  fc.dictionary(fc.string(), fc.integer()),
);
const notAnInt = fc.oneof(notANumber, fc.double({ noInteger: true, noDefaultInfinity: true, noNaN: true }));
const notABool = fc.oneof(fc.string(), fc.integer(), fc.array(fc.integer()), fc.dictionary(fc.string(), fc.string()));

/** For each field: values that must be rejected. */
const BAD_FIELDS: Record<string, fc.Arbitrary<unknown>> = {
  temperature: fc.oneof(notANumber, fc.double({ max: -0.001, noNaN: true, noDefaultInfinity: true })),
  top_p: fc.oneof(
    notANumber,
    fc.double({ min: 1.0001, max: 1e6, noNaN: true }),
    fc.double({ max: 0, noNaN: true, noDefaultInfinity: true }),
  ),
  top_k: fc.oneof(notAnInt, fc.integer({ max: -2 })),
  min_p: fc.oneof(notANumber, fc.double({ min: 1.0001, max: 1e9, noNaN: true })),
  n: fc.oneof(notAnInt, fc.integer({ max: 0 }), fc.integer({ min: 129 })),
  max_tokens: fc.oneof(notAnInt, fc.integer({ max: 0 }), fc.integer({ min: MAX_LEN + 1 })),
  seed: notAnInt,
  presence_penalty: fc.oneof(notANumber, fc.double({ min: 2.0001, max: 1e9, noNaN: true })),
  frequency_penalty: fc.oneof(notANumber, fc.double({ max: -2.0001, min: -1e9, noNaN: true })),
  repetition_penalty: fc.oneof(notANumber, fc.double({ max: 0, noNaN: true, noDefaultInfinity: true })),
  stop: fc.oneof(fc.integer(), fc.boolean(), fc.array(fc.integer(), { minLength: 1 }), fc.constant([""])),
  stop_token_ids: fc.oneof(fc.string(), fc.array(fc.string(), { minLength: 1 }), fc.array(fc.integer({ max: -1 }), { minLength: 1 })),
  logit_bias: fc.oneof(
    fc.string(),
    fc.array(fc.integer(), { minLength: 1 }),
    fc.constant({ abc: 1 }),
    fc.constant({ "5": "x" }),
    fc.constant({ "5": 1000 }),
  ),
  ignore_eos: notABool,
  stream: notABool,
  min_tokens: fc.oneof(notAnInt, fc.integer({ max: -1 }), fc.integer({ min: MAX_LEN + 10 })),
  model: fc.oneof(fc.integer(), fc.constantFrom("gpt-4o", "", "tiny2")),
  logprobs: fc.oneof(fc.string(), fc.integer({ min: 21 }), fc.integer({ max: -1 })),
};

const completionCase = fc.oneof(
  // one bad field
  fc.constantFrom(...Object.keys(BAD_FIELDS)).chain((field) =>
    BAD_FIELDS[field]!.map((value) => ({
      path: "/v1/completions",
      body: JSON.stringify({ prompt: "hi", max_tokens: 2, [field]: value }),
    })),
  ),
  // a bad prompt: wrong type, empty, token ids out of the vocabulary, far too long
  fc
    .oneof(
      fc.integer(),
      fc.boolean(),
      fc.constant([]),
      fc.constant([[]]),
      fc.array(fc.integer({ min: VOCAB, max: 2 ** 31 - 1 }), { minLength: 1, maxLength: 5 }),
      fc.array(fc.integer({ min: 1, max: 100 }), { minLength: MAX_LEN, maxLength: MAX_LEN + 50 }),
      fc.string({ minLength: 2000, maxLength: 3000 }).map((s) => s.replace(/\s/g, "x") + " word".repeat(400)),
      fc
        .array(fc.oneof(fc.string(), fc.integer()), { minLength: 2, maxLength: 4 })
        .filter((a) => a.some((x) => typeof x === "string") && a.some((x) => typeof x === "number")),
    )
    .map((prompt) => ({ path: "/v1/completions", body: JSON.stringify({ prompt, max_tokens: 2 }) })),
  // not JSON, or JSON that is not an object
  fc
    .string()
    .filter((s) => {
      try {
        const v: unknown = JSON.parse(s);
        return typeof v !== "object" || v === null || Array.isArray(v);
      } catch {
        return true;
      }
    })
    .map((body) => ({ path: "/v1/completions", body })),
);

const chatCase = fc
  .oneof(
    fc.constant({ messages: [] }),
    fc.constant({}),
    fc.record({ messages: fc.oneof(fc.string(), fc.integer(), fc.array(fc.string(), { minLength: 1 })) }),
    fc.record({ messages: fc.constant([{ role: 1, content: "x" }]) }),
    fc.record({ messages: fc.constant([{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }]) }),
    fc.record({ messages: fc.constant([{ role: "user", content: 42 }]) }),
    fc.record({
      messages: fc.constant([{ role: "user", content: "hi" }]),
      top_logprobs: fc.oneof(fc.integer({ min: 21 }), fc.integer({ max: -1 })),
      logprobs: fc.constant(true),
    }),
    fc.record({ messages: fc.constant([{ role: "user", content: "x".repeat(5000) }]) }),
    fc.record({ messages: fc.constant([{ role: "user", content: "hi" }]), stream_options: fc.constant({ include_usage: true }) }),
  )
  .map((b) => ({ path: "/v1/chat/completions", body: JSON.stringify(b) }));

describe("malformed requests", () => {
  it("hundreds of generated bad requests: each gets a 4xx OpenAI-shaped error, and the server keeps serving", async () => {
    let cases = 0;
    await fc.assert(
      fc.asyncProperty(fc.oneof(completionCase, chatCase), async ({ path, body }) => {
        cases++;
        const r = await post(path, body);
        assert.ok(r.status >= 400 && r.status < 500, `${path} ${body.slice(0, 200)} → ${r.status} ${r.text.slice(0, 300)}`);
        const e = (JSON.parse(r.text) as { error: { message: string; type: string; param: unknown; code: unknown } }).error;
        assert.equal(typeof e.message, "string");
        assert.ok(e.message.length > 10, `error message too vague: ${e.message}`);
        assert.equal(typeof e.type, "string");
        assert.ok("param" in e && "code" in e);
        assert.doesNotMatch(e.message, /\n\s+at /);
      }),
      { numRuns: 400, seed: 42 },
    );
    assert.equal(cases, 400);
    const ok = await post("/v1/completions", JSON.stringify({ prompt: [11, 12, 13], max_tokens: 3 }));
    assert.equal(ok.status, 200, ok.text);
    await waitIdle();
  });
});

describe("abort storm", () => {
  it("200 streaming clients disconnecting at random points: afterwards nothing runs and every block is free", async () => {
    const rnd = fc.sample(fc.tuple(fc.integer({ min: -1, max: 12 }), fc.integer({ min: 4, max: 60 }), fc.integer({ min: 0, max: 30 })), {
      numRuns: 200,
      seed: 7,
    });
    const done = rnd.map(
      ([after, prompt, delay]) =>
        new Promise<string>((resolve) => {
          setTimeout(() => {
            let chunks = 0;
            const req = httpRequest(
              `${server.url}/v1/completions`,
              { method: "POST", headers: { "content-type": "application/json" } },
              (res) => {
                if (after < 0) {
                  req.destroy();
                  return resolve("headers");
                }
                res.on("data", () => {
                  if (++chunks > after) {
                    req.destroy();
                    resolve("mid-stream");
                  }
                });
                res.on("end", () => resolve("complete"));
                res.on("error", () => resolve("error"));
              },
            );
            req.on("error", () => resolve("error"));
            const ids = Array.from({ length: prompt }, (_, i) => (i * 97 + prompt) % VOCAB);
            req.end(JSON.stringify({ prompt: ids, max_tokens: 40, ignore_eos: true, stream: true }));
            if (after === -1 && delay % 3 === 0) {
              // some leave before the response even starts
              setTimeout(() => {
                req.destroy();
                resolve("early");
              }, 1);
            }
          }, delay);
        }),
    );
    const outcomes = await Promise.all(done);
    assert.ok(outcomes.filter((o) => o === "mid-stream").length > 100, `most clients should leave mid-stream: ${outcomes.join(",")}`);
    await waitIdle();
    const s = await server.engine.stats();
    assert.equal(s.numRunning, 0);
    assert.equal(s.numWaiting, 0);
    assert.equal(s.numFreeBlocks, s.numBlocks, "every KV block is free again");
    const ok = await post("/v1/completions", JSON.stringify({ prompt: [21, 22], max_tokens: 3 }));
    assert.equal(ok.status, 200);
  });
});

// ---------------------------------------------------------------------------
// Prometheus text: every line well-formed; counters match the requests made.

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parsePrometheus(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    if (line.startsWith("# HELP ")) continue;
    const t = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (t) {
      types.set(t[1]!, t[2]!);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.e+-]+|NaN|\+Inf|-Inf)$/.exec(line);
    assert.ok(m, `not a Prometheus sample line: ${line}`);
    const labels: Record<string, string> = {};
    if (m[3]) {
      for (const part of m[3].match(/[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"/g) ?? []) {
        const eq = part.indexOf("=");
        labels[part.slice(0, eq)] = part.slice(eq + 2, -1);
      }
    }
    samples.push({ name: m[1]!, labels, value: Number(m[4]) });
  }
  return { samples, types };
}

describe("metrics", () => {
  it("/metrics parses as Prometheus text and its counters move exactly with the requests made", async () => {
    await waitIdle();
    const read = async () => parsePrometheus(await (await fetch(`${server.url}/metrics`)).text());
    const value = (p: { samples: Sample[] }, name: string, labels: Record<string, string> = {}) =>
      p.samples
        .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
        .reduce((a, s) => a + s.value, 0);
    const before = await read();
    assert.equal(before.types.get("tokamak:generation_tokens_total"), "counter");
    assert.equal(before.types.get("tokamak:time_to_first_token_seconds"), "histogram");
    assert.equal(before.types.get("tokamak:num_requests_running"), "gauge");
    for (const s of before.samples)
      if (s.name.startsWith("tokamak:")) assert.equal(s.labels.model_name, "tiny", `${s.name} lacks model_name`);
    const prompts = [
      [1, 2, 3, 4, 5],
      [9, 8, 7],
      [100, 200, 300, 400, 500, 600, 700],
    ];
    for (const p of prompts) {
      const r = await post("/v1/completions", JSON.stringify({ prompt: p, max_tokens: 6, ignore_eos: true }));
      assert.equal(r.status, 200);
    }
    const stopped = await post(
      "/v1/completions",
      JSON.stringify({ prompt: [1, 2], max_tokens: 6, min_tokens: 1, stop_token_ids: [...Array(VOCAB).keys()] }),
    );
    assert.equal(JSON.parse(stopped.text).choices[0].finish_reason, "stop");
    const afterP = await read();
    const delta = (name: string, labels: Record<string, string> = {}) => value(afterP, name, labels) - value(before, name, labels);
    assert.equal(delta("tokamak:request_success_total", { finished_reason: "length" }), 3);
    assert.equal(delta("tokamak:request_success_total", { finished_reason: "stop" }), 1);
    assert.equal(delta("tokamak:generation_tokens_total"), 3 * 6 + 1);
    assert.equal(delta("tokamak:prompt_tokens_total"), 5 + 3 + 7 + 2);
    assert.equal(delta("tokamak:time_to_first_token_seconds_count"), 4);
    assert.equal(delta("tokamak:e2e_request_latency_seconds_count"), 4);
    assert.equal(delta("tokamak:inter_token_latency_seconds_count"), 3 * 5);
    assert.equal(delta("tokamak:request_generation_tokens_sum"), 19);
    assert.equal(delta("tokamak:request_prompt_tokens_sum"), 17);
    assert.equal(value(afterP, "tokamak:num_requests_running"), 0);
    const buckets = afterP.samples.filter((s) => s.name === "tokamak:e2e_request_latency_seconds_bucket").map((s) => s.value);
    assert.deepEqual(
      buckets,
      [...buckets].sort((a, b) => a - b),
      "histogram buckets are cumulative",
    );
  });
});

/**
 * The OpenAI-compatible server over real HTTP on loopback, driven by the
 * official `openai` client and the Vercel AI SDK, plus raw requests for the
 * error paths, load shedding, disconnects and metrics.
 */
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateText, streamText } from "ai";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import { startServer, type RunningServer } from "../src/server/serve.js";
import { writeTinyModel } from "./helpers/tiny-model.js";

const root = mkdtempSync(join(tmpdir(), "tokamak-server-"));
const modelDir = join(root, "tiny-qwen3");
const API_KEY = "sk-test-key";
let server: RunningServer;
let client: OpenAI;

before(async () => {
  // The full Qwen3 vocabulary so text round-trips through the real tokenizer and chat template.
  writeTinyModel(modelDir, { arch: "qwen3", dtype: "bf16", hiddenSize: 64, numLayers: 2, tieWordEmbeddings: true, seed: 11 });
  server = await startServer(modelDir, {
    port: 0,
    apiKey: API_KEY,
    servedModelName: ["tiny", "tiny-alias"],
    maxQueueLen: 4,
    engine: { maxModelLen: 256, numBlocks: 128, maxNumSeqs: 4, threads: 1 },
  });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
});
after(async () => {
  await server?.shutdown(1000);
  rmSync(root, { recursive: true, force: true });
});

async function raw(
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: unknown; headers: Headers }> {
  const res = await fetch(`${server.url}${path}`, {
    method: body === undefined ? "GET" : "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json", ...headers },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown = text;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: res.status, json, headers: res.headers };
}

function assertOpenAIError(r: { status: number; json: unknown }, status: number, pattern: RegExp, param?: string): void {
  assert.equal(r.status, status, JSON.stringify(r.json));
  const e = (r.json as { error: { message: string; type: string; param: string | null; code: unknown } }).error;
  assert.ok(e, `expected an OpenAI error body, got ${JSON.stringify(r.json)}`);
  assert.equal(typeof e.type, "string");
  assert.ok("code" in e && "param" in e);
  assert.match(e.message, pattern);
  assert.doesNotMatch(e.message, /\n\s+at /, "no stack traces to clients");
  if (param !== undefined) assert.equal(e.param, param);
}

async function waitIdle(): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const s = await server.engine.stats();
    if (s.numRunning + s.numWaiting === 0 && server.engine.numInFlight === 0) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail("the engine did not become idle");
}

describe("OpenAI API with the openai client", () => {
  it("lists the served models", async () => {
    const models = await client.models.list();
    assert.deepEqual(
      models.data.map((m) => m.id),
      ["tiny", "tiny-alias"],
    );
  });

  it("chat completion: message, finish_reason length, usage", async () => {
    const r = await client.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: "Hello!" }],
      max_tokens: 6,
      temperature: 0,
    });
    assert.equal(r.object, "chat.completion");
    assert.equal(r.model, "tiny");
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0]!.message.role, "assistant");
    assert.equal(typeof r.choices[0]!.message.content, "string");
    assert.equal(r.choices[0]!.finish_reason, "length");
    assert.equal(r.usage!.completion_tokens, 6);
    assert.ok(r.usage!.prompt_tokens > 5);
    assert.equal(r.usage!.total_tokens, r.usage!.prompt_tokens + 6);
  });

  it("chat streaming gives the same text as non-streaming, and usage last when asked", async () => {
    const params = { model: "tiny", messages: [{ role: "user" as const, content: "Count to five." }], max_tokens: 12, temperature: 0 };
    const full = await client.chat.completions.create(params);
    const stream = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
    let text = "";
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | null | undefined;
    let first = true;
    for await (const chunk of stream) {
      assert.equal(chunk.object, "chat.completion.chunk");
      if (chunk.usage) usage = chunk.usage;
      if (chunk.choices.length === 0) continue;
      if (first) assert.equal(chunk.choices[0]!.delta.role, "assistant");
      first = false;
      text += chunk.choices[0]!.delta.content ?? "";
      finish = chunk.choices[0]!.finish_reason ?? finish;
    }
    assert.equal(text, full.choices[0]!.message.content);
    assert.equal(finish, "length");
    assert.deepEqual(usage, full.usage);
  });

  it("completions: text and token-id prompts, several prompts, echo", async () => {
    const r = await client.completions.create({
      model: "tiny-alias",
      prompt: ["Once upon a time", "The sky is"],
      max_tokens: 5,
      temperature: 0,
    });
    assert.equal(r.object, "text_completion");
    assert.deepEqual(
      r.choices.map((c) => c.index),
      [0, 1],
    );
    const ids = await raw("/tokenize", { prompt: "Once upon a time" });
    const tokens = (ids.json as { tokens: number[] }).tokens;
    const byIds = await client.completions.create({ model: "tiny", prompt: tokens, max_tokens: 5, temperature: 0 });
    assert.equal(byIds.choices[0]!.text, r.choices[0]!.text, "a token-id prompt gives what its text gives");
    const echo = await client.completions.create({ model: "tiny", prompt: "Once upon a time", max_tokens: 5, temperature: 0, echo: true });
    assert.equal(echo.choices[0]!.text, "Once upon a time" + r.choices[0]!.text);
    const sky = ((await raw("/tokenize", { prompt: "The sky is" })).json as { tokens: number[] }).tokens;
    assert.equal(r.usage!.prompt_tokens, tokens.length + sky.length, "usage counts every prompt");
  });

  it("completion streaming equals non-streaming", async () => {
    const full = await client.completions.create({ model: "tiny", prompt: "Write a haiku", max_tokens: 10, temperature: 0 });
    const stream = await client.completions.create({
      model: "tiny",
      prompt: "Write a haiku",
      max_tokens: 10,
      temperature: 0,
      stream: true,
    });
    let text = "";
    for await (const c of stream) text += c.choices[0]?.text ?? "";
    assert.equal(text, full.choices[0]!.text);
  });

  it("n with a seed: n different completions, reproducible", async () => {
    const params = {
      model: "tiny",
      messages: [{ role: "user" as const, content: "Tell me a story." }],
      max_tokens: 8,
      temperature: 10,
      n: 3,
      seed: 1234,
    };
    const a = await client.chat.completions.create(params);
    const b = await client.chat.completions.create(params);
    assert.equal(a.choices.length, 3);
    assert.deepEqual(
      a.choices.map((c) => c.index),
      [0, 1, 2],
    );
    assert.deepEqual(
      a.choices.map((c) => c.message.content),
      b.choices.map((c) => c.message.content),
    );
    assert.equal(a.usage!.completion_tokens, 24);
    assert.ok(new Set(a.choices.map((c) => c.message.content)).size > 1, "different completions at temperature 10");
  });

  it("logprobs and top_logprobs in chat and completions", async () => {
    const r = await client.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 4,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
    });
    const content = r.choices[0]!.logprobs!.content!;
    assert.equal(content.length, 4);
    for (const t of content) {
      assert.ok(t.logprob <= 0);
      assert.equal(t.top_logprobs.length, 3);
      assert.equal(t.top_logprobs[0]!.logprob, t.logprob, "greedy picks the top token");
      assert.ok(t.top_logprobs[0]!.logprob >= t.top_logprobs[1]!.logprob);
      assert.deepEqual(t.bytes, [...Buffer.from(t.token, "utf8")]);
    }
    const c = await client.completions.create({ model: "tiny", prompt: "Hi", max_tokens: 3, temperature: 0, logprobs: 2 });
    const lp = c.choices[0]!.logprobs!;
    assert.equal(lp.tokens!.length, 3);
    assert.equal(lp.token_logprobs!.length, 3);
    assert.equal(Object.keys(lp.top_logprobs![0]!).length, 2);
    assert.equal(lp.text_offset![0], 0);
  });

  it("stop strings end the text before them (or with them when asked) and are never streamed", async () => {
    const base = { model: "tiny", prompt: "Once upon a time", max_tokens: 20, temperature: 0 };
    const free = (await client.completions.create(base)).choices[0]!.text;
    assert.ok(free.length >= 4, `need some text to pick a stop string from, got ${JSON.stringify(free)}`);
    const stop = free.slice(2, 4);
    const cut = free.indexOf(stop);
    const r = await client.completions.create({ ...base, stop: [stop] });
    assert.equal(r.choices[0]!.text, free.slice(0, cut));
    assert.equal(r.choices[0]!.finish_reason, "stop");
    const stream = await client.completions.create({ ...base, stop: [stop], stream: true });
    let text = "";
    for await (const c of stream) text += c.choices[0]?.text ?? "";
    assert.equal(text, free.slice(0, cut));
    const withStop = await raw("/v1/completions", { ...base, stop: [stop], include_stop_str_in_output: true });
    assert.equal((withStop.json as { choices: { text: string }[] }).choices[0]!.text, free.slice(0, cut + stop.length));
  });

  it("min_tokens, ignore_eos, stop_token_ids", async () => {
    const r = await client.completions.create({ model: "tiny", prompt: "a", max_tokens: 5, temperature: 0 });
    const ids = (await raw("/tokenize", { prompt: "a" })).json as { tokens: number[] };
    assert.ok(ids.tokens.length >= 1);
    const body = { model: "tiny", prompt: "a", max_tokens: 5, temperature: 0, logprobs: 0 };
    const first = (await raw("/v1/completions", body)).json as { choices: { logprobs: { tokens: string[] } }[] };
    assert.equal(first.choices[0]!.logprobs.tokens.length, 5);
    // Stop on the first generated token's id: finish at once with that token as the stop reason.
    const tokenIds = (await raw("/tokenize", { prompt: r.choices[0]!.text, add_special_tokens: false })).json as { tokens: number[] };
    const stopped = (await raw("/v1/completions", { ...body, stop_token_ids: [tokenIds.tokens[0]] })).json as {
      choices: { finish_reason: string; stop_reason: number }[];
      usage: { completion_tokens: number };
    };
    assert.equal(stopped.choices[0]!.finish_reason, "stop");
    assert.ok(stopped.usage.completion_tokens <= 5);
    const minTok = (await raw("/v1/completions", { ...body, stop_token_ids: [tokenIds.tokens[0]], min_tokens: 5, ignore_eos: true }))
      .json as {
      usage: { completion_tokens: number };
    };
    assert.equal(minTok.usage.completion_tokens, 5);
  });
});

describe("the Vercel AI SDK", () => {
  const provider = () => createOpenAICompatible({ name: "tokamak", baseURL: `${server.url}/v1`, apiKey: API_KEY, includeUsage: true });

  it("generateText", async () => {
    const r = await generateText({ model: provider()("tiny"), prompt: "Say hi", maxOutputTokens: 6, temperature: 0 });
    assert.equal(typeof r.text, "string");
    assert.equal(r.finishReason, "length");
    assert.equal(r.usage.outputTokens, 6);
  });

  it("streamText", async () => {
    const full = await generateText({ model: provider()("tiny"), prompt: "Say hi", maxOutputTokens: 6, temperature: 0 });
    const s = streamText({ model: provider()("tiny"), prompt: "Say hi", maxOutputTokens: 6, temperature: 0 });
    let text = "";
    for await (const part of s.textStream) text += part;
    assert.equal(text, full.text);
    assert.equal((await s.usage).outputTokens, 6);
  });
});

describe("errors in OpenAI's shape", () => {
  it("401 without or with a wrong API key; health stays open, metrics need the key (no --metrics-no-auth here)", async () => {
    assertOpenAIError(await raw("/v1/models", undefined, { authorization: "" }), 401, /API key/);
    assertOpenAIError(await raw("/v1/models", undefined, { authorization: "Bearer nope" }), 401, /API key/);
    assert.equal((await fetch(`${server.url}/health`)).status, 200);
    assert.equal((await fetch(`${server.url}/metrics`)).status, 401);
    assert.equal((await raw("/metrics")).status, 200);
  });

  it("invalid JSON, wrong types, missing fields, out-of-range values", async () => {
    assertOpenAIError(await raw("/v1/chat/completions", "{not json"), 400, /not valid JSON/);
    assertOpenAIError(await raw("/v1/chat/completions", [1, 2]), 400, /JSON object/);
    assertOpenAIError(await raw("/v1/chat/completions", { messages: "hi" }), 400, /messages must be/, "messages");
    assertOpenAIError(
      await raw("/v1/chat/completions", { messages: [{ role: "user", content: "x" }], temperature: "hot" }),
      400,
      /temperature must be a number/,
      "temperature",
    );
    assertOpenAIError(await raw("/v1/completions", { prompt: "x", n: 0 }), 400, /n must be/, "n");
    assertOpenAIError(await raw("/v1/completions", { prompt: "x", n: 1000 }), 400, /n must be/, "n");
    assertOpenAIError(await raw("/v1/completions", { prompt: "x", max_tokens: 0 }), 400, /max_tokens must be at least 1/, "max_tokens");
    assertOpenAIError(await raw("/v1/completions", { prompt: "x", top_p: 1.5 }), 400, /top_p/, "top_p");
    assertOpenAIError(await raw("/v1/completions", { prompt: 42 }), 400, /prompt must be/, "prompt");
    assertOpenAIError(await raw("/v1/completions", { prompt: [1, 2, 999999] }), 400, /999999.*outside the vocabulary/, "prompt");
  });

  it("unknown model: 404 naming the served ones", async () => {
    assertOpenAIError(await raw("/v1/completions", { model: "gpt-4", prompt: "x" }), 404, /"gpt-4" does not exist.*"tiny"/, "model");
  });

  it("prompt longer than the max model length: 400 saying both numbers", async () => {
    const long = Array.from({ length: 300 }, (_, i) => 100 + i);
    assertOpenAIError(await raw("/v1/completions", { prompt: long }), 400, /maximum context length is 256.*300 tokens/);
    assertOpenAIError(
      await raw("/v1/completions", { prompt: long.slice(0, 200), max_tokens: 100 }),
      400,
      /256.*300.*200.*100/,
      "max_tokens",
    );
  });

  it("body over the size limit: 413; unknown route: 404", async () => {
    assertOpenAIError(await raw("/v1/completions", { prompt: "x".repeat(33 * 2 ** 20) }), 413, /larger than the limit/);
    assertOpenAIError(await raw("/v2/whatever"), 404, /no route/);
  });

  it("the server still serves after all of that", async () => {
    const r = await client.completions.create({ model: "tiny", prompt: "ok", max_tokens: 2 });
    assert.equal(r.choices[0]!.finish_reason, "length");
  });
});

describe("load, disconnects and metrics", () => {
  it("a client that disconnects mid-stream aborts its request at once", async () => {
    await waitIdle();
    await new Promise<void>((resolve, reject) => {
      const req = httpRequest(
        `${server.url}/v1/completions`,
        { method: "POST", headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" } },
        (res) => {
          res.once("data", () => {
            req.destroy(); // the client goes away after the first chunk
            resolve();
          });
        },
      );
      req.on("error", () => undefined);
      req.end(JSON.stringify({ model: "tiny", prompt: "long story", max_tokens: 200, stream: true, ignore_eos: true }));
      setTimeout(() => reject(new Error("no first chunk")), 10_000);
    });
    await waitIdle();
    const s = await server.engine.stats();
    assert.equal(s.numFreeBlocks, s.numBlocks, "the aborted request's blocks are free");
  });

  it("beyond max-num-seqs + max-queue-len requests, 429 with Retry-After; the rest complete", async () => {
    await waitIdle();
    const body = { model: "tiny", prompt: "hello", max_tokens: 30, ignore_eos: true };
    const results = await Promise.all(Array.from({ length: 14 }, () => raw("/v1/completions", body)));
    const ok = results.filter((r) => r.status === 200);
    const limited = results.filter((r) => r.status === 429);
    assert.equal(ok.length + limited.length, 14, `unexpected statuses ${results.map((r) => r.status)}`);
    assert.ok(limited.length >= 14 - 8, `capacity is 4 running + 4 queued, got ${ok.length} accepted`);
    assert.ok(ok.length >= 4);
    for (const r of limited) {
      assertOpenAIError(r, 429, /at capacity/);
      assert.equal(r.headers.get("retry-after"), "1");
    }
  });

  it("metrics: vLLM's names under tokamak:, labelled with the model name, moving with traffic", async () => {
    const text = (await raw("/metrics")).json as string;
    for (const name of [
      "tokamak:num_requests_running",
      "tokamak:num_requests_waiting",
      "tokamak:kv_cache_usage_perc",
      "tokamak:prefix_cache_queries_total",
      "tokamak:prefix_cache_hits_total",
      "tokamak:num_preemptions_total",
      "tokamak:prompt_tokens_total",
      "tokamak:generation_tokens_total",
      "tokamak:request_success_total",
      "tokamak:time_to_first_token_seconds_bucket",
      "tokamak:inter_token_latency_seconds_bucket",
      "tokamak:e2e_request_latency_seconds_bucket",
      "tokamak:request_queue_time_seconds_bucket",
      "tokamak:request_prompt_tokens_bucket",
      "tokamak:request_generation_tokens_bucket",
    ]) {
      assert.match(text, new RegExp(`^${name}\\{[^}]*model_name="tiny"`, "m"), `${name} missing`);
    }
    const value = (re: RegExp) => Number(re.exec(text)?.[1] ?? NaN);
    assert.ok(value(/^tokamak:generation_tokens_total\{model_name="tiny"\} (\d+)/m) > 50);
    assert.ok(value(/^tokamak:request_success_total\{model_name="tiny",finished_reason="length"\} (\d+)/m) >= 10);
    assert.ok(value(/^tokamak:time_to_first_token_seconds_count\{model_name="tiny"\} (\d+)/m) >= 10);
  });

  it("tokenize and detokenize round-trip; health and version", async () => {
    const t = (await raw("/tokenize", { prompt: "Hello world" })).json as { tokens: number[]; count: number; max_model_len: number };
    assert.equal(t.count, t.tokens.length);
    assert.equal(t.max_model_len, 256);
    const d = (await raw("/detokenize", { tokens: t.tokens })).json as { prompt: string };
    assert.equal(d.prompt, "Hello world");
    const chat = (await raw("/tokenize", { messages: [{ role: "user", content: "hi" }] })).json as { tokens: number[] };
    assert.ok(chat.tokens.length > t.tokens.length, "the chat template adds its markup");
    assert.match(((await raw("/version")).json as { version: string }).version, /^\d+\.\d+\.\d+/);
  });
});

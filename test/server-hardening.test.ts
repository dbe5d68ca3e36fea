/**
 * The server as a hostile client sees it: the API key cannot be bypassed by
 * how a path is spelled, bad input of every kind is a 4xx naming the field,
 * slow and oversized clients cannot hold the server, queued work is bounded
 * in sequences, and the gauges go idle when aborted clients leave.
 */
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { startServer, type RunningServer } from "../src/server/serve.js";
import { Tokenizer } from "../src/tokenizer/tokenizer.js";
import { writeTinyModel } from "./helpers/tiny-model.js";

const KEY = "sk-hardening-0123456789";
const MAX_LEN = 512;
const root = mkdtempSync(join(tmpdir(), "tokamak-hardening-"));
const modelDir = join(root, "tiny-qwen3");
let server: RunningServer;
let port: number;

before(async () => {
  writeTinyModel(modelDir, { arch: "qwen3", dtype: "bf16", hiddenSize: 64, numLayers: 1, tieWordEmbeddings: true, seed: 3 });
  server = await startServer(modelDir, {
    port: 0,
    apiKey: KEY,
    servedModelName: ["tiny"],
    maxQueueLen: 4,
    requestTimeout: 2,
    headersTimeout: 1,
    engine: { maxModelLen: MAX_LEN, numBlocks: 256, maxNumSeqs: 4, threads: 1 },
  });
  port = Number(new URL(server.url).port);
});
after(async () => {
  await server?.shutdown(1000);
  rmSync(root, { recursive: true, force: true });
});

interface RawResponse {
  status: number;
  headers: string;
  body: string;
}

/** The request head, CRLF-terminated, ready to write. */
function httpHead(method: string, target: string, headers: Record<string, string | number> = {}): string {
  const lines = [`${method} ${target} HTTP/1.1`, "Host: 127.0.0.1", "Connection: close"];
  for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
  return lines.join("\r\n") + "\r\n\r\n";
}

/** One request written byte for byte on a fresh connection (the request target exactly as given), read to the end. */
function rawRequest(head: string, body: Buffer | string = "", target = port): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const sock = connect(target, "127.0.0.1");
    const chunks: Buffer[] = [];
    sock.on("data", (d: Buffer) => chunks.push(d));
    sock.on("error", reject);
    sock.on("close", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      const [headers = "", ...rest] = text.split("\r\n\r\n");
      resolve({ status: Number(/^HTTP\/1\.1 (\d+)/.exec(headers)?.[1] ?? 0), headers, body: rest.join("\r\n\r\n") });
    });
    // No half-close: Node takes a client's FIN as the client leaving. "Connection: close" ends the exchange.
    sock.write(head);
    sock.write(body);
  });
}

async function call(
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: unknown; text: string }> {
  const res = await fetch(`${server.url}${path}`, {
    method: body === undefined ? "GET" : "POST",
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json", ...headers },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown = undefined;
  try {
    json = JSON.parse(text);
  } catch {
    // SSE or plain text
  }
  return { status: res.status, json, text };
}

function assertError(r: { status: number; json?: unknown; text?: string }, status: number, pattern: RegExp, param?: string): void {
  assert.equal(r.status, status, r.text ?? JSON.stringify(r.json));
  const json = r.json ?? JSON.parse(r.text!);
  const e = (json as { error?: { message: string; type: string; param: string | null; code: unknown } }).error;
  assert.ok(
    e && typeof e.message === "string" && typeof e.type === "string" && "param" in e && "code" in e,
    `OpenAI error shape: ${r.text}`,
  );
  assert.match(e.message, pattern);
  assert.doesNotMatch(e.message, /\n\s+at |\.js:\d+/, "no stack trace");
  if (param !== undefined) assert.equal(e.param, param);
}

async function responseOf(res: Promise<Response>): Promise<{ status: number; json: unknown; text: string }> {
  const r = await res;
  const text = await r.text();
  return { status: r.status, json: undefined, text };
}

const chat = (extra: Record<string, unknown> = {}) => ({ messages: [{ role: "user", content: "hi" }], max_tokens: 2, ...extra });

async function assertStillServing(): Promise<void> {
  const r = await call("/v1/completions", { prompt: "still there?", max_tokens: 2 });
  assert.equal(r.status, 200, r.text);
}

describe("the API key", () => {
  const completion = JSON.stringify({ prompt: "hello", max_tokens: 2 });
  const spellings = [
    ["POST", "/%76%31/completions"],
    ["GET", "/%76%31/models"],
    ["GET", "/v%31/models"],
    ["GET", "/%76%31/admin/memory"],
    ["GET", "http://127.0.0.1/v1/models"],
    ["POST", "http://127.0.0.1/v1/completions"],
    ["GET", "/v1//models"],
    ["GET", "/V1/models"],
  ] as const;

  it("percent-encoded and absolute-form request targets are refused without the key", async () => {
    for (const [method, target] of spellings) {
      const body = method === "POST" ? completion : "";
      const headers: Record<string, string | number> =
        method === "POST" ? { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) } : {};
      const r = await rawRequest(httpHead(method, target, headers), body);
      assert.ok(r.status === 401 || r.status === 404, `${method} ${target} without a key: ${r.status} ${r.body}`);
      assert.doesNotMatch(r.body, /"choices"|"object":"list"|"memory"/, `${method} ${target} leaked data`);
    }
  });

  it("the same spellings work with the key (they are the same routes)", async () => {
    for (const target of ["/%76%31/models", "/v%31/models", "http://127.0.0.1/v1/models"]) {
      const r = await rawRequest(httpHead("GET", target, { Authorization: `Bearer ${KEY}` }));
      assert.equal(r.status, 200, `${target}: ${r.body}`);
    }
    const c = await rawRequest(
      httpHead("POST", "/%76%31/completions", {
        Authorization: `Bearer ${KEY}`,
        "Content-Type": "application/json",
        "Content-Length": Buffer.byteLength(completion),
      }),
      completion,
    );
    assert.equal(c.status, 200, c.body);
  });

  it("protects every route that touches the model or reveals state; /health, /version and the dashboard page stay open", async () => {
    const protectedRoutes: [string, string, unknown?][] = [
      ["GET", "/v1/models"],
      ["POST", "/v1/completions", { prompt: "x", max_tokens: 1 }],
      ["POST", "/v1/chat/completions", chat()],
      ["POST", "/tokenize", { prompt: "x" }],
      ["POST", "/detokenize", { tokens: [1, 2] }],
      ["GET", "/v1/admin/memory"],
      ["GET", "/dashboard/events"],
      ["GET", "/metrics"],
      ["GET", "/no/such/route"], // unknown paths too: nothing about the server is told without the key
    ];
    for (const [method, path, body] of protectedRoutes) {
      const res = await fetch(`${server.url}${path}`, {
        method,
        headers: { "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      assertError({ status: res.status, text: await res.text() }, 401, /API key/);
    }
    for (const path of ["/health", "/version", "/dashboard"]) assert.equal((await fetch(`${server.url}${path}`)).status, 200, path);
  });

  it("a wrong, padded or differently spaced key is refused; the scheme is case-insensitive", async () => {
    for (const auth of [
      `Bearer ${KEY}x`,
      `Bearer ${KEY.slice(0, -1)}`,
      `Bearer  ${KEY}`,
      `Basic ${KEY}`,
      KEY,
      `Bearer ${KEY}\u00a0`,
      "Bearer",
    ]) {
      assertError(await call("/v1/models", undefined, { authorization: auth }), 401, /API key/);
    }
    assert.equal((await call("/v1/models", undefined, { authorization: `bearer ${KEY}` })).status, 200);
  });

  it("a configured key with surrounding whitespace is refused at start-up (HTTP would strip it from every header)", async () => {
    await assert.rejects(startServer(modelDir, { port: 0, apiKey: `${KEY} `, stubModel: true }), /--api-key: .*whitespace/);
    await assert.rejects(startServer(modelDir, { port: 0, apiKey: "", stubModel: true }), /--api-key: .*empty/);
  });

  it("/metrics is open with --metrics-no-auth, and only /metrics", async () => {
    const s = await startServer(modelDir, { port: 0, apiKey: KEY, metricsNoAuth: true, stubModel: true, engine: { maxModelLen: 64 } });
    try {
      assert.equal((await fetch(`${s.url}/metrics`)).status, 200);
      assert.equal((await fetch(`${s.url}/v1/models`)).status, 401);
    } finally {
      await s.shutdown(500);
    }
  });

  it("no filesystem path in responses: /v1/models shows the served name, chat-template failures name the model", async () => {
    const models = await call("/v1/models");
    assert.doesNotMatch(models.text, new RegExp(root.replaceAll("/", "\\/")));
    assert.equal((models.json as { data: { root: string }[] }).data[0]!.root, "tiny");
    const broken = join(root, "broken-template");
    cpSync(modelDir, broken, { recursive: true });
    const cfgPath = join(broken, "tokenizer_config.json");
    const cfg = JSON.parse(readFileSync(cfgPath, "utf8")) as Record<string, unknown>;
    cfg.chat_template = "{{ messages[0].content.no_such_method() }}";
    writeFileSync(cfgPath, JSON.stringify(cfg));
    const s = await startServer(broken, { port: 0, servedModelName: ["broken"], stubModel: true, engine: { maxModelLen: 64 } });
    try {
      const res = await fetch(`${s.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(chat()),
      });
      const text = await res.text();
      assertError({ status: res.status, text }, 400, /chat template of "broken"/, "messages");
      assert.doesNotMatch(text, /tokenizer_config|\/tmp\//);
    } finally {
      await s.shutdown(500);
    }
  });
});

describe("hostile bodies", () => {
  it("JSON nested thousands of levels deep in any field is a 400, not a 500", async () => {
    const deep = (n: number) => "[".repeat(n) + "]".repeat(n);
    for (const field of ["temperature", "stop", "logit_bias", "messages"]) {
      const body = `{"messages":[{"role":"user","content":"x"}],"${field}":${deep(4100)}}`;
      assertError(await call("/v1/chat/completions", body), 400, /nests .* more than 64 levels/, "body");
    }
    const inContent = `{"messages":[{"role":"user","content":${deep(5000)}}]}`;
    assertError(await call("/v1/chat/completions", inContent), 400, /nests/);
    // Below the limit, a deep value in a wrong place is still a plain 400 naming the field.
    assertError(
      await call("/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"temperature":${deep(60)}}`),
      400,
      /temperature/,
      "temperature",
    );
    await assertStillServing();
  });

  it("a prompt far beyond the context is refused before any tokenizing, naming both sizes", async () => {
    const limit = MAX_LEN * Tokenizer.fromDir(modelDir).maxTokenChars;
    const huge = "lorem ipsum ".repeat(Math.ceil((limit + 10) / 12));
    assertError(await call("/v1/completions", { prompt: huge }), 400, new RegExp(`${huge.length} characters.*${MAX_LEN} tokens`), "prompt");
    assertError(await call("/tokenize", { prompt: huge }), 400, /characters/, "prompt");
    assertError(await call("/v1/chat/completions", { messages: [{ role: "user", content: huge }] }), 400, /characters/, "messages");
    assertError(await call("/v1/completions", { prompt: ["short", huge] }), 400, /characters/, "prompt[1]");
    // The bound is per prompt: a batch whose prompts each fit is served, however large in all (tokenized off-thread here).
    const batch = Array.from({ length: 8 }, (_, i) => `${i}${" information".repeat(350)}`); // 4,200 characters, about 350 tokens each
    const r = await call("/v1/completions", { prompt: batch, max_tokens: 1 });
    assert.equal(r.status, 200, r.text);
    assert.equal((r.json as { choices: unknown[] }).choices.length, 8);
  });

  it("large inputs are tokenized off the event loop, to the same ids; other clients are answered meanwhile", async () => {
    const s = await startServer(modelDir, { port: 0, stubModel: true, engine: { maxModelLen: 40960 } });
    try {
      const text = Array.from({ length: 60_000 }, (_, i) => `word${i % 977} `).join("");
      const expected = Tokenizer.fromDir(modelDir).encode(text);
      const big = fetch(`${s.url}/tokenize`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: text }),
      }).then((r) => r.json() as Promise<{ tokens: number[] }>);
      await new Promise((r) => setTimeout(r, 30));
      const health = fetch(`${s.url}/health`).then((r) => r.status);
      const first = await Promise.race([big.then(() => "tokenize"), health.then(() => "health")]);
      assert.equal(first, "health", "/health is answered while the large prompt is being tokenized");
      assert.equal(await health, 200);
      const got = await big;
      assert.deepEqual(got.tokens, expected);
      const chatText = (await (
        await fetch(`${s.url}/tokenize`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ messages: [{ role: "user", content: text }] }),
        })
      ).json()) as { tokens: number[] };
      assert.ok(chatText.tokens.length > expected.length);
    } finally {
      await s.shutdown(500);
    }
  });

  it("a client that leaves while its large prompt is tokenized leaves no generation behind", { timeout: 60_000 }, async () => {
    const s = await startServer(modelDir, { port: 0, stubModel: true, engine: { maxModelLen: 40960 } });
    try {
      const p = Number(new URL(s.url).port);
      const body = JSON.stringify({ prompt: "word ".repeat(8_000), ignore_eos: true, stream: true });
      for (let i = 0; i < 3; i++) {
        const sock = connect(p, "127.0.0.1");
        sock.on("error", () => undefined);
        sock.write(httpHead("POST", "/v1/completions", { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) }));
        sock.write(body);
        await new Promise((r) => setTimeout(r, 50)); // the body is in; its prompt is on the tokenizer thread
        sock.destroy();
      }
      await new Promise((r) => setTimeout(r, 1000)); // long enough for the prompts to be tokenized and launched
      let st = await s.engine.stats();
      for (let i = 0; i < 250 && st.numRunning + st.numWaiting > 0; i++) {
        await new Promise((r) => setTimeout(r, 30));
        st = await s.engine.stats();
      }
      assert.equal(st.numRunning + st.numWaiting, 0, "an abandoned request is still generating");
      await new Promise((r) => setTimeout(r, 300));
      assert.equal((await s.engine.stats()).generationTokens, st.generationTokens, "nothing generates for nobody");
      assert.equal(s.engine.numInFlight, 0);
    } finally {
      await s.shutdown(500);
    }
  });

  it("a 50 MB body gets its 413 even from a client that writes everything before reading", async () => {
    const body = Buffer.alloc(50 * 2 ** 20, 0x20);
    for (let i = 0; i < 3; i++) {
      const head = httpHead("POST", "/v1/completions", {
        Authorization: `Bearer ${KEY}`,
        "Content-Type": "application/json",
        "Content-Length": body.length,
      });
      const r = await rawRequest(head, body);
      assert.equal(r.status, 413, `try ${i}: ${r.headers}`);
      assert.match(r.body, /larger than the limit/);
    }
    // The same for any answer given before the body is read: here a 401 for a missing key.
    const noKey = httpHead("POST", "/v1/completions", { "Content-Type": "application/json", "Content-Length": body.length });
    for (let i = 0; i < 2; i++) assert.equal((await rawRequest(noKey, body)).status, 401);
    await assertStillServing();
  });

  it("a streaming request that is invalid is a 400 before the stream starts, not an SSE error", async () => {
    for (const [path, body] of [
      ["/v1/completions", { prompt: "", stream: true }],
      ["/v1/completions", { prompt: [], stream: true }],
      ["/v1/completions", { prompt: ["ok", ""], stream: true }],
      ["/v1/chat/completions", { ...chat(), stream: true, max_tokens: MAX_LEN * 2 }],
      ["/v1/chat/completions", { ...chat(), stream: true, logit_bias: { "999999999": 1 } }],
    ] as const) {
      const r = await call(path, body);
      assert.equal(r.status, 400, `${path} ${JSON.stringify(body).slice(0, 80)}: ${r.text.slice(0, 200)}`);
      assertError(r, 400, /./);
    }
  });
});

describe("validation: what is not supported is refused, never ignored", () => {
  const cases: [string, string, unknown, RegExp][] = [
    ["/v1/chat/completions", "messages[0].role", { messages: [{ role: "wizard", content: "x" }] }, /role must be one of/],
    ["/v1/chat/completions", "messages[0].role", { messages: [{ role: "", content: "x" }] }, /role must be one of/],
    [
      "/v1/chat/completions",
      "messages[1].role",
      {
        messages: [
          { role: "user", content: "x" },
          { role: "System", content: "x" },
        ],
      },
      /role/,
    ],
    ["/tokenize", "messages[0].role", { messages: [{ role: "hacker", content: "x" }] }, /role must be one of/],
    [
      "/v1/chat/completions",
      "messages[0].tool_calls",
      { messages: [{ role: "assistant", content: "", tool_calls: "call it" }] },
      /tool_calls must be/,
    ],
    [
      "/v1/chat/completions",
      "messages[0].tool_calls[0]",
      { messages: [{ role: "assistant", content: "", tool_calls: [{ type: "function", function: { arguments: "{}" } }] }] },
      /must be \{"id"/,
    ],
    [
      "/v1/chat/completions",
      "messages[0].tool_calls",
      { messages: [{ role: "user", content: "x", tool_calls: [] }] },
      /assistant messages only/,
    ],
    ["/v1/chat/completions", "tools", chat({ tools: { type: "function" } }), /tools must be a list/],
    ["/v1/chat/completions", "tools[0]", chat({ tools: [{ type: "retrieval" }] }), /must be \{"type": "function"/],
    [
      "/v1/chat/completions",
      "tools[0].function.name",
      chat({ tools: [{ type: "function", function: { parameters: {} } }] }),
      /name must be/,
    ],
    [
      "/v1/chat/completions",
      "tools[0].function.parameters",
      chat({ tools: [{ type: "function", function: { name: "f", parameters: "x" } }] }),
      /JSON Schema object/,
    ],
    [
      "/v1/chat/completions",
      "tools",
      chat({ tools: [{ type: "function", function: { name: "get_weather", parameters: { type: "object" } } }] }),
      /not supported by this server yet/,
    ],
    ["/v1/chat/completions", "tool_choice", chat({ tool_choice: "sometimes" }), /tool_choice must be/],
    ["/v1/chat/completions", "tool_choice", chat({ tool_choice: { type: "function", function: { name: "nope" } } }), /not among the tools/],
    ["/v1/chat/completions", "tool_choice", chat({ tool_choice: "required" }), /needs tools/],
    ["/v1/chat/completions", "functions", chat({ functions: "f" }), /functions must be a list/],
    ["/v1/chat/completions", "functions", chat({ functions: [{ name: "f" }] }), /not supported/],
    ["/v1/chat/completions", "parallel_tool_calls", chat({ parallel_tool_calls: "yes" }), /must be a boolean/],
    ["/v1/chat/completions", "response_format", chat({ response_format: { type: "json_object" } }), /structured output.*not supported/],
    [
      "/v1/chat/completions",
      "response_format",
      chat({ response_format: { type: "json_schema", json_schema: { name: "x", schema: {} } } }),
      /not supported/,
    ],
    ["/v1/chat/completions", "response_format", chat({ response_format: { type: "yaml" } }), /response_format must be/],
    ["/v1/chat/completions", "response_format", chat({ response_format: "json" }), /response_format must be/],
    ["/v1/completions", "response_format", { prompt: "x", response_format: { type: "json_object" } }, /not supported/],
    ["/v1/completions", "guided_json", { prompt: "x", guided_json: { type: "object" } }, /not supported/],
    ["/v1/chat/completions", "guided_regex", chat({ guided_regex: "a+" }), /not supported/],
    ["/v1/chat/completions", "structured_outputs", chat({ structured_outputs: { choice: ["a"] } }), /not supported/],
    ["/v1/completions", "seed", { prompt: "x", seed: 2 ** 70 }, /seed must be an integer in \[-2\^63, 2\^64\)/],
    ["/v1/completions", "seed", { prompt: "x", seed: -(2 ** 64) }, /seed must be/],
    ["/v1/completions", "logit_bias", { prompt: "x", logit_bias: { "999999999": 5 } }, /outside the vocabulary/],
    ["/v1/chat/completions", "logit_bias", chat({ logit_bias: { "151669": 5 } }), /outside the vocabulary/],
    [
      "/v1/chat/completions",
      "chat_template_kwargs",
      chat({ chat_template_kwargs: { tools: [{ type: "function" }] } }),
      /may not set "tools"/,
    ],
    ["/v1/chat/completions", "chat_template_kwargs", chat({ chat_template_kwargs: { bos_token: "x" } }), /may not set "bos_token"/],
    ["/v1/completions", "tools", { prompt: "x", tools: [] }, /belongs to \/v1\/chat\/completions/],
    ["/detokenize", "tokens", { tokens: Array.from({ length: 4 * MAX_LEN + 1 }, () => 1) }, /at most 2048/],
  ];

  it("each is a 400 naming the field and what is accepted", async () => {
    for (const [path, param, body, pattern] of cases) {
      const r = await call(path, body);
      assert.equal(r.status, 400, `${path} ${param}: ${r.text}`);
      assertError(r, 400, pattern, param);
    }
  });

  it("what is valid still passes: every OpenAI role, earlier tool calls, response_format text, 64-bit seeds, tool_choice none", async () => {
    const ok = [
      chat({
        messages: [
          { role: "developer", content: "be brief" },
          { role: "user", content: "hi" },
        ],
      }),
      chat({
        messages: [
          { role: "system", content: "s" },
          { role: "user", content: "weather?" },
          {
            role: "assistant",
            content: "",
            tool_calls: [{ id: "c1", type: "function", function: { name: "w", arguments: '{"city":"Oslo"}' } }],
          },
          { role: "tool", content: "sunny", tool_call_id: "c1" },
        ],
      }),
      chat({ response_format: { type: "text" }, parallel_tool_calls: false, tools: [], tool_choice: "none" }),
      chat({ seed: 2 ** 63 }),
      chat({ seed: -(2 ** 63) }),
    ];
    for (const body of ok) {
      const r = await call("/v1/chat/completions", body);
      assert.equal(r.status, 200, r.text);
    }
  });

  it("seeds differ in all their bits: 0 and 2^32 give different samples, each reproducible", async () => {
    const text = async (seed: number) =>
      ((await call("/v1/completions", { prompt: "seeded", max_tokens: 12, temperature: 50, seed })).json as { choices: { text: string }[] })
        .choices[0]!.text;
    const [a, b, a2] = [await text(0), await text(2 ** 32), await text(0)];
    assert.equal(a, a2);
    assert.notEqual(a, b);
  });

  it("everything a chat template renders counts toward the size bound, not only content", async () => {
    const limit = MAX_LEN * Tokenizer.fromDir(modelDir).maxTokenChars;
    const args = "word ".repeat(Math.ceil(limit / 5) + 1);
    const messages = [
      { role: "user", content: "hi" },
      { role: "assistant", content: "", tool_calls: [{ id: "a", type: "function", function: { name: "f", arguments: args } }] },
      { role: "user", content: "ok" },
    ];
    assertError(await call("/tokenize", { messages }), 400, /characters/, "messages");
    assertError(
      await call("/v1/chat/completions", { messages: [{ role: "assistant", content: "x", reasoning_content: args }] }),
      400,
      /characters/,
    );
  });

  it("fuzz: random JSON in every field is never a 5xx, every 4xx is OpenAI-shaped, no stack trace leaks", async () => {
    const fields = [
      "model",
      "messages",
      "prompt",
      "max_tokens",
      "max_completion_tokens",
      "temperature",
      "top_p",
      "top_k",
      "min_p",
      "n",
      "seed",
      "stop",
      "stop_token_ids",
      "logit_bias",
      "logprobs",
      "top_logprobs",
      "presence_penalty",
      "frequency_penalty",
      "repetition_penalty",
      "stream_options",
      "tools",
      "tool_choice",
      "functions",
      "parallel_tool_calls",
      "response_format",
      "echo",
      "ignore_eos",
      "min_tokens",
      "skip_special_tokens",
      "chat_template_kwargs",
      "add_generation_prompt",
      "continue_final_message",
      "user",
      "suffix",
      "best_of",
      "guided_json",
      "include_stop_str_in_output",
    ];
    const value = fc.jsonValue({ maxDepth: 4 });
    const request = fc.record({
      path: fc.constantFrom("/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"),
      fields: fc.dictionary(fc.constantFrom(...fields), value, { maxKeys: 3 }),
      base: fc.boolean(),
    });
    await fc.assert(
      fc.asyncProperty(request, async ({ path, fields: f, base }) => {
        const valid =
          path === "/v1/completions"
            ? { prompt: "fuzz", max_tokens: 1 }
            : path === "/detokenize"
              ? { tokens: [1] }
              : chat({ max_tokens: 1 });
        const body = base ? { ...valid, ...f } : f;
        const r = await call(path, body);
        assert.ok(r.status < 500, `${r.status} for ${JSON.stringify(body).slice(0, 300)}: ${r.text.slice(0, 300)}`);
        if (r.status >= 400) assertError(r, r.status, /./);
      }),
      { numRuns: 300, seed: 20261201 },
    );
    await assertStillServing();
  });
});

describe("slow clients and connection limits", () => {
  it(
    "connections that send their body a byte at a time are cut at the request timeout; others are served meanwhile",
    { timeout: 60_000 },
    async () => {
      const slow: Socket[] = [];
      const closed: Promise<string>[] = [];
      for (let i = 0; i < 300; i++) {
        const sock = connect(port, "127.0.0.1");
        slow.push(sock);
        let got = "";
        sock.on("data", (d: Buffer) => (got += d.toString()));
        closed.push(new Promise((resolve) => sock.on("close", () => resolve(got))));
        sock.on("error", () => undefined);
        sock.write(
          httpHead("POST", "/v1/completions", {
            Authorization: `Bearer ${KEY}`,
            "Content-Type": "application/json",
            "Content-Length": 100,
          }),
        );
      }
      const drip = setInterval(() => {
        for (const s of slow) if (!s.destroyed) s.write(" ");
      }, 200);
      try {
        for (let i = 0; i < 3; i++) await assertStillServing();
        const answers = await Promise.all(closed);
        assert.equal(answers.length, 300);
        for (const a of answers) assert.ok(a === "" || /^HTTP\/1\.1 408/.test(a), `a slow client got ${a.slice(0, 80)}`);
      } finally {
        clearInterval(drip);
        for (const s of slow) s.destroy();
      }
      await assertStillServing();
    },
  );

  it("headers that never finish are cut too", { timeout: 30_000 }, async () => {
    const sock = connect(port, "127.0.0.1");
    sock.on("error", () => undefined);
    sock.write("GET /health HTTP/1.1\r\nHost: x\r\n");
    const drip = setInterval(() => sock.write("X-Slow: 1\r\n"), 200);
    await new Promise((resolve) => sock.on("close", resolve));
    clearInterval(drip);
  });

  it("connections beyond --max-connections are refused at once; the server serves again when they go", async () => {
    const s = await startServer(modelDir, { port: 0, stubModel: true, maxConnections: 8, engine: { maxModelLen: 64 } });
    const p = Number(new URL(s.url).port);
    const socks: Socket[] = [];
    try {
      const closedEarly: Promise<boolean>[] = [];
      for (let i = 0; i < 12; i++) {
        const sock = connect(p, "127.0.0.1");
        sock.on("error", () => undefined);
        socks.push(sock);
        closedEarly.push(
          new Promise((resolve) => {
            sock.on("close", () => resolve(true));
            setTimeout(() => resolve(false), 5000); // the kernel accepts, Node closes at once; generous for a loaded machine
          }),
        );
        await new Promise((r) => sock.once("connect", r));
      }
      const cut = (await Promise.all(closedEarly)).filter(Boolean).length;
      assert.equal(cut, 4, "the four connections past the cap were closed");
    } finally {
      for (const sock of socks) sock.destroy();
    }
    await new Promise((r) => setTimeout(r, 50));
    assert.equal((await fetch(`${s.url}/health`)).status, 200);
    await s.shutdown(500);
  });
});

describe("load accounting", () => {
  // Streams of 16,000 tokens: still running when we look, however fast the machine (they are aborted after).
  let slow: RunningServer;
  const post = (path: string, body: unknown, signal?: AbortSignal) =>
    fetch(`${slow.url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal });
  before(async () => {
    const dir = join(root, "long-llama");
    writeTinyModel(dir, { arch: "llama", dtype: "bf16", vocabSize: 4096, maxPositionEmbeddings: 16384, seed: 9 });
    slow = await startServer(dir, {
      port: 0,
      maxQueueLen: 4,
      engine: { maxModelLen: 16384, numBlocks: 8 * 1024 + 64, maxNumSeqs: 4, threads: 1 },
    });
  });
  after(() => slow?.shutdown(500));

  it("--max-queue-len bounds sequences, not requests: n counts", async () => {
    // max-num-seqs 4 + max-queue-len 4: 8 sequences at most.
    assertError(await responseOf(post("/v1/completions", { prompt: [5], n: 9, max_tokens: 1 })), 400, /9 sequences.*\(8:/, "n");
    assertError(await responseOf(post("/v1/completions", { prompt: [[5], [6], [7]], n: 3, max_tokens: 1 })), 400, /9 sequences/, "n");
    const ac = new AbortController();
    const long = { prompt: [1, 2, 3], n: 4, max_tokens: 16000, ignore_eos: true, stream: true };
    const a = await post("/v1/completions", long, ac.signal);
    const b = await post("/v1/completions", long, ac.signal);
    try {
      assert.equal(a.status, 200);
      assert.equal(b.status, 200);
      // 8 sequences in flight: one more is one too many.
      assertError(await responseOf(post("/v1/completions", { prompt: [5], max_tokens: 1 })), 429, /8 sequences in flight, limit 8/);
    } finally {
      ac.abort();
      await Promise.allSettled([a.body?.cancel(), b.body?.cancel()]);
    }
  });

  it("after a storm of disconnects the gauges show idle without another request", async () => {
    const streams: AbortController[] = [];
    const ready: Promise<void>[] = [];
    for (let i = 0; i < 8; i++) {
      const ac = new AbortController();
      streams.push(ac);
      ready.push(
        (async () => {
          const res = await post("/v1/completions", { prompt: [10 + i, 11], max_tokens: 16000, ignore_eos: true, stream: true }, ac.signal);
          assert.equal(res.status, 200); // admitted: four run, four wait for a slot
        })(),
      );
    }
    await Promise.all(ready);
    const metrics = async () => (await fetch(`${slow.url}/metrics`)).text();
    const gauge = (text: string, name: string) =>
      Number(new RegExp(`^tokamak:${name}\\{[^}]*\\} ([0-9.e+-]+)`, "m").exec(text)?.[1] ?? NaN);
    let busy = 0;
    for (let i = 0; i < 200 && busy < 4; i++) {
      busy = gauge(await metrics(), "num_requests_running");
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(busy, 4, "four streams run before the storm");
    for (const ac of streams) ac.abort();
    // /metrics reports what the engine last posted; nothing else is sent to the engine while we poll.
    let text = "";
    for (let i = 0; i < 250; i++) {
      text = await metrics();
      if (gauge(text, "num_requests_running") === 0 && gauge(text, "kv_cache_usage_perc") === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(gauge(text, "num_requests_running"), 0);
    assert.equal(gauge(text, "num_requests_waiting"), 0);
    assert.equal(gauge(text, "kv_cache_usage_perc"), 0);
  });
});

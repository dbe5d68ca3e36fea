/**
 * `tokamak bench serve`: vLLM's `vllm bench serve` against any OpenAI-compatible
 * server (this one or vLLM), with vLLM's flags, metrics, summary table and result
 * JSON, so numbers compare side by side.
 *
 * Only the random dataset is supported: each prompt is a list of random token ids
 * (uniform in [1000, 30000) unless --random-vocab-size n gives [0, n); no endpoint
 * tells the vocabulary size, and Qwen3 and Llama vocabularies are larger than
 * 30000). /v1/completions gets the ids as the prompt; /v1/chat/completions gets
 * them decoded to text by POST /detokenize, as one user message, and the prompt's
 * length is what POST /tokenize counts for that text.
 *
 * Per request, streamed with usage: TTFT is the time to the first chunk that
 * carries a token (non-empty text, or a finish_reason; chat's opening role-only
 * chunk is not a token), ITL the gaps between such chunks, latency the time to the
 * end of the stream, output tokens usage.completion_tokens (else the chunk count),
 * and TPOT (latency - TTFT) / (output tokens - 1). Statistics follow vLLM: numpy's
 * mean, population std, median and linearly interpolated percentiles.
 */
import { type Command, InvalidArgumentError } from "commander";
import { mkdirSync, writeFileSync } from "node:fs";
import { Agent as HttpAgent, type IncomingMessage, request as httpRequest } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export interface ServeBenchOptions {
  /** Default http://127.0.0.1:8000. */
  baseUrl?: string;
  /** /v1/completions (default) or /v1/chat/completions. */
  endpoint?: string;
  /** Default: the first model GET /v1/models lists. */
  model?: string;
  /** Only "random". */
  datasetName?: string;
  randomInputLen?: number;
  randomOutputLen?: number;
  /** Lengths are uniform integers in [len * (1 - r), len * (1 + r)]; 0 <= r < 1. */
  randomRangeRatio?: number;
  /** Token ids are drawn from [0, n) instead of [1000, 30000). */
  randomVocabSize?: number;
  numPrompts?: number;
  /** Requests per second; Infinity (default) sends them all at once. */
  requestRate?: number;
  /** Gamma shape of the inter-arrival times: 1 is a Poisson process, < 1 burstier, > 1 more even. */
  burstiness?: number;
  maxConcurrency?: number;
  seed?: number;
  apiKey?: string;
  ignoreEos?: boolean;
  /** Metrics to report: ttft, tpot, itl, e2el (default "ttft,tpot,itl"). */
  percentileMetrics?: string | string[];
  /** Percentiles to report, each in (0, 100] (default "99"). */
  metricPercentiles?: string | number[];
  /** Progress and setup lines ("Traffic request rate: inf", ...). */
  log?: (line: string) => void;
  /** Called after each request finishes. */
  onProgress?: (done: number, total: number) => void;
}

/** The result, with the fields and units of vLLM's result JSON (lists in seconds, statistics in ms). */
export interface BenchResult {
  date: string;
  backend: "tokamak";
  model_id: string;
  tokenizer_id: string;
  num_prompts: number;
  request_rate: number | "inf";
  burstiness: number;
  max_concurrency: number | null;
  duration: number;
  completed: number;
  failed: number;
  total_input_tokens: number;
  total_output_tokens: number;
  request_throughput: number;
  request_goodput: null;
  output_throughput: number;
  total_token_throughput: number;
  input_lens: number[];
  output_lens: number[];
  ttfts: number[];
  itls: number[][];
  generated_texts: string[];
  errors: string[];
  max_output_tokens_per_s: number;
  max_concurrent_requests: number;
  /** mean_ttft_ms, median_ttft_ms, std_ttft_ms, p99_ttft_ms, ... for each selected metric and percentile. */
  [metric: `${string}_ms`]: number;
}

/** One prompt of the dataset. */
export interface SampledRequest {
  promptTokenIds: number[];
  outputLen: number;
}

/** What happened to one request (vLLM's RequestFuncOutput; times in seconds). */
interface RequestOutput {
  success: boolean;
  promptLen: number;
  generatedText: string;
  outputTokens: number;
  ttft: number;
  itl: number[];
  latency: number;
  /** Since the benchmark began. */
  startTime: number;
  error: string;
}

const METRICS = [
  ["ttft", "TTFT", "Time to First Token"],
  ["tpot", "TPOT", "Time per Output Token (excl. 1st token)"],
  ["itl", "ITL", "Inter-token Latency"],
  ["e2el", "E2EL", "End-to-end Latency"],
] as const;
type MetricName = (typeof METRICS)[number][0];

const DEFAULT_VOCAB: [number, number] = [1000, 30000];
const SUPPORTED_DATASETS = ["random"];

// ---------------------------------------------------------------- randomness

/** mulberry32: a small seeded generator of uniform numbers in [0, 1). */
function rngFor(seed: number, stream: number): () => number {
  let a = (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(stream + 1, 0x85ebca6b) ^ Math.floor(seed / 2 ** 32)) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const randInt = (rng: () => number, lo: number, hi: number) => lo + Math.floor(rng() * (hi - lo + 1)); // inclusive

function normal(rng: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
}

/** A Gamma(shape, 1) sample (Marsaglia and Tsang; shape < 1 by boosting). */
function gamma(rng: () => number, shape: number): number {
  if (shape === 1) return -Math.log(1 - rng());
  if (shape < 1) return gamma(rng, shape + 1) * Math.pow(1 - rng(), 1 / shape);
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number;
    let v: number;
    do {
      x = normal(rng);
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = rng();
    if (u < 1 - 0.0331 * x ** 4 || Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v;
  }
}

/**
 * When each request is sent, in seconds from the start: the first at 0, then
 * gamma-distributed gaps of shape `burstiness` and mean 1/rate (vLLM's; burstiness 1
 * is a Poisson process), or all at 0 for an infinite rate.
 */
export function arrivalTimes(n: number, requestRate: number, burstiness: number, seed: number): number[] {
  const times: number[] = [];
  if (!Number.isFinite(requestRate)) return Array.from({ length: n }, () => 0);
  const rng = rngFor(seed, 1);
  const scale = 1 / (requestRate * burstiness);
  let t = 0;
  for (let i = 0; i < n; i++) {
    times.push(t);
    t += gamma(rng, burstiness) * scale;
  }
  return times;
}

/** The random dataset: lengths uniform in [len(1-r), len(1+r)], token ids uniform in [lo, hi). */
export function sampleRandomRequests(o: {
  numPrompts: number;
  inputLen: number;
  outputLen: number;
  rangeRatio: number;
  seed: number;
  vocab?: [number, number];
}): SampledRequest[] {
  const rng = rngFor(o.seed, 0);
  const [lo, hi] = o.vocab ?? DEFAULT_VOCAB;
  const span = (len: number): [number, number] => [Math.max(1, Math.floor(len * (1 - o.rangeRatio))), Math.ceil(len * (1 + o.rangeRatio))];
  const [inLo, inHi] = span(o.inputLen);
  const [outLo, outHi] = span(o.outputLen);
  return Array.from({ length: o.numPrompts }, () => {
    const inputLen = randInt(rng, inLo, inHi);
    const outputLen = randInt(rng, outLo, outHi);
    return { promptTokenIds: Array.from({ length: inputLen }, () => randInt(rng, lo, hi - 1)), outputLen };
  });
}

// ---------------------------------------------------------------- statistics (numpy's)

const mean = (xs: number[]) => (xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length);

function std(xs: number[]): number {
  if (xs.length === 0) return 0;
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / xs.length);
}

/** numpy.percentile's default (linear interpolation); 0 for no data, as vLLM's `xs or 0`. */
export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  const rank = (p / 100) * (s.length - 1);
  const i = Math.floor(rank);
  const frac = rank - i;
  return i + 1 < s.length ? s[i]! + (s[i + 1]! - s[i]!) * frac : s[i]!;
}

// ---------------------------------------------------------------- HTTP

class Semaphore {
  private waiting: (() => void)[] = [];
  constructor(private free: number) {}
  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }
  release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }
}

function describeFetchError(err: unknown): string {
  const e = err as Error & { cause?: { code?: string; message?: string } };
  const cause = e.cause?.code ?? e.cause?.message;
  return cause ? `${e.message} (${cause})` : String(e.message ?? err);
}

/** The message of an OpenAI-shaped error body, else the body's text. */
async function errorText(res: Response): Promise<string> {
  return errorMessage(await res.text().catch(() => ""), res.statusText);
}

function errorMessage(text: string, statusText: string): string {
  try {
    const body = JSON.parse(text) as { error?: { message?: string } | string; message?: string; detail?: string };
    const msg = typeof body.error === "string" ? body.error : (body.error?.message ?? body.message ?? body.detail);
    if (msg) return msg;
  } catch {
    // not JSON
  }
  return text.slice(0, 500) || statusText;
}

// Streams go over node:http, not fetch: with hundreds of concurrent SSE streams, fetch's web streams
// cost the client as much CPU as the server spends serving them, and the client shares the machine.
const agents = { http: new HttpAgent({ keepAlive: true }), https: new HttpsAgent({ keepAlive: true }) };

/** POST `body` and resolve with the response once its headers arrive. */
function postRequest(url: string, headers: Record<string, string>, body: string): Promise<IncomingMessage> {
  const u = new URL(url);
  const https = u.protocol === "https:";
  return new Promise((resolve, reject) => {
    const req = (https ? httpsRequest : httpRequest)(u, {
      method: "POST",
      headers: { ...headers, "content-length": String(Buffer.byteLength(body)) },
      agent: https ? agents.https : agents.http,
    });
    req.once("response", resolve);
    req.once("error", reject);
    req.end(body);
  });
}

/** How requests are sent (an object, so a test can watch what goes over it). */
export const transport = { post: postRequest };

/** All of a response body as text. */
function readAll(res: IncomingMessage): Promise<string> {
  res.setEncoding("utf8");
  let text = "";
  return new Promise((resolve) => {
    res.on("data", (d: string) => (text += d));
    res.once("end", () => resolve(text));
    res.once("error", () => resolve(text));
  });
}

function describeNetError(err: unknown): string {
  const e = err as Error & { code?: string };
  return e.code && !e.message.includes(e.code) ? `${e.message} (${e.code})` : String(e.message ?? err);
}

interface Client {
  baseUrl: string;
  headers: Record<string, string>;
}

async function postJson<T>(c: Client, path: string, body: unknown, what: string): Promise<T> {
  let res: Response;
  try {
    res = await fetch(`${c.baseUrl}${path}`, { method: "POST", headers: c.headers, body: JSON.stringify(body) });
  } catch (err) {
    throw new Error(`${what}: POST ${c.baseUrl}${path} failed: ${describeFetchError(err)}`, { cause: err });
  }
  if (!res.ok) throw new Error(`${what}: POST ${c.baseUrl}${path} answered HTTP ${res.status}: ${await errorText(res)}`);
  return (await res.json()) as T;
}

interface ModelEntry {
  id: string;
  max_model_len?: number;
}

async function listModels(c: Client): Promise<ModelEntry[]> {
  const url = `${c.baseUrl}/v1/models`;
  let res: Response;
  try {
    res = await fetch(url, { headers: c.headers });
  } catch (err) {
    throw new Error(
      `could not reach the server: GET ${url} failed: ${describeFetchError(err)}; is it running? (set --base-url or --host/--port)`,
      { cause: err },
    );
  }
  if (!res.ok) throw new Error(`GET ${url} answered HTTP ${res.status}: ${await errorText(res)}`);
  const body = (await res.json()) as { data?: ModelEntry[] };
  return Array.isArray(body.data) ? body.data : [];
}

/** Stream one request and time it; never throws (a failure is an output with success false). */
async function sendRequest(
  c: Client,
  url: string,
  chat: boolean,
  payload: Record<string, unknown>,
  promptLen: number,
  benchStart: number,
): Promise<RequestOutput> {
  const st = performance.now();
  const out: RequestOutput = {
    success: false,
    promptLen,
    generatedText: "",
    outputTokens: 0,
    ttft: 0,
    itl: [],
    latency: 0,
    startTime: (st - benchStart) / 1000,
    error: "",
  };
  let chunks = 0;
  let usageTokens: number | undefined;
  let last = st;
  let res: IncomingMessage | undefined;
  try {
    res = await transport.post(url, c.headers, JSON.stringify(payload));
    if (res.statusCode !== 200) {
      out.error = `HTTP ${res.statusCode}: ${errorMessage(await readAll(res), res.statusMessage ?? "")}`;
      return out;
    }
    let buf = "";
    let done = false;
    const onData = (data: string) => {
      if (data === "[DONE]") {
        done = true;
        return;
      }
      let event: {
        choices?: {
          text?: string;
          delta?: { content?: string | null; reasoning_content?: string | null };
          finish_reason?: string | null;
        }[];
        usage?: { completion_tokens?: number } | null;
        error?: { message?: string } | string;
      };
      try {
        event = JSON.parse(data);
      } catch {
        throw new Error(`the server sent an event that is not JSON: ${data.slice(0, 200)}`);
      }
      if (event.error) {
        throw new Error(typeof event.error === "string" ? event.error : (event.error.message ?? JSON.stringify(event.error)));
      }
      const choice = event.choices?.[0];
      if (choice) {
        const text = (chat ? (choice.delta?.content ?? choice.delta?.reasoning_content) : choice.text) ?? "";
        if (text !== "" || (choice.finish_reason !== null && choice.finish_reason !== undefined)) {
          const t = performance.now();
          if (chunks === 0) out.ttft = (t - st) / 1000;
          else out.itl.push((t - last) / 1000);
          last = t;
          chunks++;
          out.generatedText += text;
        }
      }
      if (event.usage && typeof event.usage.completion_tokens === "number") usageTokens = event.usage.completion_tokens;
    };
    const body = res;
    body.setEncoding("utf8");
    await new Promise<void>((resolve, reject) => {
      body.on("data", (chunk: string) => {
        if (done) return;
        buf += chunk;
        let start = 0;
        let nl: number;
        try {
          while (!done && (nl = buf.indexOf("\n", start)) >= 0) {
            const end = nl > start && buf.charCodeAt(nl - 1) === 13 ? nl - 1 : nl;
            if (buf.startsWith("data:", start)) onData(buf.slice(start + 5, end).trimStart());
            start = nl + 1;
          }
        } catch (err) {
          reject(err as Error);
          return;
        }
        buf = buf.slice(start);
        if (done) resolve();
      });
      body.once("end", () => resolve());
      body.once("error", reject);
      body.once("aborted", () => reject(new Error("the server closed the stream early")));
    });
    if (done) res.resume(); // drain the rest: the connection goes back to the agent
    out.latency = (performance.now() - st) / 1000;
    if (chunks === 0) {
      out.error = "the stream ended without a token: no chunk to time the first token by";
      return out;
    }
    out.outputTokens = usageTokens ?? chunks;
    out.success = true;
  } catch (err) {
    out.error = (err as { code?: string }).code ? describeNetError(err) : (err as Error).message;
    res?.destroy();
    out.latency = (performance.now() - st) / 1000;
  }
  return out;
}

// ---------------------------------------------------------------- the benchmark

function parseMetrics(v: string | string[] | undefined): MetricName[] {
  const names = (typeof v === "string" ? v.split(",") : (v ?? ["ttft", "tpot", "itl"])).map((s) => s.trim()).filter((s) => s !== "");
  const known = METRICS.map((m) => m[0]) as string[];
  for (const n of names) {
    if (!known.includes(n))
      throw new Error(`--percentile-metrics: unknown metric "${n}"; expected a comma-separated list of ${known.join(", ")}`);
  }
  return names as MetricName[];
}

function parsePercentiles(v: string | number[] | undefined): number[] {
  const items = typeof v === "string" ? v.split(",").map((s) => s.trim()) : (v ?? [99]);
  return items.map((x) => {
    const p = Number(x);
    if (x === "" || !Number.isFinite(p) || p <= 0 || p > 100)
      throw new Error(`--metric-percentiles: "${x}" is not a percentile; expected comma-separated numbers in (0, 100], such as "50,90,99"`);
    return p;
  });
}

function checkInt(name: string, v: number, min: number): number {
  if (!Number.isInteger(v) || v < min) throw new Error(`${name} must be an integer >= ${min}, got ${v}`);
  return v;
}

function pythonFloat(x: number): string {
  return !Number.isFinite(x) ? "inf" : Number.isInteger(x) ? `${x}.0` : String(x);
}

function timestamp(d: Date): string {
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
}

/** Run the benchmark: sample the dataset, send every request on schedule, and compute vLLM's metrics. */
export async function runServeBenchmark(opts: ServeBenchOptions = {}): Promise<BenchResult> {
  const log = opts.log ?? (() => {});
  const datasetName = opts.datasetName ?? "random";
  if (!SUPPORTED_DATASETS.includes(datasetName)) {
    throw new Error(`--dataset-name "${datasetName}" is not supported; this build supports: ${SUPPORTED_DATASETS.join(", ")}`);
  }
  const endpoint = opts.endpoint ?? "/v1/completions";
  const chat = endpoint.endsWith("/chat/completions");
  if (!endpoint.startsWith("/") || (!chat && !endpoint.endsWith("/completions"))) {
    throw new Error(`--endpoint must be /v1/completions or /v1/chat/completions, got "${endpoint}"`);
  }
  const numPrompts = checkInt("--num-prompts", opts.numPrompts ?? 1000, 1);
  const inputLen = checkInt("--random-input-len", opts.randomInputLen ?? 1024, 1);
  const outputLen = checkInt("--random-output-len", opts.randomOutputLen ?? 128, 1);
  const rangeRatio = opts.randomRangeRatio ?? 0;
  if (!(rangeRatio >= 0 && rangeRatio < 1)) throw new Error(`--random-range-ratio must be in [0, 1), got ${rangeRatio}`);
  const vocab: [number, number] =
    opts.randomVocabSize === undefined ? DEFAULT_VOCAB : [0, checkInt("--random-vocab-size", opts.randomVocabSize, 1)];
  const requestRate = opts.requestRate ?? Infinity;
  if (!(requestRate > 0)) throw new Error(`--request-rate must be a positive number of requests per second or inf, got ${requestRate}`);
  const burstiness = opts.burstiness ?? 1;
  if (!(burstiness > 0 && Number.isFinite(burstiness))) throw new Error(`--burstiness must be a positive number, got ${burstiness}`);
  const maxConcurrency = opts.maxConcurrency === undefined ? undefined : checkInt("--max-concurrency", opts.maxConcurrency, 1);
  const seed = checkInt("--seed", opts.seed ?? 0, 0);
  const metrics = parseMetrics(opts.percentileMetrics);
  const percentiles = parsePercentiles(opts.metricPercentiles);

  const baseUrl = (opts.baseUrl ?? "http://127.0.0.1:8000").replace(/\/+$/, "");
  if (!/^https?:\/\/[^/]/.test(baseUrl))
    throw new Error(`--base-url must be an http:// or https:// URL such as http://127.0.0.1:8000, got "${baseUrl}"`);
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (opts.apiKey) headers.authorization = `Bearer ${opts.apiKey}`;
  const client: Client = { baseUrl, headers };

  // The model: the one asked for, else the server's first; its context length bounds the lengths.
  let models: ModelEntry[] | undefined;
  try {
    models = await listModels(client);
  } catch (err) {
    if (opts.model === undefined) throw err;
  }
  const modelId = opts.model ?? models?.[0]?.id;
  if (modelId === undefined) throw new Error(`GET ${baseUrl}/v1/models lists no models; give --model`);
  const maxModelLen = models?.find((m) => m.id === modelId)?.max_model_len;
  const longest = Math.ceil(inputLen * (1 + rangeRatio)) + Math.ceil(outputLen * (1 + rangeRatio));
  if (typeof maxModelLen === "number" && longest > maxModelLen) {
    throw new Error(
      `--random-input-len ${inputLen} and --random-output-len ${outputLen} (--random-range-ratio ${rangeRatio}) make requests of up to ${longest} tokens, ` +
        `but the model "${modelId}" has max_model_len ${maxModelLen}; lower them`,
    );
  }

  const sampled = sampleRandomRequests({ numPrompts, inputLen, outputLen, rangeRatio, seed, vocab });
  // Chat takes text: decode the ids on the server and count the text's tokens there (vLLM re-encodes likewise).
  let chatPrompts: { text: string; len: number }[] = [];
  if (chat) {
    chatPrompts = new Array(sampled.length);
    let next = 0;
    const worker = async () => {
      for (let i = next++; i < sampled.length; i = next++) {
        const { prompt } = await postJson<{ prompt: string }>(
          client,
          "/detokenize",
          { tokens: sampled[i]!.promptTokenIds },
          "decoding a random prompt for the chat endpoint",
        );
        const { count } = await postJson<{ count: number }>(
          client,
          "/tokenize",
          { prompt, add_special_tokens: false },
          "counting a chat prompt's tokens",
        );
        chatPrompts[i] = { text: prompt, len: count };
      }
    };
    await Promise.all(Array.from({ length: Math.min(16, sampled.length) }, worker));
  }

  const apiUrl = `${baseUrl}${endpoint}`;
  const payloads = sampled.map((s, i) => {
    const common = {
      model: modelId,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
      ...(opts.ignoreEos ? { ignore_eos: true } : {}),
    };
    return chat
      ? { ...common, messages: [{ role: "user", content: chatPrompts[i]!.text }], max_completion_tokens: s.outputLen }
      : { ...common, prompt: s.promptTokenIds, max_tokens: s.outputLen };
  });
  const promptLens = sampled.map((s, i) => (chat ? chatPrompts[i]!.len : s.promptTokenIds.length));

  log(`Traffic request rate: ${pythonFloat(requestRate)}`);
  log(`Burstiness factor: ${burstiness} (${burstiness === 1 ? "Poisson process" : "Gamma distribution"})`);
  log(`Maximum request concurrency: ${maxConcurrency ?? "None"}`);
  const arrivals = arrivalTimes(numPrompts, requestRate, burstiness, seed);
  const semaphore = maxConcurrency === undefined ? undefined : new Semaphore(maxConcurrency);
  let finished = 0;
  const date = new Date();
  const start = performance.now();
  const outputs = await Promise.all(
    payloads.map(async (payload, i) => {
      const wait = start + arrivals[i]! * 1000 - performance.now();
      if (wait > 0) await sleep(wait);
      await semaphore?.acquire();
      try {
        return await sendRequest(client, apiUrl, chat, payload, promptLens[i]!, start);
      } finally {
        semaphore?.release();
        opts.onProgress?.(++finished, numPrompts);
      }
    }),
  );
  const duration = (performance.now() - start) / 1000;

  return buildResult(outputs, duration, {
    date: timestamp(date),
    modelId,
    numPrompts,
    requestRate,
    burstiness,
    maxConcurrency,
    metrics,
    percentiles,
  });
}

function buildResult(
  outputs: RequestOutput[],
  duration: number,
  m: {
    date: string;
    modelId: string;
    numPrompts: number;
    requestRate: number;
    burstiness: number;
    maxConcurrency?: number;
    metrics: MetricName[];
    percentiles: number[];
  },
): BenchResult {
  const ok = outputs.filter((o) => o.success);
  const outputLens = outputs.map((o) => (o.success ? o.outputTokens : 0));
  const totalInput = ok.reduce((s, o) => s + o.promptLen, 0);
  const totalOutput = outputLens.reduce((a, b) => a + b, 0);
  const series: Record<MetricName, number[]> = {
    ttft: ok.map((o) => o.ttft),
    tpot: ok.filter((o) => o.outputTokens > 1).map((o) => (o.latency - o.ttft) / (o.outputTokens - 1)),
    itl: ok.flatMap((o) => o.itl),
    e2el: ok.map((o) => o.latency),
  };

  // Peak output tokens per second and peak concurrent requests, in one-second buckets (vLLM's).
  let peakTokens = 0;
  let peakConcurrent = 0;
  if (ok.length > 0) {
    const t0 = Math.min(...ok.map((o) => o.startTime));
    const t1 = Math.max(...ok.map((o) => o.startTime + o.latency));
    const buckets = Math.ceil(t1 - t0) + 1;
    const tokens = new Array<number>(buckets).fill(0);
    const concurrent = new Array<number>(buckets).fill(0);
    for (const o of ok) {
      let t = o.startTime + o.ttft;
      const times = [t, ...o.itl.map((g) => (t += g))];
      for (const x of times) {
        const b = Math.floor(x - t0);
        if (b >= 0 && b < buckets) tokens[b]!++;
      }
      for (let s = Math.floor(o.startTime - t0); s <= Math.floor(o.startTime + o.latency - t0) && s < buckets; s++) concurrent[s]!++;
    }
    peakTokens = Math.max(...tokens);
    peakConcurrent = Math.max(...concurrent);
  }

  const result: BenchResult = {
    date: m.date,
    backend: "tokamak",
    model_id: m.modelId,
    tokenizer_id: m.modelId,
    num_prompts: m.numPrompts,
    request_rate: Number.isFinite(m.requestRate) ? m.requestRate : "inf",
    burstiness: m.burstiness,
    max_concurrency: m.maxConcurrency ?? null,
    duration,
    completed: ok.length,
    failed: outputs.length - ok.length,
    total_input_tokens: totalInput,
    total_output_tokens: totalOutput,
    request_throughput: ok.length / duration,
    request_goodput: null,
    output_throughput: totalOutput / duration,
    total_token_throughput: (totalInput + totalOutput) / duration,
    input_lens: outputs.map((o) => o.promptLen),
    output_lens: outputLens,
    ttfts: outputs.map((o) => o.ttft),
    itls: outputs.map((o) => o.itl),
    generated_texts: outputs.map((o) => o.generatedText),
    errors: outputs.map((o) => o.error),
    max_output_tokens_per_s: peakTokens,
    max_concurrent_requests: peakConcurrent,
  };
  for (const [name] of METRICS) {
    if (!m.metrics.includes(name)) continue;
    const xs = series[name];
    result[`mean_${name}_ms`] = mean(xs) * 1000;
    result[`median_${name}_ms`] = percentile(xs, 50) * 1000;
    result[`std_${name}_ms`] = std(xs) * 1000;
    for (const p of m.percentiles) result[`p${p}_${name}_ms`] = percentile(xs, p) * 1000;
  }
  return result;
}

// ---------------------------------------------------------------- output

/** Python's "{s:{c}^{n}}": centred, the odd fill character on the right. */
function centre(s: string, width: number, fill: string): string {
  const pad = Math.max(0, width - s.length);
  const left = Math.floor(pad / 2);
  return fill.repeat(left) + s + fill.repeat(pad - left);
}

/** Python's "{:<40} {:<10}" (integers) or "{:<40} {:<10.2f}" (decimals). */
function row(label: string, value: number, decimals: boolean): string {
  return `${label.padEnd(40)} ${(decimals ? value.toFixed(2) : String(value)).padEnd(10)}`;
}

/** The summary table, line for line as `vllm bench serve` prints it (sections for the metrics in the result). */
export function formatSummary(r: BenchResult): string {
  const lines = [centre(" Serving Benchmark Result ", 50, "=")];
  lines.push(row("Successful requests:", r.completed, false));
  lines.push(row("Failed requests:", r.failed, false));
  if (r.max_concurrency !== null) lines.push(row("Maximum request concurrency:", r.max_concurrency, false));
  if (r.request_rate !== "inf") lines.push(row("Request rate configured (RPS):", r.request_rate, true));
  lines.push(row("Benchmark duration (s):", r.duration, true));
  lines.push(row("Total input tokens:", r.total_input_tokens, false));
  lines.push(row("Total generated tokens:", r.total_output_tokens, false));
  lines.push(row("Request throughput (req/s):", r.request_throughput, true));
  lines.push(row("Output token throughput (tok/s):", r.output_throughput, true));
  lines.push(row("Peak output token throughput (tok/s):", r.max_output_tokens_per_s, true));
  lines.push(row("Peak concurrent requests:", r.max_concurrent_requests, true));
  lines.push(row("Total Token throughput (tok/s):", r.total_token_throughput, true));
  for (const [name, label, header] of METRICS) {
    const meanKey = `mean_${name}_ms` as const;
    if (!(meanKey in r)) continue;
    lines.push(centre(header, 50, "-"));
    lines.push(row(`Mean ${label} (ms):`, r[meanKey]!, true));
    lines.push(row(`Median ${label} (ms):`, r[`median_${name}_ms`]!, true));
    for (const key of Object.keys(r)) {
      const p = new RegExp(`^p(.+)_${name}_ms$`).exec(key)?.[1];
      if (p !== undefined) lines.push(row(`P${p} ${label} (ms):`, r[key as `${string}_ms`]!, true));
    }
  }
  lines.push("=".repeat(50));
  return lines.join("\n") + "\n";
}

/** vLLM's file name: tokamak-{rate}qps[-concurrency{n}]-{model}-{date}.json. */
export function defaultResultFilename(r: BenchResult): string {
  const rate = r.request_rate === "inf" ? "inf" : pythonFloat(r.request_rate);
  const conc = r.max_concurrency === null ? "" : `-concurrency${r.max_concurrency}`;
  const model = r.model_id
    .split("/")
    .pop()!
    .replace(/[^\w.-]/g, "_");
  return `tokamak-${rate}qps${conc}-${model}-${r.date}.json`;
}

/** Write the result JSON (one line, as vLLM's json.dump); returns its path. */
export function saveBenchResult(r: BenchResult, o: { resultDir?: string; resultFilename?: string } = {}): string {
  const dir = o.resultDir ?? ".";
  mkdirSync(dir, { recursive: true });
  const path = join(dir, o.resultFilename ?? defaultResultFilename(r));
  writeFileSync(path, JSON.stringify(r) + "\n");
  return path;
}

// ---------------------------------------------------------------- the command

interface BenchServeFlags {
  baseUrl?: string;
  host?: string;
  port?: number;
  endpoint: string;
  model?: string;
  datasetName: string;
  randomInputLen: number;
  randomOutputLen: number;
  randomRangeRatio: number;
  randomVocabSize?: number;
  numPrompts: number;
  requestRate: number;
  burstiness: number;
  maxConcurrency?: number;
  seed: number;
  apiKey?: string;
  ignoreEos: boolean;
  saveResult: boolean;
  resultDir?: string;
  resultFilename?: string;
  percentileMetrics: string;
  metricPercentiles: string;
  disableTqdm: boolean;
}

function intOpt(name: string, min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === "" || !Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got "${v}"`);
    return n;
  };
}

function floatOpt(name: string, check: (n: number) => boolean, expected: string) {
  return (v: string): number => {
    const n = v.trim().toLowerCase() === "inf" ? Infinity : Number(v);
    if (v.trim() === "" || Number.isNaN(n) || !check(n)) throw new InvalidArgumentError(`${name} must be ${expected}, got "${v}"`);
    return n;
  };
}

export interface BenchServeIO {
  /** The summary table (default: stdout). */
  out?: (text: string) => void;
  /** Setup lines, the saved file's path and failures (default: stderr). */
  err?: (text: string) => void;
}

/** Add `bench serve` (under a `bench` command, made if missing) to the program. */
export function registerBenchServe(program: Command, io: BenchServeIO = {}): void {
  const out = io.out ?? ((s: string) => void process.stdout.write(s));
  const err = io.err ?? ((s: string) => void process.stderr.write(s));
  const bench =
    program.commands.find((c) => c.name() === "bench") ?? program.command("bench").description("benchmarks (vLLM's `vllm bench`)");
  bench
    .command("serve")
    .description("benchmark an OpenAI-compatible server's online serving: TTFT, TPOT, ITL and throughput (vLLM's `vllm bench serve`)")
    .option("--base-url <url>", "server URL (default http://127.0.0.1:8000; or give --host and --port)")
    .option("--host <host>", "server host, with --port (default 127.0.0.1)")
    .option("--port <port>", "server port, with --host (default 8000)", intOpt("--port", 1))
    .option("--endpoint <path>", "/v1/completions or /v1/chat/completions", "/v1/completions")
    .option("--model <name>", "model name to send (default: the first of GET /v1/models)")
    .option("--dataset-name <name>", "dataset: random (random token ids)", "random")
    .option("--random-input-len <n>", "prompt tokens per request", intOpt("--random-input-len", 1), 1024)
    .option("--random-output-len <n>", "tokens to generate per request (max_tokens)", intOpt("--random-output-len", 1), 128)
    .option(
      "--random-range-ratio <r>",
      "lengths uniform in [len*(1-r), len*(1+r)]",
      floatOpt("--random-range-ratio", (n) => n >= 0 && n < 1, "a number in [0, 1)"),
      0,
    )
    .option(
      "--random-vocab-size <n>",
      "draw token ids from [0, n) (default: [1000, 30000), valid in Qwen3 and Llama vocabularies)",
      intOpt("--random-vocab-size", 1),
    )
    .option("--num-prompts <n>", "requests to send", intOpt("--num-prompts", 1), 1000)
    .option(
      "--request-rate <r>",
      "requests per second, Poisson/gamma arrivals; inf sends all at once (default inf)",
      floatOpt("--request-rate", (n) => n > 0, "a positive number or inf"),
      Infinity,
    )
    .option(
      "--burstiness <f>",
      "gamma shape of inter-arrival times: 1 Poisson, < 1 burstier, > 1 more uniform",
      floatOpt("--burstiness", (n) => n > 0 && Number.isFinite(n), "a positive number"),
      1,
    )
    .option("--max-concurrency <n>", "requests in flight at most", intOpt("--max-concurrency", 1))
    .option("--seed <n>", "seed for the prompts and arrival times", intOpt("--seed", 0), 0)
    .option("--api-key <key>", "Authorization: Bearer <key> (default: $OPENAI_API_KEY, else $TOKAMAK_API_KEY)")
    .option("--ignore-eos", "send ignore_eos: every request generates exactly its output length", false)
    .option("--save-result", "write the result JSON (to --result-dir, default the current folder)", false)
    .option("--result-dir <dir>", "folder for the result JSON (giving it saves the result)")
    .option("--result-filename <name>", "result file name (default tokamak-{rate}qps[-concurrency{n}]-{model}-{date}.json)")
    .option("--percentile-metrics <list>", "metrics to report: ttft, tpot, itl, e2el", "ttft,tpot,itl")
    .option("--metric-percentiles <list>", 'percentiles to report, e.g. "50,90,99"', "99")
    .option("--disable-tqdm", "no progress display (accepted for vLLM compatibility)", false)
    .action(async (flags: BenchServeFlags) => {
      if (flags.baseUrl !== undefined && (flags.host !== undefined || flags.port !== undefined)) {
        throw new Error("give either --base-url or --host/--port, not both");
      }
      const baseUrl = flags.baseUrl ?? `http://${flags.host ?? "127.0.0.1"}:${flags.port ?? 8000}`;
      const tty = !flags.disableTqdm && process.stderr.isTTY === true && io.err === undefined;
      const result = await runServeBenchmark({
        baseUrl,
        endpoint: flags.endpoint,
        model: flags.model,
        datasetName: flags.datasetName,
        randomInputLen: flags.randomInputLen,
        randomOutputLen: flags.randomOutputLen,
        randomRangeRatio: flags.randomRangeRatio,
        randomVocabSize: flags.randomVocabSize,
        numPrompts: flags.numPrompts,
        requestRate: flags.requestRate,
        burstiness: flags.burstiness,
        maxConcurrency: flags.maxConcurrency,
        seed: flags.seed,
        apiKey: flags.apiKey ?? process.env.OPENAI_API_KEY ?? process.env.TOKAMAK_API_KEY,
        ignoreEos: flags.ignoreEos,
        percentileMetrics: flags.percentileMetrics,
        metricPercentiles: flags.metricPercentiles,
        log: (line) => err(line + "\n"),
        onProgress: tty ? (done, total) => err(`\r${done}/${total} requests${done === total ? "\n" : ""}`) : undefined,
      });
      out(formatSummary(result));
      if (result.failed > 0) {
        const counts = new Map<string, number>();
        for (const e of result.errors) if (e) counts.set(e, (counts.get(e) ?? 0) + 1);
        const top = [...counts].sort((a, b) => b[1] - a[1]).slice(0, 5);
        err(
          `${result.failed} of ${result.num_prompts} requests failed${result.completed === 0 ? " (all of them: check the benchmark's arguments)" : ""}:\n` +
            top.map(([msg, n]) => `  ${n} × ${msg}\n`).join("") +
            (counts.size > top.length ? `  ... and ${counts.size - top.length} other errors (see "errors" in the result JSON)\n` : ""),
        );
      }
      if (flags.saveResult || flags.resultDir !== undefined || flags.resultFilename !== undefined) {
        const path = saveBenchResult(result, { resultDir: flags.resultDir, resultFilename: flags.resultFilename });
        err(`saved the result to ${path}\n`);
      }
    });
}

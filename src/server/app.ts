/**
 * The OpenAI-compatible HTTP API (Fastify). It tokenizes, validates, streams
 * and counts; it never touches tensors: requests go to the engine thread
 * through the AsyncEngine.
 */
import type { ServerResponse } from "node:http";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import { type AsyncEngine, EngineDeadError, EngineRequestError } from "../engine/async-engine.js";
import { resolveSamplingParams, type SamplingParams, SamplingParamsError } from "../engine/sampling-params.js";
import { ChatTemplateError } from "../tokenizer/chat-template.js";
import type { Tokenizer } from "../tokenizer/tokenizer.js";
import { bearerCheck, protectRoutes } from "./auth.js";
import { registerDashboard, SlidingWindow } from "./dashboard.js";
import { ApiError, badParam } from "./errors.js";
import { registerJsonParser } from "./json-body.js";
import type { Metrics } from "./metrics.js";
import { OffThreadTokenizer, TokenizerBusyError } from "./off-thread-tokenizer.js";
import { chatLogprobs as formatChatLogprobs, completionLogprobs as formatCompletionLogprobs, type Logprobs } from "./openai-format.js";
import { endEventStream, sendEvent } from "./sse.js";
import { OutputStreams, SHUTDOWN } from "./output-streams.js";
import { registerGenerateRoutes } from "./generate-routes.js";
import { type ChatRequest, type CommonRequest, parseDetokenizeRequest, parseTokenizeRequest } from "./protocol.js";

export interface AppOptions {
  engine: AsyncEngine;
  tokenizer: Tokenizer;
  /** Names clients may use in `model`; the first is reported in responses. */
  servedModelNames: string[];
  metrics: Metrics;
  apiKey?: string;
  /** Serve /metrics without the API key (Prometheus scrapers often have none). */
  metricsNoAuth?: boolean;
  /** Sequences (a request with n=4 counts 4) allowed to wait beyond the running batch before new requests get 429. */
  maxQueueLen?: number;
  bodyLimit?: number;
  /** A request's headers and body must arrive within this many ms (slow clients are cut with 408). */
  requestTimeoutMs?: number;
  /** The headers alone must arrive within this many ms. */
  headersTimeoutMs?: number;
  /** Open connections at most; more are refused at once. */
  maxConnections?: number;
  /** The model folder, for a tokenizer thread that takes large inputs off the event loop. */
  modelDir?: string;
  version: string;
  logger?: boolean;
}

export interface TokamakApp {
  app: FastifyInstance;
  /** Stop taking requests (503), wait for in-flight ones up to `timeoutMs`, abort the rest. */
  drain(timeoutMs: number, finalEventsMs?: number): Promise<{ drained: boolean; aborted: number }>;
  /** Release what the app holds beyond Fastify (the tokenizer thread). */
  dispose(): Promise<void>;
}

const now = () => performance.now();

export { toApiError };

export function buildApp(o: AppOptions): TokamakApp {
  const { engine, tokenizer, metrics } = o;
  const info = engine.info;
  const modelName = o.servedModelNames[0]!;
  const capacity = info.config.maxNumSeqs + (o.maxQueueLen ?? 1024);
  // No text of more characters than this fits in the context: every token covers at most its longest vocabulary entry.
  const charsPerToken = tokenizer.maxTokenChars;
  const maxPromptChars = info.maxModelLen * charsPerToken;
  const bodyLimit = o.bodyLimit ?? 32 * 2 ** 20;
  // Node's timers hold at most 2^31 - 1 ms (about 24.8 days); a longer one would silently become 1 ms.
  const requestTimeout = Math.min(o.requestTimeoutMs ?? 60_000, 2 ** 31 - 1);
  const headersTimeout = Math.min(o.headersTimeoutMs ?? 20_000, requestTimeout);
  let draining = false;
  const closing = new AbortController();
  const live = new Set<AbortController>();
  const app = Fastify({
    logger: o.logger ?? false,
    bodyLimit,
    return503OnClosing: true,
    requestTimeout,
    // Node checks both timeouts on this interval; a fifth of the shorter keeps the cut close to the limit.
    http: { headersTimeout, connectionsCheckingInterval: Math.max(50, headersTimeout / 5) },
  });
  app.server.maxConnections = o.maxConnections ?? 4096;
  const tokenize = new OffThreadTokenizer(tokenizer, o.modelDir);
  registerJsonParser(app);
  // A client that writes its whole body before reading must see an early answer (401, 404, 413, ...): read the rest
  // (bounded by the request timeout) before answering, since closing a socket with unread data resets the connection.
  app.addHook("onSend", async (request) => {
    if (bodyUnread(request)) await discardBody(request.raw);
  });

  engine.on("step", (_outputs, stats) => metrics.observeEngine(stats));

  app.setErrorHandler(async (err: Error & { statusCode?: number; code?: string }, request, reply) => {
    const e = toApiError(err, bodyLimit);
    if (e.status >= 500) request.log.error(err);
    return reply.code(e.status).headers(e.headers).send(e.body());
  });
  app.setNotFoundHandler((request, reply) => {
    const e = new ApiError(404, `no route ${request.method} ${request.url}; see /v1/models, /v1/completions, /v1/chat/completions`);
    void reply.code(404).send(e.body());
  });

  const authorize = bearerCheck(o.apiKey);
  protectRoutes(app, authorize, o.metricsNoAuth ?? false);
  const ttftWindow = new SlidingWindow();
  const itlWindow = new SlidingWindow();
  registerDashboard(app, { engine, modelName, ttft: ttftWindow, itl: itlWindow, closing: closing.signal });

  app.get("/health", { config: { public: true } }, async (_req, reply) => {
    if (!engine.isAlive) throw unavailable("the engine is not running");
    // A load balancer must stop sending work once the drain begins.
    if (draining) throw unavailable("the server is shutting down");
    return reply.code(200).send();
  });
  app.get("/version", { config: { public: true } }, async () => ({ version: o.version }));
  app.get("/metrics", async (_req, reply) => {
    if (engine.lastStats) metrics.observeEngine(engine.lastStats);
    return reply.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });
  const created = Math.floor(Date.now() / 1000);
  app.get("/v1/models", async () => ({
    object: "list",
    data: o.servedModelNames.map((id) => ({
      id,
      object: "model",
      created,
      owned_by: "tokamak",
      root: id,
      parent: null,
      max_model_len: info.maxModelLen,
    })),
  }));

  app.post("/tokenize", async (request) => {
    const t = parseTokenizeRequest(request.body);
    const tokens = t.messages
      ? await encodeChat(t.messages, { addGenerationPrompt: t.addGenerationPrompt, tools: undefined, chatTemplateKwargs: {} })
      : await encodeText(t.prompt!, t.addSpecialTokens, "prompt");
    return { count: tokens.length, max_model_len: info.maxModelLen, tokens };
  });
  app.post("/detokenize", async (request) => {
    const ids = parseDetokenizeRequest(request.body);
    const maxIds = 4 * info.maxModelLen;
    if (ids.length > maxIds)
      throw badParam("tokens", `tokens has ${ids.length} ids; at most ${maxIds} (4 × max_model_len) are decoded at once`);
    const bad = ids.find((t) => t < 0 || t >= tokenizer.vocabSize);
    if (bad !== undefined) throw badParam("tokens", `token id ${bad} is outside the vocabulary [0, ${tokenizer.vocabSize})`);
    return { prompt: tokenizer.decode(ids, { skipSpecialTokens: false }) };
  });

  /** Refuse at once what cannot fit in the context, before any tokenizing work. */
  function boundChars(chars: number, where: string): void {
    if (chars > maxPromptChars) {
      throw badParam(
        where,
        `the ${where} has ${chars} characters; this model's maximum context length is ${info.maxModelLen} tokens, ` +
          `which no text of more than ${maxPromptChars} characters (${charsPerToken} per token, the longest in the vocabulary) fits`,
      );
    }
  }

  async function encodeText(text: string, addSpecialTokens: boolean, where: string): Promise<number[]> {
    boundChars(text.length, where);
    return (await tokenize.encodeAll([text], addSpecialTokens))[0]!;
  }

  async function encodeChat(
    messages: ChatRequest["messages"],
    c: Pick<ChatRequest, "addGenerationPrompt" | "tools" | "chatTemplateKwargs">,
  ): Promise<number[]> {
    // Everything the template may render counts: contents, earlier tool calls' arguments, reasoning, template kwargs.
    const chars = JSON.stringify(messages).length + JSON.stringify(c.chatTemplateKwargs).length;
    boundChars(chars, "messages");
    try {
      return await tokenize.encodeChat(
        messages,
        { addGenerationPrompt: c.addGenerationPrompt, tools: c.tools, extra: c.chatTemplateKwargs },
        chars,
      );
    } catch (err) {
      // The template's file path stays in the server log; the client sees the served model's name.
      if (err instanceof ChatTemplateError) throw badParam("messages", `the chat template of "${modelName}": ${err.detail}`);
      throw err;
    }
  }

  /** What the engine would reject after the stream began, checked before it begins. */
  function checkPrompt(ids: number[], where: string): void {
    if (ids.length === 0) throw badParam(where, `the ${where} is empty after tokenizing; send at least one token`);
    const bad = ids.find((t) => !Number.isInteger(t) || t < 0 || t >= info.vocabSize);
    if (bad !== undefined) throw badParam(where, `the ${where} has token id ${bad}, outside the vocabulary [0, ${info.vocabSize})`);
  }

  function checkLogitBias(req: CommonRequest): void {
    for (const key of Object.keys(req.sampling.logitBias ?? {})) {
      if (Number(key) >= info.vocabSize) {
        throw badParam("logit_bias", `logit_bias has token id ${key}, outside the vocabulary [0, ${info.vocabSize})`);
      }
    }
  }

  function checkModel(model: string | undefined): void {
    if (model !== undefined && !o.servedModelNames.includes(model)) {
      throw new ApiError(
        404,
        `the model "${model}" does not exist; this server serves ${o.servedModelNames.map((n) => `"${n}"`).join(", ")}`,
        "not_found_error",
        "model",
        "model_not_found",
      );
    }
  }

  /** Admit a request of `numSequences` sequences (prompts × n), or say why not. */
  function admit(numSequences: number): void {
    if (draining) throw unavailable("the server is shutting down");
    if (!engine.isAlive) throw unavailable("the engine is not running");
    if (numSequences > capacity) {
      throw badParam(
        "n",
        `the request asks for ${numSequences} sequences (prompts × n), more than this server holds at once (${capacity}: --max-num-seqs plus --max-queue-len)`,
      );
    }
    const inFlight = engine.numSequencesInFlight;
    if (inFlight + numSequences > capacity) {
      throw new ApiError(
        429,
        `the server is at capacity (${inFlight} sequences in flight, limit ${capacity}); retry later`,
        "rate_limit_exceeded",
        null,
        null,
        {
          "Retry-After": "1",
        },
      );
    }
  }

  /** The request's sampling parameters, with max_tokens filling the context when not given (vLLM's default). */
  function samplingFor(req: CommonRequest, promptLen: number, where: string): SamplingParams {
    const max = info.maxModelLen;
    if (promptLen >= max) {
      throw badParam(
        where,
        `this model's maximum context length is ${max} tokens, but the ${where} has ${promptLen} tokens; at least one token must remain for the output`,
      );
    }
    if (req.maxTokens !== undefined && promptLen + req.maxTokens > max) {
      throw badParam(
        "max_tokens",
        `this model's maximum context length is ${max} tokens, but ${promptLen + req.maxTokens} were requested (${promptLen} in the ${where}, ${req.maxTokens} for the completion); reduce the length of the ${where} or max_tokens`,
      );
    }
    const maxTokens = req.maxTokens ?? Math.min(max - promptLen, info.samplingDefaults.maxTokens ?? Infinity);
    try {
      return resolveSamplingParams({ ...req.sampling, maxTokens, logprobs: req.logprobs }, info.samplingDefaults);
    } catch (err) {
      if (err instanceof SamplingParamsError) throw badParam(err.param, err.message);
      throw err;
    }
  }

  const outputs = new OutputStreams(engine, metrics, ttftWindow, itlWindow, interruption);

  /** Abort the engine requests when the client goes away before the response is complete. */
  function watchDisconnect(reply: FastifyReply, ac: AbortController): void {
    live.add(ac);
    reply.raw.on("close", () => {
      live.delete(ac);
      if (!reply.raw.writableFinished) ac.abort();
    });
  }

  function tokenText(id: number): string {
    return tokenizer.decode([id], { skipSpecialTokens: false });
  }

  const chatLogprobs = (lps: Logprobs, ids: number[]) => formatChatLogprobs(lps, ids, tokenText);
  const completionLogprobs = (lps: Logprobs, ids: number[], offset0: number) => formatCompletionLogprobs(lps, ids, offset0, tokenText);
  /** An error after the stream began: vLLM's way, as one data event, then [DONE]. */
  const streamError = (raw: ServerResponse, err: unknown) => {
    const e = toApiError(err as Error, 0);
    sendEvent(raw, e.body());
    endEventStream(raw);
  };

  registerGenerateRoutes(app, {
    modelName,
    tokenizer,
    tokenize,
    outputs,
    boundChars,
    encodeChat,
    checkPrompt,
    checkLogitBias,
    checkModel,
    admit,
    samplingFor,
    watchDisconnect,
    interruption,
    chatLogprobs,
    completionLogprobs,
    streamError,
  });

  /** The error a request cut by the server's own drain timeout ends with; undefined for anything else. */
  function interruption(ac: AbortController): ApiError | undefined {
    if (ac.signal.reason !== SHUTDOWN) return undefined;
    return new ApiError(503, "the server shut down before the request finished (its drain timeout passed)", "service_unavailable");
  }

  /** New requests get 503 at once; in-flight ones run until `timeoutMs`, then end with a final error (and [DONE] when streaming). */
  async function drain(timeoutMs: number, finalEventsMs = 200): Promise<{ drained: boolean; aborted: number }> {
    draining = true;
    closing.abort(); // the dashboard's event streams end now
    const deadline = now() + timeoutMs;
    while (engine.numInFlight > 0 && now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const drained = engine.numInFlight === 0;
    const aborted = live.size;
    for (const ac of live) ac.abort(SHUTDOWN);
    // Let the handlers write their final events before the caller closes the server.
    const until = now() + finalEventsMs;
    while (live.size > 0 && now() < until) await new Promise((r) => setTimeout(r, 10));
    return { drained, aborted: drained ? 0 : aborted };
  }

  return { app, drain, dispose: async () => void (await tokenize.close()) };
}

/** True when the answer goes out before the request body was read (an auth or routing error, a 413). */
function bodyUnread(request: FastifyRequest): boolean {
  return !request.raw.readableEnded && !request.raw.destroyed && request.raw.headers["content-length"] !== "0";
}

/** 503 with the seconds a client should wait before retrying. */
function unavailable(message: string, retryAfterS = 5): ApiError {
  return new ApiError(503, message, "service_unavailable", null, null, { "Retry-After": String(retryAfterS) });
}

/** Read and drop the rest of a request body. */
function discardBody(req: FastifyRequest["raw"]): Promise<void> {
  if (req.readableEnded || req.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    req.once("end", resolve);
    req.once("close", resolve);
    req.once("error", () => resolve());
    req.resume();
  });
}

/** Any error → the status and OpenAI-shaped body a client should see (never a stack trace). */
function toApiError(err: Error & { statusCode?: number; code?: string }, bodyLimit: number): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof SamplingParamsError) return badParam(err.param, err.message);
  if (err instanceof EngineRequestError) {
    if (err.kind === "AbortError") return new ApiError(499, err.message, "aborted");
    return new ApiError(400, err.message);
  }
  if (err instanceof TokenizerBusyError) return unavailable(err.message, 1);
  if (err instanceof EngineDeadError) return unavailable(err.message);
  if (err.statusCode === 413)
    return new ApiError(
      413,
      `the request body is larger than the limit of ${bodyLimit} bytes`,
      "invalid_request_error",
      "body",
      "body_too_large",
    );
  if (err.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE")
    return new ApiError(415, "send the request body as JSON (Content-Type: application/json)", "invalid_request_error", "body");
  if (err.statusCode === 400 && (err instanceof SyntaxError || err.code?.startsWith("FST_ERR_CTP"))) {
    return new ApiError(400, `the request body is not valid JSON: ${err.message}`, "invalid_request_error", "body", "invalid_json");
  }
  if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) return new ApiError(err.statusCode, err.message);
  return new ApiError(500, "internal server error; the server log has the details", "internal_server_error");
}

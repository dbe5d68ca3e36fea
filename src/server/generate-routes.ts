/**
 * The generation routes: /v1/chat/completions and /v1/completions, streamed (SSE) or whole, over the
 * checks and helpers buildApp owns (passed in as a context).
 */
import type { ServerResponse } from "node:http";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { TokenLogprob } from "../backend/sampling.js";
import type { RequestOutput } from "../engine/engine-core.js";
import type { SamplingParams } from "../engine/sampling-params.js";
import type { Tokenizer } from "../tokenizer/tokenizer.js";
import type { ApiError } from "./errors.js";
import type { OffThreadTokenizer } from "./off-thread-tokenizer.js";
import type { Logprobs } from "./openai-format.js";
import { usage } from "./openai-format.js";
import type { OutputStreams } from "./output-streams.js";
import { type ChatRequest, type CommonRequest, type CompletionRequest, parseChatRequest, parseCompletionRequest } from "./protocol.js";
import { ChunkWriter, endEventStream, openEventStream } from "./sse.js";

export interface GenerateContext {
  modelName: string;
  tokenizer: Tokenizer;
  tokenize: OffThreadTokenizer;
  outputs: OutputStreams;
  boundChars(chars: number, where: string): void;
  encodeChat(
    messages: ChatRequest["messages"],
    c: Pick<ChatRequest, "addGenerationPrompt" | "tools" | "chatTemplateKwargs">,
  ): Promise<number[]>;
  checkPrompt(ids: number[], where: string): void;
  checkLogitBias(req: CommonRequest): void;
  checkModel(model: string | undefined): void;
  admit(numSequences: number): void;
  samplingFor(req: CommonRequest, promptLen: number, where: string): SamplingParams;
  watchDisconnect(reply: FastifyReply, ac: AbortController): void;
  interruption(ac: AbortController): ApiError | undefined;
  chatLogprobs(lps: Logprobs, ids: number[]): unknown;
  completionLogprobs(lps: Logprobs, ids: number[], offset0: number): unknown;
  streamError(raw: ServerResponse, err: unknown): void;
}

interface Choice {
  index: number;
  text: string;
  tokenIds: number[];
  logprobs: { logprob: number; top?: TokenLogprob[] }[];
  finishReason: string | null;
  stopReason: number | string | null;
}

function accumulate(c: Choice, out: RequestOutput): void {
  c.text += out.newText;
  c.tokenIds.push(...out.newTokenIds);
  c.logprobs.push(...out.newLogprobs);
  if (out.finished) {
    c.finishReason = out.finishReason;
    c.stopReason = out.stopReason;
  }
}

export function registerGenerateRoutes(app: FastifyInstance, ctx: GenerateContext): void {
  const {
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
  } = ctx;

  app.post("/v1/chat/completions", async (request: FastifyRequest, reply: FastifyReply) => {
    // Watched from the start: a client that leaves while its prompt is tokenized must not leave a generation behind.
    const ac = new AbortController();
    watchDisconnect(reply, ac);
    const req = parseChatRequest(request.body);
    checkModel(req.model);
    checkLogitBias(req);
    const prompt = await encodeChat(req.messages, req);
    checkPrompt(prompt, "messages");
    const sampling = samplingFor(req, prompt.length, "messages");
    admit(sampling.n);
    const launched = outputs.launch([prompt], [sampling], "chatcmpl", ac);
    const id = launched.id;
    const createdAt = Math.floor(Date.now() / 1000);
    let completionTokens = 0;
    let cached = 0;
    if (req.stream) {
      const raw = openEventStream(reply);
      const chunks = new ChunkWriter(raw, { id, object: "chat.completion.chunk", created: createdAt, model: modelName }, req.includeUsage);
      try {
        for (let i = 0; i < sampling.n; i++)
          chunks.choice({ index: i, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null });
        await outputs.forEachOutput(launched, sampling.n, (index, _p, out) => {
          completionTokens += out.newTokenIds.length;
          cached = out.numCachedTokens;
          const lp = req.logprobs === null ? null : chatLogprobs(out.newLogprobs, out.newTokenIds);
          if (out.newText === "" && !out.finished && lp === null) return;
          const delta = out.newText === "" && out.finished ? {} : { content: out.newText };
          chunks.choice(
            out.finished
              ? { index, delta, logprobs: lp, finish_reason: out.finishReason, stop_reason: out.stopReason }
              : { index, delta, logprobs: lp, finish_reason: null },
          );
        });
        if (req.includeUsage) chunks.usage(usage(prompt.length, completionTokens, cached));
        endEventStream(raw);
      } catch (err) {
        streamError(raw, interruption(ac) ?? err);
      }
      return reply;
    }
    const choices: Choice[] = Array.from({ length: sampling.n }, (_, index) => ({
      index,
      text: "",
      tokenIds: [],
      logprobs: [],
      finishReason: null,
      stopReason: null,
    }));
    try {
      await outputs.forEachOutput(launched, sampling.n, (index, _p, out) => {
        accumulate(choices[index]!, out);
        cached = out.numCachedTokens;
      });
    } catch (err) {
      throw interruption(ac) ?? err;
    }
    completionTokens = choices.reduce((n, c) => n + c.tokenIds.length, 0);
    return {
      id,
      object: "chat.completion",
      created: createdAt,
      model: modelName,
      choices: choices.map((c) => ({
        index: c.index,
        message: { role: "assistant", content: c.text, tool_calls: [] },
        logprobs: req.logprobs === null ? null : chatLogprobs(c.logprobs, c.tokenIds),
        finish_reason: c.finishReason,
        stop_reason: c.stopReason,
      })),
      usage: usage(prompt.length, completionTokens, cached),
    };
  });

  app.post("/v1/completions", async (request: FastifyRequest, reply: FastifyReply) => {
    const ac = new AbortController();
    watchDisconnect(reply, ac);
    const req: CompletionRequest = parseCompletionRequest(request.body);
    checkModel(req.model);
    checkLogitBias(req);
    // Each prompt must fit alone; the batch's total size decides where it is tokenized.
    const where = (i: number) => (req.prompts.length > 1 ? `prompt[${i}]` : "prompt");
    req.prompts.forEach((p, i) => typeof p === "string" && boundChars(p.length, where(i)));
    const encoded = await tokenize.encodeAll(
      req.prompts.filter((p): p is string => typeof p === "string"),
      true,
    );
    const prompts = req.prompts.map((p) => (typeof p === "string" ? encoded.shift()! : p));
    prompts.forEach((ids, i) => checkPrompt(ids, where(i)));
    const samplings = prompts.map((p, i) => samplingFor(req, p.length, where(i)));
    const n = samplings[0]!.n;
    admit(prompts.length * n);
    const launched = outputs.launch(prompts, samplings, "cmpl", ac);
    const id = launched.id;
    const createdAt = Math.floor(Date.now() / 1000);
    const promptTokens = prompts.reduce((s, p) => s + p.length, 0);
    const echoText = (i: number) =>
      req.echo ? (typeof req.prompts[i] === "string" ? (req.prompts[i] as string) : tokenizer.decode(prompts[i]!)) : "";
    const cachedBy = new Map<number, number>();
    if (req.stream) {
      const raw = openEventStream(reply);
      const chunks = new ChunkWriter(raw, { id, object: "text_completion", created: createdAt, model: modelName }, req.includeUsage);
      const offsets = new Map<number, number>();
      let completionTokens = 0;
      try {
        if (req.echo) {
          for (let p = 0; p < prompts.length; p++)
            for (let i = 0; i < n; i++) {
              offsets.set(p * n + i, echoText(p).length);
              chunks.choice({ index: p * n + i, text: echoText(p), logprobs: null, finish_reason: null });
            }
        }
        await outputs.forEachOutput(launched, n, (index, p, out) => {
          completionTokens += out.newTokenIds.length;
          cachedBy.set(p, out.numCachedTokens);
          let lp = null;
          if (req.logprobs !== null) {
            const offset = offsets.get(index) ?? 0;
            lp = completionLogprobs(out.newLogprobs, out.newTokenIds, offset);
            offsets.set(index, offset + out.newText.length);
          }
          if (out.newText === "" && !out.finished && lp === null) return;
          chunks.choice(
            out.finished
              ? { index, text: out.newText, logprobs: lp, finish_reason: out.finishReason, stop_reason: out.stopReason }
              : { index, text: out.newText, logprobs: lp, finish_reason: null },
          );
        });
        const cached = [...cachedBy.values()].reduce((a, b) => a + b, 0);
        if (req.includeUsage) chunks.usage(usage(promptTokens, completionTokens, cached));
        endEventStream(raw);
      } catch (err) {
        streamError(raw, interruption(ac) ?? err);
      }
      return reply;
    }
    const choices: Choice[] = [];
    for (let p = 0; p < prompts.length; p++)
      for (let i = 0; i < n; i++)
        choices.push({ index: p * n + i, text: "", tokenIds: [], logprobs: [], finishReason: null, stopReason: null });
    try {
      await outputs.forEachOutput(launched, n, (index, p, out) => {
        accumulate(choices[index]!, out);
        cachedBy.set(p, out.numCachedTokens);
      });
    } catch (err) {
      throw interruption(ac) ?? err;
    }
    const cached = [...cachedBy.values()].reduce((a, b) => a + b, 0);
    return {
      id,
      object: "text_completion",
      created: createdAt,
      model: modelName,
      choices: choices.map((c) => {
        const p = Math.floor(c.index / n);
        const echo = echoText(p);
        return {
          index: c.index,
          text: echo + c.text,
          logprobs: req.logprobs === null ? null : completionLogprobs(c.logprobs, c.tokenIds, echo.length),
          finish_reason: c.finishReason,
          stop_reason: c.stopReason,
        };
      }),
      usage: usage(
        promptTokens,
        choices.reduce((s, c) => s + c.tokenIds.length, 0),
        cached,
      ),
    };
  });
}

/**
 * OpenAI request bodies → what the engine takes: every field type-checked and
 * named in the error when wrong; vLLM's extensions (top_k, min_p,
 * repetition_penalty, stop_token_ids, ignore_eos, min_tokens, ...) accepted.
 */
import type { SamplingParams } from "../engine/sampling-params.js";
import type { ChatMessage } from "../tokenizer/chat-template.js";
import { badParam } from "./errors.js";

type Body = Record<string, unknown>;

export interface CommonRequest {
  model: string | undefined;
  sampling: Partial<SamplingParams>;
  /** max_tokens as given (undefined: fill the context, as vLLM does). */
  maxTokens: number | undefined;
  stream: boolean;
  includeUsage: boolean;
  /** Number of top alternatives per token; null: no logprobs. */
  logprobs: number | null;
}

export interface ChatRequest extends CommonRequest {
  messages: ChatMessage[];
  addGenerationPrompt: boolean;
  continueFinalMessage: boolean;
  tools: unknown;
  chatTemplateKwargs: Record<string, unknown>;
}

export interface CompletionRequest extends CommonRequest {
  /** One entry per prompt: text or token ids. */
  prompts: (string | number[])[];
  echo: boolean;
}

const typeName = (v: unknown) => (v === null ? "null" : Array.isArray(v) ? "array" : typeof v);

function optional<T>(body: Body, key: string, check: (v: unknown) => v is T, expected: string): T | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (!check(v)) throw badParam(key, `${key} must be ${expected}, got ${typeName(v)} ${JSON.stringify(v)?.slice(0, 80)}`);
  return v;
}

const isNumber = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);
const isInt = (v: unknown): v is number => Number.isInteger(v);
const isBool = (v: unknown): v is boolean => typeof v === "boolean";
const isString = (v: unknown): v is string => typeof v === "string";
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const isIntArray = (v: unknown): v is number[] => Array.isArray(v) && v.every(isInt);
const isStringOrStrings = (v: unknown): v is string | string[] => isString(v) || (Array.isArray(v) && v.every(isString));

export function requireObject(body: unknown): Body {
  if (!isObject(body)) throw badParam("body", `the request body must be a JSON object, got ${typeName(body)}`);
  return body;
}

function common(body: Body, maxTokensKeys: string[]): CommonRequest {
  let maxTokens: number | undefined;
  for (const key of maxTokensKeys) {
    const v = optional(body, key, isInt, "an integer");
    if (v !== undefined) {
      if (v < 1) throw badParam(key, `${key} must be at least 1, got ${v}`);
      maxTokens ??= v;
    }
  }
  const stop = optional(body, "stop", isStringOrStrings, "a string or a list of strings");
  const logitBias = optional(body, "logit_bias", isObject, "an object mapping token ids to biases");
  if (logitBias) {
    for (const [k, v] of Object.entries(logitBias)) {
      if (!/^\d+$/.test(k) || !isNumber(v))
        throw badParam("logit_bias", `logit_bias must map token ids to numbers; got "${k}": ${JSON.stringify(v)}`);
    }
  }
  const streamOptions = optional(body, "stream_options", isObject, "an object");
  const stream = optional(body, "stream", isBool, "a boolean") ?? false;
  if (streamOptions && !stream) throw badParam("stream_options", "stream_options is only allowed when stream is true");
  const includeUsage = streamOptions ? (optional(streamOptions, "include_usage", isBool, "a boolean") ?? false) : false;
  optional(body, "user", isString, "a string");
  const model = optional(body, "model", isString, "a string");
  const sampling: Partial<SamplingParams> = {
    n: optional(body, "n", isInt, "an integer"),
    temperature: optional(body, "temperature", isNumber, "a number"),
    topP: optional(body, "top_p", isNumber, "a number"),
    topK: optional(body, "top_k", isInt, "an integer"),
    minP: optional(body, "min_p", isNumber, "a number"),
    seed: optional(body, "seed", isInt, "an integer"),
    presencePenalty: optional(body, "presence_penalty", isNumber, "a number"),
    frequencyPenalty: optional(body, "frequency_penalty", isNumber, "a number"),
    repetitionPenalty: optional(body, "repetition_penalty", isNumber, "a number"),
    logitBias: logitBias as Record<number, number> | undefined,
    stop: stop === undefined ? undefined : typeof stop === "string" ? [stop] : stop,
    stopTokenIds: optional(body, "stop_token_ids", isIntArray, "a list of token ids"),
    ignoreEos: optional(body, "ignore_eos", isBool, "a boolean"),
    minTokens: optional(body, "min_tokens", isInt, "an integer"),
    skipSpecialTokens: optional(body, "skip_special_tokens", isBool, "a boolean"),
    includeStopStrInOutput: optional(body, "include_stop_str_in_output", isBool, "a boolean"),
  };
  return { model, sampling, maxTokens, stream, includeUsage, logprobs: null };
}

function messageContent(m: Record<string, unknown>, i: number): string {
  const c = m.content;
  if (c === undefined || c === null) return "";
  if (isString(c)) return c;
  if (Array.isArray(c)) {
    return c
      .map((part, j) => {
        if (!isObject(part) || part.type !== "text" || !isString(part.text)) {
          throw badParam(
            `messages[${i}].content[${j}]`,
            `messages[${i}].content[${j}] must be {"type": "text", "text": "..."}; this model takes text only`,
          );
        }
        return part.text;
      })
      .join("");
  }
  throw badParam(`messages[${i}].content`, `messages[${i}].content must be a string or a list of text parts, got ${typeName(c)}`);
}

export function parseChatRequest(raw: unknown): ChatRequest {
  const body = requireObject(raw);
  const req = common(body, ["max_completion_tokens", "max_tokens"]);
  const messages = body.messages;
  if (!Array.isArray(messages) || messages.length === 0) {
    throw badParam("messages", `messages must be a non-empty list of {"role", "content"} objects, got ${typeName(messages)}`);
  }
  const parsed: ChatMessage[] = messages.map((m, i) => {
    if (!isObject(m) || !isString(m.role)) throw badParam(`messages[${i}]`, `messages[${i}] must be an object with a string "role"`);
    return { ...m, role: m.role, content: messageContent(m, i) };
  });
  const wantLogprobs = optional(body, "logprobs", isBool, "a boolean") ?? false;
  const top = optional(body, "top_logprobs", isInt, "an integer");
  if (top !== undefined && (top < 0 || top > 20)) throw badParam("top_logprobs", `top_logprobs must be in [0, 20], got ${top}`);
  if (top !== undefined && top > 0 && !wantLogprobs) throw badParam("top_logprobs", "top_logprobs needs logprobs: true");
  req.logprobs = wantLogprobs ? (top ?? 0) : null;
  const continueFinalMessage = optional(body, "continue_final_message", isBool, "a boolean") ?? false;
  return {
    ...req,
    messages: parsed,
    addGenerationPrompt: optional(body, "add_generation_prompt", isBool, "a boolean") ?? !continueFinalMessage,
    continueFinalMessage,
    tools: body.tools ?? undefined,
    chatTemplateKwargs: optional(body, "chat_template_kwargs", isObject, "an object") ?? {},
  };
}

export function parseCompletionRequest(raw: unknown): CompletionRequest {
  const body = requireObject(raw);
  const req = common(body, ["max_tokens"]);
  const p = body.prompt;
  let prompts: (string | number[])[];
  if (isString(p)) prompts = [p];
  else if (isIntArray(p) && p.length > 0) prompts = [p];
  else if (Array.isArray(p) && p.length > 0 && p.every((x) => isString(x))) prompts = p as string[];
  else if (Array.isArray(p) && p.length > 0 && p.every((x) => isIntArray(x) && x.length > 0)) prompts = p as number[][];
  else {
    throw badParam("prompt", `prompt must be a string, a list of strings, a list of token ids or a list of such lists, got ${typeName(p)}`);
  }
  if (req.stream === false && req.includeUsage) req.includeUsage = false;
  const logprobs = optional(body, "logprobs", isInt, "an integer");
  if (logprobs !== undefined && (logprobs < 0 || logprobs > 20)) throw badParam("logprobs", `logprobs must be in [0, 20], got ${logprobs}`);
  req.logprobs = logprobs ?? null;
  if (optional(body, "suffix", isString, "a string")) throw badParam("suffix", "suffix is not supported");
  if (optional(body, "best_of", isInt, "an integer") !== undefined && body.best_of !== req.sampling.n && body.best_of !== 1) {
    throw badParam("best_of", "best_of is not supported; use n");
  }
  return { ...req, prompts, echo: optional(body, "echo", isBool, "a boolean") ?? false };
}

export function parseTokenizeRequest(raw: unknown): {
  prompt?: string;
  messages?: ChatMessage[];
  addSpecialTokens: boolean;
  addGenerationPrompt: boolean;
} {
  const body = requireObject(raw);
  const addSpecialTokens = optional(body, "add_special_tokens", isBool, "a boolean") ?? true;
  if (body.messages !== undefined) {
    const chat = parseChatRequest({ ...body, messages: body.messages });
    return { messages: chat.messages, addSpecialTokens: false, addGenerationPrompt: chat.addGenerationPrompt };
  }
  const prompt = body.prompt;
  if (!isString(prompt)) throw badParam("prompt", `prompt must be a string (or give messages), got ${typeName(prompt)}`);
  return { prompt, addSpecialTokens, addGenerationPrompt: false };
}

export function parseDetokenizeRequest(raw: unknown): number[] {
  const body = requireObject(raw);
  if (!isIntArray(body.tokens)) throw badParam("tokens", `tokens must be a list of token ids, got ${typeName(body.tokens)}`);
  return body.tokens;
}

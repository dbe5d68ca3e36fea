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

/** A short, safe rendering of a value for an error message: never throws, never long. */
export function preview(v: unknown, max = 80): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(v);
  } catch {
    text = undefined; // too deep or cyclic: the type alone says enough
  }
  if (text === undefined) return typeName(v);
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

function optional<T>(body: Body, key: string, check: (v: unknown) => v is T, expected: string): T | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (!check(v)) throw badParam(key, `${key} must be ${expected}, got ${typeName(v)} ${preview(v)}`);
  return v;
}

const isNumber = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);
const isInt = (v: unknown): v is number => Number.isInteger(v);
const isBool = (v: unknown): v is boolean => typeof v === "boolean";
const isString = (v: unknown): v is string => typeof v === "string";
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const isIntArray = (v: unknown): v is number[] => Array.isArray(v) && v.every(isInt);
// vLLM takes any 64-bit seed, signed or not (a negative one is its two's complement); the sampler mixes all of its bits.
const isSeed = (v: unknown): v is number => isInt(v) && v >= -(2 ** 63) && v < 2 ** 64;
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
        throw badParam("logit_bias", `logit_bias must map token ids to numbers; got ${preview(k)}: ${preview(v)}`);
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
    seed: optional(body, "seed", isSeed, "an integer in [-2^63, 2^64)"),
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

/** Roles the chat templates know; "developer" is OpenAI's newer name for "system". */
const ROLES = ["system", "developer", "user", "assistant", "tool"];

function parseMessage(m: unknown, i: number): ChatMessage {
  const where = `messages[${i}]`;
  if (!isObject(m)) throw badParam(where, `${where} must be an object with a "role" and a "content", got ${typeName(m)}`);
  if (!isString(m.role) || !ROLES.includes(m.role)) {
    throw badParam(`${where}.role`, `${where}.role must be one of ${ROLES.map((r) => `"${r}"`).join(", ")}, got ${preview(m.role)}`);
  }
  if (m.tool_calls !== undefined && m.tool_calls !== null) {
    if (m.role !== "assistant") throw badParam(`${where}.tool_calls`, `${where}.tool_calls is allowed on assistant messages only`);
    checkToolCalls(m.tool_calls, `${where}.tool_calls`);
  }
  for (const key of ["name", "tool_call_id"]) {
    if (m[key] !== undefined && m[key] !== null && !isString(m[key])) {
      throw badParam(`${where}.${key}`, `${where}.${key} must be a string, got ${typeName(m[key])}`);
    }
  }
  return { ...m, role: m.role === "developer" ? "system" : m.role, content: messageContent(m, i) };
}

/** An assistant turn's earlier calls: `[{id, type: "function", function: {name, arguments}}]`, as OpenAI returns them. */
function checkToolCalls(calls: unknown, where: string): void {
  // OpenAI sends arguments as a JSON string; templates also take them as an object, as Transformers does.
  const call = `{"id": string, "type": "function", "function": {"name": string, "arguments": JSON string or object}}`;
  if (!Array.isArray(calls)) throw badParam(where, `${where} must be a list of ${call}, got ${typeName(calls)}`);
  calls.forEach((c, j) => {
    const at = `${where}[${j}]`;
    const f = isObject(c) ? c.function : undefined;
    const ok =
      isObject(c) &&
      (c.id === undefined || isString(c.id)) &&
      c.type === "function" &&
      isObject(f) &&
      isString(f.name) &&
      f.name.length > 0 &&
      (isString(f.arguments) || isObject(f.arguments));
    if (!ok) throw badParam(at, `${at} must be ${call}, got ${preview(c)}`);
  });
}

const FUNCTION_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

/** `tools`: `[{type: "function", function: {name, description?, parameters?, strict?}}]`; returns the function names. */
function checkTools(tools: unknown): string[] {
  const shape = `a list of {"type": "function", "function": {"name", "description", "parameters"}}`;
  if (!Array.isArray(tools)) throw badParam("tools", `tools must be ${shape}, got ${typeName(tools)}`);
  return tools.map((t, i) => {
    const at = `tools[${i}]`;
    if (!isObject(t) || t.type !== "function" || !isObject(t.function))
      throw badParam(at, `${at} must be {"type": "function", "function": {...}}, got ${preview(t)}`);
    const f = t.function;
    if (!isString(f.name) || !FUNCTION_NAME.test(f.name)) {
      throw badParam(`${at}.function.name`, `${at}.function.name must be 1 to 64 letters, digits, "_", "." or "-", got ${preview(f.name)}`);
    }
    if (f.description !== undefined && !isString(f.description))
      throw badParam(`${at}.function.description`, `${at}.function.description must be a string`);
    if (f.parameters !== undefined && !isObject(f.parameters)) {
      throw badParam(`${at}.function.parameters`, `${at}.function.parameters must be a JSON Schema object, got ${typeName(f.parameters)}`);
    }
    if (f.strict !== undefined && f.strict !== null && !isBool(f.strict))
      throw badParam(`${at}.function.strict`, `${at}.function.strict must be a boolean`);
    return f.name;
  });
}

function checkToolChoice(choice: unknown, names: string[]): void {
  if (choice === undefined || choice === null) return;
  const allowed = `"none", "auto", "required" or {"type": "function", "function": {"name": ...}}`;
  if (isString(choice)) {
    if (!["none", "auto", "required"].includes(choice))
      throw badParam("tool_choice", `tool_choice must be ${allowed}, got ${preview(choice)}`);
    if (choice === "required" && names.length === 0) throw badParam("tool_choice", `tool_choice "required" needs tools`);
    return;
  }
  const f = isObject(choice) ? choice.function : undefined;
  if (!isObject(choice) || choice.type !== "function" || !isObject(f) || !isString(f.name)) {
    throw badParam("tool_choice", `tool_choice must be ${allowed}, got ${preview(choice)}`);
  }
  if (!names.includes(f.name)) throw badParam("tool_choice", `tool_choice names the function "${f.name}", which is not among the tools`);
}

/**
 * Tool calling and structured output are not built yet: a request that asks
 * for them gets a 400 saying so, never text that silently ignores the ask.
 * Each field is checked for its shape first, so a malformed one says what is wrong with it.
 */
function rejectUnsupported(body: Body, chat: boolean): void {
  const notYet = (field: string, what: string) =>
    badParam(field, `${field}: ${what} is not supported by this server yet; send the request without ${field}`);
  if (!chat) {
    for (const field of ["tools", "tool_choice", "functions"]) {
      if (body[field] !== undefined && body[field] !== null)
        throw badParam(field, `${field} belongs to /v1/chat/completions, not /v1/completions`);
    }
  } else {
    const names = body.tools === undefined || body.tools === null ? [] : checkTools(body.tools);
    checkToolChoice(body.tool_choice, names);
    optional(body, "parallel_tool_calls", isBool, "a boolean");
    if (body.functions !== undefined && body.functions !== null) {
      if (!Array.isArray(body.functions) || !body.functions.every((f) => isObject(f) && isString(f.name))) {
        throw badParam("functions", `functions must be a list of {"name", "description", "parameters"}, got ${preview(body.functions)}`);
      }
      throw notYet("functions", "function calling");
    }
    if (body.function_call !== undefined && body.function_call !== null) throw notYet("function_call", "function calling");
    if (names.length > 0) throw notYet("tools", "tool calling");
  }
  const rf = body.response_format;
  if (rf !== undefined && rf !== null) {
    const types = ["text", "json_object", "json_schema"];
    if (!isObject(rf) || !isString(rf.type) || !types.includes(rf.type)) {
      throw badParam(
        "response_format",
        `response_format must be {"type": "text" | "json_object" | "json_schema", ...}, got ${preview(rf)}`,
      );
    }
    if (rf.type === "json_schema" && (!isObject(rf.json_schema) || !isString(rf.json_schema.name))) {
      throw badParam("response_format", `response_format of type "json_schema" needs "json_schema": {"name": string, "schema": {...}}`);
    }
    if (rf.type !== "text") throw notYet("response_format", `structured output (${rf.type})`);
  }
  for (const field of ["guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend", "structured_outputs"]) {
    if (body[field] !== undefined && body[field] !== null) throw notYet(field, "structured output");
  }
}

/** Template variables the server sets itself: kwargs may not override them (`tools` would bypass the tools check). */
const RESERVED_KWARGS = ["messages", "tools", "add_generation_prompt", "bos_token", "eos_token", "pad_token", "unk_token"];

function templateKwargs(body: Body): Record<string, unknown> {
  const kwargs = optional(body, "chat_template_kwargs", isObject, "an object") ?? {};
  const reserved = Object.keys(kwargs).find((k) => RESERVED_KWARGS.includes(k));
  if (reserved !== undefined) {
    throw badParam("chat_template_kwargs", `chat_template_kwargs may not set "${reserved}" (reserved: ${RESERVED_KWARGS.join(", ")})`);
  }
  return kwargs;
}

export function parseChatRequest(raw: unknown): ChatRequest {
  const body = requireObject(raw);
  const req = common(body, ["max_completion_tokens", "max_tokens"]);
  const messages = body.messages;
  if (!Array.isArray(messages) || messages.length === 0) {
    throw badParam("messages", `messages must be a non-empty list of {"role", "content"} objects, got ${typeName(messages)}`);
  }
  const parsed: ChatMessage[] = messages.map(parseMessage);
  rejectUnsupported(body, true);
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
    tools: undefined,
    chatTemplateKwargs: templateKwargs(body),
  };
}

export function parseCompletionRequest(raw: unknown): CompletionRequest {
  const body = requireObject(raw);
  const req = common(body, ["max_tokens"]);
  rejectUnsupported(body, false);
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

/** The pieces of OpenAI's response bodies that both endpoints build: usage and the two logprobs shapes. */
import type { TokenLogprob } from "../backend/sampling.js";

export type Logprobs = { logprob: number; top?: TokenLogprob[] }[];

export function usage(promptTokens: number, completionTokens: number, cached: number) {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    ...(cached > 0 ? { prompt_tokens_details: { cached_tokens: cached } } : {}),
  };
}

/** Chat's `logprobs.content`: each token with its text, bytes and top alternatives. */
export function chatLogprobs(lps: Logprobs, ids: number[], tokenText: (id: number) => string) {
  const entry = (token: number, logprob: number) => {
    const text = tokenText(token);
    return { token: text, logprob: Math.max(logprob, -9999), bytes: [...Buffer.from(text, "utf8")] };
  };
  return {
    content: lps.map((lp, k) => ({ ...entry(ids[k]!, lp.logprob), top_logprobs: (lp.top ?? []).map((t) => entry(t.token, t.logprob)) })),
  };
}

/** Completions' `logprobs`: parallel lists of tokens, logprobs, top alternatives and text offsets. */
export function completionLogprobs(lps: Logprobs, ids: number[], offset0: number, tokenText: (id: number) => string) {
  const tokens = ids.map(tokenText);
  const textOffset: number[] = [];
  let off = offset0;
  for (const t of tokens) {
    textOffset.push(off);
    off += t.length;
  }
  return {
    tokens,
    token_logprobs: lps.map((l) => l.logprob),
    top_logprobs: lps.map((l) => (l.top ? Object.fromEntries(l.top.map((t) => [tokenText(t.token), t.logprob])) : null)),
    text_offset: textOffset,
  };
}

import type { SamplingRowParams } from "../backend/sampling.js";

/** Per-request generation settings, with vLLM's names (camelCase) and meanings. */
export interface SamplingParams {
  /** Completions per prompt; they share the prompt's cached blocks. */
  n: number;
  /** 0 = greedy. */
  temperature: number;
  /** 0 = no top-k truncation. */
  topK: number;
  topP: number;
  minP: number;
  /** Per-request seed: the same seed gives the same tokens whatever else is in the batch. */
  seed: number | null;
  /** > 1 discourages tokens already in the prompt or output (divides positive logits, multiplies negative ones). */
  repetitionPenalty: number;
  /** Subtracted once from the logit of every token already generated. */
  presencePenalty: number;
  /** Subtracted per occurrence from the logit of tokens already generated. */
  frequencyPenalty: number;
  /** Added to the logits of the given token ids. */
  logitBias: Record<number, number>;
  maxTokens: number;
  /** End-of-sequence and stop tokens are ignored until this many tokens are generated. */
  minTokens: number;
  stop: string[];
  stopTokenIds: number[];
  ignoreEos: boolean;
  includeStopStrInOutput: boolean;
  /** Number of top log-probabilities to return per token (0: only the sampled token's); null: none. */
  logprobs: number | null;
  skipSpecialTokens: boolean;
}

export const DEFAULT_SAMPLING: Readonly<SamplingParams> = {
  n: 1,
  temperature: 1,
  topK: 0,
  topP: 1,
  minP: 0,
  seed: null,
  repetitionPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
  logitBias: {},
  maxTokens: 16,
  minTokens: 0,
  stop: [],
  stopTokenIds: [],
  ignoreEos: false,
  includeStopStrInOutput: false,
  logprobs: null,
  skipSpecialTokens: true,
};

export class SamplingParamsError extends Error {
  constructor(
    readonly param: string,
    message: string,
    /** The accepted range, e.g. "a number >= 0". */
    readonly expected = "",
  ) {
    super(message);
    this.name = "SamplingParamsError";
  }
}

/** Fill defaults (the model's generation_config.json, then vLLM's) and check every field, naming the bad one. */
export function resolveSamplingParams(given: Partial<SamplingParams>, modelDefaults: Partial<SamplingParams> = {}): SamplingParams {
  const p: SamplingParams = { ...DEFAULT_SAMPLING, ...stripUndefined(modelDefaults), ...stripUndefined(given) };
  if (p.topK === -1) p.topK = 0; // vLLM's spelling of "disabled"
  const check = (ok: boolean, param: string, expected: string, value: unknown) => {
    if (!ok) throw new SamplingParamsError(param, `${param} must be ${expected}, got ${JSON.stringify(value)}`, expected);
  };
  const int = (v: number) => Number.isInteger(v);
  check(int(p.n) && p.n >= 1 && p.n <= 128, "n", "an integer in [1, 128]", p.n);
  check(Number.isFinite(p.temperature) && p.temperature >= 0, "temperature", "a number >= 0", p.temperature);
  check(int(p.topK) && p.topK >= 0, "top_k", "an integer >= 0 (0 or -1 disables it)", p.topK);
  check(Number.isFinite(p.topP) && p.topP > 0 && p.topP <= 1, "top_p", "a number in (0, 1]", p.topP);
  check(Number.isFinite(p.minP) && p.minP >= 0 && p.minP <= 1, "min_p", "a number in [0, 1]", p.minP);
  check(p.seed === null || int(p.seed), "seed", "an integer", p.seed);
  check(Number.isFinite(p.repetitionPenalty) && p.repetitionPenalty > 0, "repetition_penalty", "a number > 0", p.repetitionPenalty);
  check(
    Number.isFinite(p.presencePenalty) && Math.abs(p.presencePenalty) <= 2,
    "presence_penalty",
    "a number in [-2, 2]",
    p.presencePenalty,
  );
  check(
    Number.isFinite(p.frequencyPenalty) && Math.abs(p.frequencyPenalty) <= 2,
    "frequency_penalty",
    "a number in [-2, 2]",
    p.frequencyPenalty,
  );
  check(int(p.maxTokens) && p.maxTokens >= 1, "max_tokens", "an integer >= 1", p.maxTokens);
  check(
    int(p.minTokens) && p.minTokens >= 0 && p.minTokens <= p.maxTokens,
    "min_tokens",
    `an integer in [0, max_tokens=${p.maxTokens}]`,
    p.minTokens,
  );
  check(Array.isArray(p.stop) && p.stop.every((s) => typeof s === "string" && s.length > 0), "stop", "a list of non-empty strings", p.stop);
  check(
    Array.isArray(p.stopTokenIds) && p.stopTokenIds.every((t) => int(t) && t >= 0),
    "stop_token_ids",
    "a list of token ids",
    p.stopTokenIds,
  );
  check(p.logprobs === null || (int(p.logprobs) && p.logprobs >= 0 && p.logprobs <= 20), "logprobs", "an integer in [0, 20]", p.logprobs);
  for (const [k, v] of Object.entries(p.logitBias)) {
    check(
      int(Number(k)) && Number(k) >= 0 && Number.isFinite(v) && Math.abs(v) <= 100,
      "logit_bias",
      "a map of token id to a bias in [-100, 100]",
      { [k]: v },
    );
  }
  return p;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** The sampling op's view of a request: its settings as plain numbers, its random key, and what min_tokens masks. */
export function samplingRowParams(p: SamplingParams, key: number, eosTokenIds: readonly number[]): SamplingRowParams {
  return {
    temperature: p.temperature,
    topK: p.topK,
    topP: p.topP,
    minP: p.minP,
    repetitionPenalty: p.repetitionPenalty,
    presencePenalty: p.presencePenalty,
    frequencyPenalty: p.frequencyPenalty,
    logitBias: Object.entries(p.logitBias).map(([id, bias]) => [Number(id), bias] as const),
    minTokens: p.minTokens,
    minTokensBanned: [...p.stopTokenIds, ...(p.ignoreEos ? [] : eosTokenIds)],
    logprobs: p.logprobs,
    key: key >>> 0,
  };
}

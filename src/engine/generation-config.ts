import { existsSync } from "node:fs";
import { join } from "node:path";
import { resolveSamplingParams, type SamplingParams, SamplingParamsError } from "./sampling-params.js";
import { readJsonFile } from "../formats/regular-file.js";
import { ConfigError, tokenIdList } from "../model/config.js";

export interface GenerationDefaults {
  /** Sampling defaults the model's authors chose (temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens). */
  sampling: Partial<SamplingParams>;
  eosTokenIds: number[];
}

/** generation_config.json's keys for the sampling fields it may set, by the request validator's parameter name. */
const KEYS: Record<string, string> = {
  temperature: "temperature",
  top_p: "top_p",
  top_k: "top_k",
  min_p: "min_p",
  repetition_penalty: "repetition_penalty",
  max_tokens: "max_new_tokens",
};

/**
 * Read generation_config.json, if the folder has one; vLLM applies these as the request defaults too.
 * Its values are checked with the request validator's ranges now, at start-up: a bad default would
 * otherwise fail every request that relies on it.
 */
export function loadGenerationDefaults(modelDir: string, opts: { ignoreSampling?: boolean } = {}): GenerationDefaults {
  const path = join(modelDir, "generation_config.json");
  if (!existsSync(path)) return { sampling: {}, eosTokenIds: [] };
  const g = readJsonFile(path, ConfigError);
  if (typeof g !== "object" || g === null || Array.isArray(g)) throw new ConfigError(`${path}: expected a JSON object`);
  const raw = g as Record<string, unknown>;
  // null means "not set"; any other non-number is left for the validator to reject.
  const value = (k: string) => (raw[k] ?? undefined) as number | undefined;
  const sampling: Partial<SamplingParams> = {
    temperature: raw.do_sample === false ? 0 : value("temperature"),
    topP: value("top_p"),
    topK: value("top_k"),
    minP: value("min_p"),
    repetitionPenalty: value("repetition_penalty"),
    maxTokens: value("max_new_tokens"),
  };
  // --generation-config vllm ignores the sampling defaults, so a bad one must not stop the server.
  if (opts.ignoreSampling) return { sampling: {}, eosTokenIds: tokenIdList(raw.eos_token_id) };
  try {
    resolveSamplingParams({}, sampling);
  } catch (err) {
    if (!(err instanceof SamplingParamsError)) throw err;
    const key = KEYS[err.param] ?? err.param;
    throw new ConfigError(`${path}: "${key}" must be ${err.expected}, got ${JSON.stringify(raw[key])}`);
  }
  return { sampling, eosTokenIds: tokenIdList(raw.eos_token_id) };
}

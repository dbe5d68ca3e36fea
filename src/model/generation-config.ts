import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { SamplingParams } from "../engine/sampling-params.js";
import { tokenIdList } from "./config.js";

export interface GenerationDefaults {
  /** Sampling defaults the model's authors chose (temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens). */
  sampling: Partial<SamplingParams>;
  eosTokenIds: number[];
}

/** Read generation_config.json, if the folder has one; vLLM applies these as the request defaults too. */
export function loadGenerationDefaults(modelDir: string): GenerationDefaults {
  const path = join(modelDir, "generation_config.json");
  if (!existsSync(path)) return { sampling: {}, eosTokenIds: [] };
  let g: Record<string, unknown>;
  try {
    g = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`${path}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
  const num = (k: string) => (typeof g[k] === "number" ? (g[k] as number) : undefined);
  const sampling: Partial<SamplingParams> = {
    temperature: g.do_sample === false ? 0 : num("temperature"),
    topP: num("top_p"),
    topK: num("top_k"),
    minP: num("min_p"),
    repetitionPenalty: num("repetition_penalty"),
    maxTokens: num("max_new_tokens"),
  };
  return { sampling, eosTokenIds: tokenIdList(g.eos_token_id) };
}

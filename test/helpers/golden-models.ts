/**
 * Golden logits from Hugging Face transformers: which tiny models they are made on, the prompts,
 * and the fixture format, shared by the three parties of the round trip:
 * - scripts/gpu/make-golden-models.ts writes each model folder with a prompts.json beside it;
 * - scripts/gpu/golden_logits.py runs them in PyTorch and writes test/fixtures/golden/<name>.json;
 * - test/golden-logits.test.ts regenerates the same model from the options recorded in the
 *   fixture and compares Tokamak's CPU forward pass with it.
 * The weights are never stored: tiny-model.ts makes them again, bit for bit, from the options and
 * seed, and the fixture's SHA-256 of each file proves it is the same model.
 */
import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { TinyModelOptions } from "./tiny-model.js";

/** Written into prompts.json and every fixture; bump when either layout changes. */
export const GOLDEN_FORMAT = "tokamak-golden-logits/1";
/** Logit ids kept per step: enough to catch a wrong order among the likely tokens, small enough to read. */
export const GOLDEN_TOP_K = 20;
/** Greedy steps per prompt. */
export const GOLDEN_STEPS = 32;

export interface GoldenModel {
  /** The fixture's file name (without .json) and the model's folder name. */
  name: string;
  /** Everything writeTinyModel needs to make the weights again. */
  options: TinyModelOptions;
}

// A 4096-token vocabulary: the embedding and lm_head stay small (the model folder is ~2 MiB of
// weights), and over fewer tokens greedy steps decided by a near-tie are rarer. f32 weights, so
// PyTorch and Tokamak start from the same numbers; one bf16 model checks the widening matches.
const VOCAB = 4096;
const LLAMA3_ROPE = { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 16 };

export const GOLDEN_MODELS: readonly GoldenModel[] = [
  { name: "llama", options: { arch: "llama", dtype: "f32", vocabSize: VOCAB, seed: 101 } },
  { name: "mistral", options: { arch: "mistral", dtype: "f32", vocabSize: VOCAB, seed: 102 } },
  { name: "qwen2", options: { arch: "qwen2", dtype: "f32", vocabSize: VOCAB, seed: 103 } },
  { name: "qwen3", options: { arch: "qwen3", dtype: "f32", vocabSize: VOCAB, seed: 104 } },
  // Where implementations differ most: llama3 rope scaling (with 16 original positions the blend
  // between scaled and unscaled frequencies falls among the 16 rotary pairs), head_dim ≠
  // hidden/heads, one KV head, tied embeddings.
  {
    name: "llama-rope-llama3-tied",
    options: {
      arch: "llama",
      dtype: "f32",
      vocabSize: VOCAB,
      ropeScaling: LLAMA3_ROPE,
      headDim: 32,
      numKvHeads: 1,
      tieWordEmbeddings: true,
      seed: 105,
    },
  },
  { name: "qwen3-bf16", options: { arch: "qwen3", dtype: "bf16", vocabSize: VOCAB, seed: 106 } },
];

/** Prompts of 1, 6, 23 and 77 tokens: a single token, short ones, and one spanning five 16-token KV blocks. */
export function goldenPrompts(vocabSize: number): number[][] {
  return [1, 6, 23, 77].map((n) => Array.from({ length: n }, (_, i) => (i * 7919 + 31 * n + 17) % vocabSize));
}

/** prompts.json, beside each model folder's config.json: what golden_logits.py runs. */
export interface GoldenPromptsFile {
  format: typeof GOLDEN_FORMAT;
  name: string;
  options: TinyModelOptions;
  top_k: number;
  steps: number;
  prompts: number[][];
}

/** The logits row at one position, summarised. */
export interface GoldenStep {
  /** The top_k largest logits, largest first, and their token ids. */
  top_ids: number[];
  top_values: number[];
  /** Over the whole vocabulary row, computed in f64: a wrong value outside the top-k shows here. */
  mean: number;
  std: number;
  min: number;
  max: number;
  logsumexp: number;
}

export interface GoldenPrompt {
  ids: number[];
  /** The greedy continuation (steps tokens). */
  greedy: number[];
  /**
   * steps[0] is the last prompt position's logits; steps[i] those after ids + greedy[0..i), so every
   * step of the greedy path can be compared teacher-forced even after the two paths part.
   */
  steps: GoldenStep[];
}

/** test/fixtures/golden/<name>.json, as golden_logits.py writes it. */
export interface GoldenFixture {
  format: typeof GOLDEN_FORMAT;
  name: string;
  options: TinyModelOptions;
  /** SHA-256 (hex) of config.json and of every *.safetensors file (and the shard index) of the model run. */
  files: Record<string, string>;
  top_k: number;
  steps: number;
  /** Where the numbers come from: torch/transformers versions, device, dtype, attention implementation. */
  producer: Record<string, unknown>;
  prompts: GoldenPrompt[];
}

/** The files whose hashes tie a fixture to its weights: the config and the weights, not the tokenizer (no text is involved). */
export function isHashedModelFile(name: string): boolean {
  return name === "config.json" || name.endsWith(".safetensors") || name === "model.safetensors.index.json";
}

/** SHA-256 of each hashed file in a model folder, by file name, sorted: the same map golden_logits.py records. */
export function modelFileHashes(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of readdirSync(dir).filter(isHashedModelFile).sort()) {
    out[name] = createHash("sha256")
      .update(readFileSync(join(dir, name)))
      .digest("hex");
  }
  return out;
}

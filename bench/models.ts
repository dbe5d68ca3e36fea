import type { TinyModelOptions } from "../test/helpers/tiny-model.js";

/** The CPU benchmark model: Qwen3-shaped, ~25M parameters of layers plus 78M of (tied) embeddings, bf16. */
export const BENCH_MODEL: TinyModelOptions = {
  arch: "qwen3",
  dtype: "bf16",
  hiddenSize: 512,
  numLayers: 8,
  intermediateSize: 1536,
  numHeads: 8,
  numKvHeads: 4,
  headDim: 64,
  tieWordEmbeddings: true,
};

/** npm start's demo model (random weights): Qwen3-shaped, 4 layers of hidden 256, ~40M parameters mostly the tied embedding, bf16. */
export const DEMO_MODEL: TinyModelOptions = {
  arch: "qwen3",
  dtype: "bf16",
  hiddenSize: 256,
  numLayers: 4,
  numHeads: 8,
  numKvHeads: 4,
  headDim: 32,
  intermediateSize: 768,
  tieWordEmbeddings: true,
};

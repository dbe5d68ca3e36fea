import { join } from "node:path";
import { type TinyArch, type TinyModelOptions, writeTinyModel } from "./tiny-model.js";

/** The quantization tests' tiny model: rows of 256 (hidden) and 512 (intermediate) are whole blocks of every type, K-quants included. */
export const QUANT_TINY_MODEL: Omit<TinyModelOptions, "arch" | "seed"> = {
  dtype: "bf16",
  vocabSize: 2048,
  hiddenSize: 256,
  intermediateSize: 512,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 64,
  numLayers: 2,
};

/** Write QUANT_TINY_MODEL of `arch` under `root` (one folder per arch and seed) and return its path. */
export function writeQuantTinyModel(root: string, arch: TinyArch, seed: number): string {
  const dir = join(root, `${arch}-${seed}`);
  writeTinyModel(dir, { arch, seed, ...QUANT_TINY_MODEL });
  return dir;
}

/**
 * `npm start`: the whole path on a small model, on CPU. On first run it writes a
 * Qwen3-shaped model with random weights to .cache/demo-model (no weights can be
 * downloaded here), then generates from it with the `tokamak` CLI. Extra arguments
 * go to `tokamak generate` (e.g. `npm start -- --max-tokens 64`).
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type TinyModelOptions, tinyModelParameters, writeTinyModel } from "../test/helpers/tiny-model.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const modelDir = process.env.TOKAMAK_DEMO_MODEL ?? join(root, ".cache", "demo-model");
const DEMO: TinyModelOptions = {
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

if (!existsSync(join(modelDir, "config.json"))) {
  const millions = (tinyModelParameters(DEMO) / 1e6).toFixed(1);
  process.stderr.write(`writing a demo model with RANDOM weights (${millions}M parameters, Qwen3 shape) to ${modelDir}\n`);
  writeTinyModel(modelDir, DEMO);
}
process.stderr.write(`the model's weights are random: expect gibberish text; the figures show the runtime at work\n`);
const cli = join(root, "dist", "src", "cli", "main.js");
const args = [
  "generate",
  modelDir,
  "--chat",
  "--prompt",
  "Tell me about tokamaks.",
  "--max-tokens",
  "48",
  "--temperature",
  "0.8",
  "--seed",
  "0",
  ...process.argv.slice(2),
];
const result = spawnSync(process.execPath, [cli, ...args], { stdio: "inherit" });
process.exit(result.status ?? 1);

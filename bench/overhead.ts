/**
 * The engine's own cost, with a model that costs nothing: scheduling, KV block
 * bookkeeping, sampling over a real vocabulary and incremental detokenizing
 * with the real Qwen3 tokenizer. Prints per-step overhead and tokens/s the CPU
 * side can sustain at batch 1, 64 and 256 — the ceiling the engine puts on
 * any backend.
 *
 *   npm run bench:overhead -- [--batches 1,64,256] [--steps 200] [--sampling greedy|random]
 */
import { EngineCore } from "../src/engine/engine-core.js";
import { NullExecutor } from "../src/engine/null-executor.js";
import { resolveSamplingParams } from "../src/engine/sampling-params.js";
import { Tokenizer } from "../src/tokenizer/tokenizer.js";
import { qwen3TokenizerDir } from "../test/helpers/tiny-model.js";
import { flag, machine, numFlag, rng, saveResult } from "./common.js";

const VOCAB = 151936; // Qwen3's embedding rows

const batches = flag("batches", "1,64,256").split(",").map(Number);
const steps = numFlag("steps", 200);
const mode = flag("sampling", "greedy");
if (mode !== "greedy" && mode !== "random") throw new Error(`--sampling must be greedy or random, got "${mode}"`);
const tokenizer = Tokenizer.fromDir(qwen3TokenizerDir());
const rows = [];
for (const batch of batches) {
  const executor = new NullExecutor(VOCAB, batch);
  const promptLen = 128;
  const maxModelLen = promptLen + steps + 8;
  const numBlocks = Math.ceil(maxModelLen / 16) * batch + 16;
  const core = new EngineCore(
    executor,
    {
      blockSize: 16,
      numBlocks,
      enablePrefixCaching: true,
      maxNumBatchedTokens: Math.max(8192, batch * promptLen),
      maxNumSeqs: batch,
      maxModelLen,
      policy: "fcfs",
    },
    tokenizer.eosTokenIds,
    process.argv.includes("--no-detokenize") ? null : tokenizer,
  );
  const r = rng(batch);
  const sampling = resolveSamplingParams(
    mode === "greedy"
      ? { temperature: 0, maxTokens: steps, ignoreEos: true }
      : { temperature: 0.8, topP: 0.95, topK: 50, repetitionPenalty: 1.1, seed: 1, maxTokens: steps, ignoreEos: true },
  );
  for (let i = 0; i < batch; i++) {
    const prompt = Array.from({ length: promptLen }, () => Math.floor(r() * 150000));
    core.addRequest({ requestId: `r${i}`, promptTokenIds: prompt, sampling });
  }
  core.step(); // the prefill step: every prompt in one batch
  const t0 = performance.now();
  let tokens = 0;
  let n = 0;
  while (core.hasUnfinished) {
    tokens += core.step().length;
    n++;
  }
  const ms = performance.now() - t0;
  const row = {
    batch,
    sampling: mode,
    steps: n,
    msPerStep: Number((ms / n).toFixed(3)),
    tokensPerSecond: Math.round((tokens * 1000) / ms),
  };
  rows.push(row);
  console.log(
    `batch ${String(batch).padStart(3)}: ${row.msPerStep.toFixed(3)} ms/step of engine overhead, ${row.tokensPerSecond} tokens/s (${mode} sampling, vocab ${VOCAB})`,
  );
}
console.log(`on ${machine()}`);
console.log(`saved ${saveResult("overhead", { rows })}`);

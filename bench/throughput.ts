/**
 * Offline throughput, nano-vllm's benchmark: N sequences of random token ids,
 * input and output lengths uniform in a range, ignore_eos, all submitted at
 * once to the LLM class; prints output tokens/s.
 *
 *   npm run bench:throughput -- [--model DIR] [--num-seqs 64] [--input 32-256] [--output 32-128] [--threads N]
 *
 * Without --model it writes (once) the ~100M-parameter bench model to .cache/bench-model.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { LLM } from "../src/engine/llm.js";
import { resolveSamplingParams } from "../src/engine/sampling-params.js";
import { writeTinyModel } from "../test/helpers/tiny-model.js";
import { BENCH_MODEL } from "./models.js";
import { flag, machine, numFlag, randomWorkload, REPO_ROOT, saveResult } from "./common.js";

function range(name: string, def: string): [number, number] {
  const m = /^(\d+)-(\d+)$/.exec(flag(name, def));
  if (!m || Number(m[1]) > Number(m[2]) || Number(m[1]) < 1) throw new Error(`--${name} must be a range like 100-1024`);
  return [Number(m[1]), Number(m[2])];
}

const modelDir = flag("model", join(REPO_ROOT, ".cache", "bench-model"));
if (!existsSync(join(modelDir, "config.json"))) {
  process.stderr.write(`writing the bench model (random weights) to ${modelDir}\n`);
  writeTinyModel(modelDir, BENCH_MODEL);
}
const numSeqs = numFlag("num-seqs", 64);
const input = range("input", "32-256");
const output = range("output", "32-128");
const threads = flag("threads", "") === "" ? undefined : numFlag("threads", 0);
const maxModelLen = input[1] + output[1];

const llm = LLM.open(modelDir, { maxModelLen, threads, kvCacheMemory: 2 * 2 ** 30 });
try {
  const work = randomWorkload(numSeqs, llm.loaded.config.vocabSize, input, output, 0);
  // Warm up (worker threads, caches) on a short request.
  await llm.generate([[1, 2, 3]], { maxTokens: 4, temperature: 0, ignoreEos: true });
  const core = llm.core;
  const before = core.stats();
  const t0 = performance.now();
  let outputTokens = 0;
  work.forEach((w, i) =>
    core.addRequest({
      requestId: `bench-${i}`,
      promptTokenIds: w.prompt,
      sampling: resolveSamplingParams({ temperature: 0, ignoreEos: true, maxTokens: w.outputLen }),
    }),
  );
  while (core.hasUnfinished) outputTokens += (await core.step()).reduce((n, o) => n + o.newTokenIds.length, 0);
  const seconds = (performance.now() - t0) / 1000;
  const after = core.stats();
  const inputTokens = work.reduce((n, w) => n + w.prompt.length, 0);
  const result = {
    model: modelDir,
    backend: `${llm.backend.name} (${llm.backend.capabilities.threads} threads)`,
    numSeqs,
    input,
    output,
    inputTokens,
    outputTokens,
    seconds: Number(seconds.toFixed(2)),
    outputTokensPerSecond: Number((outputTokens / seconds).toFixed(1)),
    totalTokensPerSecond: Number(((inputTokens + outputTokens) / seconds).toFixed(1)),
    steps: after.steps - before.steps,
    preemptions: after.numPreemptions - before.numPreemptions,
  };
  console.log(
    `${numSeqs} seqs, input ${input.join("-")}, output ${output.join("-")}: ${outputTokens} output tokens in ${seconds.toFixed(2)} s = ` +
      `${result.outputTokensPerSecond} output tokens/s (${result.totalTokensPerSecond} total tokens/s, ${result.steps} steps) on ${machine()}`,
  );
  console.log(`saved ${saveResult("throughput", result)}`);
} finally {
  llm.close();
}

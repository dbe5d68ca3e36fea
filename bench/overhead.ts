/**
 * The engine's own cost, in three parts, at batch 1, 64 and 256 with Qwen3's 151,936-token vocabulary:
 *
 * - host side: scheduling, KV block bookkeeping, the persistent-batch diff, detokenizing with the real
 *   Qwen3 tokenizer and building outputs, over a stub executor that returns token ids as a device
 *   would (NullExecutor): host ms per step and host-side tokens/s;
 * - the CPU sampling op over full logits rows [batch, vocab] (what the CPU backend runs after its
 *   forward pass): ms per step, against the time to read the logits once at this machine's memory
 *   bandwidth (measured here);
 * - the share of each step the executor waits on the host, with async scheduling on and off, when a
 *   step takes `--device-ms` on the device (a timer: the host is free meanwhile).
 *
 *   npm run bench:overhead -- [--batches 1,64,256] [--steps 200] [--sampling greedy|random] [--device-ms 5]
 */
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { Rng } from "../src/backend/rng.js";
import { SamplingRow } from "../src/backend/sampling.js";
import { EngineCore } from "../src/engine/engine-core.js";
import { NullExecutor } from "../src/engine/null-executor.js";
import { resolveSamplingParams, samplingRowParams, type SamplingParams } from "../src/engine/sampling-params.js";
import { Tokenizer } from "../src/tokenizer/tokenizer.js";
import { qwen3TokenizerDir } from "../test/helpers/tiny-model.js";
import { flag, machine, numFlag, rng, saveResult } from "./common.js";

const VOCAB = 151936; // Qwen3's embedding rows

const batches = flag("batches", "1,64,256").split(",").map(Number);
const steps = numFlag("steps", 200);
const deviceMs = numFlag("device-ms", 5);
const mode = flag("sampling", "greedy");
if (mode !== "greedy" && mode !== "random") throw new Error(`--sampling must be greedy or random, got "${mode}"`);
const tokenizer = Tokenizer.fromDir(qwen3TokenizerDir());
const given: Partial<SamplingParams> =
  mode === "greedy"
    ? { temperature: 0, maxTokens: steps, ignoreEos: true }
    : { temperature: 0.8, topP: 0.95, topK: 50, repetitionPenalty: 1.1, seed: 1, maxTokens: steps, ignoreEos: true };
const sampling = resolveSamplingParams(given);
const promptLen = 128;

/** An engine over the stub executor with `batch` requests whose prompts are prefilled already. */
async function engine(batch: number, asyncScheduling: boolean, stepMs: number): Promise<{ core: EngineCore; exec: NullExecutor }> {
  const exec = new NullExecutor(VOCAB);
  const maxModelLen = promptLen + steps + 8;
  const core = new EngineCore(
    exec,
    {
      blockSize: 16,
      numBlocks: Math.ceil(maxModelLen / 16) * batch + 16,
      enablePrefixCaching: true,
      maxNumBatchedTokens: Math.max(8192, batch * promptLen),
      maxNumSeqs: batch,
      maxModelLen,
      policy: "fcfs",
      asyncScheduling,
    },
    tokenizer.eosTokenIds,
    process.argv.includes("--no-detokenize") ? null : tokenizer,
  );
  const r = rng(batch);
  for (let i = 0; i < batch; i++) {
    const prompt = Array.from({ length: promptLen }, () => Math.floor(r() * 150000));
    core.addRequest({ requestId: `r${i}`, promptTokenIds: prompt, sampling });
  }
  await core.step(); // the prefill step: every prompt in one batch
  exec.deviceMs = stepMs;
  return { core, exec };
}

/** Decode to the end; returns wall ms, tokens and steps. */
async function decode(core: EngineCore): Promise<{ ms: number; tokens: number; n: number }> {
  const t0 = performance.now();
  let tokens = 0;
  let n = 0;
  while (core.hasUnfinished) {
    tokens += (await core.step()).length;
    n++;
  }
  return { ms: performance.now() - t0, tokens, n };
}

/** Read bandwidth: memcmp of two equal buffers of `bytes` each (native, vectorized: bound by memory), best of five. */
function readBandwidth(bytes: number): number {
  const a = Buffer.alloc(bytes, 1);
  const b = Buffer.alloc(bytes, 1);
  let best = Infinity;
  for (let rep = 0; rep < 5; rep++) {
    const t0 = performance.now();
    Buffer.compare(a, b);
    best = Math.min(best, performance.now() - t0);
  }
  return (2 * bytes) / (best / 1000);
}

/** Logits shaped like a language model's: a normal body, a few tokens well above it. */
function fillLogits(x: Float32Array, seed: number): void {
  const r = new Rng(seed);
  for (let i = 0; i < x.length; i += 2) {
    const u = Math.max(r.next(), 1e-12);
    const v = r.next();
    const m = Math.sqrt(-2 * Math.log(u)) * 2.5;
    x[i] = m * Math.cos(2 * Math.PI * v);
    if (i + 1 < x.length) x[i + 1] = m * Math.sin(2 * Math.PI * v);
  }
  for (let row = 0; row * VOCAB < x.length; row++)
    for (let k = 0; k < 8; k++) x[row * VOCAB + ((row * 7919 + k * 104729) % VOCAB)] = 14 - k;
}

/** ms per step of the CPU backend's sampling op over [batch, vocab] logits where the model leaves them (a wasm memory) (best of `reps`, logits refilled between runs). */
function samplingOpMs(batch: number, reps: number): number {
  const logits = backend.alloc([batch, VOCAB], "f32", "activations", "bench logits", { samplingInput: true });
  const fresh = new Float32Array(batch * VOCAB);
  fillLogits(fresh, batch);
  const rows = Array.from({ length: batch }, (_, i) => ({
    row: new SamplingRow(
      samplingRowParams(sampling, 1000 + i, tokenizer.eosTokenIds),
      Array.from({ length: promptLen }, (_, j) => (i * 131 + j * 17) % VOCAB),
    ),
  }));
  let best = Infinity;
  for (let rep = 0; rep < reps; rep++) {
    backend.write(logits, fresh);
    const t0 = performance.now();
    const out = backend.sample(logits, rows);
    best = Math.min(best, performance.now() - t0);
    rows.forEach((r, i) => r.row.accept(out.tokens[i]!));
  }
  backend.free(logits.storage);
  return best;
}

const backend = new CpuBackend({ threads: 1 });
const bandwidth = readBandwidth(256 * VOCAB * 4);
console.log(
  `memory read bandwidth: ${(bandwidth / 1e9).toFixed(1)} GB/s (memcmp of 2 × ${((256 * VOCAB * 4) / 1e6).toFixed(0)} MB, best of 5)`,
);

const rows = [];
for (const batch of batches) {
  // Best of three: the host side is short and this machine's other tenants are noisy.
  const best = async (asyncScheduling: boolean) => {
    let b: { ms: number; tokens: number; n: number } | null = null;
    for (let i = 0; i < 3; i++) {
      const d = await decode((await engine(batch, asyncScheduling, 0)).core);
      if (!b || d.ms / d.tokens < b.ms / b.tokens) b = d;
    }
    return b!;
  };
  const h = await best(true);
  const hostSync = await best(false);
  const opMs = samplingOpMs(batch, 5);
  const readMs = ((batch * VOCAB * 4) / bandwidth) * 1000;
  const hostMsPerStep = h.ms / h.n;
  const waits = [];
  for (const asyncScheduling of [true, false]) {
    const { core } = await engine(batch, asyncScheduling, deviceMs);
    core.timing.executorMs = 0;
    core.timing.hostGapMs = 0;
    core.timing.lastResolved = -1;
    await decode(core);
    const { executorMs, hostGapMs } = core.timing;
    waits.push(hostGapMs / (executorMs + hostGapMs));
  }
  const row = {
    batch,
    sampling: mode,
    steps: h.n,
    hostMsPerStep: Number(hostMsPerStep.toFixed(3)),
    hostTokensPerSecond: Math.round((h.tokens * 1000) / h.ms),
    hostTokensPerSecondSync: Math.round((hostSync.tokens * 1000) / hostSync.ms),
    samplingOpMsPerStep: Number(opMs.toFixed(2)),
    readLogitsOnceMs: Number(readMs.toFixed(2)),
    endToEndTokensPerSecond: Math.round((batch * 1000) / (hostMsPerStep + opMs)),
    executorWaitsOnHostAsync: Number(waits[0]!.toFixed(3)),
    executorWaitsOnHostSync: Number(waits[1]!.toFixed(3)),
  };
  rows.push(row);
  console.log(
    `batch ${String(batch).padStart(3)}: host ${row.hostMsPerStep.toFixed(3)} ms/step = ${row.hostTokensPerSecond} tok/s ` +
      `(sync scheduling ${row.hostTokensPerSecondSync}); sampling op ${row.samplingOpMsPerStep} ms/step ` +
      `(reading the logits once: ${row.readLogitsOnceMs} ms); end to end ${row.endToEndTokensPerSecond} tok/s; ` +
      `executor waits on the host ${(100 * row.executorWaitsOnHostAsync).toFixed(1)}% (async) vs ${(100 * row.executorWaitsOnHostSync).toFixed(1)}% (sync) of ${deviceMs} ms steps`,
  );
}
console.log("\n| batch | host ms/step | host-side tok/s | sampling-op ms/step | end-to-end tok/s |");
console.log("| ---: | ---: | ---: | ---: | ---: |");
for (const r of rows)
  console.log(`| ${r.batch} | ${r.hostMsPerStep} | ${r.hostTokensPerSecond} | ${r.samplingOpMsPerStep} | ${r.endToEndTokensPerSecond} |`);
console.log(`on ${machine()}, ${mode} sampling, vocab ${VOCAB}`);
console.log(`saved ${saveResult("overhead", { bandwidthGBs: bandwidth / 1e9, deviceMs, rows })}`);
backend.dispose();

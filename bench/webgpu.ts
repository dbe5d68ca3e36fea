/**
 * The WebGPU backend on the adapter it finds (a software one included: lavapipe's figures only show that
 * the bench runs): decode and prefill tokens/s of the bench model through the engine (sampling on the
 * device), the bytes a decode step reads against the adapter's measured copy bandwidth, and per-kernel GPU
 * times from timestamp queries over a few decode steps.
 *
 *   npm run bench:webgpu -- [--prompt-len 128] [--max-tokens 32] [--dtype f32|f16] [--model DIR]
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { createWebGpuBackend } from "../src/backend/webgpu/node-gpu.js";
import type { WebGpuBackend } from "../src/backend/webgpu/webgpu-backend.js";
import { LLM } from "../src/engine/llm.js";
import { writeTinyModel } from "../test/helpers/tiny-model.js";
import { flag, numFlag, REPO_ROOT, rng, saveResult } from "./common.js";
import { BENCH_MODEL } from "./models.js";

const promptLen = numFlag("prompt-len", 128);
const maxTokens = numFlag("max-tokens", 32);
const dtype = flag("dtype", "f32") === "f16" ? "f16" : "f32";
let modelDir = flag("model", "");
if (!modelDir) {
  modelDir = join(REPO_ROOT, ".cache", "bench-model");
  if (!existsSync(join(modelDir, "config.json"))) {
    process.stderr.write(`writing the bench model (random weights) to ${modelDir}\n`);
    writeTinyModel(modelDir, BENCH_MODEL);
  }
}

const gpu = await createWebGpuBackend({ activationDType: dtype });
const result: Record<string, unknown> = {
  adapter: gpu.adapterName,
  software: gpu.ctx.adapter.isSoftware,
  dtype,
  promptLen,
  maxTokens,
  model: modelDir,
};
console.log(`adapter: ${gpu.adapterName}${gpu.ctx.adapter.isSoftware ? " (software: these figures only show that the bench runs)" : ""}`);

/** Device copy bandwidth: a buffer-to-buffer copy of 64 MiB, read + write bytes per second. */
async function copyBandwidth(b: WebGpuBackend): Promise<number> {
  const bytes = 64 << 20;
  const src = b.alloc([bytes / 4], "f32", "workspace", "copy src");
  const dst = b.alloc([bytes / 4], "f32", "workspace", "copy dst");
  const copy = (n: number) => {
    for (let i = 0; i < n; i++) {
      b.kernels.commandEncoder().copyBufferToBuffer(h(src), 0, h(dst), 0, bytes);
    }
  };
  const h = (t: typeof src) => (t.storage.handle as { buffer: GPUBuffer }).buffer;
  copy(2);
  await b.finish();
  const iters = 10;
  const t = performance.now();
  copy(iters);
  await b.finish();
  const sec = (performance.now() - t) / 1000;
  b.free(src.storage);
  b.free(dst.storage);
  return (2 * bytes * iters) / sec / 1e9;
}

const copyGBs = await copyBandwidth(gpu);
result.copy_bandwidth_gbps = copyGBs;
console.log(`copy bandwidth: ${copyGBs.toFixed(2)} GB/s (read + write)`);

const llm = LLM.open(
  modelDir,
  { maxModelLen: promptLen + maxTokens + 16, numBlocks: Math.ceil((promptLen + maxTokens + 16) / 16) + 4, maxNumSeqs: 4 },
  gpu,
);
const r = rng(7);
const prompt = Array.from({ length: promptLen }, () => Math.floor(r() * llm.loaded.config.vocabSize));
const greedy = (n: number) => ({ temperature: 0, maxTokens: n, ignoreEos: true });

await llm.generate([prompt], greedy(2)); // warm-up: pipelines compiled
let t = performance.now();
await llm.generate([prompt], greedy(1));
const prefillSec = (performance.now() - t) / 1000;
t = performance.now();
await llm.generate([prompt], greedy(maxTokens + 1));
const decodeSec = Math.max(1e-9, (performance.now() - t) / 1000 - prefillSec);
const weightBytes = gpu.memoryStats().byTag.weights;
const kvPerToken = llm.loaded.config.numLayers * 2 * llm.loaded.config.numKvHeads * llm.loaded.config.headDim * (dtype === "f16" ? 2 : 4);
const decodeTps = maxTokens / decodeSec;
// Each decode step reads every weight once and the KV cache of the context so far (about prompt + half the output).
const bytesPerStep = weightBytes + kvPerToken * (promptLen + maxTokens / 2);
result.prefill_tokens_per_s = promptLen / prefillSec;
result.decode_tokens_per_s = decodeTps;
result.weight_bytes = weightBytes;
result.decode_gbps = (bytesPerStep * decodeTps) / 1e9;
result.decode_fraction_of_copy_bandwidth = (bytesPerStep * decodeTps) / 1e9 / (copyGBs / 2);
console.log(`prefill: ${promptLen} tokens, ${(promptLen / prefillSec).toFixed(1)} tokens/s`);
console.log(
  `decode: ${decodeTps.toFixed(2)} tokens/s, ${(bytesPerStep / 2 ** 20).toFixed(1)} MiB read per step = ${((bytesPerStep * decodeTps) / 1e9).toFixed(2)} GB/s, ` +
    `${(100 * (result.decode_fraction_of_copy_bandwidth as number)).toFixed(1)}% of the copy's read bandwidth`,
);

if (gpu.ctx.hasTimestamps) {
  const profiler = gpu.startProfiling();
  const steps = 8;
  await llm.generate([prompt.slice(0, 16)], greedy(steps));
  gpu.stopProfiling();
  await profiler.collect();
  const rows = [...profiler.totals].sort((a, b) => b[1].ns - a[1].ns);
  const total = rows.reduce((n, [, v]) => n + v.ns, 0);
  console.log(`\nper-kernel GPU time over a 16-token prefill and ${steps} decode steps (timestamp queries):`);
  console.log(`${"kernel".padEnd(22)} ${"calls".padStart(6)} ${"total ms".padStart(10)} ${"avg µs".padStart(10)} ${"share".padStart(7)}`);
  const kernels: Record<string, { calls: number; total_ms: number; avg_us: number }> = {};
  for (const [name, v] of rows) {
    kernels[name] = { calls: v.count, total_ms: v.ns / 1e6, avg_us: v.ns / 1e3 / v.count };
    console.log(
      `${name.padEnd(22)} ${String(v.count).padStart(6)} ${(v.ns / 1e6).toFixed(2).padStart(10)} ${(v.ns / 1e3 / v.count).toFixed(1).padStart(10)} ${((100 * v.ns) / total).toFixed(1).padStart(6)}%`,
    );
  }
  result.kernels = kernels;
} else console.log("no timestamp-query feature on this adapter: no per-kernel times");

llm.close();
gpu.dispose();
console.log(`\nwrote ${saveResult("webgpu", result)}`);

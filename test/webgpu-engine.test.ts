/**
 * The WebGPU backend end to end, through the real loader, the paged KV cache and the engine:
 * - each tiny architecture generates 32 greedy tokens on WebGPU and on the CPU from the same Hugging
 *   Face folder (bf16 weights, read in place by both) and the tokens agree. In f32 the two differ only
 *   by summation order; in f16 activations by f16 rounding too. A step whose CPU top-2 logits are closer
 *   than that could go either way, so the comparison stops at the first such near-tie and says so;
 * - the engine's batch invariance: requests arriving at random steps into a busy batch generate what
 *   each generates alone, with sampling (greedy and seeded) on the device;
 * - the memory snapshot's tags add up to the allocator's total, and the dashboard's device is the adapter.
 * Skipped, with the probe's reason, where no WebGPU adapter is found (a failure under TOKAMAK_REQUIRE_WEBGPU=1).
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it, type TestContext } from "node:test";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { MEMORY_TAGS } from "../src/backend/tensor.js";
import { createWebGpuBackend, probeWebGpu } from "../src/backend/webgpu/node-gpu.js";
import type { WebGpuBackend } from "../src/backend/webgpu/webgpu-backend.js";
import { Generator } from "../src/engine/generator.js";
import { LLM } from "../src/engine/llm.js";
import { resolveSamplingParams } from "../src/engine/sampling-params.js";
import { top2Gap } from "./helpers/llama-cpp-compare.js";
import { seeded } from "./helpers/random.js";
import { type TinyArch, writeTinyModel } from "./helpers/tiny-model.js";
import { webGpuSkip } from "./helpers/webgpu.js";

const probe = await probeWebGpu(true);
const skip = webGpuSkip(probe);
const root = mkdtempSync(join(tmpdir(), "tokamak-webgpu-"));
after(() => rmSync(root, { recursive: true, force: true }));

const ARCHS: TinyArch[] = ["llama", "mistral", "qwen2", "qwen3"];
const STEPS = 32;
const VOCAB = 2048;
/** 5 tokens, and 37: longer than two 16-token KV blocks. */
const PROMPTS = [5, 37].map((n) => Array.from({ length: n }, (_, i) => (i * 7919 + 31 * n) % VOCAB));
/** Logit gaps below which a step is a near-tie for the activation dtype. */
const MARGIN = { f32: 1e-3, f16: 3e-2 };

function model(arch: TinyArch): string {
  const dir = join(root, arch);
  writeTinyModel(dir, {
    arch,
    dtype: "bf16",
    vocabSize: VOCAB,
    hiddenSize: 128,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 32,
    seed: 11,
  });
  return dir;
}

describe("greedy tokens on WebGPU equal the CPU's", { skip }, () => {
  const cpu = new CpuBackend({ threads: 2 });
  after(() => cpu.dispose());
  for (const act of ["f32", "f16"] as const) {
    // One device per dtype: its pipelines are compiled once for the four architectures.
    let gpu: WebGpuBackend;
    before(async () => {
      gpu = await createWebGpuBackend({ activationDType: act }, probe);
    });
    after(() => gpu?.dispose());
    for (const arch of ARCHS) {
      it(`${arch}, ${act} activations, ${STEPS} steps`, async (t: TestContext) => {
        const dir = model(arch);
        {
          const onCpu = Generator.open(dir, cpu, { maxModelLen: 128 });
          const onGpu = Generator.open(dir, gpu, { maxModelLen: 128 });
          for (const prompt of PROMPTS) {
            const want = onCpu.generate(prompt, { maxTokens: STEPS, returnLogits: true });
            const got = await onGpu.generateAsync(prompt, { maxTokens: STEPS });
            const tie = want.logits!.findIndex((row) => top2Gap(row) < MARGIN[act]);
            const upTo = tie === -1 ? STEPS : tie + 1;
            if (tie !== -1) t.diagnostic(`${arch} ${act}, prompt of ${prompt.length}: near-tie at step ${tie}; compared ${upTo} steps`);
            if (act === "f32") assert.ok(upTo >= STEPS, `${arch}: a near-tie at step ${tie}: the tiny model should have none in f32`);
            assert.deepEqual(got.tokens.slice(0, upTo), want.tokens.slice(0, upTo), `${arch} ${act}, prompt of ${prompt.length}`);
          }
          onGpu.close();
          onCpu.close();
        }
      });
    }
  }
});

describe("the engine on WebGPU", { skip }, () => {
  let gpu: WebGpuBackend;
  const dir = join(root, "engine-qwen3");

  async function run(llm: LLM, jobs: { id: string; prompt: number[]; arrival: number; maxTokens: number; seed?: number }[]) {
    const out = new Map<string, number[]>();
    const pending = [...jobs].sort((a, b) => a.arrival - b.arrival);
    for (let step = 0; pending.length > 0 || llm.core.hasUnfinished; step++) {
      while (pending.length > 0 && pending[0]!.arrival <= step) {
        const j = pending.shift()!;
        const sampling =
          j.seed === undefined
            ? { temperature: 0, maxTokens: j.maxTokens, ignoreEos: true }
            : { temperature: 0.9, topK: 50, topP: 0.9, seed: j.seed, maxTokens: j.maxTokens, ignoreEos: true };
        llm.core.addRequest({ requestId: j.id, promptTokenIds: j.prompt, sampling: resolveSamplingParams(sampling) });
        out.set(j.id, []);
      }
      for (const o of await llm.core.step()) out.get(o.requestId)!.push(...o.newTokenIds);
      assert.ok(step < 5000, "the engine did not drain");
    }
    return out;
  }

  it("batch invariance: 12 requests arriving at random steps, greedy and seeded, generate what each generates alone", async () => {
    writeTinyModel(dir, { arch: "qwen3", dtype: "bf16", vocabSize: 512, hiddenSize: 64, numLayers: 2, seed: 7 });
    gpu = await createWebGpuBackend({}, probe);
    try {
      const r = seeded(3);
      const int = (lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
      const jobs = Array.from({ length: 12 }, (_, i) => ({
        id: `r${i}`,
        prompt: Array.from({ length: int(1, 40) }, () => int(0, 511)),
        arrival: int(0, 10),
        maxTokens: int(1, 10),
        seed: i % 3 === 0 ? 1000 + i : undefined,
      }));
      const alone = LLM.open(dir, { maxModelLen: 128, numBlocks: 64, enablePrefixCaching: false, asyncScheduling: false }, gpu);
      const want = new Map<string, number[]>();
      for (const j of jobs) want.set(j.id, (await run(alone, [{ ...j, arrival: 0 }])).get(j.id)!);
      alone.close();
      const busy = LLM.open(dir, { maxModelLen: 128, numBlocks: 64, maxNumBatchedTokens: 48, maxNumSeqs: 8 }, gpu);
      const got = await run(busy, jobs);
      const s = busy.core.stats();
      busy.close();
      for (const j of jobs) {
        assert.equal(got.get(j.id)!.length, j.maxTokens, `${j.id}: token count`);
        assert.deepEqual(got.get(j.id), want.get(j.id), `${j.id} differs when batched`);
      }
      assert.ok(s.steps < jobs.reduce((n, j) => n + j.maxTokens, 0), `batching should need fewer steps, took ${s.steps}`);
      assert.equal(s.numFreeBlocks, s.numBlocks, "every block is free once all requests end");
    } finally {
      gpu.dispose();
    }
  });

  it("the memory snapshot's tags add up, and it names the adapter", async () => {
    gpu = await createWebGpuBackend({}, probe);
    try {
      const before = gpu.memoryStats().total;
      const llm = LLM.open(dir, { maxModelLen: 128, numBlocks: 32 }, gpu);
      const report = gpu.memoryReport();
      const sum = MEMORY_TAGS.reduce((n, tag) => n + report.stats.byTag[tag], 0);
      assert.equal(sum, report.stats.total, "tags add up to the total");
      assert.equal(
        report.allocations.reduce((n, a) => n + a.bytes, 0),
        report.stats.total,
        "the allocations listed add up to the total",
      );
      assert.ok(report.stats.byTag.weights > 0 && report.stats.byTag["kv-cache"] > 0 && report.stats.byTag.activations > 0);
      assert.match(report.device.name, /^webgpu: /);
      llm.close();
      assert.equal(gpu.memoryStats().total, before, "closing the engine gives every buffer back");
    } finally {
      gpu.dispose();
    }
  });
});

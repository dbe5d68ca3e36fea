/** `tokamak plan`'s arithmetic against what the engine really allocates, and the memory accounting itself. */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { MEMORY_TAGS } from "../src/backend/tensor.js";
import { LLM } from "../src/engine/llm.js";
import { loadConfig } from "../src/model/config.js";
import { planMemory } from "../src/model/memory-plan.js";
import { type TinyModelOptions, writeTinyModel } from "./helpers/tiny-model.js";

const root = mkdtempSync(join(tmpdir(), "tokamak-plan-"));
const backend = new CpuBackend({ threads: 1 });
after(() => {
  backend.dispose();
  rmSync(root, { recursive: true, force: true });
});

const SHAPES: {
  name: string;
  model: TinyModelOptions;
  engine: { kvCacheMemory: number; maxModelLen: number; blockSize: number; maxNumSeqs: number; maxNumBatchedTokens: number };
}[] = [
  {
    name: "qwen3 tied bf16",
    model: { arch: "qwen3", dtype: "bf16", vocabSize: 1000, tieWordEmbeddings: true },
    engine: { kvCacheMemory: 3_000_000, maxModelLen: 300, blockSize: 16, maxNumSeqs: 8, maxNumBatchedTokens: 512 },
  },
  {
    name: "qwen2 biases f32",
    model: { arch: "qwen2", dtype: "f32", vocabSize: 777, hiddenSize: 96, numHeads: 6, numKvHeads: 2 },
    engine: { kvCacheMemory: 5_123_457, maxModelLen: 512, blockSize: 32, maxNumSeqs: 17, maxNumBatchedTokens: 1000 },
  },
  {
    name: "llama f16 untied",
    model: { arch: "llama", dtype: "f16", vocabSize: 2048, numLayers: 3, intermediateSize: 200 },
    engine: { kvCacheMemory: 1 << 21, maxModelLen: 128, blockSize: 8, maxNumSeqs: 4, maxNumBatchedTokens: 256 },
  },
  {
    name: "mistral 5 layers",
    model: { arch: "mistral", dtype: "bf16", vocabSize: 513, numLayers: 5, hiddenSize: 80, numHeads: 5, numKvHeads: 5 },
    engine: { kvCacheMemory: 7_777_777, maxModelLen: 1024, blockSize: 16, maxNumSeqs: 32, maxNumBatchedTokens: 2048 },
  },
];

describe("tokamak plan equals what serve allocates", () => {
  SHAPES.forEach((shape, i) => {
    it(`${shape.name}: KV blocks, weights, activations and workspace byte for byte`, () => {
      const dir = join(root, `m${i}`);
      writeTinyModel(dir, shape.model);
      const plan = planMemory(loadConfig(dir), { activationDType: backend.activationDType, ...shape.engine });
      const llm = LLM.open(dir, shape.engine, backend);
      try {
        const mem = backend.memoryStats();
        assert.equal(plan.numBlocks, llm.core.config.numBlocks, "KV blocks");
        assert.equal(plan.weightBytes, mem.byTag.weights, "weight bytes");
        assert.equal(plan.activationBytes, mem.byTag.activations, "activation arena bytes");
        assert.equal(plan.activationBytes, llm.loaded.model.arenaPlan.totalBytes);
        assert.equal(plan.activationBytesWithoutReuse, llm.loaded.model.arenaPlan.unsharedBytes);
        assert.equal(plan.workspaceBytes, mem.byTag.workspace, "per-step input buffers");
        assert.equal(plan.numBlocks * plan.bytesPerBlock, mem.byTag["kv-cache"], "KV cache bytes");
        assert.equal(plan.totalBytes, mem.total, "everything");
        assert.ok(plan.activationBytes < plan.activationBytesWithoutReuse, "buffer reuse saves memory");
      } finally {
        llm.close();
      }
      // The CLI prints the same figures.
      const cli = join(import.meta.dirname, "..", "src", "cli", "main.js");
      const e = shape.engine;
      const args = ["plan", dir, "--json", "--kv-cache-memory", String(e.kvCacheMemory), "--max-model-len", String(e.maxModelLen)];
      args.push(
        "--block-size",
        String(e.blockSize),
        "--max-num-seqs",
        String(e.maxNumSeqs),
        "--max-num-batched-tokens",
        String(e.maxNumBatchedTokens),
      );
      const json = JSON.parse(execFileSync(process.execPath, [cli, ...args], { encoding: "utf8" })) as {
        numBlocks: number;
        weightBytes: number;
      };
      assert.equal(json.numBlocks, plan.numBlocks);
      assert.equal(json.weightBytes, plan.weightBytes);
    });
  });

  it("a GPU plan subtracts weights and activations from the usable memory, and says when weights do not fit", () => {
    const dir = join(root, "m0");
    const config = loadConfig(dir);
    const gpu = { memoryBytes: 64 * 2 ** 20, count: 1, utilization: 0.5 };
    const p = planMemory(config, { activationDType: "bf16", gpu, maxModelLen: 256 });
    assert.equal(p.kvBudgetBytes, 32 * 2 ** 20 - p.weightBytes - p.activationBytes - p.workspaceBytes);
    assert.equal(p.numBlocks, Math.floor(p.kvBudgetBytes / p.bytesPerBlock));
    assert.deepEqual(p.problems, []);
    const tooSmall = planMemory(config, { activationDType: "bf16", gpu: { ...gpu, memoryBytes: 2 ** 16 } });
    assert.match(tooSmall.problems.join("\n"), /exceed the usable GPU memory/);
  });
});

describe("memory accounting", () => {
  it("tagged allocations sum to the allocator's total; after requests end no KV block is owned; close() frees everything", async () => {
    const dir = join(root, "m1");
    const llm = LLM.open(dir, SHAPES[1]!.engine, backend);
    const report = backend.memoryReport();
    const byTag = MEMORY_TAGS.reduce((s, t) => s + report.stats.byTag[t], 0);
    assert.equal(byTag, report.stats.total);
    assert.equal(
      report.allocations.reduce((s, a) => s + a.bytes, 0),
      report.stats.total,
    );
    for (const a of report.allocations) assert.ok(a.label.length > 0 && MEMORY_TAGS.includes(a.tag));
    assert.ok(report.device.totalBytes > 0 && report.device.freeBytes > 0);
    await llm.generate(
      Array.from({ length: 6 }, (_, i) => Array.from({ length: 40 }, (_, j) => 1 + i + j)),
      { maxTokens: 20, temperature: 0, ignoreEos: true },
    );
    const snap = llm.core.snapshot();
    const states = Buffer.from(snap.blockStates, "base64");
    assert.equal(states.length, snap.numBlocks);
    assert.equal([...states].filter((s) => s === 2).length, 0, "no block owned once every request has ended");
    assert.ok([...states].filter((s) => s === 1).length > 0, "finished requests leave cached prefix blocks");
    assert.equal(snap.requests.length, 0);
    llm.close();
    assert.equal(backend.memoryStats().total, 0, "close() returns every byte");
  });
});

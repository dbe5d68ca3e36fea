import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { Generator } from "../src/engine/generator.js";
import { ReferenceLlama } from "./helpers/reference-llama.js";
import { type TinyArch, type TinyModelOptions, writeTinyModel } from "./helpers/tiny-model.js";

const root = mkdtempSync(join(tmpdir(), "tokamak-forward-"));
const backend = new CpuBackend({ threads: 2 });
after(() => {
  backend.dispose();
  rmSync(root, { recursive: true, force: true });
});

let counter = 0;
function model(opts: TinyModelOptions): string {
  const dir = join(root, `m${counter++}`);
  writeTinyModel(dir, opts);
  return dir;
}

const PROMPT = Array.from({ length: 21 }, (_, i) => (i * 7919 + 13) % 150000);

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Greedy tokens and per-step logits from Tokamak, checked against the dense f64 reference at every step. */
function checkAgainstReference(dir: string, opts: { chunk?: number; steps?: number; prompt?: number[] } = {}) {
  const prompt = opts.prompt ?? PROMPT;
  const steps = opts.steps ?? 6;
  const gen = Generator.open(dir, backend, { maxModelLen: 256, maxNumTokens: opts.chunk ?? 64 });
  const out = gen.generate(prompt, { maxTokens: steps, returnLogits: true });
  gen.close();
  const ref = new ReferenceLlama(dir);
  const want = ref.logits(
    [...prompt, ...out.tokens],
    out.tokens.map((_, i) => prompt.length - 1 + i),
  );
  want.forEach((w, i) => {
    const scale = w.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    assert.ok(
      maxAbsDiff(w, out.logits![i]!) < 1e-5 * Math.max(1, scale),
      `step ${i}: logits differ from the reference by ${maxAbsDiff(w, out.logits![i]!)}`,
    );
  });
  return out;
}

describe("Llama-family forward pass (paged, fused) equals a dense f64 reference", () => {
  const archs: TinyArch[] = ["llama", "mistral", "qwen2", "qwen3"];
  for (const arch of archs) {
    for (const dtype of ["f32", "bf16"] as const) {
      it(`${arch} ${dtype}`, () => {
        checkAgainstReference(model({ arch, dtype, seed: 7 }));
      });
    }
  }

  it("chunked prefill (chunks of 8) gives the same logits as one-shot prefill", () => {
    const dir = model({ arch: "qwen3", dtype: "f32", seed: 3 });
    const one = checkAgainstReference(dir, { chunk: 64 });
    const chunked = checkAgainstReference(dir, { chunk: 8 });
    assert.deepEqual(chunked.tokens, one.tokens);
  });

  it("tied embeddings, sharded checkpoint, f16 weights", () => {
    checkAgainstReference(model({ arch: "qwen3", dtype: "f16", tieWordEmbeddings: true, shards: 3, seed: 11 }));
  });

  it("rope scaling: llama3 and linear", () => {
    const llama3 = { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 16 };
    checkAgainstReference(model({ arch: "llama", dtype: "f32", ropeScaling: llama3, ropeTheta: 500000, seed: 5 }), { steps: 4 });
    checkAgainstReference(model({ arch: "llama", dtype: "f32", ropeScaling: { type: "linear", factor: 4 }, seed: 6 }), { steps: 4 });
  });

  it("MHA with head_dim 32 and a prompt spanning many KV blocks", () => {
    const dir = model({ arch: "llama", dtype: "f32", numHeads: 2, numKvHeads: 2, headDim: 32, seed: 9 });
    checkAgainstReference(dir, { prompt: Array.from({ length: 70 }, (_, i) => (i * 104729 + 7) % 150000), steps: 3, chunk: 32 });
  });

  it("rejects a prompt longer than the max model length, naming both numbers", () => {
    const dir = model({ arch: "qwen2", dtype: "f32", seed: 1 });
    const gen = Generator.open(dir, backend, { maxModelLen: 16 });
    assert.throws(() => gen.generate(PROMPT, { maxTokens: 4 }), /21 tokens.*4.*25 exceeds the max model length 16/);
    gen.close();
  });

  it("returns every byte to the allocator when generators close", () => {
    assert.equal(backend.memoryStats().total, 0);
    assert.equal(backend.memoryStats().allocations, 0);
  });
});

/**
 * --kv-cache-dtype fp8: the KV cache stores K/k_scale and V/v_scale as e4m3 bytes (a quarter of
 * the CPU's f32 cache, half of bf16). Attention over it equals attention over an f32 cache holding
 * the same rounded values, bit for bit; the engine fits four times the blocks in the same budget
 * and generates as the f32 cache does up to e4m3's rounding.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import type { RopeTable } from "../src/backend/backend.js";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { LLM } from "../src/engine/llm.js";
import { f32ToFp8e4m3, fp8e4m3Table } from "../src/quant/fp8.js";
import { Rng } from "../src/backend/rng.js";
import { randn } from "./helpers/random.js";
import { writeTinyModel } from "./helpers/tiny-model.js";

const root = mkdtempSync(join(tmpdir(), "tokamak-kv-fp8-"));
const backend = new CpuBackend({ threads: 2 });
after(() => {
  backend.dispose();
  rmSync(root, { recursive: true, force: true });
});

describe("fp8 KV cache", () => {
  it("attention over an fp8 cache equals attention over the same values rounded to e4m3, with scales", () => {
    const [T, Hq, Hkv, D, blockSize, numBlocks] = [11, 4, 2, 16, 4, 6];
    const rng = new Rng(3);
    const k = Float32Array.from(randn(rng, T * Hkv * D));
    const v = Float32Array.from(randn(rng, T * Hkv * D));
    const q = Float32Array.from(randn(rng, T * Hq * D));
    const scales = { k: 0.5, v: 0.25 };
    const lut = fp8e4m3Table();
    const round = (x: Float32Array, s: number) => x.map((e) => lut[f32ToFp8e4m3(e / s)]! * s);
    const t = (shape: number[], dtype: "f32" | "i32" | "fp8_e4m3", values?: ArrayLike<number>) => {
      const x = backend.alloc(shape, dtype, dtype === "fp8_e4m3" ? "kv-cache" : "activations", "t");
      if (values) backend.write(x, values);
      return x;
    };
    // Identity rotary tables: the cache holds exactly k and v.
    const rope: RopeTable = {
      cos: t([T, D / 2], "f32", new Float32Array(T * (D / 2)).fill(1)),
      sin: t([T, D / 2], "f32"),
      rotaryDim: D,
      maxPositions: T,
    };
    const blocks = [4, 0, 5]; // a shuffled block table
    const slots = Array.from({ length: T }, (_, p) => blocks[Math.floor(p / blockSize)]! * blockSize + (p % blockSize));
    const meta = {
      numSeqs: 1,
      queryStartLoc: t([2], "i32", [0, T]),
      seqLens: t([1], "i32", [T]),
      blockTables: t([1, 3], "i32", blocks),
      maxSeqLen: T,
    };
    const run = (dtype: "f32" | "fp8_e4m3", kv: { k: Float32Array; v: Float32Array }, s?: typeof scales) => {
      const kc = t([numBlocks, blockSize, Hkv, D], dtype);
      const vc = t([numBlocks, blockSize, Hkv, D], dtype);
      const qt = t([T, Hq, D], "f32", q);
      backend.ropeAndCacheWrite(
        qt,
        t([T, Hkv, D], "f32", kv.k),
        t([T, Hkv, D], "f32", kv.v),
        t(
          [T],
          "i32",
          Array.from({ length: T }, (_, i) => i),
        ),
        rope,
        t([T], "i32", slots),
        kc,
        vc,
        s,
      );
      const out = t([T, Hq, D], "f32");
      backend.pagedAttention(out, qt, kc, vc, meta, 1 / Math.sqrt(D), s);
      return backend.read(out);
    };
    const viaFp8 = run("fp8_e4m3", { k, v }, scales);
    const viaRounded = run("f32", { k: round(k, scales.k), v: round(v, scales.v) });
    assert.deepEqual(viaFp8, viaRounded);
    const exact = run("f32", { k, v });
    let err = 0;
    for (let i = 0; i < exact.length; i++) err = Math.max(err, Math.abs(exact[i]! - viaFp8[i]!));
    assert.ok(err > 0 && err < 0.2, `e4m3 rounding moves attention outputs by ${err}`);
  });

  it("the engine fits four times the blocks of an f32 cache in the same budget and generates alike", async () => {
    const dir = join(root, "m");
    writeTinyModel(dir, { arch: "qwen3", dtype: "bf16", vocabSize: 512, hiddenSize: 128, intermediateSize: 256, numLayers: 2, seed: 9 });
    const prompts = [5, 17, 40, 9].map((n) => Array.from({ length: n }, (_, i) => (i * 131 + n) % 512));
    const run = async (kvCacheDtype: "auto" | "fp8") => {
      const llm = LLM.open(dir, { maxModelLen: 128, kvCacheMemory: 4 * 2 ** 20, kvCacheDtype }, backend);
      try {
        const results = await llm.generate(prompts, { maxTokens: 12, temperature: 0 });
        return { blocks: llm.core.config.numBlocks, tokens: results.map((r) => r.outputs[0]!.tokenIds) };
      } finally {
        llm.close();
      }
    };
    const f32 = await run("auto");
    const fp8 = await run("fp8");
    assert.equal(fp8.blocks, 4 * f32.blocks);
    let same = 0;
    let total = 0;
    fp8.tokens.forEach((toks, i) => {
      // Up to the first difference: after it each follows its own path.
      let j = 0;
      while (j < toks.length && toks[j] === f32.tokens[i]![j]) j++;
      same += j;
      total += toks.length;
    });
    assert.ok(same >= total / 2, `${same}/${total} greedy tokens agree before the first difference`);
  });

  it("is refused by name on a backend without fp8 KV kernels, and a bad value is named", () => {
    const dir = join(root, "m");
    assert.throws(
      () => LLM.open(dir, { maxModelLen: 128, kvCacheMemory: 2 ** 20, kvCacheDtype: "fp8_e5m2" as "fp8" }, backend),
      /--kv-cache-dtype must be auto, fp8 or fp8_e4m3, got "fp8_e5m2"/,
    );
  });
});

/**
 * Every weight format against the bf16 model it came from: --quantization int8 / fp8 at load
 * (per-channel scales) and the GGUF types `tokamak quantize` writes. For each, KL(bf16 ‖ quantized)
 * of the next-token distribution and the top-1 agreement, teacher-forced along the bf16 model's
 * greedy path, printed as a table. Random Gaussian weights are the hardest case for quantization
 * (no outliers to spare, every weight matters) and a tiny model's peaked logits magnify it, so the
 * absolute divergences here are far above a trained model's; the bounds asserted are loose but
 * ordered: more bits, less divergence.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { convertHfToGguf } from "../src/convert/hf-to-gguf.js";
import { Generator } from "../src/engine/generator.js";
import type { QuantizationName } from "../src/model/quant-method.js";
import { klDivergence } from "./helpers/llama-cpp-compare.js";
import { argmax } from "./helpers/llama-cpp-oracle.js";
import { writeTinyModel } from "./helpers/tiny-model.js";

const root = mkdtempSync(join(tmpdir(), "tokamak-quant-quality-"));
const backend = new CpuBackend({ threads: 2 });
after(() => {
  backend.dispose();
  rmSync(root, { recursive: true, force: true });
});

const VOCAB = 2048;
const STEPS = 24;
const PROMPTS = [7, 30].map((n) => Array.from({ length: n }, (_, i) => (i * 4099 + 17 * n) % VOCAB));

interface Quality {
  format: string;
  meanKl: number;
  top1: number;
  weightBytes: number;
}

/** Logits along the reference's own greedy continuation of each prompt (the same token sequence for every format). */
function forcedLogits(path: string, opts: { quantization?: QuantizationName }, paths: number[][]): { rows: Float32Array[]; bytes: number } {
  const before = backend.memoryStats().byTag.weights;
  const gen = Generator.open(path, backend, { maxModelLen: 128, ...opts });
  const bytes = backend.memoryStats().byTag.weights - before;
  try {
    const rows: Float32Array[] = [];
    for (const [i, prompt] of PROMPTS.entries()) {
      const seq = [...prompt, ...paths[i]!];
      // One step per position of the continuation: the prompt plus j forced tokens gives the logits after them.
      for (let j = 0; j < STEPS; j++)
        rows.push(gen.generate(seq.slice(0, prompt.length + j), { maxTokens: 1, returnLogits: true }).logits![0]!);
    }
    return { rows, bytes };
  } finally {
    gen.close();
  }
}

describe("quantized formats against bf16", () => {
  it("KL(bf16 ‖ quantized) and top-1 agreement per format", () => {
    const dir = join(root, "qwen3");
    writeTinyModel(dir, {
      arch: "qwen3",
      dtype: "bf16",
      vocabSize: VOCAB,
      hiddenSize: 256,
      intermediateSize: 512,
      numHeads: 4,
      numKvHeads: 2,
      headDim: 64,
      numLayers: 2,
      seed: 77,
    });
    const ref = Generator.open(dir, backend, { maxModelLen: 128 });
    const paths = PROMPTS.map((p) => ref.generate(p, { maxTokens: STEPS }).tokens);
    ref.close();
    const base = forcedLogits(dir, {}, paths);
    const results: Quality[] = [];
    const measure = (format: string, path: string, opts: { quantization?: QuantizationName } = {}) => {
      const q = forcedLogits(path, opts, paths);
      let kl = 0;
      let same = 0;
      base.rows.forEach((row, i) => {
        kl += klDivergence(row, q.rows[i]!);
        if (argmax(row) === argmax(q.rows[i]!)) same++;
      });
      results.push({ format, meanKl: kl / base.rows.length, top1: same / base.rows.length, weightBytes: q.bytes });
    };
    measure("int8", dir, { quantization: "int8" });
    measure("fp8", dir, { quantization: "fp8" });
    for (const type of ["q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0"]) {
      const path = join(root, `${type}.gguf`);
      convertHfToGguf(dir, path, { outType: type });
      measure(type, path);
    }
    console.log(
      `\nformat   KL(bf16 ‖ q)   top-1   weights (bf16: ${base.bytes} bytes)\n` +
        results
          .map(
            (r) =>
              `${r.format.padEnd(8)} ${r.meanKl.toExponential(2).padStart(10)}   ${(100 * r.top1).toFixed(1).padStart(5)}%   ${r.weightBytes}`,
          )
          .join("\n"),
    );
    const of = (f: string) => results.find((r) => r.format === f)!;
    for (const r of results) {
      assert.ok(r.meanKl < 2, `${r.format}: KL ${r.meanKl}`);
      assert.ok(r.weightBytes < base.bytes, `${r.format} takes fewer bytes than bf16`);
    }
    assert.ok(of("int8").meanKl < of("q4_0").meanKl, "int8 diverges less than q4_0");
    assert.ok(of("q8_0").meanKl < of("q4_k_m").meanKl, "q8_0 diverges less than q4_k_m");
    assert.ok(of("q6_k").meanKl < of("q4_0").meanKl, "q6_k diverges less than q4_0");
    assert.ok(of("q8_0").top1 >= 0.85 && of("int8").top1 >= 0.85, "8-bit formats mostly keep the top token");
    assert.ok(of("q6_k").meanKl < of("q4_k_m").meanKl && of("q5_k_m").meanKl < of("q4_k_m").meanKl, "the K mixes order by bits");
  });
});

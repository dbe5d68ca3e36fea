/**
 * Quantized GGUF files served directly, with llama.cpp as the oracle for every type: tiny random
 * models of each architecture are quantized by Tokamak's quantizer (the code behind `tokamak
 * quantize`) and the same file is run by llama.cpp (node-llama-cpp) and by Tokamak.
 *
 * What agreement to expect. Both engines quantize the activations of each product to 8 bits in
 * ggml's format (Q8_0 / Q8_1 / Q8_K) and sum the integer products exactly; given the same inputs
 * the products agree to ~1e-7 (checked against llama.cpp's own intermediate tensors while this
 * was built). But the f32 arithmetic around them differs in the last bit (llama.cpp's compiler
 * fuses multiply-adds, glibc's sincosf, ggml's expf and summation trees), and a 1-ulp change in a
 * product's input can move one activation to the neighbouring 8-bit level or change a block's f16
 * scale: that step of 1/127 of a block's largest value is then carried through the layers. On
 * these tiny random-weight models (logit scale ~30, no redundancy) one such flip moves logits by
 * up to ~2% of the scale (measured ≤ 2.2% over every type and architecture here). So:
 * - teacher-forced logits within TOLERANCE = 3% of the logit scale at every step;
 * - the same argmax wherever Tokamak's top two are further apart than that;
 * - the mean KL(llama.cpp ‖ Tokamak) small, and reported per type;
 * - most steps bit-near-identical: many types agree to ~1e-7 at every step, and over all types
 *   most greedy sequences are identical end to end (llama.cpp's own token-by-token run and its
 *   batched evaluation can differ the same way, so a single sequence is counted, not asserted).
 * A wrong decoder, scale or block layout moves logits by the whole scale and fails at once.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { convertHfToGguf } from "../src/convert/hf-to-gguf.js";
import { compareWithLlamaCpp } from "./helpers/llama-cpp-compare.js";
import { disposeLlamaCpp } from "./helpers/llama-cpp-oracle.js";
import { writeQuantTinyModel } from "./helpers/quant-models.js";
import type { TinyArch } from "./helpers/tiny-model.js";

const root = mkdtempSync(join(tmpdir(), "tokamak-gguf-oracle-"));
const backend = new CpuBackend({ threads: 2 });
after(async () => {
  backend.dispose();
  await disposeLlamaCpp();
  rmSync(root, { recursive: true, force: true });
});

const VOCAB = 2048;
const STEPS = 32;
const TOLERANCE = 3e-2;
const PROMPTS = [5, 21, 70].map((n) => Array.from({ length: n }, (_, i) => (i * 7919 + 13 * n) % VOCAB));

const tinyModel = (arch: TinyArch, seed: number) => writeQuantTinyModel(root, arch, seed);

const TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m"] as const;
const table: string[] = [];

describe("quantized GGUF: Tokamak and llama.cpp on the same file", () => {
  const totals = { identical: 0, sequences: 0, exactTypes: 0 };
  after(() => {
    if (table.length)
      console.log(`\nKL(llama.cpp ‖ Tokamak), teacher-forced, ${STEPS} steps × ${PROMPTS.length} prompts\n${table.join("\n")}`);
  });
  for (const arch of ["qwen3", "llama", "qwen2"] as const) {
    // Every type on Qwen3; the others check what differs per architecture (Llama's Q/K row order, Qwen2's biases).
    const types = arch === "qwen3" ? TYPES : (["q8_0", "q4_k_m", "q6_k"] as const);
    for (const type of types) {
      it(`${arch} ${type}`, async (t) => {
        const dir = tinyModel(arch, 31);
        const path = join(root, `${arch}-${type}.gguf`);
        const result = convertHfToGguf(dir, path, { outType: type });
        assert.equal(result.outType, type);
        const stats = await compareWithLlamaCpp(t, backend, path, path, {
          tolerance: TOLERANCE,
          prompts: PROMPTS,
          steps: STEPS,
          freeRunning: "count",
        });
        assert.ok(stats.meanKl < 5e-3, `mean KL ${stats.meanKl}`);
        totals.identical += stats.identicalSequences;
        totals.sequences += stats.sequences;
        if (stats.maxDiff < 1e-5) totals.exactTypes++;
        table.push(
          `${arch.padEnd(6)} ${type.padEnd(7)} mean ${stats.meanKl.toExponential(2)} max ${stats.maxKl.toExponential(2)}  ` +
            `max logit diff ${stats.maxDiff.toExponential(2)}  ${stats.identicalSequences}/${stats.sequences} sequences identical`,
        );
      });
    }
  }
  it("over all types: most greedy sequences identical, and some types identical to ~1e-7 at every step", () => {
    assert.ok(totals.sequences >= 45, `${totals.sequences} sequences compared`);
    assert.ok(totals.identical >= 0.6 * totals.sequences, `${totals.identical}/${totals.sequences} free-running sequences identical`);
    assert.ok(totals.exactTypes >= 1, `${totals.exactTypes} types identical to 1e-5 of the scale at every step`);
  });
});

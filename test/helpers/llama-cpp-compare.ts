/**
 * Tokamak's greedy path against llama.cpp's on the same GGUF file (see llama-cpp-oracle.test.ts
 * for the method): teacher-forced logits within a tolerance of the logit scale, the same argmax
 * wherever Tokamak's top two are not a near-tie, the same free-running greedy tokens up to the
 * first near-tie, and the KL divergence between the two next-token distributions.
 */
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import type { Backend } from "../../src/backend/backend.js";
import type { DType } from "../../src/backend/dtype.js";
import { Generator } from "../../src/engine/generator.js";
import { argmax, LlamaCppOracle } from "./llama-cpp-oracle.js";

/** KL(p ‖ q) of the softmax distributions of two logit rows, in nats. */
export function klDivergence(p: ArrayLike<number>, q: ArrayLike<number>): number {
  const lse = (r: ArrayLike<number>) => {
    let m = -Infinity;
    for (let i = 0; i < r.length; i++) m = Math.max(m, r[i]!);
    let s = 0;
    for (let i = 0; i < r.length; i++) s += Math.exp(r[i]! - m);
    return m + Math.log(s);
  };
  const lp = lse(p);
  const lq = lse(q);
  let kl = 0;
  for (let i = 0; i < p.length; i++) {
    const a = p[i]! - lp;
    kl += Math.exp(a) * (a - (q[i]! - lq));
  }
  return Math.max(0, kl);
}

export interface StepStats {
  maxDiff: number;
  /** Mean KL(llama.cpp ‖ Tokamak) of the next-token distributions over the teacher-forced steps (nats). */
  meanKl: number;
  maxKl: number;
  nearTies: number;
  steps: number;
  identicalSequences: number;
  sequences: number;
}

/** Largest |value| of a logit row: the scale tolerances are relative to. */
export function maxAbs(row: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < row.length; i++) m = Math.max(m, Math.abs(row[i]!));
  return m;
}

/** The gap between a row's two largest values (a near-tie when within the tolerance). */
export function top2Gap(row: ArrayLike<number>): number {
  let a = -Infinity;
  let b = -Infinity;
  for (let i = 0; i < row.length; i++) {
    const v = row[i]!;
    if (v > a) [a, b] = [v, a];
    else if (v > b) b = v;
  }
  return a - b;
}

/**
 * Run Tokamak greedily on each prompt and check llama.cpp against it (teacher-forced logits and
 * argmax, free-running greedy tokens). `tolerance` is relative to each step's logit scale.
 */
export async function compareWithLlamaCpp(
  t: TestContext,
  backend: Backend,
  modelPath: string,
  ggufPath: string,
  opts: {
    tolerance: number;
    dtype?: DType;
    prompts: number[][];
    steps: number;
    /**
     * "assert" (default): llama.cpp's own greedy run must give Tokamak's tokens up to the first near-tie.
     * "count": only count identical sequences (quantized files, where llama.cpp's token-by-token run and
     * its batched evaluation can themselves differ by an amplified 8-bit rounding flip).
     */
    freeRunning?: "assert" | "count";
  },
): Promise<StepStats> {
  const { tolerance, steps } = opts;
  const stats: StepStats = { maxDiff: 0, meanKl: 0, maxKl: 0, nearTies: 0, steps: 0, identicalSequences: 0, sequences: 0 };
  const gen = Generator.open(modelPath, backend, { maxModelLen: 256, dtype: opts.dtype });
  const oracle = await LlamaCppOracle.load(ggufPath, { contextSize: 256, threads: 2 });
  try {
    assert.equal(oracle.vocabSize, gen.loaded.config.vocabSize, "the GGUF vocabulary has one token per embedding row");
    for (const prompt of opts.prompts) {
      const ours = gen.generate(prompt, { maxTokens: steps, returnLogits: true });
      const forced = await oracle.nextTokenLogits([...prompt, ...ours.tokens.slice(0, -1)], prompt.length);
      assert.equal(forced.length, steps);
      let firstNearTie = steps;
      for (let i = 0; i < steps; i++) {
        const mine = ours.logits![i]!;
        const theirs = forced[i]!;
        const scale = Math.max(1, maxAbs(mine));
        let diff = 0;
        for (let v = 0; v < mine.length; v++) diff = Math.max(diff, Math.abs(mine[v]! - theirs[v]!));
        assert.ok(Number.isFinite(diff), `prompt of ${prompt.length}, step ${i}: llama.cpp logits contain non-finite values`);
        stats.maxDiff = Math.max(stats.maxDiff, diff / scale);
        const kl = klDivergence(theirs, mine);
        stats.meanKl += kl;
        stats.maxKl = Math.max(stats.maxKl, kl);
        assert.ok(
          diff <= tolerance * scale,
          `prompt of ${prompt.length} tokens, step ${i}: logits differ by ${diff.toExponential(3)} (scale ${scale.toFixed(2)}, allowed ${(tolerance * scale).toExponential(3)})`,
        );
        const nearTie = top2Gap(mine) <= tolerance * scale;
        if (nearTie) {
          stats.nearTies++;
          firstNearTie = Math.min(firstNearTie, i);
        } else {
          assert.equal(
            argmax(theirs),
            ours.tokens[i],
            `prompt of ${prompt.length} tokens, step ${i}: llama.cpp's argmax differs (no near-tie)`,
          );
        }
        stats.steps++;
      }
      const free = await oracle.greedy(prompt, steps);
      if (opts.freeRunning !== "count")
        assert.deepEqual(
          free.slice(0, firstNearTie + 1),
          ours.tokens.slice(0, firstNearTie + 1),
          `prompt of ${prompt.length} tokens: llama.cpp's greedy tokens differ before the first near-tie (step ${firstNearTie})`,
        );
      stats.sequences++;
      if (free.every((tok, i) => tok === ours.tokens[i])) stats.identicalSequences++;
    }
  } finally {
    gen.close();
    await oracle.dispose();
  }
  stats.meanKl /= Math.max(1, stats.steps);
  t.diagnostic(
    `max logit diff ${stats.maxDiff.toExponential(2)} of scale; KL mean ${stats.meanKl.toExponential(2)} max ${stats.maxKl.toExponential(2)}; ${stats.nearTies}/${stats.steps} near-tie steps; ` +
      `${stats.identicalSequences}/${stats.sequences} free-running sequences identical`,
  );
  return stats;
}

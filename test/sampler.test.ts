import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { applyLogitsProcessors, foldSeed, Rng, sampleToken, type SamplingState, topKIndices } from "../src/engine/sampler.js";
import { resolveSamplingParams, type SamplingParams } from "../src/engine/sampling-params.js";

function state(over: Partial<SamplingState> = {}): SamplingState {
  return { promptTokenIds: [], outputTokenIds: [], outputCounts: new Map(), rng: new Rng(1), eosTokenIds: [], ...over };
}

function params(p: Partial<SamplingParams>): SamplingParams {
  return resolveSamplingParams({ maxTokens: 100, ...p });
}

/** Empirical support of 2000 draws. */
function support(logits: number[], p: Partial<SamplingParams>): Set<number> {
  const s = state({ rng: new Rng(123) });
  const seen = new Set<number>();
  for (let i = 0; i < 2000; i++) seen.add(sampleToken(Float32Array.from(logits), params(p), s).token);
  return seen;
}

describe("sampler", () => {
  const logits = [2.0, 1.0, 0.5, 0.0, -1.0, 3.0, -2.0, 1.5];
  // probabilities at T=1 (rounded): 5: .531 0: .195 7: .118 1: .072 2: .044 3: .026 4: .010 6: .004

  it("greedy picks the argmax", () => {
    assert.equal(sampleToken(Float32Array.from(logits), params({ temperature: 0 }), state()).token, 5);
  });

  it("top-k restricts the support to exactly the k best", () => {
    assert.deepEqual([...support(logits, { temperature: 1, topK: 3 })].sort(), [0, 5, 7]);
  });

  it("top-p keeps the smallest set reaching the mass", () => {
    // cumulative: 5 .531, 0 .726, 7 .845 -> p=0.8 needs {5, 0, 7}; p=0.65 needs {5, 0}
    assert.deepEqual([...support(logits, { temperature: 1, topP: 0.8 })].sort(), [0, 5, 7]);
    assert.deepEqual([...support(logits, { temperature: 1, topP: 0.65 })].sort(), [0, 5]);
    assert.deepEqual([...support(logits, { temperature: 1, topP: 0.5 })], [5]);
  });

  it("min-p drops tokens below min_p times the top probability", () => {
    // p(x)/p(5) = exp(l - 3): keeps l >= 3 + ln(0.3) = 1.80 -> {5, 0}
    assert.deepEqual([...support(logits, { temperature: 1, minP: 0.3 })].sort(), [0, 5]);
  });

  it("a seed reproduces the same draws, and different seeds differ", () => {
    const draw = (seed: number) => {
      const s = state({ rng: new Rng(seed) });
      return Array.from({ length: 50 }, () => sampleToken(Float32Array.from(logits), params({ temperature: 1.5 }), s).token);
    };
    assert.deepEqual(draw(7), draw(7));
    assert.notDeepEqual(draw(7), draw(8));
  });

  it("sampling frequencies follow softmax(logits / T)", () => {
    const s = state({ rng: new Rng(99) });
    const counts = new Array(logits.length).fill(0);
    const N = 20000;
    for (let i = 0; i < N; i++) counts[sampleToken(Float32Array.from(logits), params({ temperature: 2 }), s).token]++;
    const z = logits.reduce((a, l) => a + Math.exp(l / 2), 0);
    logits.forEach((l, i) => assert.ok(Math.abs(counts[i] / N - Math.exp(l / 2) / z) < 0.015, `token ${i}`));
  });

  it("penalties and logit bias change logits as specified", () => {
    const row = Float32Array.from([1, -1, 2, 0.5]);
    applyLogitsProcessors(
      row,
      params({ repetitionPenalty: 2, frequencyPenalty: 0.5, presencePenalty: 0.25, logitBias: { 3: 10 } }),
      state({
        promptTokenIds: [0],
        outputTokenIds: [1, 2, 2],
        outputCounts: new Map([
          [1, 1],
          [2, 2],
        ]),
      }),
    );
    assert.deepEqual(Array.from(row), [1 / 2, -1 * 2 - 0.5 - 0.25, 2 / 2 - 1 - 0.25, 10.5]);
  });

  it("min_tokens masks end-of-sequence and stop ids until reached", () => {
    const row = Float32Array.from([0, 5, 0, 4]);
    const p = params({ minTokens: 2, stopTokenIds: [3], temperature: 0 });
    assert.equal(sampleToken(row.slice(), p, state({ eosTokenIds: [1] })).token, 0);
    assert.equal(sampleToken(row.slice(), p, state({ eosTokenIds: [1], outputTokenIds: [0, 0] })).token, 1);
  });

  it("logprobs are the model's log-softmax, with the top alternatives", () => {
    const r = sampleToken(Float32Array.from(logits), params({ temperature: 0, logprobs: 2 }), state());
    const lse = Math.log(logits.reduce((a, l) => a + Math.exp(l), 0));
    assert.ok(Math.abs(r.logprob! - (3 - lse)) < 1e-6);
    assert.deepEqual(
      r.topLogprobs!.map((t) => t.token),
      [5, 0],
    );
  });

  it("topKIndices returns the k largest, best first", () => {
    const row = Float32Array.from(
      { length: 1000 },
      (_, i) => Math.sin(i * 12.9898) * 43758.5453 - Math.floor(Math.sin(i * 12.9898) * 43758.5453),
    );
    const want = Array.from(row.keys())
      .sort((a, b) => row[b]! - row[a]!)
      .slice(0, 7);
    assert.deepEqual(topKIndices(row, 7), want);
  });

  it("rejects bad parameters naming the field", () => {
    assert.throws(() => resolveSamplingParams({ temperature: -1 }), /temperature must be a number >= 0, got -1/);
    assert.throws(() => resolveSamplingParams({ topP: 0 }), /top_p must be a number in \(0, 1\]/);
    assert.throws(() => resolveSamplingParams({ n: 0 }), /n must be an integer in \[1, 128\]/);
    assert.throws(() => resolveSamplingParams({ maxTokens: 4, minTokens: 5 }), /min_tokens must be an integer in \[0, max_tokens=4\]/);
    assert.equal(resolveSamplingParams({ topK: -1 }).topK, 0);
  });
});

describe("seeds", () => {
  it("every bit of a 64-bit seed counts: 2^32, 2^53 and 2^63 do not alias 0; seeds below 2^32 keep their stream", () => {
    const first = (seed: number) =>
      Array.from(
        { length: 4 },
        (
          (r) => () =>
            r.next()
        )(new Rng(seed)),
      );
    const streams = [0, 2 ** 32, 2 ** 53, 2 ** 63, -1, -(2 ** 32)].map((s) => first(s).join());
    assert.equal(new Set(streams).size, streams.length);
    assert.deepEqual(first(12345), first(12345 + 0));
    assert.equal(foldSeed(12345), 12345);
    assert.notEqual(foldSeed(2 ** 32), foldSeed(0));
    assert.equal(foldSeed(-(2 ** 63)), foldSeed(2 ** 63), "a negative seed is its 64-bit two's complement");
  });
});

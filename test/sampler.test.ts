import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { applyLogitsProcessors, argmax, sampleRows, topKIndices } from "../src/backend/cpu/sample.js";
import { foldSeed, philox2x32, Rng, uniform } from "../src/backend/rng.js";
import { type SampleRow, SamplingRow } from "../src/backend/sampling.js";
import { resolveSamplingParams, type SamplingParams, samplingRowParams } from "../src/engine/sampling-params.js";

function params(p: Partial<SamplingParams>): SamplingParams {
  return resolveSamplingParams({ maxTokens: 100, ...p });
}

function row(p: Partial<SamplingParams>, opts: { key?: number; prompt?: number[]; output?: number[]; eos?: number[] } = {}): SamplingRow {
  return new SamplingRow(samplingRowParams(params(p), opts.key ?? 1, opts.eos ?? []), opts.prompt ?? [], opts.output ?? []);
}

/** Sample one token from `logits` with the sampling op, and record it in the row (as an executor does). */
function sample(logits: number[], r: SamplingRow, mask?: Uint32Array): ReturnType<typeof sampleRows> {
  const x = Float32Array.from(logits);
  const rows: SampleRow[] = [mask ? { row: r, mask } : { row: r }];
  const out = sampleRows(x, 0, x.length, x.length, rows);
  r.accept(out.tokens[0]!);
  return out;
}

/** Empirical support of 2000 draws. */
function support(logits: number[], p: Partial<SamplingParams>): Set<number> {
  const r = row(p, { key: 123 });
  const seen = new Set<number>();
  for (let i = 0; i < 2000; i++) seen.add(sample(logits, r).tokens[0]!);
  return seen;
}

describe("sampling op (CPU)", () => {
  const logits = [2.0, 1.0, 0.5, 0.0, -1.0, 3.0, -2.0, 1.5];
  // probabilities at T=1 (rounded): 5: .531 0: .195 7: .118 1: .072 2: .044 3: .026 4: .010 6: .004

  it("greedy picks the argmax (the first on ties)", () => {
    assert.equal(sample(logits, row({ temperature: 0 })).tokens[0], 5);
    assert.equal(argmax(Float32Array.from([1, 3, 3, 2])), 1);
    assert.equal(argmax(Float32Array.from([-Infinity, -Infinity])), 0);
  });

  it("top-k restricts the support to exactly the k best", () => {
    assert.deepEqual([...support(logits, { temperature: 1, topK: 3 })].sort(), [0, 5, 7]);
  });

  it("top-k keeps the lower index among tokens tied at the k-th value", () => {
    const tied = [1, 5, 1, 1, 0];
    assert.deepEqual([...support(tied, { temperature: 1, topK: 2 })].sort(), [0, 1]);
  });

  it("top-p keeps the smallest set reaching the mass", () => {
    // cumulative: 5 .531, 0 .726, 7 .845 -> p=0.8 needs {5, 0, 7}; p=0.65 needs {5, 0}
    assert.deepEqual([...support(logits, { temperature: 1, topP: 0.8 })].sort(), [0, 5, 7]);
    assert.deepEqual([...support(logits, { temperature: 1, topP: 0.65 })].sort(), [0, 5]);
    assert.deepEqual([...support(logits, { temperature: 1, topP: 0.5 })], [5]);
  });

  it("top-p over a large vocabulary matches the sorted definition", () => {
    const r = new Rng(5);
    const big = Array.from({ length: 20_000 }, () => (r.next() - 0.5) * 12);
    const order = big.map((_, i) => i).sort((a, b) => big[b]! - big[a]! || a - b);
    const w = order.map((i) => Math.exp(big[i]! - big[order[0]!]!));
    const total = w.reduce((a, b) => a + b, 0);
    let acc = 0;
    let k = 0;
    while (acc < 0.3 * total) acc += w[k++]!;
    const want = new Set(order.slice(0, k));
    const got = support(big, { temperature: 1, topP: 0.3 });
    for (const t of got) assert.ok(want.has(t), `token ${t} is outside the top-p set`);
    assert.ok(got.size > k / 2, `the draws cover the set (${got.size} of ${k})`);
  });

  it("top-k over a large vocabulary keeps exactly the k best (ties at the cut by lower index)", () => {
    const r = new Rng(6);
    const big = Array.from({ length: 30_000 }, () => Math.round((r.next() - 0.5) * 48) / 4);
    const order = big.map((_, i) => i).sort((a, b) => big[b]! - big[a]! || a - b);
    const want = new Set(order.slice(0, 40));
    const got = support(big, { temperature: 3, topK: 40 });
    for (const t of got) assert.ok(want.has(t), `token ${t} is outside the top-k set`);
    assert.ok(got.size > 30, `the draws cover the set (${got.size} of 40)`);
  });

  it("min-p drops tokens below min_p times the top probability", () => {
    // p(x)/p(5) = exp(l - 3): keeps l >= 3 + ln(0.3) = 1.80 -> {5, 0}
    assert.deepEqual([...support(logits, { temperature: 1, minP: 0.3 })].sort(), [0, 5]);
  });

  it("a seed reproduces the same draws, and different seeds differ", () => {
    const draw = (key: number) => {
      const r = row({ temperature: 1.5 }, { key });
      return Array.from({ length: 50 }, () => sample(logits, r).tokens[0]);
    };
    assert.deepEqual(draw(7), draw(7));
    assert.notDeepEqual(draw(7), draw(8));
  });

  it("the n-th draw of a key is the same wherever the row sits in a batch", () => {
    const V = logits.length;
    const alone = row({ temperature: 1.2 }, { key: 77 });
    const solo = Array.from({ length: 20 }, () => sample(logits, alone).tokens[0]);
    const rows = Array.from({ length: 5 }, (_, i) => row({ temperature: 1.2 }, { key: i === 3 ? 77 : 1000 + i }));
    const batched: number[] = [];
    for (let step = 0; step < 20; step++) {
      const x = new Float32Array(5 * V);
      for (let i = 0; i < 5; i++) x.set(logits, i * V);
      const out = sampleRows(
        x,
        0,
        V,
        V,
        rows.map((r) => ({ row: r })),
      );
      rows.forEach((r, i) => r.accept(out.tokens[i]!));
      batched.push(out.tokens[3]!);
    }
    assert.deepEqual(batched, solo);
  });

  it("sampling frequencies follow softmax(logits / T)", () => {
    const r = row({ temperature: 2 }, { key: 99 });
    const counts = new Array(logits.length).fill(0);
    const N = 20000;
    for (let i = 0; i < N; i++) counts[sample(logits, r).tokens[0]!]++;
    const z = logits.reduce((a, l) => a + Math.exp(l / 2), 0);
    logits.forEach((l, i) => assert.ok(Math.abs(counts[i] / N - Math.exp(l / 2) / z) < 0.015, `token ${i}`));
  });

  it("penalties and logit bias change logits as specified", () => {
    const x = Float32Array.from([1, -1, 2, 0.5]);
    applyLogitsProcessors(
      x,
      row({ repetitionPenalty: 2, frequencyPenalty: 0.5, presencePenalty: 0.25, logitBias: { 3: 10 } }, { prompt: [0], output: [1, 2, 2] }),
    );
    assert.deepEqual(Array.from(x), [1 / 2, -1 * 2 - 0.5 - 0.25, 2 / 2 - 1 - 0.25, 10.5]);
  });

  it("min_tokens masks end-of-sequence and stop ids until reached", () => {
    const x = [0, 5, 0, 4];
    const p = { minTokens: 2, stopTokenIds: [3], temperature: 0 };
    assert.equal(sample(x, row(p, { eos: [1] })).tokens[0], 0);
    assert.equal(sample(x, row(p, { eos: [1], output: [0, 0] })).tokens[0], 1);
    assert.equal(sample(x, row({ ...p, ignoreEos: true }, { eos: [1] })).tokens[0], 1, "ignore_eos leaves eos unmasked");
  });

  it("an allowed-token mask restricts the choice, greedy and sampled", () => {
    const mask = new Uint32Array([(1 << 1) | (1 << 4)]);
    assert.equal(sample(logits, row({ temperature: 0 }), mask).tokens[0], 1);
    const r = row({ temperature: 1 }, { key: 3 });
    for (let i = 0; i < 200; i++) assert.ok([1, 4].includes(sample(logits, r, mask).tokens[0]!));
    assert.throws(() => sample(new Array(40).fill(0), row({}), new Uint32Array(1)), /mask has 1 words; a vocabulary of 40 needs 2/);
  });

  it("logprobs are the model's log-softmax (before penalties and masks), with the top alternatives", () => {
    const out = sample(logits, row({ temperature: 0, logprobs: 2, logitBias: { 1: 5 } }));
    const lse = Math.log(logits.reduce((a, l) => a + Math.exp(l), 0));
    assert.equal(out.tokens[0], 1, "the bias moved the choice");
    assert.ok(Math.abs(out.logprobs[0]!.logprob - (1 - lse)) < 1e-6, "the chosen token's raw logprob");
    assert.deepEqual(
      out.logprobs[0]!.top!.map((t) => t.token),
      [5, 0],
    );
    assert.equal(sample(logits, row({ temperature: 0 })).logprobs[0], null, "none unless asked");
  });

  it("topKIndices returns the k largest, best first", () => {
    const x = Float32Array.from(
      { length: 1000 },
      (_, i) => Math.sin(i * 12.9898) * 43758.5453 - Math.floor(Math.sin(i * 12.9898) * 43758.5453),
    );
    const want = Array.from(x.keys())
      .sort((a, b) => x[b]! - x[a]!)
      .slice(0, 7);
    assert.deepEqual(topKIndices(x, 7), want);
  });

  it("rejects bad parameters naming the field", () => {
    assert.throws(() => resolveSamplingParams({ temperature: -1 }), /temperature must be a number >= 0, got -1/);
    assert.throws(() => resolveSamplingParams({ topP: 0 }), /top_p must be a number in \(0, 1\]/);
    assert.throws(() => resolveSamplingParams({ n: 0 }), /n must be an integer in \[1, 128\]/);
    assert.throws(() => resolveSamplingParams({ maxTokens: 4, minTokens: 5 }), /min_tokens must be an integer in \[0, max_tokens=4\]/);
    assert.equal(resolveSamplingParams({ topK: -1 }).topK, 0);
  });
});

describe("counter-based generator", () => {
  it("Philox2x32-10 matches the Random123 known-answer vectors", () => {
    const out = [0, 0];
    philox2x32(0, 0, 0, out);
    assert.deepEqual(out, [0xff1dae59, 0x6cd10df2]);
    philox2x32(0xffffffff, 0xffffffff, 0xffffffff, out);
    assert.deepEqual(out, [0x2c3f628b, 0xab4fd7ad]);
    philox2x32(0x13198a2e, 0x243f6a88, 0x85a308d3, out);
    assert.deepEqual(out, [0xdd7ce038, 0xf62a4c12]);
  });

  it("draws are uniform in [0, 1) and depend on key, counter and stream", () => {
    let sum = 0;
    for (let i = 0; i < 10_000; i++) {
      const u = uniform(9, i);
      assert.ok(u >= 0 && u < 1);
      sum += u;
    }
    assert.ok(Math.abs(sum / 10_000 - 0.5) < 0.01);
    assert.notEqual(uniform(9, 0), uniform(10, 0));
    assert.notEqual(uniform(9, 0), uniform(9, 1));
    assert.notEqual(uniform(9, 0, 0), uniform(9, 0, 1));
  });

  it("every bit of a 64-bit seed counts: 2^32, 2^53 and 2^63 do not alias 0; seeds below 2^32 are their own key", () => {
    const first = (seed: number) =>
      Array.from(
        { length: 4 },
        (
          (r) => () =>
            r.next()
        )(new Rng(seed)),
      ).join();
    const streams = [0, 2 ** 32, 2 ** 53, 2 ** 63, -1, -(2 ** 32)].map(first);
    assert.equal(new Set(streams).size, streams.length);
    assert.equal(foldSeed(12345), 12345);
    assert.notEqual(foldSeed(2 ** 32), foldSeed(0));
    assert.equal(foldSeed(-(2 ** 63)), foldSeed(2 ** 63), "a negative seed is its 64-bit two's complement");
  });
});

describe("sampling op on the CPU backend (sample.wat over the logits in a wasm memory)", () => {
  it("gives exactly the JavaScript reference's tokens and logprobs, greedy and sampled, ties and masked rows included", async () => {
    const { CpuBackend } = await import("../src/backend/cpu/cpu-backend.js");
    const backend = new CpuBackend({ threads: 1 });
    try {
      const V = 1003; // not a multiple of 16: the scalar tails count
      const R = 24;
      const logits = backend.alloc([R, V], "f32", "activations", "test logits", { samplingInput: true });
      assert.ok((logits.storage as { wasm?: unknown }).wasm, "the logits are a wasm memory where SIMD is available");
      const r = new Rng(17);
      const data = new Float32Array(R * V);
      for (let i = 0; i < data.length; i++) data[i] = Math.round((r.next() - 0.5) * 40) / 4; // many ties
      for (let i = 0; i < V; i++) data[3 * V + i] = -Infinity; // a row with nothing allowed
      data[5 * V + V - 1] = 99; // the maximum in the tail
      data[6 * V] = 99; // ... and at the start
      const makeRows = () =>
        Array.from({ length: R }, (_, i) => ({
          row: row(i % 3 === 0 ? { temperature: 0, logprobs: 2 } : { temperature: 0.7, topP: 0.9, topK: i % 2 ? 20 : 0, seed: i }, {
            key: 500 + i,
            prompt: [i, i + 1],
          }),
        }));
      backend.write(logits, data);
      const got = backend.sample(logits, makeRows());
      const want = sampleRows(data.slice(), 0, V, V, makeRows());
      assert.deepEqual([...got.tokens], [...want.tokens]);
      assert.deepEqual(got.logprobs, want.logprobs);
      assert.equal(got.tokens[5], V - 1);
      assert.equal(got.tokens[6], 0);
    } finally {
      backend.dispose();
    }
  });
});

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { randn as normals, Rng } from "./helpers/random.js";

const randn = (rng: Rng, n: number) => Float32Array.from(normals(rng, n));

const backend = new CpuBackend({ threads: 2 });
after(() => backend.dispose());

interface SeqSpec {
  /** Context already cached before this step. */
  cached: number;
  /** New query tokens this step. */
  queries: number;
}

/** Dense causal attention for one sequence: keys/values given position by position. */
function denseAttention(
  q: Float32Array,
  keys: Float32Array,
  values: Float32Array,
  ctx: number,
  qLen: number,
  Hq: number,
  Hkv: number,
  D: number,
) {
  const out = new Float64Array(qLen * Hq * D);
  const G = Hq / Hkv;
  for (let j = 0; j < qLen; j++) {
    const pos = ctx - qLen + j;
    for (let h = 0; h < Hq; h++) {
      const kvh = Math.floor(h / G);
      const scores: number[] = [];
      for (let p = 0; p <= pos; p++) {
        let s = 0;
        for (let d = 0; d < D; d++) s += q[(j * Hq + h) * D + d]! * keys[(p * Hkv + kvh) * D + d]!;
        scores.push(s / Math.sqrt(D));
      }
      const m = Math.max(...scores);
      const e = scores.map((s) => Math.exp(s - m));
      const z = e.reduce((a, b) => a + b, 0);
      for (let p = 0; p <= pos; p++) {
        for (let d = 0; d < D; d++) out[(j * Hq + h) * D + d] = out[(j * Hq + h) * D + d]! + (e[p]! / z) * values[(p * Hkv + kvh) * D + d]!;
      }
    }
  }
  return out;
}

function runMixedBatch(specs: SeqSpec[], Hq: number, Hkv: number, D: number, blockSize: number, seed: number) {
  const rng = new Rng(seed);
  const numBlocks = specs.reduce((a, s) => a + Math.ceil((s.cached + s.queries) / blockSize), 0) + 3;
  // Hand blocks out in a shuffled order so every block table is non-contiguous.
  const free = Array.from({ length: numBlocks }, (_, i) => i);
  for (let i = free.length - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    [free[i], free[j]] = [free[j]!, free[i]!];
  }
  const tables = specs.map((s) => free.splice(0, Math.ceil((s.cached + s.queries) / blockSize)));
  const width = Math.max(...tables.map((t) => t.length));
  const T = specs.reduce((a, s) => a + s.queries, 0);
  const kCache = backend.alloc([numBlocks, blockSize, Hkv, D], "f32", "kv-cache", "k");
  const vCache = backend.alloc([numBlocks, blockSize, Hkv, D], "f32", "kv-cache", "v");
  const kc = new Float32Array(kCache.numel);
  const vc = new Float32Array(vCache.numel);
  const q = backend.alloc([T, Hq, D], "f32", "activations", "q");
  const qHost = randn(rng, T * Hq * D);
  backend.write(q, qHost);
  const perSeq = specs.map((s, i) => {
    const ctx = s.cached + s.queries;
    const keys = randn(rng, ctx * Hkv * D);
    const values = randn(rng, ctx * Hkv * D);
    for (let p = 0; p < ctx; p++) {
      const slot = tables[i]![Math.floor(p / blockSize)]! * blockSize + (p % blockSize);
      kc.set(keys.subarray(p * Hkv * D, (p + 1) * Hkv * D), slot * Hkv * D);
      vc.set(values.subarray(p * Hkv * D, (p + 1) * Hkv * D), slot * Hkv * D);
    }
    return { keys, values, ctx };
  });
  backend.write(kCache, kc);
  backend.write(vCache, vc);
  const qsl = [0];
  for (const s of specs) qsl.push(qsl[qsl.length - 1]! + s.queries);
  const i32 = (vals: number[], shape: number[]) => {
    const t = backend.alloc(shape, "i32", "workspace", "meta");
    backend.write(t, vals);
    return t;
  };
  const bt = tables.flatMap((t) => [...t, ...new Array<number>(width - t.length).fill(-1)]);
  const out = backend.alloc([T, Hq, D], "f32", "activations", "out");
  backend.pagedAttention(
    out,
    q,
    kCache,
    vCache,
    {
      numSeqs: specs.length,
      queryStartLoc: i32(qsl, [specs.length + 1]),
      seqLens: i32(
        perSeq.map((p) => p.ctx),
        [specs.length],
      ),
      blockTables: i32(bt, [specs.length, width]),
      maxSeqLen: Math.max(...perSeq.map((p) => p.ctx)),
    },
    1 / Math.sqrt(D),
  );
  const got = backend.read(out);
  let maxErr = 0;
  specs.forEach((s, i) => {
    const qs = qHost.subarray(qsl[i]! * Hq * D, qsl[i + 1]! * Hq * D);
    const want = denseAttention(qs, perSeq[i]!.keys, perSeq[i]!.values, perSeq[i]!.ctx, s.queries, Hq, Hkv, D);
    for (let e = 0; e < want.length; e++) maxErr = Math.max(maxErr, Math.abs(got[qsl[i]! * Hq * D + e]! - want[e]!));
  });
  return maxErr;
}

describe("paged attention (CPU) equals dense causal attention", () => {
  it("mixed batch: prefill chunks with and without cached context, and decodes", () => {
    const specs = [
      { cached: 0, queries: 23 }, // fresh prefill spanning two blocks
      { cached: 40, queries: 1 }, // decode
      { cached: 16, queries: 9 }, // second chunk of a prefill, starting on a block boundary
      { cached: 5, queries: 1 }, // decode inside the first block
      { cached: 33, queries: 17 }, // chunk crossing block boundaries
    ];
    assert.ok(runMixedBatch(specs, 8, 2, 16, 16, 1) < 1e-5);
  });

  it("MHA (no grouping), block size 4, long decodes", () => {
    const specs = [
      { cached: 100, queries: 1 },
      { cached: 0, queries: 3 },
      { cached: 63, queries: 1 },
    ];
    assert.ok(runMixedBatch(specs, 4, 4, 8, 4, 2) < 1e-5);
  });

  it("GQA group of 4 with head size 64", () => {
    const specs = [
      { cached: 7, queries: 12 },
      { cached: 0, queries: 1 },
    ];
    assert.ok(runMixedBatch(specs, 8, 2, 64, 16, 3) < 1e-5);
  });
});

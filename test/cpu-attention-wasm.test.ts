// The CPU backend's wasm SIMD paged attention (src/backend/cpu/attention.wat): values against an
// f64 dense reference over random mixed batches (prefill chunks after cached prefixes, whole
// prefills, decodes; shuffled non-contiguous block tables; GQA and MHA; strided q/out views),
// and the determinism the engine's batch invariance relies on, bit for bit: a query row's output
// must not depend on the rest of the batch, on the row block it falls in, or on the thread count.
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { type AttentionArgs, attentionRange, Scratch } from "../src/backend/cpu/kernels.js";
import { ThreadPool } from "../src/backend/cpu/pool.js";
import { planAttention } from "../src/backend/cpu/wasm-attention.js";
import { wasmModule } from "../src/backend/cpu/wasm-linear.js";
import { gaussian as randn, Rng } from "./helpers/random.js";

const att = wasmModule("attention.wat");
const pools = new Map<string, ThreadPool>();
function pool(threads: number, attention: "wasm" | "js" = "wasm"): ThreadPool {
  const key = `${threads}/${attention}`;
  let p = pools.get(key);
  if (!p) pools.set(key, (p = new ThreadPool(threads, { attention })));
  return p;
}
after(() => {
  for (const p of pools.values()) p.dispose();
});

interface SeqSpec {
  /** Tokens already in the cache before this step. */
  cached: number;
  /** New query tokens this step. */
  queries: number;
}

interface Case {
  specs: SeqSpec[];
  Hq: number;
  Hkv: number;
  D: number;
  bs: number;
  scale: number;
  /** Per sequence: keys/values position by position, [ctx, Hkv, D], and its queries [qLen, Hq, D]. */
  keys: Float32Array[];
  values: Float32Array[];
  queries: Float32Array[];
  /** Per sequence: its cache blocks, in logical order. */
  tables: number[][];
  kCache: Float32Array;
  vCache: Float32Array;
  /** Extra floats per q/out token row and per head (a strided view, as q is of a fused qkv). */
  rowPad: number;
  headPad: number;
}

const shared = (n: number) => new Float32Array(new SharedArrayBuffer(4 * n));
const sharedI32 = (v: number[]) => {
  const a = new Int32Array(new SharedArrayBuffer(4 * Math.max(1, v.length)));
  a.set(v);
  return a;
};

function makeCase(rng: Rng, specs: SeqSpec[], Hq: number, Hkv: number, D: number, bs: number, scale: number): Case {
  const kvRow = Hkv * D;
  const need = specs.map((s) => Math.ceil((s.cached + s.queries) / bs));
  const numBlocks = need.reduce((a, b) => a + b, 0) + 3;
  // Blocks handed out in a shuffled order, so that tables are neither contiguous nor increasing.
  const ids = Array.from({ length: numBlocks }, (_, i) => i);
  for (let i = ids.length - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    [ids[i], ids[j]] = [ids[j]!, ids[i]!];
  }
  const kCache = shared(numBlocks * bs * kvRow).map(() => randn(rng));
  const vCache = shared(numBlocks * bs * kvRow).map(() => randn(rng));
  const tables: number[][] = [];
  const keys: Float32Array[] = [];
  const values: Float32Array[] = [];
  const queries: Float32Array[] = [];
  let next = 0;
  specs.forEach((s, i) => {
    const table = ids.slice(next, next + need[i]!);
    next += need[i]!;
    tables.push(table);
    const ctx = s.cached + s.queries;
    const k = new Float32Array(ctx * kvRow);
    const v = new Float32Array(ctx * kvRow);
    for (let p = 0; p < ctx; p++) {
      const src = (table[Math.floor(p / bs)]! * bs + (p % bs)) * kvRow;
      k.set(kCache.subarray(src, src + kvRow), p * kvRow);
      v.set(vCache.subarray(src, src + kvRow), p * kvRow);
    }
    keys.push(k);
    values.push(v);
    queries.push(new Float32Array(s.queries * Hq * D).map(() => randn(rng)));
  });
  const pad = rng.next() < 0.5;
  return { specs, Hq, Hkv, D, bs, scale, keys, values, queries, tables, kCache, vCache, rowPad: pad ? 5 * 4 : 0, headPad: pad ? 4 : 0 };
}

/** The batch of the sequences `which` (in that order), as the backend would pass it, with a fresh output. */
function makeArgs(c: Case, which: number[]): { args: AttentionArgs; rowOf: number[] } {
  const { Hq, D } = c;
  const hs = D + c.headPad;
  const ts = Hq * hs + c.rowPad;
  const T = which.reduce((a, s) => a + c.specs[s]!.queries, 0);
  const q = shared(3 + T * ts);
  const out = shared(7 + T * ts).fill(Number.NaN);
  const qsl = [0];
  const rowOf: number[] = [];
  const maxBlocks = Math.max(1, ...which.map((s) => c.tables[s]!.length)) + 1;
  const bt = new Array<number>(which.length * maxBlocks).fill(-1);
  which.forEach((s, i) => {
    const spec = c.specs[s]!;
    rowOf.push(qsl[i]!);
    for (let j = 0; j < spec.queries; j++) {
      for (let h = 0; h < Hq; h++) {
        const src = (j * Hq + h) * D;
        q.set(c.queries[s]!.subarray(src, src + D), 3 + (qsl[i]! + j) * ts + h * hs);
      }
    }
    qsl.push(qsl[i]! + spec.queries);
    c.tables[s]!.forEach((b, k) => (bt[i * maxBlocks + k] = b));
  });
  const args: AttentionArgs = {
    out,
    outOffset: 7,
    outStrides: [ts, hs],
    q,
    qOffset: 3,
    qStrides: [ts, hs],
    kCache: c.kCache,
    kOffset: 0,
    vCache: c.vCache,
    vOffset: 0,
    blockSize: c.bs,
    numHeads: Hq,
    numKvHeads: c.Hkv,
    headDim: D,
    queryStartLoc: sharedI32(qsl),
    qslOffset: 0,
    seqLens: sharedI32(which.map((s) => c.specs[s]!.cached + c.specs[s]!.queries)),
    seqLensOffset: 0,
    blockTables: sharedI32(bt),
    btOffset: 0,
    btStride: maxBlocks,
    numSeqs: which.length,
    scale: c.scale,
  };
  return { args, rowOf };
}

/** Output row (token t, head h) of a call, D floats. */
function outRow(a: AttentionArgs, t: number, h: number): Float32Array {
  const o = a.outOffset + t * a.outStrides[0] + h * a.outStrides[1];
  return a.out.slice(o, o + a.headDim);
}

/** Dense causal attention in f64 for sequence s: [qLen, Hq, D]. */
function reference(c: Case, s: number): Float64Array {
  const { Hq, Hkv, D } = c;
  const { cached, queries: qLen } = c.specs[s]!;
  const q = c.queries[s]!;
  const k = c.keys[s]!;
  const v = c.values[s]!;
  const G = Hq / Hkv;
  const out = new Float64Array(qLen * Hq * D);
  for (let j = 0; j < qLen; j++) {
    const n = cached + j + 1;
    for (let h = 0; h < Hq; h++) {
      const kvh = Math.floor(h / G);
      const sc = new Float64Array(n);
      for (let p = 0; p < n; p++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[(j * Hq + h) * D + d]! * k[(p * Hkv + kvh) * D + d]!;
        sc[p] = dot * c.scale;
      }
      const m = Math.max(...sc);
      let z = 0;
      for (let p = 0; p < n; p++) z += sc[p] = Math.exp(sc[p]! - m);
      for (let p = 0; p < n; p++) {
        for (let d = 0; d < D; d++) out[(j * Hq + h) * D + d] = out[(j * Hq + h) * D + d]! + (sc[p]! / z) * v[(p * Hkv + kvh) * D + d]!;
      }
    }
  }
  return out;
}

function checkAgainstReference(c: Case, which: number[], a: AttentionArgs, rowOf: number[], what: string): void {
  let worst = 0;
  which.forEach((s, i) => {
    const ref = reference(c, s);
    for (let j = 0; j < c.specs[s]!.queries; j++) {
      for (let h = 0; h < c.Hq; h++) {
        const got = outRow(a, rowOf[i]! + j, h);
        for (let d = 0; d < c.D; d++) {
          const want = ref[(j * c.Hq + h) * c.D + d]!;
          const err = Math.abs(got[d]! - want) / Math.max(1, Math.abs(want));
          if (!(err <= worst)) worst = Number.isNaN(err) ? Infinity : err;
        }
      }
    }
  });
  assert.ok(worst < 1e-5, `${what}: worst relative error ${worst}`);
}

function assertBitEqual(got: Float32Array, want: Float32Array, what: string): void {
  const g = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const w = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < g.length; i++) if (g[i] !== w[i]) assert.fail(`${what}: element ${i} is ${got[i]}, expected ${want[i]}`);
}

/** A random mixed batch: chunks of prefills after cached prefixes, whole prefills, decodes. */
function randomSpecs(rng: Rng, maxLen: number): SeqSpec[] {
  const n = 1 + Math.floor(rng.next() * 5);
  const specs: SeqSpec[] = [];
  for (let i = 0; i < n; i++) {
    const r = rng.next();
    const cached = r < 0.3 ? 0 : Math.floor(rng.next() * maxLen);
    const queries = r < 0.3 ? 1 + Math.floor(rng.next() * maxLen) : r < 0.65 ? 1 : 1 + Math.floor(rng.next() * 40);
    specs.push({ cached, queries });
  }
  return specs;
}

const SHAPES: readonly [Hq: number, Hkv: number, D: number][] = [
  [8, 4, 64],
  [4, 4, 16],
  [6, 2, 128],
  [2, 1, 64],
  [3, 3, 128],
  [8, 1, 16],
];

describe("CPU paged attention, wasm SIMD", () => {
  it("is the implementation used on this runtime", () => {
    assert.equal(att.impl, "wasm-simd", att.reason);
    assert.equal(pool(1).attentionImpl, "wasm-simd");
    assert.equal(pool(1, "js").attentionImpl, "js");
  });

  it("matches an f64 dense reference over random mixed batches", () => {
    const rng = new Rng(11);
    for (let trial = 0; trial < 24; trial++) {
      const [Hq, Hkv, D] = SHAPES[trial % SHAPES.length]!;
      const bs = trial % 2 === 0 ? 16 : 4;
      // 1/sqrt(D) as models use, and a few sharper softmaxes (larger scores) for exp's range
      const scale = trial % 4 === 3 ? 2 / Math.sqrt(D) : 1 / Math.sqrt(D);
      const specs = randomSpecs(rng, 90);
      const c = makeCase(rng, specs, Hq, Hkv, D, bs, scale);
      const which = specs.map((_, i) => i);
      const { args, rowOf } = makeArgs(c, which);
      const total = args.queryStartLoc[args.numSeqs]! * Hkv;
      pool(2).run({ kind: "attention", args }, total);
      const what = `Hq ${Hq} Hkv ${Hkv} D ${D} bs ${bs} ${JSON.stringify(specs)}`;
      checkAgainstReference(c, which, args, rowOf, what);
    }
  });

  it("keeps the JavaScript fallback right", () => {
    const rng = new Rng(12);
    for (let trial = 0; trial < 4; trial++) {
      const [Hq, Hkv, D] = SHAPES[trial]!;
      const specs = randomSpecs(rng, 40);
      const c = makeCase(rng, specs, Hq, Hkv, D, 4, 1 / Math.sqrt(D));
      const which = specs.map((_, i) => i);
      const { args, rowOf } = makeArgs(c, which);
      pool(2, "js").run({ kind: "attention", args }, args.queryStartLoc[args.numSeqs]! * Hkv);
      checkAgainstReference(c, which, args, rowOf, `js ${JSON.stringify(specs)}`);
    }
  });

  it("gives a row the same bits alone or in a batch, in any row block, on any thread count", () => {
    const rng = new Rng(13);
    for (let trial = 0; trial < 8; trial++) {
      const [Hq, Hkv, D] = SHAPES[trial % SHAPES.length]!;
      const bs = trial % 2 === 0 ? 4 : 16;
      const specs = [...randomSpecs(rng, 70), { cached: 5, queries: 37 }, { cached: 40, queries: 1 }];
      const c = makeCase(rng, specs, Hq, Hkv, D, bs, 1 / Math.sqrt(D));
      const what = `Hq ${Hq} Hkv ${Hkv} D ${D} bs ${bs} ${JSON.stringify(specs)}`;
      // The whole batch, in reverse order, on one thread (the reference bits).
      const order = specs.map((_, i) => specs.length - 1 - i);
      const batch = makeArgs(c, order);
      pool(1).run({ kind: "attention", args: batch.args }, 1);
      const want = (s: number, j: number, h: number) => outRow(batch.args, batch.rowOf[order.indexOf(s)]! + j, h);
      const same = (a: AttentionArgs, rowOf: number[], which: number[], how: string) => {
        which.forEach((s, i) => {
          for (let j = 0; j < specs[s]!.queries; j++) {
            for (let h = 0; h < Hq; h++)
              assertBitEqual(outRow(a, rowOf[i]! + j, h), want(s, j, h), `${what}: ${how}, seq ${s} row ${j} head ${h}`);
          }
        });
      };
      // The same batch in its own order on 2 and 3 threads (other slices of the items).
      for (const threads of [2, 3]) {
        const m = makeArgs(
          c,
          specs.map((_, i) => i),
        );
        pool(threads).run({ kind: "attention", args: m.args }, 1);
        same(
          m.args,
          m.rowOf,
          specs.map((_, i) => i),
          `${threads} threads`,
        );
      }
      // Each sequence alone.
      specs.forEach((_, s) => {
        const one = makeArgs(c, [s]);
        pool(2).run({ kind: "attention", args: one.args }, 1);
        same(one.args, one.rowOf, [s], "alone");
      });
      // A prefill chunk's rows in other row blocks: the same tokens split into two steps, the
      // first already cached for the second (a sequence whose block starts 3 rows later).
      const s = specs.length - 2;
      const split: SeqSpec[] = [
        { cached: 5, queries: 3 },
        { cached: 8, queries: 34 },
      ];
      const c2: Case = {
        ...c,
        specs: [...c.specs, ...split],
        tables: [...c.tables, c.tables[s]!, c.tables[s]!],
        keys: [...c.keys, c.keys[s]!.subarray(0, 8 * Hkv * D), c.keys[s]!],
        values: [...c.values, c.values[s]!.subarray(0, 8 * Hkv * D), c.values[s]!],
        queries: [...c.queries, c.queries[s]!.subarray(0, 3 * Hq * D), c.queries[s]!.subarray(3 * Hq * D)],
      };
      const second = makeArgs(c2, [specs.length + 1]);
      pool(2).run({ kind: "attention", args: second.args }, 1);
      for (let j = 0; j < 34; j++) {
        for (let h = 0; h < Hq; h++) assertBitEqual(outRow(second.args, j, h), want(s, j + 3, h), `${what}: split chunk row ${j + 3}`);
      }
    }
  });

  it("direct calls with a plan agree with the pool's", () => {
    const rng = new Rng(14);
    const c = makeCase(rng, [{ cached: 100, queries: 50 }], 4, 2, 64, 16, 0.125);
    const a = makeArgs(c, [0]);
    const plan = planAttention(a.args);
    const scratch = new Scratch(null, att.module);
    attentionRange({ ...a.args, plan }, 0, plan.length / 3, scratch);
    const b = makeArgs(c, [0]);
    pool(3).run({ kind: "attention", args: b.args }, 1);
    for (let j = 0; j < 50; j++)
      for (let h = 0; h < 4; h++) assertBitEqual(outRow(a.args, j, h), outRow(b.args, j, h), `row ${j} head ${h}`);
  });
});

// One conformance suite for every backend. Each op runs on random inputs at several shapes
// (row-strided views, per-head 3-D views of a fused qkv buffer, GQA/MQA, mixed prefill + decode
// paged-attention batches over shuffled block tables, split-KV decodes, bf16/f16/f32 inputs):
// - the CPU backend against a straightforward f64 reference written here;
// - when probeCuda() finds a usable GPU, CudaBackend (bf16, f16 and f32 activations) against the
//   CPU backend on the same inputs, within the activation dtype's rounding.
// Inputs are rounded to the dtype under test before anything runs, so every backend (and the
// reference) sees exactly the same numbers and differences come only from the op itself.
// Output views are carved from larger buffers filled with a sentinel, and the sentinel is checked
// afterwards: an op must write its view and nothing around it.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { AttentionMetadata, Backend, RopeTable } from "../src/backend/backend.js";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { CudaBackend } from "../src/backend/cuda/cuda-backend.js";
import { probeCuda } from "../src/backend/cuda/device.js";
import { CUBLAS_OP_N, CUBLAS_OP_T } from "../src/backend/cuda/ffi/cublaslt.js";
import { addressAlignment, linearLayout } from "../src/backend/cuda/linear-gemm.js";
import { decodeFloats, type DenseDType, type DType, encodeFloats } from "../src/backend/dtype.js";
import { Tensor } from "../src/backend/tensor.js";
import { createWebGpuBackend, probeWebGpu } from "../src/backend/webgpu/node-gpu.js";
import type { WebGpuBackend } from "../src/backend/webgpu/webgpu-backend.js";
import { webGpuSkip } from "./helpers/webgpu.js";
import { randInt, randn, Rng, shuffle } from "./helpers/random.js";

type FloatDType = "f32" | "f16" | "bf16";
const FLOAT_DTYPES: readonly FloatDType[] = ["f32", "bf16", "f16"];
/** Written around every output view; exactly representable in every dtype. */
const SENTINEL = -3.25;

// ---------------------------------------------------------------- inputs

/** The values as `dtype` stores them, back in f64. */
function roundTo(values: ArrayLike<number>, dtype: DenseDType): Float64Array {
  return Float64Array.from(decodeFloats(encodeFloats(values, dtype), dtype, values.length));
}

/** The dtypes a backend is run with: activations, and 1-D parameters (norm weights, biases). */
interface RunDTypes {
  act: DType;
  param: DType;
}

/** Where a tensor went: the view the op sees and the padded buffer around it. */
interface Placed {
  view: Tensor;
  base: Tensor;
}

/**
 * A [rows, cols] view at column min(colOffset, pad) of a [rows, cols + pad] buffer (pad 0: a
 * plain contiguous tensor); the padding holds SENTINEL.
 */
function place(b: Backend, values: ArrayLike<number>, rows: number, cols: number, dtype: DType, pad = 0, colOffset = 0): Placed {
  const width = cols + pad;
  colOffset = Math.min(colOffset, pad);
  const base = b.alloc([rows, width], dtype, "activations", "conformance");
  const all = new Float64Array(rows * width).fill(SENTINEL);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) all[r * width + colOffset + c] = values[r * cols + c]!;
  b.write(base, all);
  return { view: pad === 0 ? base : base.cols(colOffset, cols), base };
}

function put(b: Backend, values: ArrayLike<number>, shape: number[], dtype: DType, label = "conformance"): Tensor {
  const t = b.alloc(shape, dtype, dtype === "i32" ? "other" : "activations", label);
  b.write(t, values);
  return t;
}

/** A [tokens, heads, headDim] view at element column `col` of a 2-D buffer (a slice of a fused qkv). */
function headsView(base: Tensor, col: number, heads: number, headDim: number): Tensor {
  return new Tensor(base.storage, base.dtype, [base.shape[0]!, heads, headDim], base.offset + col, [base.rowStride, headDim, 1]);
}

/** Reads a placed output and checks that nothing outside its view was written. */
async function readPlaced(b: Backend, p: Placed, what: string): Promise<Float32Array> {
  if (p.base !== p.view) {
    const all = await b.readAsync(p.base);
    const [rows, width] = p.base.shape as [number, number];
    const c0 = p.view.offset - p.base.offset;
    const cols = p.view.shape[1]!;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < width; c++) {
        if (c >= c0 && c < c0 + cols) continue;
        assert.equal(all[r * width + c], SENTINEL, `${b.name}: ${what} wrote outside its view at row ${r}, column ${c}`);
      }
    }
  }
  return b.readAsync(p.view);
}

// ---------------------------------------------------------------- comparison

interface Tolerance {
  atol: number;
  rtol: number;
}

/** CPU (f32 arithmetic) against the f64 reference. */
const CPU_TOL: Tolerance = { atol: 2e-5, rtol: 2e-4 };
/** Another backend against the CPU backend: about two roundings of the activation dtype. */
const DEVICE_TOL: Record<FloatDType, Tolerance> = {
  bf16: { atol: 1 / 64, rtol: 1 / 64 },
  f16: { atol: 2e-3, rtol: 2e-3 },
  f32: { atol: 1e-4, rtol: 1e-4 },
};

/** |got − want| ≤ atol · max(1, rms(want)) + rtol · |want| everywhere; the message lists the worst elements. */
function assertClose(what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: Tolerance): void {
  assert.equal(got.length, want.length, `${what}: ${got.length} values, expected ${want.length}`);
  let ss = 0;
  for (let i = 0; i < want.length; i++) ss += want[i]! * want[i]!;
  const scale = Math.max(1, Math.sqrt(ss / Math.max(1, want.length)));
  const bad: string[] = [];
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i]! - want[i]!);
    const limit = tol.atol * scale + tol.rtol * Math.abs(want[i]!);
    if (!(err <= limit)) {
      worst = Math.max(worst, Number.isNaN(err) ? Infinity : err);
      if (bad.length < 5)
        bad.push(`[${i}] got ${got[i]}, expected ${want[i]} (error ${err.toExponential(2)}, limit ${limit.toExponential(2)})`);
    }
  }
  assert.ok(
    bad.length === 0,
    `${what}: values differ beyond atol ${tol.atol}, rtol ${tol.rtol} (worst error ${worst}):\n  ${bad.join("\n  ")}`,
  );
}

// ---------------------------------------------------------------- cases

type Outputs = Record<string, ArrayLike<number>>;

interface OpCase {
  name: string;
  /** Runs the op on `b` with the given dtypes and reads every output back. */
  run(b: Backend, d: RunDTypes): Promise<Outputs>;
  /** The same outputs computed in f64 from the same (rounded) inputs. */
  reference(): Outputs;
}

/** The table keeps its own dtype (the file's); the output is in the activation dtype. */
function embeddingCase(tableDType: FloatDType, T: number, vocab: number, hidden: number, pad: number, seed: number): OpCase {
  const rng = new Rng(seed);
  const table = roundTo(randn(rng, vocab * hidden), tableDType);
  const ids = Array.from({ length: T }, () => randInt(rng, 0, vocab));
  return {
    name: `embedding ${tableDType} table [${vocab}, ${hidden}], ${T} tokens${pad ? `, out row stride ${hidden + pad}` : ""}`,
    async run(b, d) {
      const out = place(b, new Float64Array(T * hidden), T, hidden, d.act, pad, pad ? 3 : 0);
      b.embedding(out.view, put(b, ids, [T], "i32"), put(b, table, [vocab, hidden], tableDType, "table"));
      return { out: await readPlaced(b, out, "embedding") };
    },
    reference() {
      const out = new Float64Array(T * hidden);
      ids.forEach((id, t) => out.set(table.subarray(id * hidden, (id + 1) * hidden), t * hidden));
      return { out };
    },
  };
}

interface NormShape {
  T: number;
  /** 0: a 2-D [T, D] view; H > 0: a 3-D [T, H, D] per-head view of a wider buffer (Qwen3 q/k norm). */
  heads: number;
  D: number;
  pad: number;
  residual: boolean;
  inPlace: boolean;
}

function rmsNormCase(input: FloatDType, s: NormShape, seed: number): OpCase {
  const rng = new Rng(seed);
  const rows = s.T * Math.max(1, s.heads);
  const x = roundTo(randn(rng, rows * s.D), input);
  const res = roundTo(randn(rng, rows * s.D), input);
  const w = roundTo(
    randn(rng, s.D, 0.2).map((v) => 1 + v),
    input,
  );
  const eps = 1e-5;
  const width = s.heads > 0 ? s.heads * s.D : s.D;
  const layout = s.heads > 0 ? `[${s.T}, ${s.heads}, ${s.D}] per-head view` : `[${s.T}, ${s.D}]`;
  return {
    name: `rmsNorm ${input} ${layout}${s.pad ? `, row stride ${width + s.pad}` : ""}${s.residual ? ", fused residual" : ""}${s.inPlace ? ", in place" : ""}`,
    async run(b, d) {
      const view = (p: Placed) => (s.heads > 0 ? headsView(p.base, p.view.offset - p.base.offset, s.heads, s.D) : p.view);
      const xp = place(b, x, s.T, width, d.act, s.pad, s.pad ? 5 : 0);
      const op = s.inPlace ? xp : place(b, new Float64Array(rows * s.D), s.T, width, d.act, s.pad, s.pad ? 2 : 0);
      const rp = s.residual ? place(b, res, s.T, width, d.act, s.pad, s.pad ? 1 : 0) : undefined;
      b.rmsNorm(view(op), view(xp), put(b, w, [s.D], d.param, "norm weight"), eps, rp ? view(rp) : undefined);
      const outs: Outputs = { out: await readPlaced(b, op, "rmsNorm out") };
      if (rp) outs.residual = await readPlaced(b, rp, "rmsNorm residual");
      return outs;
    },
    reference() {
      const out = new Float64Array(rows * s.D);
      const residual = new Float64Array(rows * s.D);
      for (let r = 0; r < rows; r++) {
        let ss = 0;
        for (let i = 0; i < s.D; i++) {
          const v = x[r * s.D + i]! + (s.residual ? res[r * s.D + i]! : 0);
          residual[r * s.D + i] = v;
          ss += v * v;
        }
        const inv = 1 / Math.sqrt(ss / s.D + eps);
        for (let i = 0; i < s.D; i++) out[r * s.D + i] = residual[r * s.D + i]! * inv * w[i]!;
      }
      const outs: Outputs = { out };
      if (s.residual) outs.residual = residual;
      return outs;
    },
  };
}

interface LinearShape {
  M: number;
  K: number;
  N: number;
  bias: "none" | "param" | "f32";
  xPad: number;
  outPad: number;
}

/** Weights in `input` (the CUDA backend multiplies in the activation dtype); the bias in the param dtype or in f32. */
function linearCase(input: FloatDType, s: LinearShape, seed: number): OpCase {
  const rng = new Rng(seed);
  const x = roundTo(randn(rng, s.M * s.K), input);
  const w = roundTo(randn(rng, s.N * s.K, 1 / Math.sqrt(s.K)), input);
  const bias = roundTo(randn(rng, s.N), input);
  return {
    name:
      `linear ${input} x[${s.M}, ${s.K}]·W[${s.N}, ${s.K}]ᵀ${s.bias === "none" ? "" : ` + ${s.bias === "f32" ? "f32 " : ""}bias`}` +
      `${s.xPad ? `, x row stride ${s.K + s.xPad}` : ""}${s.outPad ? `, out row stride ${s.N + s.outPad}` : ""}`,
    async run(b, d) {
      const xp = place(b, x, s.M, s.K, d.act, s.xPad, s.xPad ? 8 : 0);
      const op = place(b, new Float64Array(s.M * s.N), s.M, s.N, d.act, s.outPad, s.outPad ? 8 : 0);
      const wt = put(b, w, [s.N, s.K], input, "weight");
      const bt = s.bias === "none" ? undefined : put(b, bias, [s.N], s.bias === "f32" ? "f32" : d.param, "bias");
      b.linear(op.view, xp.view, wt, bt);
      return { out: await readPlaced(b, op, "linear") };
    },
    reference() {
      const out = new Float64Array(s.M * s.N);
      for (let m = 0; m < s.M; m++) {
        for (let n = 0; n < s.N; n++) {
          let acc = s.bias === "none" ? 0 : bias[n]!;
          for (let k = 0; k < s.K; k++) acc += x[m * s.K + k]! * w[n * s.K + k]!;
          out[m * s.N + n] = acc;
        }
      }
      return { out };
    },
  };
}

interface RopeShape {
  T: number;
  Hq: number;
  Hkv: number;
  D: number;
  rotaryDim: number;
  blockSize: number;
  numBlocks: number;
}

function ropeTables(maxPositions: number, rotaryDim: number, theta = 10000): { cos: Float64Array; sin: Float64Array } {
  const half = rotaryDim / 2;
  const cos = new Float64Array(maxPositions * half);
  const sin = new Float64Array(maxPositions * half);
  for (let p = 0; p < maxPositions; p++) {
    for (let i = 0; i < half; i++) {
      const a = p / theta ** ((2 * i) / rotaryDim);
      cos[p * half + i] = Math.fround(Math.cos(a));
      sin[p * half + i] = Math.fround(Math.sin(a));
    }
  }
  return { cos, sin };
}

/** q, k, v as per-head views of one fused [T, (Hq + 2·Hkv)·D] qkv buffer, as a model's QKV projection leaves them. */
function ropeCase(input: FloatDType, s: RopeShape, seed: number): OpCase {
  const rng = new Rng(seed);
  const maxPositions = 64;
  const width = (s.Hq + 2 * s.Hkv) * s.D;
  const qkv = roundTo(randn(rng, s.T * width), input);
  const positions = Array.from({ length: s.T }, () => randInt(rng, 0, maxPositions));
  const slots = shuffle(rng, [...Array(s.numBlocks * s.blockSize).keys()])
    .slice(0, s.T)
    .map((slot, t) => (t % 5 === 3 ? -1 : slot)); // some padding tokens write nothing
  const { cos, sin } = ropeTables(maxPositions, s.rotaryDim);
  const cacheShape = [s.numBlocks, s.blockSize, s.Hkv, s.D];
  const cacheSize = s.numBlocks * s.blockSize * s.Hkv * s.D;
  return {
    name: `ropeAndCacheWrite ${input} q ${s.Hq}×${s.D}, kv ${s.Hkv}×${s.D}, rotary ${s.rotaryDim}, ${s.T} tokens, block ${s.blockSize}`,
    async run(b, d) {
      const fused = put(b, qkv, [s.T, width], d.act, "qkv");
      const q = headsView(fused, 0, s.Hq, s.D);
      const k = headsView(fused, s.Hq * s.D, s.Hkv, s.D);
      const v = headsView(fused, (s.Hq + s.Hkv) * s.D, s.Hkv, s.D);
      const half = s.rotaryDim / 2;
      const rope: RopeTable = {
        cos: put(b, cos, [maxPositions, half], "f32", "rope cos"),
        sin: put(b, sin, [maxPositions, half], "f32", "rope sin"),
        rotaryDim: s.rotaryDim,
        maxPositions,
      };
      const kCache = b.alloc(cacheShape, d.act, "kv-cache", "k cache");
      const vCache = b.alloc(cacheShape, d.act, "kv-cache", "v cache");
      b.ropeAndCacheWrite(q, k, v, put(b, positions, [s.T], "i32"), rope, put(b, slots, [s.T], "i32"), kCache, vCache);
      return { q: await b.readAsync(q), k: await b.readAsync(k), kCache: await b.readAsync(kCache), vCache: await b.readAsync(vCache) };
    },
    reference() {
      const half = s.rotaryDim / 2;
      const q = new Float64Array(s.T * s.Hq * s.D);
      const k = new Float64Array(s.T * s.Hkv * s.D);
      const kCache = new Float64Array(cacheSize);
      const vCache = new Float64Array(cacheSize);
      for (let t = 0; t < s.T; t++) {
        const p = positions[t]!;
        const row = qkv.subarray(t * width, (t + 1) * width);
        const rotate = (src: Float64Array, dst: Float64Array, dOff: number) => {
          dst.set(src, dOff);
          for (let i = 0; i < half; i++) {
            const [c, sn, x1, x2] = [cos[p * half + i]!, sin[p * half + i]!, src[i]!, src[i + half]!];
            dst[dOff + i] = x1 * c - x2 * sn;
            dst[dOff + i + half] = x2 * c + x1 * sn;
          }
        };
        for (let h = 0; h < s.Hq; h++) rotate(row.subarray(h * s.D, (h + 1) * s.D), q, (t * s.Hq + h) * s.D);
        for (let h = 0; h < s.Hkv; h++) {
          const kOff = (s.Hq + h) * s.D;
          const vOff = (s.Hq + s.Hkv + h) * s.D;
          rotate(row.subarray(kOff, kOff + s.D), k, (t * s.Hkv + h) * s.D);
          const slot = slots[t]!;
          if (slot < 0) continue;
          const c = (slot * s.Hkv + h) * s.D;
          kCache.set(k.subarray((t * s.Hkv + h) * s.D, (t * s.Hkv + h + 1) * s.D), c);
          vCache.set(row.subarray(vOff, vOff + s.D), c);
        }
      }
      return { q, k, kCache, vCache };
    },
  };
}

interface AttentionShape {
  /** Per sequence: context cached before this step, and new query rows. */
  seqs: { cached: number; queries: number }[];
  Hq: number;
  Hkv: number;
  D: number;
  blockSize: number;
  /** Extra columns around q and out (q then is a view of a fused buffer). */
  pad: number;
}

function attentionCase(input: FloatDType, s: AttentionShape, seed: number): OpCase {
  const rng = new Rng(seed);
  const S = s.seqs.length;
  const T = s.seqs.reduce((n, q) => n + q.queries, 0);
  const seqLens = s.seqs.map((q) => q.cached + q.queries);
  const qsl = [0];
  for (const q of s.seqs) qsl.push(qsl[qsl.length - 1]! + q.queries);
  const blocksPer = seqLens.map((n) => Math.ceil(n / s.blockSize));
  const maxBlocks = Math.max(...blocksPer) + 1; // a spare column: rows have a stride beyond what is used
  const numBlocks = blocksPer.reduce((a, n) => a + n, 0) + 3; // unused blocks hold garbage that must not be read
  const ids = shuffle(rng, [...Array(numBlocks).keys()]);
  const tables = new Array<number>(S * maxBlocks).fill(0);
  let next = 0;
  for (let i = 0; i < S; i++) for (let j = 0; j < blocksPer[i]!; j++) tables[i * maxBlocks + j] = ids[next++]!;
  const HD = s.Hq * s.D;
  const q = roundTo(randn(rng, T * HD), input);
  const cacheSize = numBlocks * s.blockSize * s.Hkv * s.D;
  const kc = roundTo(randn(rng, cacheSize), input);
  const vc = roundTo(randn(rng, cacheSize), input);
  const scale = 1 / Math.sqrt(s.D);
  const kinds = s.seqs.map((q) => (q.queries === 1 && q.cached > 0 ? "decode" : q.cached > 0 ? "chunk" : "prefill"));
  return {
    name:
      `pagedAttention ${input} [${kinds.join(", ")}] ctx [${seqLens}] heads ${s.Hq}/${s.Hkv}, head ${s.D}, block ${s.blockSize}` +
      (s.pad ? `, q/out row stride ${HD + s.pad}` : ""),
    async run(b, d) {
      const qp = place(b, q, T, HD, d.act, s.pad, s.pad ? 8 : 0);
      const op = place(b, new Float64Array(T * HD), T, HD, d.act, s.pad, s.pad ? s.pad : 0);
      const view = (p: Placed) => headsView(p.base, p.view.offset - p.base.offset, s.Hq, s.D);
      const cacheShape = [numBlocks, s.blockSize, s.Hkv, s.D];
      const meta: AttentionMetadata = {
        numSeqs: S,
        queryStartLoc: put(b, qsl, [S + 1], "i32"),
        seqLens: put(b, seqLens, [S], "i32"),
        blockTables: put(b, tables, [S, maxBlocks], "i32"),
        maxSeqLen: Math.max(...seqLens),
      };
      b.pagedAttention(view(op), view(qp), put(b, kc, cacheShape, d.act, "k cache"), put(b, vc, cacheShape, d.act, "v cache"), meta, scale);
      return { out: await readPlaced(b, op, "pagedAttention") };
    },
    reference() {
      const out = new Float64Array(T * HD);
      const G = s.Hq / s.Hkv;
      const at = (cache: Float64Array, seq: number, p: number, kvh: number) => {
        const slot = tables[seq * maxBlocks + Math.floor(p / s.blockSize)]! * s.blockSize + (p % s.blockSize);
        return cache.subarray((slot * s.Hkv + kvh) * s.D, (slot * s.Hkv + kvh + 1) * s.D);
      };
      for (let i = 0; i < S; i++) {
        for (let j = 0; j < s.seqs[i]!.queries; j++) {
          const t = qsl[i]! + j;
          const pos = seqLens[i]! - s.seqs[i]!.queries + j;
          for (let h = 0; h < s.Hq; h++) {
            const kvh = Math.floor(h / G);
            const qv = q.subarray(t * HD + h * s.D, t * HD + (h + 1) * s.D);
            const scores: number[] = [];
            for (let p = 0; p <= pos; p++) {
              const kv = at(kc, i, p, kvh);
              let dot = 0;
              for (let e = 0; e < s.D; e++) dot += qv[e]! * kv[e]!;
              scores.push(dot * scale);
            }
            const m = Math.max(...scores);
            const ex = scores.map((x) => Math.exp(x - m));
            const z = ex.reduce((a, x) => a + x, 0);
            for (let p = 0; p <= pos; p++) {
              const vv = at(vc, i, p, kvh);
              for (let e = 0; e < s.D; e++) out[t * HD + h * s.D + e] = out[t * HD + h * s.D + e]! + (ex[p]! / z) * vv[e]!;
            }
          }
        }
      }
      return { out };
    },
  };
}

function siluCase(input: FloatDType, T: number, I: number, pad: number, seed: number): OpCase {
  const rng = new Rng(seed);
  const x = roundTo(randn(rng, T * 2 * I, 2), input);
  return {
    name: `siluAndMul ${input} [${T}, 2·${I}]${pad ? `, row strides ${2 * I + pad} / ${I + pad}` : ""}`,
    async run(b, d) {
      const xp = place(b, x, T, 2 * I, d.act, pad, pad ? 4 : 0);
      const op = place(b, new Float64Array(T * I), T, I, d.act, pad, pad ? 1 : 0);
      b.siluAndMul(op.view, xp.view);
      return { out: await readPlaced(b, op, "siluAndMul") };
    },
    reference() {
      const out = new Float64Array(T * I);
      for (let t = 0; t < T; t++) {
        for (let i = 0; i < I; i++) {
          const g = x[t * 2 * I + i]!;
          out[t * I + i] = (g / (1 + Math.exp(-g))) * x[t * 2 * I + I + i]!;
        }
      }
      return { out };
    },
  };
}

function gatherCase(input: FloatDType, srcRows: number, R: number, F: number, pad: number, seed: number): OpCase {
  const rng = new Rng(seed);
  const x = roundTo(randn(rng, srcRows * F), input);
  const idx = Array.from({ length: R }, () => randInt(rng, 0, srcRows));
  return {
    name: `gatherRows ${input} ${R} of [${srcRows}, ${F}]${pad ? `, row stride ${F + pad}` : ""}`,
    async run(b, d) {
      const xp = place(b, x, srcRows, F, d.act, pad, pad ? 2 : 0);
      const op = place(b, new Float64Array(R * F), R, F, d.act, pad, pad ? 6 : 0);
      b.gatherRows(op.view, xp.view, put(b, idx, [R], "i32"));
      return { out: await readPlaced(b, op, "gatherRows") };
    },
    reference() {
      const out = new Float64Array(R * F);
      idx.forEach((i, r) => out.set(x.subarray(i * F, (i + 1) * F), r * F));
      return { out };
    },
  };
}

/** Every case for inputs rounded to `input`. */
function conformanceCases(input: FloatDType): OpCase[] {
  const other: FloatDType = input === "bf16" ? "f16" : "bf16";
  let seed = { f32: 1000, bf16: 2000, f16: 3000 }[input];
  const s = () => seed++;
  return [
    embeddingCase(input, 5, 50, 64, 0, s()),
    embeddingCase(other, 9, 37, 40, 7, s()),
    embeddingCase("f32", 1, 10, 24, 0, s()),

    rmsNormCase(input, { T: 6, heads: 0, D: 64, pad: 0, residual: false, inPlace: false }, s()),
    rmsNormCase(input, { T: 5, heads: 0, D: 320, pad: 16, residual: true, inPlace: false }, s()),
    rmsNormCase(input, { T: 3, heads: 0, D: 300, pad: 3, residual: true, inPlace: false }, s()),
    rmsNormCase(input, { T: 4, heads: 3, D: 32, pad: 8, residual: false, inPlace: true }, s()),
    rmsNormCase(input, { T: 2, heads: 2, D: 16, pad: 0, residual: true, inPlace: false }, s()),

    linearCase(input, { M: 1, K: 64, N: 48, bias: "none", xPad: 0, outPad: 0 }, s()),
    linearCase(input, { M: 5, K: 96, N: 200, bias: "param", xPad: 0, outPad: 0 }, s()),
    linearCase(input, { M: 33, K: 128, N: 40, bias: "f32", xPad: 16, outPad: 24 }, s()),
    linearCase(input, { M: 7, K: 32, N: 24, bias: "param", xPad: 8, outPad: 8 }, s()),

    ropeCase(input, { T: 7, Hq: 4, Hkv: 2, D: 32, rotaryDim: 32, blockSize: 4, numBlocks: 6 }, s()),
    ropeCase(input, { T: 5, Hq: 2, Hkv: 1, D: 64, rotaryDim: 32, blockSize: 16, numBlocks: 2 }, s()),

    // Mixed batch: a prefill, a decode, a chunked prefill and a short decode; GQA 4:1; spare table column.
    attentionCase(
      input,
      {
        seqs: [
          { cached: 0, queries: 7 },
          { cached: 13, queries: 1 },
          { cached: 30, queries: 5 },
          { cached: 2, queries: 1 },
        ],
        Hq: 8,
        Hkv: 2,
        D: 32,
        blockSize: 8,
        pad: 0,
      },
      s(),
    ),
    // Decodes only, multi-head (no GQA), q and out as views with a row stride.
    attentionCase(
      input,
      {
        seqs: [
          { cached: 20, queries: 1 },
          { cached: 3, queries: 1 },
          { cached: 47, queries: 1 },
        ],
        Hq: 4,
        Hkv: 4,
        D: 64,
        blockSize: 16,
        pad: 32,
      },
      s(),
    ),
    // One long decode, MQA: long enough that the CUDA backend splits the KV (flash-decoding).
    attentionCase(input, { seqs: [{ cached: 700, queries: 1 }], Hq: 8, Hkv: 1, D: 16, blockSize: 16, pad: 0 }, s()),
    // Head size 128, a chunk continuing a cached prefix, and a decode.
    attentionCase(
      input,
      {
        seqs: [
          { cached: 17, queries: 20 },
          { cached: 5, queries: 1 },
        ],
        Hq: 4,
        Hkv: 2,
        D: 128,
        blockSize: 16,
        pad: 0,
      },
      s(),
    ),

    siluCase(input, 3, 64, 0, s()),
    siluCase(input, 6, 40, 5, s()),

    gatherCase(input, 9, 4, 48, 0, s()),
    gatherCase(input, 20, 11, 30, 7, s()),
  ];
}

// ---------------------------------------------------------------- the suites

describe("CPU backend conformance against an f64 reference", () => {
  const cpu = new CpuBackend({ threads: 2 });
  after(() => cpu.dispose());
  for (const input of FLOAT_DTYPES) {
    describe(`${input} inputs`, () => {
      for (const c of conformanceCases(input)) {
        it(c.name, async () => {
          const got = await c.run(cpu, { act: "f32", param: "f32" });
          const want = c.reference();
          assert.deepEqual(Object.keys(got).sort(), Object.keys(want).sort());
          for (const key of Object.keys(want)) assertClose(`${c.name}: ${key}`, got[key]!, want[key]!, CPU_TOL);
        });
      }
    });
  }
});

describe("cuBLASLt layout of a row-major strided linear layer (checked by emulating column-major GEMM, no GPU)", () => {
  /** D = op(A)·op(B) exactly as cuBLASLt reads column-major operands out of the given buffers. */
  function columnMajorGemm(l: ReturnType<typeof linearLayout>, a: Float64Array, b: Float64Array, d: Float64Array): void {
    const m = l.transA === CUBLAS_OP_T ? l.a.cols : l.a.rows;
    const k = l.transA === CUBLAS_OP_T ? l.a.rows : l.a.cols;
    const n = l.transB === CUBLAS_OP_N ? l.b.cols : l.b.rows;
    assert.equal(l.transB === CUBLAS_OP_N ? l.b.rows : l.b.cols, k, "inner dimensions agree");
    assert.deepEqual([l.d.rows, l.d.cols], [m, n], "D is m × n");
    for (const op of [l.a, l.b, l.d]) assert.ok(op.ld >= op.rows, `ld ${op.ld} ≥ rows ${op.rows}`);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let acc = 0;
        for (let p = 0; p < k; p++) {
          const av = l.transA === CUBLAS_OP_T ? a[p + i * l.a.ld]! : a[i + p * l.a.ld]!;
          const bv = l.transB === CUBLAS_OP_N ? b[p + j * l.b.ld]! : b[j + p * l.b.ld]!;
          acc += av * bv;
        }
        d[i + j * l.d.ld] = acc;
      }
    }
  }

  it("out = x·Wᵀ lands in out's rows, strides honoured, padding untouched", () => {
    const rng = new Rng(7);
    for (const [M, N, K, sx, sw, so] of [
      [3, 5, 4, 4, 4, 5],
      [2, 3, 6, 9, 8, 7],
      [1, 8, 16, 16, 20, 8],
    ] as const) {
      const x = Float64Array.from(randn(rng, M * sx));
      const w = Float64Array.from(randn(rng, N * sw));
      const out = new Float64Array(M * so).fill(SENTINEL);
      columnMajorGemm(linearLayout(M, N, K, sx, sw, so), w, x, out);
      for (let m = 0; m < M; m++) {
        for (let n = 0; n < so; n++) {
          if (n >= N) {
            assert.equal(out[m * so + n], SENTINEL, "padding written");
            continue;
          }
          let want = 0;
          for (let k = 0; k < K; k++) want += x[m * sx + k]! * w[n * sw + k]!;
          assert.ok(Math.abs(out[m * so + n]! - want) < 1e-12, `out[${m}, ${n}] of ${M}x${N}x${K}`);
        }
      }
    }
  });

  it("rejects strides shorter than a row, and reports pointer alignment as cuBLASLt's heuristic wants it", () => {
    assert.throws(() => linearLayout(2, 3, 4, 3, 4, 3), /x has row stride 3; expected an integer of at least its row length 4/);
    assert.equal(addressAlignment(0x7f0000000000n), 256);
    assert.equal(addressAlignment(0x7f0000000010n), 16);
    assert.equal(addressAlignment(0x7f0000000002n), 2);
  });
});

const probe = probeCuda();

describe("CUDA backend conformance against the CPU backend", { skip: probe.kind === "cuda" ? false : probe.reason }, () => {
  const cpu = new CpuBackend({ threads: 2 });
  after(() => cpu.dispose());
  for (const act of FLOAT_DTYPES) {
    describe(`${act} activations`, () => {
      let cuda: CudaBackend;
      before(() => {
        cuda = CudaBackend.create({ activationDType: act });
      });
      after(() => cuda?.dispose());

      for (const c of conformanceCases(act)) {
        it(c.name, async () => {
          const want = await c.run(cpu, { act: "f32", param: "f32" });
          const got = await c.run(cuda, { act, param: act });
          cuda.synchronize();
          for (const key of Object.keys(want))
            assertClose(`${c.name}: ${key} (cuda ${act} vs cpu)`, got[key]!, want[key]!, DEVICE_TOL[act]);
        });
      }

      it("round-trips every dtype through write/read, zero-fills allocations and reads strided views", () => {
        for (const dtype of ["f32", "f16", "bf16", "i32"] as const) {
          const values = dtype === "i32" ? [0, -7, 123456, 2 ** 30] : [...roundTo([0.5, -1.25, 3e-3, 1024], dtype)];
          const t = put(cuda, values, [2, 2], dtype);
          assert.deepEqual([...cuda.read(t)], values);
          assert.deepEqual([...cuda.read(t.cols(1, 1))], [values[1], values[3]]);
          assert.deepEqual([...cuda.read(cuda.alloc([3], dtype, "other", "zeros"))], [0, 0, 0]);
        }
      });

      it("accounts memory by tag and reports the device's own figures", () => {
        const before = cuda.memoryStats();
        const t = cuda.alloc([1000], act, "kv-cache", "conformance kv");
        const after = cuda.memoryStats();
        assert.equal(after.byTag["kv-cache"] - before.byTag["kv-cache"], 1000 * (act === "f32" ? 4 : 2));
        assert.ok(after.byTag.workspace >= 32 << 20, "the cuBLASLt workspace is tagged workspace");
        const report = cuda.memoryReport();
        assert.ok(report.allocations.some((a) => a.label === "conformance kv" && a.tag === "kv-cache"));
        assert.ok(report.device.totalBytes > 0 && report.device.freeBytes <= report.device.totalBytes);
        assert.equal(
          Object.values(after.byTag).reduce((a, b) => a + b, 0),
          after.total,
        );
        cuda.free(t.storage);
        assert.throws(() => cuda.free(t.storage), /freed twice or never allocated/);
      });

      it("rejects weights in another dtype than the activations with an error naming both", () => {
        const other: FloatDType = act === "f32" ? "bf16" : "f32";
        const x = cuda.alloc([2, 8], act, "activations", "x");
        const out = cuda.alloc([2, 4], act, "activations", "out");
        const w = cuda.alloc([4, 8], other, "weights", "w");
        assert.throws(() => cuda.linear(out, x, w), new RegExp(`weight .* is ${other} but the activations are ${act}`));
      });
    });
  }
});

const gpuProbe = await probeWebGpu(true);

describe("WebGPU backend conformance against the CPU backend", { skip: webGpuSkip(gpuProbe) }, () => {
  const cpu = new CpuBackend({ threads: 2 });
  after(() => cpu.dispose());
  const runs: [act: "f32" | "f16", inputs: FloatDType[]][] = [
    ["f32", ["f32", "bf16", "f16"]],
    ["f16", ["f16"]],
  ];
  for (const [act, inputs] of runs) {
    describe(`${act} activations`, () => {
      let gpu: WebGpuBackend;
      before(async () => {
        gpu = await createWebGpuBackend({ activationDType: act }, gpuProbe);
      });
      after(() => gpu?.dispose());
      for (const input of inputs) {
        for (const c of conformanceCases(input)) {
          it(`${c.name}${input !== act ? ` (into ${act})` : ""}`, async () => {
            const want = await c.run(cpu, { act: "f32", param: "f32" });
            const got = await c.run(gpu, { act, param: act });
            for (const key of Object.keys(want))
              assertClose(`${c.name}: ${key} (webgpu ${act} vs cpu)`, got[key]!, want[key]!, DEVICE_TOL[act]);
          });
        }
      }

      it("round-trips every dtype through write/readAsync, zero-fills allocations, reads strided views, writes at odd 16-bit offsets", async () => {
        for (const dtype of ["f32", "f16", "bf16", "i32"] as const) {
          const values = dtype === "i32" ? [0, -7, 123456, 2 ** 30] : [...roundTo([0.5, -1.25, 3e-3, 1024], dtype)];
          const t = put(gpu, values, [2, 2], dtype);
          assert.deepEqual([...(await gpu.readAsync(t))], values);
          assert.deepEqual([...(await gpu.readAsync(t.cols(1, 1)))], [values[1], values[3]]);
          assert.deepEqual([...(await gpu.readAsync(gpu.alloc([3], dtype, "other", "zeros")))], [0, 0, 0]);
        }
        const h = gpu.alloc([9], "f16", "other", "halves");
        gpu.write(h, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        gpu.write(h.rows(1, 1), [-2]);
        gpu.write(h.rows(3, 3), [-4, -5, -6]);
        gpu.write(h.rows(8, 1), [-9]);
        assert.deepEqual([...(await gpu.readAsync(h))], [1, -2, 3, -4, -5, -6, 7, 8, -9]);
        assert.throws(() => gpu.read(h), /readAsync/);
      });

      it("accounts memory by tag and names the adapter", () => {
        const before = gpu.memoryStats();
        const t = gpu.alloc([1000], act, "kv-cache", "conformance kv");
        const after = gpu.memoryStats();
        assert.equal(after.byTag["kv-cache"] - before.byTag["kv-cache"], 1000 * (act === "f32" ? 4 : 2));
        const report = gpu.memoryReport();
        assert.ok(report.allocations.some((a) => a.label === "conformance kv" && a.tag === "kv-cache"));
        assert.match(report.device.name, /^webgpu: /);
        assert.equal(
          Object.values(after.byTag).reduce((a, b) => a + b, 0),
          after.total,
        );
        gpu.free(t.storage);
        assert.throws(() => gpu.free(t.storage), /freed twice or never allocated/);
      });
    });
  }
});

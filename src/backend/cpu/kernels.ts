/**
 * CPU kernels over typed arrays, shared by the main thread and the worker
 * threads (each computes a slice of the work given by [start, end)).
 * All arithmetic is f32 in storage and f64 in registers, except the wasm SIMD matrix
 * products (wasm-linear.ts, linear.wat) and attention (wasm-attention.ts, attention.wat),
 * which compute in f32 in a fixed order.
 */
import { f16ToF32Table } from "../dtype.js";
import { WasmAttention } from "./wasm-attention.js";
import { WasmLinear } from "./wasm-linear.js";
import { QuantThread } from "./quant-linear.js";

/** Weight element encodings the kernels read directly. */
export type WeightKind = "f32" | "bf16" | "f16";

/** A 2-D row-major operand: base offset (elements) and row stride. */
export interface Mat<A> {
  data: A;
  offset: number;
  stride: number;
}

export interface LinearArgs {
  out: Mat<Float32Array>;
  x: Mat<Float32Array>;
  rows: number;
  inFeatures: number;
  w: Mat<Float32Array | Uint16Array>;
  wKind: WeightKind;
  bias: { data: Float32Array; offset: number } | null;
}

/**
 * Per-thread state, one per thread: scratch that grows on demand and is then reused, and the
 * thread's instances of the wasm SIMD matrix-product and attention kernels (when their modules
 * are given).
 */
export class Scratch {
  private f32 = new Float32Array(0);
  private wasm: WasmLinear | null = null;
  private wasmAttention: WasmAttention | null = null;

  /**
   * `linearModule`: the compiled linear.wat (see linearWasmModule()), or null for the JavaScript
   * linearRange; `attentionModule`: attention.wat likewise, or null for attentionRangeJs.
   */
  private quantThread: QuantThread | null = null;

  constructor(
    private readonly linearModule: WebAssembly.Module | null = null,
    private readonly attentionModule: WebAssembly.Module | null = null,
    /** The kernel memory, quant.wat (or null for the JavaScript twins) and this thread's tile slot. */
    private readonly quantKernels: { memory: WebAssembly.Memory; module: WebAssembly.Module | null; slot: number } | null = null,
  ) {}

  /** This thread's quantized-weight kernels over the kernel memory. */
  quant(): QuantThread {
    if (!this.quantThread) {
      const q = this.quantKernels;
      if (!q) throw new Error("a quantized matrix product reached a thread without the kernel memory");
      this.quantThread = new QuantThread(q.memory, q.module, q.slot);
    }
    return this.quantThread;
  }

  /** This thread's wasm kernels, instantiated on first use; null when running the JavaScript fallback. */
  linear(): WasmLinear | null {
    if (!this.wasm && this.linearModule) this.wasm = new WasmLinear(this.linearModule);
    return this.wasm;
  }

  /** This thread's wasm attention kernel, instantiated on first use; null without its module. */
  attention(): WasmAttention | null {
    if (!this.wasmAttention && this.attentionModule) this.wasmAttention = new WasmAttention(this.attentionModule);
    return this.wasmAttention;
  }

  get(n: number): Float32Array {
    if (this.f32.length < n) this.f32 = new Float32Array(Math.max(n, this.f32.length * 2));
    return this.f32;
  }
}

const ROW_BLOCK = 4;

/** Decode `n` weight elements starting at `src` into `dst[dOff..]`. */
function decodeRow(w: Float32Array | Uint16Array, kind: WeightKind, src: number, n: number, dst: Float32Array, dOff: number): void {
  if (kind === "bf16") {
    const u = new Uint32Array(dst.buffer, dst.byteOffset + dOff * 4, n);
    for (let i = 0; i < n; i++) u[i] = w[src + i]! << 16;
  } else if (kind === "f16") {
    const t = f16ToF32Table();
    for (let i = 0; i < n; i++) dst[dOff + i] = t[w[src + i]!]!;
  } else {
    dst.set((w as Float32Array).subarray(src, src + n), dOff);
  }
}

/**
 * out[m, n] = Σ_k x[m, k] · w[n, k] (+ bias[n]) for output features n in [n0, n1), with the
 * thread's wasm SIMD kernels when it has them (several times faster), else linearRangeJs.
 */
export function linearRange(a: LinearArgs, n0: number, n1: number, scratch: Scratch): void {
  const wasm = scratch.linear();
  if (wasm) wasm.run(a, n0, n1);
  else linearRangeJs(a, n0, n1, scratch);
}

/**
 * The fallback where WebAssembly SIMD is not available, f64 sums.
 * Weight rows are decoded to f32 four at a time and reused across all rows of x,
 * so a prefill reads each weight once and a decode runs four independent sums.
 */
export function linearRangeJs(a: LinearArgs, n0: number, n1: number, scratch: Scratch): void {
  const K = a.inFeatures;
  const x = a.x.data;
  const out = a.out.data;
  const direct = a.wKind === "f32";
  const buf = direct ? (a.w.data as Float32Array) : scratch.get(ROW_BLOCK * K);
  for (let n = n0; n < n1; n += ROW_BLOCK) {
    const nb = Math.min(ROW_BLOCK, n1 - n);
    let r0: number;
    if (direct) {
      r0 = a.w.offset + n * a.w.stride;
    } else {
      for (let j = 0; j < nb; j++) decodeRow(a.w.data, a.wKind, a.w.offset + (n + j) * a.w.stride, K, buf, j * K);
      r0 = 0;
    }
    const rs = direct ? a.w.stride : K;
    const r1 = r0 + rs;
    const r2 = r1 + rs;
    const r3 = r2 + rs;
    for (let m = 0; m < a.rows; m++) {
      const xo = a.x.offset + m * a.x.stride;
      const oo = a.out.offset + m * a.out.stride + n;
      if (nb === ROW_BLOCK) {
        let s0 = 0,
          s1 = 0,
          s2 = 0,
          s3 = 0;
        for (let k = 0; k < K; k++) {
          const xv = x[xo + k]!;
          s0 += xv * buf[r0 + k]!;
          s1 += xv * buf[r1 + k]!;
          s2 += xv * buf[r2 + k]!;
          s3 += xv * buf[r3 + k]!;
        }
        out[oo] = s0;
        out[oo + 1] = s1;
        out[oo + 2] = s2;
        out[oo + 3] = s3;
      } else {
        for (let j = 0; j < nb; j++) {
          const rj = r0 + j * rs;
          let s = 0;
          for (let k = 0; k < K; k++) s += x[xo + k]! * buf[rj + k]!;
          out[oo + j] = s;
        }
      }
      if (a.bias) {
        for (let j = 0; j < nb; j++) out[oo + j] = out[oo + j]! + a.bias.data[a.bias.offset + n + j]!;
      }
    }
  }
}

export interface AttentionArgs {
  out: Float32Array;
  outOffset: number;
  /** Strides of out/q in elements: [token, head]; the last dimension is contiguous. */
  outStrides: [number, number];
  q: Float32Array;
  qOffset: number;
  qStrides: [number, number];
  kCache: Float32Array;
  kOffset: number;
  vCache: Float32Array;
  vOffset: number;
  blockSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  queryStartLoc: Int32Array;
  qslOffset: number;
  seqLens: Int32Array;
  seqLensOffset: number;
  blockTables: Int32Array;
  btOffset: number;
  btStride: number;
  numSeqs: number;
  scale: number;
  /**
   * The wasm path's work items (planAttention in wasm-attention.ts): set by the pool when every
   * thread has the wasm kernel, and then [w0, w1) index it; absent, the items are
   * (query row, KV head) pairs for attentionRangeJs.
   */
  plan?: Int32Array | undefined;
}

/** Index of the sequence owning query row t (queryStartLoc is non-decreasing). */
function seqOfToken(a: AttentionArgs, t: number): number {
  let lo = 0;
  let hi = a.numSeqs - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (a.queryStartLoc[a.qslOffset + mid]! <= t) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/**
 * Paged causal attention for work items [w0, w1): blocks of query rows listed in a.plan with the
 * thread's wasm SIMD kernel (several times faster), else attentionRangeJs's items.
 */
export function attentionRange(a: AttentionArgs, w0: number, w1: number, scratch: Scratch): void {
  if (!a.plan) {
    attentionRangeJs(a, w0, w1, scratch);
    return;
  }
  const wasm = scratch.attention();
  if (!wasm) throw new Error("attentionRange: a wasm plan was given to a thread without the attention kernel");
  wasm.run(a, a.plan, w0, w1);
}

/**
 * The fallback where WebAssembly SIMD is not available: one work item per (query row,
 * KV head): the whole GQA group of that KV head is done together so each K/V
 * row is read once per group. Two passes (scores, then softmax·V) in f32.
 */
export function attentionRangeJs(a: AttentionArgs, w0: number, w1: number, scratch: Scratch): void {
  const G = a.numHeads / a.numKvHeads;
  const D = a.headDim;
  const kvRow = a.numKvHeads * D;
  for (let w = w0; w < w1; w++) {
    const t = Math.floor(w / a.numKvHeads);
    const kvh = w - t * a.numKvHeads;
    const s = seqOfToken(a, t);
    const qStart = a.queryStartLoc[a.qslOffset + s]!;
    const qLen = a.queryStartLoc[a.qslOffset + s + 1]! - qStart;
    const ctx = a.seqLens[a.seqLensOffset + s]!;
    const pos = ctx - qLen + (t - qStart);
    const n = pos + 1;
    const scores = scratch.get(G * n + G * D);
    const acc = G * n;
    const bt = a.btOffset + s * a.btStride;
    // scores[g, p] = q_g · k_p
    for (let p = 0; p < n; p++) {
      const block = a.blockTables[bt + Math.floor(p / a.blockSize)]!;
      const ko = a.kOffset + (block * a.blockSize + (p % a.blockSize)) * kvRow + kvh * D;
      for (let g = 0; g < G; g++) {
        const qo = a.qOffset + t * a.qStrides[0] + (kvh * G + g) * a.qStrides[1];
        let dot = 0;
        for (let d = 0; d < D; d++) dot += a.q[qo + d]! * a.kCache[ko + d]!;
        scores[g * n + p] = dot * a.scale;
      }
    }
    for (let g = 0; g < G; g++) {
      let max = -Infinity;
      for (let p = 0; p < n; p++) max = Math.max(max, scores[g * n + p]!);
      let sum = 0;
      for (let p = 0; p < n; p++) {
        const e = Math.exp(scores[g * n + p]! - max);
        scores[g * n + p] = e;
        sum += e;
      }
      const inv = 1 / sum;
      for (let p = 0; p < n; p++) scores[g * n + p] = scores[g * n + p]! * inv;
      scores.fill(0, acc + g * D, acc + (g + 1) * D);
    }
    for (let p = 0; p < n; p++) {
      const block = a.blockTables[bt + Math.floor(p / a.blockSize)]!;
      const vo = a.vOffset + (block * a.blockSize + (p % a.blockSize)) * kvRow + kvh * D;
      for (let g = 0; g < G; g++) {
        const pr = scores[g * n + p]!;
        const ao = acc + g * D;
        for (let d = 0; d < D; d++) scores[ao + d] = scores[ao + d]! + pr * a.vCache[vo + d]!;
      }
    }
    for (let g = 0; g < G; g++) {
      const oo = a.outOffset + t * a.outStrides[0] + (kvh * G + g) * a.outStrides[1];
      for (let d = 0; d < D; d++) a.out[oo + d] = scores[acc + g * D + d]!;
    }
  }
}

/**
 * Paged attention with WebAssembly SIMD (kernel in attention.wat). A work item is a block of up
 * to ROWS consecutive query rows of one sequence, all heads: its K and V rows up to the block's
 * last position are gathered out of the paged cache into wasm memory once (a copy per cache
 * block: a block's rows of all KV heads are contiguous), shared by the block's rows and by the
 * GQA query heads of each KV head, then every (row, head) is computed on its own (see the
 * determinism note in attention.wat). One instance (and memory, grown on demand) per thread.
 */
import type { AttentionArgs } from "./kernels.js";

interface Exports {
  mem: WebAssembly.Memory;
  attn(
    q: number,
    out: number,
    k: number,
    v: number,
    ks: number,
    d: number,
    rows: number,
    hq: number,
    g: number,
    n0: number,
    scale: number,
    sc: number,
  ): void;
}

/**
 * Query rows per work item: enough to amortize the K/V gather (a copy of the whole prefix per
 * item), few enough that a long prefill gives every thread many items.
 */
const ROWS = 16;
/** Plan entries per work item: sequence, first row, end row (rows relative to the sequence's first query row). */
export const PLAN_STRIDE = 3;

const roundUp = (v: number, m: number) => Math.ceil(v / m) * m;

/** Whether attention.wat can run this problem: its loads need rows of a multiple of 4 floats. */
export function wasmAttentionFits(headDim: number): boolean {
  return headDim % 4 === 0;
}

/**
 * The work items of a call, PLAN_STRIDE entries each. Within a sequence the row blocks are
 * listed from both ends inwards (first, last, second, second last...): a causal row costs its
 * position, so the pool's equal-count contiguous slices then get about equal work.
 */
export function planAttention(a: AttentionArgs): Int32Array {
  let count = 0;
  for (let s = 0; s < a.numSeqs; s++) {
    const qLen = a.queryStartLoc[a.qslOffset + s + 1]! - a.queryStartLoc[a.qslOffset + s]!;
    count += Math.ceil(qLen / ROWS);
  }
  const plan = new Int32Array(count * PLAN_STRIDE);
  let i = 0;
  for (let s = 0; s < a.numSeqs; s++) {
    const qLen = a.queryStartLoc[a.qslOffset + s + 1]! - a.queryStartLoc[a.qslOffset + s]!;
    const nb = Math.ceil(qLen / ROWS);
    for (let j = 0; j < nb; j++) {
      const b = j % 2 === 0 ? j / 2 : nb - 1 - (j - 1) / 2;
      plan[i++] = s;
      plan[i++] = b * ROWS;
      plan[i++] = Math.min(qLen, (b + 1) * ROWS);
    }
  }
  return plan;
}

/** One thread's instance of the kernel. */
export class WasmAttention {
  private readonly ex: Exports;
  private f32: Float32Array;

  constructor(module: WebAssembly.Module) {
    this.ex = new WebAssembly.Instance(module, {}).exports as unknown as Exports;
    this.f32 = new Float32Array(this.ex.mem.buffer);
  }

  private reserve(bytes: number): void {
    const have = this.ex.mem.buffer.byteLength;
    if (bytes <= have) return;
    this.ex.mem.grow(Math.ceil((bytes - have) / 65536));
    this.f32 = new Float32Array(this.ex.mem.buffer);
  }

  /** Work items [i0, i1) of `plan` (see planAttention). */
  run(a: AttentionArgs, plan: Int32Array, i0: number, i1: number): void {
    const Hq = a.numHeads;
    const D = a.headDim;
    const G = Hq / a.numKvHeads;
    const kvRow = a.numKvHeads * D;
    const bs = a.blockSize;
    const rowFloats = Hq * D;
    for (let it = i0; it < i1; it++) {
      const s = plan[it * PLAN_STRIDE]!;
      const r0 = plan[it * PLAN_STRIDE + 1]!;
      const r1 = plan[it * PLAN_STRIDE + 2]!;
      const rows = r1 - r0;
      const qStart = a.queryStartLoc[a.qslOffset + s]!;
      const qLen = a.queryStartLoc[a.qslOffset + s + 1]! - qStart;
      const ctx = a.seqLens[a.seqLensOffset + s]!;
      // Row j (of the sequence's query rows) sits at position ctx - qLen + j and sees 0..that.
      const n0 = ctx - qLen + r0 + 1;
      const nMax = ctx - qLen + r1;

      // Layout (bytes, all 16-aligned as D % 4 == 0): q | out | scores | K | V
      const qOff = 0;
      const outOff = qOff + rows * rowFloats * 4;
      const scOff = outOff + rows * rowFloats * 4;
      const kOff = scOff + roundUp(nMax, 8) * 4;
      // K gets room for the rows the kernel reads past nMax (up to a multiple of 8; ignored)
      const vOff = kOff + roundUp(nMax, 8) * kvRow * 4;
      this.reserve(vOff + nMax * kvRow * 4);
      const f32 = this.f32;

      // K and V rows [0, nMax): a cache block's rows (all KV heads) are one contiguous run.
      const bt = a.btOffset + s * a.btStride;
      for (let b = 0, p = 0; p < nMax; b++, p += bs) {
        const src = a.blockTables[bt + b]! * bs * kvRow;
        const len = Math.min(bs, nMax - p) * kvRow;
        f32.set(a.kCache.subarray(a.kOffset + src, a.kOffset + src + len), kOff / 4 + p * kvRow);
        f32.set(a.vCache.subarray(a.vOffset + src, a.vOffset + src + len), vOff / 4 + p * kvRow);
      }

      // The query rows, [rows, Hq, D].
      const [qt, qh] = a.qStrides;
      for (let r = 0; r < rows; r++) {
        const src = a.qOffset + (qStart + r0 + r) * qt;
        const dst = qOff / 4 + r * rowFloats;
        if (qh === D) f32.set(a.q.subarray(src, src + rowFloats), dst);
        else for (let h = 0; h < Hq; h++) f32.set(a.q.subarray(src + h * qh, src + h * qh + D), dst + h * D);
      }

      this.ex.attn(qOff, outOff, kOff, vOff, kvRow * 4, D, rows, Hq, G, n0, a.scale, scOff);

      const [ot, oh] = a.outStrides;
      for (let r = 0; r < rows; r++) {
        const dst = a.outOffset + (qStart + r0 + r) * ot;
        const src = outOff / 4 + r * rowFloats;
        if (oh === D) a.out.set(f32.subarray(src, src + rowFloats), dst);
        else for (let h = 0; h < Hq; h++) a.out.set(f32.subarray(src + h * D, src + h * D + D), dst + h * oh);
      }
    }
  }
}

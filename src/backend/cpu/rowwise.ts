/**
 * The row-wise ops (RMSNorm with its residual add, SiLU·mul) as pool tasks: rows are independent,
 * so a prefill's rows are split across the threads; each row is computed exactly as on one thread.
 */

/** Where row r of a 2-D [rows, D] or 3-D [t, heads, D] view starts: offset + ⌊r / heads⌋·s0 + (r mod heads)·s1. */
export interface RowGeometry {
  offset: number;
  s0: number;
  s1: number;
  heads: number;
}

export interface RmsNormArgs {
  op: "rmsnorm";
  x: Float32Array;
  xRows: RowGeometry;
  out: Float32Array;
  outRows: RowGeometry;
  residual: Float32Array | null;
  resRows: RowGeometry | null;
  w: Float32Array;
  wOffset: number;
  D: number;
  eps: number;
}

export interface SiluArgs {
  op: "silu";
  x: Float32Array;
  xOffset: number;
  xStride: number;
  out: Float32Array;
  outOffset: number;
  outStride: number;
  I: number;
}

export type RowwiseArgs = RmsNormArgs | SiluArgs;

const at = (g: RowGeometry, r: number) => g.offset + Math.floor(r / g.heads) * g.s0 + (r % g.heads) * g.s1;

/** Rows [r0, r1) of the op. */
export function rowwiseRange(a: RowwiseArgs, r0: number, r1: number): void {
  if (a.op === "silu") {
    const { x, out, I } = a;
    for (let t = r0; t < r1; t++) {
      const xo = a.xOffset + t * a.xStride;
      const oo = a.outOffset + t * a.outStride;
      for (let i = 0; i < I; i++) {
        const g = x[xo + i]!;
        out[oo + i] = (g / (1 + Math.exp(-g))) * x[xo + I + i]!;
      }
    }
    return;
  }
  const { D, w, wOffset } = a;
  const eps = Math.fround(a.eps);
  for (let r = r0; r < r1; r++) {
    let src = a.x;
    let so = at(a.xRows, r);
    if (a.residual && a.resRows) {
      const rs = a.residual;
      const ro = at(a.resRows, r);
      for (let d = 0; d < D; d++) rs[ro + d] = rs[ro + d]! + src[so + d]!;
      src = rs;
      so = ro;
    }
    // As ggml's rms_norm (so that llama.cpp's oracle sees the same bits): f32 squares summed in
    // f64, the mean and 1/sqrt(mean + eps) in f32, then (x · scale) rounded to f32, times w.
    let ss = 0;
    for (let d = 0; d < D; d++) ss += Math.fround(src[so + d]! * src[so + d]!);
    const inv = Math.fround(1 / Math.fround(Math.sqrt(Math.fround(Math.fround(ss / D) + eps))));
    const oo = at(a.outRows, r);
    for (let d = 0; d < D; d++) a.out[oo + d] = Math.fround(src[so + d]! * inv) * w[wOffset + d]!;
  }
}

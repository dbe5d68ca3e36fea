/**
 * The quantized kernels of quant.wat in plain JavaScript: the fallback where WebAssembly SIMD is
 * missing, and the reference the tests hold the wasm to, bit for bit. Every f32 operation of the
 * wasm is one Math.fround here, in the same order (the integer dots are exact, so their order is
 * free); quant.wat's header states the formulas.
 */
import { f16ToF32Table } from "../dtype.js";
import { type ActivationKind, activationOf, QUANT_KERNELS, type QuantKind } from "./wasm-quant.js";

const fr = Math.fround;

/** f16 bits → f32 as quant.wat decodes them: exact for finite halves; inf/NaN become 2^16 · (1 + m/1024). */
const F16 = (() => {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const e = (h >> 10) & 31;
    const m = h & 1023;
    const v = e === 0 ? m * 2 ** -24 : 2 ** (e - 15) * (1 + m / 1024);
    t[h] = h & 0x8000 ? -v : v;
  }
  return t;
})();

/** e4m3 byte → f32, exactly (the NaN pattern S.1111.111 decodes as ±480, as in quant.wat). */
const FP8 = (() => {
  const t = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const e = (b >> 3) & 15;
    const m = b & 7;
    const v = e === 0 ? m * 2 ** -9 : 2 ** (e - 7) * (1 + m / 8);
    t[b] = b & 0x80 ? -v : v;
  }
  return t;
})();

const KV_MXFP4 = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/** E8M0 scale halved: 2^(e - 128) (subnormal for e < 2). */
const e8m0Half = (e: number) => 2 ** (e - 128);

const cvtF32 = new Float32Array(1);
const cvtU32 = new Uint32Array(cvtF32.buffer);

/** f32 → f16 bits, round to nearest even, as quant.wat's $f16. */
export function f32ToF16(x: number): number {
  cvtF32[0] = x;
  const b = cvtU32[0]!;
  const a = b & 0x7fffffff;
  const s = (b >>> 16) & 0x8000;
  if (a >= 0x7f800000) return s | (a > 0x7f800000 ? 0x7e00 : 0x7c00);
  if (a >= 0x477ff000) return s | 0x7c00;
  if (a < 0x38800000) return s | roundEven(Math.abs(cvtF32[0]) * 2 ** 24);
  return s | ((a - 0x38000000 + 0xfff + ((a >>> 13) & 1)) >>> 13);
}

/** Round half to even (f32x4.nearest on a value that is already an f32). */
function roundEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  return d < 0.5 ? f : d > 0.5 ? f + 1 : f % 2 === 0 ? f : f + 1;
}

/** i32x4.trunc_sat_f32x4_s(f32x4.nearest(v)). */
function nearestI32(v: number): number {
  if (v !== v) return 0;
  if (v >= 2147483647) return 2147483647;
  if (v <= -2147483648) return -2147483648;
  return roundEven(v);
}

/** The saturating narrows i32 → i16 → i8. */
const sat8 = (q: number) => (q > 127 ? 127 : q < -128 ? -128 : q);

/**
 * n f32 of x from xOff into activation blocks at dst[dstOff..], in the format `kind` dots with (a
 * weight kind, or an activation kind; "f32" writes the floats as little-endian bytes), exactly as
 * quant.wat's quantize_*. n must be a multiple of the format's block size.
 */
export function quantizeActivations(
  kind: QuantKind | ActivationKind,
  x: Float32Array,
  xOff: number,
  n: number,
  dst: Uint8Array,
  dstOff: number,
): void {
  const act = activationOf(kind);
  const dv = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
  if (act === "f32") {
    for (let i = 0; i < n; i++) dv.setFloat32(dstOff + 4 * i, x[xOff + i]!, true);
    return;
  }
  const bs = act === "q8_k" ? 256 : 32;
  if (n % bs !== 0) throw new Error(`quantize ${act}: n = ${n} is not a multiple of ${bs}`);
  for (let b = 0; b < n / bs; b++) {
    const xo = xOff + b * bs;
    let amax = 0;
    for (let j = 0; j < bs; j++) {
      const a = Math.abs(x[xo + j]!);
      if (amax < a) amax = a;
    }
    if (act === "q8_k") {
      const o = dstOff + b * 292;
      if (amax === 0) {
        dst.fill(0, o, o + 292);
        continue;
      }
      let p = xo;
      while (Math.abs(x[p]!) !== amax) p++;
      const iscale = fr(-127 / x[p]!);
      dv.setFloat32(o, fr(1 / iscale), true);
      for (let g = 0; g < 16; g++) {
        let sum = 0;
        for (let j = 16 * g; j < 16 * g + 16; j++) {
          const q = sat8(Math.min(nearestI32(fr(iscale * x[xo + j]!)), 127));
          dst[o + 4 + j] = q & 0xff;
          sum += q;
        }
        dv.setInt16(o + 260 + 2 * g, sum, true);
      }
    } else {
      const one = act === "q8_1";
      const o = dstOff + b * (one ? 36 : 34);
      const d = fr(amax / 127);
      dv.setUint16(o, f32ToF16(d), true);
      const id = amax !== 0 ? fr(127 / amax) : 0;
      let sum = 0;
      for (let j = 0; j < 32; j++) {
        const q = nearestI32(fr(x[xo + j]! * id));
        sum = (sum + q) | 0;
        dst[o + (one ? 4 : 2) + j] = sat8(q) & 0xff;
      }
      if (one) dv.setUint16(o + 2, f32ToF16(fr(d * fr(sum))), true);
    }
  }
}

interface Row {
  /** Unsigned and signed views of the same bytes. */
  u: Uint8Array;
  s: Int8Array;
  o: number;
}

const u16 = (u: Uint8Array, o: number) => u[o]! | (u[o + 1]! << 8);

/** The nibble of element e (0..31) of a 32-element block whose qs[16] start at byte qs. */
function nib(u: Uint8Array, qs: number, e: number): number {
  return e < 16 ? u[qs + e]! & 15 : u[qs + e - 16]! >> 4;
}
const u32 = (u: Uint8Array, o: number) => (u[o]! | (u[o + 1]! << 8) | (u[o + 2]! << 16) | (u[o + 3]! << 24)) >>> 0;

/** The 6-bit scale and min j of a q4_K / q5_K block's scales[12] at o (ggml's get_scale_min_k4). */
function scaleMinK4(u: Uint8Array, o: number, j: number): [number, number] {
  if (j < 4) return [u[o + j]! & 63, u[o + j + 4]! & 63];
  return [(u[o + j + 4]! & 0xf) | ((u[o + j - 4]! >> 6) << 4), (u[o + j + 4]! >> 4) | ((u[o + j]! >> 6) << 4)];
}

/** One weight row against one activation row: the f32 quant.wat stores (before the row scale). */
function dotRow(kind: QuantKind, w: Row, x: Row, xv: DataView, blocks: number): number {
  const { u, s } = w;
  const xs = x.s;
  let acc = 0;
  switch (kind) {
    case "q8_0":
    case "q4_0":
    case "q4_1":
    case "q5_0":
    case "q5_1":
    case "mxfp4":
    case "int8": {
      const bb = QUANT_KERNELS[kind].blockBytes;
      const ab = QUANT_KERNELS[kind].actBlockBytes;
      for (let b = 0; b < blocks; b++) {
        const wo = w.o + b * bb;
        const xo = x.o + b * ab;
        const xq = xo + (ab === 36 ? 4 : 2);
        const dx = F16[u16(x.u, xo)]!;
        let isum = 0;
        if (kind === "q8_0" || kind === "int8") {
          const q = wo + (kind === "q8_0" ? 2 : 0);
          for (let e = 0; e < 32; e++) isum += s[q + e]! * xs[xq + e]!;
        } else if (kind === "q4_0" || kind === "q4_1") {
          const q = wo + (kind === "q4_0" ? 2 : 4);
          const off = kind === "q4_0" ? 8 : 0;
          for (let e = 0; e < 32; e++) isum += (nib(u, q, e) - off) * xs[xq + e]!;
        } else if (kind === "q5_0" || kind === "q5_1") {
          const h = wo + (kind === "q5_0" ? 2 : 4);
          const qh = u32(u, h);
          const off = kind === "q5_0" ? 16 : 0;
          for (let e = 0; e < 32; e++) isum += ((nib(u, h + 4, e) | (((qh >>> e) & 1) << 4)) - off) * xs[xq + e]!;
        } else {
          for (let e = 0; e < 32; e++) isum += KV_MXFP4[nib(u, wo + 1, e)]! * xs[xq + e]!;
        }
        let t: number;
        if (kind === "mxfp4") t = fr(fr(isum) * fr(dx * e8m0Half(u[wo]!)));
        else if (kind === "int8") t = fr(fr(isum) * dx);
        else if (kind === "q4_1" || kind === "q5_1") {
          const sx = F16[u16(x.u, xo + 2)]!;
          t = fr(fr(fr(isum) * fr(F16[u16(u, wo)]! * dx)) + fr(F16[u16(u, wo + 2)]! * sx));
        } else t = fr(fr(isum) * fr(F16[u16(u, wo)]! * dx));
        acc = fr(acc + t);
      }
      return acc;
    }
    case "q4_k":
    case "q5_k": {
      const five = kind === "q5_k";
      const bb = five ? 176 : 144;
      const qs = five ? 48 : 16;
      for (let b = 0; b < blocks; b++) {
        const wo = w.o + b * bb;
        const xo = x.o + b * 292;
        let isum = 0;
        let msum = 0;
        for (let j = 0; j < 8; j++) {
          const [sc, mn] = scaleMinK4(u, wo + 4, j);
          const q = wo + qs + 32 * (j >> 1);
          let sub = 0;
          for (let l = 0; l < 32; l++) {
            let v = j & 1 ? u[q + l]! >> 4 : u[q + l]! & 15;
            if (five) v |= ((u[wo + 16 + l]! >> j) & 1) << 4;
            sub += v * xs[xo + 4 + 32 * j + l]!;
          }
          isum += sc * sub;
          msum += mn * (xv.getInt16(xo + 260 + 4 * j, true) + xv.getInt16(xo + 262 + 4 * j, true));
        }
        const dx = xv.getFloat32(xo, true);
        const t = fr(fr(fr(isum) * fr(F16[u16(u, wo)]! * dx)) - fr(fr(msum) * fr(F16[u16(u, wo + 2)]! * dx)));
        acc = fr(acc + t);
      }
      return acc;
    }
    case "q6_k": {
      for (let b = 0; b < blocks; b++) {
        const wo = w.o + b * 210;
        const xo = x.o + b * 292;
        let isum = 0;
        for (let g = 0; g < 16; g++) {
          const h = g >> 3;
          const qq = (g >> 1) & 3;
          const part = g & 1;
          const ql = wo + 64 * h + 32 * (qq & 1) + 16 * part;
          const qh = wo + 128 + 32 * h + 16 * part;
          let sub = 0;
          for (let l = 0; l < 16; l++) {
            const v = (qq < 2 ? u[ql + l]! & 15 : u[ql + l]! >> 4) | (((u[qh + l]! >> (2 * qq)) & 3) << 4);
            sub += v * xs[xo + 4 + 16 * g + l]!;
          }
          const sc = s[wo + 192 + g]!;
          isum += sc * sub - 32 * sc * xv.getInt16(xo + 260 + 2 * g, true);
        }
        acc = fr(acc + fr(fr(isum) * fr(F16[u16(u, wo + 208)]! * xv.getFloat32(xo, true))));
      }
      return acc;
    }
    case "fp8":
    case "bf16":
    case "f16":
    case "f32": {
      // Lane k mod 4 of one f32x4 accumulator, in order, then (l0 + l2) + (l1 + l3): linear.wat's order too.
      const at = denseReader(kind, w);
      const l = [0, 0, 0, 0];
      for (let k = 0; k < blocks * 16; k++) l[k & 3] = fr(l[k & 3]! + fr(at(k) * xv.getFloat32(x.o + 4 * k, true)));
      return fr(fr(l[0]! + l[2]!) + fr(l[1]! + l[3]!));
    }
  }
}

const bitsU32 = new Uint32Array(1);
const bitsF32 = new Float32Array(bitsU32.buffer);

/** Element k of an fp8 / bf16 / f16 / f32 weight row, decoded exactly (f16: subnormals, inf and NaN included). */
function denseReader(kind: "fp8" | "bf16" | "f16" | "f32", w: Row): (k: number) => number {
  const { u, o } = w;
  switch (kind) {
    case "fp8":
      return (k) => FP8[u[o + k]!]!;
    case "bf16":
      return (k) => {
        bitsU32[0] = u16(u, o + 2 * k) << 16;
        return bitsF32[0]!;
      };
    case "f16": {
      const t = f16ToF32Table();
      return (k) => t[u16(u, o + 2 * k)]!;
    }
    case "f32": {
      const dv = new DataView(u.buffer, u.byteOffset, u.byteLength);
      return (k) => dv.getFloat32(o + 4 * k, true);
    }
  }
}

/**
 * out[outOff + i · outStride + r] = weight row r · activation row i for r < nRows, i < m, exactly as
 * quant.wat's mm_<kind>: weight rows at w[wOff + r · wRowBytes], activation rows (in the kind's
 * activation format, see QUANT_KERNELS; f32 for fp8 and the dense kinds) at xq[xqOff + i · xqRowBytes],
 * `blocks` blocks each; int8 and fp8 multiply row r by scales[r].
 */
export function dotRows(
  kind: QuantKind,
  w: Uint8Array,
  wOff: number,
  wRowBytes: number,
  nRows: number,
  xq: Uint8Array,
  xqOff: number,
  xqRowBytes: number,
  m: number,
  blocks: number,
  out: Float32Array,
  outOff: number,
  outStride: number,
  scales?: Float32Array,
): void {
  if (QUANT_KERNELS[kind].rowScales && !scales) throw new Error(`dotRows ${kind}: per-row scales are required`);
  const ws = new Int8Array(w.buffer, w.byteOffset, w.byteLength);
  const xs = new Int8Array(xq.buffer, xq.byteOffset, xq.byteLength);
  const xv = new DataView(xq.buffer, xq.byteOffset, xq.byteLength);
  for (let r = 0; r < nRows; r++) {
    const wr: Row = { u: w, s: ws, o: wOff + r * wRowBytes };
    for (let i = 0; i < m; i++) {
      const v = dotRow(kind, wr, { u: xq, s: xs, o: xqOff + i * xqRowBytes }, xv, blocks);
      out[outOff + i * outStride + r] = scales && QUANT_KERNELS[kind].rowScales ? fr(v * scales[r]!) : v;
    }
  }
}

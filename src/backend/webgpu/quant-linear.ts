/**
 * Linear layers and embedding lookups over ggml block formats (q8_0, q4_0, q4_k, q5_k, q6_k) in WGSL,
 * the weights read in place as raw u32 words.
 *
 * Every format is decoded through one function per tensor, `dq8_NAME(rowByte, g) -> array<f32, 8>`:
 * the eight consecutive elements [8g, 8g + 8) of the row whose first byte is `rowByte` (within the
 * binding). Eight is the largest run that shares one scale (and one min) in every format and lies in
 * consecutive quant bytes, so a group costs two unaligned 4-byte reads of codes plus its scales. Each
 * element is dequantized with the codec's own f32 operations (src/quant: d·sc first, then ·q, then − m),
 * so the weights the kernel multiplies are the codec's to the rounding of a possible FMA.
 *
 * Blocks are not 4-byte aligned in general (q8_0 is 34 bytes, q6_k 210) and a row slice starts anywhere
 * in its window, so bytes are taken from words by shifts: byte b is word b >> 2, bits 8·(b & 3).
 *
 * Unlike the CPU kernels, activations are not quantized to q8: products and sums are f32.
 */
import { type DType, elementType, tensorBytes } from "../dtype.js";
import type { Tensor } from "../tensor.js";
import type { KernelSpec } from "./kernels.js";
import { GEMV_MAX_ROWS, gemvHead, gemvTail } from "./ops.js";

export const WEBGPU_QUANT_TYPES: readonly DType[] = ["q8_0", "q4_0", "q4_k", "q5_k", "q6_k"];

const ceil = (a: number, b: number) => Math.ceil(a / b);

/** Byte helpers for the raw tensor `n`: a byte, a u16 and a little-endian u32 at any byte offset of its window. */
function byteFns(n: string): string {
  return `
fn b1_${n}(b: u32) -> u32 { return (wd_${n}(b >> 2u) >> ((b & 3u) * 8u)) & 0xffu; }
fn h16_${n}(b: u32) -> u32 {
  let s = (b & 3u) * 8u;
  if (s <= 16u) { return (wd_${n}(b >> 2u) >> s) & 0xffffu; }
  return ((wd_${n}(b >> 2u) >> 24u) | (wd_${n}((b >> 2u) + 1u) << 8u)) & 0xffffu;
}
fn w4_${n}(b: u32) -> u32 {
  let i = b >> 2u;
  let s = (b & 3u) * 8u;
  // A shift by 32 is a shift by 0 in WGSL: the aligned case is its own branch.
  if (s == 0u) { return wd_${n}(i); }
  return (wd_${n}(i) >> s) | (wd_${n}(i + 1u) << (32u - s));
}
fn f16_${n}(b: u32) -> f32 { return unpack2x16float(h16_${n}(b)).x; }
fn i8_${n}(w: u32, i: u32) -> f32 { return f32(bitcast<i32>(w << (24u - 8u * i)) >> 24u); }`;
}

/** K-quant 6-bit scale and min of sub-block j from the 12 bytes at s (ggml's get_scale_min_k4). */
function scaleMinFn(n: string): string {
  return `
fn scmin_${n}(s: u32, j: u32) -> vec2<f32> {
  if (j < 4u) { return vec2<f32>(f32(b1_${n}(s + j) & 63u), f32(b1_${n}(s + j + 4u) & 63u)); }
  let hi = b1_${n}(s + j + 4u);
  return vec2<f32>(f32((hi & 15u) | ((b1_${n}(s + j - 4u) >> 6u) << 4u)), f32((hi >> 4u) | ((b1_${n}(s + j) >> 6u) << 4u)));
}`;
}

/** `dq8_NAME(rowByte, g)` for the format: the layouts are those of src/quant/legacy-quants.ts and k-quants.ts. */
function decodeFn(dtype: DType, n: string): string {
  const head = `fn dq8_${n}(rb: u32, g: u32) -> array<f32, 8> {\n  var r: array<f32, 8>;`;
  switch (dtype) {
    case "q8_0":
      // d:f16, qs:i8[32]; group g is bytes 2 + 8·(g % 4) of block g / 4.
      return `${byteFns(n)}
${head}
  let bo = rb + (g >> 2u) * 34u;
  let d = f16_${n}(bo);
  let q0 = w4_${n}(bo + 2u + (g & 3u) * 8u);
  let q1 = w4_${n}(bo + 6u + (g & 3u) * 8u);
  for (var i = 0u; i < 4u; i++) { r[i] = i8_${n}(q0, i) * d; r[i + 4u] = i8_${n}(q1, i) * d; }
  return r;
}`;
    case "q4_0":
      // d:f16, qs:u8[16]; element e < 16 is the low nibble of byte e, e ≥ 16 the high nibble of byte e − 16.
      return `${byteFns(n)}
${head}
  let bo = rb + (g >> 2u) * 18u;
  let d = f16_${n}(bo);
  let e = (g & 3u) * 8u;
  let q0 = w4_${n}(bo + 2u + (e & 15u));
  let q1 = w4_${n}(bo + 6u + (e & 15u));
  let sh = (e >> 4u) * 4u;
  for (var i = 0u; i < 4u; i++) {
    r[i] = (f32((q0 >> (8u * i + sh)) & 15u) - 8.0) * d;
    r[i + 4u] = (f32((q1 >> (8u * i + sh)) & 15u) - 8.0) * d;
  }
  return r;
}`;
    case "q4_k":
    case "q5_k": {
      // d, dmin:f16, scales:u8[12], [q5_k: qh:u8[32]], qs:u8[128]. Sub-block j = e / 32 takes the low (j even)
      // or high (j odd) nibbles of qs[32·(j / 2) ..]; q5_k's fifth bit of element l of sub-block j is bit j of qh[l].
      const five = dtype === "q5_k";
      const bb = five ? 176 : 144;
      const qs = five ? 48 : 16;
      const hiBits = five
        ? `
  let h0 = w4_${n}(bo + 16u + l);
  let h1 = w4_${n}(bo + 20u + l);`
        : "";
      const v = (q: string, h: string) =>
        five ? `f32(((${q} >> (8u * i + sh)) & 15u) | (((${h} >> (8u * i + j)) & 1u) << 4u))` : `f32((${q} >> (8u * i + sh)) & 15u)`;
      return `${byteFns(n)}${scaleMinFn(n)}
${head}
  let bo = rb + (g >> 5u) * ${bb}u;
  let e = (g & 31u) * 8u;
  let j = e >> 5u;
  let l = e & 31u;
  let dm = vec2<f32>(f16_${n}(bo), f16_${n}(bo + 2u));
  let sm = scmin_${n}(bo + 4u, j);
  let d1 = dm.x * sm.x;
  let m1 = dm.y * sm.y;
  let q0 = w4_${n}(bo + ${qs}u + 32u * (j >> 1u) + l);
  let q1 = w4_${n}(bo + ${qs + 4}u + 32u * (j >> 1u) + l);${hiBits}
  let sh = (j & 1u) * 4u;
  for (var i = 0u; i < 4u; i++) {
    r[i] = d1 * ${v("q0", "h0")} - m1;
    r[i + 4u] = d1 * ${v("q1", "h1")} - m1;
  }
  return r;
}`;
    }
    case "q6_k":
      // ql:u8[128], qh:u8[64], scales:i8[16], d:f16. Half h = e / 128, quarter c = (e / 32) % 4, l = e % 32:
      // low 4 bits from ql[64h + 32·(c % 2) + l] (nibble c / 2), top 2 from qh[32h + l] (bits 2c); scale e / 16.
      return `${byteFns(n)}
${head}
  let bo = rb + (g >> 5u) * 210u;
  let e = (g & 31u) * 8u;
  let h = e >> 7u;
  let c = (e >> 5u) & 3u;
  let l = e & 31u;
  let d1 = f16_${n}(bo + 208u) * i8_${n}(b1_${n}(bo + 192u + (e >> 4u)), 0u);
  let ql = bo + 64u * h + 32u * (c & 1u) + l;
  let qh = bo + 128u + 32u * h + l;
  let l0 = w4_${n}(ql);
  let l1 = w4_${n}(ql + 4u);
  let t0 = w4_${n}(qh);
  let t1 = w4_${n}(qh + 4u);
  let ns = (c >> 1u) * 4u;
  let hs = c * 2u;
  for (var i = 0u; i < 4u; i++) {
    r[i] = d1 * (f32(((l0 >> (8u * i + ns)) & 15u) | (((t0 >> (8u * i + hs)) & 3u) << 4u)) - 32.0);
    r[i + 4u] = d1 * (f32(((l1 >> (8u * i + ns)) & 15u) | (((t1 >> (8u * i + hs)) & 3u) << 4u)) - 32.0);
  }
  return r;
}`;
    default:
      throw new Error(`webgpu: no kernel for ${dtype} weights`);
  }
}

function checkQuant(w: Tensor, what: string): void {
  if (!WEBGPU_QUANT_TYPES.includes(w.dtype)) throw new Error(`webgpu ${what}: no kernel for ${w.dtype} weights`);
  const K = w.shape[1]!;
  const bs = elementType(w.dtype).blockSize;
  if (K % bs !== 0 || w.rowStride % bs !== 0)
    throw new RangeError(`webgpu ${what}: ${w.dtype} rows of ${K} are not whole ${bs}-element blocks`);
}

/**
 * out[m, n0 + j] = x[m] · dequant(W[j]) (+ bias[n0 + j]) for the N rows of W bound (a slice of the weight
 * when it spans more than one binding).
 *
 * One workgroup per 8 weight rows and per group of 8 batch rows: 32 invocations per weight row take its
 * 8-element groups in turn (adjacent invocations read adjacent bytes), every batch row of the group is
 * accumulated while the weight row streams, and a tree in workgroup memory sums the 32 partials. A row's
 * result is summed in the same order whatever else the batch holds (batch invariance), at the price of
 * decoding each weight once per 8 batch rows in a prefill (a tiled variant with the same order is to come).
 */
export function quantLinearSpec(out: Tensor, x: Tensor, w: Tensor, n0: number, bias?: Tensor): KernelSpec {
  checkQuant(w, "linear");
  const M = x.shape[0]!;
  const K = x.shape[1]!;
  const N = w.shape[0]!;
  const tensors: KernelSpec["tensors"] = { out: { t: out, write: true }, x: { t: x }, w: { t: w } };
  if (bias) tensors.bias = { t: bias };
  const params: KernelSpec["params"] = {
    M: ["u32", M],
    G: ["u32", K / 8],
    N: ["u32", N],
    sx: ["u32", x.rowStride],
    so: ["u32", out.rowStride],
    rowBytes: ["u32", tensorBytes(w.dtype, w.rowStride)],
    n0: ["u32", n0],
  };
  const decls = decodeFn(w.dtype, "w");
  // The eight products of a group against batch row m, summed in a fixed order.
  const dot8 = (xb: string) => Array.from({ length: 8 }, (_, i) => `wv[${i}] * ld_x(${xb} + ${i}u)`).join(" + ");
  const MB = Math.min(M, GEMV_MAX_ROWS);
  const LANES = 32;
  const ROWS = 8;
  const nGroups = ceil(N, ROWS);
  params.nGroups = ["u32", nGroups];
  return {
    name: `linear_gemv_${w.dtype}`,
    key: `m${MB}${bias ? "b" : ""}`,
    tensors,
    params,
    workgroupSize: LANES * ROWS,
    workgroups: nGroups * ceil(M, MB),
    decls: `${decls}\nvar<workgroup> red: array<f32, ${LANES * ROWS * MB}>;`,
    body: `
${gemvHead(LANES, ROWS, MB)}
  if (n < p.N) {
    let rb = base_w() + n * p.rowBytes;
    for (var g = lane; g < p.G; g += ${LANES}u) {
      let wv = dq8_w(rb, g);
      for (var m = 0u; m < ${MB}u; m++) {
        if (m < mn) {
          let xb = (m0 + m) * p.sx + g * 8u;
          acc[m] += ${dot8("xb")};
        }
      }
    }
  }
${gemvTail(LANES, ROWS, MB, bias !== undefined)}`,
  };
}

/** out[t] = dequant(table[ids[t]]) for the table rows [r0, r0 + rows) bound by this dispatch; one invocation per 8 elements. */
export function quantEmbeddingSpec(out: Tensor, ids: Tensor, table: Tensor, r0: number): KernelSpec {
  checkQuant(table, "embedding");
  const T = out.shape[0]!;
  const H = out.shape[1]!;
  const WG = 64;
  return {
    name: `embedding_${table.dtype}`,
    key: "",
    tensors: { out: { t: out, write: true }, ids: { t: ids }, table: { t: table } },
    params: {
      T: ["u32", T],
      G: ["u32", H / 8],
      so: ["u32", out.rowStride],
      rowBytes: ["u32", tensorBytes(table.dtype, table.rowStride)],
      r0: ["u32", r0],
      rows: ["u32", table.shape[0]!],
    },
    workgroupSize: WG,
    workgroups: ceil((T * H) / 8, WG),
    decls: decodeFn(table.dtype, "table"),
    body: `
  let i = wid * ${WG}u + lid;
  if (i >= p.T * p.G) { return; }
  let t = i / p.G;
  let g = i % p.G;
  let id = u32(ld_ids(t));
  if (id < p.r0 || id >= p.r0 + p.rows) { return; }
  let v = dq8_table(base_table() + (id - p.r0) * p.rowBytes, g);
  for (var e = 0u; e < 8u; e++) { st_out(t * p.so + g * 8u + e, v[e]); }`,
  };
}

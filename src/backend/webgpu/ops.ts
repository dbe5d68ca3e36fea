/**
 * The model ops in WGSL, as kernel specs for KernelRunner: embedding, RMSNorm (with the fused residual),
 * dense linear (matrix-vector workgroups over groups of 8 batch rows), rotary
 * embedding fused with the paged KV-cache write, paged attention over mixed prefill and decode batches,
 * SiLU·mul and row gathers. Every kernel computes in f32 whatever the storage dtype; each one's CPU twin
 * is the CPU backend's op, and the conformance suite compares them.
 */
import type { AttentionMetadata, RopeTable } from "../backend.js";
import type { Tensor } from "../tensor.js";
import type { KernelSpec } from "./kernels.js";

const ceil = (a: number, b: number) => Math.ceil(a / b);

/** Row-major strides of a 2-D or 3-D [t, h, d] view as (rows, heads) strides; a 2-D view has one head. */
function rowHeadStrides(t: Tensor): { heads: number; s0: number; s1: number } {
  if (t.shape.length === 3) return { heads: t.shape[1]!, s0: t.strides[0]!, s1: t.strides[1]! };
  return { heads: 1, s0: t.rowStride, s1: 0 };
}

/** out[t] = table[ids[t]] for the table rows [r0, r0 + rows) bound by this dispatch (tables beyond one binding are split). */
export function embeddingSpec(out: Tensor, ids: Tensor, table: Tensor, r0: number): KernelSpec {
  const T = out.shape[0]!;
  const H = out.shape[1]!;
  const rows = table.shape[0]!;
  const WG = 256;
  return {
    name: "embedding",
    key: "",
    tensors: { out: { t: out, write: true }, ids: { t: ids }, table: { t: table } },
    params: {
      T: ["u32", T],
      H: ["u32", H],
      so: ["u32", out.rowStride],
      st: ["u32", table.rowStride],
      r0: ["u32", r0],
      rows: ["u32", rows],
    },
    workgroupSize: WG,
    workgroups: ceil(T * H, WG),
    body: `
  let g = wid * ${WG}u + lid;
  if (g >= p.T * p.H) { return; }
  let t = g / p.H;
  let c = g % p.H;
  let id = u32(ld_ids(t));
  if (id < p.r0 || id >= p.r0 + p.rows) { return; }
  st_out(t * p.so + c, ld_table((id - p.r0) * p.st + c));`,
  };
}

/** Workgroup sum of `v` over WG invocations into red[0] (a tree in workgroup memory). */
function reduceSum(WG: number, arr = "red"): string {
  return `
  ${arr}[lid] = acc;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { ${arr}[lid] = ${arr}[lid] + ${arr}[lid + s]; }
    workgroupBarrier();
  }`;
}

export function rmsNormSpec(out: Tensor, x: Tensor, weight: Tensor, eps: number, residual?: Tensor): KernelSpec {
  const D = x.shape[x.shape.length - 1]!;
  const xs = rowHeadStrides(x);
  const os = rowHeadStrides(out);
  const rs = residual ? rowHeadStrides(residual) : os;
  const rows = x.shape[0]! * xs.heads;
  const WG = D >= 256 ? 256 : D >= 128 ? 128 : 64;
  const tensors: KernelSpec["tensors"] = { out: { t: out, write: true }, x: { t: x }, w: { t: weight } };
  if (residual) tensors.res = { t: residual, write: true };
  const at = (s: string) => `(r / p.heads) * p.${s}0 + (r % p.heads) * p.${s}1`;
  return {
    name: "rms_norm",
    key: residual ? "res" : "",
    tensors,
    params: {
      D: ["u32", D],
      heads: ["u32", xs.heads],
      x0: ["u32", xs.s0],
      x1: ["u32", xs.s1],
      o0: ["u32", os.s0],
      o1: ["u32", os.s1],
      r0: ["u32", rs.s0],
      r1: ["u32", rs.s1],
      eps: ["f32", eps],
    },
    workgroupSize: WG,
    workgroups: rows,
    decls: `var<workgroup> red: array<f32, ${WG}>;`,
    body: `
  let r = wid;
  let xb = ${at("x")};
  let ob = ${at("o")};
  let rb = ${at("r")};
  var acc = 0.0;
  for (var i = lid; i < p.D; i += ${WG}u) {
    ${residual ? "let v = ld_x(xb + i) + ld_res(rb + i);\n    st_res(rb + i, v);" : "let v = ld_x(xb + i);"}
    acc += v * v;
  }
  ${reduceSum(WG)}
  let inv = inverseSqrt(red[0] / f32(p.D) + p.eps);
  for (var i = lid; i < p.D; i += ${WG}u) {
    ${residual ? "let v = ld_res(rb + i);" : "let v = ld_x(xb + i);"}
    st_out(ob + i, v * inv * ld_w(i));
  }`,
  };
}

/** The start of a matrix-vector workgroup: its lane and weight row n, its batch rows [m0, m0 + mn), and their sums acc. */
export function gemvHead(LANES: number, ROWS: number, MB: number): string {
  return `
  let lane = lid % ${LANES}u;
  let sub = lid / ${LANES}u;
  let n = (wid % p.nGroups) * ${ROWS}u + sub;
  let m0 = (wid / p.nGroups) * ${MB}u;
  let mn = min(${MB}u, p.M - m0);
  var acc: array<f32, ${MB}>;`;
}

/**
 * The end of a matrix-vector workgroup: each lane's partial sums (acc[m] for the batch rows of the group)
 * reduced by a tree in workgroup memory `red`, then lane m writes batch row m0 + m of output column n.
 */
export function gemvTail(LANES: number, ROWS: number, MB: number, bias: boolean): string {
  return `
  for (var m = 0u; m < ${MB}u; m++) { red[(m * ${ROWS}u + sub) * ${LANES}u + lane] = acc[m]; }
  workgroupBarrier();
  for (var s = ${LANES / 2}u; s > 0u; s = s >> 1u) {
    if (lane < s) {
      for (var m = 0u; m < ${MB}u; m++) {
        let i = (m * ${ROWS}u + sub) * ${LANES}u + lane;
        red[i] = red[i] + red[i + s];
      }
    }
    workgroupBarrier();
  }
  if (lane < mn && n < p.N) {
    let m = lane;
    var v = red[(m * ${ROWS}u + sub) * ${LANES}u];
    ${bias ? "v += ld_bias(p.n0 + n);" : ""}
    st_out((m0 + m) * p.so + p.n0 + n, v);
  }`;
}

/** Rows of the batch a matrix-vector workgroup takes at once (each weight row is read once for all of them). */
export const GEMV_MAX_ROWS = 8;

/**
 * out[m, n0 + j] = x[m] · W[j] (+ bias[n0 + j]) for the N rows of W bound (a slice of the weight when
 * it spans more than one binding). One workgroup per 256 / L weight rows and per group of 8 batch rows:
 * L invocations per weight row (8 to 64, by K) split K, every batch row of the group is accumulated while the weight row
 * streams, then a tree reduction. A row's result is summed in the same order whatever the batch holds,
 * so a request generates the same tokens alone and in a busy batch (the engine's batch invariance).
 */
export function denseLinearSpec(out: Tensor, x: Tensor, w: Tensor, n0: number, bias?: Tensor): KernelSpec {
  const M = x.shape[0]!;
  const K = x.shape[1]!;
  const N = w.shape[0]!;
  const tensors: KernelSpec["tensors"] = { out: { t: out, write: true }, x: { t: x }, w: { t: w } };
  if (bias) tensors.bias = { t: bias };
  const MB = Math.min(M, GEMV_MAX_ROWS);
  // About 32 products per invocation before the reduction: short rows (small K) take fewer lanes and more rows per workgroup.
  const LANES = Math.min(64, Math.max(8, 2 ** Math.ceil(Math.log2(Math.ceil(K / 32)))));
  const ROWS = 256 / LANES;
  const nGroups = ceil(N, ROWS);
  return {
    name: "linear_gemv",
    key: `m${MB}l${LANES}${bias ? "b" : ""}`,
    tensors,
    params: {
      M: ["u32", M],
      K: ["u32", K],
      N: ["u32", N],
      sx: ["u32", x.rowStride],
      so: ["u32", out.rowStride],
      sw: ["u32", w.rowStride],
      n0: ["u32", n0],
      nGroups: ["u32", nGroups],
    },
    workgroupSize: LANES * ROWS,
    workgroups: nGroups * ceil(M, MB),
    decls: `var<workgroup> red: array<f32, ${LANES * ROWS * MB}>;`,
    body: `
${gemvHead(LANES, ROWS, MB)}
  if (n < p.N) {
    let wb = n * p.sw;
    for (var k = lane; k < p.K; k += ${LANES}u) {
      let wv = ld_w(wb + k);
      for (var m = 0u; m < ${MB}u; m++) {
        if (m < mn) { acc[m] += wv * ld_x((m0 + m) * p.sx + k); }
      }
    }
  }
${gemvTail(LANES, ROWS, MB, bias !== undefined)}`,
  };
}

/**
 * Rotate q and k (NeoX pairs within rotaryDim) at each token's position and write k and v into the
 * paged caches at the token's slot (slot < 0: padding, nothing written). One workgroup per token.
 */
export function ropeCacheSpec(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  positions: Tensor,
  rope: RopeTable,
  slots: Tensor,
  kCache: Tensor,
  vCache: Tensor,
): KernelSpec {
  const T = q.shape[0]!;
  const Hq = q.shape[1]!;
  const Hkv = k.shape[1]!;
  const D = q.shape[2]!;
  const half = rope.rotaryDim / 2;
  const WG = 64;
  return {
    name: "rope_cache_write",
    key: "",
    tensors: {
      q: { t: q, write: true },
      k: { t: k, write: true },
      v: { t: v },
      pos: { t: positions },
      cos: { t: rope.cos },
      sin: { t: rope.sin },
      slots: { t: slots },
      kc: { t: kCache, write: true },
      vc: { t: vCache, write: true },
    },
    params: {
      Hq: ["u32", Hq],
      Hkv: ["u32", Hkv],
      D: ["u32", D],
      half: ["u32", half],
      maxPos: ["u32", rope.maxPositions],
      q0: ["u32", q.strides[0]!],
      q1: ["u32", q.strides[1]!],
      k0: ["u32", k.strides[0]!],
      k1: ["u32", k.strides[1]!],
      v0: ["u32", v.strides[0]!],
      v1: ["u32", v.strides[1]!],
    },
    workgroupSize: WG,
    workgroups: T,
    body: `
  let t = wid;
  let pos = u32(ld_pos(t));
  if (pos >= p.maxPos) { return; }
  let slot = ld_slots(t);
  // q: rotate each head's pairs in place.
  for (var e = lid; e < p.Hq * p.half; e += ${WG}u) {
    let h = e / p.half;
    let i = e % p.half;
    let b = t * p.q0 + h * p.q1;
    let c = ld_cos(pos * p.half + i);
    let s = ld_sin(pos * p.half + i);
    let x1 = ld_q(b + i);
    let x2 = ld_q(b + i + p.half);
    st_q(b + i, x1 * c - x2 * s);
    st_q(b + i + p.half, x2 * c + x1 * s);
  }
  // k: rotate in place and write the cache, dims past the rotary part as they are.
  for (var e = lid; e < p.Hkv * p.D; e += ${WG}u) {
    let h = e / p.D;
    let i = e % p.D;
    let b = t * p.k0 + h * p.k1;
    let cb = u32(slot) * p.Hkv * p.D + h * p.D;
    if (i < p.half) {
      let c = ld_cos(pos * p.half + i);
      let s = ld_sin(pos * p.half + i);
      let x1 = ld_k(b + i);
      let x2 = ld_k(b + i + p.half);
      let y1 = x1 * c - x2 * s;
      let y2 = x2 * c + x1 * s;
      st_k(b + i, y1);
      st_k(b + i + p.half, y2);
      if (slot >= 0) { st_kc(cb + i, y1); st_kc(cb + i + p.half, y2); }
    } else if (i >= 2u * p.half && slot >= 0) {
      st_kc(cb + i, ld_k(b + i));
    }
    if (slot >= 0) { st_vc(cb + i, ld_v(t * p.v0 + h * p.v1 + i)); }
  }`,
  };
}

/**
 * out[t, h] = causal softmax(q[t, h]·kᵀ·scale)·v over the token's sequence in the paged caches. One
 * workgroup per (token, head); the context is walked in chunks of WG positions with an online softmax,
 * each invocation scoring one position of the chunk and accumulating D / WG output dims.
 */
export function pagedAttentionSpec(
  out: Tensor,
  q: Tensor,
  kCache: Tensor,
  vCache: Tensor,
  meta: AttentionMetadata,
  scale: number,
): KernelSpec {
  const T = q.shape[0]!;
  const Hq = q.shape[1]!;
  const D = q.shape[2]!;
  const Hkv = kCache.shape[2]!;
  const blockSize = kCache.shape[1]!;
  const WG = 64;
  const DPT = ceil(D, WG);
  return {
    name: "paged_attention",
    key: `d${D}`,
    tensors: {
      out: { t: out, write: true },
      q: { t: q },
      kc: { t: kCache },
      vc: { t: vCache },
      qsl: { t: meta.queryStartLoc },
      lens: { t: meta.seqLens },
      tables: { t: meta.blockTables },
    },
    params: {
      S: ["u32", meta.numSeqs],
      Hq: ["u32", Hq],
      G: ["u32", Hq / Hkv],
      Hkv: ["u32", Hkv],
      bs: ["u32", blockSize],
      tw: ["u32", meta.blockTables.rowStride],
      q0: ["u32", q.strides[0]!],
      q1: ["u32", q.strides[1]!],
      o0: ["u32", out.strides[0]!],
      o1: ["u32", out.strides[1]!],
      scale: ["f32", scale],
    },
    workgroupSize: WG,
    workgroups: T * Hq,
    decls: `
var<workgroup> qs: array<f32, ${D}>;
var<workgroup> wts: array<f32, ${WG}>;
var<workgroup> red: array<f32, ${WG}>;`,
    body: `
  let t = wid / p.Hq;
  let h = wid % p.Hq;
  let kvh = h / p.G;
  // The sequence holding token t: the last s with qsl[s] <= t.
  var lo = 0u;
  var hi = p.S;
  while (hi - lo > 1u) {
    let mid = (lo + hi) / 2u;
    if (u32(ld_qsl(mid)) <= t) { lo = mid; } else { hi = mid; }
  }
  let seq = lo;
  let qn = u32(ld_qsl(seq + 1u)) - u32(ld_qsl(seq));
  let pos = u32(ld_lens(seq)) - qn + (t - u32(ld_qsl(seq)));
  let qb = t * p.q0 + h * p.q1;
  for (var e = lid; e < ${D}u; e += ${WG}u) { qs[e] = ld_q(qb + e) * p.scale; }
  workgroupBarrier();
  var m = -3.0e38;
  var l = 0.0;
  var acc: array<f32, ${DPT}>;
  let rowStride = p.Hkv * ${D}u;
  for (var c0 = 0u; c0 <= pos; c0 += ${WG}u) {
    let pj = c0 + lid;
    var sc = -3.0e38;
    if (pj <= pos) {
      let slot = u32(ld_tables(seq * p.tw + pj / p.bs)) * p.bs + pj % p.bs;
      let kb = slot * rowStride + kvh * ${D}u;
      var dot = 0.0;
      for (var e = 0u; e < ${D}u; e++) { dot += qs[e] * ld_kc(kb + e); }
      sc = dot;
    }
    red[lid] = sc;
    workgroupBarrier();
    for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
      if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
      workgroupBarrier();
    }
    let mNew = max(m, red[0]);
    workgroupBarrier();
    var wv = 0.0;
    if (pj <= pos) { wv = exp(sc - mNew); }
    wts[lid] = wv;
    red[lid] = wv;
    workgroupBarrier();
    for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
      if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
      workgroupBarrier();
    }
    let corr = exp(m - mNew);
    l = l * corr + red[0];
    m = mNew;
    let n = min(${WG}u, pos + 1u - c0);
    for (var j = 0u; j < ${DPT}u; j++) { acc[j] *= corr; }
    for (var i = 0u; i < n; i++) {
      let pi = c0 + i;
      let slot = u32(ld_tables(seq * p.tw + pi / p.bs)) * p.bs + pi % p.bs;
      let vb = slot * rowStride + kvh * ${D}u;
      let w = wts[i];
      for (var j = 0u; j < ${DPT}u; j++) {
        let e = lid + j * ${WG}u;
        if (e < ${D}u) { acc[j] += w * ld_vc(vb + e); }
      }
    }
    workgroupBarrier();
  }
  let ob = t * p.o0 + h * p.o1;
  for (var j = 0u; j < ${DPT}u; j++) {
    let e = lid + j * ${WG}u;
    if (e < ${D}u) { st_out(ob + e, acc[j] / l); }
  }`,
  };
}

export function siluAndMulSpec(out: Tensor, x: Tensor): KernelSpec {
  const T = out.shape[0]!;
  const I = out.shape[1]!;
  const WG = 256;
  return {
    name: "silu_and_mul",
    key: "",
    tensors: { out: { t: out, write: true }, x: { t: x } },
    params: { T: ["u32", T], I: ["u32", I], sx: ["u32", x.rowStride], so: ["u32", out.rowStride] },
    workgroupSize: WG,
    workgroups: ceil(T * I, WG),
    body: `
  let g = wid * ${WG}u + lid;
  if (g >= p.T * p.I) { return; }
  let t = g / p.I;
  let i = g % p.I;
  let a = ld_x(t * p.sx + i);
  st_out(t * p.so + i, a / (1.0 + exp(-a)) * ld_x(t * p.sx + p.I + i));`,
  };
}

export function gatherRowsSpec(out: Tensor, x: Tensor, indices: Tensor): KernelSpec {
  const R = out.shape[0]!;
  const F = out.shape[1]!;
  const WG = 256;
  return {
    name: "gather_rows",
    key: "",
    tensors: { out: { t: out, write: true }, x: { t: x }, idx: { t: indices } },
    params: { R: ["u32", R], F: ["u32", F], sx: ["u32", x.rowStride], so: ["u32", out.rowStride] },
    workgroupSize: WG,
    workgroups: ceil(R * F, WG),
    body: `
  let g = wid * ${WG}u + lid;
  if (g >= p.R * p.F) { return; }
  let r = g / p.F;
  let f = g % p.F;
  st_out(r * p.so + f, ld_x(u32(ld_idx(r)) * p.sx + f));`,
  };
}

/**
 * Patch the 16-bit halves at the two ends of a write that is not word-aligned: word = (word & ~mask) |
 * (value & mask). `dst` is an i32 view over the words touched; word indices are relative to it.
 */
export function patchWordsSpec(dst: Tensor, words: readonly [number, number, number][]): KernelSpec {
  const params: KernelSpec["params"] = { count: ["u32", words.length] };
  words.forEach(([w, mask, value], i) => {
    params[`w${i}`] = ["u32", w];
    params[`m${i}`] = ["u32", mask];
    params[`v${i}`] = ["u32", value];
  });
  for (let i = words.length; i < 2; i++) {
    params[`w${i}`] = ["u32", 0];
    params[`m${i}`] = ["u32", 0];
    params[`v${i}`] = ["u32", 0];
  }
  return {
    name: "patch_words",
    key: "",
    tensors: { dst: { t: dst, write: true, raw: true } },
    params,
    workgroupSize: 1,
    workgroups: 1,
    body: `
  let b = base_dst();
  if (p.count > 0u) { stw_dst(b + p.w0, (wd_dst(b + p.w0) & ~p.m0) | (p.v0 & p.m0)); }
  if (p.count > 1u) { stw_dst(b + p.w1, (wd_dst(b + p.w1) & ~p.m1) | (p.v1 & p.m1)); }`,
  };
}

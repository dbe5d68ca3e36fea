/**
 * The sampling op on WebGPU: logits processors, the allowed-token mask, greedy and temperature sampling
 * (top-k, top-p, min-p, one Philox draw per token) and log-probabilities, in one WGSL kernel with one
 * workgroup per row. Only the token ids and the log-probabilities rows ask for are read back. The CPU op
 * (src/backend/cpu/sample.ts) is the reference and the CUDA twin (cuda/kernels/sampling.cu) the model:
 *
 * - The host turns each row's processors into a short list of entries (token, bias, min_tokens ban,
 *   repetition penalty, frequency·count + presence), merged per token, and uploads them with the row
 *   settings and the masks of the rows that have one, in one buffer. No host loop runs over the vocabulary.
 * - Per row the kernel (a) computes logsumexp and the top-n of the RAW logits when the row wants
 *   logprobs, (b) copies the row to an f32 work row (rows that want logprobs and get modified, and every
 *   modified row when the logits are not f32: a 16-bit row cannot hold the processed values) applying the
 *   mask on the way, else masks in place, (c) applies the processor entries, skipping masked tokens, as
 *   the CPU applies the mask after them, (d) takes the argmax (greedy) or samples.
 * - Sampling without sorting: values are compared by an order-preserving u32 key (±0 merged, NaN lowest).
 *   Top-k's threshold is found by bisection over keys (count of keys ≥ mid), top-p's by bisection over the
 *   mass of keys > mid; ties at either threshold are resolved by index with a prefix scan over contiguous
 *   per-invocation chunks, and the final index-order walk uses the same scan.
 *
 * Parity with the CPU: masks, the top-k set, the Philox words and greedy tokens are exact (processors are
 * f32 operations, exact when the parameters are f32 numbers; the repetition penalty's division may differ
 * by an ulp where the adapter's division is not correctly rounded). WGSL has no f64: weights, sums and the
 * draw u (the top 24 bits of Philox word 0) are f32, where the CPU uses doubles. A sampled token (and the
 * top-p cut) can therefore differ from the CPU's only when u · total (or p · total) lands within f32
 * rounding (~1e-6 relative) of the boundary between two tokens' cumulative weights. Log-probabilities
 * agree to f32 rounding.
 */
import type { RowLogprobs, SampleOutput, SampleRow, SamplingRow, TokenLogprob } from "../sampling.js";
import type { Tensor } from "../tensor.js";
import type { KernelSpec } from "./kernels.js";
import type { WebGpuBackend } from "./webgpu-backend.js";

const GREEDY_TEMPERATURE = 1e-5; // GREEDY_TEMPERATURE of cpu/sample.ts (not imported: that module is CPU-only)
const WG = 256;
/** Words of a row's settings in the upload. */
const INFO = 16;
/** Words of a processor entry: token (bit 31: min_tokens ban), bias, repetition penalty, subtrahend. */
const ENTRY = 4;

interface Buffers {
  inp: Tensor | null;
  out: Tensor | null;
  work: Tensor | null;
}

export class WebGpuSampler {
  private bufs: Buffers = { inp: null, out: null, work: null };

  constructor(private readonly backend: WebGpuBackend) {}

  async sample(logits: Tensor, rows: readonly SampleRow[]): Promise<SampleOutput> {
    const R = rows.length;
    if (R === 0) return { tokens: new Int32Array(0), logprobs: [] };
    const V = logits.shape[1]!;
    const rowBytes = logits.dtype === "f32" ? 4 : 2;
    const inPlace = logits.dtype === "f32";
    const limits = this.backend.ctx.limits;
    const maxBind = limits.maxStorageBufferBindingSize - limits.minStorageBufferOffsetAlignment;
    const workCap = Math.floor(maxBind / (V * 4));
    if (workCap < 1) throw new RangeError(`webgpu sample: a work row of ${V} f32 logits exceeds the adapter's storage binding size`);
    const logitsCap = Math.max(1, Math.floor(maxBind / (logits.rowStride * rowBytes)));
    const words = Math.ceil(V / 32);

    // Per-row layout first (sizes), then one upload.
    let entryWords = 0;
    let maskWords = 0;
    let outWords = R;
    const lists: Map<number, Entry>[] = [];
    const lpOff = new Int32Array(R).fill(-1);
    const ntop = new Int32Array(R);
    for (let r = 0; r < R; r++) {
      const { row, mask } = rows[r]!;
      const list = processorEntries(row, V);
      lists.push(list);
      entryWords += list.size * ENTRY;
      if (mask) {
        if (mask.length < words) throw new RangeError(`allowed-token mask has ${mask.length} words; a vocabulary of ${V} needs ${words}`);
        maskWords += words;
      }
      const n = row.params.logprobs;
      if (n !== null) {
        lpOff[r] = outWords;
        ntop[r] = Math.max(0, Math.min(n, V));
        outWords += 1 + 2 * ntop[r]!;
      }
    }
    const totalWords = R * INFO + entryWords + maskWords;
    const inp = this.ensure("inp", totalWords, "sampling inputs");
    const out = this.ensure("out", outWords, "sampling outputs");
    const host = new ArrayBuffer(totalWords * 4);
    const u = new Uint32Array(host);
    const f = new Float32Array(host);
    const i32 = new Int32Array(host);
    let ew = R * INFO;
    let mw = ew + entryWords;

    // Dispatch groups: rows whose work rows and logits window fit one binding each.
    const groups: { row0: number; n: number; work: number }[] = [];
    let g = { row0: 0, n: 0, work: 0 };
    for (let r = 0; r < R; r++) {
      const { row, mask } = rows[r]!;
      const p = row.params;
      const modified = mask !== undefined || lists[r]!.size > 0;
      const needsWork = modified && (!inPlace || p.logprobs !== null);
      if (g.n === logitsCap || (needsWork && g.work === workCap)) {
        groups.push(g);
        g = { row0: r, n: 0, work: 0 };
      }
      const b = r * INFO;
      const greedy = p.temperature < GREEDY_TEMPERATURE;
      u[b] = (greedy ? 1 : 0) | (p.logprobs !== null ? 2 : 0);
      f[b + 1] = greedy ? 1 : p.temperature;
      u[b + 2] = p.topK > 0 && p.topK < V ? p.topK : 0;
      f[b + 3] = p.topP;
      f[b + 4] = p.minP;
      u[b + 5] = p.key >>> 0;
      u[b + 6] = row.numOutput >>> 0;
      i32[b + 7] = needsWork ? g.work++ : -1;
      i32[b + 8] = -1;
      if (mask) {
        i32[b + 8] = mw;
        u.set(mask.subarray(0, words), mw);
        mw += words;
      }
      u[b + 9] = ew;
      u[b + 10] = lists[r]!.size;
      for (const [t, e] of lists[r]!) {
        u[ew] = (t | (e.ban ? 0x80000000 : 0)) >>> 0;
        f[ew + 1] = e.bias;
        f[ew + 2] = e.rep;
        f[ew + 3] = e.sub;
        ew += ENTRY;
      }
      i32[b + 11] = lpOff[r]!;
      u[b + 12] = ntop[r]!;
      g.n++;
    }
    groups.push(g);
    const maxWork = Math.max(1, ...groups.map((x) => x.work));
    const work = this.ensure("work", maxWork * V, "sampling work rows", "f32");

    this.backend.writeBytes(view(inp, totalWords), new Uint8Array(host));
    for (const grp of groups) {
      this.backend.kernels.dispatch(
        sampleSpec(logits.rows(grp.row0, grp.n), work, view(inp, totalWords), view(out, outWords), V, grp.row0, inPlace),
      );
    }
    const raw = await this.backend.readRaw(out.storage, 0, outWords * 4);
    const ob = raw.bytes.buffer.slice(raw.bytes.byteOffset, raw.bytes.byteOffset + outWords * 4);
    const ot = new Int32Array(ob);
    const of = new Float32Array(ob);
    const tokens = Int32Array.from(ot.subarray(0, R));
    const logprobs: (RowLogprobs | null)[] = new Array<RowLogprobs | null>(R).fill(null);
    for (let r = 0; r < R; r++) {
      const o = lpOff[r]!;
      if (o < 0) continue;
      const lp: RowLogprobs = { logprob: of[o]! };
      if (rows[r]!.row.params.logprobs! > 0) {
        const top: TokenLogprob[] = [];
        for (let j = 0; j < ntop[r]!; j++) top.push({ token: ot[o + 1 + 2 * j]!, logprob: of[o + 2 + 2 * j]! });
        lp.top = top;
      }
      logprobs[r] = lp;
    }
    return { tokens, logprobs };
  }

  /** A reused buffer of at least `n` elements (grown by half again when short). */
  private ensure(name: keyof Buffers, n: number, label: string, dtype: "i32" | "f32" = "i32"): Tensor {
    const cur = this.bufs[name];
    if (cur && cur.numel >= n) return cur;
    if (cur) this.backend.free(cur.storage);
    const t = this.backend.alloc([Math.max(64, Math.ceil(n * 1.5))], dtype, "workspace", label);
    this.bufs[name] = t;
    return t;
  }

  dispose(): void {
    for (const k of ["inp", "out", "work"] as const) {
      const t = this.bufs[k];
      if (t) this.backend.free(t.storage);
      this.bufs[k] = null;
    }
  }
}

function view(t: Tensor, n: number): Tensor {
  return t.numel === n ? t : t.view([t.numel]).rows(0, n);
}

interface Entry {
  bias: number;
  ban: boolean;
  rep: number;
  sub: number;
}

/** A row's processors per touched token (ids ≥ V skipped, as the CPU skips them). */
function processorEntries(row: SamplingRow, V: number): Map<number, Entry> {
  const p = row.params;
  const m = new Map<number, Entry>();
  const at = (t: number): Entry => {
    let e = m.get(t);
    if (!e) m.set(t, (e = { bias: 0, ban: false, rep: 1, sub: 0 }));
    return e;
  };
  // A token listed twice in logit_bias gets the sum (the CPU adds twice; equal up to rounding).
  for (const [id, bias] of p.logitBias) if (id >= 0 && id < V) at(id).bias += bias;
  if (row.numOutput < p.minTokens) for (const id of p.minTokensBanned) if (id >= 0 && id < V) at(id).ban = true;
  if (row.seen) for (const t of row.seen) if (t < V) at(t).rep = p.repetitionPenalty;
  if (p.frequencyPenalty !== 0 || p.presencePenalty !== 0) {
    for (const [t, count] of row.counts) if (t < V) at(t).sub = p.frequencyPenalty * count + p.presencePenalty;
  }
  return m;
}

/**
 * The kernel over `n` rows of logits (one workgroup each). `inPlace`: f32 logits that rows without a work
 * row modify directly; otherwise every modified row has a work row and the logits are only read.
 */
function sampleSpec(logits: Tensor, work: Tensor, inp: Tensor, out: Tensor, V: number, row0: number, inPlace: boolean): KernelSpec {
  const stx = inPlace
    ? "fn stx(i: u32, v: f32) { if (useWork) { st_work(wb + i, v); } else { st_logits(rb + i, v); } }"
    : "fn stx(i: u32, v: f32) { st_work(wb + i, v); }";
  return {
    name: "sample",
    key: inPlace ? "inplace" : "copy",
    tensors: { logits: { t: logits, write: inPlace }, work: { t: work, write: true }, inp: { t: inp }, out: { t: out, write: true } },
    params: { V: ["u32", V], ls: ["u32", logits.rowStride], row0: ["u32", row0] },
    workgroupSize: WG,
    workgroups: logits.shape[0]!,
    decls: `${DECLS}\n${stx}`,
    body: BODY,
  };
}

const DECLS = /* wgsl */ `
const WG: u32 = ${WG}u;
const NONE: u32 = 0xffffffffu;
/** okey(-inf): keys at or below it are -inf or NaN. */
const KNINF: u32 = 0x007fffffu;

var<workgroup> rF: array<f32, WG>;
var<workgroup> rU: array<u32, WG>;
var<workgroup> rI: array<u32, WG>;
var<workgroup> sF: f32;
var<workgroup> sU: u32;
var<workgroup> sI: u32;
var<workgroup> pick: u32;

var<private> rb: u32;
var<private> wb: u32;
var<private> useWork: bool;

// WGSL rejects constant infinities and NaNs: their bits come from private variables, read at run time.
var<private> NINF_BITS: u32 = 0xff800000u;
var<private> NAN_BITS: u32 = 0x7fc00000u;
fn ninf() -> f32 { return bitcast<f32>(NINF_BITS); }
fn raw(i: u32) -> f32 { return ld_logits(rb + i); }
fn xv(i: u32) -> f32 { if (useWork) { return ld_work(wb + i); } return ld_logits(rb + i); }
fn inu(w: u32) -> u32 { return bitcast<u32>(ld_inp(w)); }
fn inf32(w: u32) -> f32 { return bitcast<f32>(ld_inp(w)); }

/** Order-preserving key of an f32: larger value, larger key; -0 and +0 equal; NaN 0, below every number. */
fn okey(v: f32) -> u32 {
  var b = bitcast<u32>(v);
  if ((b & 0x7fffffffu) > 0x7f800000u) { return 0u; }
  if (b == 0x80000000u) { b = 0u; }
  if ((b & 0x80000000u) != 0u) { return ~b; }
  return b | 0x80000000u;
}
fn unkey(k: u32) -> f32 {
  if ((k & 0x80000000u) != 0u) { return bitcast<f32>(k & 0x7fffffffu); }
  return bitcast<f32>(~k);
}

// Reductions and scans. Each is called in uniform control flow and returns a uniform value.
fn sumF(lid: u32, v: f32) -> f32 {
  rF[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { rF[lid] = rF[lid] + rF[lid + s]; }
    workgroupBarrier();
  }
  if (lid == 0u) { sF = rF[0]; }
  return workgroupUniformLoad(&sF);
}
fn sumU(lid: u32, v: u32) -> u32 {
  rU[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { rU[lid] = rU[lid] + rU[lid + s]; }
    workgroupBarrier();
  }
  if (lid == 0u) { sU = rU[0]; }
  return workgroupUniformLoad(&sU);
}
fn maxU(lid: u32, v: u32) -> u32 {
  rU[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { rU[lid] = max(rU[lid], rU[lid + s]); }
    workgroupBarrier();
  }
  if (lid == 0u) { sU = rU[0]; }
  return workgroupUniformLoad(&sU);
}
/** The best (key desc, index asc) of the invocations' candidates: its index (NONE if none); its key in sU. */
fn argmaxU(lid: u32, k: u32, i: u32) -> u32 {
  rU[lid] = k;
  rI[lid] = i;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      let k2 = rU[lid + s];
      let i2 = rI[lid + s];
      if (k2 > rU[lid] || (k2 == rU[lid] && i2 < rI[lid])) { rU[lid] = k2; rI[lid] = i2; }
    }
    workgroupBarrier();
  }
  if (lid == 0u) { sU = rU[0]; sI = rI[0]; }
  workgroupBarrier();
  return workgroupUniformLoad(&sI);
}
/** Exclusive prefix of the invocations' counts, summed in order by one invocation (deterministic); the total in sU. */
fn scanU(lid: u32, v: u32) -> u32 {
  rU[lid] = v;
  workgroupBarrier();
  if (lid == 0u) {
    var a = 0u;
    for (var j = 0u; j < WG; j++) { let t = rU[j]; rU[j] = a; a = a + t; }
    sU = a;
  }
  workgroupBarrier();
  return rU[lid];
}
fn scanF(lid: u32, v: f32) -> f32 {
  rF[lid] = v;
  workgroupBarrier();
  if (lid == 0u) {
    var a = 0.0;
    for (var j = 0u; j < WG; j++) { let t = rF[j]; rF[j] = a; a = a + t; }
    sF = a;
  }
  workgroupBarrier();
  return rF[lid];
}

fn mulhi(a: u32, b: u32) -> u32 {
  let al = a & 0xffffu;
  let ah = a >> 16u;
  let bl = b & 0xffffu;
  let bh = b >> 16u;
  let ll = al * bl;
  let hl = ah * bl;
  let lh = al * bh;
  let mid = (ll >> 16u) + (hl & 0xffffu) + (lh & 0xffffu);
  return ah * bh + (hl >> 16u) + (lh >> 16u) + (mid >> 16u);
}
/** Philox2x32-10, as philox2x32() of rng.ts. */
fn philox(key: u32, c0: u32, c1: u32) -> vec2<u32> {
  var x0 = c0;
  var x1 = c1;
  var k = key;
  for (var r = 0u; r < 10u; r++) {
    let hi = mulhi(0xd256d193u, x0);
    let lo = 0xd256d193u * x0;
    x0 = hi ^ k ^ x1;
    x1 = lo;
    k = k + 0x9e3779b9u;
  }
  return vec2<u32>(x0, x1);
}
`;

/** Index-order selection: the invocation whose chunk holds the \`need\`-th (0-based) token where PRED holds writes its index to \`pick\`. */
function nthInChunks(pred: string, need: string): string {
  return `{
      var cnt = 0u;
      for (var i = c0; i < c1; i++) { let v = xv(i); let kk = okey(v); if (${pred}) { cnt++; } }
      if (lid == 0u) { pick = NONE; }
      let s0 = scanU(lid, cnt);
      if (${need} >= s0 && ${need} < s0 + cnt) {
        var j = s0;
        for (var i = c0; i < c1; i++) {
          let v = xv(i);
          let kk = okey(v);
          if (${pred}) { if (j == ${need}) { pick = i; break; } j++; }
        }
      }
    }`;
}

const IN_K = "(!topk || kk > tK || (kk == tK && i <= iK))";
const CAND = "kk >= kf";

const BODY = /* wgsl */ `
  let row = p.row0 + wid;
  let ib = row * ${INFO}u;
  let flags = inu(ib);
  let V = p.V;
  rb = wid * p.ls;
  let wr = ld_inp(ib + 7u);
  useWork = wr >= 0;
  wb = u32(max(wr, 0)) * V;
  let mw = ld_inp(ib + 8u);
  let C = (V + WG - 1u) / WG;
  let c0 = min(V, lid * C);
  let c1 = min(V, c0 + C);

  // 1. Log-probabilities of the raw row: logsumexp and the top-n (value desc, index asc).
  var lse = 0.0;
  let lpo = u32(max(ld_inp(ib + 11u), 0));
  if ((flags & 2u) != 0u) {
    var bk = 0u;
    for (var i = lid; i < V; i += WG) { bk = max(bk, okey(raw(i))); }
    let mk = maxU(lid, bk);
    let mr = unkey(mk);
    var acc = 0.0;
    if (mk > KNINF) { for (var i = lid; i < V; i += WG) { acc += exp(raw(i) - mr); } }
    let se = sumF(lid, acc);
    lse = select(ninf(), mr + log(se), mk > KNINF);
    let n = inu(ib + 12u);
    var pk = NONE;
    var pi = 0u;
    for (var j = 0u; j < n; j++) {
      var ck = 0u;
      var ci = NONE;
      for (var i = lid; i < V; i += WG) {
        let k = okey(raw(i));
        if (k > ck && (k < pk || (k == pk && i > pi))) { ck = k; ci = i; }
      }
      let bi = argmaxU(lid, ck, ci);
      pk = workgroupUniformLoad(&sU);
      pi = bi;
      if (lid == 0u) {
        let ok = bi != NONE;
        st_out(lpo + 1u + 2u * j, select(-1, i32(bi), ok));
        st_out(lpo + 2u + 2u * j, bitcast<i32>(select(bitcast<f32>(NAN_BITS), raw(min(bi, V - 1u)) - lse, ok)));
      }
      if (bi == NONE) { pk = 0u; }
    }
  }

  // 2. The mask, and the copy into the row's work row.
  if (useWork || mw >= 0) {
    for (var i = lid; i < V; i += WG) {
      let masked = mw >= 0 && ((inu(u32(mw) + (i >> 5u)) >> (i & 31u)) & 1u) == 0u;
      if (masked) { stx(i, ninf()); } else if (useWork) { stx(i, raw(i)); }
    }
  }
  storageBarrier();

  // 3. Processor entries (one per touched token): bias, min_tokens ban, repetition, frequency + presence.
  let e0 = inu(ib + 9u);
  let ne = inu(ib + 10u);
  for (var e = lid; e < ne; e += WG) {
    let eb = e0 + e * ${ENTRY}u;
    let tw = inu(eb);
    let t = tw & 0x7fffffffu;
    if (mw >= 0 && ((inu(u32(mw) + (t >> 5u)) >> (t & 31u)) & 1u) == 0u) { continue; }
    var v = xv(t);
    let bias = inf32(eb + 1u);
    let rep = inf32(eb + 2u);
    let sub = inf32(eb + 3u);
    if (bias != 0.0) { v = v + bias; }
    if ((tw >> 31u) != 0u) { v = ninf(); }
    if (rep != 1.0) { v = select(v * rep, v / rep, v > 0.0); }
    if (sub != 0.0) { v = v - sub; }
    stx(t, v);
  }
  storageBarrier();

  // 4. The token.
  var tok = 0u;
  if ((flags & 1u) != 0u) {
    var bk = 0u;
    var bi = NONE;
    for (var i = lid; i < V; i += WG) { let k = okey(xv(i)); if (k > bk) { bk = k; bi = i; } }
    let ai = argmaxU(lid, bk, bi);
    let ak = workgroupUniformLoad(&sU);
    tok = select(0u, ai, ak > KNINF);
  } else {
    let T = inf32(ib + 1u);
    let invT = 1.0 / T;
    var bk = 0u;
    for (var i = lid; i < V; i += WG) { bk = max(bk, okey(xv(i))); }
    let mk = maxU(lid, bk);
    if (mk > KNINF) {
      let m = unkey(mk);
      let kf = okey(m - 40.0 * T);
      // Top-k: the largest key tK with at least k candidates at or above it; ties at tK by lower index.
      let K = inu(ib + 2u);
      var topk = false;
      var tK = 0u;
      var iK = 0u;
      if (K > 0u) {
        var c = 0u;
        for (var i = lid; i < V; i += WG) { if (okey(xv(i)) >= kf) { c++; } }
        let nc = sumU(lid, c);
        if (nc > K) {
          topk = true;
          var lo = kf;
          var hi = mk;
          while (lo < hi) {
            let mid = lo + (hi - lo + 1u) / 2u;
            var c2 = 0u;
            for (var i = lid; i < V; i += WG) { if (okey(xv(i)) >= mid) { c2++; } }
            if (sumU(lid, c2) >= K) { lo = mid; } else { hi = mid - 1u; }
          }
          tK = lo;
          var c3 = 0u;
          if (tK < 0xffffffffu) { for (var i = lid; i < V; i += WG) { if (okey(xv(i)) > tK) { c3++; } } }
          let above = sumU(lid, c3);
          let needK = K - above - 1u;
          ${nthInChunks("kk == tK", "needK")}
          iK = workgroupUniformLoad(&pick);
        }
      }
      // Top-p: the smallest key tP whose mass above (within top-k) is under p · total; ties at tP best first by index.
      let P = inf32(ib + 3u);
      var topp = false;
      var tP = 0u;
      var iP = 0u;
      if (P < 1.0) {
        topp = true;
        var a = 0.0;
        for (var i = lid; i < V; i += WG) { let v = xv(i); let kk = okey(v); if (${CAND} && ${IN_K}) { a += exp((v - m) * invT); } }
        let goal = P * sumF(lid, a);
        var lo = kf;
        var hi = mk;
        while (lo < hi) {
          let mid = lo + (hi - lo) / 2u;
          var a2 = 0.0;
          for (var i = lid; i < V; i += WG) { let v = xv(i); let kk = okey(v); if (kk > mid && ${IN_K}) { a2 += exp((v - m) * invT); } }
          if (sumF(lid, a2) < goal) { hi = mid; } else { lo = mid + 1u; }
        }
        tP = lo;
        var a3 = 0.0;
        var c4 = 0u;
        for (var i = lid; i < V; i += WG) {
          let v = xv(i);
          let kk = okey(v);
          if (${IN_K}) {
            if (kk > tP) { a3 += exp((v - m) * invT); } else if (kk == tP) { c4++; }
          }
        }
        let fP = sumF(lid, a3);
        let ties = sumU(lid, c4);
        let wt = exp((unkey(tP) - m) * invT);
        // Tie j (0-based, index order) is kept iff fP + j · wt < goal.
        let keepN = u32(clamp(ceil((goal - fP) / wt), 1.0, f32(max(ties, 1u))));
        let needP = keepN - 1u;
        ${nthInChunks(`kk == tP && ${IN_K}`, "needP")}
        iP = workgroupUniformLoad(&pick);
      }
      // Min-p, then the draw: the first kept token (index order) whose running weight exceeds u · total.
      let minP = inf32(ib + 4u);
      var s = 0.0;
      var last = 0u;
      for (var i = c0; i < c1; i++) {
        let v = xv(i);
        let kk = okey(v);
        if (${CAND} && ${IN_K} && (!topp || kk > tP || (kk == tP && i <= iP))) {
          let w = exp((v - m) * invT);
          if (w >= minP) { s += w; last = i + 1u; }
        }
      }
      let lastAll = maxU(lid, last);
      if (lid == 0u) { pick = NONE; }
      let S = scanF(lid, s);
      let total = workgroupUniformLoad(&sF);
      let rnd = philox(inu(ib + 5u), inu(ib + 6u), 0u);
      let goalU = f32(rnd.x >> 8u) * (1.0 / 16777216.0) * total;
      if (S <= goalU && goalU < S + s) {
        var acc = S;
        var got = last - 1u;
        for (var i = c0; i < c1; i++) {
          let v = xv(i);
          let kk = okey(v);
          if (${CAND} && ${IN_K} && (!topp || kk > tP || (kk == tP && i <= iP))) {
            let w = exp((v - m) * invT);
            if (w >= minP) {
              acc += w;
              if (acc > goalU) { got = i; break; }
            }
          }
        }
        pick = got;
      }
      let pk = workgroupUniformLoad(&pick);
      tok = select(pk, select(0u, lastAll - 1u, lastAll > 0u), pk == NONE);
    }
  }

  // 5. Outputs: the token, and its log-probability under the raw logits.
  if (lid == 0u) {
    st_out(row, i32(tok));
    if ((flags & 2u) != 0u) { st_out(lpo, bitcast<i32>(raw(tok) - lse)); }
  }`;

/**
 * ggml's 256-element "k-quant" super-block formats: Q4_K, Q5_K, Q6_K and Q8_K.
 *
 * Byte layouts (ggml-common.h), halves little-endian:
 *   Q4_K  d:f16, dmin:f16, scales:u8[12], qs:u8[128]                 144 bytes
 *   Q5_K  d:f16, dmin:f16, scales:u8[12], qh:u8[32], qs:u8[128]      176 bytes
 *   Q6_K  ql:u8[128], qh:u8[64], scales:i8[16], d:f16                210 bytes
 *   Q8_K  d:f32, qs:i8[256], bsums:i16[16]                           292 bytes
 *
 * Q4_K/Q5_K: eight sub-blocks of 32, each x ≈ d·sc·q − dmin·m with 6-bit sc and m packed into the 12
 * scale bytes (sub-blocks 0–3 in the low 6 bits of bytes 0–3 / 4–7; sub-blocks 4–7 split into a low
 * nibble in bytes 8–11 and two high bits in the top of bytes 0–7). Q6_K: sixteen sub-blocks of 16 with
 * int8 scales, x = d·sc·(q − 32).
 *
 * The quantizers are ggml's quantize_row_*_ref (make_qkx2_quants for Q4_K/Q5_K, make_qx_quants for Q6_K),
 * every float operation rounded to f32 in C's order so the search takes the same branches.
 */
import { type BlockCodec, checkSpan } from "./block-codec.js";
import { nearestInt, readF16, readF32, storeF16, writeF32 } from "./ggml-scalar.js";

const fround = Math.fround;
/** ggml's GROUP_MAX_EPS (1e-15f): below this a group counts as all zero. */
const GROUP_MAX_EPS = fround(1e-15);
const TENTH = fround(0.1);

// Scratch shared by the quantizers (single-threaded, never re-entered).
const L = new Uint8Array(256);
const laux = new Uint8Array(32);
const weights = new Float32Array(32);
const subScales = new Float32Array(16);
const subMins = new Float32Array(8);

/**
 * ggml's make_qkx2_quants with use_mad = false: fits x ≈ scale·l − min over l ∈ [0, nmax], trying
 * nstep+1 stretched grids and keeping the weighted-least-squares fit with the lowest weighted error.
 * Writes levels to L[lo..], the (non-negative) min to subMins[mi], returns the scale.
 */
function makeQkx2Quants(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  lo: number,
  rmin: number,
  rdelta: number,
  nstep: number,
  mi: number,
): number {
  let min = x[xo]!;
  let max = min;
  let sumW = weights[0]!;
  let sumX = fround(sumW * min);
  for (let i = 1; i < n; i++) {
    const xi = x[xo + i]!;
    if (xi < min) min = xi;
    if (xi > max) max = xi;
    const w = weights[i]!;
    sumW = fround(sumW + w);
    sumX = fround(sumX + fround(w * xi));
  }
  if (min > 0) min = 0;
  if (max === min) {
    L.fill(0, lo, lo + n);
    subMins[mi] = -min;
    return 0;
  }
  let iscale = fround(nmax / fround(max - min));
  let scale = fround(1 / iscale);
  let bestError = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!;
    const l = Math.max(0, Math.min(nmax, nearestInt(fround(iscale * fround(xi - min)))));
    L[lo + i] = l;
    const diff = fround(fround(fround(scale * l) + min) - xi);
    bestError = fround(bestError + fround(weights[i]! * fround(diff * diff)));
  }
  for (let is = 0; is <= nstep; is++) {
    // min may have moved to an accepted fit's min, and ggml keeps using it for the grid.
    iscale = fround(fround(fround(rmin + fround(rdelta * is)) + nmax) / fround(max - min));
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i]!;
      const l = Math.max(0, Math.min(nmax, nearestInt(fround(iscale * fround(xi - min)))));
      laux[i] = l;
      const wl = fround(weights[i]! * l);
      sumL = fround(sumL + wl);
      sumL2 = fround(sumL2 + fround(wl * l));
      sumXL = fround(sumXL + fround(wl * xi));
    }
    const D = fround(fround(sumW * sumL2) - fround(sumL * sumL));
    if (D > 0) {
      let thisScale = fround(fround(fround(sumW * sumXL) - fround(sumX * sumL)) / D);
      let thisMin = fround(fround(fround(sumL2 * sumX) - fround(sumL * sumXL)) / D);
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = fround(sumXL / sumL2);
      }
      let curError = 0;
      for (let i = 0; i < n; i++) {
        const diff = fround(fround(fround(thisScale * laux[i]!) + thisMin) - x[xo + i]!);
        curError = fround(curError + fround(weights[i]! * fround(diff * diff)));
      }
      if (curError < bestError) {
        L.set(laux.subarray(0, n), lo);
        bestError = curError;
        scale = thisScale;
        min = thisMin;
      }
    }
  }
  subMins[mi] = -min;
  return scale;
}

/**
 * The shared body of Q4_K and Q5_K quantization: per-sub-block fits, 6-bit scale/min packing, the
 * block's d/dmin halves, then levels re-derived from the quantized scales. Leaves levels in L.
 */
function quantizeScaleMinBlock(x: Float32Array, xo: number, dst: Uint8Array, o: number, nmax: number, rmin: number, nstep: number): void {
  let maxScale = 0;
  let maxMin = 0;
  for (let j = 0; j < 8; j++) {
    const xj = xo + 32 * j;
    let sumX2 = 0;
    for (let l = 0; l < 32; l++) {
      const v = x[xj + l]!;
      sumX2 = fround(sumX2 + fround(v * v));
    }
    // Weight each value by the group's RMS plus its own magnitude, as the reference does.
    const avX = fround(Math.sqrt(fround(sumX2 / 32)));
    for (let l = 0; l < 32; l++) weights[l] = avX + Math.abs(x[xj + l]!);
    const scale = makeQkx2Quants(32, nmax, x, xj, 32 * j, rmin, TENTH, nstep, j);
    subScales[j] = scale;
    if (scale > maxScale) maxScale = scale;
    const min = subMins[j]!;
    if (min > maxMin) maxMin = min;
  }

  const invScale = maxScale > 0 ? fround(63 / maxScale) : 0;
  const invMin = maxMin > 0 ? fround(63 / maxMin) : 0;
  const s = o + 4;
  for (let j = 0; j < 8; j++) {
    // ggml stores nearest_int into a uint8_t before clamping, hence the & 0xff.
    const ls = Math.min(63, nearestInt(fround(invScale * subScales[j]!)) & 0xff);
    const lm = Math.min(63, nearestInt(fround(invMin * subMins[j]!)) & 0xff);
    if (j < 4) {
      dst[s + j] = ls;
      dst[s + j + 4] = lm;
    } else {
      dst[s + j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
      dst[s + j - 4] = dst[s + j - 4]! | ((ls >> 4) << 6);
      dst[s + j] = dst[s + j]! | ((lm >> 4) << 6);
    }
  }
  const d = storeF16(dst, o, fround(maxScale / 63));
  const dmin = storeF16(dst, o + 2, fround(maxMin / 63));

  for (let j = 0; j < 8; j++) {
    const sc = scaleK4(dst, s, j);
    const m = minK4(dst, s, j);
    const dj = fround(d * sc);
    if (dj === 0) continue; // keep the levels the fit chose
    const dm = fround(dmin * m);
    const xj = xo + 32 * j;
    for (let ii = 0; ii < 32; ii++) {
      L[32 * j + ii] = Math.max(0, Math.min(nmax, nearestInt(fround(fround(x[xj + ii]! + dm) / dj))));
    }
  }
}

/** get_scale_min_k4's scale half: the 6-bit scale of sub-block j from the 12 packed bytes at s. */
function scaleK4(q: Uint8Array, s: number, j: number): number {
  return j < 4 ? q[s + j]! & 63 : (q[s + j + 4]! & 0xf) | ((q[s + j - 4]! >> 6) << 4);
}

/** get_scale_min_k4's min half. */
function minK4(q: Uint8Array, s: number, j: number): number {
  return j < 4 ? q[s + j + 4]! & 63 : (q[s + j + 4]! >> 4) | ((q[s + j]! >> 6) << 4);
}

export const Q4_K: BlockCodec = {
  name: "Q4_K",
  ggmlType: 12,
  blockSize: 256,
  blockBytes: 144,
  dequantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, dst, dstOffset, src, srcOffset);
    for (let b = 0; b < nb; b++) {
      const o = srcOffset + b * 144;
      const d = readF16(src, o);
      const dmin = readF16(src, o + 2);
      let q = o + 16;
      let y = dstOffset + b * 256;
      for (let is = 0; is < 8; is += 2) {
        const d1 = fround(d * scaleK4(src, o + 4, is));
        const m1 = fround(dmin * minK4(src, o + 4, is));
        const d2 = fround(d * scaleK4(src, o + 4, is + 1));
        const m2 = fround(dmin * minK4(src, o + 4, is + 1));
        for (let l = 0; l < 32; l++) dst[y + l] = fround(d1 * (src[q + l]! & 0xf)) - m1;
        for (let l = 0; l < 32; l++) dst[y + 32 + l] = fround(d2 * (src[q + l]! >> 4)) - m2;
        q += 32;
        y += 64;
      }
    }
  },
  quantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, src, srcOffset, dst, dstOffset);
    for (let b = 0; b < nb; b++) {
      const o = dstOffset + b * 144;
      quantizeScaleMinBlock(src, srcOffset + b * 256, dst, o, 15, -1, 20);
      for (let j = 0; j < 256; j += 64) {
        const q = o + 16 + j / 2;
        for (let l = 0; l < 32; l++) dst[q + l] = L[j + l]! | (L[j + l + 32]! << 4);
      }
    }
  },
};

export const Q5_K: BlockCodec = {
  name: "Q5_K",
  ggmlType: 13,
  blockSize: 256,
  blockBytes: 176,
  dequantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, dst, dstOffset, src, srcOffset);
    for (let b = 0; b < nb; b++) {
      const o = srcOffset + b * 176;
      const d = readF16(src, o);
      const dmin = readF16(src, o + 2);
      const qh = o + 16;
      let ql = o + 48;
      let y = dstOffset + b * 256;
      let u1 = 1;
      let u2 = 2;
      for (let is = 0; is < 8; is += 2) {
        const d1 = fround(d * scaleK4(src, o + 4, is));
        const m1 = fround(dmin * minK4(src, o + 4, is));
        const d2 = fround(d * scaleK4(src, o + 4, is + 1));
        const m2 = fround(dmin * minK4(src, o + 4, is + 1));
        for (let l = 0; l < 32; l++) dst[y + l] = fround(d1 * ((src[ql + l]! & 0xf) + (src[qh + l]! & u1 ? 16 : 0))) - m1;
        for (let l = 0; l < 32; l++) dst[y + 32 + l] = fround(d2 * ((src[ql + l]! >> 4) + (src[qh + l]! & u2 ? 16 : 0))) - m2;
        ql += 32;
        y += 64;
        u1 <<= 2;
        u2 <<= 2;
      }
    }
  },
  quantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, src, srcOffset, dst, dstOffset);
    for (let b = 0; b < nb; b++) {
      const o = dstOffset + b * 176;
      quantizeScaleMinBlock(src, srcOffset + b * 256, dst, o, 31, -0.5, 15);
      const qh = o + 16;
      dst.fill(0, qh, qh + 32);
      let m1 = 1;
      let m2 = 2;
      for (let j = 0; j < 256; j += 64) {
        const ql = o + 48 + j / 2;
        for (let l = 0; l < 32; l++) {
          let l1 = L[j + l]!;
          if (l1 > 15) {
            l1 -= 16;
            dst[qh + l] = dst[qh + l]! | m1;
          }
          let l2 = L[j + l + 32]!;
          if (l2 > 15) {
            l2 -= 16;
            dst[qh + l] = dst[qh + l]! | m2;
          }
          dst[ql + l] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
      }
    }
  },
};

/**
 * ggml's make_qx_quants with rmse_type = 1 and no importance weights: symmetric levels in
 * [-nmax, nmax-1] (stored offset by nmax), the scale refined by x²-weighted least squares over 18
 * perturbed grids. Writes levels to L[lo..], returns the scale (negative when the largest-magnitude
 * value is positive, as in ggml).
 */
function makeQxQuants(n: number, nmax: number, x: Float32Array, xo: number, lo: number): number {
  let max = 0;
  let amax = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!;
    const ax = Math.abs(xi);
    if (ax > amax) {
      amax = ax;
      max = xi;
    }
  }
  if (amax < GROUP_MAX_EPS) {
    L.fill(0, lo, lo + n);
    return 0;
  }
  let iscale = fround(-nmax / max);
  let sumLX = 0;
  let sumL2 = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!;
    const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(fround(iscale * xi))));
    L[lo + i] = l + nmax;
    const w = fround(xi * xi);
    sumLX = fround(sumLX + fround(fround(w * xi) * l));
    sumL2 = fround(sumL2 + fround(fround(w * l) * l));
  }
  let scale = sumL2 !== 0 ? fround(sumLX / sumL2) : 0;
  let best = fround(scale * sumLX);
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    iscale = fround(-fround(nmax + fround(TENTH * is)) / max);
    sumLX = 0;
    sumL2 = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i]!;
      const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(fround(iscale * xi))));
      const w = fround(xi * xi);
      sumLX = fround(sumLX + fround(fround(w * xi) * l));
      sumL2 = fround(sumL2 + fround(fround(w * l) * l));
    }
    if (sumL2 > 0 && fround(sumLX * sumLX) > fround(best * sumL2)) {
      for (let i = 0; i < n; i++) {
        L[lo + i] = nmax + Math.max(-nmax, Math.min(nmax - 1, nearestInt(fround(iscale * x[xo + i]!))));
      }
      scale = fround(sumLX / sumL2);
      best = fround(scale * sumLX);
    }
  }
  return scale;
}

const q6Scales = new Float32Array(16);

export const Q6_K: BlockCodec = {
  name: "Q6_K",
  ggmlType: 14,
  blockSize: 256,
  blockBytes: 210,
  dequantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, dst, dstOffset, src, srcOffset);
    for (let b = 0; b < nb; b++) {
      const o = srcOffset + b * 210;
      const d = readF16(src, o + 208);
      for (let i = 0; i < 16; i++) q6Scales[i] = fround(d * ((src[o + 192 + i]! << 24) >> 24));
      for (let h = 0; h < 2; h++) {
        const ql = o + 64 * h;
        const qh = o + 128 + 32 * h;
        const y = dstOffset + b * 256 + 128 * h;
        for (let l = 0; l < 32; l++) {
          const is = 8 * h + (l >> 4);
          const lo = src[ql + l]!;
          const hi = src[ql + l + 32]!;
          const top = src[qh + l]!;
          dst[y + l] = q6Scales[is]! * (((lo & 0xf) | ((top & 3) << 4)) - 32);
          dst[y + l + 32] = q6Scales[is + 2]! * (((hi & 0xf) | (((top >> 2) & 3) << 4)) - 32);
          dst[y + l + 64] = q6Scales[is + 4]! * (((lo >> 4) | (((top >> 4) & 3) << 4)) - 32);
          dst[y + l + 96] = q6Scales[is + 6]! * (((hi >> 4) | (((top >> 6) & 3) << 4)) - 32);
        }
      }
    }
  },
  quantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, src, srcOffset, dst, dstOffset);
    for (let b = 0; b < nb; b++) {
      const x = srcOffset + b * 256;
      const o = dstOffset + b * 210;
      let maxScale = 0;
      let maxAbsScale = 0;
      for (let ib = 0; ib < 16; ib++) {
        const scale = makeQxQuants(16, 32, src, x + 16 * ib, 16 * ib);
        subScales[ib] = scale;
        const abs = Math.abs(scale);
        if (abs > maxAbsScale) {
          maxAbsScale = abs;
          maxScale = scale;
        }
      }
      if (maxAbsScale < GROUP_MAX_EPS) {
        dst.fill(0, o, o + 210);
        continue;
      }
      const iscale = fround(-128 / maxScale);
      const d = storeF16(dst, o + 208, fround(1 / iscale));
      for (let ib = 0; ib < 16; ib++) dst[o + 192 + ib] = Math.min(127, nearestInt(fround(iscale * subScales[ib]!))) & 0xff;
      for (let j = 0; j < 16; j++) {
        const dj = fround(d * ((dst[o + 192 + j]! << 24) >> 24));
        if (dj === 0) continue; // keep the levels the fit chose
        for (let ii = 0; ii < 16; ii++) {
          L[16 * j + ii] = 32 + Math.max(-32, Math.min(31, nearestInt(fround(src[x + 16 * j + ii]! / dj))));
        }
      }
      for (let h = 0; h < 2; h++) {
        const j = 128 * h;
        const ql = o + 64 * h;
        const qh = o + 128 + 32 * h;
        for (let l = 0; l < 32; l++) {
          const a = L[j + l]!;
          const bb = L[j + l + 32]!;
          const c = L[j + l + 64]!;
          const e = L[j + l + 96]!;
          dst[ql + l] = (a & 0xf) | ((c & 0xf) << 4);
          dst[ql + l + 32] = (bb & 0xf) | ((e & 0xf) << 4);
          dst[qh + l] = (a >> 4) | ((bb >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
      }
    }
  },
};

export const Q8_K: BlockCodec = {
  name: "Q8_K",
  ggmlType: 15,
  blockSize: 256,
  blockBytes: 292,
  dequantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, dst, dstOffset, src, srcOffset);
    for (let b = 0; b < nb; b++) {
      const o = srcOffset + b * 292;
      const y = dstOffset + b * 256;
      const d = readF32(src, o);
      for (let j = 0; j < 256; j++) dst[y + j] = d * ((src[o + 4 + j]! << 24) >> 24);
    }
  },
  quantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, src, srcOffset, dst, dstOffset);
    for (let b = 0; b < nb; b++) {
      const x = srcOffset + b * 256;
      const o = dstOffset + b * 292;
      let max = 0;
      let amax = 0;
      for (let j = 0; j < 256; j++) {
        const v = src[x + j]!;
        const a = Math.abs(v);
        if (a > amax) {
          amax = a;
          max = v;
        }
      }
      if (amax === 0) {
        // ggml leaves bsums untouched here; zero is their correct value.
        dst.fill(0, o, o + 292);
        continue;
      }
      // ggml divides by 127 rather than 128 so no level reaches -128 (its AVX dot products rely on that).
      const iscale = fround(-127 / max);
      for (let j = 0; j < 256; j++) dst[o + 4 + j] = Math.min(127, nearestInt(fround(iscale * src[x + j]!))) & 0xff;
      for (let g = 0; g < 16; g++) {
        let sum = 0;
        for (let i = 0; i < 16; i++) sum += (dst[o + 4 + 16 * g + i]! << 24) >> 24;
        dst[o + 260 + 2 * g] = sum & 0xff;
        dst[o + 261 + 2 * g] = (sum >> 8) & 0xff;
      }
      writeF32(dst, o, fround(1 / iscale));
    }
  },
};

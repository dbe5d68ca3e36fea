/**
 * ggml's 32-element block formats: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and MXFP4.
 *
 * Byte layouts (ggml-common.h), halves little-endian:
 *   Q8_0  d:f16, qs:i8[32]                                   34 bytes
 *   Q4_0  d:f16, qs:u8[16]                                   18 bytes
 *   Q4_1  d:f16, m:f16, qs:u8[16]                            20 bytes
 *   Q5_0  d:f16, qh:u32, qs:u8[16]                           22 bytes
 *   Q5_1  d:f16, m:f16, qh:u32, qs:u8[16]                    24 bytes
 *   MXFP4 e:u8 (E8M0), qs:u8[16]                             17 bytes
 * Nibble packing: byte j holds element j in its low nibble and element j+16 in its high nibble; the
 * fifth bit of element j (Q5_*) is bit j of qh.
 *
 * The quantizers follow ggml's quantize_row_*_ref, including each one's own rounding (roundf in Q8_0,
 * truncation of x + 0.5 in the 4/5-bit ones), so encoded files match llama.cpp's byte for byte.
 */
import { type BlockCodec, checkSpan } from "./block-codec.js";
import { readF16, roundHalfAway, writeF16 } from "./ggml-scalar.js";

const fround = Math.fround;
const FLT_MAX = 3.4028234663852886e38;

export const Q8_0: BlockCodec = {
  name: "Q8_0",
  ggmlType: 8,
  blockSize: 32,
  blockBytes: 34,
  dequantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, dst, dstOffset, src, srcOffset);
    for (let b = 0; b < nb; b++) {
      const o = srcOffset + b * 34;
      const y = dstOffset + b * 32;
      const d = readF16(src, o);
      for (let j = 0; j < 32; j++) dst[y + j] = ((src[o + 2 + j]! << 24) >> 24) * d;
    }
  },
  quantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, src, srcOffset, dst, dstOffset);
    for (let b = 0; b < nb; b++) {
      const x = srcOffset + b * 32;
      const o = dstOffset + b * 34;
      let amax = 0;
      for (let j = 0; j < 32; j++) {
        const a = Math.abs(src[x + j]!);
        amax = amax > a ? amax : a;
      }
      const d = fround(amax / 127);
      const id = d !== 0 ? fround(1 / d) : 0;
      writeF16(dst, o, d);
      for (let j = 0; j < 32; j++) dst[o + 2 + j] = roundHalfAway(fround(src[x + j]! * id)) & 0xff;
    }
  },
};

/** Shared by Q4_0 and Q5_0: symmetric, the scale signed so the largest-magnitude value maps to -2^(bits-1). */
function signedMaxScale(src: Float32Array, x: number, bias: number): number {
  let amax = 0;
  let max = 0;
  for (let j = 0; j < 32; j++) {
    const v = src[x + j]!;
    const a = Math.abs(v);
    if (amax < a) {
      amax = a;
      max = v;
    }
  }
  return fround(max / -bias);
}

export const Q4_0: BlockCodec = {
  name: "Q4_0",
  ggmlType: 2,
  blockSize: 32,
  blockBytes: 18,
  dequantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, dst, dstOffset, src, srcOffset);
    for (let b = 0; b < nb; b++) {
      const o = srcOffset + b * 18;
      const y = dstOffset + b * 32;
      const d = readF16(src, o);
      for (let j = 0; j < 16; j++) {
        const q = src[o + 2 + j]!;
        dst[y + j] = ((q & 0xf) - 8) * d;
        dst[y + j + 16] = ((q >> 4) - 8) * d;
      }
    }
  },
  quantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, src, srcOffset, dst, dstOffset);
    for (let b = 0; b < nb; b++) {
      const x = srcOffset + b * 32;
      const o = dstOffset + b * 18;
      const d = signedMaxScale(src, x, 8);
      const id = d !== 0 ? fround(1 / d) : 0;
      writeF16(dst, o, d);
      for (let j = 0; j < 16; j++) {
        const q0 = Math.min(15, Math.trunc(fround(fround(src[x + j]! * id) + 8.5)));
        const q1 = Math.min(15, Math.trunc(fround(fround(src[x + j + 16]! * id) + 8.5)));
        dst[o + 2 + j] = q0 | (q1 << 4);
      }
    }
  },
};

/** Shared by Q4_1 and Q5_1: the block's min and max, as ggml scans them. */
function minMax(src: Float32Array, x: number): [number, number] {
  let min = FLT_MAX;
  let max = -FLT_MAX;
  for (let j = 0; j < 32; j++) {
    const v = src[x + j]!;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return [min, max];
}

export const Q4_1: BlockCodec = {
  name: "Q4_1",
  ggmlType: 3,
  blockSize: 32,
  blockBytes: 20,
  dequantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, dst, dstOffset, src, srcOffset);
    for (let b = 0; b < nb; b++) {
      const o = srcOffset + b * 20;
      const y = dstOffset + b * 32;
      const d = readF16(src, o);
      const m = readF16(src, o + 2);
      for (let j = 0; j < 16; j++) {
        const q = src[o + 4 + j]!;
        dst[y + j] = fround((q & 0xf) * d) + m;
        dst[y + j + 16] = fround((q >> 4) * d) + m;
      }
    }
  },
  quantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, src, srcOffset, dst, dstOffset);
    for (let b = 0; b < nb; b++) {
      const x = srcOffset + b * 32;
      const o = dstOffset + b * 20;
      const [min, max] = minMax(src, x);
      const d = fround(fround(max - min) / 15);
      const id = d !== 0 ? fround(1 / d) : 0;
      writeF16(dst, o, d);
      writeF16(dst, o + 2, min);
      for (let j = 0; j < 16; j++) {
        const q0 = Math.min(15, Math.trunc(fround(fround(fround(src[x + j]! - min) * id) + 0.5)));
        const q1 = Math.min(15, Math.trunc(fround(fround(fround(src[x + j + 16]! - min) * id) + 0.5)));
        dst[o + 4 + j] = q0 | (q1 << 4);
      }
    }
  },
};

function readU32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function writeU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = v >>> 24;
}

export const Q5_0: BlockCodec = {
  name: "Q5_0",
  ggmlType: 6,
  blockSize: 32,
  blockBytes: 22,
  dequantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, dst, dstOffset, src, srcOffset);
    for (let b = 0; b < nb; b++) {
      const o = srcOffset + b * 22;
      const y = dstOffset + b * 32;
      const d = readF16(src, o);
      const qh = readU32(src, o + 2);
      for (let j = 0; j < 16; j++) {
        const q = src[o + 6 + j]!;
        dst[y + j] = (((q & 0xf) | (((qh >>> j) << 4) & 0x10)) - 16) * d;
        dst[y + j + 16] = (((q >> 4) | ((qh >>> (j + 12)) & 0x10)) - 16) * d;
      }
    }
  },
  quantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, src, srcOffset, dst, dstOffset);
    for (let b = 0; b < nb; b++) {
      const x = srcOffset + b * 32;
      const o = dstOffset + b * 22;
      const d = signedMaxScale(src, x, 16);
      const id = d !== 0 ? fround(1 / d) : 0;
      writeF16(dst, o, d);
      let qh = 0;
      for (let j = 0; j < 16; j++) {
        const q0 = Math.min(31, Math.trunc(fround(fround(src[x + j]! * id) + 16.5)));
        const q1 = Math.min(31, Math.trunc(fround(fround(src[x + j + 16]! * id) + 16.5)));
        dst[o + 6 + j] = (q0 & 0xf) | ((q1 & 0xf) << 4);
        qh |= ((q0 & 0x10) >> 4) << j;
        qh |= ((q1 & 0x10) >> 4) << (j + 16);
      }
      writeU32(dst, o + 2, qh);
    }
  },
};

export const Q5_1: BlockCodec = {
  name: "Q5_1",
  ggmlType: 7,
  blockSize: 32,
  blockBytes: 24,
  dequantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, dst, dstOffset, src, srcOffset);
    for (let b = 0; b < nb; b++) {
      const o = srcOffset + b * 24;
      const y = dstOffset + b * 32;
      const d = readF16(src, o);
      const m = readF16(src, o + 2);
      const qh = readU32(src, o + 4);
      for (let j = 0; j < 16; j++) {
        const q = src[o + 8 + j]!;
        dst[y + j] = fround(((q & 0xf) | (((qh >>> j) << 4) & 0x10)) * d) + m;
        dst[y + j + 16] = fround(((q >> 4) | ((qh >>> (j + 12)) & 0x10)) * d) + m;
      }
    }
  },
  quantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, src, srcOffset, dst, dstOffset);
    for (let b = 0; b < nb; b++) {
      const x = srcOffset + b * 32;
      const o = dstOffset + b * 24;
      const [min, max] = minMax(src, x);
      const d = fround(fround(max - min) / 31);
      const id = d !== 0 ? fround(1 / d) : 0;
      writeF16(dst, o, d);
      writeF16(dst, o + 2, min);
      let qh = 0;
      for (let j = 0; j < 16; j++) {
        // Q5_1's reference does not clamp to 31, unlike Q4_1's clamp to 15.
        const q0 = Math.trunc(fround(fround(fround(src[x + j]! - min) * id) + 0.5)) & 0xff;
        const q1 = Math.trunc(fround(fround(fround(src[x + j + 16]! - min) * id) + 0.5)) & 0xff;
        dst[o + 8 + j] = (q0 & 0xf) | ((q1 & 0xf) << 4);
        qh |= ((q0 & 0x10) >> 4) << j;
        qh |= ((q1 & 0x10) >> 4) << (j + 16);
      }
      writeU32(dst, o + 4, qh);
    }
  },
};

/** ggml's kvalues_mxfp4: E2M1 values doubled, so they are integers; the scale carries the ½. */
const MXFP4_VALUES = new Int8Array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]);

/** GGML_E8M0_TO_FP32_HALF for every code: 2^(e-127) · ½ = 2^(e-128), exact in f32 (subnormal for e < 2). */
const E8M0_HALF = (() => {
  const t = new Float32Array(256);
  for (let e = 0; e < 256; e++) t[e] = 2 ** (e - 128);
  return t;
})();

export const MXFP4: BlockCodec = {
  name: "MXFP4",
  ggmlType: 39,
  blockSize: 32,
  blockBytes: 17,
  dequantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, dst, dstOffset, src, srcOffset);
    for (let b = 0; b < nb; b++) {
      const o = srcOffset + b * 17;
      const y = dstOffset + b * 32;
      const d = E8M0_HALF[src[o]!]!;
      for (let j = 0; j < 16; j++) {
        const q = src[o + 1 + j]!;
        dst[y + j] = MXFP4_VALUES[q & 0xf]! * d;
        dst[y + j + 16] = MXFP4_VALUES[q >> 4]! * d;
      }
    }
  },
  quantize(src, srcOffset, dst, dstOffset, n) {
    const nb = checkSpan(this, n, src, srcOffset, dst, dstOffset);
    for (let b = 0; b < nb; b++) {
      const x = srcOffset + b * 32;
      const o = dstOffset + b * 17;
      let amax = 0;
      for (let j = 0; j < 32; j++) {
        const a = Math.abs(src[x + j]!);
        if (amax < a) amax = a;
      }
      // ggml picks the exponent from floor(log2f(amax)) - 2, so amax lands in [4, 8) of the ×2 value grid
      // (the top values 8 and 12 absorb the rest). Exponents below 0 only arise for subnormal amax, where
      // ggml's float-to-uint8 cast is undefined; we clamp to 0.
      let e = 0;
      if (amax > 0) e = Math.max(0, Math.min(255, Math.floor(fround(Math.log2(amax))) - 2 + 127));
      dst[o] = e;
      const d = E8M0_HALF[e]!;
      for (let j = 0; j < 16; j++) dst[o + 1 + j] = bestMxfp4(src[x + j]!, d) | (bestMxfp4(src[x + j + 16]!, d) << 4);
    }
  },
};

/** The value-table index nearest x at scale d; ties keep the lower index, as ggml's strict < does. */
function bestMxfp4(x: number, d: number): number {
  let best = 0;
  let bestErr = Math.abs(fround(fround(MXFP4_VALUES[0]! * d) - x));
  for (let i = 1; i < 16; i++) {
    const err = Math.abs(fround(fround(MXFP4_VALUES[i]! * d) - x));
    if (err < bestErr) {
      best = i;
      bestErr = err;
    }
  }
  return best;
}

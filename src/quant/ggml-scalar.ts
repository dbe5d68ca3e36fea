/**
 * Scalar operations as ggml's C performs them, so the TypeScript quantizers reproduce its bytes.
 *
 * Arithmetic elsewhere wraps every float operation in Math.fround: one IEEE double operation on two
 * f32 operands, rounded back to f32, equals the f32 operation (double has more than 2×24+2 bits), so
 * a chain of frounds in C's evaluation order matches f32 code compiled without FMA contraction.
 */
import { f16ToF32Table, f32ToF16Bits } from "../backend/dtype.js";

const bitsF32 = new Float32Array(1);
const bitsI32 = new Int32Array(bitsF32.buffer);

/**
 * ggml's nearest_int: round half to even by adding 1.5·2^23 in f32 and reading the low mantissa bits.
 * Inside |f| ≤ 4194303 that is plain rounding; outside it ggml returns mantissa garbage, reproduced here
 * because the quantizers clamp whatever comes back.
 */
export function nearestInt(f: number): number {
  const v = Math.fround(f + 12582912);
  if (v >= 8388608 && v < 16777216) return v - 12582912;
  bitsF32[0] = v;
  return (bitsI32[0]! & 0x007fffff) - 0x00400000;
}

/** C's roundf: ties away from zero (Math.round sends ties toward +∞). */
export function roundHalfAway(x: number): number {
  return x < 0 ? -Math.round(-x) : Math.round(x);
}

const f16 = f16ToF32Table();

export function readF16(b: Uint8Array, o: number): number {
  return f16[b[o]! | (b[o + 1]! << 8)]!;
}

/** Stores x as a little-endian IEEE half (round to nearest even, like ggml's GGML_FP32_TO_FP16). */
export function writeF16(b: Uint8Array, o: number, x: number): void {
  const h = f32ToF16Bits(x);
  b[o] = h & 0xff;
  b[o + 1] = h >>> 8;
}

/** The f32 value a half stored at b[o] decodes to, after writing x there (ggml re-reads its own scales). */
export function storeF16(b: Uint8Array, o: number, x: number): number {
  writeF16(b, o, x);
  return readF16(b, o);
}

export function readF32(b: Uint8Array, o: number): number {
  bitsI32[0] = b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24);
  return bitsF32[0]!;
}

export function writeF32(b: Uint8Array, o: number, x: number): void {
  bitsF32[0] = x;
  const u = bitsI32[0]!;
  b[o] = u & 0xff;
  b[o + 1] = (u >>> 8) & 0xff;
  b[o + 2] = (u >>> 16) & 0xff;
  b[o + 3] = u >>> 24;
}

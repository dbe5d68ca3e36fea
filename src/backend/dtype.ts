/** Element types a tensor can hold. Float types follow the safetensors/PyTorch names. */
export type DType = "f32" | "f16" | "bf16" | "i32";

export const DTYPE_BYTES: Readonly<Record<DType, number>> = { f32: 4, f16: 2, bf16: 2, i32: 4 };

export function dtypeBytes(dtype: DType): number {
  return DTYPE_BYTES[dtype];
}

/** Names used by `--dtype` and `torch_dtype` in config.json. */
export function parseDType(name: string, where: string): DType {
  switch (name.toLowerCase()) {
    case "float32":
    case "f32":
    case "fp32":
      return "f32";
    case "float16":
    case "f16":
    case "fp16":
    case "half":
      return "f16";
    case "bfloat16":
    case "bf16":
      return "bf16";
    default:
      throw new Error(`${where}: unsupported dtype "${name}"; expected one of float32, float16, bfloat16`);
  }
}

// f16 -> f32 through a 64K-entry table: one load per element on the hot path.
let f16Table: Float32Array | undefined;

export function f16ToF32Table(): Float32Array {
  if (f16Table) return f16Table;
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) table[h] = decodeF16(h);
  f16Table = table;
  return table;
}

function decodeF16(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

const convF32 = new Float32Array(1);
const convU32 = new Uint32Array(convF32.buffer);

/** Round-to-nearest-even f32 -> bf16 bits, as PyTorch does. */
export function f32ToBf16Bits(x: number): number {
  convF32[0] = x;
  const u = convU32[0]!;
  if ((u & 0x7f800000) === 0x7f800000 && u & 0x7fffff) return (u >>> 16) | 0x40; // quiet NaN
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16BitsToF32(b: number): number {
  convU32[0] = (b & 0xffff) << 16;
  return convF32[0]!;
}

/** Round-to-nearest-even f32 -> IEEE half bits. */
export function f32ToF16Bits(x: number): number {
  convF32[0] = x;
  const u = convU32[0]!;
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (up to infinity).
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

/** Encode f32 values into the bytes of `dtype`. */
export function encodeFloats(values: ArrayLike<number>, dtype: DType): Uint8Array {
  const n = values.length;
  if (dtype === "f32") return new Uint8Array(Float32Array.from(values).buffer);
  if (dtype === "i32") return new Uint8Array(Int32Array.from(values).buffer);
  const out = new Uint16Array(n);
  const enc = dtype === "bf16" ? f32ToBf16Bits : f32ToF16Bits;
  for (let i = 0; i < n; i++) out[i] = enc(values[i]!);
  return new Uint8Array(out.buffer);
}

/** Decode `count` elements of `dtype` from bytes into f32. */
export function decodeFloats(bytes: Uint8Array, dtype: DType, count: number): Float32Array {
  const out = new Float32Array(count);
  const aligned = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  if (dtype === "f32") {
    out.set(new Float32Array(aligned.buffer, aligned.byteOffset, count));
  } else if (dtype === "i32") {
    out.set(new Int32Array(aligned.buffer, aligned.byteOffset, count));
  } else {
    const src = new Uint16Array(aligned.buffer, aligned.byteOffset, count);
    if (dtype === "bf16") {
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) u[i] = src[i]! << 16;
    } else {
      const t = f16ToF32Table();
      for (let i = 0; i < count; i++) out[i] = t[src[i]!]!;
    }
  }
  return out;
}

/**
 * The element-type registry: every encoding a tensor can hold, with its block geometry.
 *
 * - dense: f32, f16, bf16 (the safetensors/PyTorch names) and i32;
 * - block-quantized ggml formats (GGUF): `blockSize` elements share `blockBytes` bytes holding their
 *   scales and codes, so a row must be a whole number of blocks;
 * - per-channel formats: int8 (symmetric, one f32 scale per output row) and fp8 e4m3 (one f32
 *   scale per output row or for the whole tensor); the scales live beside the tensor (see Linear).
 */
export type FloatDType = "f32" | "f16" | "bf16";
export type BlockDType = "q8_0" | "q4_0" | "q4_1" | "q5_0" | "q5_1" | "q4_k" | "q5_k" | "q6_k" | "mxfp4";
export type ChannelDType = "int8" | "fp8_e4m3";
export type QuantDType = BlockDType | ChannelDType;
export type DenseDType = FloatDType | "i32";
export type DType = DenseDType | QuantDType;

export interface ElementType {
  readonly name: DType;
  readonly kind: "float" | "int" | "block" | "channel";
  /** Elements per block (1 for dense and per-channel types). */
  readonly blockSize: number;
  /** Bytes per block. */
  readonly blockBytes: number;
  /** The ggml type id, where GGUF has this encoding. */
  readonly ggmlType?: number;
  /** The name GGUF tools print ("Q4_K", "BF16"). */
  readonly ggmlName?: string;
}

const type = (name: DType, kind: ElementType["kind"], blockSize: number, blockBytes: number, ggmlType?: number, ggmlName?: string) =>
  ({ name, kind, blockSize, blockBytes, ggmlType, ggmlName }) as const;

export const ELEMENT_TYPES: Readonly<Record<DType, ElementType>> = {
  f32: type("f32", "float", 1, 4, 0, "F32"),
  f16: type("f16", "float", 1, 2, 1, "F16"),
  bf16: type("bf16", "float", 1, 2, 30, "BF16"),
  i32: type("i32", "int", 1, 4, 26, "I32"),
  q4_0: type("q4_0", "block", 32, 18, 2, "Q4_0"),
  q4_1: type("q4_1", "block", 32, 20, 3, "Q4_1"),
  q5_0: type("q5_0", "block", 32, 22, 6, "Q5_0"),
  q5_1: type("q5_1", "block", 32, 24, 7, "Q5_1"),
  q8_0: type("q8_0", "block", 32, 34, 8, "Q8_0"),
  q4_k: type("q4_k", "block", 256, 144, 12, "Q4_K"),
  q5_k: type("q5_k", "block", 256, 176, 13, "Q5_K"),
  q6_k: type("q6_k", "block", 256, 210, 14, "Q6_K"),
  mxfp4: type("mxfp4", "block", 32, 17, 39, "MXFP4"),
  int8: type("int8", "channel", 1, 1),
  fp8_e4m3: type("fp8_e4m3", "channel", 1, 1),
};

export function elementType(dtype: DType): ElementType {
  return ELEMENT_TYPES[dtype];
}

export function isBlockType(dtype: DType): dtype is BlockDType {
  return ELEMENT_TYPES[dtype].kind === "block";
}

export function isFloatType(dtype: DType): dtype is FloatDType {
  return ELEMENT_TYPES[dtype].kind === "float";
}

/** Quantized encodings: block formats and per-channel ones (their values need scales to mean anything). */
export function isQuantType(dtype: DType): dtype is QuantDType {
  const kind = ELEMENT_TYPES[dtype].kind;
  return kind === "block" || kind === "channel";
}

const DTYPE_BY_GGML = new Map(Object.values(ELEMENT_TYPES).flatMap((t) => (t.ggmlType === undefined ? [] : [[t.ggmlType, t.name]])));

/** The element type of a ggml type id, or undefined for those Tokamak cannot compute with. */
export function dtypeOfGgml(ggmlType: number): DType | undefined {
  return DTYPE_BY_GGML.get(ggmlType);
}

/** `dtype` where only a dense type can be used (a quantized one is refused, naming `what`). */
export function denseDType(dtype: DType, what: string): DenseDType {
  if (isQuantType(dtype)) throw new TypeError(`${what}: ${dtype} is a quantized encoding; expected f32, f16, bf16 or i32`);
  return dtype;
}

/** Bytes per element of a type with one element per block; block formats have no such number (use tensorBytes). */
export function dtypeBytes(dtype: DType): number {
  const t = ELEMENT_TYPES[dtype];
  if (t.blockSize !== 1) throw new RangeError(`${dtype} stores ${t.blockSize} elements in ${t.blockBytes} bytes; use tensorBytes`);
  return t.blockBytes;
}

/** Bytes of `numel` elements of `dtype` (a whole number of blocks for block formats). */
export function tensorBytes(dtype: DType, numel: number): number {
  const t = ELEMENT_TYPES[dtype];
  if (numel % t.blockSize !== 0)
    throw new RangeError(`${numel} elements of ${dtype} are not a whole number of ${t.blockSize}-element blocks`);
  return (numel / t.blockSize) * t.blockBytes;
}

/** Names used by `--dtype` and `torch_dtype` in config.json. */
export function parseDType(name: string, where: string): FloatDType {
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
export function encodeFloats(values: ArrayLike<number>, dtype: DenseDType): Uint8Array {
  const n = values.length;
  if (dtype === "f32") return new Uint8Array(Float32Array.from(values).buffer);
  if (dtype === "i32") return new Uint8Array(Int32Array.from(values).buffer);
  const out = new Uint16Array(n);
  const enc = dtype === "bf16" ? f32ToBf16Bits : f32ToF16Bits;
  for (let i = 0; i < n; i++) out[i] = enc(values[i]!);
  return new Uint8Array(out.buffer);
}

/** Decode `count` elements of `dtype` from bytes into f32. */
export function decodeFloats(bytes: Uint8Array, dtype: DenseDType, count: number): Float32Array {
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

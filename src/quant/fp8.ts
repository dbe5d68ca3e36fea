/**
 * FP8 E4M3 (OCP "e4m3fn", PyTorch's torch.float8_e4m3fn) and per-output-channel FP8 / INT8 weight
 * quantization.
 *
 * e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits. There is no infinity; 0x7f and 0xff are NaN,
 * so the largest finite value is 1.75·2^8 = 448 and the smallest subnormal 2^-9.
 *
 * Encoding rounds to nearest even and saturates: every finite value beyond ±448, and ±Infinity, becomes
 * ±448. PyTorch's plain cast instead turns magnitudes that round past 448 (above 464) into NaN; the
 * usual FP8 weight recipes clamp to ±448 before casting, which is what saturation gives directly.
 */

export const FP8_E4M3_MAX = 448;
const FP8_NAN = 0x7f;
const MIN_NORMAL = 2 ** -6;

export function fp8e4m3ToF32(byte: number): number {
  const sign = byte & 0x80 ? -1 : 1;
  const exp = (byte >> 3) & 0xf;
  const mant = byte & 7;
  if (exp === 15 && mant === 7) return NaN;
  if (exp === 0) return sign * mant * 2 ** -9;
  return sign * (8 + mant) * 2 ** (exp - 10);
}

/** x ≥ 0 rounded to an integer, ties to even. */
function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const r = x - f;
  if (r > 0.5) return f + 1;
  if (r < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** Nearest e4m3fn code, ties to even, saturating at ±448; NaN → 0x7f. Rounds from the exact value, so f32 inputs round once. */
export function f32ToFp8e4m3(x: number): number {
  if (Number.isNaN(x)) return FP8_NAN;
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.abs(x);
  if (a >= FP8_E4M3_MAX) return sign | 0x7e;
  if (a < MIN_NORMAL) {
    // Subnormals are multiples of 2^-9; a carry into 8 is exactly the smallest normal's code.
    return sign | roundHalfEven(a * 512);
  }
  let e = Math.floor(Math.log2(a));
  // log2 can land one off next to powers of two; pin 2^e ≤ a < 2^(e+1) exactly.
  if (2 ** e > a) e--;
  else if (2 ** (e + 1) <= a) e++;
  // Scaling by powers of two and subtracting 1 are exact, so only roundHalfEven rounds.
  const m = roundHalfEven((a / 2 ** e - 1) * 8);
  // A carry (m = 8) bumps the exponent; the combined code is still right since mantissa overflow adds 8.
  return sign | Math.min(0x7e, ((e + 7) << 3) + m);
}

let table: Float32Array | undefined;

/** All 256 codes decoded (index = code); shared, do not mutate. */
export function fp8e4m3Table(): Float32Array {
  if (table) return table;
  const t = new Float32Array(256);
  for (let c = 0; c < 256; c++) t[c] = fp8e4m3ToF32(c);
  table = t;
  return t;
}

function checkMatrix(values: Float32Array, rows: number, cols: number, what: string): void {
  if (!Number.isInteger(rows) || rows < 0 || !Number.isInteger(cols) || cols < 0 || values.length !== rows * cols) {
    throw new RangeError(`${what}: expected ${rows}×${cols} values, got ${values.length}`);
  }
}

/** Per-row amax / qmax as an f32 scale, 1 for an all-zero row so dequantization stays a plain multiply. */
function rowScales(values: Float32Array, rows: number, cols: number, qmax: number): Float32Array {
  const scales = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let amax = 0;
    for (let c = r * cols, end = c + cols; c < end; c++) {
      const a = Math.abs(values[c]!);
      if (a > amax) amax = a;
    }
    scales[r] = amax > 0 ? Math.fround(amax / qmax) : 1;
  }
  return scales;
}

/**
 * Per-output-channel symmetric FP8 of a row-major [rows, cols] matrix: scale[r] = amax_r / 448 (1 for an
 * all-zero row), data = e4m3(x / scale[r]) with the division in f32. x ≈ fp8e4m3ToF32(data) · scale[r].
 */
export function quantizeFp8PerChannel(values: Float32Array, rows: number, cols: number): { data: Uint8Array; scales: Float32Array } {
  checkMatrix(values, rows, cols, "quantizeFp8PerChannel");
  const scales = rowScales(values, rows, cols, FP8_E4M3_MAX);
  const data = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const s = scales[r]!;
    for (let c = r * cols, end = c + cols; c < end; c++) data[c] = f32ToFp8e4m3(Math.fround(values[c]! / s));
  }
  return { data, scales };
}

/**
 * Per-output-channel symmetric INT8: scale[r] = amax_r / 127 (1 for an all-zero row),
 * q = round-half-even(x / scale[r]) clamped to [-127, 127], the division in f32.
 */
export function quantizeInt8PerChannel(values: Float32Array, rows: number, cols: number): { data: Int8Array; scales: Float32Array } {
  checkMatrix(values, rows, cols, "quantizeInt8PerChannel");
  const scales = rowScales(values, rows, cols, 127);
  const data = new Int8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const s = scales[r]!;
    for (let c = r * cols, end = c + cols; c < end; c++) {
      const v = Math.fround(values[c]! / s);
      const q = v < 0 ? -roundHalfEven(-v) : roundHalfEven(v);
      data[c] = Math.max(-127, Math.min(127, q));
    }
  }
  return { data, scales };
}

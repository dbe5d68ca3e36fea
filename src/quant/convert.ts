/**
 * Conversions between element encodings of a weight matrix, one matrix at a time: decoding any
 * registered encoding to f32 and encoding f32 into any of them (per-channel formats return their
 * scales). The loader uses it to honour --dtype and --quantization, and the quantizer to write GGUF.
 */
import { type DType, decodeFloats, denseDType, elementType, encodeFloats } from "../backend/dtype.js";
import { fp8e4m3Table, quantizeFp8PerChannel, quantizeInt8PerChannel } from "./fp8.js";
import { dequantizeRows, type GgmlBlockType, quantizeRows } from "./ggml-quants.js";

const ggmlName = (dtype: DType) => elementType(dtype).ggmlName as GgmlBlockType;

/** A [rows, cols] matrix stored as `dtype` decoded to f32 (per-channel formats need their `scales`). */
export function decodeMatrix(bytes: Uint8Array, dtype: DType, rows: number, cols: number, scales?: Float32Array): Float32Array {
  const t = elementType(dtype);
  if (t.kind === "block") return dequantizeRows(bytes, rows, cols, ggmlName(dtype));
  if (t.kind === "channel") {
    if (!scales) throw new Error(`decoding a ${dtype} matrix needs its scales`);
    const out = new Float32Array(rows * cols);
    const table = dtype === "fp8_e4m3" ? fp8e4m3Table() : undefined;
    const i8 = new Int8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let r = 0; r < rows; r++) {
      const s = scales.length === 1 ? scales[0]! : scales[r]!;
      for (let c = 0, o = r * cols; c < cols; c++, o++) out[o] = (table ? table[bytes[o]!]! : i8[o]!) * s;
    }
    return out;
  }
  return decodeFloats(bytes, denseDType(dtype, "decodeMatrix"), rows * cols);
}

/** A [rows, cols] matrix stored as `from` re-encoded as `to`: the same bytes when they agree. */
export function convertMatrix(
  bytes: Uint8Array,
  from: DType,
  rows: number,
  cols: number,
  to: DType,
  /** The per-row scales of a per-channel `from` (an FP8 checkpoint's weight_scale). */
  fromScales?: Float32Array,
): { data: Uint8Array; scales?: Float32Array } {
  if (from === to) return elementType(from).kind === "channel" ? { data: bytes, scales: fromScales } : { data: bytes };
  const values = decodeMatrix(bytes, from, rows, cols, fromScales);
  return encodeMatrix(values, rows, cols, to);
}

/** f32 [rows, cols] encoded as `to`. */
export function encodeMatrix(values: Float32Array, rows: number, cols: number, to: DType): { data: Uint8Array; scales?: Float32Array } {
  const t = elementType(to);
  if (t.kind === "block") return { data: quantizeRows(values, rows, cols, ggmlName(to)) };
  if (to === "int8") {
    const q = quantizeInt8PerChannel(values, rows, cols);
    return { data: new Uint8Array(q.data.buffer, q.data.byteOffset, q.data.byteLength), scales: q.scales };
  }
  if (to === "fp8_e4m3") return quantizeFp8PerChannel(values, rows, cols);
  return { data: encodeFloats(values, denseDType(to, "encodeMatrix")) };
}

/**
 * GGUF/ggml block-quantized tensor formats: the codec registry and row-wise helpers.
 *
 * Each codec reproduces llama.cpp's block layout byte for byte, its dequantize_row_* bit for bit, and
 * its reference quantizer (quantize_row_*_ref) byte for byte when ggml is built without FMA
 * contraction. The codecs themselves live in legacy-quants.ts (32-element blocks) and k-quants.ts
 * (256-element super-blocks).
 */
import type { BlockCodec, GgmlBlockType } from "./block-codec.js";
import { MXFP4, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 } from "./legacy-quants.js";
import { Q4_K, Q5_K, Q6_K, Q8_K } from "./k-quants.js";

export type { BlockCodec, GgmlBlockType };

export const BLOCK_CODECS: ReadonlyMap<GgmlBlockType, BlockCodec> = new Map(
  [Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, Q8_K, MXFP4].map((c) => [c.name, c] as const),
);

const byUpperName = new Map([...BLOCK_CODECS].map(([name, codec]) => [name.toUpperCase(), codec]));

/** The codec for a type name, matched case-insensitively ("q4_k", "Q4_K", "mxfp4"). */
export function blockCodec(name: string): BlockCodec {
  const codec = byUpperName.get(name.toUpperCase());
  if (!codec) throw new RangeError(`unknown ggml block type "${name}"; known: ${[...BLOCK_CODECS.keys()].join(", ")}`);
  return codec;
}

function rowCodec(rows: number, cols: number, type: GgmlBlockType): BlockCodec {
  const codec = blockCodec(type);
  if (!Number.isInteger(rows) || rows < 0 || !Number.isInteger(cols) || cols < 0) {
    throw new RangeError(`${type}: rows and cols must be non-negative integers, got ${rows}×${cols}`);
  }
  if (cols % codec.blockSize !== 0) {
    throw new RangeError(`${type}: cols (${cols}) must be a multiple of the block size ${codec.blockSize}`);
  }
  return codec;
}

/** rows×cols row-major f32 → bytes, each row quantized independently (cols % blockSize === 0). */
export function quantizeRows(values: Float32Array, rows: number, cols: number, type: GgmlBlockType): Uint8Array {
  const codec = rowCodec(rows, cols, type);
  if (values.length !== rows * cols)
    throw new RangeError(`${type}: expected ${rows}×${cols} = ${rows * cols} values, got ${values.length}`);
  const rowBytes = (cols / codec.blockSize) * codec.blockBytes;
  const out = new Uint8Array(rows * rowBytes);
  // Blocks never straddle rows (cols is a whole number of blocks), so one call covers the matrix.
  codec.quantize(values, 0, out, 0, rows * cols);
  return out;
}

export function dequantizeRows(bytes: Uint8Array, rows: number, cols: number, type: GgmlBlockType): Float32Array {
  const codec = rowCodec(rows, cols, type);
  const need = rows * (cols / codec.blockSize) * codec.blockBytes;
  if (bytes.length !== need) throw new RangeError(`${type}: ${rows}×${cols} needs ${need} bytes, got ${bytes.length}`);
  const out = new Float32Array(rows * cols);
  codec.dequantize(bytes, 0, out, 0, rows * cols);
  return out;
}

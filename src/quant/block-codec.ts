/** The shape every ggml block-format codec shares; the registry lives in ggml-quants.ts. */

export type GgmlBlockType = "Q8_0" | "Q4_0" | "Q4_1" | "Q5_0" | "Q5_1" | "Q4_K" | "Q5_K" | "Q6_K" | "Q8_K" | "MXFP4";

export interface BlockCodec {
  readonly name: GgmlBlockType;
  /** ggml type id, as stored in GGUF tensor infos. */
  readonly ggmlType: number;
  /** Elements per block (32 or 256). */
  readonly blockSize: number;
  /** Bytes per block. */
  readonly blockBytes: number;
  /** Decode n elements (n a multiple of blockSize) from src[srcOffset..] (bytes) into dst[dstOffset..]. */
  dequantize(src: Uint8Array, srcOffset: number, dst: Float32Array, dstOffset: number, n: number): void;
  /** Encode n f32 values (n a multiple of blockSize) from src[srcOffset..] into dst[dstOffset..]. */
  quantize(src: Float32Array, srcOffset: number, dst: Uint8Array, dstOffset: number, n: number): void;
}

/**
 * Validates a codec call once, up front, so the per-element loops can index without bounds worries.
 * Returns the block count.
 */
export function checkSpan(
  codec: Pick<BlockCodec, "name" | "blockSize" | "blockBytes">,
  n: number,
  elems: { length: number },
  elemOffset: number,
  bytes: { length: number },
  byteOffset: number,
): number {
  if (!Number.isInteger(n) || n < 0 || n % codec.blockSize !== 0) {
    throw new RangeError(`${codec.name}: element count ${n} is not a multiple of the block size ${codec.blockSize}`);
  }
  const blocks = n / codec.blockSize;
  if (!Number.isInteger(elemOffset) || elemOffset < 0 || elemOffset + n > elems.length) {
    throw new RangeError(`${codec.name}: ${n} elements at offset ${elemOffset} overrun a float array of ${elems.length}`);
  }
  const need = blocks * codec.blockBytes;
  if (!Number.isInteger(byteOffset) || byteOffset < 0 || byteOffset + need > bytes.length) {
    throw new RangeError(
      `${codec.name}: ${blocks} blocks (${need} bytes) at offset ${byteOffset} overrun a buffer of ${bytes.length} bytes`,
    );
  }
  return blocks;
}

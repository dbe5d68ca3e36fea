import type { DType } from "./dtype.js";
import { tensorBytes } from "./dtype.js";

/** What an allocation is for: memory is accounted and shown by tag. */
export type MemoryTag = "weights" | "kv-cache" | "activations" | "workspace" | "other";
export const MEMORY_TAGS: readonly MemoryTag[] = ["weights", "kv-cache", "activations", "workspace", "other"];

/** A block of backend memory. `handle` is backend-specific (a SharedArrayBuffer on CPU, a device pointer on CUDA). */
export interface Storage {
  readonly id: number;
  readonly bytes: number;
  readonly tag: MemoryTag;
  readonly label: string;
  readonly handle: unknown;
}

/**
 * A plain tensor handle: dtype, shape, strides and offset (both in elements)
 * over a storage. Views share storage; nothing here owns memory.
 */
export class Tensor {
  readonly strides: readonly number[];

  constructor(
    readonly storage: Storage,
    readonly dtype: DType,
    readonly shape: readonly number[],
    readonly offset = 0,
    strides?: readonly number[],
  ) {
    this.strides = strides ?? contiguousStrides(shape);
    if (strides === undefined && tensorBytes(dtype, offset + this.numel) > storage.bytes) {
      throw new RangeError(
        `tensor [${shape}] ${dtype} at offset ${offset} does not fit in storage "${storage.label}" (${storage.bytes} bytes)`,
      );
    }
  }

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  /** Where the tensor starts in its storage (for block formats the offset is a whole number of blocks). */
  get byteOffset(): number {
    return tensorBytes(this.dtype, this.offset);
  }

  /** Bytes of the tensor's elements, when contiguous. */
  get byteLength(): number {
    return tensorBytes(this.dtype, this.numel);
  }

  get isContiguous(): boolean {
    const c = contiguousStrides(this.shape);
    return this.shape.every((d, i) => d === 1 || c[i] === this.strides[i]);
  }

  /** Stride of the first dimension (elements between consecutive rows). */
  get rowStride(): number {
    return this.shape.length > 1 ? this.strides[0]! : this.numel;
  }

  /** View of rows [start, start + count) along the first dimension. */
  rows(start: number, count: number): Tensor {
    if (start < 0 || start + count > this.shape[0]!) throw new RangeError(`rows(${start}, ${count}) out of range for [${this.shape}]`);
    return new Tensor(this.storage, this.dtype, [count, ...this.shape.slice(1)], this.offset + start * this.strides[0]!, this.strides);
  }

  /** View of columns [start, start + count) of a 2-D tensor (keeps the row stride). */
  cols(start: number, count: number): Tensor {
    if (this.shape.length !== 2 || start < 0 || start + count > this.shape[1]!) {
      throw new RangeError(`cols(${start}, ${count}) out of range for [${this.shape}]`);
    }
    return new Tensor(this.storage, this.dtype, [this.shape[0]!, count], this.offset + start * this.strides[1]!, this.strides);
  }

  /** Reinterpret a contiguous tensor with a new shape of the same element count. */
  view(shape: readonly number[]): Tensor {
    const n = shape.reduce((a, b) => a * b, 1);
    if (n !== this.numel) throw new RangeError(`view [${shape}] has ${n} elements, tensor [${this.shape}] has ${this.numel}`);
    if (!this.isContiguous) throw new Error(`view of a non-contiguous tensor [${this.shape}] strides [${this.strides}]`);
    return new Tensor(this.storage, this.dtype, shape, this.offset);
  }

  toString(): string {
    return `Tensor(${this.dtype}[${this.shape.join(", ")}] @${this.storage.label}+${this.offset})`;
  }
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i]!;
  }
  return s;
}

// Kernel parameters packed once and reused. cuLaunchKernel takes `void **kernelParams`:
// an array holding, for each kernel argument, the address of that argument's value.
// KernelArgs owns both arrays in native-stable memory (ArrayBuffers created with
// `new ArrayBuffer` live outside the V8 heap and never move), so a launch passes one
// precomputed address and allocates nothing. Graph capture copies the values at
// capture time, which is why a captured step must use fixed buffers.
import { koffi } from "./koffi.js";

/** Scalar kinds a kernel argument can have; `ptr` is a device address (CUdeviceptr, 8 bytes). */
export type KernelScalar = "i32" | "u32" | "f32" | "i64" | "u64" | "f64" | "ptr";
/** A by-value struct argument: its size and alignment as the kernel declares it. */
export interface KernelStructArg {
  bytes: number;
  align: number;
}
export type KernelArgType = KernelScalar | KernelStructArg;

/** Anything that is a device address: a DevicePtr or a raw BigInt. */
export type DeviceAddress = bigint | { readonly address: bigint };
export type KernelArgValue = number | bigint | DeviceAddress | Uint8Array;

const SCALAR_SIZE: Readonly<Record<KernelScalar, number>> = { i32: 4, u32: 4, f32: 4, i64: 8, u64: 8, f64: 8, ptr: 8 };

export class KernelArgs {
  /** Byte offset of each argument's value inside `values`. */
  readonly offsets: readonly number[];
  readonly sizes: readonly number[];
  /** Storage of the argument values, each at its natural alignment. */
  readonly values: ArrayBuffer;
  /** kernelParams: pointers[i] is the address of argument i's value. */
  readonly pointers: BigUint64Array;
  /** Native address of `pointers`: the `kernelParams` argument of cuLaunchKernel. */
  readonly address: bigint;

  private readonly i32: Int32Array;
  private readonly u32: Uint32Array;
  private readonly f32: Float32Array;
  private readonly i64: BigInt64Array;
  private readonly u64: BigUint64Array;
  private readonly f64: Float64Array;
  private readonly bytes: Uint8Array;

  constructor(readonly types: readonly KernelArgType[]) {
    const offsets: number[] = [];
    const sizes: number[] = [];
    let end = 0;
    let maxAlign = 8;
    types.forEach((type, i) => {
      const { size, align } = sizeAndAlign(type, i);
      end = alignUp(end, align);
      offsets.push(end);
      sizes.push(size);
      end += size;
      maxAlign = Math.max(maxAlign, align);
    });
    this.offsets = offsets;
    this.sizes = sizes;
    // Extra room so the storage can start at the strictest alignment whatever the allocator returns.
    const raw = new ArrayBuffer(alignUp(Math.max(end, 8), 8) + maxAlign);
    const ffi = koffi();
    const shift = Number((BigInt(maxAlign) - (ffi.address(raw) % BigInt(maxAlign))) % BigInt(maxAlign));
    this.values = raw;
    this.bytes = new Uint8Array(raw, shift);
    const words = Math.floor((raw.byteLength - shift) / 8) * 8;
    this.i32 = new Int32Array(raw, shift, words / 4);
    this.u32 = new Uint32Array(raw, shift, words / 4);
    this.f32 = new Float32Array(raw, shift, words / 4);
    this.i64 = new BigInt64Array(raw, shift, words / 8);
    this.u64 = new BigUint64Array(raw, shift, words / 8);
    this.f64 = new Float64Array(raw, shift, words / 8);
    this.pointers = new BigUint64Array(new ArrayBuffer(Math.max(types.length, 1) * 8));
    const base = ffi.address(this.bytes);
    offsets.forEach((offset, i) => (this.pointers[i] = base + BigInt(offset)));
    this.address = ffi.address(this.pointers);
  }

  /** Packs `values` into a new KernelArgs; numbers go to their declared type. */
  static pack(types: readonly KernelArgType[], values: readonly KernelArgValue[]): KernelArgs {
    const args = new KernelArgs(types);
    args.setAll(values);
    return args;
  }

  get length(): number {
    return this.types.length;
  }

  /** A view of the packed argument values (starting at argument 0's storage), for inspection and tests. */
  get packed(): Uint8Array {
    const last = this.types.length - 1;
    return last < 0 ? this.bytes.subarray(0, 0) : this.bytes.subarray(0, this.offsets[last]! + this.sizes[last]!);
  }

  setAll(values: readonly KernelArgValue[]): this {
    if (values.length !== this.types.length) {
      throw new Error(`KernelArgs: got ${values.length} values for ${this.types.length} arguments (${this.describe()})`);
    }
    values.forEach((value, i) => this.set(i, value));
    return this;
  }

  /** Sets argument `index` from any value that fits its declared type. */
  set(index: number, value: KernelArgValue): this {
    const type = this.typeAt(index);
    if (typeof type !== "string") {
      if (!(value instanceof Uint8Array)) throw this.mismatch(index, "a Uint8Array of the struct's bytes");
      return this.setBytes(index, value);
    }
    switch (type) {
      case "i32":
        return this.setI32(
          index,
          toNumber(value, () => this.mismatch(index, "a number")),
        );
      case "u32":
        return this.setU32(
          index,
          toNumber(value, () => this.mismatch(index, "a number")),
        );
      case "f32":
        return this.setF32(
          index,
          toNumber(value, () => this.mismatch(index, "a number")),
        );
      case "f64":
        return this.setF64(
          index,
          toNumber(value, () => this.mismatch(index, "a number")),
        );
      case "i64":
      case "u64":
        if (typeof value !== "number" && typeof value !== "bigint") throw this.mismatch(index, "a number or bigint");
        return type === "i64" ? this.setI64(index, value) : this.setU64(index, value);
      case "ptr":
        if (typeof value === "number" || value instanceof Uint8Array) throw this.mismatch(index, "a device pointer (DevicePtr or bigint)");
        return this.setPtr(index, value);
    }
  }

  setI32(index: number, value: number): this {
    this.expect(index, "i32");
    if ((value | 0) !== value) throw new RangeError(`KernelArgs: argument ${index} (i32) got ${value}; expected an integer in int32 range`);
    this.i32[this.offsets[index]! >> 2] = value;
    return this;
  }

  setU32(index: number, value: number): this {
    this.expect(index, "u32");
    if (value >>> 0 !== value)
      throw new RangeError(`KernelArgs: argument ${index} (u32) got ${value}; expected an integer in uint32 range`);
    this.u32[this.offsets[index]! >> 2] = value;
    return this;
  }

  setF32(index: number, value: number): this {
    this.expect(index, "f32");
    this.f32[this.offsets[index]! >> 2] = value;
    return this;
  }

  setF64(index: number, value: number): this {
    this.expect(index, "f64");
    this.f64[this.offsets[index]! >> 3] = value;
    return this;
  }

  setI64(index: number, value: number | bigint): this {
    this.expect(index, "i64");
    this.i64[this.offsets[index]! >> 3] = BigInt(value);
    return this;
  }

  setU64(index: number, value: number | bigint): this {
    this.expect(index, "u64");
    this.u64[this.offsets[index]! >> 3] = BigInt(value);
    return this;
  }

  setPtr(index: number, value: DeviceAddress): this {
    this.expect(index, "ptr");
    this.u64[this.offsets[index]! >> 3] = typeof value === "bigint" ? value : value.address;
    return this;
  }

  setBytes(index: number, value: Uint8Array): this {
    const type = this.typeAt(index);
    if (typeof type === "string") throw this.mismatch(index, `a ${type} value, not struct bytes`);
    if (value.byteLength !== type.bytes) {
      throw new RangeError(`KernelArgs: argument ${index} is a ${type.bytes}-byte struct; got ${value.byteLength} bytes`);
    }
    this.bytes.set(value, this.offsets[index]!);
    return this;
  }

  /** "ptr, i32, f32": the declared signature, for error messages. */
  describe(): string {
    return this.types.map((t) => (typeof t === "string" ? t : `struct(${t.bytes}B, align ${t.align})`)).join(", ");
  }

  private typeAt(index: number): KernelArgType {
    const type = this.types[index];
    if (type === undefined)
      throw new RangeError(`KernelArgs: argument ${index} does not exist; the kernel takes ${this.types.length} (${this.describe()})`);
    return type;
  }

  private expect(index: number, kind: KernelScalar): void {
    if (this.typeAt(index) !== kind) throw this.mismatch(index, `a ${kind} argument`);
  }

  private mismatch(index: number, expected: string): TypeError {
    const type = this.types[index]!;
    const declared = typeof type === "string" ? type : `struct(${type.bytes}B)`;
    return new TypeError(`KernelArgs: argument ${index} is declared ${declared}; expected ${expected} (signature: ${this.describe()})`);
  }
}

function sizeAndAlign(type: KernelArgType, index: number): { size: number; align: number } {
  if (typeof type === "string") {
    const size = SCALAR_SIZE[type];
    if (size === undefined)
      throw new TypeError(
        `KernelArgs: argument ${index} has unknown type "${type}"; expected one of ${Object.keys(SCALAR_SIZE).join(", ")}`,
      );
    return { size, align: size };
  }
  const { bytes, align } = type;
  if (!Number.isInteger(bytes) || bytes <= 0 || !Number.isInteger(align) || align <= 0 || (align & (align - 1)) !== 0 || align > 256) {
    throw new TypeError(
      `KernelArgs: argument ${index} struct has bytes=${bytes}, align=${align}; expected a positive size and a power-of-two alignment up to 256`,
    );
  }
  return { size: bytes, align };
}

function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

function toNumber(value: KernelArgValue, fail: () => Error): number {
  if (typeof value === "number") return value;
  if (typeof value === "bigint") return Number(value);
  throw fail();
}

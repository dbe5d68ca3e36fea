/**
 * GGUF, the llama.cpp model file format (versions 2 and 3 read, version 3 written).
 *
 * Layout, all little-endian:
 *
 *   "GGUF" magic, u32 version, u64 tensor count, u64 metadata count
 *   metadata: (string key, u32 value type, value) × count
 *   tensor infos: (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset) × count
 *   padding to the alignment (`general.alignment`, default 32)
 *   tensor data, each tensor at its offset (relative to the start of this section, a multiple of the alignment)
 *
 * A string is a u64 byte length and UTF-8 bytes (no terminator); an array is a u32 item type, a u64 count
 * and the items. Dimensions are in ggml order: ne[0] varies fastest, so a row-major Hugging Face
 * weight of shape [rows, cols] has ne = [cols, rows]. This module speaks Hugging Face order
 * (`shape`) at its edges and keeps ggml order in `ne`.
 */
import { closeSync, existsSync, fstatSync, openSync, readSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { decodeFloats, encodeFloats } from "../backend/dtype.js";
import { FormatError } from "./safetensors.js";

export { FormatError };

export const GGUF_MAGIC = "GGUF";
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** ggml's GGML_MAX_DIMS. */
export const GGUF_MAX_DIMS = 4;

// ---------------------------------------------------------------------------
// Metadata values

export type GgufNumberType = "uint8" | "int8" | "uint16" | "int16" | "uint32" | "int32" | "float32" | "float64";
export type GgufBigIntType = "uint64" | "int64";
export type GgufScalarType = GgufNumberType | GgufBigIntType | "bool" | "string";
export type GgufValueType = GgufScalarType | "array";

/** Value type ids as stored in the file. */
export const GGUF_VALUE_TYPE_IDS: Readonly<Record<GgufValueType, number>> = {
  uint8: 0,
  int8: 1,
  uint16: 2,
  int16: 3,
  uint32: 4,
  int32: 5,
  float32: 6,
  bool: 7,
  string: 8,
  array: 9,
  uint64: 10,
  int64: 11,
  float64: 12,
};
const VALUE_TYPE_BY_ID: readonly GgufValueType[] = Object.entries(GGUF_VALUE_TYPE_IDS)
  .sort(([, a], [, b]) => a - b)
  .map(([name]) => name as GgufValueType);

export type GgufArray =
  | { type: "array"; itemType: GgufNumberType; value: number[] }
  | { type: "array"; itemType: GgufBigIntType; value: bigint[] }
  | { type: "array"; itemType: "bool"; value: boolean[] }
  | { type: "array"; itemType: "string"; value: string[] }
  | { type: "array"; itemType: "array"; value: GgufArray[] };

export type GgufValue =
  | { type: GgufNumberType; value: number }
  | { type: GgufBigIntType; value: bigint }
  | { type: "bool"; value: boolean }
  | { type: "string"; value: string }
  | GgufArray;

export type GgufMetadata = Map<string, GgufValue>;

/** Typed constructors for metadata values: `gv.u32(2048)`, `gv.str("llama")`, `gv.arr("string", tokens)`. */
export const gv = {
  u8: (value: number): GgufValue => ({ type: "uint8", value }),
  i8: (value: number): GgufValue => ({ type: "int8", value }),
  u16: (value: number): GgufValue => ({ type: "uint16", value }),
  i16: (value: number): GgufValue => ({ type: "int16", value }),
  u32: (value: number): GgufValue => ({ type: "uint32", value }),
  i32: (value: number): GgufValue => ({ type: "int32", value }),
  f32: (value: number): GgufValue => ({ type: "float32", value }),
  f64: (value: number): GgufValue => ({ type: "float64", value }),
  u64: (value: bigint | number): GgufValue => ({ type: "uint64", value: BigInt(value) }),
  i64: (value: bigint | number): GgufValue => ({ type: "int64", value: BigInt(value) }),
  bool: (value: boolean): GgufValue => ({ type: "bool", value }),
  str: (value: string): GgufValue => ({ type: "string", value }),
  arr: ggufArray,
};

function ggufArray(itemType: GgufNumberType, value: number[]): GgufArray;
function ggufArray(itemType: GgufBigIntType, value: bigint[]): GgufArray;
function ggufArray(itemType: "bool", value: boolean[]): GgufArray;
function ggufArray(itemType: "string", value: string[]): GgufArray;
function ggufArray(itemType: "array", value: GgufArray[]): GgufArray;
function ggufArray(itemType: GgufValueType, value: unknown[]): GgufArray {
  return { type: "array", itemType, value } as GgufArray;
}

/** The plain JavaScript value of a metadata entry (arrays become arrays of plain values). */
export function plainGgufValue(v: GgufValue): number | bigint | boolean | string | unknown[] {
  if (v.type !== "array") return v.value;
  if (v.itemType === "array") return v.value.map(plainGgufValue);
  return v.value;
}

// ---------------------------------------------------------------------------
// ggml tensor types

export interface GgmlTypeInfo {
  id: number;
  name: string;
  /** Elements per block (1 for plain types). */
  blockSize: number;
  /** Bytes per block. */
  typeSize: number;
}

// [id, name, block size, bytes per block], as ggml's type traits define them.
const GGML_TYPE_TABLE: readonly [number, string, number, number][] = [
  [0, "F32", 1, 4],
  [1, "F16", 1, 2],
  [2, "Q4_0", 32, 18],
  [3, "Q4_1", 32, 20],
  [6, "Q5_0", 32, 22],
  [7, "Q5_1", 32, 24],
  [8, "Q8_0", 32, 34],
  [9, "Q8_1", 32, 36],
  [10, "Q2_K", 256, 84],
  [11, "Q3_K", 256, 110],
  [12, "Q4_K", 256, 144],
  [13, "Q5_K", 256, 176],
  [14, "Q6_K", 256, 210],
  [15, "Q8_K", 256, 292],
  [16, "IQ2_XXS", 256, 66],
  [17, "IQ2_XS", 256, 74],
  [18, "IQ3_XXS", 256, 98],
  [19, "IQ1_S", 256, 50],
  [20, "IQ4_NL", 32, 18],
  [21, "IQ3_S", 256, 110],
  [22, "IQ2_S", 256, 82],
  [23, "IQ4_XS", 256, 136],
  [24, "I8", 1, 1],
  [25, "I16", 1, 2],
  [26, "I32", 1, 4],
  [27, "I64", 1, 8],
  [28, "F64", 1, 8],
  [29, "IQ1_M", 256, 56],
  [30, "BF16", 1, 2],
  [34, "TQ1_0", 256, 54],
  [35, "TQ2_0", 256, 66],
  [39, "MXFP4", 32, 17],
  [40, "NVFP4", 64, 36],
  [41, "Q1_0", 128, 18],
  [42, "Q2_0", 64, 18],
];

/** Ids ggml once used and has since removed (Q4_2, Q4_3, the repacked Q4_0_N_M and IQ4_NL_N_M). */
const REMOVED_GGML_TYPES: ReadonlyMap<number, string> = new Map([
  [4, "Q4_2"],
  [5, "Q4_3"],
  [31, "Q4_0_4_4"],
  [32, "Q4_0_4_8"],
  [33, "Q4_0_8_8"],
  [36, "IQ4_NL_4_4"],
  [37, "IQ4_NL_4_8"],
  [38, "IQ4_NL_8_8"],
]);

export const GGML_TYPES: ReadonlyMap<number, GgmlTypeInfo> = new Map(
  GGML_TYPE_TABLE.map(([id, name, blockSize, typeSize]) => [id, { id, name, blockSize, typeSize }]),
);
const GGML_TYPE_BY_NAME = new Map([...GGML_TYPES.values()].map((t) => [t.name, t]));

/** The ggml type ids of the float formats this module converts to and from. */
export const GGML_F32 = 0;
export const GGML_F16 = 1;
export const GGML_BF16 = 30;

/** Look up a ggml type by id or name ("F32", "bf16", 30); throws naming the known ones. */
export function ggmlType(idOrName: number | string): GgmlTypeInfo {
  const t = typeof idOrName === "number" ? GGML_TYPES.get(idOrName) : GGML_TYPE_BY_NAME.get(idOrName.toUpperCase());
  if (!t) {
    const removed = typeof idOrName === "number" ? REMOVED_GGML_TYPES.get(idOrName) : undefined;
    if (removed)
      throw new RangeError(`ggml type ${idOrName} (${removed}) was removed from ggml; re-create the file with a current llama.cpp`);
    throw new RangeError(`unknown ggml type ${JSON.stringify(idOrName)}; known: ${[...GGML_TYPE_BY_NAME.keys()].join(", ")}`);
  }
  return t;
}

/** Bytes of a tensor of `type` with ggml dims `ne` (ne[0] must be a whole number of blocks). */
export function ggmlTensorBytes(type: GgmlTypeInfo, ne: readonly number[]): number {
  const rows = ne.slice(1).reduce((a, b) => a * b, 1);
  return (ne[0]! / type.blockSize) * type.typeSize * rows;
}

// ---------------------------------------------------------------------------
// Reading

export interface GgufTensorInfo {
  name: string;
  /** Hugging Face (row-major) order: the reverse of `ne`. */
  shape: number[];
  /** ggml order: ne[0] varies fastest. */
  ne: number[];
  ggmlType: number;
  /** "F32", "Q4_K", ... */
  typeName: string;
  /** Offset of the data from the start of the data section, as stored. */
  offset: number;
  /** Absolute offset of the data in the file. */
  fileOffset: number;
  byteLength: number;
}

export interface GgufHeader {
  path: string;
  version: number;
  alignment: number;
  metadata: GgufMetadata;
  tensors: GgufTensorInfo[];
  /** Absolute file offset of the tensor data section. */
  dataOffset: number;
  fileSize: number;
}

const READ_CHUNK = 1 << 20;
const TENSOR_READ_CHUNK = 64 * 1024 * 1024;
const MIN_ITEM_BYTES: Readonly<Record<GgufValueType, number>> = {
  uint8: 1,
  int8: 1,
  uint16: 2,
  int16: 2,
  uint32: 4,
  int32: 4,
  float32: 4,
  bool: 1,
  string: 8,
  array: 12,
  uint64: 8,
  int64: 8,
  float64: 8,
};

/** Sequential reads of the header through a file descriptor and a small window buffer. */
class HeaderReader {
  pos = 0;
  private buf = Buffer.alloc(0);
  private bufStart = 0;

  constructor(
    private readonly fd: number,
    readonly fileSize: number,
    private readonly path: string,
  ) {}

  get remaining(): number {
    return this.fileSize - this.pos;
  }

  /** Make `n` bytes at the current position available; returns their offset in `buf` and advances. */
  private take(n: number, what: string): number {
    if (this.pos + n > this.fileSize) {
      throw new FormatError(
        `${this.path}: truncated header: ${what} needs ${n} bytes at offset ${this.pos}, but the file ends at ${this.fileSize} bytes`,
      );
    }
    if (this.pos < this.bufStart || this.pos + n > this.bufStart + this.buf.length) {
      const len = Math.min(Math.max(n, READ_CHUNK), this.fileSize - this.pos);
      const buf = Buffer.allocUnsafe(len);
      let done = 0;
      while (done < len) {
        const got = readSync(this.fd, buf, done, len - done, this.pos + done);
        if (got <= 0) throw new FormatError(`${this.path}: unexpected end of file at offset ${this.pos + done} while reading ${what}`);
        done += got;
      }
      this.buf = buf;
      this.bufStart = this.pos;
    }
    const off = this.pos - this.bufStart;
    this.pos += n;
    return off;
  }

  /** Decode `n` bytes at the current position with `read` (after `take`, which may replace the buffer). */
  private at<T>(n: number, what: string, read: (buf: Buffer, off: number) => T): T {
    const off = this.take(n, what);
    return read(this.buf, off);
  }

  bytes(n: number, what: string): Buffer {
    const off = this.take(n, what);
    return this.buf.subarray(off, off + n);
  }

  u32(what: string): number {
    return this.at(4, what, (b, o) => b.readUInt32LE(o));
  }

  u64(what: string): bigint {
    return this.at(8, what, (b, o) => b.readBigUInt64LE(o));
  }

  /** A u64 that must be a usable JavaScript integer (a count, a length, an offset). */
  size(what: string): number {
    const v = this.u64(what);
    if (v > BigInt(Number.MAX_SAFE_INTEGER))
      throw new FormatError(`${this.path}: ${what} is ${v}, larger than any file this reader can handle`);
    return Number(v);
  }

  string(what: string): string {
    const len = this.size(`the length of ${what}`);
    if (len > this.remaining) {
      throw new FormatError(
        `${this.path}: truncated header: ${what} is ${len} bytes long at offset ${this.pos}, but only ${this.remaining} bytes remain in the file`,
      );
    }
    const off = this.take(len, what);
    return this.buf.toString("utf8", off, off + len);
  }

  scalar(type: GgufScalarType, what: string): number | bigint | boolean | string {
    switch (type) {
      case "uint8":
        return this.at(1, what, (b, o) => b.readUInt8(o));
      case "int8":
        return this.at(1, what, (b, o) => b.readInt8(o));
      case "uint16":
        return this.at(2, what, (b, o) => b.readUInt16LE(o));
      case "int16":
        return this.at(2, what, (b, o) => b.readInt16LE(o));
      case "uint32":
        return this.at(4, what, (b, o) => b.readUInt32LE(o));
      case "int32":
        return this.at(4, what, (b, o) => b.readInt32LE(o));
      case "float32":
        return this.at(4, what, (b, o) => b.readFloatLE(o));
      case "float64":
        return this.at(8, what, (b, o) => b.readDoubleLE(o));
      case "uint64":
        return this.at(8, what, (b, o) => b.readBigUInt64LE(o));
      case "int64":
        return this.at(8, what, (b, o) => b.readBigInt64LE(o));
      case "bool": {
        const b = this.at(1, what, (buf, o) => buf.readUInt8(o));
        if (b > 1) throw new FormatError(`${this.path}: ${what} is a bool stored as ${b}; expected 0 or 1`);
        return b === 1;
      }
      case "string":
        return this.string(what);
    }
  }

  valueType(what: string): GgufValueType {
    const at = this.pos;
    const id = this.u32(`the value type of ${what}`);
    const type = VALUE_TYPE_BY_ID[id];
    if (type === undefined) {
      throw new FormatError(
        `${this.path}: ${what} has unknown value type ${id} at offset ${at}; expected 0-12 (uint8, int8, uint16, int16, uint32, int32, float32, bool, string, array, uint64, int64, float64)`,
      );
    }
    return type;
  }

  value(type: GgufValueType, what: string, depth = 0): GgufValue {
    if (type !== "array") return { type, value: this.scalar(type, what) } as GgufValue;
    if (depth > 8) throw new FormatError(`${this.path}: ${what} nests arrays more than 8 deep`);
    const itemType = this.valueType(`the items of ${what}`);
    const count = this.size(`the length of ${what}`);
    if (count * MIN_ITEM_BYTES[itemType] > this.remaining) {
      throw new FormatError(
        `${this.path}: truncated header: ${what} claims ${count} ${itemType} items (at least ${count * MIN_ITEM_BYTES[itemType]} bytes) at offset ${this.pos}, but only ${this.remaining} bytes remain`,
      );
    }
    const items: unknown[] = new Array(count);
    if (itemType === "array") {
      for (let i = 0; i < count; i++) items[i] = this.value("array", `${what}[${i}]`, depth + 1);
    } else {
      for (let i = 0; i < count; i++) items[i] = this.scalar(itemType, what);
    }
    return { type: "array", itemType, value: items } as GgufArray;
  }
}

function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

function describeMagic(bytes: Buffer): string {
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(" ");
  const text = [...bytes].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
  return `${hex} ("${text}")`;
}

function parseHeader(fd: number, path: string): GgufHeader {
  const fileSize = fstatSync(fd).size;
  const r = new HeaderReader(fd, fileSize, path);
  if (fileSize < 4)
    throw new FormatError(`${path}: file is ${fileSize} bytes, too short for a GGUF file (expected the magic "GGUF" first)`);
  const magic = r.bytes(4, "the magic");
  if (magic.toString("latin1") !== GGUF_MAGIC) {
    const hint = magic.toString("latin1") === "FUGG" ? " (a big-endian GGUF file? only little-endian is supported)" : "";
    throw new FormatError(`${path}: not a GGUF file: the first bytes are ${describeMagic(Buffer.from(magic))}; expected "GGUF"${hint}`);
  }
  const version = r.u32("the version");
  if (version !== 2 && version !== 3) {
    const vb = Buffer.alloc(4);
    vb.writeUInt32LE(version);
    const swapped = vb.readUInt32BE(0);
    const hint = swapped === 2 || swapped === 3 ? " (this looks like a big-endian GGUF file; only little-endian is supported)" : "";
    const old = version === 1 ? " (version 1 files predate 64-bit counts; convert the model again with a current llama.cpp)" : "";
    throw new FormatError(`${path}: unsupported GGUF version ${version}; expected 2 or 3${old}${hint}`);
  }
  const tensorCount = r.size("the tensor count");
  const kvCount = r.size("the metadata count");
  // Every metadata entry and tensor info takes at least 12 and 24 bytes: reject absurd counts before looping.
  if (kvCount * 12 + tensorCount * 24 > r.remaining) {
    throw new FormatError(
      `${path}: truncated header: ${kvCount} metadata entries and ${tensorCount} tensors cannot fit in the ${r.remaining} bytes after the counts`,
    );
  }

  const metadata: GgufMetadata = new Map();
  for (let i = 0; i < kvCount; i++) {
    const key = r.string(`metadata key #${i}`);
    const type = r.valueType(`metadata "${key}"`);
    const value = r.value(type, `metadata "${key}"`);
    if (metadata.has(key)) throw new FormatError(`${path}: metadata key "${key}" appears twice`);
    metadata.set(key, value);
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const a = metadata.get("general.alignment");
  if (a !== undefined) {
    if (a.type !== "uint32" || a.value === 0 || (a.value & (a.value - 1)) !== 0) {
      throw new FormatError(
        `${path}: "general.alignment" is ${a.type} ${JSON.stringify(plainGgufValue(a), (_k, v) => (typeof v === "bigint" ? String(v) : v))}; expected a uint32 power of two`,
      );
    }
    alignment = a.value;
  }

  const raw: Omit<GgufTensorInfo, "fileOffset">[] = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const name = r.string(`the name of tensor #${i}`);
    const t = `tensor "${name}"`;
    if (names.has(name)) throw new FormatError(`${path}: ${t} appears twice`);
    names.add(name);
    const nDims = r.u32(`the dimension count of ${t}`);
    if (nDims < 1 || nDims > GGUF_MAX_DIMS) throw new FormatError(`${path}: ${t} has ${nDims} dimensions; expected 1 to ${GGUF_MAX_DIMS}`);
    const ne: number[] = [];
    for (let d = 0; d < nDims; d++) ne.push(r.size(`dimension ${d} of ${t}`));
    const typeId = r.u32(`the type of ${t}`);
    let type: GgmlTypeInfo;
    try {
      type = ggmlType(typeId);
    } catch (err) {
      throw new FormatError(`${path}: ${t}: ${(err as Error).message}`);
    }
    const offset = r.size(`the data offset of ${t}`);
    if (ne[0]! % type.blockSize !== 0) {
      throw new FormatError(`${path}: ${t} of type ${type.name} has ne[0] = ${ne[0]}, not a multiple of its block size ${type.blockSize}`);
    }
    if (offset % alignment !== 0) {
      throw new FormatError(`${path}: ${t} starts at data offset ${offset}, which is not a multiple of the alignment ${alignment}`);
    }
    const byteLength = ggmlTensorBytes(type, ne);
    raw.push({ name, shape: [...ne].reverse(), ne, ggmlType: typeId, typeName: type.name, offset, byteLength });
  }
  const dataOffset = alignUp(r.pos, alignment);
  const tensors = raw.map((t) => ({ ...t, fileOffset: dataOffset + t.offset }));
  for (const t of tensors) {
    if (t.fileOffset + t.byteLength > fileSize) {
      throw new FormatError(
        `${path}: tensor "${t.name}" data lies beyond the end of the file: it needs bytes [${t.fileOffset}, ${t.fileOffset + t.byteLength}) but the file is ${fileSize} bytes (truncated download?)`,
      );
    }
  }
  return { path, version, alignment, metadata, tensors, dataOffset, fileSize };
}

/** A GGUF file opened for reading: the header is parsed up front, tensor data is read on demand. */
export class GgufFile {
  private constructor(
    readonly header: GgufHeader,
    private fd: number,
  ) {}

  static open(path: string): GgufFile {
    if (!existsSync(path)) throw new FormatError(`${path}: file not found`);
    const fd = openSync(path, "r");
    try {
      return new GgufFile(parseHeader(fd, path), fd);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  get path(): string {
    return this.header.path;
  }

  get metadata(): GgufMetadata {
    return this.header.metadata;
  }

  get tensors(): GgufTensorInfo[] {
    return this.header.tensors;
  }

  tensor(name: string): GgufTensorInfo {
    const t = this.header.tensors.find((x) => x.name === name);
    if (!t) throw new FormatError(`${this.path}: no tensor "${name}"`);
    return t;
  }

  /** Read one tensor's raw bytes into `dest` (exactly its byte length). */
  readInto(info: GgufTensorInfo, dest: Uint8Array): void {
    if (this.fd < 0) throw new Error(`${this.path}: the file is closed`);
    if (dest.byteLength !== info.byteLength) {
      throw new Error(`${this.path}: tensor "${info.name}" is ${info.byteLength} bytes, destination is ${dest.byteLength}`);
    }
    let done = 0;
    while (done < info.byteLength) {
      const n = Math.min(TENSOR_READ_CHUNK, info.byteLength - done);
      const got = readSync(this.fd, dest, done, n, info.fileOffset + done);
      if (got <= 0) throw new FormatError(`${this.path}: unexpected end of file reading tensor "${info.name}"`);
      done += got;
    }
  }

  /** A F32, F16 or BF16 tensor's values as f32, in memory order. */
  readFloats(info: GgufTensorInfo): Float32Array {
    const bytes = new Uint8Array(info.byteLength);
    this.readInto(info, bytes);
    const count = info.ne.reduce((a, b) => a * b, 1);
    switch (info.ggmlType) {
      case GGML_F32:
        return decodeFloats(bytes, "f32", count);
      case GGML_F16:
        return decodeFloats(bytes, "f16", count);
      case GGML_BF16:
        return decodeFloats(bytes, "bf16", count);
      default:
        throw new FormatError(`${this.path}: tensor "${info.name}" is ${info.typeName}; readFloats handles F32, F16 and BF16 only`);
    }
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

/** Parse a GGUF file's header (metadata and tensor infos) without reading the tensor data. */
export function readGguf(path: string): GgufHeader {
  const file = GgufFile.open(path);
  file.close();
  return file.header;
}

// ---------------------------------------------------------------------------
// Writing

export interface GgufTensorToWrite {
  name: string;
  /** Hugging Face (row-major) order; written reversed as ggml's ne. */
  shape: readonly number[];
  /** ggml type id or name ("F32", "F16", "BF16", ...). */
  type: number | string;
  /** The bytes, or a function that makes them when the writer reaches this tensor (so one tensor at a time is in memory). */
  data: Uint8Array | (() => Uint8Array);
}

/** Little-endian serialisation into a list of chunks. */
class ByteSink {
  readonly chunks: Buffer[] = [];
  private cur = Buffer.alloc(1 << 16);
  private used = 0;
  length = 0;

  private room(n: number): void {
    if (this.used + n <= this.cur.length) return;
    this.flush();
    this.cur = Buffer.alloc(Math.max(n, 1 << 16));
  }

  flush(): void {
    if (this.used > 0) this.chunks.push(this.cur.subarray(0, this.used));
    this.cur = Buffer.alloc(1 << 16);
    this.used = 0;
  }

  put(n: number, write: (buf: Buffer, off: number) => void): void {
    this.room(n);
    write(this.cur, this.used);
    this.used += n;
    this.length += n;
  }

  bytes(b: Uint8Array): void {
    this.room(b.byteLength);
    this.cur.set(b, this.used);
    this.used += b.byteLength;
    this.length += b.byteLength;
  }

  u32(v: number): void {
    this.put(4, (b, o) => b.writeUInt32LE(v, o));
  }

  u64(v: number | bigint): void {
    this.put(8, (b, o) => b.writeBigUInt64LE(BigInt(v), o));
  }

  string(s: string): void {
    const b = Buffer.from(s, "utf8");
    this.u64(b.byteLength);
    this.bytes(b);
  }
}

const INT_RANGES: Partial<Record<GgufNumberType, [number, number]>> = {
  uint8: [0, 0xff],
  int8: [-0x80, 0x7f],
  uint16: [0, 0xffff],
  int16: [-0x8000, 0x7fff],
  uint32: [0, 0xffffffff],
  int32: [-0x80000000, 0x7fffffff],
};

function writeScalar(sink: ByteSink, type: GgufScalarType, v: unknown, what: string): void {
  const range = INT_RANGES[type as GgufNumberType];
  if (range) {
    if (typeof v !== "number" || !Number.isInteger(v) || v < range[0] || v > range[1]) {
      throw new RangeError(`writeGguf: ${what} must be a ${type} (an integer in [${range[0]}, ${range[1]}]), got ${String(v)}`);
    }
  }
  switch (type) {
    case "uint8":
      return sink.put(1, (b, o) => b.writeUInt8(v as number, o));
    case "int8":
      return sink.put(1, (b, o) => b.writeInt8(v as number, o));
    case "uint16":
      return sink.put(2, (b, o) => b.writeUInt16LE(v as number, o));
    case "int16":
      return sink.put(2, (b, o) => b.writeInt16LE(v as number, o));
    case "uint32":
      return sink.put(4, (b, o) => b.writeUInt32LE(v as number, o));
    case "int32":
      return sink.put(4, (b, o) => b.writeInt32LE(v as number, o));
    case "float32":
    case "float64":
      if (typeof v !== "number") throw new RangeError(`writeGguf: ${what} must be a number for ${type}, got ${typeof v}`);
      return type === "float32" ? sink.put(4, (b, o) => b.writeFloatLE(v, o)) : sink.put(8, (b, o) => b.writeDoubleLE(v, o));
    case "uint64":
    case "int64": {
      if (typeof v !== "bigint") throw new RangeError(`writeGguf: ${what} must be a bigint for ${type}, got ${typeof v}`);
      const ok = type === "uint64" ? v >= 0n && v < 1n << 64n : v >= -(1n << 63n) && v < 1n << 63n;
      if (!ok) throw new RangeError(`writeGguf: ${what} = ${v} is out of range for ${type}`);
      return type === "uint64" ? sink.put(8, (b, o) => b.writeBigUInt64LE(v, o)) : sink.put(8, (b, o) => b.writeBigInt64LE(v, o));
    }
    case "bool":
      if (typeof v !== "boolean") throw new RangeError(`writeGguf: ${what} must be a boolean, got ${typeof v}`);
      return sink.put(1, (b, o) => b.writeUInt8(v ? 1 : 0, o));
    case "string":
      if (typeof v !== "string") throw new RangeError(`writeGguf: ${what} must be a string, got ${typeof v}`);
      return sink.string(v);
  }
}

function writeValue(sink: ByteSink, v: GgufValue, what: string): void {
  if (v.type !== "array") return writeScalar(sink, v.type, v.value, what);
  if (!(v.itemType in GGUF_VALUE_TYPE_IDS)) throw new RangeError(`writeGguf: ${what} has unknown item type ${JSON.stringify(v.itemType)}`);
  if (!Array.isArray(v.value)) throw new RangeError(`writeGguf: ${what} is an array value without an array of items`);
  sink.u32(GGUF_VALUE_TYPE_IDS[v.itemType]);
  sink.u64(v.value.length);
  if (v.itemType === "array") {
    v.value.forEach((item, i) => {
      if (item?.type !== "array") throw new RangeError(`writeGguf: ${what}[${i}] must be an array value`);
      writeValue(sink, item, `${what}[${i}]`);
    });
  } else {
    const itemType = v.itemType;
    for (let i = 0; i < v.value.length; i++) writeScalar(sink, itemType, v.value[i], `${what}[${i}]`);
  }
}

/**
 * Write a GGUF v3 file. Metadata is written in the given order; `general.alignment` (default 32)
 * decides the padding. The file appears at `path` only once complete (written beside it, then renamed).
 */
export function writeGguf(path: string, metadata: GgufMetadata | Record<string, GgufValue>, tensors: readonly GgufTensorToWrite[]): void {
  const entries = metadata instanceof Map ? [...metadata.entries()] : Object.entries(metadata);
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const a = entries.find(([k]) => k === "general.alignment")?.[1];
  if (a !== undefined) {
    if (a.type !== "uint32" || a.value === 0 || (a.value & (a.value - 1)) !== 0) {
      throw new RangeError(`writeGguf: "general.alignment" must be a uint32 power of two, got ${a.type} ${String(a.value)}`);
    }
    alignment = a.value;
  }

  const sink = new ByteSink();
  sink.bytes(Buffer.from(GGUF_MAGIC, "latin1"));
  sink.u32(GGUF_VERSION);
  sink.u64(tensors.length);
  sink.u64(entries.length);
  for (const [key, value] of entries) {
    sink.string(key);
    if (!value || !(value.type in GGUF_VALUE_TYPE_IDS)) {
      throw new RangeError(`writeGguf: metadata "${key}" has unknown value type ${JSON.stringify(value?.type)}`);
    }
    sink.u32(GGUF_VALUE_TYPE_IDS[value.type]);
    writeValue(sink, value, `metadata "${key}"`);
  }

  const plan: { t: GgufTensorToWrite; offset: number; byteLength: number }[] = [];
  const names = new Set<string>();
  let offset = 0;
  for (const t of tensors) {
    if (names.has(t.name)) throw new RangeError(`writeGguf: tensor "${t.name}" is given twice`);
    names.add(t.name);
    if (t.shape.length < 1 || t.shape.length > GGUF_MAX_DIMS || !t.shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new RangeError(`writeGguf: tensor "${t.name}" has shape [${t.shape}]; expected 1 to ${GGUF_MAX_DIMS} non-negative integers`);
    }
    const type = ggmlType(t.type);
    const ne = [...t.shape].reverse();
    if (ne[0]! % type.blockSize !== 0) {
      throw new RangeError(
        `writeGguf: tensor "${t.name}" of type ${type.name} needs its last dimension (${ne[0]}) to be a multiple of ${type.blockSize}`,
      );
    }
    const byteLength = ggmlTensorBytes(type, ne);
    sink.string(t.name);
    sink.u32(ne.length);
    for (const d of ne) sink.u64(d);
    sink.u32(type.id);
    sink.u64(offset);
    plan.push({ t, offset, byteLength });
    offset = alignUp(offset + byteLength, alignment);
  }
  sink.bytes(new Uint8Array(alignUp(sink.length, alignment) - sink.length));
  sink.flush();

  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, "w");
  let ok = false;
  try {
    for (const chunk of sink.chunks) writeAll(fd, chunk);
    let written = 0;
    for (const { t, offset: at, byteLength } of plan) {
      if (written < at) writeAll(fd, new Uint8Array(at - written));
      written = at;
      const data = typeof t.data === "function" ? t.data() : t.data;
      if (data.byteLength !== byteLength) {
        throw new RangeError(
          `writeGguf: tensor "${t.name}" has ${data.byteLength} bytes; shape [${t.shape}] of ${ggmlType(t.type).name} needs ${byteLength}`,
        );
      }
      writeAll(fd, data);
      written += byteLength;
    }
    if (written < offset) writeAll(fd, new Uint8Array(offset - written));
    ok = true;
  } finally {
    closeSync(fd);
    if (!ok) unlinkSync(tmp);
  }
  renameSync(tmp, path);
}

function writeAll(fd: number, data: Uint8Array): void {
  let done = 0;
  while (done < data.byteLength) done += writeSync(fd, data, done, data.byteLength - done);
}

/** Encode f32 values as the bytes of a F32, F16 or BF16 ggml tensor. */
export function encodeGgmlFloats(values: Float32Array, type: number | string): Uint8Array {
  const t = ggmlType(type);
  switch (t.id) {
    case GGML_F32:
      return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    case GGML_F16:
      return encodeFloats(values, "f16");
    case GGML_BF16:
      return encodeFloats(values, "bf16");
    default:
      throw new RangeError(`encodeGgmlFloats: cannot encode ${t.name}; expected F32, F16 or BF16`);
  }
}

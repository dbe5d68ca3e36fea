import { closeSync, existsSync, fstatSync, openSync, readSync, writeSync } from "node:fs";
import { basename, join } from "node:path";
import type { DenseDType } from "../backend/dtype.js";

/** What safetensors files hold: dense types, and FP8 e4m3 (Hugging Face FP8 checkpoints, with their weight_scale tensors). */
type DType = DenseDType | "fp8_e4m3";
import { dtypeBytes } from "../backend/dtype.js";
import { checkRegularFile, readJsonFile } from "./regular-file.js";

/** One tensor's place in a safetensors file. */
export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute byte offset of the data in the file. */
  fileOffset: number;
  byteLength: number;
  /** The file that holds it. */
  path: string;
}

const ST_DTYPES: Record<string, DType> = { F32: "f32", F16: "f16", BF16: "bf16", I32: "i32", F8_E4M3: "fp8_e4m3" };
const DTYPE_ST: Partial<Record<DType, string>> = { f32: "F32", f16: "F16", bf16: "BF16", i32: "I32", fp8_e4m3: "F8_E4M3" };
const MAX_HEADER_BYTES = 100 * 1024 * 1024;
const READ_CHUNK = 64 * 1024 * 1024;

export class FormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FormatError";
  }
}

/**
 * A safetensors file opened for streaming reads: the JSON header is parsed and
 * checked against the file size up front, tensor bytes are read on demand.
 */
export class SafetensorsFile {
  readonly tensors = new Map<string, TensorInfo>();
  readonly metadata: Record<string, string> = {};

  private constructor(
    readonly path: string,
    private fd: number,
    readonly fileSize: number,
  ) {}

  static open(path: string): SafetensorsFile {
    if (!existsSync(path)) throw new FormatError(`${path}: file not found`);
    checkRegularFile(path, FormatError);
    const fd = openSync(path, "r");
    const file = new SafetensorsFile(path, fd, fstatSync(fd).size);
    try {
      file.parseHeader();
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    return file;
  }

  private parseHeader(): void {
    const where = this.path;
    if (this.fileSize < 8) throw new FormatError(`${where}: file is ${this.fileSize} bytes, too short for a safetensors header`);
    const lenBuf = Buffer.alloc(8);
    readSync(this.fd, lenBuf, 0, 8, 0);
    const headerLen = Number(lenBuf.readBigUInt64LE(0));
    if (headerLen > MAX_HEADER_BYTES || headerLen > this.fileSize - 8) {
      throw new FormatError(
        `${where}: header length ${headerLen} is absurd (file is ${this.fileSize} bytes; expected at most ${Math.min(MAX_HEADER_BYTES, this.fileSize - 8)})`,
      );
    }
    const headerBuf = Buffer.alloc(headerLen);
    readSync(this.fd, headerBuf, 0, headerLen, 8);
    let header: unknown;
    try {
      header = JSON.parse(headerBuf.toString("utf8"));
    } catch (err) {
      throw new FormatError(`${where}: header is not valid JSON (${(err as Error).message})`);
    }
    if (typeof header !== "object" || header === null || Array.isArray(header)) {
      throw new FormatError(`${where}: header must be a JSON object of tensors`);
    }
    const dataStart = 8 + headerLen;
    for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
      if (name === "__metadata__") {
        if (typeof raw === "object" && raw !== null) Object.assign(this.metadata, raw);
        continue;
      }
      const { dtype, shape, begin, end } = this.parseEntry(name, raw, this.fileSize - dataStart);
      this.tensors.set(name, { name, dtype, shape, fileOffset: dataStart + begin, byteLength: end - begin, path: this.path });
    }
    this.checkNoOverlap(dataStart);
  }

  /** One header entry, checked: dtype, shape, and data_offsets that match the shape and lie inside the file. */
  private parseEntry(name: string, raw: unknown, dataBytes: number): { dtype: DType; shape: number[]; begin: number; end: number } {
    const t = `${this.path}: tensor "${name}"`;
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
      throw new FormatError(`${t} must be an object with dtype, shape and data_offsets, got ${JSON.stringify(raw)}`);
    }
    const entry = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const dtype = typeof entry.dtype === "string" && Object.hasOwn(ST_DTYPES, entry.dtype) ? ST_DTYPES[entry.dtype] : undefined;
    if (!dtype) {
      throw new FormatError(
        `${t} has unsupported dtype ${JSON.stringify(entry.dtype)}; expected one of ${Object.keys(ST_DTYPES).join(", ")}`,
      );
    }
    if (!Array.isArray(entry.shape) || !entry.shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new FormatError(`${t} has an invalid shape ${JSON.stringify(entry.shape)}`);
    }
    const offs = entry.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isInteger(o) && o >= 0) || offs[1] < offs[0]) {
      throw new FormatError(`${t} has invalid data_offsets ${JSON.stringify(offs)}`);
    }
    const shape = entry.shape as number[];
    const [begin, end] = offs as [number, number];
    const expected = shape.reduce((a, b) => a * b, 1) * dtypeBytes(dtype);
    if (end - begin !== expected) {
      throw new FormatError(`${t}: data_offsets span ${end - begin} bytes but shape [${shape}] of ${entry.dtype} needs ${expected}`);
    }
    if (end > dataBytes) {
      throw new FormatError(
        `${t}: data_offsets [${begin}, ${end}] run past the end of the file (${dataBytes} data bytes); the file is truncated or corrupt`,
      );
    }
    return { dtype, shape, begin, end };
  }

  /** Two tensors sharing bytes means a corrupt header (the reference loader rejects it too). */
  private checkNoOverlap(dataStart: number): void {
    const spans = [...this.tensors.values()].filter((t) => t.byteLength > 0).sort((a, b) => a.fileOffset - b.fileOffset);
    for (let i = 1; i < spans.length; i++) {
      const [a, b] = [spans[i - 1]!, spans[i]!];
      if (b.fileOffset < a.fileOffset + a.byteLength) {
        const range = (t: TensorInfo) => `[${t.fileOffset - dataStart}, ${t.fileOffset - dataStart + t.byteLength}]`;
        throw new FormatError(
          `${this.path}: tensors "${a.name}" ${range(a)} and "${b.name}" ${range(b)} overlap; each tensor needs its own data_offsets`,
        );
      }
    }
  }

  /** Stream one tensor's bytes into `dest` (exactly its byte length). */
  readInto(info: TensorInfo, dest: Uint8Array): void {
    if (dest.byteLength !== info.byteLength) {
      throw new Error(`${this.path}: tensor "${info.name}" is ${info.byteLength} bytes, destination is ${dest.byteLength}`);
    }
    let done = 0;
    while (done < info.byteLength) {
      const n = Math.min(READ_CHUNK, info.byteLength - done);
      const got = readSync(this.fd, dest, done, n, info.fileOffset + done);
      if (got <= 0) throw new FormatError(`${this.path}: unexpected end of file reading tensor "${info.name}"`);
      done += got;
    }
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

/**
 * All tensors of a model folder: `model.safetensors`, or the shards listed by
 * `model.safetensors.index.json`.
 */
export class SafetensorsCheckpoint {
  readonly tensors = new Map<string, TensorInfo>();
  private files = new Map<string, SafetensorsFile>();

  constructor(readonly dir: string) {
    const indexPath = join(dir, "model.safetensors.index.json");
    const single = join(dir, "model.safetensors");
    let shardNames: string[];
    if (existsSync(indexPath)) {
      shardNames = readShardNames(indexPath);
    } else if (existsSync(single)) {
      shardNames = ["model.safetensors"];
    } else {
      throw new FormatError(`${dir}: no model.safetensors or model.safetensors.index.json found`);
    }
    try {
      for (const shard of shardNames) {
        const file = SafetensorsFile.open(join(dir, basename(shard)));
        this.files.set(file.path, file);
        for (const [name, info] of file.tensors) this.tensors.set(name, info);
      }
    } catch (err) {
      this.close();
      throw err;
    }
  }

  get(name: string): TensorInfo | undefined {
    return this.tensors.get(name);
  }

  readInto(info: TensorInfo, dest: Uint8Array): void {
    const file = this.files.get(info.path);
    if (!file) throw new Error(`internal: ${info.path} is not open`);
    file.readInto(info, dest);
  }

  close(): void {
    for (const f of this.files.values()) f.close();
    this.files.clear();
  }
}

/** The shard files `model.safetensors.index.json` maps tensors to, each once. */
function readShardNames(indexPath: string): string[] {
  const index = readJsonFile(indexPath, FormatError);
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw new FormatError(`${indexPath}: missing "weight_map" object (tensor name to shard file name)`);
  }
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== "string" || shard === "") {
      throw new FormatError(`${indexPath}: weight_map["${name}"] must be a shard file name (a string), got ${JSON.stringify(shard)}`);
    }
  }
  return [...new Set(Object.values(weightMap as Record<string, string>))];
}

export interface TensorToWrite {
  name: string;
  dtype: DType;
  shape: number[];
  data: Uint8Array;
}

/** Write tensors to a safetensors file (header padded to 8 bytes, as the reference writer does). */
export function writeSafetensors(path: string, tensors: TensorToWrite[], metadata?: Record<string, string>): void {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    const bytes = t.shape.reduce((a, b) => a * b, 1) * dtypeBytes(t.dtype);
    if (bytes !== t.data.byteLength) throw new Error(`writeSafetensors: "${t.name}" has ${t.data.byteLength} bytes, shape needs ${bytes}`);
    header[t.name] = { dtype: DTYPE_ST[t.dtype], shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const fd = openSync(path, "w");
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
    writeSync(fd, len);
    writeSync(fd, Buffer.from(json, "utf8"));
    for (const t of tensors) writeSync(fd, t.data);
  } finally {
    closeSync(fd);
  }
}

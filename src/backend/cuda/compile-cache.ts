// On-disk cache of kernels compiled at run time, so a second start compiles nothing.
// An entry is keyed by sha256 of everything that changes the output (source, headers,
// options, target architecture, name expressions, compiler and its version), written
// atomically (temporary file + rename) so a crash or a concurrent start never leaves a
// half-written entry, and checked when read (magic, lengths, key, image checksum): a
// corrupted entry is compiled again and replaced.
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import type { CompiledKernels, CompileOptions, Nvrtc } from "./ffi/nvrtc.js";

/** Bump when the entry layout or the key's contents change: old entries are then simply never read. */
const FORMAT_VERSION = 1;
const MAGIC = Buffer.from("TKMKERN1", "latin1");
const HEADER_BYTES = MAGIC.length + 4;

/** Something that turns source into kernels; injected so the cache can be tested without NVRTC. */
export interface KernelCompiler {
  /** Compiler and version, part of the key: a new NVRTC must not reuse an older one's cubins. */
  readonly id: string;
  compile(source: string, opts: CompileOptions): CompiledKernels;
}

export function nvrtcCompiler(nvrtc: Nvrtc): KernelCompiler {
  return { id: `nvrtc-${nvrtc.versionString}`, compile: (source, opts) => nvrtc.compile(source, opts) };
}

export interface CachedKernels extends CompiledKernels {
  key: string;
  /** True when read from disk (or memory) instead of compiled now. */
  fromCache: boolean;
}

export interface KernelCacheStats {
  hits: number;
  compiles: number;
  /** Entries found unreadable or inconsistent and compiled again. */
  corrupt: number;
  /** Entries that could not be written (the kernels were still returned). */
  writeFailures: number;
}

export interface KernelCacheOptions {
  compiler: KernelCompiler;
  /** Folder for entries; default defaultKernelCacheDir(). */
  dir?: string;
  /** Told about corrupted entries and failed writes; default console.warn. */
  onWarning?: (message: string) => void;
}

/** $TOKAMAK_CACHE_DIR/kernels, else $XDG_CACHE_HOME/tokamak/kernels, else ~/.cache/tokamak/kernels. */
export function defaultKernelCacheDir(env: NodeJS.ProcessEnv = process.env, home: string = homedir()): string {
  if (env.TOKAMAK_CACHE_DIR) return join(env.TOKAMAK_CACHE_DIR, "kernels");
  if (env.XDG_CACHE_HOME) return join(env.XDG_CACHE_HOME, "tokamak", "kernels");
  return join(home, ".cache", "tokamak", "kernels");
}

/** sha256 (hex) over every input that changes the compiled output. */
export function kernelCacheKey(source: string, opts: CompileOptions, compilerId: string): string {
  const headers = Object.entries(opts.headers ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const material = JSON.stringify({
    format: FORMAT_VERSION,
    compiler: compilerId,
    arch: opts.arch,
    name: opts.name,
    options: opts.options ?? [],
    nameExpressions: opts.nameExpressions ?? [],
    headers,
    source,
  });
  return createHash("sha256").update(material).digest("hex");
}

interface EntryMeta {
  key: string;
  compiler: string;
  kind: CompiledKernels["kind"];
  arch: string;
  loweredNames: Record<string, string>;
  log: string;
  imageBytes: number;
  imageSha256: string;
}

export class KernelCache {
  readonly dir: string;
  readonly stats: KernelCacheStats = { hits: 0, compiles: 0, corrupt: 0, writeFailures: 0 };
  private readonly compiler: KernelCompiler;
  private readonly warn: (message: string) => void;
  private readonly memory = new Map<string, CachedKernels>();

  constructor(options: KernelCacheOptions) {
    this.compiler = options.compiler;
    this.dir = options.dir ?? defaultKernelCacheDir();
    this.warn = options.onWarning ?? ((m) => console.warn(m));
  }

  /** Path of the entry for a key. */
  entryPath(key: string): string {
    return join(this.dir, `${key}.kernel`);
  }

  /** The compiled kernels for `source`, from this process's memory, then disk, then the compiler. */
  get(source: string, opts: CompileOptions): CachedKernels {
    const key = kernelCacheKey(source, opts, this.compiler.id);
    const remembered = this.memory.get(key);
    if (remembered) {
      this.stats.hits++;
      return remembered;
    }
    const fromDisk = this.read(key, opts.name);
    if (fromDisk) {
      this.stats.hits++;
      this.memory.set(key, fromDisk);
      return fromDisk;
    }
    const compiled = this.compiler.compile(source, opts);
    this.stats.compiles++;
    this.write(key, compiled, opts.name);
    const result: CachedKernels = { ...compiled, key, fromCache: false };
    this.memory.set(key, { ...result, fromCache: true });
    return result;
  }

  private read(key: string, programName: string): CachedKernels | null {
    const path = this.entryPath(key);
    let file: Buffer;
    try {
      file = readFileSync(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "ENOENT" && code !== "ENOTDIR")
        this.warn(`kernel cache: cannot read ${path} (${(err as Error).message}); compiling ${programName}`);
      return null;
    }
    const problem = validate(file, key);
    if (typeof problem === "string") {
      this.stats.corrupt++;
      this.warn(`kernel cache: ${path} is corrupted (${problem}); compiling ${programName} again`);
      return null;
    }
    const { meta, image } = problem;
    return { image, kind: meta.kind, arch: meta.arch, loweredNames: meta.loweredNames, log: meta.log, key, fromCache: true };
  }

  private write(key: string, compiled: CompiledKernels, programName: string): void {
    const path = this.entryPath(key);
    const tmp = `${path}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
    try {
      mkdirSync(this.dir, { recursive: true });
      writeFileSync(tmp, encodeEntry(key, this.compiler.id, compiled));
      renameSync(tmp, path); // atomic on one filesystem: readers see the old entry or the whole new one
    } catch (err) {
      this.stats.writeFailures++;
      try {
        unlinkSync(tmp);
      } catch {
        // nothing was written
      }
      this.warn(`kernel cache: cannot write ${path} (${(err as Error).message}); ${programName} will be compiled again next start`);
    }
  }
}

/** Entry layout: magic "TKMKERN1", u32 LE metadata length, metadata JSON, image bytes. */
export function encodeEntry(key: string, compilerId: string, compiled: CompiledKernels): Buffer {
  const meta: EntryMeta = {
    key,
    compiler: compilerId,
    kind: compiled.kind,
    arch: compiled.arch,
    loweredNames: compiled.loweredNames,
    log: compiled.log,
    imageBytes: compiled.image.byteLength,
    imageSha256: sha256(compiled.image),
  };
  const json = Buffer.from(JSON.stringify(meta), "utf8");
  const header = Buffer.alloc(HEADER_BYTES);
  MAGIC.copy(header, 0);
  header.writeUInt32LE(json.length, MAGIC.length);
  return Buffer.concat([header, json, compiled.image]);
}

/** The entry's contents, or a string saying what is wrong with it. */
function validate(file: Buffer, key: string): { meta: EntryMeta; image: Uint8Array } | string {
  if (file.length < HEADER_BYTES || !file.subarray(0, MAGIC.length).equals(MAGIC)) return "bad magic or too short";
  const metaBytes = file.readUInt32LE(MAGIC.length);
  if (HEADER_BYTES + metaBytes > file.length) return `metadata of ${metaBytes} bytes runs past the end of the ${file.length}-byte file`;
  let meta: EntryMeta;
  try {
    meta = JSON.parse(file.subarray(HEADER_BYTES, HEADER_BYTES + metaBytes).toString("utf8")) as EntryMeta;
  } catch (err) {
    return `metadata is not JSON: ${(err as Error).message}`;
  }
  if (meta.key !== key) return `entry is for key ${String(meta.key).slice(0, 12)}…`;
  const image = new Uint8Array(file.subarray(HEADER_BYTES + metaBytes));
  if (image.byteLength !== meta.imageBytes) return `image is ${image.byteLength} bytes; expected ${meta.imageBytes}`;
  if (sha256(image) !== meta.imageSha256) return "image checksum mismatch";
  if (meta.kind !== "cubin" && meta.kind !== "ptx") return `unknown image kind ${String(meta.kind)}`;
  return { meta, image };
}

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

// koffi bindings to NVRTC, the CUDA runtime compiler (libnvrtc.so.*), and
// compileKernels(): CUDA C++ source -> cubin (or PTX) for one GPU architecture.
// Prototypes are from CUDA 13.0's nvrtc.h (nvidia-cuda-nvrtc 13.0.88 wheel); line numbers quoted.
// NVRTC needs no GPU: it runs, and is tested, on machines without one.
import { cudaError, type StatusNames } from "./errors.js";
import { findLibrary, findNvrtcBuiltins, openLibrary, type SearchOptions } from "./find-library.js";
import { bindFunction, readCString } from "./koffi.js";

export const NVRTC_SUCCESS = 0; // nvrtc.h:42
export const NVRTC_ERROR_COMPILATION = 6; // nvrtc.h:48

type Out64 = BigUint64Array;

export interface NvrtcFunctions {
  nvrtcGetErrorString(result: number): string; // nvrtc.h:74
  nvrtcVersion(major: Int32Array, minor: Int32Array): number; // nvrtc.h:98
  nvrtcGetNumSupportedArchs(count: Int32Array): number; // nvrtc.h:115
  nvrtcGetSupportedArchs(archs: Int32Array): number; // nvrtc.h:132
  nvrtcCreateProgram(
    prog: Out64,
    src: string,
    name: string,
    numHeaders: number,
    headers: string[] | null,
    includeNames: string[] | null,
  ): number; // nvrtc.h:186
  nvrtcDestroyProgram(prog: Out64): number; // nvrtc.h:205 (takes nvrtcProgram*)
  nvrtcCompileProgram(prog: bigint, numOptions: number, options: string[] | null): number; // nvrtc.h:230
  nvrtcGetPTXSize(prog: bigint, size: Out64): number; // nvrtc.h:250
  nvrtcGetPTX(prog: bigint, ptx: Uint8Array): number; // nvrtc.h:267
  nvrtcGetCUBINSize(prog: bigint, size: Out64): number; // nvrtc.h:286
  nvrtcGetCUBIN(prog: bigint, cubin: Uint8Array): number; // nvrtc.h:305
  nvrtcGetProgramLogSize(prog: bigint, size: Out64): number; // nvrtc.h:399
  nvrtcGetProgramLog(prog: bigint, log: Uint8Array): number; // nvrtc.h:416
  nvrtcAddNameExpression(prog: bigint, nameExpression: string): number; // nvrtc.h:438
  nvrtcGetLoweredName(prog: bigint, nameExpression: string, lowered: Out64): number; // nvrtc.h:466
}

const PROTOTYPES: Record<keyof NvrtcFunctions, [string, string[]]> = {
  nvrtcGetErrorString: ["const char *", ["int"]],
  nvrtcVersion: ["int", ["void *", "void *"]],
  nvrtcGetNumSupportedArchs: ["int", ["void *"]],
  nvrtcGetSupportedArchs: ["int", ["void *"]],
  nvrtcCreateProgram: ["int", ["void *", "const char *", "const char *", "int", "const char **", "const char **"]],
  nvrtcDestroyProgram: ["int", ["void *"]],
  nvrtcCompileProgram: ["int", ["void *", "int", "const char **"]],
  nvrtcGetPTXSize: ["int", ["void *", "void *"]],
  nvrtcGetPTX: ["int", ["void *", "void *"]],
  nvrtcGetCUBINSize: ["int", ["void *", "void *"]],
  nvrtcGetCUBIN: ["int", ["void *", "void *"]],
  nvrtcGetProgramLogSize: ["int", ["void *", "void *"]],
  nvrtcGetProgramLog: ["int", ["void *", "void *"]],
  nvrtcAddNameExpression: ["int", ["void *", "const char *"]],
  nvrtcGetLoweredName: ["int", ["void *", "const char *", "void *"]],
};

export interface CompileOptions {
  /** Program name used in diagnostics, e.g. "rmsnorm.cu". */
  name: string;
  /** "sm_90a" (a real GPU: cubin) or "compute_90" (virtual: PTX, JIT-compiled by the driver). */
  arch: string;
  /** Extra NVRTC options, e.g. ["-std=c++17", "-default-device", "--use_fast_math"]. */
  options?: readonly string[];
  /** Sources for #include "name", keyed by include name. */
  headers?: Readonly<Record<string, string>>;
  /** C++ names to instantiate and look up, e.g. "rmsnorm<128, __nv_bfloat16>". */
  nameExpressions?: readonly string[];
}

export interface CompiledKernels {
  /** A cubin, or NUL-terminated PTX text, ready for cuModuleLoadData. */
  image: Uint8Array;
  kind: "cubin" | "ptx";
  arch: string;
  /** nameExpression -> mangled symbol to pass to cuModuleGetFunction. */
  loweredNames: Record<string, string>;
  /** NVRTC's log (warnings), empty when there were none. */
  log: string;
}

/** Compilation failed: the message carries NVRTC's full log. */
export class NvrtcCompileError extends Error {
  constructor(
    readonly programName: string,
    readonly arch: string,
    readonly options: readonly string[],
    readonly status: string,
    readonly log: string,
  ) {
    super(`NVRTC could not compile ${programName} for ${arch} (${status}); options: ${options.join(" ") || "(none)"}\n${log.trimEnd()}`);
    this.name = "NvrtcCompileError";
  }
}

/** The NVRTC target for a GPU: sm_XY ("a" from Hopper on, for wgmma/TMA), or PTX for the newest virtual arch NVRTC knows. */
export function compileTargetFor(major: number, minor: number, supportedArchs?: readonly number[]): string {
  const cc = major * 10 + minor;
  if (!supportedArchs || supportedArchs.includes(cc)) return major >= 9 ? `sm_${cc}a` : `sm_${cc}`;
  const older = supportedArchs.filter((a) => a <= cc);
  if (older.length === 0) {
    throw new Error(`NVRTC supports ${describeArchs(supportedArchs)}, none of which runs on compute capability ${major}.${minor}`);
  }
  // A newer GPU than this NVRTC knows: PTX for the newest older arch, which the driver compiles when loading.
  return `compute_${Math.max(...older)}`;
}

function describeArchs(archs: readonly number[]): string {
  return archs.length > 0 ? `sm_${Math.min(...archs)}..sm_${Math.max(...archs)}` : "no architecture";
}

const loaded = new Map<string, Nvrtc>();

export interface NvrtcLoadOptions extends SearchOptions {
  /** Use this libnvrtc file instead of searching. */
  path?: string;
}

export class Nvrtc {
  private readonly names: StatusNames;

  private constructor(
    readonly path: string,
    readonly builtinsPath: string,
    readonly raw: NvrtcFunctions,
    readonly version: { major: number; minor: number },
    /** Real architectures this NVRTC compiles for, as numbers (90 for sm_90). */
    readonly supportedArchs: readonly number[],
  ) {
    this.names = { name: (code) => raw.nvrtcGetErrorString(code), describe: () => null };
  }

  /** Finds and opens NVRTC and, before any compile, its builtins library (loaded globally so NVRTC's dlopen finds it). */
  static load(options: NvrtcLoadOptions = {}): Nvrtc {
    const path = options.path ?? findLibrary("nvrtc", options).path;
    const existing = loaded.get(path);
    if (existing) return existing;
    const lib = openLibrary(path);
    const raw = {} as Record<string, unknown>;
    for (const [name, [result, args]] of Object.entries(PROTOTYPES)) raw[name] = bindFunction(lib, path, name, result, args);
    const fns = raw as unknown as NvrtcFunctions;
    const major = new Int32Array(1);
    const minor = new Int32Array(1);
    checkStatus(fns, fns.nvrtcVersion(major, minor), "nvrtcVersion");
    const version = { major: major[0]!, minor: minor[0]! };
    const builtinsPath = findNvrtcBuiltins(path, version.major, version.minor, options);
    openLibrary(builtinsPath, { global: true });
    const nvrtc = new Nvrtc(path, builtinsPath, fns, version, supportedArchs(fns));
    loaded.set(path, nvrtc);
    return nvrtc;
  }

  /** "13.0" */
  get versionString(): string {
    return `${this.version.major}.${this.version.minor}`;
  }

  private check(result: number, fn: keyof NvrtcFunctions, context?: string): void {
    if (result !== 0) throw cudaError("nvrtc", fn, result, this.names, context);
  }

  /** Compiles one translation unit; throws NvrtcCompileError with the full log when NVRTC rejects it. */
  compile(source: string, opts: CompileOptions): CompiledKernels {
    const archMatch = /^(sm|compute)_(\d+)[af]?$/.exec(opts.arch);
    if (!archMatch)
      throw new Error(`compile ${opts.name}: arch "${opts.arch}" is not an NVRTC target; expected e.g. "sm_90a" or "compute_90"`);
    const archNumber = Number(archMatch[2]);
    if (this.supportedArchs.length > 0 && !this.supportedArchs.includes(archNumber)) {
      throw new Error(
        `NVRTC ${this.versionString} (${this.path}) cannot compile for ${opts.arch}: it supports ${describeArchs(this.supportedArchs)}; ` +
          `install an NVRTC that knows this GPU (pip install nvidia-cuda-nvrtc for CUDA 13)`,
      );
    }
    const headerNames = Object.keys(opts.headers ?? {});
    const headerSources = headerNames.map((n) => opts.headers![n]!);
    const options = [`--gpu-architecture=${opts.arch}`, ...(opts.options ?? [])];
    const prog = new BigUint64Array(1);
    this.check(
      this.raw.nvrtcCreateProgram(
        prog,
        source,
        opts.name,
        headerNames.length,
        headerNames.length > 0 ? headerSources : null,
        headerNames.length > 0 ? headerNames : null,
      ),
      "nvrtcCreateProgram",
      `creating program ${opts.name}`,
    );
    const handle = prog[0]!;
    try {
      for (const expr of opts.nameExpressions ?? []) {
        this.check(this.raw.nvrtcAddNameExpression(handle, expr), "nvrtcAddNameExpression", `adding "${expr}" to ${opts.name}`);
      }
      const result = this.raw.nvrtcCompileProgram(handle, options.length, options);
      const log = this.programLog(handle);
      if (result !== 0) throw new NvrtcCompileError(opts.name, opts.arch, options, this.raw.nvrtcGetErrorString(result), log);
      const kind = archMatch[1] === "sm" ? "cubin" : "ptx";
      const image = kind === "cubin" ? this.cubin(handle) : this.ptx(handle);
      const loweredNames: Record<string, string> = {};
      for (const expr of opts.nameExpressions ?? []) loweredNames[expr] = this.loweredName(handle, expr, opts.name);
      return { image, kind, arch: opts.arch, loweredNames, log };
    } finally {
      this.raw.nvrtcDestroyProgram(prog);
    }
  }

  private programLog(prog: bigint): string {
    const size = new BigUint64Array(1);
    this.check(this.raw.nvrtcGetProgramLogSize(prog, size), "nvrtcGetProgramLogSize");
    const buf = new Uint8Array(Number(size[0]!));
    if (buf.length === 0) return "";
    this.check(this.raw.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog");
    return Buffer.from(buf.subarray(0, buf.length - 1)).toString("utf8"); // drop the NUL
  }

  private cubin(prog: bigint): Uint8Array {
    const size = new BigUint64Array(1);
    this.check(this.raw.nvrtcGetCUBINSize(prog, size), "nvrtcGetCUBINSize");
    const buf = new Uint8Array(Number(size[0]!));
    this.check(this.raw.nvrtcGetCUBIN(prog, buf), "nvrtcGetCUBIN");
    return buf;
  }

  private ptx(prog: bigint): Uint8Array {
    const size = new BigUint64Array(1);
    this.check(this.raw.nvrtcGetPTXSize(prog, size), "nvrtcGetPTXSize");
    const buf = new Uint8Array(Number(size[0]!)); // includes the terminating NUL cuModuleLoadData needs
    this.check(this.raw.nvrtcGetPTX(prog, buf), "nvrtcGetPTX");
    return buf;
  }

  private loweredName(prog: bigint, expr: string, programName: string): string {
    const out = new BigUint64Array(1);
    this.check(this.raw.nvrtcGetLoweredName(prog, expr, out), "nvrtcGetLoweredName", `looking up "${expr}" in ${programName}`);
    const name = readCString(out[0]!);
    if (name === null) throw new Error(`nvrtcGetLoweredName returned no name for "${expr}" in ${programName}`);
    return name;
  }
}

function checkStatus(fns: NvrtcFunctions, result: number, fn: keyof NvrtcFunctions): void {
  if (result !== 0) throw cudaError("nvrtc", fn, result, { name: (c) => fns.nvrtcGetErrorString(c), describe: () => null });
}

function supportedArchs(fns: NvrtcFunctions): number[] {
  const count = new Int32Array(1);
  if (fns.nvrtcGetNumSupportedArchs(count) !== 0 || count[0]! <= 0) return [];
  const archs = new Int32Array(count[0]!);
  if (fns.nvrtcGetSupportedArchs(archs) !== 0) return [];
  return Array.from(archs);
}

/** Compiles with the NVRTC found on this machine (or the given one). */
export function compileKernels(source: string, opts: CompileOptions, nvrtc: Nvrtc = Nvrtc.load()): CompiledKernels {
  return nvrtc.compile(source, opts);
}

/**
 * llama.cpp's own quantizer and dequantizers, called in-process through koffi from the prebuilt
 * libraries node-llama-cpp ships (@node-llama-cpp/<platform>-<arch>/bins/...): `llama_model_quantize`
 * (what the `llama-quantize` tool runs) to write GGUF files the way llama.cpp writes them, and
 * libggml-base's `dequantize_row_*` / `quantize_row_*_ref` to decode and encode blocks as ggml does.
 *
 * The struct below is `llama_model_quantize_params` of the llama.cpp these binaries were built from
 * (node-llama-cpp/llama/gitRelease.bundle, include/llama.h): a wrong layout would not fail to bind,
 * it would crash, so the field list must follow that header.
 *
 * Every entry point returns (or throws) an Error naming what is missing, the library or the symbol,
 * so tests can skip with that reason on a platform without the binaries.
 */
import { existsSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { type Koffi, koffi, type LibraryHandle } from "../../src/backend/cuda/ffi/koffi.js";

/** llama.cpp's `enum llama_ftype` values (include/llama.h) for the mixes the tests use. */
export const LLAMA_FTYPE = {
  ALL_F32: 0,
  MOSTLY_F16: 1,
  MOSTLY_Q4_0: 2,
  MOSTLY_Q8_0: 7,
  MOSTLY_Q4_K_M: 15,
  MOSTLY_Q5_K_M: 17,
  MOSTLY_Q6_K: 18,
  MOSTLY_BF16: 32,
} as const;

/** ggml type ids (ggml.h `enum ggml_type`) of the block formats with row functions bound below. */
const ROW_FUNCTIONS: Readonly<Record<number, string>> = {
  2: "q4_0",
  3: "q4_1",
  6: "q5_0",
  7: "q5_1",
  8: "q8_0",
  12: "q4_K",
  13: "q5_K",
  14: "q6_K",
  15: "q8_K",
  39: "mxfp4",
};

type DequantizeRow = (src: Uint8Array, dst: Float32Array, k: bigint) => void;
type QuantizeRowRef = (src: Float32Array, dst: Uint8Array, k: bigint) => void;

export interface QuantizeOptions {
  /**
   * Threads for llama.cpp's quantizer (default 1; the bytes do not depend on it: threads take whole
   * rows). More than one sends llama.cpp's log to stderr: see llamaCppQuantize.
   */
  nthread?: number;
  /** Quantize every tensor to the ftype's base type, as `llama-quantize --pure` (default false: llama.cpp's mix). */
  pure?: boolean;
}

export interface QuantizeResult {
  /** Wall time of llama_model_quantize in ms. */
  ms: number;
  /** What llama.cpp logged at warning level or above (with one thread; empty with more). */
  warnings: string[];
}

/** The folder of node-llama-cpp's prebuilt llama.cpp libraries for this platform, or an Error saying why there is none. */
export function llamaCppBinsDir(): string | Error {
  const pkg = `@node-llama-cpp/${process.platform}-${process.arch}`;
  let root: string;
  try {
    // The package exports only its entry point, dist/index.js; the libraries are in ../bins/<platform>-<arch>.
    root = dirname(dirname(createRequire(import.meta.url).resolve(pkg)));
  } catch (err) {
    return new Error(`node-llama-cpp's prebuilt binaries ${pkg} are not installed (${(err as Error).message.split("\n")[0]})`);
  }
  const dir = join(root, "bins", `${process.platform}-${process.arch}`);
  if (!existsSync(dir)) return new Error(`${pkg} has no folder ${dir}`);
  return dir;
}

/** The library in `dir` whose name is `stem` or `stem.v<version>` with the platform's extension. */
function findLibrary(dir: string, stem: string): string | Error {
  const ext = process.platform === "win32" ? ".dll" : process.platform === "darwin" ? ".dylib" : ".so";
  const names = readdirSync(dir);
  const name = names.find((n) => n === stem + ext) ?? names.find((n) => n.startsWith(`${stem}.`) && n.endsWith(ext));
  if (!name) return new Error(`${dir} has no ${stem}${ext} (found: ${names.join(", ")})`);
  return join(dir, name);
}

interface Bound {
  k: Koffi;
  llama: LibraryHandle;
  llamaPath: string;
  basePath: string;
  Params: import("koffi").TypeObject;
  defaultParams: () => Record<string, unknown>;
  quantize: (inp: string, out: string, params: Record<string, unknown>) => number;
  logGet: (cb: unknown[], ud: unknown[]) => void;
  logSet: (cb: unknown, ud: unknown) => void;
  logSetCallback: (cb: unknown, ud: unknown) => void;
  LogCallback: import("koffi").TypeObject;
  dequantize: Map<number, DequantizeRow>;
  quantizeRef: Map<number, QuantizeRowRef>;
}

let bound: Bound | Error | undefined;

function symbolError(path: string, symbol: string, err: unknown): Error {
  return new Error(`${path} has no usable symbol ${symbol} (${(err as Error).message})`);
}

function bind(): Bound | Error {
  let k: Koffi;
  try {
    k = koffi();
  } catch (err) {
    return err as Error;
  }
  const dir = llamaCppBinsDir();
  if (dir instanceof Error) return dir;
  const paths = ["libggml-base", "libggml", "libllama"].map((stem) => findLibrary(dir, stem));
  for (const p of paths) if (p instanceof Error) return p;
  const [basePath, ggmlPath, llamaPath] = paths as string[];
  const libs: LibraryHandle[] = [];
  for (const p of [basePath!, ggmlPath!, llamaPath!]) {
    try {
      // By absolute path, dependencies first: the dynamic loader then finds them already loaded.
      libs.push(k.load(p));
    } catch (err) {
      return new Error(`cannot load ${p} (${(err as Error).message})`);
    }
  }
  const [base, , llama] = libs as [LibraryHandle, LibraryHandle, LibraryHandle];

  // include/llama.h of this llama.cpp: 4 × int32, 6 × bool, 4 pointers, size_t (64 bytes on LP64).
  const Params = k.struct({
    nthread: "int32_t",
    ftype: "int32_t",
    output_tensor_type: "int32_t",
    token_embedding_type: "int32_t",
    allow_requantize: "bool",
    quantize_output_tensor: "bool",
    only_copy: "bool",
    pure: "bool",
    keep_split: "bool",
    dry_run: "bool",
    imatrix: "void *",
    kv_overrides: "void *",
    tt_overrides: "void *",
    prune_layers: "void *",
    max_buf_size: "size_t",
  });
  const LogCallback = k.proto("void llama_quantize_log_cb(int level, const char *text, void *user_data)");
  const fn = <T>(lib: LibraryHandle, path: string, symbol: string, result: unknown, args: unknown[]): T | Error => {
    try {
      return lib.func(symbol, result as string, args as string[]) as unknown as T;
    } catch (err) {
      return symbolError(path, symbol, err);
    }
  };
  const backendInit = fn<() => void>(llama, llamaPath!, "llama_backend_init", "void", []);
  const defaultParams = fn<() => Record<string, unknown>>(llama, llamaPath!, "llama_model_quantize_default_params", Params, []);
  const quantize = fn<Bound["quantize"]>(llama, llamaPath!, "llama_model_quantize", "uint32_t", [
    "const char *",
    "const char *",
    k.pointer(Params),
  ]);
  const logGet = fn<Bound["logGet"]>(llama, llamaPath!, "llama_log_get", "void", [k.out(k.pointer("void *")), k.out(k.pointer("void *"))]);
  const logSet = fn<Bound["logSet"]>(llama, llamaPath!, "llama_log_set", "void", ["void *", "void *"]);
  const logSetCallback = fn<Bound["logSetCallback"]>(llama, llamaPath!, "llama_log_set", "void", [k.pointer(LogCallback), "void *"]);
  for (const f of [backendInit, defaultParams, quantize, logGet, logSet, logSetCallback]) if (f instanceof Error) return f;

  const dequantize = new Map<number, DequantizeRow>();
  const quantizeRef = new Map<number, QuantizeRowRef>();
  for (const [id, suffix] of Object.entries(ROW_FUNCTIONS)) {
    // void dequantize_row_x(const block_x * x, float * y, int64_t k); void quantize_row_x_ref(const float * x, block_x * y, int64_t k)
    const d = fn<DequantizeRow>(base, basePath!, `dequantize_row_${suffix}`, "void", ["const void *", "float *", "int64_t"]);
    if (!(d instanceof Error)) dequantize.set(Number(id), d);
    const q = fn<QuantizeRowRef>(base, basePath!, `quantize_row_${suffix}_ref`, "void", ["const float *", "void *", "int64_t"]);
    if (!(q instanceof Error)) quantizeRef.set(Number(id), q);
  }
  (backendInit as () => void)();
  return {
    k,
    llama,
    llamaPath: llamaPath!,
    basePath: basePath!,
    Params,
    defaultParams: defaultParams as Bound["defaultParams"],
    quantize: quantize as Bound["quantize"],
    logGet: logGet as Bound["logGet"],
    logSet: logSet as Bound["logSet"],
    logSetCallback: logSetCallback as Bound["logSetCallback"],
    LogCallback,
    dequantize,
    quantizeRef,
  };
}

function lib(): Bound | Error {
  bound ??= bind();
  return bound;
}

/** Why llama.cpp's quantizer cannot be called here, or undefined when it can (for `it(..., { skip })`). */
export function llamaCppQuantizeUnavailable(): string | undefined {
  const b = lib();
  return b instanceof Error ? b.message : undefined;
}

/**
 * Quantize the GGUF file `inPath` (F32, F16 or BF16) to `outPath` with llama.cpp's
 * `llama_model_quantize`, as `llama-quantize inPath outPath <ftype>` does (no imatrix). Throws
 * naming the missing library or symbol, or with llama.cpp's own error messages when it fails.
 *
 * With one thread (the default), llama.cpp's log goes to a JavaScript callback for the duration of
 * the call, collecting warnings and errors (the previous logger, node-llama-cpp's if it is loaded,
 * is put back afterwards). With more, llama.cpp's workers may log from their own threads (ggml's row
 * validation does, on NaN or Inf), and koffi can only run a JavaScript callback on the main thread,
 * which is blocked in this call until the workers finish: a deadlock. So then llama.cpp logs to
 * stderr (its default logger) instead, and a failure reports only the return code.
 */
export function llamaCppQuantize(inPath: string, outPath: string, ftype: number, opts: QuantizeOptions = {}): QuantizeResult {
  const b = lib();
  if (b instanceof Error) throw b;
  const params = b.defaultParams();
  params.ftype = ftype;
  params.nthread = opts.nthread ?? 1;
  params.pure = opts.pure ?? false;

  const messages: string[] = [];
  let keep = false;
  let pending = "";
  const onLog = (level: number, text: string | null) => {
    // GGML_LOG_LEVEL_CONT (5) continues the previous message; WARN is 3, ERROR 4.
    if (level !== 5) keep = level >= 3;
    if (!keep || text === null) return;
    pending += text;
    if (pending.endsWith("\n")) {
      messages.push(pending.trim());
      pending = "";
    }
  };
  const prevCb: unknown[] = [null];
  const prevUd: unknown[] = [null];
  b.logGet(prevCb, prevUd);
  const cb = params.nthread === 1 ? b.k.register(onLog, b.k.pointer(b.LogCallback)) : null;
  const t0 = performance.now();
  let rc: number;
  try {
    if (cb) b.logSetCallback(cb, null);
    else b.logSet(null, null);
    rc = b.quantize(inPath, outPath, params);
  } finally {
    b.logSet(prevCb[0], prevUd[0]);
    if (cb) b.k.unregister(cb);
  }
  const ms = performance.now() - t0;
  if (rc !== 0) {
    const why = messages.join("; ") || (cb ? "no message" : "see llama.cpp's log on stderr");
    throw new Error(`llama_model_quantize(${inPath} → ${outPath}, ftype ${ftype}) returned ${rc}: ${why}`);
  }
  return { ms, warnings: messages };
}

function rowFunction<T>(map: Map<number, T>, b: Bound, ggmlType: number, kind: string): T {
  const f = map.get(ggmlType);
  if (f) return f;
  const suffix = ROW_FUNCTIONS[ggmlType];
  throw new Error(
    suffix
      ? `${b.basePath} does not export ${kind === "dequantize" ? `dequantize_row_${suffix}` : `quantize_row_${suffix}_ref`}`
      : `no ggml row function is bound for ggml type ${ggmlType}`,
  );
}

/** ggml's `dequantize_row_*` of `n` elements (a whole number of blocks) of ggml type `ggmlType`. */
export function ggmlDequantize(bytes: Uint8Array, ggmlType: number, n: number): Float32Array {
  const b = lib();
  if (b instanceof Error) throw b;
  const f = rowFunction(b.dequantize, b, ggmlType, "dequantize");
  const out = new Float32Array(n);
  f(bytes, out, BigInt(n));
  return out;
}

/** ggml's reference quantizer `quantize_row_*_ref` of `values` (a whole number of blocks) into `byteLength` bytes. */
export function ggmlQuantizeRef(values: Float32Array, ggmlType: number, byteLength: number): Uint8Array {
  const b = lib();
  if (b instanceof Error) throw b;
  const f = rowFunction(b.quantizeRef, b, ggmlType, "quantize");
  const out = new Uint8Array(byteLength);
  f(values, out, BigInt(values.length));
  return out;
}

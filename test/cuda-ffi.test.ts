// CUDA FFI: library discovery, the koffi bindings, kernel argument packing, the kernel
// cache and device selection. Most of it runs on any machine:
// - a fake libcuda.so.1 (C, built here with cc) exercises the real driver bindings;
// - NVRTC and cuBLASLt need no GPU, so their tests run wherever the libraries are found
//   (a CUDA toolkit, LD_LIBRARY_PATH, or an nvidia-* wheel under $VIRTUAL_ENV);
// - tests that need a real GPU are skipped without a CUDA driver.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { bf16BitsToF32, f32ToBf16Bits } from "../src/backend/dtype.js";
import {
  defaultKernelCacheDir,
  encodeEntry,
  KernelCache,
  kernelCacheKey,
  nvrtcCompiler,
  type KernelCompiler,
} from "../src/backend/cuda/compile-cache.js";
import { DeviceUnavailableError, formatCudaVersion, probeCuda, selectDevice } from "../src/backend/cuda/device.js";
import { CublasLt, CUBLASLT_MATRIX_LAYOUT, HEURISTIC_RESULT_BYTES } from "../src/backend/cuda/ffi/cublaslt.js";
import { createLinearDescriptors, destroyDescriptors, LinearGemm, linearLayout } from "../src/backend/cuda/linear-gemm.js";
import { CudaDriver, DevicePtr, Stream, CU_EVENT_DEFAULT } from "../src/backend/cuda/ffi/driver.js";
import { CudaError, cudaError } from "../src/backend/cuda/ffi/errors.js";
import {
  expandPattern,
  findLibrary,
  findNvrtcBuiltins,
  LIBRARY_FILE_NAMES,
  LibraryLoadError,
  LibraryNotFoundError,
  librarySearchPath,
} from "../src/backend/cuda/ffi/find-library.js";
import { KernelArgs } from "../src/backend/cuda/ffi/kernel-args.js";
import { compileTargetFor, NvrtcCompileError, Nvrtc, type CompileOptions, type CompiledKernels } from "../src/backend/cuda/ffi/nvrtc.js";

const koffi = createRequire(import.meta.url)("koffi") as typeof import("koffi");
const NO_DRIVER = "no CUDA driver on this machine";

function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `tokamak-${prefix}-`));
}

function touch(path: string, content = ""): string {
  mkdirSync(join(path, ".."), { recursive: true });
  writeFileSync(path, content);
  return path;
}

function tryFind(lib: "cuda" | "nvrtc" | "cublasLt"): string | null {
  try {
    return findLibrary(lib).path;
  } catch {
    return null;
  }
}

const realDriver = tryFind("cuda");
const realNvrtc = tryFind("nvrtc");
const realCublasLt = tryFind("cublasLt");
const hasCc = spawnSync("cc", ["--version"]).status === 0;

// ------------------------------------------------------------------ discovery

describe("library discovery", () => {
  it(
    "finds no libcuda here, and the error lists the file names, every folder searched, and the fix",
    { skip: realDriver ? `libcuda found at ${realDriver}` : false },
    () => {
      const { folders } = librarySearchPath();
      assert.throws(
        () => findLibrary("cuda"),
        (err: unknown) => {
          assert.ok(err instanceof LibraryNotFoundError);
          for (const name of LIBRARY_FILE_NAMES.cuda) assert.match(err.message, new RegExp(name.replace(/\./g, "\\.")));
          for (const { dir } of folders) assert.ok(err.message.includes(dir), `message names ${dir}`);
          assert.ok(folders.some((f) => f.dir === "/usr/lib/x86_64-linux-gnu" || f.dir === "/usr/lib64" || f.dir === "/usr/lib"));
          assert.match(err.message, /install the NVIDIA driver/);
          assert.match(err.message, /LD_LIBRARY_PATH/);
          assert.match(err.summary, /^no libcuda\.so\.1 found .* in: \//);
          return true;
        },
      );
    },
  );

  it("searches LD_LIBRARY_PATH first, then $CUDA_HOME, Python environments and system folders", () => {
    const root = tempDir("search");
    try {
      const ld = join(root, "ld");
      const cudaHome = join(root, "cuda-12.4");
      const venv = join(root, "venv");
      const home = join(root, "home");
      touch(join(cudaHome, "targets", "x86_64-linux", "lib", "libnvrtc.so.12"));
      touch(join(venv, "lib", "python3.11", "site-packages", "nvidia", "cu13", "lib", "libcublasLt.so.13"));
      touch(join(home, ".local", "lib", "python3.10", "site-packages", "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.12"));
      mkdirSync(ld, { recursive: true });
      const env = { LD_LIBRARY_PATH: `${ld}:/nonexistent`, CUDA_HOME: cudaHome, VIRTUAL_ENV: venv };
      const { folders, absent } = librarySearchPath({ env, home });
      const order = folders.map((f) => f.source);
      assert.equal(folders[0]!.dir, ld);
      assert.ok(order.indexOf("$CUDA_HOME") < order.indexOf("$VIRTUAL_ENV"));
      assert.ok(order.indexOf("$VIRTUAL_ENV") < order.indexOf("system"));
      assert.ok(absent.includes("/nonexistent"));
      assert.ok(absent.includes("$CUDA_PATH (unset)"));

      assert.equal(findLibrary("nvrtc", { env, home }).path, join(cudaHome, "targets", "x86_64-linux", "lib", "libnvrtc.so.12"));
      assert.equal(findLibrary("cublasLt", { env, home }).fileName, "libcublasLt.so.13");
      // Without CUDA_HOME the user's ~/.local wheel is found.
      assert.equal(
        findLibrary("nvrtc", { env: { VIRTUAL_ENV: venv }, home }).dir,
        join(home, ".local", "lib", "python3.10", "site-packages", "nvidia", "cuda_nvrtc", "lib"),
      );
      // A file in LD_LIBRARY_PATH wins over a newer version later in the path, as with the dynamic loader.
      touch(join(ld, "libnvrtc.so.11.2"));
      assert.equal(findLibrary("nvrtc", { env, home }).path, join(ld, "libnvrtc.so.11.2"));
      // Within one folder the newest major version wins.
      touch(join(ld, "libnvrtc.so.13"));
      assert.equal(findLibrary("nvrtc", { env, home }).fileName, "libnvrtc.so.13");
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("expands wildcards newest first and ignores missing folders", () => {
    const root = tempDir("glob");
    try {
      for (const v of ["python3.9", "python3.12", "python3.10"]) mkdirSync(join(root, v, "lib"), { recursive: true });
      assert.deepEqual(
        expandPattern(`${root}/python3*/lib`),
        ["python3.12", "python3.10", "python3.9"].map((v) => join(root, v, "lib")),
      );
      assert.deepEqual(expandPattern(`${root}/nothing*/lib`), []);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("finds NVRTC's builtins beside it, and says where it looked when they are missing", () => {
    const root = tempDir("builtins");
    try {
      const nvrtc = touch(join(root, "libnvrtc.so.13"));
      assert.throws(
        () => findNvrtcBuiltins(nvrtc, 13, 0, { dirs: [] }),
        (err: unknown) =>
          err instanceof LibraryNotFoundError && /libnvrtc-builtins\.so\.13\.0/.test(err.message) && err.message.includes(root),
      );
      touch(join(root, "libnvrtc-builtins.alt.so.13.0"));
      touch(join(root, "libnvrtc-builtins.so.13.0"));
      assert.equal(findNvrtcBuiltins(nvrtc, 13, 0, { dirs: [] }), join(root, "libnvrtc-builtins.so.13.0"));
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("a file named libcuda.so.1 that is not a library fails with an error naming the file, not a crash", () => {
    const dir = tempDir("fake-elf");
    try {
      const path = touch(join(dir, "libcuda.so.1"), "this is not an ELF file\n");
      assert.equal(findLibrary("cuda", { dirs: [dir] }).path, path);
      assert.throws(
        () => CudaDriver.load({ dirs: [dir] }),
        (err: unknown) =>
          err instanceof LibraryLoadError &&
          err.path === path &&
          err.message.includes(path) &&
          /expected a shared library/.test(err.message),
      );
      const selection = selectDevice("auto", { dirs: [dir] });
      assert.equal(selection.kind, "cpu");
      assert.ok(selection.reason.includes(path), selection.reason);
      assert.throws(
        () => selectDevice("cuda", { dirs: [dir] }),
        (err: unknown) => err instanceof DeviceUnavailableError && err.message.includes(path),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ------------------------------------------------------------------ device selection

describe("selectDevice", () => {
  it("auto falls back to the CPU with a reason naming libcuda", { skip: realDriver ? `libcuda found at ${realDriver}` : false }, () => {
    const selection = selectDevice("auto");
    assert.equal(selection.kind, "cpu");
    assert.match(selection.reason, /libcuda\.so\.1/);
    assert.match(selection.reason, /install the NVIDIA driver/);
  });

  it("cuda requested but unavailable throws with that reason", { skip: realDriver ? `libcuda found at ${realDriver}` : false }, () => {
    const reason = selectDevice("auto").reason;
    assert.throws(
      () => selectDevice("cuda"),
      (err: unknown) => err instanceof DeviceUnavailableError && err.message.includes(reason) && err.selection.kind === "cpu",
    );
  });

  it("cpu needs nothing, and an unknown request is rejected", () => {
    assert.deepEqual(selectDevice("cpu"), { kind: "cpu", reason: "--device cpu was requested" });
    assert.throws(() => selectDevice("gpu" as "cuda"), /unknown device "gpu"; expected one of auto, cpu, cuda/);
  });

  it("formats CUDA versions", () => {
    assert.equal(formatCudaVersion(13000), "13.0");
    assert.equal(formatCudaVersion(12040), "12.4");
  });
});

// ------------------------------------------------------------------ errors

describe("CudaError", () => {
  const names = {
    name: (c: number) => ({ 2: "CUDA_ERROR_OUT_OF_MEMORY", 100: "CUDA_ERROR_NO_DEVICE" })[c] ?? null,
    describe: (c: number) => ({ 2: "out of memory", 100: "no CUDA-capable device is detected" })[c] ?? null,
  };

  it("names the function, the status and its description", () => {
    const err = cudaError("driver", "cuMemAlloc_v2", 2, names);
    assert.ok(err instanceof CudaError);
    assert.equal(err.message, "cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory)");
    assert.equal(err.code, 2);
    assert.equal(err.codeName, "CUDA_ERROR_OUT_OF_MEMORY");
    assert.equal(err.fn, "cuMemAlloc_v2");
  });

  it("adds what was being done, and survives unknown codes and failing lookups", () => {
    assert.equal(
      cudaError("driver", "cuMemAlloc_v2", 2, names, "allocating 2.0 GiB").message,
      "cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory) while allocating 2.0 GiB",
    );
    assert.equal(cudaError("driver", "cuInit", 999, names).message, "cuInit failed: status 999");
    const throwing = {
      name: () => {
        throw new Error("boom");
      },
      describe: () => null,
    };
    assert.equal(cudaError("nvrtc", "nvrtcCompileProgram", 6, throwing).message, "nvrtcCompileProgram failed: status 6");
  });
});

// ------------------------------------------------------------------ kernel arguments

describe("KernelArgs", () => {
  it("packs each argument at its natural alignment and points kernelParams at the values", () => {
    const types = ["ptr", "i32", "f32", "ptr", "i32", "f64", "u64", { bytes: 12, align: 4 }, "i64", "u32"] as const;
    const args = new KernelArgs(types);
    assert.deepEqual(args.offsets, [0, 8, 12, 16, 24, 32, 40, 48, 64, 72]);
    const struct = new Uint8Array(12).map((_, i) => i + 1);
    args.setAll([new DevicePtr(0x7f0000001000n, 64), -5, 1.5, 0xdeadbeef00n, 2147483647, Math.PI, 2n ** 63n + 7n, struct, -9n, 4294967295]);
    const view = new DataView(args.packed.buffer, args.packed.byteOffset, args.packed.byteLength);
    assert.equal(view.getBigUint64(0, true), 0x7f0000001000n);
    assert.equal(view.getInt32(8, true), -5);
    assert.equal(view.getFloat32(12, true), 1.5);
    assert.equal(view.getBigUint64(16, true), 0xdeadbeef00n);
    assert.equal(view.getInt32(24, true), 2147483647);
    assert.equal(view.getFloat64(32, true), Math.PI);
    assert.equal(view.getBigUint64(40, true), 2n ** 63n + 7n);
    assert.deepEqual(args.packed.subarray(48, 60), struct);
    assert.equal(view.getBigInt64(64, true), -9n);
    assert.equal(view.getUint32(72, true), 4294967295);

    // pointers[i] is the native address of argument i's value: read through it as the driver would.
    const base = koffi.address(args.packed);
    args.offsets.forEach((offset, i) => assert.equal(args.pointers[i], base + BigInt(offset)));
    assert.equal(koffi.decode(args.pointers[1]!, "int32_t"), -5);
    assert.equal(koffi.decode(args.pointers[2]!, "float"), 1.5);
    assert.equal(BigInt(koffi.decode(args.pointers[3]!, "uint64_t") as number | bigint), 0xdeadbeef00n);
    assert.equal(koffi.address(args.pointers), args.address);
    assert.equal(base % 8n, 0n);
  });

  it("updates in place without moving (what a captured graph and a reused launch rely on)", () => {
    const args = KernelArgs.pack(["ptr", "i32", "f32"], [1n, 2, 3]);
    const before = [args.address, ...args.pointers];
    args.setPtr(0, 0x1234n).setI32(1, 42).setF32(2, -0.25);
    assert.deepEqual([args.address, ...args.pointers], before);
    assert.equal(koffi.decode(args.pointers[1]!, "int32_t"), 42);
    assert.equal(koffi.decode(args.pointers[2]!, "float"), -0.25);
  });

  it("rejects values that do not fit the declared types", () => {
    const args = new KernelArgs(["ptr", "i32", "f32", { bytes: 8, align: 8 }]);
    assert.throws(() => args.setI32(2, 1), /argument 2 is declared f32; expected a i32 argument/);
    assert.throws(() => args.setI32(1, 2 ** 31), /expected an integer in int32 range/);
    assert.throws(() => args.setI32(1, 1.5), /expected an integer in int32 range/);
    assert.throws(() => args.set(0, 5), /argument 0 is declared ptr; expected a device pointer/);
    assert.throws(() => args.set(3, new Uint8Array(4)), /8-byte struct; got 4 bytes/);
    assert.throws(() => args.set(7, 1), /argument 7 does not exist; the kernel takes 4/);
    assert.throws(() => args.setAll([1n]), /got 1 values for 4 arguments/);
    assert.throws(() => new KernelArgs([{ bytes: 4, align: 3 }]), /power-of-two alignment/);
    assert.throws(() => new KernelArgs(["float" as "f32"]), /unknown type "float"/);
  });
});

// ------------------------------------------------------------------ kernel cache

function fakeCompiler(id = "fake-1.0"): KernelCompiler & { calls: number } {
  const compiler = {
    id,
    calls: 0,
    compile(source: string, opts: CompileOptions): CompiledKernels {
      compiler.calls++;
      const loweredNames = Object.fromEntries((opts.nameExpressions ?? []).map((e) => [e, `_Z_${e.replace(/\W/g, "_")}`]));
      return { image: new TextEncoder().encode(`CUBIN(${opts.arch}):${source}`), kind: "cubin", arch: opts.arch, loweredNames, log: "" };
    },
  };
  return compiler;
}

describe("kernel compile cache", () => {
  const opts: CompileOptions = { name: "k.cu", arch: "sm_90a", options: ["-std=c++17"], nameExpressions: ["k<128>"] };
  let dir: string;
  let warnings: string[];
  before(() => {
    dir = tempDir("kcache");
  });
  after(() => rmSync(dir, { recursive: true, force: true }));
  const newCache = (compiler: KernelCompiler, cacheDir = dir) => {
    warnings = [];
    return new KernelCache({ compiler, dir: cacheDir, onWarning: (m) => warnings.push(m) });
  };

  it("compiles once: a second start reads the entry from disk", () => {
    const compiler = fakeCompiler();
    const first = newCache(compiler).get("__global__ void k() {}", opts);
    assert.equal(first.fromCache, false);
    const cache2 = newCache(compiler);
    const second = cache2.get("__global__ void k() {}", opts);
    const third = cache2.get("__global__ void k() {}", opts);
    assert.equal(compiler.calls, 1);
    assert.equal(second.fromCache, true);
    assert.equal(third.fromCache, true);
    assert.deepEqual(second.image, first.image);
    assert.deepEqual(second.loweredNames, { "k<128>": "_Z_k_128_" });
    assert.deepEqual(cache2.stats, { hits: 2, compiles: 0, corrupt: 0, writeFailures: 0 });
    assert.deepEqual(warnings, []);
  });

  it("keys on source, headers, options, arch, name expressions and compiler version", () => {
    const base = kernelCacheKey("src", { ...opts, headers: { "a.h": "A", "b.h": "B" } }, "nvrtc-13.0");
    assert.match(base, /^[0-9a-f]{64}$/);
    const variants = [
      kernelCacheKey("src2", { ...opts, headers: { "a.h": "A", "b.h": "B" } }, "nvrtc-13.0"),
      kernelCacheKey("src", { ...opts, headers: { "a.h": "A", "b.h": "B2" } }, "nvrtc-13.0"),
      kernelCacheKey("src", { ...opts, headers: { "a.h": "A", "b.h": "B" }, options: ["-std=c++20"] }, "nvrtc-13.0"),
      kernelCacheKey("src", { ...opts, headers: { "a.h": "A", "b.h": "B" }, arch: "sm_80" }, "nvrtc-13.0"),
      kernelCacheKey("src", { ...opts, headers: { "a.h": "A", "b.h": "B" }, nameExpressions: ["k<64>"] }, "nvrtc-13.0"),
      kernelCacheKey("src", { ...opts, headers: { "a.h": "A", "b.h": "B" } }, "nvrtc-12.4"),
    ];
    assert.equal(new Set([base, ...variants]).size, variants.length + 1);
    // The order headers are listed in does not matter.
    assert.equal(kernelCacheKey("src", { ...opts, headers: { "b.h": "B", "a.h": "A" } }, "nvrtc-13.0"), base);

    const compiler = fakeCompiler();
    const cache = newCache(compiler);
    cache.get("x", opts);
    cache.get("x", { ...opts, arch: "sm_80" });
    cache.get("x", { ...opts, options: ["-O3"] });
    cache.get("y", opts);
    assert.equal(compiler.calls, 4);
  });

  it("detects corrupted entries (garbage, truncation, flipped image byte, wrong key) and recompiles", () => {
    const source = "__global__ void corrupt_me() {}";
    const compiler = fakeCompiler();
    const first = newCache(compiler).get(source, opts);
    const path = newCache(compiler).entryPath(first.key);
    const good = readFileSync(path);
    const damaged: [string, Buffer, RegExp][] = [
      ["garbage", Buffer.from("not a kernel cache entry"), /bad magic/],
      ["truncated", good.subarray(0, good.length - 3), /image is \d+ bytes; expected/],
      ["flipped", Buffer.concat([good.subarray(0, good.length - 1), Buffer.from([good[good.length - 1]! ^ 0xff])]), /checksum mismatch/],
      ["other key", encodeEntry("f".repeat(64), compiler.id, first), /entry is for key ffffffffffff/],
    ];
    for (const [what, bytes, expected] of damaged) {
      writeFileSync(path, bytes);
      const cache = newCache(compiler);
      const calls = compiler.calls;
      const again = cache.get(source, opts);
      assert.equal(compiler.calls, calls + 1, what);
      assert.equal(again.fromCache, false, what);
      assert.deepEqual(again.image, first.image, what);
      assert.equal(cache.stats.corrupt, 1, what);
      assert.equal(warnings.length, 1, what);
      assert.ok(warnings[0]!.includes(path), what);
      assert.match(warnings[0]!, expected, what);
      assert.deepEqual(readFileSync(path), good, `${what}: the entry was rewritten`);
    }
  });

  it("writes atomically: no temporary file is left, and a stale one from a crashed writer is ignored", () => {
    const cacheDir = join(dir, "atomic");
    const compiler = fakeCompiler();
    const first = newCache(compiler, cacheDir).get("atomic", opts);
    assert.deepEqual(readdirSync(cacheDir), [`${first.key}.kernel`]);
    writeFileSync(join(cacheDir, `${first.key}.kernel.999.abcdef.tmp`), "half-written");
    const again = newCache(compiler, cacheDir).get("atomic", opts);
    assert.equal(again.fromCache, true);
    assert.equal(compiler.calls, 1);
  });

  it("still returns kernels when the cache folder cannot be written", () => {
    const blocker = join(dir, "not-a-folder");
    writeFileSync(blocker, "");
    const compiler = fakeCompiler();
    const cache = newCache(compiler, join(blocker, "kernels"));
    const result = cache.get("unwritable", opts);
    assert.equal(result.fromCache, false);
    assert.equal(cache.stats.writeFailures, 1);
    assert.match(warnings[0]!, /cannot write .* will be compiled again next start/);
  });

  it("lives in $TOKAMAK_CACHE_DIR, else $XDG_CACHE_HOME, else ~/.cache", () => {
    assert.equal(defaultKernelCacheDir({ TOKAMAK_CACHE_DIR: "/c", XDG_CACHE_HOME: "/x" }, "/h"), "/c/kernels");
    assert.equal(defaultKernelCacheDir({ XDG_CACHE_HOME: "/x" }, "/h"), "/x/tokamak/kernels");
    assert.equal(defaultKernelCacheDir({}, "/h"), "/h/.cache/tokamak/kernels");
  });
});

// ------------------------------------------------------------------ driver bindings against a fake libcuda

// A stand-in for libcuda.so.1 exporting every symbol the bindings use: "device" memory is host
// memory, the kernel "axpy" runs on the CPU, and graph capture records launches to replay.
const FAKE_LIBCUDA = String.raw`
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef int CUresult;
typedef unsigned long long CUdeviceptr;
static int init_result = 0, device_count = 1, capturing = 0;
static unsigned last_launch[7];
typedef struct { float *y; const float *x; float a; int n; } axpy_args;
typedef struct { int count; axpy_args launches[16]; } graph;
static graph *capture_graph;
void fakeSetInitResult(int r) { init_result = r; }
void fakeSetDeviceCount(int n) { device_count = n; }
void fakeLastLaunch(unsigned *out) { memcpy(out, last_launch, sizeof last_launch); }
CUresult cuGetErrorName(CUresult e, const char **s) {
  switch (e) {
    case 0: *s = "CUDA_SUCCESS"; return 0;
    case 1: *s = "CUDA_ERROR_INVALID_VALUE"; return 0;
    case 2: *s = "CUDA_ERROR_OUT_OF_MEMORY"; return 0;
    case 100: *s = "CUDA_ERROR_NO_DEVICE"; return 0;
    case 101: *s = "CUDA_ERROR_INVALID_DEVICE"; return 0;
    case 200: *s = "CUDA_ERROR_INVALID_IMAGE"; return 0;
    case 500: *s = "CUDA_ERROR_NOT_FOUND"; return 0;
    default: *s = 0; return 1;
  }
}
CUresult cuGetErrorString(CUresult e, const char **s) {
  switch (e) {
    case 2: *s = "out of memory"; return 0;
    case 100: *s = "no CUDA-capable device is detected"; return 0;
    case 200: *s = "device kernel image is invalid"; return 0;
    case 500: *s = "named symbol not found"; return 0;
    default: return cuGetErrorName(e, s);
  }
}
CUresult cuInit(unsigned flags) { return flags ? 1 : init_result; }
CUresult cuDriverGetVersion(int *v) { *v = 13000; return 0; }
CUresult cuDeviceGetCount(int *c) { *c = device_count; return 0; }
CUresult cuDeviceGet(int *d, int ordinal) { if (ordinal < 0 || ordinal >= device_count) return 101; *d = ordinal; return 0; }
CUresult cuDeviceGetName(char *name, int len, int dev) { snprintf(name, len, "Fake GPU %d", dev); return 0; }
CUresult cuDeviceGetAttribute(int *v, int attr, int dev) {
  switch (attr) {
    case 1: *v = 1024; return 0;
    case 8: *v = 49152; return 0;
    case 10: *v = 32; return 0;
    case 16: *v = 132; return 0;
    case 33: *v = dev + 1; return 0;
    case 36: *v = 2619000; return 0;
    case 37: *v = 5120; return 0;
    case 38: *v = 50331648; return 0;
    case 75: *v = 9; return 0;
    case 76: *v = 0; return 0;
    case 81: *v = 233472; return 0;
    case 97: *v = 232448; return 0;
    default: return 1;
  }
}
CUresult cuDeviceTotalMem_v2(size_t *b, int dev) { *b = 85899345920ull; return 0; }
CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) { *ctx = (void *)(uintptr_t)(0x1000 + dev); return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int dev) { return 0; }
CUresult cuCtxSetCurrent(void *ctx) { return ctx ? 0 : 1; }
CUresult cuCtxSynchronize(void) { return 0; }
CUresult cuModuleLoadData(void **m, const void *image) { if (memcmp(image, "FAKECUBIN", 9)) return 200; *m = malloc(1); return 0; }
CUresult cuModuleUnload(void *m) { free(m); return 0; }
CUresult cuModuleGetFunction(void **f, void *m, const char *name) { if (strcmp(name, "axpy")) return 500; *f = (void *)1; return 0; }
CUresult cuMemGetInfo_v2(size_t *free_, size_t *total) { *free_ = 75161927680ull; *total = 85899345920ull; return 0; }
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) { if (n > (1ull << 40)) return 2; *p = (CUdeviceptr)(uintptr_t)calloc(1, n); return 0; }
CUresult cuMemFree_v2(CUdeviceptr p) { free((void *)(uintptr_t)p); return 0; }
CUresult cuMemHostAlloc(void **p, size_t n, unsigned flags) { *p = calloc(1, n); return 0; }
CUresult cuMemFreeHost(void *p) { free(p); return 0; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *s, size_t n, void *st) { memcpy((void *)(uintptr_t)d, s, n); return 0; }
CUresult cuMemcpyDtoHAsync_v2(void *d, CUdeviceptr s, size_t n, void *st) { memcpy(d, (void *)(uintptr_t)s, n); return 0; }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void *st) { memcpy((void *)(uintptr_t)d, (void *)(uintptr_t)s, n); return 0; }
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void *st) { memset((void *)(uintptr_t)d, v, n); return 0; }
CUresult cuMemsetD32Async(CUdeviceptr d, unsigned v, size_t n, void *st) { unsigned *p = (unsigned *)(uintptr_t)d; for (size_t i = 0; i < n; i++) p[i] = v; return 0; }
CUresult cuStreamCreate(void **s, unsigned flags) { *s = malloc(1); return 0; }
CUresult cuStreamDestroy_v2(void *s) { free(s); return 0; }
CUresult cuStreamSynchronize(void *s) { return 0; }
CUresult cuEventCreate(void **e, unsigned flags) { *e = calloc(1, sizeof(int)); return 0; }
static int clock_ticks = 0;
CUresult cuEventRecord(void *e, void *s) { *(int *)e = ++clock_ticks; return 0; }
CUresult cuEventSynchronize(void *e) { return 0; }
CUresult cuEventElapsedTime(float *ms, void *a, void *b) { *ms = 0.5f * (*(int *)b - *(int *)a); return 0; }
CUresult cuEventDestroy_v2(void *e) { free(e); return 0; }
CUresult cuFuncSetAttribute(void *f, int attr, int value) { return attr == 8 && value > 232448 ? 1 : 0; }
static void run_axpy(axpy_args a) { for (int i = 0; i < a.n; i++) a.y[i] += a.a * a.x[i]; }
CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, void *stream, void **params, void **extra) {
  unsigned dims[7] = {gx, gy, gz, bx, by, bz, smem};
  memcpy(last_launch, dims, sizeof dims);
  if (f != (void *)1 || !params || extra) return 1;
  axpy_args a = { *(float **)params[0], *(const float **)params[1], *(float *)params[2], *(int *)params[3] };
  if (capturing) { if (capture_graph->count == 16) return 2; capture_graph->launches[capture_graph->count++] = a; return 0; }
  run_axpy(a);
  return 0;
}
CUresult cuStreamBeginCapture_v2(void *s, int mode) { if (capturing) return 1; capturing = 1; capture_graph = calloc(1, sizeof(graph)); return 0; }
CUresult cuStreamEndCapture(void *s, void **g) { if (!capturing) return 1; capturing = 0; *g = capture_graph; return 0; }
CUresult cuGraphInstantiateWithFlags(void **e, void *g, unsigned long long flags) { *e = g; return 0; }
CUresult cuGraphLaunch(void *e, void *s) { graph *g = e; for (int i = 0; i < g->count; i++) run_axpy(g->launches[i]); return 0; }
CUresult cuGraphExecDestroy(void *e) { return 0; }
CUresult cuGraphDestroy(void *g) { free(g); return 0; }
`;

describe(
  "driver bindings (fake libcuda.so.1 built with cc)",
  { skip: hasCc ? false : "no C compiler (cc) to build the fake libcuda" },
  () => {
    let dir: string;
    let drv: CudaDriver;
    let fake: { setInitResult: (r: number) => void; setDeviceCount: (n: number) => void; lastLaunch: (out: Uint32Array) => void };

    before(() => {
      dir = tempDir("fake-cuda");
      writeFileSync(join(dir, "fake_cuda.c"), FAKE_LIBCUDA);
      execFileSync("cc", ["-shared", "-fPIC", "-O1", "-o", join(dir, "libcuda.so.1"), join(dir, "fake_cuda.c")]);
      const lib = koffi.load(join(dir, "libcuda.so.1"));
      fake = {
        setInitResult: lib.func("void fakeSetInitResult(int)"),
        setDeviceCount: lib.func("void fakeSetDeviceCount(int)"),
        lastLaunch: lib.func("void fakeLastLaunch(void *)"),
      };
      drv = CudaDriver.load({ dirs: [dir] });
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    it("selectDevice reports cuInit failures and a missing GPU, without crashing", () => {
      fake.setInitResult(100);
      const noDevice = selectDevice("auto", { dirs: [dir] });
      assert.equal(noDevice.kind, "cpu");
      assert.match(
        noDevice.reason,
        /^cuInit failed: CUDA_ERROR_NO_DEVICE \(no CUDA-capable device is detected\): the driver at .*libcuda\.so\.1 sees no GPU/,
      );
      assert.throws(
        () => selectDevice("cuda", { dirs: [dir] }),
        /--device cuda was requested but CUDA cannot be used: cuInit failed: CUDA_ERROR_NO_DEVICE/,
      );
      fake.setInitResult(0);
      fake.setDeviceCount(0);
      assert.match(selectDevice("auto", { dirs: [dir] }).reason, /reports no GPU/);
      fake.setDeviceCount(1);
    });

    it("with a working driver but no NVRTC, auto says NVRTC is what is missing", () => {
      const selection = probeCuda({ dirs: [dir] });
      assert.equal(selection.kind, "cpu");
      assert.equal(selection.libraries?.cuda, join(dir, "libcuda.so.1"));
      assert.equal(selection.versions?.driver, "13.0");
      assert.match(
        selection.reason,
        /^NVRTC \(the CUDA runtime compiler\) is unavailable: no libnvrtc\.so\.13 found .*pip install nvidia-cuda-nvrtc-cu12/,
      );
    });

    it("reads device properties", () => {
      drv.init();
      assert.equal(drv.driverVersion(), 13000);
      assert.equal(drv.deviceCount(), 1);
      const p = drv.deviceProperties(0);
      assert.equal(p.name, "Fake GPU 0");
      assert.deepEqual(p.computeCapability, { major: 9, minor: 0 });
      assert.equal(p.multiprocessorCount, 132);
      assert.equal(p.maxSharedMemoryPerBlockOptin, 232448);
      assert.equal(p.l2CacheBytes, 48 * 2 ** 20);
      assert.equal(p.totalMemoryBytes, 80 * 2 ** 30);
      assert.equal(p.peakMemoryBandwidthBytesPerSec, 2 * 2619000e3 * 640);
      assert.throws(
        () => drv.deviceProperties(3),
        /^CudaError: cuDeviceGet failed: CUDA_ERROR_INVALID_DEVICE while getting device 3 of 1 device\(s\)$/m,
      );
    });

    it("allocates, copies both ways, sets memory, and reports errors with the driver's names", () => {
      const ctx = drv.retainPrimaryContext(0);
      const stream = drv.streamCreate();
      const buf = drv.memAlloc(64);
      drv.memcpyHtoDAsync(buf, new Float32Array([1, 2, 3, 4]), 16, stream);
      const back = new Float32Array(4);
      drv.memcpyDtoHAsync(back, buf, 16, stream);
      assert.deepEqual(Array.from(back), [1, 2, 3, 4]);
      drv.memsetD32Async(buf.offset(4, 8), new Uint32Array(new Float32Array([7.5]).buffer)[0]!, 2, stream);
      drv.memsetD8Async(buf.offset(16), 0xab, 4, stream);
      const copy = drv.memAlloc(64);
      drv.memcpyDtoDAsync(copy, buf, 64, stream);
      const pinned = drv.memHostAlloc(64);
      drv.memcpyDtoHAsync(pinned, copy, 64, stream);
      drv.streamSynchronize(stream);
      const f = new Float32Array(pinned.view.buffer, pinned.view.byteOffset, 4);
      assert.deepEqual(Array.from(f), [1, 7.5, 7.5, 4]);
      assert.deepEqual(Array.from(pinned.view.subarray(16, 21)), [0xab, 0xab, 0xab, 0xab, 0]);
      assert.deepEqual(drv.memGetInfo(), { free: 70 * 2 ** 30, total: 80 * 2 ** 30 });

      assert.throws(
        () => drv.memAlloc(2 ** 41),
        (err: unknown) =>
          err instanceof CudaError &&
          err.message ===
            "cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory) while allocating 2.0 TiB (70.0 GiB free of 80.0 GiB)",
      );
      assert.throws(
        () => drv.memcpyHtoDAsync(buf, new Uint8Array(128)),
        /128 bytes do not fit DevicePtr\(0x[0-9a-f]+, 64 B\); expected at most 64/,
      );
      assert.throws(() => drv.memAlloc(0), /expected a positive integer/);
      assert.throws(() => drv.streamDestroy(Stream.NULL), /default stream/);

      drv.memFreeHost(pinned);
      drv.memFree(copy);
      drv.memFree(buf);
      drv.streamDestroy(stream);
      drv.ctxSynchronize();
      drv.releasePrimaryContext(ctx);
    });

    it("loads a module and launches with pre-packed arguments; graph capture replays the recorded values", () => {
      drv.retainPrimaryContext(0);
      assert.throws(
        () => drv.moduleLoadData(new Uint8Array([1, 2, 3]), "junk.cubin"),
        /cuModuleLoadData failed: CUDA_ERROR_INVALID_IMAGE \(device kernel image is invalid\) while loading junk\.cubin/,
      );
      const mod = drv.moduleLoadData(new TextEncoder().encode("FAKECUBIN"));
      assert.throws(
        () => drv.moduleGetFunction(mod, "nope"),
        /cuModuleGetFunction failed: CUDA_ERROR_NOT_FOUND \(named symbol not found\) while looking up kernel "nope"/,
      );
      const axpy = drv.moduleGetFunction(mod, "axpy");
      drv.funcSetMaxDynamicSharedMemory(axpy, 200 * 1024);
      assert.throws(() => drv.funcSetMaxDynamicSharedMemory(axpy, 300 * 1024), /cuFuncSetAttribute failed: CUDA_ERROR_INVALID_VALUE/);

      const n = 8;
      const y = drv.memAlloc(n * 4);
      const x = drv.memAlloc(n * 4);
      drv.memcpyHtoDAsync(
        x,
        new Float32Array(n).map((_, i) => i),
      );
      const args = KernelArgs.pack(["ptr", "ptr", "f32", "i32"], [y, x, 2, n]);
      const stream = drv.streamCreate();
      drv.launch(axpy, [3, 2], 128, 1024, stream, args);
      const dims = new Uint32Array(7);
      fake.lastLaunch(dims);
      assert.deepEqual(Array.from(dims), [3, 2, 1, 128, 1, 1, 1024]);
      const out = new Float32Array(n);
      drv.memcpyDtoHAsync(out, y);
      assert.deepEqual(Array.from(out), [0, 2, 4, 6, 8, 10, 12, 14]);

      drv.streamBeginCapture(stream);
      args.setF32(2, 1);
      drv.launch(axpy, 1, 32, 0, stream, args);
      args.setF32(2, 100); // after capture: the graph keeps the captured value
      const graph = drv.streamEndCapture(stream);
      const exec = drv.graphInstantiate(graph);
      drv.memcpyDtoHAsync(out, y);
      assert.deepEqual(Array.from(out), [0, 2, 4, 6, 8, 10, 12, 14], "nothing ran during capture");
      drv.graphLaunch(exec, stream);
      drv.graphLaunch(exec, stream);
      drv.memcpyDtoHAsync(out, y);
      assert.deepEqual(Array.from(out), [0, 4, 8, 12, 16, 20, 24, 28]);
      drv.graphExecDestroy(exec);
      drv.graphDestroy(graph);

      const start = drv.eventCreate(CU_EVENT_DEFAULT);
      const end = drv.eventCreate(CU_EVENT_DEFAULT);
      drv.eventRecord(start, stream);
      drv.eventRecord(end, stream);
      drv.eventSynchronize(end);
      assert.equal(drv.eventElapsedMs(start, end), 0.5);
      assert.equal(drv.symbols.cuEventElapsedTime, "cuEventElapsedTime", "falls back to the pre-12.8 symbol");
      drv.eventDestroy(start);
      drv.eventDestroy(end);
      drv.moduleUnload(mod);
    });

    it("a launch error names the kernel and its configuration", () => {
      const mod = drv.moduleLoadData(new TextEncoder().encode("FAKECUBIN"));
      const axpy = drv.moduleGetFunction(mod, "axpy");
      const badFunc = new (axpy.constructor as typeof import("../src/backend/cuda/ffi/driver.js").Func)(2n, "broken_kernel", mod);
      assert.throws(
        () => drv.launch(badFunc, [4, 1, 1], [64, 2], 0, Stream.NULL, new KernelArgs([])),
        /^CudaError: cuLaunchKernel failed: CUDA_ERROR_INVALID_VALUE while launching broken_kernel with grid \[4, 1, 1\], block \[64, 2, 1\], 0 B shared$/m,
      );
    });

    it(
      "with NVRTC and cuBLASLt also present, auto selects CUDA and describes the device",
      { skip: realNvrtc && realCublasLt ? false : "NVRTC or cuBLASLt not installed" },
      () => {
        const selection = probeCuda({ dirs: [dir, join(realNvrtc!, ".."), join(realCublasLt!, "..")] });
        assert.equal(selection.kind, "cuda", selection.reason);
        assert.match(
          selection.reason,
          /^found 1 CUDA device: Fake GPU 0 \(sm_90a, 132 SMs, 80\.0 GiB\); driver CUDA 13\.0, NVRTC \d+\.\d+, cuBLASLt \d+\.\d+\.\d+$/,
        );
        assert.equal(selection.devices![0]!.compileTarget, "sm_90a");
        assert.equal(selection.libraries!.nvrtc, realNvrtc);
      },
    );
  },
);

// ------------------------------------------------------------------ NVRTC (no GPU needed)

const KERNELS = String.raw`
#include "scale.h"
template <int BLOCK>
__global__ void scale(float *x, float a, int n) {
  int i = blockIdx.x * BLOCK + threadIdx.x;
  if (i < n) x[i] = apply_scale(x[i], a);
}
extern "C" __global__ void axpy(float *y, const float *x, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] += a * x[i];
}
`;
const HEADERS = { "scale.h": "__device__ inline float apply_scale(float v, float a) { return v * a; }" };

describe("NVRTC", { skip: realNvrtc ? false : "NVRTC not installed (install a CUDA toolkit or pip install nvidia-cuda-nvrtc)" }, () => {
  it("compiles to a cubin with header sources and lowered template names", () => {
    const nvrtc = Nvrtc.load();
    assert.match(nvrtc.versionString, /^\d+\.\d+$/);
    assert.ok(nvrtc.builtinsPath.includes("libnvrtc-builtins"));
    assert.ok(nvrtc.supportedArchs.includes(90));
    const out = nvrtc.compile(KERNELS, {
      name: "kernels.cu",
      arch: "sm_90a",
      options: ["-std=c++17"],
      headers: HEADERS,
      nameExpressions: ["scale<256>"],
    });
    assert.equal(out.kind, "cubin");
    assert.deepEqual(Array.from(out.image.subarray(0, 4)), [0x7f, 0x45, 0x4c, 0x46], "an ELF cubin");
    assert.equal(out.loweredNames["scale<256>"], "_Z5scaleILi256EEvPffi");
  });

  it("compiles to NUL-terminated PTX for a virtual architecture", () => {
    const out = Nvrtc.load().compile(KERNELS, { name: "kernels.cu", arch: "compute_80", headers: HEADERS });
    assert.equal(out.kind, "ptx");
    assert.equal(out.image[out.image.length - 1], 0);
    assert.match(Buffer.from(out.image).toString("utf8"), /\.entry axpy/);
  });

  it("throws with the full compile log", () => {
    assert.throws(
      () => Nvrtc.load().compile("__global__ void broken() { int x = ; undefined_fn(); }", { name: "broken.cu", arch: "sm_90a" }),
      (err: unknown) =>
        err instanceof NvrtcCompileError &&
        /^NVRTC could not compile broken\.cu for sm_90a \(NVRTC_ERROR_COMPILATION\); options: --gpu-architecture=sm_90a\n/.test(
          err.message,
        ) &&
        /broken\.cu\(1\): error: expected an expression/.test(err.message) &&
        /identifier "undefined_fn" is undefined/.test(err.log),
    );
    assert.throws(
      () => Nvrtc.load().compile("", { name: "x.cu", arch: "sm_90x" }),
      /arch "sm_90x" is not an NVRTC target; expected e\.g\. "sm_90a"/,
    );
    assert.throws(
      () => Nvrtc.load().compile("", { name: "x.cu", arch: "sm_11" }),
      /cannot compile for sm_11: it supports sm_\d+\.\.sm_\d+/,
    );
  });

  it("picks the compile target for a GPU", () => {
    const archs = Nvrtc.load().supportedArchs;
    assert.equal(compileTargetFor(9, 0, archs), "sm_90a");
    assert.equal(compileTargetFor(8, 6, archs), "sm_86");
    assert.equal(compileTargetFor(99, 9, [80, 90]), "compute_90");
    assert.throws(() => compileTargetFor(7, 0, [80, 90]), /none of which runs on compute capability 7\.0/);
  });

  it("through the kernel cache, a second start loads the cubin from disk", () => {
    const dir = tempDir("nvrtc-cache");
    try {
      const compiler = nvrtcCompiler(Nvrtc.load());
      const opts = { name: "kernels.cu", arch: "sm_90a", headers: HEADERS, nameExpressions: ["scale<128>"] };
      const first = new KernelCache({ compiler, dir }).get(KERNELS, opts);
      const second = new KernelCache({ compiler, dir }).get(KERNELS, opts);
      assert.equal(first.fromCache, false);
      assert.equal(second.fromCache, true);
      assert.deepEqual(second.image, first.image);
      assert.deepEqual(second.loweredNames, first.loweredNames);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ------------------------------------------------------------------ cuBLASLt (descriptors need no GPU)

describe(
  "cuBLASLt",
  { skip: realCublasLt ? false : "cuBLASLt not installed (install a CUDA toolkit or pip install nvidia-cublas)" },
  () => {
    it("reports its version and accepts the linear-layer descriptors with correctly sized attributes", () => {
      const lt = CublasLt.load();
      assert.match(lt.versionString, /^\d+\.\d+\.\d+$/);
      for (const dtype of ["bf16", "f16", "f32"] as const) {
        const d = createLinearDescriptors(lt, dtype, linearLayout(7, 4096, 1024, 1024, 1024, 4096), 0x7f0000000000n);
        lt.matrixLayoutSetAttribute(d.a, CUBLASLT_MATRIX_LAYOUT.BATCH_COUNT, "i32", 1);
        lt.matrixLayoutSetAttribute(d.a, CUBLASLT_MATRIX_LAYOUT.STRIDED_BATCH_OFFSET, "i64", 0);
        destroyDescriptors(lt, d);
      }
      // A wrongly sized attribute is refused, with cuBLASLt's own status name.
      const desc = lt.matmulDescCreate(68, 0);
      assert.throws(
        () => lt.matmulDescSetAttribute(desc, 3, "i64", 1),
        /cublasLtMatmulDescSetAttribute failed: CUBLAS_STATUS_INVALID_VALUE/,
      );
      lt.matmulDescDestroy(desc);
    });

    it("maps a row-major linear layer onto column-major TN", () => {
      assert.deepEqual(linearLayout(5, 64, 32, 32, 32, 64), {
        transA: 1,
        transB: 0,
        a: { rows: 32, cols: 64, ld: 32 },
        b: { rows: 32, cols: 5, ld: 32 },
        d: { rows: 64, cols: 5, ld: 64 },
      });
      assert.equal(HEURISTIC_RESULT_BYTES, 96);
    });

    it("cublasLtCreate without a CUDA driver fails with a named status", { skip: realDriver ? "a CUDA driver is present" : false }, () => {
      assert.throws(() => CublasLt.load().create(), /^CudaError: cublasLtCreate failed: CUBLAS_STATUS_NOT_INITIALIZED/m);
    });
  },
);

// ------------------------------------------------------------------ on a real GPU

describe("on a CUDA GPU", { skip: realDriver ? false : NO_DRIVER }, () => {
  let drv: CudaDriver;
  before(() => {
    drv = CudaDriver.load();
    drv.init();
    drv.retainPrimaryContext(0);
  });

  it("selectDevice picks CUDA", () => {
    const selection = selectDevice("auto");
    assert.equal(selection.kind, "cuda", selection.reason);
  });

  it("copies through pinned memory and reads device properties", () => {
    const p = drv.deviceProperties(0);
    assert.ok(p.multiprocessorCount > 0 && p.totalMemoryBytes > 0, JSON.stringify(p));
    const stream = drv.streamCreate();
    const dev = drv.memAlloc(1 << 20);
    const pinned = drv.memHostAlloc(1 << 20);
    pinned.view.forEach((_, i) => (pinned.view[i] = i & 0xff));
    drv.memcpyHtoDAsync(dev, pinned, 1 << 20, stream);
    const back = new Uint8Array(1 << 20);
    drv.streamSynchronize(stream);
    drv.memcpyDtoHAsync(back, dev, 1 << 20, stream);
    assert.deepEqual(back, pinned.view);
    drv.memFreeHost(pinned);
    drv.memFree(dev);
    drv.streamDestroy(stream);
  });

  it("compiles a kernel with NVRTC, launches it, and replays it from a CUDA graph", () => {
    const p = drv.deviceProperties(0);
    const nvrtc = Nvrtc.load();
    const arch = compileTargetFor(p.computeCapability.major, p.computeCapability.minor, nvrtc.supportedArchs);
    const compiled = nvrtc.compile(KERNELS, { name: "kernels.cu", arch, headers: HEADERS });
    const mod = drv.moduleLoadData(compiled.image);
    const axpy = drv.moduleGetFunction(mod, "axpy");
    const n = 1000;
    const y = drv.memAlloc(n * 4);
    const x = drv.memAlloc(n * 4);
    drv.memcpyHtoDAsync(
      x,
      new Float32Array(n).map((_, i) => i),
    );
    drv.memsetD32Async(y, 0, n);
    const stream = drv.streamCreate();
    const args = KernelArgs.pack(["ptr", "ptr", "f32", "i32"], [y, x, 2, n]);
    drv.launch(axpy, Math.ceil(n / 256), 256, 0, stream, args);
    drv.streamBeginCapture(stream);
    drv.launch(axpy, Math.ceil(n / 256), 256, 0, stream, args);
    const graph = drv.streamEndCapture(stream);
    const exec = drv.graphInstantiate(graph);
    drv.graphLaunch(exec, stream);
    drv.streamSynchronize(stream);
    const out = new Float32Array(n);
    drv.memcpyDtoHAsync(out, y);
    out.forEach((v, i) => assert.equal(v, 4 * i));
    drv.graphExecDestroy(exec);
    drv.graphDestroy(graph);
    drv.moduleUnload(mod);
    drv.memFree(x);
    drv.memFree(y);
    drv.streamDestroy(stream);
  });

  it("LinearGemm matches a CPU reference in bf16, with bias, and caches one plan per shape", () => {
    const lt = CublasLt.load();
    const workspace = drv.memAlloc(32 << 20);
    const gemm = new LinearGemm(lt, lt.create(), workspace);
    const [m, n, k] = [5, 64, 48];
    const rnd = (i: number) => Math.sin(i * 12.9898) * 0.5;
    const xs = Array.from({ length: m * k }, (_, i) => bf16BitsToF32(f32ToBf16Bits(rnd(i))));
    const ws = Array.from({ length: n * k }, (_, i) => bf16BitsToF32(f32ToBf16Bits(rnd(i + 1000))));
    const bs = Array.from({ length: n }, (_, i) => bf16BitsToF32(f32ToBf16Bits(rnd(i + 5000))));
    const upload = (values: number[]) => {
      const ptr = drv.memAlloc(values.length * 2);
      drv.memcpyHtoDAsync(ptr, new Uint16Array(values.map(f32ToBf16Bits)));
      return ptr;
    };
    const [x, w, bias] = [upload(xs), upload(ws), upload(bs)];
    const y = drv.memAlloc(m * n * 2);
    const call = {
      dtype: "bf16" as const,
      m,
      n,
      k,
      out: y.address,
      outStride: n,
      x: x.address,
      xStride: k,
      w: w.address,
      wStride: k,
      bias: bias.address,
    };
    gemm.run(call, Stream.NULL);
    gemm.run(call, Stream.NULL);
    assert.equal(gemm.cachedPlans, 1);
    drv.ctxSynchronize();
    const out = new Uint16Array(m * n);
    drv.memcpyDtoHAsync(out, y);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let ref = bs[j]!;
        for (let t = 0; t < k; t++) ref += xs[i * k + t]! * ws[j * k + t]!;
        const got = bf16BitsToF32(out[i * n + j]!);
        assert.ok(Math.abs(got - ref) <= 0.02 + Math.abs(ref) / 64, `y[${i},${j}] = ${got}, expected ${ref}`);
      }
    }
    gemm.dispose();
    for (const ptr of [x, w, bias, y, workspace]) drv.memFree(ptr);
  });
});

// koffi bindings to the CUDA driver API (libcuda.so.1).
//
// Conventions, for speed (see shared/CUDA_NOTES.md, "koffi"):
// - out-parameters are preallocated typed arrays passed as `void *`, not koffi `_Out_` arrays;
// - handles and device addresses are BigInt, wrapped in small typed classes so a stream cannot be
//   passed where a function handle is expected (koffi would not catch it: it would crash);
// - everything runs synchronously on the calling thread: the driver binds the context to the OS
//   thread, so never use koffi's `.async` here (its worker threads have no current context).
//
// Prototypes and enum values are from CUDA 13.0's cuda.h; line numbers are quoted beside them.
import { cudaError, formatBytes, type StatusNames } from "./errors.js";
import { findLibrary, openLibrary, type SearchOptions } from "./find-library.js";
import { bindFirst, bindFunction, koffi, readCString, type LibraryHandle } from "./koffi.js";
import type { KernelArgs } from "./kernel-args.js";

/** CUdevice_attribute values used here (cuda.h, CUDA 13.0). */
export const CU_DEVICE_ATTRIBUTE = {
  MAX_THREADS_PER_BLOCK: 1, // cuda.h:724
  MAX_SHARED_MEMORY_PER_BLOCK: 8, // cuda.h:731
  WARP_SIZE: 10, // cuda.h:734
  CLOCK_RATE: 13, // cuda.h:738 (kHz)
  MULTIPROCESSOR_COUNT: 16, // cuda.h:741
  PCI_BUS_ID: 33, // cuda.h:761
  MEMORY_CLOCK_RATE: 36, // cuda.h:764 (kHz)
  GLOBAL_MEMORY_BUS_WIDTH: 37, // cuda.h:765 (bits)
  L2_CACHE_SIZE: 38, // cuda.h:766 (bytes)
  COMPUTE_CAPABILITY_MAJOR: 75, // cuda.h:803
  COMPUTE_CAPABILITY_MINOR: 76, // cuda.h:804
  MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: 81, // cuda.h:809
  MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: 97, // cuda.h:825
} as const;

export const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8; // cuda.h:994
export const CU_STREAM_DEFAULT = 0x0; // cuda.h:428
export const CU_STREAM_NON_BLOCKING = 0x1; // cuda.h:429
export const CU_EVENT_DEFAULT = 0x0; // cuda.h:456
export const CU_EVENT_DISABLE_TIMING = 0x2; // cuda.h:458
export const CU_MEMHOSTALLOC_PORTABLE = 0x01; // cuda.h:3247
export const CU_MEMHOSTALLOC_DEVICEMAP = 0x02; // cuda.h:3254
export const CU_MEMHOSTALLOC_WRITECOMBINED = 0x04; // cuda.h:3262
/** CUstreamCaptureMode (cuda.h:2392-2394). */
export const CU_STREAM_CAPTURE_MODE = { global: 0, thread_local: 1, relaxed: 2 } as const;
export type StreamCaptureMode = keyof typeof CU_STREAM_CAPTURE_MODE;
export const CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH = 1; // cuda.h:5034
export const CUDA_SUCCESS = 0; // cuda.h:2517
export const CUDA_ERROR_OUT_OF_MEMORY = 2; // cuda.h:2529
export const CUDA_ERROR_STUB_LIBRARY = 34; // cuda.h:2576
export const CUDA_ERROR_NO_DEVICE = 100; // cuda.h:2597

type Ptr = bigint;
type Out64 = BigUint64Array;
type OutI32 = Int32Array;
type HostPointer = ArrayBufferView | bigint;

/** The raw C functions, typed as we call them. Symbols are the versioned ones cuda.h maps the names to (cuda.h:89-172). */
export interface DriverFunctions {
  cuInit(flags: number): number; // cuda.h:5207
  cuDriverGetVersion(version: OutI32): number; // cuda.h:5245
  cuDeviceGet(device: OutI32, ordinal: number): number; // cuda.h:5288
  cuDeviceGetCount(count: OutI32): number; // cuda.h:5317
  cuDeviceGetName(name: Uint8Array, len: number, dev: number): number; // cuda.h:5349
  cuDeviceTotalMem(bytes: Out64, dev: number): number; // cuda.h:5436, symbol cuDeviceTotalMem_v2
  cuDeviceGetAttribute(value: OutI32, attrib: number, dev: number): number; // cuda.h:5498
  cuDevicePrimaryCtxRetain(ctx: Out64, dev: number): number; // cuda.h:5896
  cuDevicePrimaryCtxRelease(dev: number): number; // cuda.h:5937, symbol cuDevicePrimaryCtxRelease_v2
  cuCtxSetCurrent(ctx: Ptr): number; // cuda.h:6423
  cuCtxSynchronize(): number; // cuda.h:6621
  cuModuleLoadData(module: Out64, image: Uint8Array): number; // cuda.h:7365
  cuModuleUnload(module: Ptr): number; // cuda.h:7476
  cuModuleGetFunction(fn: Out64, module: Ptr, name: string): number; // cuda.h:7532
  cuMemGetInfo(free: Out64, total: Out64): number; // cuda.h:8575, symbol cuMemGetInfo_v2
  cuMemAlloc(dptr: Out64, bytes: number): number; // cuda.h:8609, symbol cuMemAlloc_v2
  cuMemFree(dptr: Ptr): number; // cuda.h:8708, symbol cuMemFree_v2
  cuMemFreeHost(p: Ptr): number; // cuda.h:8823
  cuMemHostAlloc(pp: Out64, bytes: number, flags: number): number; // cuda.h:8906
  cuMemcpyHtoDAsync(dst: Ptr, src: HostPointer, bytes: number, stream: Ptr): number; // cuda.h:10571, _v2
  cuMemcpyDtoHAsync(dst: HostPointer, src: Ptr, bytes: number, stream: Ptr): number; // cuda.h:10612, _v2
  cuMemcpyDtoDAsync(dst: Ptr, src: Ptr, bytes: number, stream: Ptr): number; // cuda.h:10653, _v2
  cuMemsetD8Async(dst: Ptr, value: number, count: number, stream: Ptr): number; // cuda.h:11507
  cuMemsetD32Async(dst: Ptr, value: number, count: number, stream: Ptr): number; // cuda.h:11580
  cuStreamCreate(stream: Out64, flags: number): number; // cuda.h:14949
  cuStreamBeginCapture(stream: Ptr, mode: number): number; // cuda.h:15381, symbol cuStreamBeginCapture_v2
  cuStreamEndCapture(stream: Ptr, graph: Out64): number; // cuda.h:15511
  cuStreamSynchronize(stream: Ptr): number; // cuda.h:15795
  cuStreamDestroy(stream: Ptr): number; // cuda.h:15825, symbol cuStreamDestroy_v2
  cuEventCreate(event: Out64, flags: number): number; // cuda.h:15946
  cuEventRecord(event: Ptr, stream: Ptr): number; // cuda.h:15989
  cuEventSynchronize(event: Ptr): number; // cuda.h:16102
  cuEventDestroy(event: Ptr): number; // cuda.h:16131, symbol cuEventDestroy_v2
  cuEventElapsedTime(ms: Float32Array, start: Ptr, end: Ptr): number; // cuda.h:16179, _v2 since CUDA 12.8
  cuFuncSetAttribute(fn: Ptr, attrib: number, value: number): number; // cuda.h:17257
  cuLaunchKernel(
    fn: Ptr,
    gridX: number,
    gridY: number,
    gridZ: number,
    blockX: number,
    blockY: number,
    blockZ: number,
    sharedBytes: number,
    stream: Ptr,
    kernelParams: Ptr,
    extra: null,
  ): number; // cuda.h:17537
  cuGraphInstantiateWithFlags(exec: Out64, graph: Ptr, flags: number): number; // cuda.h:20415
  cuGraphLaunch(exec: Ptr, stream: Ptr): number; // cuda.h:21075
  cuGraphExecDestroy(exec: Ptr): number; // cuda.h:21100
  cuGraphDestroy(graph: Ptr): number; // cuda.h:21120
  cuGetErrorString(code: number, str: Out64): number; // cuda.h:5149
  cuGetErrorName(code: number, str: Out64): number; // cuda.h:5170
}

/** Resolved symbol names, for error messages ("cuMemAlloc_v2 failed: ..."). */
export type DriverSymbols = Record<keyof DriverFunctions, string>;

// name -> [symbols to try, newest first; argument types]. Every function returns CUresult (int).
const PROTOTYPES: Record<keyof DriverFunctions, [string[], string[]]> = {
  cuInit: [["cuInit"], ["uint32_t"]],
  cuDriverGetVersion: [["cuDriverGetVersion"], ["void *"]],
  cuDeviceGet: [["cuDeviceGet"], ["void *", "int"]],
  cuDeviceGetCount: [["cuDeviceGetCount"], ["void *"]],
  cuDeviceGetName: [["cuDeviceGetName"], ["void *", "int", "int"]],
  cuDeviceTotalMem: [["cuDeviceTotalMem_v2"], ["void *", "int"]],
  cuDeviceGetAttribute: [["cuDeviceGetAttribute"], ["void *", "int", "int"]],
  cuDevicePrimaryCtxRetain: [["cuDevicePrimaryCtxRetain"], ["void *", "int"]],
  cuDevicePrimaryCtxRelease: [["cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"], ["int"]],
  cuCtxSetCurrent: [["cuCtxSetCurrent"], ["void *"]],
  cuCtxSynchronize: [["cuCtxSynchronize"], []],
  cuModuleLoadData: [["cuModuleLoadData"], ["void *", "void *"]],
  cuModuleUnload: [["cuModuleUnload"], ["void *"]],
  cuModuleGetFunction: [["cuModuleGetFunction"], ["void *", "void *", "const char *"]],
  cuMemGetInfo: [["cuMemGetInfo_v2"], ["void *", "void *"]],
  cuMemAlloc: [["cuMemAlloc_v2"], ["void *", "size_t"]],
  cuMemFree: [["cuMemFree_v2"], ["uint64_t"]],
  cuMemFreeHost: [["cuMemFreeHost"], ["void *"]],
  cuMemHostAlloc: [["cuMemHostAlloc"], ["void *", "size_t", "uint32_t"]],
  cuMemcpyHtoDAsync: [["cuMemcpyHtoDAsync_v2"], ["uint64_t", "void *", "size_t", "void *"]],
  cuMemcpyDtoHAsync: [["cuMemcpyDtoHAsync_v2"], ["void *", "uint64_t", "size_t", "void *"]],
  cuMemcpyDtoDAsync: [["cuMemcpyDtoDAsync_v2"], ["uint64_t", "uint64_t", "size_t", "void *"]],
  cuMemsetD8Async: [["cuMemsetD8Async"], ["uint64_t", "uint8_t", "size_t", "void *"]],
  cuMemsetD32Async: [["cuMemsetD32Async"], ["uint64_t", "uint32_t", "size_t", "void *"]],
  cuStreamCreate: [["cuStreamCreate"], ["void *", "uint32_t"]],
  cuStreamBeginCapture: [["cuStreamBeginCapture_v2"], ["void *", "int"]],
  cuStreamEndCapture: [["cuStreamEndCapture"], ["void *", "void *"]],
  cuStreamSynchronize: [["cuStreamSynchronize"], ["void *"]],
  cuStreamDestroy: [["cuStreamDestroy_v2"], ["void *"]],
  cuEventCreate: [["cuEventCreate"], ["void *", "uint32_t"]],
  cuEventRecord: [["cuEventRecord"], ["void *", "void *"]],
  cuEventSynchronize: [["cuEventSynchronize"], ["void *"]],
  cuEventDestroy: [["cuEventDestroy_v2"], ["void *"]],
  cuEventElapsedTime: [
    ["cuEventElapsedTime_v2", "cuEventElapsedTime"],
    ["void *", "void *", "void *"],
  ],
  cuFuncSetAttribute: [["cuFuncSetAttribute"], ["void *", "int", "int"]],
  cuLaunchKernel: [
    ["cuLaunchKernel"],
    ["void *", "uint32_t", "uint32_t", "uint32_t", "uint32_t", "uint32_t", "uint32_t", "uint32_t", "void *", "void *", "void *"],
  ],
  cuGraphInstantiateWithFlags: [["cuGraphInstantiateWithFlags"], ["void *", "void *", "uint64_t"]],
  cuGraphLaunch: [["cuGraphLaunch"], ["void *", "void *"]],
  cuGraphExecDestroy: [["cuGraphExecDestroy"], ["void *"]],
  cuGraphDestroy: [["cuGraphDestroy"], ["void *"]],
  cuGetErrorString: [["cuGetErrorString"], ["int", "void *"]],
  cuGetErrorName: [["cuGetErrorName"], ["int", "void *"]],
};

/** Binds every driver function; a missing symbol throws naming it (the driver is too old). */
export function bindDriver(lib: LibraryHandle, path: string): { fns: DriverFunctions; symbols: DriverSymbols } {
  const fns = {} as Record<string, unknown>;
  const symbols = {} as Record<string, string>;
  for (const [name, [candidates, args]] of Object.entries(PROTOTYPES)) {
    if (candidates.length === 1) {
      fns[name] = bindFunction(lib, path, candidates[0]!, "int", args);
      symbols[name] = candidates[0]!;
    } else {
      const { fn, symbol } = bindFirst(lib, path, candidates, "int", args);
      fns[name] = fn;
      symbols[name] = symbol;
    }
  }
  return { fns: fns as unknown as DriverFunctions, symbols: symbols as DriverSymbols };
}

// ---------------------------------------------------------------- handles

/** A device address with the size of the allocation (or view) it refers to. */
export class DevicePtr {
  constructor(
    readonly address: bigint,
    readonly bytes: number,
  ) {}

  /** A view `byteOffset` bytes in, `bytes` long (default: to the end). Never free a view, free its base. */
  offset(byteOffset: number, bytes = this.bytes - byteOffset): DevicePtr {
    if (byteOffset < 0 || bytes < 0 || byteOffset + bytes > this.bytes) {
      throw new RangeError(
        `DevicePtr.offset(${byteOffset}, ${bytes}) is outside the ${this.bytes}-byte buffer at 0x${this.address.toString(16)}`,
      );
    }
    return new DevicePtr(this.address + BigInt(byteOffset), bytes);
  }

  toString(): string {
    return `DevicePtr(0x${this.address.toString(16)}, ${this.bytes} B)`;
  }
}

export class Context {
  constructor(
    readonly handle: bigint,
    readonly device: number,
  ) {}
}

export class Stream {
  /** The legacy default stream (handle 0). */
  static readonly NULL = new Stream(0n);
  constructor(readonly handle: bigint) {}
}

export class CudaEvent {
  constructor(readonly handle: bigint) {}
}

export class Module {
  constructor(readonly handle: bigint) {}
}

/** A kernel entry point; `name` is the (lowered) symbol, used in launch errors. */
export class Func {
  constructor(
    readonly handle: bigint,
    readonly name: string,
    readonly module: Module,
  ) {}
}

export class Graph {
  constructor(readonly handle: bigint) {}
}

export class GraphExec {
  constructor(readonly handle: bigint) {}
}

/** Page-locked host memory; `view` aliases it and must not be used after memFreeHost. */
export class PinnedBuffer {
  constructor(
    readonly address: bigint,
    readonly bytes: number,
    readonly view: Uint8Array,
  ) {}
}

/** Grid or block dimensions: a number for 1-D, or [x, y?, z?]. */
export type Dim3 = number | readonly [number, number?, number?];
/** Host memory for copies: any typed array / DataView / Buffer (pageable), or a PinnedBuffer (truly asynchronous). */
export type HostMemory = ArrayBufferView | PinnedBuffer;

export interface DeviceProperties {
  ordinal: number;
  name: string;
  computeCapability: { major: number; minor: number };
  multiprocessorCount: number;
  maxThreadsPerBlock: number;
  warpSize: number;
  maxSharedMemoryPerBlock: number;
  maxSharedMemoryPerBlockOptin: number;
  maxSharedMemoryPerMultiprocessor: number;
  l2CacheBytes: number;
  totalMemoryBytes: number;
  /** null where the driver no longer reports it. */
  memoryClockKHz: number | null;
  memoryBusWidthBits: number | null;
  /** Theoretical DRAM bandwidth from clock and bus width (double data rate), null when either is unknown. */
  peakMemoryBandwidthBytesPerSec: number | null;
  pciBusId: number | null;
}

// ---------------------------------------------------------------- the driver

const loaded = new Map<string, CudaDriver>();

export interface DriverLoadOptions extends SearchOptions {
  /** Use this libcuda file instead of searching. */
  path?: string;
}

export class CudaDriver {
  private readonly out64 = new BigUint64Array(1);
  private readonly out64b = new BigUint64Array(1);
  private readonly outI32 = new Int32Array(1);
  private readonly outF32 = new Float32Array(1);
  private readonly statusNames: StatusNames;
  private initialized = false;

  private constructor(
    readonly path: string,
    /** The raw bindings, for calls this class does not wrap. Check their results with `check`. */
    readonly raw: DriverFunctions,
    readonly symbols: DriverSymbols,
  ) {
    this.statusNames = {
      name: (code) => this.errorString(raw.cuGetErrorName, code),
      describe: (code) => this.errorString(raw.cuGetErrorString, code),
    };
  }

  /** Finds and opens libcuda.so.1 (once per path) and binds its functions. Does not call cuInit. */
  static load(options: DriverLoadOptions = {}): CudaDriver {
    const path = options.path ?? findLibrary("cuda", options).path;
    const existing = loaded.get(path);
    if (existing) return existing;
    const lib = openLibrary(path);
    const { fns, symbols } = bindDriver(lib, path);
    const driver = new CudaDriver(path, fns, symbols);
    loaded.set(path, driver);
    return driver;
  }

  /**
   * Throws a CudaError for a non-zero CUresult. `fn` is the key of `raw` (its versioned symbol is reported).
   * Where `context` costs something to build, test `result !== 0` first so the success path builds nothing.
   */
  check(result: number, fn: keyof DriverFunctions, context?: string): void {
    if (result !== 0) throw cudaError("driver", this.symbols[fn], result, this.statusNames, context);
  }

  /** "CUDA_ERROR_OUT_OF_MEMORY" for 2, or null when the driver does not know the code. */
  errorName(code: number): string | null {
    return this.statusNames.name(code);
  }

  private errorString(fn: (code: number, out: BigUint64Array) => number, code: number): string | null {
    const out = new BigUint64Array(1); // not the shared scratch: errors may be built while it is in use
    return fn(code, out) === 0 ? readCString(out[0]!) : null;
  }

  // ---- initialisation and devices

  /** cuInit(0), once. */
  init(): void {
    if (this.initialized) return;
    this.check(this.raw.cuInit(0), "cuInit");
    this.initialized = true;
  }

  /** Driver version as CUDA encodes it: 1000 * major + 10 * minor (13000 for 13.0). */
  driverVersion(): number {
    this.check(this.raw.cuDriverGetVersion(this.outI32), "cuDriverGetVersion");
    return this.outI32[0]!;
  }

  deviceCount(): number {
    this.check(this.raw.cuDeviceGetCount(this.outI32), "cuDeviceGetCount");
    return this.outI32[0]!;
  }

  /** The CUdevice for an ordinal (0-based). */
  device(ordinal: number): number {
    const r = this.raw.cuDeviceGet(this.outI32, ordinal);
    if (r !== 0) this.check(r, "cuDeviceGet", `getting device ${ordinal} of ${this.deviceCountOrUnknown()}`);
    return this.outI32[0]!;
  }

  deviceName(dev: number): string {
    const buf = new Uint8Array(256);
    this.check(this.raw.cuDeviceGetName(buf, buf.length, dev), "cuDeviceGetName");
    const end = buf.indexOf(0);
    return Buffer.from(buf.subarray(0, end < 0 ? buf.length : end)).toString("utf8");
  }

  deviceAttribute(dev: number, attribute: number): number {
    const r = this.raw.cuDeviceGetAttribute(this.outI32, attribute, dev);
    if (r !== 0) this.check(r, "cuDeviceGetAttribute", `reading attribute ${attribute} of device ${dev}`);
    return this.outI32[0]!;
  }

  /** Like deviceAttribute, but null instead of an error (attributes some drivers dropped). */
  deviceAttributeOrNull(dev: number, attribute: number): number | null {
    return this.raw.cuDeviceGetAttribute(this.outI32, attribute, dev) === 0 ? this.outI32[0]! : null;
  }

  deviceTotalMem(dev: number): number {
    this.check(this.raw.cuDeviceTotalMem(this.out64, dev), "cuDeviceTotalMem");
    return Number(this.out64[0]!);
  }

  deviceProperties(ordinal: number): DeviceProperties {
    const dev = this.device(ordinal);
    const a = CU_DEVICE_ATTRIBUTE;
    const memoryClockKHz = this.deviceAttributeOrNull(dev, a.MEMORY_CLOCK_RATE) || null;
    const memoryBusWidthBits = this.deviceAttributeOrNull(dev, a.GLOBAL_MEMORY_BUS_WIDTH) || null;
    return {
      ordinal,
      name: this.deviceName(dev),
      computeCapability: {
        major: this.deviceAttribute(dev, a.COMPUTE_CAPABILITY_MAJOR),
        minor: this.deviceAttribute(dev, a.COMPUTE_CAPABILITY_MINOR),
      },
      multiprocessorCount: this.deviceAttribute(dev, a.MULTIPROCESSOR_COUNT),
      maxThreadsPerBlock: this.deviceAttribute(dev, a.MAX_THREADS_PER_BLOCK),
      warpSize: this.deviceAttribute(dev, a.WARP_SIZE),
      maxSharedMemoryPerBlock: this.deviceAttribute(dev, a.MAX_SHARED_MEMORY_PER_BLOCK),
      maxSharedMemoryPerBlockOptin: this.deviceAttribute(dev, a.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
      maxSharedMemoryPerMultiprocessor: this.deviceAttribute(dev, a.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR),
      l2CacheBytes: this.deviceAttribute(dev, a.L2_CACHE_SIZE),
      totalMemoryBytes: this.deviceTotalMem(dev),
      memoryClockKHz,
      memoryBusWidthBits,
      peakMemoryBandwidthBytesPerSec:
        memoryClockKHz !== null && memoryBusWidthBits !== null ? 2 * memoryClockKHz * 1000 * (memoryBusWidthBits / 8) : null,
      pciBusId: this.deviceAttributeOrNull(dev, a.PCI_BUS_ID),
    };
  }

  private deviceCountOrUnknown(): string {
    return this.raw.cuDeviceGetCount(this.outI32) === 0 ? `${this.outI32[0]} device(s)` : "an unknown number of devices";
  }

  // ---- contexts

  /** Retains the device's primary context (the one the runtime API and PyTorch share) and makes it current. */
  retainPrimaryContext(ordinal = 0): Context {
    const dev = this.device(ordinal);
    const r = this.raw.cuDevicePrimaryCtxRetain(this.out64, dev);
    if (r !== 0) this.check(r, "cuDevicePrimaryCtxRetain", `on device ${ordinal}`);
    const ctx = new Context(this.out64[0]!, dev);
    this.setCurrent(ctx);
    return ctx;
  }

  releasePrimaryContext(ctx: Context): void {
    this.check(this.raw.cuDevicePrimaryCtxRelease(ctx.device), "cuDevicePrimaryCtxRelease");
  }

  /** Binds the context to the calling OS thread (needed once per thread that calls the driver). */
  setCurrent(ctx: Context): void {
    this.check(this.raw.cuCtxSetCurrent(ctx.handle), "cuCtxSetCurrent");
  }

  ctxSynchronize(): void {
    this.check(this.raw.cuCtxSynchronize(), "cuCtxSynchronize");
  }

  // ---- memory

  memGetInfo(): { free: number; total: number } {
    this.check(this.raw.cuMemGetInfo(this.out64, this.out64b), "cuMemGetInfo");
    return { free: Number(this.out64[0]!), total: Number(this.out64b[0]!) };
  }

  memAlloc(bytes: number): DevicePtr {
    if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new RangeError(`memAlloc: got ${bytes} bytes; expected a positive integer`);
    const r = this.raw.cuMemAlloc(this.out64, bytes);
    if (r !== 0) this.check(r, "cuMemAlloc", `allocating ${formatBytes(bytes)}${this.freeMemoryNote()}`);
    return new DevicePtr(this.out64[0]!, bytes);
  }

  memFree(ptr: DevicePtr): void {
    const r = this.raw.cuMemFree(ptr.address);
    if (r !== 0) this.check(r, "cuMemFree", `freeing ${ptr}`);
  }

  private freeMemoryNote(): string {
    if (this.raw.cuMemGetInfo(this.out64, this.out64b) !== 0) return "";
    return ` (${formatBytes(Number(this.out64[0]!))} free of ${formatBytes(Number(this.out64b[0]!))})`;
  }

  /** Page-locked host memory, for truly asynchronous copies. */
  memHostAlloc(bytes: number, flags = 0): PinnedBuffer {
    if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new RangeError(`memHostAlloc: got ${bytes} bytes; expected a positive integer`);
    const r = this.raw.cuMemHostAlloc(this.out64, bytes, flags);
    if (r !== 0) this.check(r, "cuMemHostAlloc", `allocating ${formatBytes(bytes)} of pinned host memory`);
    const address = this.out64[0]!;
    return new PinnedBuffer(address, bytes, new Uint8Array(koffi().view(address, bytes)));
  }

  memFreeHost(buf: PinnedBuffer): void {
    this.check(this.raw.cuMemFreeHost(buf.address), "cuMemFreeHost");
  }

  memsetD8Async(dst: DevicePtr, value: number, count: number = dst.bytes, stream: Stream = Stream.NULL): void {
    checkFits("memsetD8Async", count, dst);
    this.check(this.raw.cuMemsetD8Async(dst.address, value, count, stream.handle), "cuMemsetD8Async");
  }

  /** Fills `count` 32-bit words; for a float fill pass its bits (new Uint32Array(new Float32Array([x]).buffer)[0]). */
  memsetD32Async(dst: DevicePtr, value: number, count: number = Math.floor(dst.bytes / 4), stream: Stream = Stream.NULL): void {
    checkFits("memsetD32Async", count * 4, dst);
    this.check(this.raw.cuMemsetD32Async(dst.address, value >>> 0, count, stream.handle), "cuMemsetD32Async");
  }

  /** Host → device. From pageable memory the call returns once the source has been staged, so it may be reused at once. */
  memcpyHtoDAsync(dst: DevicePtr, src: HostMemory, bytes: number = hostBytes(src), stream: Stream = Stream.NULL): void {
    checkFits("memcpyHtoDAsync", bytes, dst);
    checkHostFits("memcpyHtoDAsync", bytes, src);
    this.check(this.raw.cuMemcpyHtoDAsync(dst.address, hostPointer(src), bytes, stream.handle), "cuMemcpyHtoDAsync");
  }

  /** Device → host. Into pageable memory it completes before returning; into pinned memory, synchronise the stream first. */
  memcpyDtoHAsync(dst: HostMemory, src: DevicePtr, bytes: number = hostBytes(dst), stream: Stream = Stream.NULL): void {
    checkFits("memcpyDtoHAsync", bytes, src);
    checkHostFits("memcpyDtoHAsync", bytes, dst);
    this.check(this.raw.cuMemcpyDtoHAsync(hostPointer(dst), src.address, bytes, stream.handle), "cuMemcpyDtoHAsync");
  }

  memcpyDtoDAsync(dst: DevicePtr, src: DevicePtr, bytes: number = src.bytes, stream: Stream = Stream.NULL): void {
    checkFits("memcpyDtoDAsync", bytes, dst);
    checkFits("memcpyDtoDAsync", bytes, src);
    this.check(this.raw.cuMemcpyDtoDAsync(dst.address, src.address, bytes, stream.handle), "cuMemcpyDtoDAsync");
  }

  // ---- streams and events

  streamCreate(flags = CU_STREAM_NON_BLOCKING): Stream {
    this.check(this.raw.cuStreamCreate(this.out64, flags), "cuStreamCreate");
    return new Stream(this.out64[0]!);
  }

  streamSynchronize(stream: Stream): void {
    this.check(this.raw.cuStreamSynchronize(stream.handle), "cuStreamSynchronize");
  }

  streamDestroy(stream: Stream): void {
    if (stream.handle === 0n) throw new Error("streamDestroy: the default stream (Stream.NULL) cannot be destroyed");
    this.check(this.raw.cuStreamDestroy(stream.handle), "cuStreamDestroy");
  }

  eventCreate(flags = CU_EVENT_DEFAULT): CudaEvent {
    this.check(this.raw.cuEventCreate(this.out64, flags), "cuEventCreate");
    return new CudaEvent(this.out64[0]!);
  }

  eventRecord(event: CudaEvent, stream: Stream = Stream.NULL): void {
    this.check(this.raw.cuEventRecord(event.handle, stream.handle), "cuEventRecord");
  }

  eventSynchronize(event: CudaEvent): void {
    this.check(this.raw.cuEventSynchronize(event.handle), "cuEventSynchronize");
  }

  /** Milliseconds between two recorded events (both created with timing enabled). */
  eventElapsedMs(start: CudaEvent, end: CudaEvent): number {
    this.check(this.raw.cuEventElapsedTime(this.outF32, start.handle, end.handle), "cuEventElapsedTime");
    return this.outF32[0]!;
  }

  eventDestroy(event: CudaEvent): void {
    this.check(this.raw.cuEventDestroy(event.handle), "cuEventDestroy");
  }

  // ---- modules and kernels

  /** Loads a cubin (or NUL-terminated PTX) image into the current context. */
  moduleLoadData(image: Uint8Array, what = "module"): Module {
    const r = this.raw.cuModuleLoadData(this.out64, image);
    if (r !== 0) this.check(r, "cuModuleLoadData", `loading ${what} (${image.byteLength} bytes)`);
    return new Module(this.out64[0]!);
  }

  moduleGetFunction(module: Module, name: string): Func {
    const r = this.raw.cuModuleGetFunction(this.out64, module.handle, name);
    if (r !== 0) this.check(r, "cuModuleGetFunction", `looking up kernel "${name}"`);
    return new Func(this.out64[0]!, name, module);
  }

  moduleUnload(module: Module): void {
    this.check(this.raw.cuModuleUnload(module.handle), "cuModuleUnload");
  }

  /** Allows a kernel more than 48 KiB of dynamic shared memory (up to the device's opt-in maximum). */
  funcSetMaxDynamicSharedMemory(func: Func, bytes: number): void {
    const r = this.raw.cuFuncSetAttribute(func.handle, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes);
    if (r !== 0) this.check(r, "cuFuncSetAttribute", `setting ${func.name}'s max dynamic shared memory to ${bytes} bytes`);
  }

  /**
   * The launch hot path: one native call with pre-packed arguments, no allocation. `args` must hold the
   * kernel's arguments in order and with the kernel's types (the driver cannot check them).
   */
  launch(func: Func, grid: Dim3, block: Dim3, sharedBytes: number, stream: Stream, args: KernelArgs): void {
    // Plain locals rather than destructuring: this is the per-kernel hot path.
    const gx = typeof grid === "number" ? grid : grid[0];
    const gy = typeof grid === "number" ? 1 : (grid[1] ?? 1);
    const gz = typeof grid === "number" ? 1 : (grid[2] ?? 1);
    const bx = typeof block === "number" ? block : block[0];
    const by = typeof block === "number" ? 1 : (block[1] ?? 1);
    const bz = typeof block === "number" ? 1 : (block[2] ?? 1);
    const r = this.raw.cuLaunchKernel(func.handle, gx, gy, gz, bx, by, bz, sharedBytes, stream.handle, args.address, null);
    if (r !== 0) {
      this.check(
        r,
        "cuLaunchKernel",
        `launching ${func.name} with grid [${gx}, ${gy}, ${gz}], block [${bx}, ${by}, ${bz}], ${sharedBytes} B shared`,
      );
    }
  }

  // ---- graphs

  streamBeginCapture(stream: Stream, mode: StreamCaptureMode = "global"): void {
    if (stream.handle === 0n)
      throw new Error("streamBeginCapture: the default stream cannot be captured; create a stream with streamCreate()");
    this.check(this.raw.cuStreamBeginCapture(stream.handle, CU_STREAM_CAPTURE_MODE[mode]), "cuStreamBeginCapture");
  }

  streamEndCapture(stream: Stream): Graph {
    this.check(this.raw.cuStreamEndCapture(stream.handle, this.out64), "cuStreamEndCapture");
    return new Graph(this.out64[0]!);
  }

  graphInstantiate(graph: Graph, flags = 0): GraphExec {
    this.check(this.raw.cuGraphInstantiateWithFlags(this.out64, graph.handle, flags), "cuGraphInstantiateWithFlags");
    return new GraphExec(this.out64[0]!);
  }

  graphLaunch(exec: GraphExec, stream: Stream): void {
    this.check(this.raw.cuGraphLaunch(exec.handle, stream.handle), "cuGraphLaunch");
  }

  graphExecDestroy(exec: GraphExec): void {
    this.check(this.raw.cuGraphExecDestroy(exec.handle), "cuGraphExecDestroy");
  }

  graphDestroy(graph: Graph): void {
    this.check(this.raw.cuGraphDestroy(graph.handle), "cuGraphDestroy");
  }
}

function hostBytes(mem: HostMemory): number {
  return mem instanceof PinnedBuffer ? mem.bytes : mem.byteLength;
}

function hostPointer(mem: HostMemory): HostPointer {
  if (mem instanceof PinnedBuffer) return mem.address;
  // koffi takes typed arrays and Buffers as pointers directly; a DataView is re-viewed as bytes.
  return mem instanceof DataView ? new Uint8Array(mem.buffer, mem.byteOffset, mem.byteLength) : mem;
}

function checkFits(op: string, bytes: number, ptr: DevicePtr): void {
  if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes > ptr.bytes) {
    throw new RangeError(`${op}: ${bytes} bytes do not fit ${ptr}; expected at most ${ptr.bytes}`);
  }
}

function checkHostFits(op: string, bytes: number, mem: HostMemory): void {
  const have = hostBytes(mem);
  if (bytes > have) throw new RangeError(`${op}: ${bytes} bytes do not fit the ${have}-byte host buffer`);
}

// Chooses the backend for `--device auto|cpu|cuda`. CUDA needs four things: the driver
// (libcuda.so.1), a GPU it can initialise, NVRTC (with its builtins) to compile our kernels
// for that GPU, and cuBLASLt for the GEMMs. Anything missing makes "auto" fall back to the
// CPU with the reason, and makes an explicit "cuda" fail with it. Nothing here may crash the
// process: every library load and driver call is caught and turned into a reason.
import { CUDA_ERROR_NO_DEVICE, CUDA_ERROR_STUB_LIBRARY, CudaDriver, type DeviceProperties } from "./ffi/driver.js";
import { CublasLt } from "./ffi/cublaslt.js";
import { CudaError, formatBytes } from "./ffi/errors.js";
import { findLibrary, LibraryNotFoundError, type SearchOptions } from "./ffi/find-library.js";
import { compileTargetFor, Nvrtc } from "./ffi/nvrtc.js";

export type DeviceRequest = "auto" | "cpu" | "cuda" | "webgpu";

export interface CudaLibraries {
  cuda?: string;
  nvrtc?: string;
  nvrtcBuiltins?: string;
  cublasLt?: string;
}

export interface CudaDeviceSummary {
  ordinal: number;
  name: string;
  /** "9.0" */
  computeCapability: string;
  /** The NVRTC target our kernels are compiled for: "sm_90a", or "compute_XX" (PTX) for a GPU newer than NVRTC. */
  compileTarget: string;
  multiprocessorCount: number;
  totalMemoryBytes: number;
  l2CacheBytes: number;
  maxSharedMemoryPerBlockOptin: number;
  peakMemoryBandwidthBytesPerSec: number | null;
}

export interface DeviceSelection {
  kind: "cpu" | "cuda" | "webgpu";
  /** Why this kind: what was found, or the first thing that was missing and how to fix it. */
  reason: string;
  /** Paths of the libraries that were found (some may be missing when kind is "cpu"). */
  libraries?: CudaLibraries;
  versions?: { driver?: string; nvrtc?: string; cublasLt?: string };
  devices?: CudaDeviceSummary[];
  /** Not fatal, but worth telling the user (e.g. NVRTC newer than the driver). */
  warnings?: string[];
  /** The WebGPU adapter picked (kind "webgpu"). */
  adapter?: string;
}

/** `--device cuda` was asked for and CUDA cannot be used; `selection.reason` says why. */
export class DeviceUnavailableError extends Error {
  constructor(readonly selection: DeviceSelection) {
    super(`--device cuda was requested but CUDA cannot be used: ${selection.reason}`);
    this.name = "DeviceUnavailableError";
  }
}

export type SelectDeviceOptions = SearchOptions;

export function selectDevice(requested: DeviceRequest, options: SelectDeviceOptions = {}): DeviceSelection {
  switch (requested) {
    case "cpu":
      return { kind: "cpu", reason: "--device cpu was requested" };
    case "cuda": {
      const probe = probeCuda(options);
      if (probe.kind !== "cuda") throw new DeviceUnavailableError(probe);
      return probe;
    }
    case "auto":
      return probeCuda(options);
    case "webgpu":
      throw new Error("--device webgpu is opened asynchronously: use createBackendAsync (LLM.create)");
    default:
      throw new Error(`unknown device "${String(requested)}"; expected one of auto, cpu, cuda, webgpu`);
  }
}

/** Finds and tries everything CUDA needs; returns kind "cuda" only when all of it works. Never throws. */
export function probeCuda(options: SelectDeviceOptions = {}): DeviceSelection {
  const libraries: CudaLibraries = {};
  const versions: NonNullable<DeviceSelection["versions"]> = {};
  const warnings: string[] = [];
  const cpu = (reason: string): DeviceSelection => ({ kind: "cpu", reason, libraries, versions, warnings });

  // 1. The driver and at least one GPU.
  let driver: CudaDriver;
  try {
    libraries.cuda = findLibrary("cuda", options).path;
    driver = CudaDriver.load({ path: libraries.cuda });
  } catch (err) {
    return cpu(describeFailure(err));
  }
  let devices: DeviceProperties[];
  try {
    driver.init();
    versions.driver = formatCudaVersion(driver.driverVersion());
    const count = driver.deviceCount();
    if (count === 0) return cpu(`the CUDA driver at ${libraries.cuda} reports no GPU`);
    devices = Array.from({ length: count }, (_, ordinal) => driver.deviceProperties(ordinal));
  } catch (err) {
    return cpu(describeDriverFailure(err, libraries.cuda));
  }

  // 2. NVRTC, able to compile for these GPUs.
  let nvrtc: Nvrtc;
  try {
    nvrtc = Nvrtc.load(options);
    libraries.nvrtc = nvrtc.path;
    libraries.nvrtcBuiltins = nvrtc.builtinsPath;
    versions.nvrtc = nvrtc.versionString;
  } catch (err) {
    return cpu(`NVRTC (the CUDA runtime compiler) is unavailable: ${describeFailure(err)}`);
  }
  let summaries: CudaDeviceSummary[];
  try {
    summaries = devices.map((d) =>
      summarize(d, compileTargetFor(d.computeCapability.major, d.computeCapability.minor, nvrtc.supportedArchs)),
    );
  } catch (err) {
    return cpu(`NVRTC ${nvrtc.versionString} at ${nvrtc.path} cannot target this GPU: ${(err as Error).message}`);
  }
  const driverMajor = versions.driver ? Number(versions.driver.split(".")[0]) : Infinity;
  if (nvrtc.version.major > driverMajor) {
    warnings.push(
      `NVRTC ${nvrtc.versionString} is newer than the driver's CUDA ${versions.driver}: kernels it compiles may fail to load; ` +
        `install NVRTC ${driverMajor}.x (pip install nvidia-cuda-nvrtc-cu${driverMajor}) or update the NVIDIA driver`,
    );
  }

  // 3. cuBLASLt.
  try {
    const lt = CublasLt.load(options);
    libraries.cublasLt = lt.path;
    versions.cublasLt = lt.versionString;
  } catch (err) {
    return cpu(`cuBLASLt is unavailable: ${describeFailure(err)}`);
  }

  const list = summaries.map((d) => `${d.name} (${d.compileTarget}, ${d.multiprocessorCount} SMs, ${formatBytes(d.totalMemoryBytes)})`);
  const reason =
    `found ${summaries.length} CUDA device${summaries.length === 1 ? "" : "s"}: ${list.join("; ")}; ` +
    `driver CUDA ${versions.driver}, NVRTC ${versions.nvrtc}, cuBLASLt ${versions.cublasLt}`;
  return { kind: "cuda", reason, libraries, versions, devices: summaries, warnings };
}

/** 13000 -> "13.0", 12040 -> "12.4" (CUDA's 1000 * major + 10 * minor encoding). */
export function formatCudaVersion(version: number): string {
  return `${Math.floor(version / 1000)}.${Math.floor((version % 1000) / 10)}`;
}

function summarize(d: DeviceProperties, compileTarget: string): CudaDeviceSummary {
  return {
    ordinal: d.ordinal,
    name: d.name,
    computeCapability: `${d.computeCapability.major}.${d.computeCapability.minor}`,
    compileTarget,
    multiprocessorCount: d.multiprocessorCount,
    totalMemoryBytes: d.totalMemoryBytes,
    l2CacheBytes: d.l2CacheBytes,
    maxSharedMemoryPerBlockOptin: d.maxSharedMemoryPerBlockOptin,
    peakMemoryBandwidthBytesPerSec: d.peakMemoryBandwidthBytesPerSec,
  };
}

function describeFailure(err: unknown): string {
  if (err instanceof LibraryNotFoundError) return err.summary;
  return err instanceof Error ? err.message : String(err);
}

function describeDriverFailure(err: unknown, path: string): string {
  if (!(err instanceof CudaError)) return describeFailure(err);
  if (err.code === CUDA_ERROR_STUB_LIBRARY) {
    return `${err.message}: ${path} is the CUDA toolkit's stub, not the driver; remove its folder (…/lib64/stubs) from LD_LIBRARY_PATH`;
  }
  if (err.code === CUDA_ERROR_NO_DEVICE)
    return `${err.message}: the driver at ${path} sees no GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES)`;
  return `${err.message} (driver at ${path})`;
}

/**
 * `--device auto|cpu|cuda|webgpu` made real: probe, pick, and build the backend, saying which one
 * and why. "auto" takes CUDA only when the driver, a GPU, NVRTC and cuBLASLt all work, then a
 * hardware WebGPU adapter (never a software one: lavapipe is slower than the CPU backend), then the
 * CPU; an explicit "cuda" or "webgpu" that cannot be used fails with the first missing piece and how
 * to fix it. WebGPU opens asynchronously, so only createBackendAsync can pick it.
 */
import type { Backend } from "./backend.js";
import { CpuBackend } from "./cpu/cpu-backend.js";
import { CudaBackend } from "./cuda/cuda-backend.js";
import { type DeviceRequest, type DeviceSelection, selectDevice } from "./cuda/device.js";
import type { DType } from "./dtype.js";
import { createWebGpuBackend, hardwareGpuPossible, probeWebGpu } from "./webgpu/node-gpu.js";

export const DEVICE_REQUESTS: readonly DeviceRequest[] = ["auto", "cpu", "cuda", "webgpu"];

export interface CreateBackendOptions {
  device?: DeviceRequest;
  /** CPU worker threads (default: all cores). */
  threads?: number;
  /** Requested compute dtype (--dtype): on CUDA the activation and KV-cache dtype; the CPU computes in f32 whatever it is. */
  dtype?: DType;
  /** The model's stored dtype (config.json torch_dtype): CUDA computes in it when --dtype is not given. */
  modelDType?: DType | null;
}

export interface CreatedBackend {
  backend: Backend;
  selection: DeviceSelection;
}

export function parseDeviceRequest(v: string, flag = "--device"): DeviceRequest {
  if (!(DEVICE_REQUESTS as readonly string[]).includes(v))
    throw new Error(`${flag} must be one of ${DEVICE_REQUESTS.join(", ")}, got "${v}"`);
  return v as DeviceRequest;
}

/** On CUDA the weights of the matrix products are kept in the activation dtype (cuBLASLt multiplies like with like). */
export function cudaActivationDType(o: CreateBackendOptions): "bf16" | "f16" | "f32" {
  const want = o.dtype ?? o.modelDType ?? "bf16";
  if (want === "bf16" || want === "f16" || want === "f32") return want;
  throw new Error(`--dtype ${want} cannot be computed in on CUDA; expected bfloat16, float16 or float32`);
}

export function createBackend(o: CreateBackendOptions = {}): CreatedBackend {
  const selection = selectDevice(o.device ?? "auto");
  if (selection.kind === "cuda") {
    return { backend: CudaBackend.create({ activationDType: cudaActivationDType(o) }), selection };
  }
  return { backend: new CpuBackend({ threads: o.threads }), selection };
}

/** On WebGPU: f16 activations and KV cache for --dtype float16 (shader-f16), f32 otherwise (WebGPU has no bf16 arithmetic; bf16 weights are read as they are). */
export function webGpuActivationDType(o: CreateBackendOptions): "f16" | "f32" {
  return o.dtype === "f16" ? "f16" : "f32";
}

/** createBackend, with WebGPU among the choices. */
export async function createBackendAsync(o: CreateBackendOptions = {}): Promise<CreatedBackend> {
  const device = o.device ?? "auto";
  if (device === "cpu" || device === "cuda") return createBackend(o);
  if (device === "auto") {
    const cuda = selectDevice("auto");
    if (cuda.kind === "cuda") return createBackend(o);
    const hw = hardwareGpuPossible();
    if (!hw.possible)
      return { backend: new CpuBackend({ threads: o.threads }), selection: { kind: "cpu", reason: `${cuda.reason}; ${hw.reason}` } };
    const probe = await probeWebGpu(false);
    if (probe.kind !== "webgpu")
      return { backend: new CpuBackend({ threads: o.threads }), selection: { kind: "cpu", reason: `${cuda.reason}; ${probe.reason}` } };
    const backend = await createWebGpuBackend({ activationDType: webGpuActivationDType(o) }, probe);
    return {
      backend,
      selection: { kind: "webgpu", reason: `no CUDA (${cuda.reason}); a hardware WebGPU adapter was found`, adapter: backend.adapterName },
    };
  }
  const backend = await createWebGpuBackend({ activationDType: webGpuActivationDType(o) });
  return { backend, selection: { kind: "webgpu", reason: "--device webgpu was requested", adapter: backend.adapterName } };
}

/** One line for the start-up banner: what runs where, and why. */
export function describeSelection(requested: DeviceRequest, s: DeviceSelection): string {
  if (s.kind === "webgpu") return `device ${requested} picked webgpu: ${s.adapter ?? "unknown adapter"} (${s.reason})`;
  const gpu = s.devices?.[0];
  if (s.kind === "cuda") return `device ${requested} picked cuda: ${gpu ? `${gpu.name} (sm ${gpu.computeCapability})` : s.reason}`;
  return `device ${requested} picked cpu: ${s.reason}`;
}

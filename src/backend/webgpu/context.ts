/**
 * The WebGPU device a backend runs on: the adapter's identity, the features and limits the kernels are
 * specialised for, and the device requested with them. Only the WebGPU API is used here (no Node.js
 * module), so the same code runs on a browser's `navigator.gpu` and on Dawn's Node.js binding.
 */

/** What the kernels are compiled for: read once from the adapter, part of every pipeline's cache key. */
export interface WebGpuLimits {
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  minStorageBufferOffsetAlignment: number;
  minUniformBufferOffsetAlignment: number;
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
  maxComputeWorkgroupsPerDimension: number;
  maxStorageBuffersPerShaderStage: number;
}

export interface WebGpuAdapterDescription {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** A CPU implementation (lavapipe/llvmpipe, SwiftShader, WARP): used only when asked for by name. */
  isSoftware: boolean;
  features: string[];
  subgroupMinSize: number;
  subgroupMaxSize: number;
}

export interface WebGpuContext {
  readonly device: GPUDevice;
  readonly adapter: WebGpuAdapterDescription;
  readonly limits: WebGpuLimits;
  /** `shader-f16`: f16 arithmetic and f16 storage arrays (f16 activations and KV cache). */
  readonly hasF16: boolean;
  /** `subgroups`: subgroup reductions inside kernels. */
  readonly hasSubgroups: boolean;
  /** `timestamp-query`: per-kernel GPU timings for the benchmark. */
  readonly hasTimestamps: boolean;
}

const SOFTWARE = /llvmpipe|lavapipe|softpipe|swiftshader|warp|microsoft basic render/i;

export function describeAdapter(adapter: GPUAdapter): WebGpuAdapterDescription {
  const info = adapter.info;
  const text = `${info.vendor} ${info.architecture} ${info.device} ${info.description}`;
  const fallback = (info as { isFallbackAdapter?: boolean }).isFallbackAdapter === true;
  const sub = info as { subgroupMinSize?: number; subgroupMaxSize?: number };
  return {
    vendor: info.vendor,
    architecture: info.architecture,
    device: info.device,
    description: info.description,
    isSoftware: fallback || SOFTWARE.test(text),
    features: [...adapter.features].sort(),
    subgroupMinSize: sub.subgroupMinSize ?? 0,
    subgroupMaxSize: sub.subgroupMaxSize ?? 0,
  };
}

/** The adapter as one line: "llvmpipe (LLVM 15.0.6, 256 bits) (mesa llvmpipe, software)". */
export function adapterName(a: WebGpuAdapterDescription): string {
  const name = a.description || a.device || a.architecture || "unknown adapter";
  const who = [a.vendor, a.architecture].filter((s) => s && s !== "software" && !name.includes(s)).join(" ");
  return `${name}${who ? ` (${who}${a.isSoftware ? ", software" : ""})` : a.isSoftware ? " (software)" : ""}`;
}

/** Request a device with every feature the kernels can use and the adapter's own limits (not WebGPU's defaults). */
export async function openDevice(adapter: GPUAdapter): Promise<WebGpuContext> {
  const wanted: GPUFeatureName[] = ["shader-f16", "subgroups", "timestamp-query"];
  const requiredFeatures = wanted.filter((f) => adapter.features.has(f));
  const a = adapter.limits;
  const limits: WebGpuLimits = {
    maxStorageBufferBindingSize: a.maxStorageBufferBindingSize,
    maxBufferSize: a.maxBufferSize,
    minStorageBufferOffsetAlignment: a.minStorageBufferOffsetAlignment,
    minUniformBufferOffsetAlignment: a.minUniformBufferOffsetAlignment,
    maxComputeWorkgroupStorageSize: a.maxComputeWorkgroupStorageSize,
    maxComputeInvocationsPerWorkgroup: a.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupsPerDimension: a.maxComputeWorkgroupsPerDimension,
    maxStorageBuffersPerShaderStage: a.maxStorageBuffersPerShaderStage,
  };
  const device = await adapter.requestDevice({
    requiredFeatures,
    requiredLimits: {
      maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
      maxBufferSize: limits.maxBufferSize,
      maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: limits.maxComputeInvocationsPerWorkgroup,
      maxStorageBuffersPerShaderStage: limits.maxStorageBuffersPerShaderStage,
      minStorageBufferOffsetAlignment: limits.minStorageBufferOffsetAlignment,
      minUniformBufferOffsetAlignment: limits.minUniformBufferOffsetAlignment,
    },
  });
  return {
    device,
    adapter: describeAdapter(adapter),
    limits,
    hasF16: requiredFeatures.includes("shader-f16"),
    hasSubgroups: requiredFeatures.includes("subgroups"),
    hasTimestamps: requiredFeatures.includes("timestamp-query"),
  };
}

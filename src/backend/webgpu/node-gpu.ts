/**
 * WebGPU in Node.js: Dawn's binding (the `webgpu` npm package, prebuilt for Linux, macOS and Windows).
 * This is the one Node-specific file of the WebGPU backend: in a browser, `navigator.gpu` takes its place.
 */
import { existsSync, readdirSync } from "node:fs";
import { freemem, platform, totalmem } from "node:os";
import { adapterName, describeAdapter, openDevice, type WebGpuAdapterDescription } from "./context.js";
import { WebGpuBackend, type WebGpuBackendOptions } from "./webgpu-backend.js";

let gpuPromise: Promise<GPU | { error: string }> | null = null;

/** The GPU entry point: the browser's, or Dawn's (its WebGPU globals installed once). */
export function nodeGpu(): Promise<GPU | { error: string }> {
  gpuPromise ??= (async () => {
    const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
    if (nav?.gpu) return nav.gpu;
    try {
      const mod = (await import("webgpu")) as { create: (o: string[]) => GPU; globals: object };
      Object.assign(globalThis, mod.globals);
      return mod.create([]);
    } catch (err) {
      return { error: `the webgpu package (Dawn) did not load: ${(err as Error).message}` };
    }
  })();
  return gpuPromise;
}

export type WebGpuProbe =
  | { kind: "webgpu"; adapter: WebGpuAdapterDescription; gpuAdapter: GPUAdapter }
  | { kind: "none"; reason: string; adapter?: WebGpuAdapterDescription };

/** Find an adapter. A software one (lavapipe, SwiftShader) counts only when `allowSoftware`: auto never picks it. */
export async function probeWebGpu(allowSoftware: boolean): Promise<WebGpuProbe> {
  const gpu = await nodeGpu();
  if ("error" in gpu) return { kind: "none", reason: gpu.error };
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (err) {
    return { kind: "none", reason: `requestAdapter failed: ${(err as Error).message}` };
  }
  if (!adapter) {
    return {
      kind: "none",
      reason:
        "no WebGPU adapter found (Dawn needs Vulkan, Metal or D3D12; on Linux without a GPU install Mesa 25's lavapipe: " +
        "apt-get install -t bookworm-backports mesa-vulkan-drivers)",
    };
  }
  const desc = describeAdapter(adapter);
  if (desc.isSoftware && !allowSoftware) {
    return {
      kind: "none",
      reason: `the only WebGPU adapter is a software one (${adapterName(desc)}); ask for it with --device webgpu`,
      adapter: desc,
    };
  }
  return { kind: "webgpu", adapter: desc, gpuAdapter: adapter };
}

/**
 * Whether a hardware adapter can exist, decided without loading Dawn: on Linux a GPU has a DRM render
 * node (/dev/dri/renderD*); without one only a software adapter could be found, and `auto` would not
 * take it. (Loading Dawn also prints warnings on stderr, which a start-up error should not carry.)
 */
export function hardwareGpuPossible(): { possible: boolean; reason: string } {
  if (platform() !== "linux") return { possible: true, reason: "" };
  const render = existsSync("/dev/dri") ? readdirSync("/dev/dri").filter((f) => f.startsWith("renderD")) : [];
  if (render.length > 0) return { possible: true, reason: "" };
  return {
    possible: false,
    reason: "no GPU render node (/dev/dri/renderD*) for a hardware WebGPU adapter; --device webgpu uses a software one",
  };
}

const consumed = new WeakSet<GPUAdapter>();

/** A WebGPU backend on the adapter found (software adapters included: the caller asked for WebGPU by name). */
export async function createWebGpuBackend(opts: WebGpuBackendOptions = {}, probe?: WebGpuProbe): Promise<WebGpuBackend> {
  // An adapter gives one device (then it is consumed): a probe's adapter is used once, then a fresh one is found.
  let p = probe;
  if (!p || p.kind !== "webgpu" || consumed.has(p.gpuAdapter)) p = await probeWebGpu(true);
  if (p.kind !== "webgpu") throw new Error(`--device webgpu: ${p.reason}`);
  consumed.add(p.gpuAdapter);
  const ctx = await openDevice(p.gpuAdapter);
  // WebGPU reports no memory size; a software adapter's memory is the host's.
  const memoryHint = p.adapter.isSoftware ? { totalBytes: totalmem(), freeBytes: freemem } : undefined;
  return new WebGpuBackend(ctx, { memoryHint, ...opts });
}

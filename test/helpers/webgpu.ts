import type { WebGpuProbe } from "../../src/backend/webgpu/node-gpu.js";

/**
 * The skip reason of a WebGPU suite, or false when an adapter is there. Where the machine is meant to
 * have one (TOKAMAK_REQUIRE_WEBGPU=1, as `.ci/run` sets it), a missing adapter fails instead of skipping.
 */
export function webGpuSkip(probe: WebGpuProbe): string | false {
  if (probe.kind === "webgpu") return false;
  if (process.env.TOKAMAK_REQUIRE_WEBGPU === "1") {
    throw new Error(`TOKAMAK_REQUIRE_WEBGPU=1 but no WebGPU adapter was found: ${probe.reason}`);
  }
  return `no WebGPU adapter: ${probe.reason}`;
}

/**
 * The sampling op on WebGPU. (Interim: the logits rows are read back and sampled by the CPU op; the WGSL
 * sampling kernels replace this.)
 */
import { sampleRows } from "../cpu/sample.js";
import type { SampleOutput, SampleRow } from "../sampling.js";
import type { Tensor } from "../tensor.js";
import type { WebGpuBackend } from "./webgpu-backend.js";

export class WebGpuSampler {
  constructor(private readonly backend: WebGpuBackend) {}

  async sample(logits: Tensor, rows: readonly SampleRow[]): Promise<SampleOutput> {
    const V = logits.shape[1]!;
    const host = await this.backend.readAsync(logits.rows(0, rows.length));
    return sampleRows(host, 0, V, V, rows);
  }

  dispose(): void {}
}

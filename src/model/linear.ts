/**
 * Linear layers: y = x · Wᵀ (+ b), whatever the weight's encoding.
 *
 * A Linear owns its weight tensors (dense, a GGUF block format, or INT8/FP8 with per-channel
 * scales), how they were produced from the file (its QuantMethod), the tensor-parallel shard it
 * holds, and an adapter hook that the LoRA work fills with a low-rank delta. Fused projections
 * (q|k|v, gate|up) are one Linear whose output columns may come from several parts: one part when
 * the source matrices share an encoding, one per matrix when they do not (a Q4_K_M file keeps
 * attn_v in Q6_K beside Q4_K attn_q), each part writing its own columns of the output.
 */
import type { Backend } from "../backend/backend.js";
import type { DType } from "../backend/dtype.js";
import type { Tensor } from "../backend/tensor.js";

/** One stored matrix of a Linear and the output columns it fills. */
export interface LinearPart {
  /** [rows, inFeatures] in any registered element type. */
  weight: Tensor;
  /** f32 [rows] (per output channel) or [1] (per tensor): the int8 and fp8 scales. */
  scale?: Tensor;
  /** [rows] in the activation dtype. */
  bias?: Tensor;
  /** First output column this part writes. */
  col: number;
}

/** Which slice of the full matrix this process holds (tensor parallelism; size 1 today). */
export interface TensorShard {
  rank: number;
  size: number;
  /** Split along the output features (column-parallel) or the input features (row-parallel). */
  dim: "out" | "in";
}

export const WHOLE: TensorShard = { rank: 0, size: 1, dim: "out" };

/** Adds a delta to a Linear's output, e.g. LoRA's B·A·x·(alpha/r). */
export interface LinearAdapter {
  apply(backend: Backend, out: Tensor, x: Tensor): void;
}

export class Linear {
  /** Set by adapter loading (LoRA); applied after the base product. */
  adapter: LinearAdapter | undefined;

  constructor(
    readonly label: string,
    readonly inFeatures: number,
    readonly outFeatures: number,
    readonly parts: readonly LinearPart[],
    /** How the stored weights were produced from the file's ("none": as stored, or a dense dtype conversion). */
    readonly quantMethod: string,
    readonly shard: TensorShard = WHOLE,
  ) {
    let col = 0;
    for (const p of parts) {
      if (p.col !== col || p.weight.shape[1] !== inFeatures) {
        throw new Error(`Linear ${label}: part ${p.weight} at column ${p.col} does not continue [.., ${inFeatures}] at column ${col}`);
      }
      col += p.weight.shape[0]!;
    }
    if (col !== outFeatures) throw new Error(`Linear ${label}: parts cover ${col} output features, expected ${outFeatures}`);
  }

  /** The weights' element type, or "mixed" when the parts differ. */
  get dtype(): DType | "mixed" {
    const first = this.parts[0]!.weight.dtype;
    return this.parts.every((p) => p.weight.dtype === first) ? first : "mixed";
  }

  /** out [t, outFeatures] = x [t, inFeatures] · Wᵀ (+ b) (+ the adapter's delta). */
  forward(backend: Backend, out: Tensor, x: Tensor): void {
    if (this.parts.length === 1) {
      const p = this.parts[0]!;
      backend.linear(out, x, p.weight, p.bias, p.scale);
    } else {
      for (const p of this.parts) backend.linear(out.cols(p.col, p.weight.shape[0]!), x, p.weight, p.bias, p.scale);
    }
    this.adapter?.apply(backend, out, x);
  }

  /** Every tensor this layer holds (weights, scales, biases). */
  tensors(): Tensor[] {
    return this.parts.flatMap((p) => [p.weight, ...(p.scale ? [p.scale] : []), ...(p.bias ? [p.bias] : [])]);
  }
}

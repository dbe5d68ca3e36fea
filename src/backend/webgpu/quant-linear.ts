/** Matrix-vector kernels over ggml block formats in WGSL. */
import type { DType } from "../dtype.js";
import type { Tensor } from "../tensor.js";
import type { KernelSpec } from "./kernels.js";

export const WEBGPU_QUANT_TYPES: readonly DType[] = [];

export function quantLinearSpec(_out: Tensor, _x: Tensor, w: Tensor, _n0: number, _bias?: Tensor): KernelSpec {
  throw new Error(`webgpu linear: no kernel for ${w.dtype} weights`);
}

/**
 * Matrix products over weights in the kernel memory (kernel-memory.ts) on the CPU: quantized ones
 * (GGUF block formats, int8 and fp8 per channel) and dense bf16 / f16 / f32 matrices, read in
 * place. The calling thread first puts the activations into that memory once, in the format each
 * weight type's dot product takes (ggml's vec_dot_type: Q8_0, Q8_1 or Q8_K; f32 for fp8 and the
 * dense kinds); then every thread runs the kernels over its slice of output features, a tile of
 * rows at a time, into its own tile of the kernel memory (int8/fp8 scales applied there), and
 * copies the tile out adding the bias.
 */
import type { Mat } from "./kernels.js";
import { type QuantKind, WasmQuant } from "./wasm-quant.js";
import { dotRows, quantizeActivations } from "./quant-dot.js";

export interface QuantLinearArgs {
  kind: QuantKind;
  /** Address of the weight's first row in the kernel memory, and its row length in bytes. */
  w: number;
  wRowBytes: number;
  /** Address of the quantized activations (one row of `xqRowBytes` per row of x). */
  xq: number;
  xqRowBytes: number;
  rows: number;
  /** Weight blocks per row (QUANT_KERNELS[kind].blockSize elements each). */
  blocks: number;
  /** Each thread's output tile: thread `slot` writes at tiles + slot · tileBytes; its single-row workspace follows the tile. */
  tiles: number;
  tileBytes: number;
  /**
   * Bytes of the workspace after each tile (0: none), where a one-row product over quantized weights
   * expands its activations once and a product over dense ones decodes each four weight rows once.
   */
  workBytes: number;
  /** Output features per tile. */
  tileRows: number;
  /** Address of the f32 scales of int8/fp8 weights, one per output feature (0: none). */
  scale: number;
  out: Mat<Float32Array>;
  bias: { data: Float32Array; offset: number } | null;
}

/** One thread's access to the kernel memory and its quantized kernels. */
export class QuantThread {
  private wasm: WasmQuant | null = null;
  private u8: Uint8Array = new Uint8Array(0);
  private f32: Float32Array = new Float32Array(0);

  constructor(
    readonly memory: WebAssembly.Memory,
    private readonly module: WebAssembly.Module | null,
    /** This thread's tile index (0 on the calling thread). */
    readonly slot: number,
  ) {}

  /** Views of the whole memory, renewed when it has grown. */
  private views(): { u8: Uint8Array; f32: Float32Array } {
    const buf = this.memory.buffer as unknown as SharedArrayBuffer;
    if (this.u8.byteLength !== buf.byteLength) {
      this.u8 = new Uint8Array(buf);
      this.f32 = new Float32Array(buf);
    }
    return { u8: this.u8, f32: this.f32 };
  }

  private kernels(): WasmQuant | null {
    if (!this.wasm && this.module) this.wasm = new WasmQuant(this.module, this.memory);
    return this.wasm;
  }

  /** Quantize `n` f32 values at address x (kernel memory) into activation blocks at dst. */
  quantize(kind: QuantKind, x: number, n: number, dst: number): void {
    const wasm = this.kernels();
    if (wasm) {
      wasm.quantize(kind, x, n, dst);
      return;
    }
    const { u8, f32 } = this.views();
    quantizeActivations(kind, f32, x / 4, n, u8, dst);
  }

  /** out rows [n0, n1) of the product: linearRange's contract for quantized weights. */
  run(a: QuantLinearArgs, n0: number, n1: number): void {
    const wasm = this.kernels();
    const tile = a.tiles + this.slot * a.tileBytes;
    for (let n = n0; n < n1; n += a.tileRows) {
      const cn = Math.min(a.tileRows, n1 - n);
      const w = a.w + n * a.wRowBytes;
      const scales = a.scale ? a.scale + n * 4 : 0;
      if (wasm)
        wasm.mm(
          a.kind,
          w,
          a.wRowBytes,
          cn,
          a.xq,
          a.xqRowBytes,
          a.rows,
          a.blocks,
          tile,
          cn,
          scales,
          a.workBytes ? tile + a.tileBytes - a.workBytes : 0,
        );
      else {
        const { u8, f32 } = this.views();
        dotRows(
          a.kind,
          u8,
          w,
          a.wRowBytes,
          cn,
          u8,
          a.xq,
          a.xqRowBytes,
          a.rows,
          a.blocks,
          f32,
          tile / 4,
          cn,
          scales ? f32.subarray(scales / 4) : undefined,
        );
      }
      this.copyOut(a, n, cn, tile / 4);
    }
  }

  private copyOut(a: QuantLinearArgs, n: number, cn: number, tile: number): void {
    const { f32 } = this.views();
    const out = a.out.data;
    for (let m = 0; m < a.rows; m++) {
      const src = tile + m * cn;
      const dst = a.out.offset + m * a.out.stride + n;
      if (!a.bias) out.set(f32.subarray(src, src + cn), dst);
      else for (let j = 0; j < cn; j++) out[dst + j] = f32[src + j]! + a.bias.data[a.bias.offset + n + j]!;
    }
  }
}

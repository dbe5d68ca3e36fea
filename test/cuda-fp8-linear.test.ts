/**
 * The FP8 e4m3 W8A8 descriptors of linear-gemm.ts (createFp8LinearDescriptors), checked against a recording
 * stand-in for cuBLASLt: no library or GPU is needed. What cuBLASLt itself does with them (and the numbers) is
 * the GPU's to check; the enum values used here are checked against cublasLt.h by cuda-headers.test.ts.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  CUBLAS_COMPUTE,
  CUBLASLT_EPILOGUE,
  CUBLASLT_MATMUL_DESC,
  CUBLASLT_MATMUL_MATRIX_SCALE,
  CUDA_R,
  type CublasLt,
  MatmulDesc,
  MatrixLayout,
} from "../src/backend/cuda/ffi/cublaslt.js";
import { checkFp8Linear, createFp8LinearDescriptors, destroyDescriptors, linearLayout } from "../src/backend/cuda/linear-gemm.js";

interface Recorded {
  descs: { compute: number; scale: number }[];
  attrs: [number, string, number | bigint][];
  layouts: [number, number, number, number][];
  destroyed: string[];
}

/** The CublasLt methods the descriptor builders call, recording their arguments; `failLayout` makes the n-th layout fail. */
function recordingLt(failLayout = -1): { lt: CublasLt; rec: Recorded } {
  const rec: Recorded = { descs: [], attrs: [], layouts: [], destroyed: [] };
  let handles = 0x1000n;
  const fake = {
    matmulDescCreate(compute: number, scale: number) {
      rec.descs.push({ compute, scale });
      return new MatmulDesc(handles++);
    },
    matmulDescSetAttribute(_d: MatmulDesc, attr: number, kind: string, value: number | bigint) {
      rec.attrs.push([attr, kind, value]);
    },
    matrixLayoutCreate(type: number, rows: number, cols: number, ld: number) {
      if (rec.layouts.length === failLayout) throw new Error("layout refused");
      rec.layouts.push([type, rows, cols, ld]);
      return new MatrixLayout(handles++);
    },
    matrixLayoutDestroy(l: MatrixLayout) {
      rec.destroyed.push(`layout ${l.handle}`);
    },
    matmulDescDestroy(d: MatmulDesc) {
      rec.destroyed.push(`desc ${d.handle}`);
    },
  };
  return { lt: fake as unknown as CublasLt, rec };
}

const attr = (rec: Recorded, a: number) => rec.attrs.filter(([x]) => x === a).map(([, kind, v]) => [kind, v]);

describe("FP8 e4m3 W8A8 cuBLASLt descriptors", () => {
  // out[5, 64] = x[5, 32] · W[64, 32]ᵀ with padded strides.
  const l = linearLayout(5, 64, 32, 48, 32, 80);

  it("describe TN e4m3 operands with per-tensor scale pointers and a bf16 D", () => {
    const { lt, rec } = recordingLt();
    const d = createFp8LinearDescriptors(lt, l, { wScale: 0x7000n, xScale: 0x7100n, outDtype: "bf16", bias: null });
    assert.deepEqual(rec.descs, [{ compute: CUBLAS_COMPUTE.C32F, scale: CUDA_R.F32 }]);
    assert.deepEqual(attr(rec, CUBLASLT_MATMUL_DESC.TRANSA), [["i32", 1]]);
    assert.deepEqual(attr(rec, CUBLASLT_MATMUL_DESC.TRANSB), [["i32", 0]]);
    assert.deepEqual(attr(rec, CUBLASLT_MATMUL_DESC.A_SCALE_POINTER), [["ptr", 0x7000n]]);
    assert.deepEqual(attr(rec, CUBLASLT_MATMUL_DESC.B_SCALE_POINTER), [["ptr", 0x7100n]]);
    // Per-tensor is cuBLASLt's default mode: not set, so an older cuBLAS without the attribute still works.
    assert.deepEqual(attr(rec, CUBLASLT_MATMUL_DESC.A_SCALE_MODE), []);
    assert.deepEqual(attr(rec, CUBLASLT_MATMUL_DESC.B_SCALE_MODE), []);
    assert.deepEqual(attr(rec, CUBLASLT_MATMUL_DESC.EPILOGUE), []);
    assert.deepEqual(attr(rec, CUBLASLT_MATMUL_DESC.FAST_ACCUM), []);
    assert.deepEqual(rec.layouts, [
      [CUDA_R.F8_E4M3, 32, 64, 32], // A = W: K × N, ld = W's row stride
      [CUDA_R.F8_E4M3, 32, 5, 48], // B = x: K × M
      [CUDA_R.BF16, 64, 5, 80], // D = out: N × M
    ]);
    destroyDescriptors(lt, d);
    assert.equal(rec.destroyed.length, 4);
  });

  it("set outer-vector scale modes, fast accumulation and the bias epilogue in D's type", () => {
    const { lt, rec } = recordingLt();
    createFp8LinearDescriptors(lt, l, {
      wScale: 1n,
      xScale: 2n,
      outDtype: "f16",
      bias: 0x9000n,
      wScaleMode: "outer-vector",
      xScaleMode: "outer-vector",
      fastAccum: true,
    });
    assert.deepEqual(attr(rec, CUBLASLT_MATMUL_DESC.A_SCALE_MODE), [["i32", CUBLASLT_MATMUL_MATRIX_SCALE.OUTER_VEC_32F]]);
    assert.deepEqual(attr(rec, CUBLASLT_MATMUL_DESC.B_SCALE_MODE), [["i32", CUBLASLT_MATMUL_MATRIX_SCALE.OUTER_VEC_32F]]);
    assert.deepEqual(attr(rec, CUBLASLT_MATMUL_DESC.FAST_ACCUM), [["i8", 1]]);
    assert.deepEqual(attr(rec, CUBLASLT_MATMUL_DESC.EPILOGUE), [["u32", CUBLASLT_EPILOGUE.BIAS]]);
    assert.deepEqual(attr(rec, CUBLASLT_MATMUL_DESC.BIAS_POINTER), [["ptr", 0x9000n]]);
    assert.deepEqual(attr(rec, CUBLASLT_MATMUL_DESC.BIAS_DATA_TYPE), [["i32", CUDA_R.F16]]);
    assert.equal(rec.layouts[2]![0], CUDA_R.F16);
  });

  it("refuse shapes cuBLASLt's FP8 kernels cannot take, and free what was made when a layout fails", () => {
    assert.throws(() => checkFp8Linear(40, 48, 48), /k is 40; .* multiple of 16/);
    assert.throws(() => checkFp8Linear(32, 40, 32), /x row stride is 40/);
    assert.throws(() => checkFp8Linear(32, 32, 36), /weight row stride is 36/);
    const { lt: lt0 } = recordingLt();
    const opts = { wScale: 1n, xScale: 2n, outDtype: "bf16", bias: null } as const;
    assert.throws(() => createFp8LinearDescriptors(lt0, linearLayout(2, 16, 24, 24, 24, 16), opts), /k is 24/);
    const { lt, rec } = recordingLt(2);
    assert.throws(() => createFp8LinearDescriptors(lt, l, opts), /layout refused/);
    assert.deepEqual(rec.destroyed, ["layout 4097", "layout 4098", "desc 4096"]);
  });
});

// Linear layers on cuBLASLt with row strides: out[M,N] = x[M,K] · W[N,K]ᵀ (+ bias[N]).
//
// The layout, worked out once. cuBLASLt matrices are column-major. A row-major matrix with R
// rows, C columns and row stride s is, read column-major, the C × R matrix with leading
// dimension s (element (c, r) at r·s + c): the same bytes, transposed. So with strides sx, sw, so:
//   x   row-major [M, K], stride sx  ==  column-major K × M, ld sx     (xᵀ)
//   W   row-major [N, K], stride sw  ==  column-major K × N, ld sw     (Wᵀ)
//   out row-major [M, N], stride so  ==  column-major N × M, ld so     (outᵀ)
// and out = x·Wᵀ  ⇔  outᵀ = W·xᵀ = (Wᵀ)ᵀ · (xᵀ). In cuBLASLt's D = op(A)·op(B) with
// D N × M (cuBLAS m = N, n = M, k = K): A = W's bytes as K × N ld sw with op T, B = x's bytes as
// K × M ld sx with op N, C = D = out's bytes as N × M ld so. Nothing is copied or transposed.
// The bias (length N) runs along D's rows, which is exactly what CUBLASLT_EPILOGUE_BIAS adds
// (one value per row of D, broadcast over its columns). Leading dimensions must be at least the
// row lengths (sx ≥ K, sw ≥ K, so ≥ N), which any row-major view satisfies.
//
// One heuristic query per (dtype, shape, strides, alignments, bias), then cached; alignments are
// part of the key because cuBLASLt's heuristic assumes 256-byte aligned pointers unless told
// otherwise, and a row view of a tensor may be less aligned than that.
import {
  CUBLAS_COMPUTE,
  CUBLAS_OP_N,
  CUBLAS_OP_T,
  CUBLASLT_EPILOGUE,
  CUBLASLT_MATMUL_DESC,
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
  CUDA_R,
  type CublasLt,
  type GemmDType,
  type HeuristicResults,
  type LtHandle,
  type MatmulDesc,
  type MatrixLayout,
} from "./ffi/cublaslt.js";
import type { DevicePtr, Stream } from "./ffi/driver.js";
import { formatBytes } from "./ffi/errors.js";
import { koffi } from "./ffi/koffi.js";

/** cublasLtMatmulPreferenceAttributes_t CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_{A,B,C,D}_BYTES (cublasLt.h), uint32, default 256. */
export const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT = { A: 5, B: 6, C: 7, D: 8 } as const;

const DATA_TYPE: Readonly<Record<GemmDType, number>> = { bf16: CUDA_R.BF16, f16: CUDA_R.F16, f32: CUDA_R.F32 };

/** A column-major operand as cuBLASLt describes it. */
export interface ColumnMajor {
  rows: number;
  cols: number;
  ld: number;
}

export interface LinearLayout {
  transA: number;
  transB: number;
  /** A = W, B = x, D = C = out; see the header of this file. */
  a: ColumnMajor;
  b: ColumnMajor;
  d: ColumnMajor;
}

/** The cuBLASLt operands of out[M,N] = x[M,K]·W[N,K]ᵀ for row-major tensors with the given row strides (elements). */
export function linearLayout(m: number, n: number, k: number, xStride: number, wStride: number, outStride: number): LinearLayout {
  const checks: [string, number, number][] = [
    ["x", xStride, k],
    ["weight", wStride, k],
    ["out", outStride, n],
  ];
  for (const [name, stride, min] of checks) {
    if (!Number.isSafeInteger(stride) || stride < min) {
      throw new RangeError(`linear: ${name} has row stride ${stride}; expected an integer of at least its row length ${min}`);
    }
  }
  return {
    transA: CUBLAS_OP_T,
    transB: CUBLAS_OP_N,
    a: { rows: k, cols: n, ld: wStride },
    b: { rows: k, cols: m, ld: xStride },
    d: { rows: n, cols: m, ld: outStride },
  };
}

/** The largest power of two (up to 256) dividing a device address: what the heuristic is told to expect. */
export function addressAlignment(address: bigint): number {
  let align = 256;
  while (align > 1 && address % BigInt(align) !== 0n) align >>= 1;
  return align;
}

export interface LinearCall {
  dtype: GemmDType;
  m: number;
  n: number;
  k: number;
  /** Device addresses of each operand's first element, and row strides in elements. */
  out: bigint;
  outStride: number;
  x: bigint;
  xStride: number;
  w: bigint;
  wStride: number;
  /** A bias in `dtype`, added by the epilogue; null for none. */
  bias: bigint | null;
}

/** The matmul descriptor and the three operand layouts of one GEMM shape (no handle needed, so checkable without a GPU). */
export interface GemmDescriptors {
  desc: MatmulDesc;
  a: MatrixLayout;
  b: MatrixLayout;
  d: MatrixLayout;
}

interface Plan extends GemmDescriptors {
  algos: HeuristicResults;
}

/** Descriptors for `l` in `dtype`, with f32 accumulation (for f32 data true fp32, no TF32, as the CPU computes); bias: a device address for the epilogue, or null. */
export function createLinearDescriptors(lt: CublasLt, dtype: GemmDType, l: LinearLayout, bias: bigint | null): GemmDescriptors {
  const dataType = DATA_TYPE[dtype];
  const desc = lt.matmulDescCreate(CUBLAS_COMPUTE.C32F, CUDA_R.F32);
  const layouts: MatrixLayout[] = [];
  try {
    lt.matmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC.TRANSA, "i32", l.transA);
    lt.matmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC.TRANSB, "i32", l.transB);
    if (bias !== null) {
      lt.matmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC.EPILOGUE, "u32", CUBLASLT_EPILOGUE.BIAS);
      lt.matmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC.BIAS_POINTER, "ptr", bias);
      lt.matmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC.BIAS_DATA_TYPE, "i32", dataType);
    }
    for (const s of [l.a, l.b, l.d]) layouts.push(lt.matrixLayoutCreate(dataType, s.rows, s.cols, s.ld));
    const [a, b, d] = layouts as [MatrixLayout, MatrixLayout, MatrixLayout];
    return { desc, a, b, d };
  } catch (err) {
    for (const layout of layouts) lt.matrixLayoutDestroy(layout);
    lt.matmulDescDestroy(desc);
    throw err;
  }
}

export function destroyDescriptors(lt: CublasLt, d: GemmDescriptors): void {
  lt.matrixLayoutDestroy(d.a);
  lt.matrixLayoutDestroy(d.b);
  lt.matrixLayoutDestroy(d.d);
  lt.matmulDescDestroy(d.desc);
}

/** More distinct shapes than this (a serving engine sees one M per batch size) and the oldest plans are dropped. */
const MAX_PLANS = 4096;

export class LinearGemm {
  private readonly plans = new Map<string, Plan>();
  // alpha = 1, beta = 0 as host floats (scale type 32F), in memory that never moves.
  private readonly scalars = new Float32Array(new ArrayBuffer(8));
  private readonly alpha: bigint;
  private readonly beta: bigint;

  constructor(
    private readonly lt: CublasLt,
    private readonly handle: LtHandle,
    /** Scratch shared with other work on the same stream; its contents need not survive between calls. */
    private readonly workspace: DevicePtr,
  ) {
    this.scalars[0] = 1;
    this.scalars[1] = 0;
    this.alpha = koffi().address(this.scalars);
    this.beta = this.alpha + 4n;
  }

  get cachedPlans(): number {
    return this.plans.size;
  }

  run(c: LinearCall, stream: Stream): void {
    const plan = this.plan(c);
    if (c.bias !== null) this.lt.matmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC.BIAS_POINTER, "ptr", c.bias);
    const r = this.lt.raw.cublasLtMatmul(
      this.handle.handle,
      plan.desc.handle,
      this.alpha,
      c.w,
      plan.a.handle,
      c.x,
      plan.b.handle,
      this.beta,
      c.out,
      plan.d.handle,
      c.out,
      plan.d.handle,
      plan.algos.algoAddress(0),
      this.workspace.address,
      this.workspace.bytes,
      stream.handle,
    );
    if (r !== 0) this.lt.check(r, "cublasLtMatmul", describe(c));
  }

  dispose(): void {
    for (const plan of this.plans.values()) this.destroyPlan(plan);
    this.plans.clear();
  }

  private plan(c: LinearCall): Plan {
    const alignA = addressAlignment(c.w);
    const alignB = addressAlignment(c.x);
    const alignD = addressAlignment(c.out);
    const key = `${c.dtype} ${c.m}x${c.n}x${c.k} ld ${c.wStride},${c.xStride},${c.outStride} align ${alignA},${alignB},${alignD}${c.bias !== null ? " +bias" : ""}`;
    const cached = this.plans.get(key);
    if (cached) return cached;
    if (this.plans.size >= MAX_PLANS) {
      // Maps iterate in insertion order: drop the oldest.
      const [oldKey, oldPlan] = this.plans.entries().next().value as [string, Plan];
      this.destroyPlan(oldPlan);
      this.plans.delete(oldKey);
    }
    const plan = this.createPlan(c, alignA, alignB, alignD);
    this.plans.set(key, plan);
    return plan;
  }

  private createPlan(c: LinearCall, alignA: number, alignB: number, alignD: number): Plan {
    const lt = this.lt;
    const l = linearLayout(c.m, c.n, c.k, c.xStride, c.wStride, c.outStride);
    const descriptors = createLinearDescriptors(lt, c.dtype, l, c.bias);
    const pref = lt.preferenceCreate();
    try {
      lt.preferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, "u64", this.workspace.bytes);
      lt.preferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT.A, "u32", alignA);
      lt.preferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT.B, "u32", alignB);
      lt.preferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT.C, "u32", alignD);
      lt.preferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT.D, "u32", alignD);
      const { desc, a, b, d } = descriptors;
      const algos = lt.algoGetHeuristic(this.handle, desc, a, b, d, d, pref, 1);
      if (algos.count === 0) {
        throw new Error(
          `cuBLASLt ${lt.versionString} has no algorithm for ${describe(c)} with a ${formatBytes(this.workspace.bytes)} workspace ` +
            `and pointer alignments W ${alignA}, x ${alignB}, out ${alignD} bytes; expected row strides and offsets that keep rows 16-byte aligned`,
        );
      }
      return { ...descriptors, algos };
    } catch (err) {
      destroyDescriptors(lt, descriptors);
      throw err;
    } finally {
      lt.preferenceDestroy(pref);
    }
  }

  private destroyPlan(p: Plan): void {
    destroyDescriptors(this.lt, p);
  }
}

function describe(c: LinearCall): string {
  return (
    `${c.dtype} linear out[${c.m},${c.n}] = x[${c.m},${c.k}]·W[${c.n},${c.k}]ᵀ${c.bias !== null ? " + bias" : ""} ` +
    `(row strides x ${c.xStride}, W ${c.wStride}, out ${c.outStride})`
  );
}

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
//
// FP8 W8A8 (sm_89+; createFp8LinearDescriptors, LinearGemm.runFp8): the same TN layout with A = W and
// B = x both OCP e4m3 (CUDA_R_8F_E4M3), D = out in bf16 / f16 / f32, f32 compute and scale type, and
// D = scaleA · scaleB · (W_q · x_qᵀ) (+ bias): scaleA / scaleB are device f32 pointers set with
// CUBLASLT_MATMUL_DESC_A_SCALE_POINTER / B_SCALE_POINTER, either one value per tensor (the default
// scale mode, SCALAR_32F) or, with A_SCALE_MODE / B_SCALE_MODE = OUTER_VEC_32F (cuBLAS 12.9+),
// a vector: scaleA[N] per output channel (per weight row), scaleB[M] per token. The activations
// come from quantize_fp8_e4m3 (kernels/quant_fp8.cu), whose scale output is scaleB. cuBLASLt
// requires K and the leading dimensions (bytes, for e4m3) to be multiples of 16 and the pointers
// 16-byte aligned; GPUs before sm_89 have no FP8 kernels (the heuristic returns none).
import {
  CUBLAS_COMPUTE,
  CUBLAS_OP_N,
  CUBLAS_OP_T,
  CUBLASLT_EPILOGUE,
  CUBLASLT_MATMUL_DESC,
  CUBLASLT_MATMUL_MATRIX_SCALE,
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

/** An FP8 W8A8 linear layer: x and w are e4m3 (strides in elements = bytes), out in `outDtype`; scales as Fp8LinearOptions. */
export interface Fp8LinearCall extends Omit<LinearCall, "dtype">, Omit<Fp8LinearOptions, "bias"> {}

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

/** How an FP8 operand's scale pointer is read: one f32 for the tensor, or one per row of op(A) / column of op(B). */
export type Fp8ScaleMode = "tensor" | "outer-vector";

export interface Fp8LinearOptions {
  /** Device f32: W's scale (one value, or [N] with "outer-vector"). */
  wScale: bigint;
  /** Device f32: x's scale (one value, or [M] with "outer-vector"): quantize_fp8_e4m3's scaleOut. */
  xScale: bigint;
  /** D's (and the bias's) element type. */
  outDtype: GemmDType;
  /** A bias in outDtype for the epilogue, or null. */
  bias: bigint | null;
  wScaleMode?: Fp8ScaleMode;
  xScaleMode?: Fp8ScaleMode;
  /** CUBLASLT_MATMUL_DESC_FAST_ACCUM: Hopper's faster, less precise FP8 accumulation; default off. */
  fastAccum?: boolean;
}

/** Throws unless an FP8 linear layer meets cuBLASLt's FP8 requirements (K and the e4m3 leading dimensions multiples of 16). */
export function checkFp8Linear(k: number, xStride: number, wStride: number): void {
  for (const [name, v] of [
    ["k", k],
    ["x row stride", xStride],
    ["weight row stride", wStride],
  ] as const) {
    if (v % 16 !== 0) throw new RangeError(`FP8 linear: ${name} is ${v}; cuBLASLt's FP8 matmul needs a multiple of 16`);
  }
}

/**
 * Descriptors of an FP8 e4m3 W8A8 linear layer `l` (linearLayout: A = W, B = x, D = out, TN): f32 compute and
 * scale type, e4m3 A and B, D (= C) in outDtype, A / B scale pointers and modes, optional bias epilogue.
 */
export function createFp8LinearDescriptors(lt: CublasLt, l: LinearLayout, o: Fp8LinearOptions): GemmDescriptors {
  if (l.transA !== CUBLAS_OP_T || l.transB !== CUBLAS_OP_N)
    throw new RangeError("FP8 linear: cuBLASLt's FP8 matmul needs A transposed and B not (TN)");
  checkFp8Linear(l.a.rows, l.b.ld, l.a.ld);
  const outType = DATA_TYPE[o.outDtype];
  const desc = lt.matmulDescCreate(CUBLAS_COMPUTE.C32F, CUDA_R.F32);
  const layouts: MatrixLayout[] = [];
  try {
    lt.matmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC.TRANSA, "i32", l.transA);
    lt.matmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC.TRANSB, "i32", l.transB);
    lt.matmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC.A_SCALE_POINTER, "ptr", o.wScale);
    lt.matmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC.B_SCALE_POINTER, "ptr", o.xScale);
    // The modes are set only when not the default, so that a cuBLAS without them still takes per-tensor scales.
    if ((o.wScaleMode ?? "tensor") === "outer-vector")
      lt.matmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC.A_SCALE_MODE, "i32", CUBLASLT_MATMUL_MATRIX_SCALE.OUTER_VEC_32F);
    if ((o.xScaleMode ?? "tensor") === "outer-vector")
      lt.matmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC.B_SCALE_MODE, "i32", CUBLASLT_MATMUL_MATRIX_SCALE.OUTER_VEC_32F);
    if (o.fastAccum) lt.matmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC.FAST_ACCUM, "i8", 1);
    if (o.bias !== null) {
      lt.matmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC.EPILOGUE, "u32", CUBLASLT_EPILOGUE.BIAS);
      lt.matmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC.BIAS_POINTER, "ptr", o.bias);
      lt.matmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC.BIAS_DATA_TYPE, "i32", outType);
    }
    layouts.push(lt.matrixLayoutCreate(CUDA_R.F8_E4M3, l.a.rows, l.a.cols, l.a.ld));
    layouts.push(lt.matrixLayoutCreate(CUDA_R.F8_E4M3, l.b.rows, l.b.cols, l.b.ld));
    layouts.push(lt.matrixLayoutCreate(outType, l.d.rows, l.d.cols, l.d.ld));
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
    this.matmul(plan, c, stream, () => describe(c));
  }

  /** out = wScale · xScale · (x_q · W_qᵀ) (+ bias) with e4m3 operands (sm_89+); see the header of this file. */
  runFp8(c: Fp8LinearCall, stream: Stream): void {
    const plan = this.planFp8(c);
    // Scale and bias pointers may differ from call to call; setting them is a host-side write into the descriptor.
    this.lt.matmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC.A_SCALE_POINTER, "ptr", c.wScale);
    this.lt.matmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC.B_SCALE_POINTER, "ptr", c.xScale);
    if (c.bias !== null) this.lt.matmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC.BIAS_POINTER, "ptr", c.bias);
    this.matmul(plan, c, stream, () => describeFp8(c));
  }

  /** One cublasLtMatmul of a planned call: out = alpha · (x · Wᵀ) + beta · out, in place. */
  private matmul(plan: Plan, c: Pick<LinearCall, "w" | "x" | "out">, stream: Stream, what: () => string): void {
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
    if (r !== 0) this.lt.check(r, "cublasLtMatmul", what());
  }

  dispose(): void {
    for (const plan of this.plans.values()) this.destroyPlan(plan);
    this.plans.clear();
  }

  private plan(c: LinearCall): Plan {
    const key = `${c.dtype} ${c.m}x${c.n}x${c.k} ld ${c.wStride},${c.xStride},${c.outStride}${c.bias !== null ? " +bias" : ""}`;
    return this.cachedPlan(
      key,
      c,
      () => describe(c),
      (l) => createLinearDescriptors(this.lt, c.dtype, l, c.bias),
    );
  }

  private planFp8(c: Fp8LinearCall): Plan {
    const modes = `${c.wScaleMode ?? "tensor"},${c.xScaleMode ?? "tensor"}${c.fastAccum ? " fast" : ""}`;
    const key = `fp8→${c.outDtype} ${c.m}x${c.n}x${c.k} ld ${c.wStride},${c.xStride},${c.outStride} scales ${modes}${c.bias !== null ? " +bias" : ""}`;
    return this.cachedPlan(
      key,
      c,
      () => describeFp8(c),
      (l) => createFp8LinearDescriptors(this.lt, l, c),
    );
  }

  /** The plan for `key` (+ the pointers' alignments), created with `create` and a heuristic query the first time. */
  private cachedPlan(
    shapeKey: string,
    c: Omit<LinearCall, "dtype">,
    what: () => string,
    create: (l: LinearLayout) => GemmDescriptors,
  ): Plan {
    const alignA = addressAlignment(c.w);
    const alignB = addressAlignment(c.x);
    const alignD = addressAlignment(c.out);
    const key = `${shapeKey} align ${alignA},${alignB},${alignD}`;
    const cached = this.plans.get(key);
    if (cached) return cached;
    if (this.plans.size >= MAX_PLANS) {
      // Maps iterate in insertion order: drop the oldest.
      const [oldKey, oldPlan] = this.plans.entries().next().value as [string, Plan];
      this.destroyPlan(oldPlan);
      this.plans.delete(oldKey);
    }
    const plan = this.createPlan(create(linearLayout(c.m, c.n, c.k, c.xStride, c.wStride, c.outStride)), what, alignA, alignB, alignD);
    this.plans.set(key, plan);
    return plan;
  }

  private createPlan(descriptors: GemmDescriptors, what: () => string, alignA: number, alignB: number, alignD: number): Plan {
    const lt = this.lt;
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
          `cuBLASLt ${lt.versionString} has no algorithm for ${what()} with a ${formatBytes(this.workspace.bytes)} workspace ` +
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

function describeFp8(c: Fp8LinearCall): string {
  return (
    `FP8 e4m3 linear out[${c.m},${c.n}] (${c.outDtype}) = x[${c.m},${c.k}]·W[${c.n},${c.k}]ᵀ · scales (W ${c.wScaleMode ?? "tensor"}, ` +
    `x ${c.xScaleMode ?? "tensor"})${c.bias !== null ? " + bias" : ""} (row strides x ${c.xStride}, W ${c.wStride}, out ${c.outStride})`
  );
}

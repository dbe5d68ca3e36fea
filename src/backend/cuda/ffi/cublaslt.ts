// koffi bindings to cuBLASLt (libcublasLt.so.*). The linear layers built on them (row-major
// y[M,N] = x[M,K] · W[N,K]ᵀ (+ bias[N]) with row strides) are in ../linear-gemm.ts.
//
// Prototypes and enum values are from CUDA 13's headers: cublasLt.h and cublas_api.h of the
// nvidia-cublas 13.1.1.3 wheel, library_types.h of the CUDA 13.0 toolkit; line numbers quoted.
// cublasLtCreate needs a current CUDA context; descriptors and layouts do not (no GPU needed).
import { cudaError, type StatusNames } from "./errors.js";
import { findLibrary, openLibrary, type SearchOptions } from "./find-library.js";
import { bindFunction, koffi } from "./koffi.js";

/** cudaDataType_t (library_types.h). */
export const CUDA_R = {
  F32: 0, // library_types.h:63 CUDA_R_32F
  F16: 2, // library_types.h:59 CUDA_R_16F
  BF16: 14, // library_types.h:61 CUDA_R_16BF
  F8_E4M3: 28, // library_types.h:87 CUDA_R_8F_E4M3
  F8_E5M2: 29, // library_types.h:89 CUDA_R_8F_E5M2
} as const;

/** cublasComputeType_t (cublas_api.h). */
export const CUBLAS_COMPUTE = {
  C16F: 64, // cublas_api.h:206 CUBLAS_COMPUTE_16F
  C32F: 68, // cublas_api.h:208 CUBLAS_COMPUTE_32F
  C32F_FAST_16F: 74, // cublas_api.h:210
  C32F_FAST_16BF: 75, // cublas_api.h:211
  C32F_FAST_TF32: 77, // cublas_api.h:212
} as const;

export const CUBLAS_OP_N = 0; // cublas_api.h:109
export const CUBLAS_OP_T = 1; // cublas_api.h:110
export const CUBLAS_STATUS_SUCCESS = 0; // cublas_api.h:90
export const CUBLAS_STATUS_NOT_INITIALIZED = 1; // cublas_api.h:91

/** cublasLtMatmulDescAttributes_t, with the C type each expects. */
export const CUBLASLT_MATMUL_DESC = {
  COMPUTE_TYPE: 0, // cublasLt.h:1274 int32
  SCALE_TYPE: 1, // cublasLt.h:1282 int32
  POINTER_MODE: 2, // cublasLt.h:1289 int32
  TRANSA: 3, // cublasLt.h:1295 int32 (cublasOperation_t)
  TRANSB: 4, // cublasLt.h:1301 int32
  EPILOGUE: 7, // cublasLt.h:1321 uint32
  BIAS_POINTER: 8, // cublasLt.h:1340 const void*
  A_SCALE_POINTER: 17, // cublasLt.h:1430 const void* (device float)
  B_SCALE_POINTER: 18, // cublasLt.h:1443
  C_SCALE_POINTER: 19, // cublasLt.h:1456
  D_SCALE_POINTER: 20, // cublasLt.h:1469
  AMAX_D_POINTER: 21, // cublasLt.h:1481
  FAST_ACCUM: 25, // cublasLt.h:1533 int8
  BIAS_DATA_TYPE: 26, // cublasLt.h:1547 int32 (cudaDataType)
  A_SCALE_MODE: 31, // cublasLt.h:1552 int32
  B_SCALE_MODE: 32, // cublasLt.h:1557 int32
} as const;

/** cublasLtEpilogue_t. */
export const CUBLASLT_EPILOGUE = {
  DEFAULT: 1, // cublasLt.h:1936
  RELU: 2, // cublasLt.h:1940
  BIAS: 4, // cublasLt.h:1953
  RELU_BIAS: 6, // cublasLt.h:1957
  GELU: 32, // cublasLt.h:1984
  GELU_BIAS: 36, // cublasLt.h:1995
} as const;

/** cublasLtMatmulMatrixScale_t (for A_SCALE_MODE / B_SCALE_MODE). */
export const CUBLASLT_MATMUL_MATRIX_SCALE = {
  SCALAR_32F: 0, // cublasLt.h:923
  OUTER_VEC_32F: 3, // cublasLt.h:933 per-row / per-column scales
} as const;

/** cublasLtMatrixLayoutAttribute_t. */
export const CUBLASLT_MATRIX_LAYOUT = {
  ORDER: 1, // cublasLt.h:1119 int32 (CUBLASLT_ORDER_COL = 0 at :1063, ROW = 1 at :1068)
  BATCH_COUNT: 5, // cublasLt.h:1155 int32
  STRIDED_BATCH_OFFSET: 6, // cublasLt.h:1171 int64 (elements)
} as const;

export const CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1; // cublasLt.h:2088 uint64

/** sizeof(cublasLtMatmulHeuristicResult_t) (cublasLt.h:2221): algo uint64[8], size_t workspaceSize, int state, float wavesCount, int reserved[4]. */
export const HEURISTIC_RESULT_BYTES = 96;
const HEURISTIC_WORKSPACE_OFFSET = 64;
const HEURISTIC_STATE_OFFSET = 72;
const HEURISTIC_WAVES_OFFSET = 76;

/** How an attribute's value is stored in C, which decides the byte size passed with it. */
export type AttributeKind = "i8" | "i32" | "u32" | "i64" | "u64" | "ptr";

type Ptr = bigint;
type Out64 = BigUint64Array;

export interface CublasLtFunctions {
  cublasLtCreate(handle: Out64): number; // cublasLt.h:69
  cublasLtDestroy(handle: Ptr): number; // cublasLt.h:71
  cublasLtGetStatusName(status: number): string; // cublasLt.h:73
  cublasLtGetStatusString(status: number): string; // cublasLt.h:75
  cublasLtGetVersion(): number; // cublasLt.h:77
  cublasLtMatmul(
    handle: Ptr,
    desc: Ptr,
    alpha: Ptr,
    A: Ptr,
    Adesc: Ptr,
    B: Ptr,
    Bdesc: Ptr,
    beta: Ptr,
    C: Ptr,
    Cdesc: Ptr,
    D: Ptr,
    Ddesc: Ptr,
    algo: Ptr,
    workspace: Ptr,
    workspaceBytes: number,
    stream: Ptr,
  ): number; // cublasLt.h:1011
  cublasLtMatrixLayoutCreate(layout: Out64, type: number, rows: number, cols: number, ld: number): number; // cublasLt.h:1212
  cublasLtMatrixLayoutDestroy(layout: Ptr): number; // cublasLt.h:1223
  cublasLtMatrixLayoutSetAttribute(layout: Ptr, attr: number, buf: Uint8Array, bytes: number): number; // cublasLt.h:1236
  cublasLtMatmulDescCreate(desc: Out64, computeType: number, scaleType: number): number; // cublasLt.h:1623
  cublasLtMatmulDescDestroy(desc: Ptr): number; // cublasLt.h:1631
  cublasLtMatmulDescSetAttribute(desc: Ptr, attr: number, buf: Uint8Array, bytes: number): number; // cublasLt.h:1644
  cublasLtMatmulPreferenceCreate(pref: Out64): number; // cublasLt.h:2171
  cublasLtMatmulPreferenceDestroy(pref: Ptr): number; // cublasLt.h:2177
  cublasLtMatmulPreferenceSetAttribute(pref: Ptr, attr: number, buf: Uint8Array, bytes: number): number; // cublasLt.h:2190
  cublasLtMatmulAlgoGetHeuristic(
    handle: Ptr,
    desc: Ptr,
    Adesc: Ptr,
    Bdesc: Ptr,
    Cdesc: Ptr,
    Ddesc: Ptr,
    pref: Ptr,
    requested: number,
    results: Ptr,
    returned: Int32Array,
  ): number; // cublasLt.h:2270
}

const PROTOTYPES: Record<keyof CublasLtFunctions, [string, string[]]> = {
  cublasLtCreate: ["int", ["void *"]],
  cublasLtDestroy: ["int", ["void *"]],
  cublasLtGetStatusName: ["const char *", ["int"]],
  cublasLtGetStatusString: ["const char *", ["int"]],
  cublasLtGetVersion: ["size_t", []],
  cublasLtMatmul: [
    "int",
    [
      "void *",
      "void *",
      "void *",
      "void *",
      "void *",
      "void *",
      "void *",
      "void *",
      "void *",
      "void *",
      "void *",
      "void *",
      "void *",
      "void *",
      "size_t",
      "void *",
    ],
  ],
  cublasLtMatrixLayoutCreate: ["int", ["void *", "int", "uint64_t", "uint64_t", "int64_t"]],
  cublasLtMatrixLayoutDestroy: ["int", ["void *"]],
  cublasLtMatrixLayoutSetAttribute: ["int", ["void *", "int", "void *", "size_t"]],
  cublasLtMatmulDescCreate: ["int", ["void *", "int", "int"]],
  cublasLtMatmulDescDestroy: ["int", ["void *"]],
  cublasLtMatmulDescSetAttribute: ["int", ["void *", "int", "void *", "size_t"]],
  cublasLtMatmulPreferenceCreate: ["int", ["void *"]],
  cublasLtMatmulPreferenceDestroy: ["int", ["void *"]],
  cublasLtMatmulPreferenceSetAttribute: ["int", ["void *", "int", "void *", "size_t"]],
  cublasLtMatmulAlgoGetHeuristic: [
    "int",
    ["void *", "void *", "void *", "void *", "void *", "void *", "void *", "int", "void *", "void *"],
  ],
};

export class LtHandle {
  constructor(readonly handle: bigint) {}
}
export class MatmulDesc {
  constructor(readonly handle: bigint) {}
}
export class MatrixLayout {
  constructor(readonly handle: bigint) {}
}
export class MatmulPreference {
  constructor(readonly handle: bigint) {}
}

/** Results of cublasLtMatmulAlgoGetHeuristic, kept in native-stable memory so `algoAddress` can go straight to cublasLtMatmul. */
export class HeuristicResults {
  private readonly view: DataView;
  readonly base: bigint;
  constructor(
    readonly buffer: ArrayBuffer,
    readonly count: number,
  ) {
    this.view = new DataView(buffer);
    this.base = koffi().address(buffer);
  }
  /** Address of result i's cublasLtMatmulAlgo_t (the struct's first member). */
  algoAddress(i: number): bigint {
    return this.base + BigInt(i * HEURISTIC_RESULT_BYTES);
  }
  workspaceSize(i: number): number {
    return Number(this.view.getBigUint64(i * HEURISTIC_RESULT_BYTES + HEURISTIC_WORKSPACE_OFFSET, true));
  }
  state(i: number): number {
    return this.view.getInt32(i * HEURISTIC_RESULT_BYTES + HEURISTIC_STATE_OFFSET, true);
  }
  wavesCount(i: number): number {
    return this.view.getFloat32(i * HEURISTIC_RESULT_BYTES + HEURISTIC_WAVES_OFFSET, true);
  }
}

const loaded = new Map<string, CublasLt>();

export interface CublasLtLoadOptions extends SearchOptions {
  /** Use this libcublasLt file instead of searching. */
  path?: string;
}

export class CublasLt {
  private readonly out64 = new BigUint64Array(1);
  private readonly attr = new Uint8Array(new ArrayBuffer(8));
  private readonly attrView = new DataView(this.attr.buffer);
  private readonly names: StatusNames;

  private constructor(
    readonly path: string,
    readonly raw: CublasLtFunctions,
  ) {
    this.names = { name: (code) => raw.cublasLtGetStatusName(code), describe: (code) => raw.cublasLtGetStatusString(code) };
  }

  static load(options: CublasLtLoadOptions = {}): CublasLt {
    const path = options.path ?? findLibrary("cublasLt", options).path;
    const existing = loaded.get(path);
    if (existing) return existing;
    const lib = openLibrary(path);
    const raw = {} as Record<string, unknown>;
    for (const [name, [result, args]] of Object.entries(PROTOTYPES)) raw[name] = bindFunction(lib, path, name, result, args);
    const lt = new CublasLt(path, raw as unknown as CublasLtFunctions);
    loaded.set(path, lt);
    return lt;
  }

  /** Throws a CudaError for a non-zero cublasStatus_t (test `result !== 0` first where `context` costs something). */
  check(result: number, fn: keyof CublasLtFunctions, context?: string): void {
    if (result !== 0) throw cudaError("cublasLt", fn, result, this.names, context);
  }

  /** cublasLtGetVersion(): major * 10000 + minor * 100 + patch (130101 for 13.1.1). */
  version(): number {
    return this.raw.cublasLtGetVersion();
  }

  get versionString(): string {
    const v = this.version();
    return `${Math.floor(v / 10000)}.${Math.floor(v / 100) % 100}.${v % 100}`;
  }

  /** Needs a current CUDA context (CudaDriver.retainPrimaryContext). */
  create(): LtHandle {
    this.check(this.raw.cublasLtCreate(this.out64), "cublasLtCreate", "creating a cuBLASLt handle (is a CUDA context current?)");
    return new LtHandle(this.out64[0]!);
  }

  destroy(handle: LtHandle): void {
    this.check(this.raw.cublasLtDestroy(handle.handle), "cublasLtDestroy");
  }

  matmulDescCreate(computeType: number, scaleType: number): MatmulDesc {
    this.check(this.raw.cublasLtMatmulDescCreate(this.out64, computeType, scaleType), "cublasLtMatmulDescCreate");
    return new MatmulDesc(this.out64[0]!);
  }

  matmulDescSetAttribute(desc: MatmulDesc, attr: number, kind: AttributeKind, value: number | bigint): void {
    const r = this.raw.cublasLtMatmulDescSetAttribute(desc.handle, attr, this.attr, this.packAttribute(kind, value));
    if (r !== 0) this.check(r, "cublasLtMatmulDescSetAttribute", `setting attribute ${attr} as ${kind} ${value}`);
  }

  matmulDescDestroy(desc: MatmulDesc): void {
    this.check(this.raw.cublasLtMatmulDescDestroy(desc.handle), "cublasLtMatmulDescDestroy");
  }

  /** A column-major rows × cols matrix with leading dimension ld, in elements. */
  matrixLayoutCreate(type: number, rows: number, cols: number, ld: number): MatrixLayout {
    const r = this.raw.cublasLtMatrixLayoutCreate(this.out64, type, rows, cols, ld);
    if (r !== 0) this.check(r, "cublasLtMatrixLayoutCreate", `describing a ${rows}×${cols} matrix (ld ${ld}, type ${type})`);
    return new MatrixLayout(this.out64[0]!);
  }

  matrixLayoutSetAttribute(layout: MatrixLayout, attr: number, kind: AttributeKind, value: number | bigint): void {
    const r = this.raw.cublasLtMatrixLayoutSetAttribute(layout.handle, attr, this.attr, this.packAttribute(kind, value));
    if (r !== 0) this.check(r, "cublasLtMatrixLayoutSetAttribute", `setting attribute ${attr} as ${kind} ${value}`);
  }

  matrixLayoutDestroy(layout: MatrixLayout): void {
    this.check(this.raw.cublasLtMatrixLayoutDestroy(layout.handle), "cublasLtMatrixLayoutDestroy");
  }

  preferenceCreate(): MatmulPreference {
    this.check(this.raw.cublasLtMatmulPreferenceCreate(this.out64), "cublasLtMatmulPreferenceCreate");
    return new MatmulPreference(this.out64[0]!);
  }

  preferenceSetAttribute(pref: MatmulPreference, attr: number, kind: AttributeKind, value: number | bigint): void {
    const r = this.raw.cublasLtMatmulPreferenceSetAttribute(pref.handle, attr, this.attr, this.packAttribute(kind, value));
    if (r !== 0) this.check(r, "cublasLtMatmulPreferenceSetAttribute", `setting attribute ${attr} as ${kind} ${value}`);
  }

  preferenceDestroy(pref: MatmulPreference): void {
    this.check(this.raw.cublasLtMatmulPreferenceDestroy(pref.handle), "cublasLtMatmulPreferenceDestroy");
  }

  algoGetHeuristic(
    handle: LtHandle,
    desc: MatmulDesc,
    a: MatrixLayout,
    b: MatrixLayout,
    c: MatrixLayout,
    d: MatrixLayout,
    pref: MatmulPreference,
    requested = 1,
  ): HeuristicResults {
    const buffer = new ArrayBuffer(requested * HEURISTIC_RESULT_BYTES);
    const returned = new Int32Array(1);
    this.check(
      this.raw.cublasLtMatmulAlgoGetHeuristic(
        handle.handle,
        desc.handle,
        a.handle,
        b.handle,
        c.handle,
        d.handle,
        pref.handle,
        requested,
        koffi().address(buffer),
        returned,
      ),
      "cublasLtMatmulAlgoGetHeuristic",
    );
    return new HeuristicResults(buffer, returned[0]!);
  }

  /** Writes an attribute value into the scratch buffer; returns its size in bytes. */
  private packAttribute(kind: AttributeKind, value: number | bigint): number {
    const v = this.attrView;
    switch (kind) {
      case "i8":
        v.setInt8(0, Number(value));
        return 1;
      case "i32":
        v.setInt32(0, Number(value), true);
        return 4;
      case "u32":
        v.setUint32(0, Number(value), true);
        return 4;
      case "i64":
        v.setBigInt64(0, BigInt(value), true);
        return 8;
      case "u64":
      case "ptr":
        v.setBigUint64(0, BigInt(value), true);
        return 8;
    }
  }
}

/** The element types our linear layers multiply (cuBLASLt data types in linear-gemm.ts). */
export type GemmDType = "bf16" | "f16" | "f32";

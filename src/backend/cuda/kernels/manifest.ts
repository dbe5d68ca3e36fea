/**
 * Every CUDA kernel entry point in this folder, as the launcher needs it:
 * source file, template parameters and the NVRTC name expression of an
 * instantiation, the argument list in order, and the launch configuration.
 *
 * Naming scheme (the same for every kernel; see the header of common.cuh):
 * kernels are `__global__` function templates in namespace `tk`, never
 * `extern "C"`. To get one, compile its file with NVRTC (source and headers
 * from kernelProgram(spec.file), options from nvrtcOptions(arch); no include
 * path to a toolkit is needed), call
 * nvrtcAddNameExpression(prog, nameExpression(spec, args)) for each
 * instantiation wanted before compiling, and nvrtcGetLoweredName afterwards
 * for the symbol to give cuModuleGetFunction. The CI test
 * (test/cuda-kernels-compile.test.ts) instantiates every entry of
 * instantiations(spec) the same way with nvcc.
 *
 * Arguments are passed to cuLaunchKernel as an array of pointers to each value:
 * "ptr" is a 64-bit device address (0 where `nullable`), "i32" a 32-bit signed
 * integer, "f32" a 32-bit float. Strides and offsets are in elements, not bytes.
 * A pointer argument is the address of the tensor's first element (storage
 * base + byteOffset). `sharedBytes` is the dynamic shared memory to pass to
 * cuLaunchKernel; every kernel here uses static shared memory only, so it is 0.
 * A launch with a zero grid dimension is invalid: skip the launch when there is
 * no work (no tokens, no rows).
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

export type KernelDType = "f32" | "f16" | "bf16";
export const KERNEL_DTYPES: readonly KernelDType[] = ["f32", "f16", "bf16"];

/** The C++ element type a dtype template argument is spelled as. */
export const CUDA_TYPE: Readonly<Record<KernelDType, string>> = { f32: "float", f16: "tk::f16", bf16: "tk::bf16" };

/**
 * Quantized weight formats (template parameter kind "quant", the tags of quant_blocks.cuh): ggml's block formats and
 * two per-channel ones of our own (int8 / e4m3 bytes with an f32 scale per row or per tensor).
 */
export type QuantType = "q8_0" | "q4_0" | "q4_1" | "q5_0" | "q5_1" | "q4_k" | "q5_k" | "q6_k" | "mxfp4" | "int8" | "fp8_e4m3";
export const QUANT_TYPES: readonly QuantType[] = [
  "q8_0",
  "q4_0",
  "q4_1",
  "q5_0",
  "q5_1",
  "q4_k",
  "q5_k",
  "q6_k",
  "mxfp4",
  "int8",
  "fp8_e4m3",
];

/** The C++ tag a quant template argument is spelled as. */
export const QUANT_CUDA_TYPE: Readonly<Record<QuantType, string>> = {
  q8_0: "tk::Q8_0",
  q4_0: "tk::Q4_0",
  q4_1: "tk::Q4_1",
  q5_0: "tk::Q5_0",
  q5_1: "tk::Q5_1",
  q4_k: "tk::Q4_K",
  q5_k: "tk::Q5_K",
  q6_k: "tk::Q6_K",
  mxfp4: "tk::MXFP4",
  int8: "tk::INT8",
  fp8_e4m3: "tk::FP8_E4M3",
};

/**
 * Elements per block and bytes per block (QB<Q>::kQK / kBytes of quant_blocks.cuh; ggml-common.h's block structs).
 * int8 / fp8_e4m3 are one byte per element, counted in "blocks" of 32; `rowScale`: they take an f32 scale per row.
 */
export const QUANT_BLOCK: Readonly<Record<QuantType, { elems: number; bytes: number; rowScale: boolean }>> = {
  q8_0: { elems: 32, bytes: 34, rowScale: false },
  q4_0: { elems: 32, bytes: 18, rowScale: false },
  q4_1: { elems: 32, bytes: 20, rowScale: false },
  q5_0: { elems: 32, bytes: 22, rowScale: false },
  q5_1: { elems: 32, bytes: 24, rowScale: false },
  q4_k: { elems: 256, bytes: 144, rowScale: false },
  q5_k: { elems: 256, bytes: 176, rowScale: false },
  q6_k: { elems: 256, bytes: 210, rowScale: false },
  mxfp4: { elems: 32, bytes: 17, rowScale: false },
  int8: { elems: 32, bytes: 32, rowScale: true },
  fp8_e4m3: { elems: 32, bytes: 32, rowScale: true },
};

/** Bytes of one weight row of k elements (k a multiple of the block size, which this checks). */
export function quantRowBytes(type: QuantType, k: number): number {
  const b = QUANT_BLOCK[type];
  if (!Number.isInteger(k) || k <= 0 || k % b.elems !== 0)
    throw new RangeError(`${type}: row length ${k} is not a positive multiple of ${b.elems}`);
  return (k / b.elems) * b.bytes;
}

/** Most activation rows one quant_gemv launch takes (its ROWS template parameter's largest value). */
export const QUANT_GEMV_MAX_ROWS = 8;

/** The ROWS template argument of quant_gemv for a batch of numRows (1..8): the smallest of 1, 2, 4, 8 that holds it. */
export function quantGemvRows(numRows: number): 1 | 2 | 4 | 8 {
  if (!Number.isInteger(numRows) || numRows < 1 || numRows > QUANT_GEMV_MAX_ROWS)
    throw new RangeError(`quant_gemv takes 1 to ${QUANT_GEMV_MAX_ROWS} activation rows, got ${numRows}`);
  return numRows <= 1 ? 1 : numRows <= 2 ? 2 : numRows <= 4 ? 4 : 8;
}

export type ArgType = "ptr" | "i32" | "f32";
/** Bytes of each argument's value in the kernelParams buffer. */
export const ARG_BYTES: Readonly<Record<ArgType, number>> = { ptr: 8, i32: 4, f32: 4 };

export interface KernelArg {
  readonly name: string;
  readonly type: ArgType;
  /**
   * For pointers: the element type, either a dtype template parameter's name ("T", "W", "TO", "TI") or
   * "i32"/"f32", or "u32"/"f64" (32-bit unsigned words, doubles: the sampling kernels' masks, keys and parameters),
   * or "u8" (bytes: quantized weights and e4m3 activations).
   */
  readonly elem?: string;
  /** For pointers: 0 is allowed and means "absent". */
  readonly nullable?: boolean;
  readonly doc: string;
}

export interface TemplateParam {
  readonly name: string;
  /** "quant": a quantized weight format (QuantType), spelled as its quant_blocks.cuh tag. */
  readonly kind: "dtype" | "int" | "quant";
  /** The values compiled in CI (instantiations()); `doc` says which others NVRTC accepts. */
  readonly values: readonly (KernelDType | QuantType | number)[];
  readonly doc: string;
}

export type TemplateArgs = Readonly<Record<string, KernelDType | QuantType | number>>;

export interface LaunchConfig {
  grid: [number, number, number];
  block: [number, number, number];
  /** Dynamic shared memory in bytes. */
  sharedBytes: number;
}

export interface KernelSpec<S extends string = string> {
  /** Qualified C++ template name, e.g. "tk::rms_norm". */
  readonly name: string;
  /** Source file in this folder. */
  readonly file: string;
  readonly doc: string;
  readonly templateParams: readonly TemplateParam[];
  readonly args: readonly KernelArg[];
  /** The sizes launch() reads. */
  readonly launchSizes: readonly S[];
  /** launch() in words. */
  readonly launchDoc: string;
  launch(sizes: Readonly<Record<S, number>>, template: TemplateArgs): LaunchConfig;
  /** Instantiations of the cross product that are not compiled (none when absent). */
  readonly skip?: (template: TemplateArgs) => boolean;
}

/** NVRTC options the kernels need besides the architecture (CompileOptions.options of ffi/nvrtc.ts). No -I: headers come from kernelProgram(). */
export const KERNEL_NVRTC_OPTIONS: readonly string[] = ["-std=c++17"];

/** The full NVRTC option list for an architecture like "sm_90a" or "sm_80". */
export function nvrtcOptions(arch: string): string[] {
  return [...KERNEL_NVRTC_OPTIONS, `--gpu-architecture=${arch}`];
}

/** Headers every kernel file includes (pass them to nvrtcCreateProgram with these include names). */
export const KERNEL_HEADERS: readonly string[] = ["common.cuh", "quant_blocks.cuh"];

/** The folder holding the .cu/.cuh sources: beside this module, or the repository's src/ when running from dist/. */
export function kernelSourceDir(): string {
  const here = import.meta.dirname;
  const fromDist = join(here, "..", "..", "..", "..", "..", "src", "backend", "cuda", "kernels");
  for (const dir of [here, fromDist]) if (existsSync(join(dir, "common.cuh"))) return dir;
  throw new Error(`CUDA kernel sources (common.cuh and the .cu files) not found in ${here} or ${fromDist}`);
}

/** One kernel file's source and the headers it includes, keyed by include name: what nvrtcCreateProgram takes. */
export function kernelProgram(file: string, dir = kernelSourceDir()): { name: string; source: string; headers: Record<string, string> } {
  const headers = Object.fromEntries(KERNEL_HEADERS.map((h) => [h, readFileSync(join(dir, h), "utf8")]));
  return { name: file, source: readFileSync(join(dir, file), "utf8"), headers };
}

/** The NVRTC name expression of one instantiation, e.g. "tk::paged_attention<tk::bf16, 128, 1>". */
export function nameExpression(spec: KernelSpec, template: TemplateArgs): string {
  const args = spec.templateParams.map((p) => {
    const v = template[p.name];
    if (v === undefined) throw new Error(`${spec.name}: template parameter ${p.name} missing`);
    if (p.kind === "dtype") {
      if (typeof v !== "string" || !(v in CUDA_TYPE))
        throw new Error(`${spec.name}: ${p.name} must be one of ${KERNEL_DTYPES.join(", ")}, got ${v}`);
      return CUDA_TYPE[v as KernelDType];
    }
    if (p.kind === "quant") {
      if (typeof v !== "string" || !(v in QUANT_CUDA_TYPE))
        throw new Error(`${spec.name}: ${p.name} must be one of ${QUANT_TYPES.join(", ")}, got ${v}`);
      return QUANT_CUDA_TYPE[v as QuantType];
    }
    if (typeof v !== "number" || !Number.isInteger(v)) throw new Error(`${spec.name}: ${p.name} must be an integer, got ${v}`);
    return String(v);
  });
  return `${spec.name}<${args.join(", ")}>`;
}

/** Every instantiation of the template parameters' listed values, less those `skip` leaves out. */
export function instantiations(spec: KernelSpec): TemplateArgs[] {
  let combos: Record<string, KernelDType | QuantType | number>[] = [{}];
  for (const p of spec.templateParams) combos = combos.flatMap((c) => p.values.map((v) => ({ ...c, [p.name]: v })));
  return combos.filter((c) => !spec.skip?.(c));
}

// ---------------------------------------------------------------- helpers for the specs

const ceilDiv = (a: number, b: number) => Math.ceil(a / b);
const roundUp32 = (n: number) => ceilDiv(n, 32) * 32;
const clamp = (n: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, n));
/** The 1-D launch of the elementwise kernels: 8 columns per thread, 256 threads, rows over grid.y (looped past 65535). */
function columnsLaunch(rows: number, cols: number): LaunchConfig {
  return { grid: [ceilDiv(cols, 2048), Math.min(rows, 65535), 1], block: [256, 1, 1], sharedBytes: 0 };
}

const dtypeParam = (name: string, doc: string, values: readonly KernelDType[] = KERNEL_DTYPES): TemplateParam => ({
  name,
  kind: "dtype",
  values,
  doc,
});
const ptr = (name: string, elem: string, doc: string, nullable = false): KernelArg => ({
  name,
  type: "ptr",
  elem,
  doc,
  ...(nullable ? { nullable } : {}),
});
const i32 = (name: string, doc: string): KernelArg => ({ name, type: "i32", doc });
const f32 = (name: string, doc: string): KernelArg => ({ name, type: "f32", doc });

// ---------------------------------------------------------------- the kernels

export const EMBEDDING: KernelSpec<"numTokens"> = {
  name: "tk::embedding",
  file: "embedding.cu",
  doc: "out[t, :] = table[ids[t], :] converted to the activation dtype; an id outside [0, vocab) writes a zero row.",
  templateParams: [dtypeParam("TO", "activation (output) dtype"), dtypeParam("TT", "embedding table dtype (the file's)")],
  args: [
    ptr("out", "TO", "[numTokens, hidden] output rows"),
    i32("outStride", "elements between output rows"),
    ptr("ids", "i32", "[numTokens] token ids"),
    ptr("table", "TT", "[vocab, hidden] embedding table"),
    i32("tableStride", "elements between table rows"),
    i32("hidden", "row length"),
    i32("vocab", "table rows"),
    i32("numTokens", "rows to produce"),
  ],
  launchSizes: ["numTokens"],
  launchDoc: "grid (numTokens), block 256, one CTA per token (rows looped grid-stride)",
  launch: ({ numTokens }) => ({ grid: [numTokens, 1, 1], block: [256, 1, 1], sharedBytes: 0 }),
};

export const GATHER_ROWS: KernelSpec<"numRows"> = {
  name: "tk::gather_rows",
  file: "gather.cu",
  doc: "out[r, :] = x[indices[r], :] (last-token rows before the final norm and LM head); an index outside [0, numSrcRows) writes zeros.",
  templateParams: [dtypeParam("T", "activation dtype")],
  args: [
    ptr("out", "T", "[numRows, cols] output"),
    i32("outStride", "elements between output rows"),
    ptr("x", "T", "[numSrcRows, cols] source"),
    i32("xStride", "elements between source rows"),
    ptr("indices", "i32", "[numRows] source row of each output row"),
    i32("numRows", "rows to gather"),
    i32("numSrcRows", "rows of x (bounds check)"),
    i32("cols", "row length"),
  ],
  launchSizes: ["numRows"],
  launchDoc: "grid (numRows), block 256, one CTA per row (rows looped grid-stride)",
  launch: ({ numRows }) => ({ grid: [numRows, 1, 1], block: [256, 1, 1], sharedBytes: 0 }),
};

const RMS_NORM_ARGS: readonly KernelArg[] = [
  ptr("out", "T", "output rows; may be x itself (in place)"),
  i32("outStrideT", "out: elements between tokens"),
  i32("outStrideH", "out: elements between heads (0 for 2-D)"),
  ptr("x", "T", "input rows"),
  i32("xStrideT", "x: elements between tokens"),
  i32("xStrideH", "x: elements between heads (0 for 2-D)"),
  ptr("residual", "T", "residual rows, updated in place (residual += x) before the norm; 0 for a plain norm", true),
  i32("resStrideT", "residual: elements between tokens"),
  i32("resStrideH", "residual: elements between heads"),
  ptr("weight", "W", "[dim] norm weight"),
  i32("numRows", "rows = tokens · heads"),
  i32("heads", "rows per token: 1 for a 2-D [tokens, dim] view, H for a 3-D [tokens, H, dim] view"),
  i32("dim", "row length (the normalised dimension)"),
  f32("eps", "added to mean(x²)"),
];

export const RMS_NORM: KernelSpec<"numRows" | "dim"> = {
  name: "tk::rms_norm",
  file: "rmsnorm.cu",
  doc: "RMSNorm with optional fused residual add, one CTA per row: for hidden-size rows.",
  templateParams: [dtypeParam("T", "activation dtype"), dtypeParam("W", "norm weight dtype")],
  args: RMS_NORM_ARGS,
  launchSizes: ["numRows", "dim"],
  launchDoc: "grid (numRows), block clamp(roundUp32(ceil(dim / 8)), 32, 512); static shared 128 bytes",
  launch: ({ numRows, dim }) => ({ grid: [numRows, 1, 1], block: [clamp(roundUp32(ceilDiv(dim, 8)), 32, 512), 1, 1], sharedBytes: 0 }),
};

export const RMS_NORM_WARP: KernelSpec<"numRows"> = {
  name: "tk::rms_norm_warp",
  file: "rmsnorm.cu",
  doc: "The same RMSNorm, one warp per row: for short rows (Qwen3 per-head q/k norm over headDim, tiny models). Use it when dim <= 256.",
  templateParams: RMS_NORM.templateParams,
  args: RMS_NORM_ARGS,
  launchSizes: ["numRows"],
  launchDoc: "grid (ceil(numRows / 4)), block (32, 4): blockDim.x must be 32, blockDim.y (up to 8) rows per CTA",
  launch: ({ numRows }) => ({ grid: [ceilDiv(numRows, 4), 1, 1], block: [32, 4, 1], sharedBytes: 0 }),
};

export const ROPE_CACHE_WRITE: KernelSpec<"numTokens" | "numHeads" | "numKvHeads" | "rotDim"> = {
  name: "tk::rope_cache_write",
  file: "rope_cache.cu",
  doc:
    "Rotate q and k in place (rotate-half RoPE over the first rotDim dims at positions[t]), then write k and v into the paged caches " +
    "at slotMapping[t] (row (slot · numKvHeads + h) · headDim of the contiguous [numBlocks, blockSize, numKvHeads, headDim] cache; slot < 0: skip).",
  templateParams: [dtypeParam("T", "activation and KV-cache dtype")],
  args: [
    ptr("q", "T", "[numTokens, numHeads, headDim] queries, rotated in place"),
    i32("qStrideT", "q: elements between tokens"),
    i32("qStrideH", "q: elements between heads"),
    ptr("k", "T", "[numTokens, numKvHeads, headDim] keys, rotated in place"),
    i32("kStrideT", "k: elements between tokens"),
    i32("kStrideH", "k: elements between heads"),
    ptr("v", "T", "[numTokens, numKvHeads, headDim] values"),
    i32("vStrideT", "v: elements between tokens"),
    i32("vStrideH", "v: elements between heads"),
    ptr("positions", "i32", "[numTokens] position of each token"),
    ptr("cosTable", "f32", "[maxPositions, rotDim / 2] cos table (RopeTable.cos), contiguous"),
    ptr("sinTable", "f32", "[maxPositions, rotDim / 2] sin table (RopeTable.sin), contiguous"),
    i32("rotDim", "rotated dims (RopeTable.rotaryDim, even, <= headDim)"),
    i32("maxPositions", "rows of the tables; positions outside [0, maxPositions) are left unrotated"),
    ptr("slotMapping", "i32", "[numTokens] cache slot (block · blockSize + offset) of each token; < 0: do not write"),
    ptr("kCache", "T", "[numBlocks, blockSize, numKvHeads, headDim] key cache, contiguous"),
    ptr("vCache", "T", "[numBlocks, blockSize, numKvHeads, headDim] value cache, contiguous"),
    i32("numTokens", "tokens in the batch"),
    i32("numHeads", "query heads"),
    i32("numKvHeads", "key/value heads"),
    i32("headDim", "head size"),
  ],
  launchSizes: ["numTokens", "numHeads", "numKvHeads", "rotDim"],
  launchDoc: "grid (numTokens), block clamp(roundUp32((numHeads + numKvHeads) · rotDim / 2), 32, 256); one CTA per token",
  launch: ({ numTokens, numHeads, numKvHeads, rotDim }) => ({
    grid: [numTokens, 1, 1],
    block: [clamp(roundUp32(((numHeads + numKvHeads) * rotDim) / 2), 32, 256), 1, 1],
    sharedBytes: 0,
  }),
};

/** Query vectors (query rows × query heads of one KV head) per paged_attention CTA. */
export function attentionVectorsPerCta(qpw: number): number {
  return 4 * qpw;
}

export const PAGED_ATTENTION: KernelSpec<"numTokens" | "numSeqs" | "numHeads" | "numKvHeads" | "numSplits"> = {
  name: "tk::paged_attention",
  file: "paged_attention.cu",
  doc:
    "Causal paged attention over a flat batch of prefill chunks and decodes with GQA (see the header of paged_attention.cu). " +
    "With numSplits = 1 it writes out; with more it writes partialOut/partialLse and paged_attention_combine must run next. " +
    "Use pagedAttentionPlan() to pick QPW and numSplits.",
  templateParams: [
    dtypeParam("T", "activation and KV-cache dtype"),
    { name: "HEAD_DIM", kind: "int", values: [16, 32, 64, 128], doc: "head size; NVRTC accepts any multiple of 8 up to 128" },
    { name: "QPW", kind: "int", values: [1, 2, 4], doc: "query vectors per warp (CTA tile = 4 · QPW vectors); 1..8 accepted" },
  ],
  args: [
    ptr("out", "T", "[numTokens, numHeads, HEAD_DIM] output (written when numSplits = 1)"),
    i32("outStrideT", "out: elements between tokens"),
    i32("outStrideH", "out: elements between heads"),
    ptr("q", "T", "[numTokens, numHeads, HEAD_DIM] queries (after RoPE)"),
    i32("qStrideT", "q: elements between tokens"),
    i32("qStrideH", "q: elements between heads"),
    ptr("kCache", "T", "[numBlocks, blockSize, numKvHeads, HEAD_DIM] key cache, contiguous, 16-byte aligned"),
    ptr("vCache", "T", "[numBlocks, blockSize, numKvHeads, HEAD_DIM] value cache, contiguous, 16-byte aligned"),
    ptr("queryStartLoc", "i32", "[numSeqs + 1] AttentionMetadata.queryStartLoc"),
    ptr("seqLens", "i32", "[numSeqs] AttentionMetadata.seqLens"),
    ptr("blockTables", "i32", "[numSeqs, blockTableStride] AttentionMetadata.blockTables"),
    i32("blockTableStride", "elements between block-table rows"),
    i32("numSeqs", "sequences in the batch"),
    i32("numHeads", "query heads (a multiple of numKvHeads)"),
    i32("numKvHeads", "key/value heads"),
    i32("blockSize", "tokens per cache block (any positive value; 8, 16, 32 usual)"),
    f32("scale", "softmax scale, usually 1 / sqrt(headDim)"),
    ptr("partialOut", "f32", "[numSplits, numTokens, numHeads, HEAD_DIM] workspace; 0 when numSplits = 1", true),
    ptr("partialLse", "f32", "[numSplits, numTokens, numHeads] workspace (log2-sum-exp2); 0 when numSplits = 1", true),
    i32("numTokens", "query rows of the batch (including padding rows no sequence owns, which are not written)"),
  ],
  launchSizes: ["numTokens", "numSeqs", "numHeads", "numKvHeads", "numSplits"],
  launchDoc:
    "grid (ceil(numTokens · group / (4 · QPW)) + numSeqs, numKvHeads, numSplits) with group = numHeads / numKvHeads (an upper bound on the " +
    "tiles: surplus CTAs exit), block 128 (required); static shared 4·(4·QPW·D + 32·(D + 4) + 32·D) + 264 bytes",
  launch: ({ numTokens, numSeqs, numHeads, numKvHeads, numSplits }, t) => {
    const m = attentionVectorsPerCta(Number(t.QPW));
    return { grid: [ceilDiv(numTokens * (numHeads / numKvHeads), m) + numSeqs, numKvHeads, numSplits], block: [128, 1, 1], sharedBytes: 0 };
  },
};

export const PAGED_ATTENTION_COMBINE: KernelSpec<"numTokens" | "numHeads" | "headDim"> = {
  name: "tk::paged_attention_combine",
  file: "paged_attention.cu",
  doc: "Merges paged_attention's numSplits partial outputs into out (log-sum-exp weighting). Run only when numSplits > 1.",
  templateParams: [dtypeParam("T", "activation dtype")],
  args: [
    ptr("out", "T", "[numTokens, numHeads, headDim] output"),
    i32("outStrideT", "out: elements between tokens"),
    i32("outStrideH", "out: elements between heads"),
    ptr("partialOut", "f32", "paged_attention's partialOut"),
    ptr("partialLse", "f32", "paged_attention's partialLse"),
    ptr("queryStartLoc", "i32", "[numSeqs + 1]: rows outside [qsl[0], qsl[numSeqs]) are skipped"),
    i32("numSeqs", "sequences in the batch"),
    i32("numTokens", "as given to paged_attention"),
    i32("numHeads", "query heads"),
    i32("headDim", "head size"),
    i32("numSplits", "as given to paged_attention (its gridDim.z)"),
  ],
  launchSizes: ["numTokens", "numHeads", "headDim"],
  launchDoc: "grid (numTokens, numHeads), block min(roundUp32(headDim), 128)",
  launch: ({ numTokens, numHeads, headDim }) => ({
    grid: [numTokens, numHeads, 1],
    block: [Math.min(roundUp32(headDim), 128), 1, 1],
    sharedBytes: 0,
  }),
};

export const SILU_AND_MUL: KernelSpec<"numRows" | "inter"> = {
  name: "tk::silu_and_mul",
  file: "activation.cu",
  doc: "x [rows, 2·inter] = [gate | up] → out [rows, inter] = silu(gate) · up.",
  templateParams: [dtypeParam("T", "activation dtype")],
  args: [
    ptr("out", "T", "[numRows, inter] output"),
    i32("outStride", "elements between output rows"),
    ptr("x", "T", "[numRows, 2 · inter] gate and up projections"),
    i32("xStride", "elements between input rows"),
    i32("numRows", "rows (tokens)"),
    i32("inter", "intermediate size"),
  ],
  launchSizes: ["numRows", "inter"],
  launchDoc: "grid (ceil(inter / 2048), min(numRows, 65535)), block 256; 8 columns per thread",
  launch: ({ numRows, inter }) => columnsLaunch(numRows, inter),
};

export const BIAS_ADD: KernelSpec<"numRows" | "cols"> = {
  name: "tk::bias_add",
  file: "add.cu",
  doc: "out[r, c] += bias[c]: the fallback where the cuBLASLt bias epilogue cannot be used.",
  templateParams: [dtypeParam("T", "activation dtype"), dtypeParam("W", "bias dtype")],
  args: [
    ptr("out", "T", "[numRows, cols] updated in place"),
    i32("outStride", "elements between rows"),
    ptr("bias", "W", "[cols] bias"),
    i32("numRows", "rows"),
    i32("cols", "columns"),
  ],
  launchSizes: ["numRows", "cols"],
  launchDoc: "grid (ceil(cols / 2048), min(numRows, 65535)), block 256; 8 columns per thread",
  launch: ({ numRows, cols }) => columnsLaunch(numRows, cols),
};

export const CAST: KernelSpec<"numRows" | "cols"> = {
  name: "tk::cast",
  file: "cast.cu",
  doc: "out[r, c] = TO(x[r, c]), round to nearest even. A contiguous tensor is one row (cols = numel < 2^31).",
  templateParams: [dtypeParam("TO", "output dtype"), dtypeParam("TI", "input dtype")],
  args: [
    ptr("out", "TO", "[numRows, cols] output"),
    i32("outStride", "elements between output rows"),
    ptr("x", "TI", "[numRows, cols] input"),
    i32("xStride", "elements between input rows"),
    i32("numRows", "rows"),
    i32("cols", "columns"),
  ],
  launchSizes: ["numRows", "cols"],
  launchDoc: "grid (ceil(cols / 2048), min(numRows, 65535)), block 256; 8 columns per thread",
  launch: ({ numRows, cols }) => columnsLaunch(numRows, cols),
  skip: (t) => t.TO === t.TI,
};

// ---------------------------------------------------------------- sampling (sampling.cu; see its header for the semantics)

/** The CTA size template parameter of the sampling kernels (their launch bound). */
const blockParam = (value: number): TemplateParam => ({
  name: "BLOCK",
  kind: "int",
  values: [value],
  doc: `threads per CTA and the launch bound; CI compiles ${value}, NVRTC accepts any multiple of 32 in [32, 1024]`,
});
/** One CTA per row (rows looped grid-stride), BLOCK threads. */
const rowsLaunch = ({ numRows }: Readonly<Record<"numRows", number>>, t: TemplateArgs): LaunchConfig => ({
  grid: [numRows, 1, 1],
  block: [Number(t.BLOCK), 1, 1],
  sharedBytes: 0,
});
const f64ptr = (name: string, doc: string, nullable = false) => ptr(name, "f64", doc, nullable);
const LOGITS_ARGS: readonly KernelArg[] = [
  ptr("logits", "f32", "[numRows, vocab] f32 logits"),
  i32("logitsStride", "elements between logits rows"),
];

export const LOGITS_PROCESSORS: KernelSpec<"numRows"> = {
  name: "tk::logits_processors_f32",
  file: "sampling.cu",
  doc:
    "applyLogitsProcessors in place from CSR entries (one per token per row, merged on the host): " +
    "v = f32(x + bias); v = f32(v > 0 ? v / rep : v · rep); v = f32((v − freq) − presence); ban → −inf. Bit-exact with the CPU.",
  templateParams: [blockParam(128)],
  args: [
    ptr("logits", "f32", "[numRows, vocab] f32 logits, updated in place"),
    i32("logitsStride", "elements between logits rows"),
    ptr("rowStart", "i32", "[numRows + 1] CSR row offsets into the entry arrays"),
    ptr("token", "i32", "[entries] token id of each entry (ids outside [0, vocab) are skipped)"),
    f64ptr("bias", "[entries] logit bias (0: none)"),
    f64ptr("rep", "[entries] repetition penalty for a prompt ∪ output token (1: none)"),
    f64ptr("freq", "[entries] frequency_penalty · output count (0: none)"),
    f64ptr("presence", "[entries] presence_penalty for an output token (0: none)"),
    ptr("ban", "i32", "[entries] nonzero: min_tokens ban (−inf)"),
    i32("vocab", "logits per row"),
    i32("numRows", "rows"),
  ],
  launchSizes: ["numRows"],
  launchDoc: "grid (numRows), block BLOCK; one CTA per row, its entries over the threads",
  launch: rowsLaunch,
};

export const APPLY_TOKEN_MASK: KernelSpec<"numRows"> = {
  name: "tk::apply_token_mask_f32",
  file: "sampling.cu",
  doc: "applyMask in place: a clear bit t % 32 of word t / 32 of the row's allowed-token mask writes −inf at t.",
  templateParams: [blockParam(256)],
  args: [
    ptr("logits", "f32", "[numRows, vocab] f32 logits, updated in place"),
    i32("logitsStride", "elements between logits rows"),
    ptr("allowed", "u32", "[masks, maskStride] allowed-token bit masks"),
    i32("maskStride", "words between mask rows (>= ceil(vocab / 32), which the host checks)"),
    ptr("maskRow", "i32", "[numRows] mask row of each logits row, < 0: no mask; 0: row r uses mask row r", true),
    i32("vocab", "logits per row"),
    i32("numRows", "rows"),
  ],
  launchSizes: ["numRows"],
  launchDoc: "grid (numRows), block BLOCK; one CTA per row",
  launch: rowsLaunch,
};

export const ARGMAX_ROWS: KernelSpec<"numRows"> = {
  name: "tk::argmax_rows_f32",
  file: "sampling.cu",
  doc: "Greedy rows: the first index of each row's maximum (NaN ignored; an all −inf row gives 0), argmax() of sample.ts.",
  templateParams: [blockParam(1024)],
  args: [
    ptr("tokens", "i32", "[numRows] output token ids"),
    ...LOGITS_ARGS,
    f64ptr("temperature", "[numRows] per-row temperature: only rows below 1e-5 are done; 0: every row", true),
    i32("vocab", "logits per row"),
    i32("numRows", "rows"),
  ],
  launchSizes: ["numRows"],
  launchDoc: "grid (numRows), block BLOCK; one CTA per row (block reduction over (value, index))",
  launch: rowsLaunch,
};

export const SAMPLE_ROWS: KernelSpec<"numRows"> = {
  name: "tk::sample_rows_f32",
  file: "sampling.cu",
  doc:
    "Temperature sampling with top-k, top-p and min-p and one Philox2x32-10 draw per row, sampleFromDistribution of sample.ts; " +
    "rows with temperature < 1e-5 are skipped (argmax_rows_f32's).",
  templateParams: [blockParam(512)],
  args: [
    ptr("tokens", "i32", "[numRows] output token ids (greedy rows untouched)"),
    ...LOGITS_ARGS,
    f64ptr("temperature", "[numRows] temperature"),
    ptr("topK", "i32", "[numRows] top-k (0: none)"),
    f64ptr("topP", "[numRows] top-p (1: none)"),
    f64ptr("minP", "[numRows] min-p (0: none)"),
    ptr("key", "u32", "[numRows] the request's 32-bit Philox key"),
    ptr("counter", "u32", "[numRows] the draw's counter: the row's numOutput"),
    i32("vocab", "logits per row"),
    i32("numRows", "rows"),
  ],
  launchSizes: ["numRows"],
  launchDoc: "grid (numRows), block BLOCK; one CTA per row; static shared 16·BLOCK + 5496 bytes (512: ~118-128 registers, no spills)",
  launch: rowsLaunch,
};

export const ROW_LOGSUMEXP: KernelSpec<"numRows"> = {
  name: "tk::row_logsumexp_f32",
  file: "sampling.cu",
  doc: "lse[r] = log Σ exp(x) of the raw logits in double (logSumExp of sample.ts); launch before the processors.",
  templateParams: [blockParam(1024)],
  args: [
    f64ptr("lse", "[numRows] output log-sum-exp (f64)"),
    ...LOGITS_ARGS,
    ptr("numTop", "i32", "[numRows] logprobs asked (< 0: none, the row is skipped); 0: every row", true),
    i32("vocab", "logits per row"),
    i32("numRows", "rows"),
  ],
  launchSizes: ["numRows"],
  launchDoc: "grid (numRows), block BLOCK; one CTA per row",
  launch: rowsLaunch,
};

export const GATHER_LOGPROBS: KernelSpec<"numRows"> = {
  name: "tk::gather_logprobs_f32",
  file: "sampling.cu",
  doc:
    "The sampled token's logprob raw[token] − lse and the top-n (n = min(numTop, 20, vocab)) raw logprobs, best first, " +
    "ties to the lower index (topKIndices of sample.ts); rows with numTop < 0 are skipped.",
  templateParams: [blockParam(1024)],
  args: [
    f64ptr("logprob", "[numRows] output: the sampled token's logprob"),
    ptr("topTokens", "i32", "[numRows, topStride] output: top-n token ids (−1 past the non-NaN logits)"),
    f64ptr("topLogprobs", "[numRows, topStride] output: their logprobs"),
    i32("topStride", "elements between top rows (>= the largest n)"),
    ptr("raw", "f32", "[numRows, vocab] the logits before processors and mask (the logits themselves, or a copy)"),
    i32("rawStride", "elements between raw rows"),
    f64ptr("lse", "[numRows] row_logsumexp_f32's output"),
    ptr("tokens", "i32", "[numRows] the sampled tokens"),
    ptr("numTop", "i32", "[numRows] logprobs asked (< 0: none)"),
    i32("vocab", "logits per row"),
    i32("numRows", "rows"),
  ],
  launchSizes: ["numRows"],
  launchDoc: "grid (numRows), block BLOCK; one CTA per row",
  launch: rowsLaunch,
};

// ---------------------------------------------------------------- quantized weights (quant_blocks.cuh, quant_gemv.cu, quant_dequant.cu, quant_fp8.cu)

const quantParam = (doc: string): TemplateParam => ({ name: "Q", kind: "quant", values: QUANT_TYPES, doc });
const u8ptr = (name: string, doc: string) => ptr(name, "u8", doc);

export const QUANT_GEMV: KernelSpec<"n"> = {
  name: "tk::quant_gemv",
  file: "quant_gemv.cu",
  doc:
    "out[m, n] = rowScale(n) · Σ_k x[m, k] · W[n, k] (+ bias[n]) for m < numRows ≤ ROWS: the dequant-fused matrix-vector product of decode " +
    "(f32 accumulation). W in a quantized format (ggml blocks, or int8 / e4m3 with per-row scales); see the header of quant_gemv.cu. " +
    "Use quantGemvRows(numRows) for ROWS; batches over 8 rows go through dequant_rows + the bf16 GEMM.",
  templateParams: [
    quantParam("weight format; k must be a multiple of its block size (QUANT_BLOCK)"),
    dtypeParam("T", "activation (x, out) dtype; NVRTC also accepts f16", ["f32", "bf16"]),
    { name: "ROWS", kind: "int", values: [1, 2, 4, 8], doc: "activation rows the instantiation holds (numRows ≤ ROWS); 1, 2, 4 or 8" },
  ],
  args: [
    ptr("out", "T", "[numRows, outStride] output"),
    i32("outStride", "elements between output rows"),
    ptr("x", "T", "[numRows, xStride] activations"),
    i32("xStride", "elements between activation rows"),
    u8ptr("w", "[n, k] quantized weights: n rows of quantRowBytes(Q, k) bytes, 16-byte aligned"),
    ptr("scale", "f32", "int8 / fp8_e4m3: row n's scale at scale[n · scaleStride]; ignored (0) for the block formats", true),
    i32("scaleStride", "1: a scale per row, 0: one for the tensor"),
    ptr("bias", "f32", "[n] f32 bias, 0: none", true),
    i32("numRows", "activation rows, 1..ROWS"),
    i32("n", "output features (weight rows)"),
    i32("k", "input features, a multiple of the format's block size"),
  ],
  launchSizes: ["n"],
  launchDoc: "grid (ceil(n / 8)), block 128 (required); static shared ≈ 20 KiB of x + ≤ 1 KiB of sums + ≤ 13.5 KiB of weight stages",
  launch: ({ n }) => ({ grid: [ceilDiv(n, 8), 1, 1], block: [128, 1, 1], sharedBytes: 0 }),
  // CI compiles f32 activations at ROWS 1 only (the f32 path differs from bf16 in its loads alone); NVRTC takes all.
  skip: (t) => t.T === "f32" && t.ROWS !== 1,
};

export const DEQUANT_ROWS: KernelSpec<"numRows" | "cols"> = {
  name: "tk::dequant_rows",
  file: "quant_dequant.cu",
  doc:
    "out[r, c] = W[r, c] dequantized (ggml's dequantize_row_* values; q · scale for int8 / fp8_e4m3), rounded to TO: the weight tile " +
    "of the large-batch path (dequantize, then the bf16 cuBLASLt GEMM).",
  templateParams: [quantParam("weight format"), dtypeParam("TO", "output dtype; NVRTC also accepts f32 and f16", ["bf16"])],
  args: [
    ptr("out", "TO", "[numRows, outStride] output"),
    i32("outStride", "elements between output rows"),
    u8ptr("w", "the first row's bytes (a tile of rows r0.. is w + r0 · quantRowBytes(Q, cols))"),
    ptr(
      "scale",
      "f32",
      "int8 / fp8_e4m3: row r's scale at scale[r · scaleStride] (the tile's first row's); ignored for block formats",
      true,
    ),
    i32("scaleStride", "1: a scale per row, 0: one for the tensor"),
    i32("numRows", "rows to dequantize"),
    i32("cols", "row length, a multiple of the format's block size"),
  ],
  launchSizes: ["numRows", "cols"],
  launchDoc: "grid (ceil(cols / 2048), min(numRows, 65535)), block 128 (required); 16 elements per thread, rows over grid.y",
  launch: ({ numRows, cols }) => ({ grid: [ceilDiv(cols, 2048), Math.min(numRows, 65535), 1], block: [128, 1, 1], sharedBytes: 0 }),
};

export const ABSMAX_ROWS: KernelSpec<"numRows"> = {
  name: "tk::absmax_rows",
  file: "quant_fp8.cu",
  doc:
    "max |x| per row (perRow ≠ 0: amax[r]) or over the tensor (perRow = 0: atomicMax into amax[0], zeroed first with cuMemsetD32Async): " +
    "step 1 of the FP8 activation quantization (see the header of quant_fp8.cu).",
  templateParams: [dtypeParam("T", "activation dtype; NVRTC also accepts f16", ["f32", "bf16"])],
  args: [
    ptr("amax", "f32", "[numRows] (perRow) or [1] output"),
    ptr("x", "T", "[numRows, xStride] activations"),
    i32("xStride", "elements between rows"),
    i32("numRows", "rows"),
    i32("cols", "row length"),
    i32("perRow", "nonzero: one maximum per row"),
  ],
  launchSizes: ["numRows"],
  launchDoc: "grid (numRows), block 256; one CTA per row (rows looped grid-stride)",
  launch: ({ numRows }) => ({ grid: [numRows, 1, 1], block: [256, 1, 1], sharedBytes: 0 }),
};

export const QUANTIZE_FP8: KernelSpec<"numRows" | "cols"> = {
  name: "tk::quantize_fp8_e4m3",
  file: "quant_fp8.cu",
  doc:
    "out = e4m3(x / s) (round to nearest even, saturating), s = max(amax / 448, 1 / 229376) of the row or tensor, written to scaleOut: " +
    "the B operand and B_SCALE_POINTER of an FP8 W8A8 matmul (createFp8LinearDescriptors).",
  templateParams: [dtypeParam("T", "activation dtype; NVRTC also accepts f16", ["f32", "bf16"])],
  args: [
    u8ptr("out", "[numRows, outStride] e4m3 output"),
    i32("outStride", "bytes between output rows"),
    ptr("scaleOut", "f32", "[numRows] (perRow) or [1]: the scale s"),
    ptr("x", "T", "[numRows, xStride] activations"),
    i32("xStride", "elements between rows"),
    ptr("amax", "f32", "absmax_rows' output"),
    i32("numRows", "rows"),
    i32("cols", "row length"),
    i32("perRow", "nonzero: a scale per row"),
  ],
  launchSizes: ["numRows", "cols"],
  launchDoc: "grid (ceil(cols / 2048), min(numRows, 65535)), block 256; 8 columns per thread",
  launch: ({ numRows, cols }) => columnsLaunch(numRows, cols),
};

export const KERNELS: readonly KernelSpec[] = [
  EMBEDDING,
  GATHER_ROWS,
  RMS_NORM,
  RMS_NORM_WARP,
  ROPE_CACHE_WRITE,
  PAGED_ATTENTION,
  PAGED_ATTENTION_COMBINE,
  SILU_AND_MUL,
  BIAS_ADD,
  CAST,
  LOGITS_PROCESSORS,
  APPLY_TOKEN_MASK,
  ARGMAX_ROWS,
  SAMPLE_ROWS,
  ROW_LOGSUMEXP,
  GATHER_LOGPROBS,
  QUANT_GEMV,
  DEQUANT_ROWS,
  ABSMAX_ROWS,
  QUANTIZE_FP8,
];

// ---------------------------------------------------------------- attention planning

export interface AttentionShape {
  numTokens: number;
  numSeqs: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Longest query (new tokens) of any sequence: 1 for a decode-only batch. */
  maxQueryLen: number;
  /** Longest context (seqLens) of any sequence. */
  maxSeqLen: number;
  /** Streaming multiprocessors of the device (132 on an H100 SXM). */
  numSms: number;
}

export interface AttentionPlan {
  qpw: 1 | 2 | 4;
  numSplits: number;
  /** Bytes of f32 workspace for partialOut + partialLse (0 when numSplits = 1). */
  workspaceBytes: number;
}

/**
 * A reasonable tiling: decode-only batches get the smallest tile that holds a
 * GQA group (no idle query slots); KV splits are added while the grid would
 * leave the GPU under-occupied (< 2 CTAs per SM), keeping at least 256 keys
 * per split. For CUDA graphs fix numSplits for the captured batch shape: any
 * value is correct whatever the sequence lengths.
 */
export function pagedAttentionPlan(s: AttentionShape): AttentionPlan {
  const group = s.numHeads / s.numKvHeads;
  const qpw = s.maxQueryLen > 1 || group > 8 ? 4 : group > 4 ? 2 : 1;
  const ctas = (ceilDiv(s.numTokens * group, attentionVectorsPerCta(qpw)) + (s.maxQueryLen > 1 ? s.numSeqs : 0)) * s.numKvHeads;
  const want = ceilDiv(2 * s.numSms, Math.max(1, ctas));
  const numSplits = clamp(Math.min(want, Math.floor(s.maxSeqLen / 256)), 1, 32);
  const workspaceBytes = numSplits > 1 ? numSplits * s.numTokens * s.numHeads * (s.headDim + 1) * 4 : 0;
  return { qpw, numSplits, workspaceBytes };
}

import type { MemoryReport, MemoryStats } from "./allocator.js";
import type { DType } from "./dtype.js";
import type { SampleOutput, SampleRow } from "./sampling.js";
import type { MemoryTag, Storage, Tensor } from "./tensor.js";

/**
 * Where each sequence of a flat batch sits, for paged attention. A batch mixes
 * prefill chunks and decodes: sequence s owns query rows
 * [queryStartLoc[s], queryStartLoc[s+1]) and, after this step's keys are
 * written, has seqLens[s] tokens of context in the blocks listed by row s of
 * blockTables. Query row j of a sequence with q new tokens sits at position
 * seqLens[s] - q + j and attends causally to positions 0..that position.
 */
export interface AttentionMetadata {
  numSeqs: number;
  /** i32 [numSeqs + 1] */
  queryStartLoc: Tensor;
  /** i32 [numSeqs] */
  seqLens: Tensor;
  /** i32 [numSeqs, maxBlocksPerSeq] */
  blockTables: Tensor;
  /** Largest seqLens entry: bounds the scratch an implementation needs. */
  maxSeqLen: number;
}

/** An fp8 KV cache holds K / k and V / v (the cache's scales); float caches ignore them. */
export interface KvScales {
  k: number;
  v: number;
}

/** Precomputed rotary tables: f32 [maxPositions, rotaryDim / 2] each; NeoX (rotate-half) pairing. */
export interface RopeTable {
  cos: Tensor;
  sin: Tensor;
  rotaryDim: number;
  maxPositions: number;
}

/**
 * The op set model code is written against. Every op writes into tensors the
 * caller passes and allocates nothing: a forward pass only issues ops.
 * Activations are 2-D [tokens, features] (3-D [tokens, heads, headDim] for
 * attention) with a contiguous last dimension and any row stride.
 */
export interface AllocOptions {
  /** The sampling op reads this tensor (the logits): place it where the backend's sampling kernels read it in place. */
  samplingInput?: boolean;
  /** The quantized matrix products read this tensor (the scales of int8/fp8 weights): place it beside the quantized weights. */
  kernelResident?: boolean;
}

/** What the engine and CLI ask a backend instead of checking its name. */
export interface BackendCapabilities {
  /** Its memory is the host's: the KV cache gets a fixed byte budget (--kv-cache-memory), not a share of a device's memory. */
  readonly hostMemory: boolean;
  /** Matrix products read weights in any stored float dtype; otherwise weights are converted to the activation dtype on load. */
  readonly anyWeightDType: boolean;
  /** Threads computing the ops (1 for a device backend's host side). */
  readonly threads: number;
  /** KV cache element types beyond the activation dtype (fp8_e4m3 on the CPU). */
  readonly kvCacheDTypes: readonly DType[];
  /** read() and sample() answer on the calling thread; otherwise only readAsync() and sampleAsync() work (WebGPU). */
  readonly syncReadback: boolean;
  /** The stored type of a weight matrix kept as `file` in the checkpoint, where the backend chooses (formats it has no kernels for). */
  readonly weightDType?: (file: DType, use: "matrix" | "table") => DType;
}

export interface Backend {
  readonly name: string;
  readonly capabilities: BackendCapabilities;
  /** The dtype activations and the KV cache are kept in. */
  readonly activationDType: DType;

  alloc(shape: readonly number[], dtype: DType, tag: MemoryTag, label: string, opts?: AllocOptions): Tensor;
  free(storage: Storage): void;
  /** Copy raw bytes (already in the tensor's dtype) into a contiguous tensor. */
  writeBytes(dst: Tensor, bytes: Uint8Array): void;
  /** Copy numbers into a contiguous tensor, converting to its dtype. */
  write(dst: Tensor, values: ArrayLike<number>): void;
  /** Read a tensor back as f32 (floats) or i32 values (where capabilities.syncReadback). */
  read(src: Tensor): Float32Array;
  /** The same, after all queued work, on every backend. */
  readAsync(src: Tensor): Promise<Float32Array>;
  memoryStats(): MemoryStats;
  /** Every live allocation with its tag and label, plus the device's own free/total. */
  memoryReport(): MemoryReport;

  /** out[t] = table[ids[t]] */
  embedding(out: Tensor, ids: Tensor, table: Tensor): void;
  /** With residual: residual += x, then out = rmsnorm(residual) * weight. Without: out = rmsnorm(x) * weight. Rows may be 3-D [t, h, d]. */
  rmsNorm(out: Tensor, x: Tensor, weight: Tensor, eps: number, residual?: Tensor): void;
  /**
   * out = x · weightᵀ (+ bias); weight [outFeatures, inFeatures] in any float dtype, or in a quantized
   * one the backend supports (supportsWeight); `scale` holds the f32 per-channel ([outFeatures]) or
   * per-tensor ([1]) scales of the int8 and fp8 encodings.
   */
  linear(out: Tensor, x: Tensor, weight: Tensor, bias?: Tensor, scale?: Tensor): void;
  /** Rotate q [t, hq, d] and k [t, hkv, d] in place at `positions`, then write k and v into the caches at `slotMapping` (slot < 0: skip). */
  ropeAndCacheWrite(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    positions: Tensor,
    rope: RopeTable,
    slotMapping: Tensor,
    kCache: Tensor,
    vCache: Tensor,
    kvScales?: KvScales,
  ): void;
  /**
   * out [t, hq, d] = causal softmax(q·kᵀ·scale)·v over the paged caches [blocks, blockSize, hkv, d]; GQA when hq > hkv.
   * The caches are in the activation dtype, or fp8_e4m3 where the backend supports it (kvCacheDTypes).
   */
  pagedAttention(out: Tensor, q: Tensor, kCache: Tensor, vCache: Tensor, meta: AttentionMetadata, scale: number, kvScales?: KvScales): void;
  /** x [t, 2i] = [gate | up]; out [t, i] = silu(gate) * up */
  siluAndMul(out: Tensor, x: Tensor): void;
  /** out[r] = x[indices[r]] */
  gatherRows(out: Tensor, x: Tensor, indices: Tensor): void;

  /**
   * Sample one token per row of logits [rows, vocab] (rows.length rows), with each row's processors, mask
   * and truncation (see sampling.ts). Only token ids and the log-probabilities rows asked for come back to
   * the host. The logits are consumed (the op may write into them).
   */
  sample(logits: Tensor, rows: readonly SampleRow[]): SampleOutput;
  /** The same, answering when the tokens are back (every backend; the only form on WebGPU). */
  sampleAsync(logits: Tensor, rows: readonly SampleRow[]): Promise<SampleOutput>;

  /** Wait for queued work (no-op where ops are synchronous). */
  synchronize(): void;
  dispose(): void;
}

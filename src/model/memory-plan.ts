/**
 * What a model needs, computed from its config alone, with the same
 * arithmetic the loader, the model and the engine use when they allocate:
 * weight bytes, KV bytes per token, the activation arena, the KV blocks a
 * budget buys and how many full-length sequences fit. `tokamak plan` prints
 * it; tests hold it equal to what `serve` actually allocates.
 */
import { type DType, dtypeBytes } from "../backend/dtype.js";
import type { ModelConfig } from "./config.js";
import { planActivations } from "./llama.js";
import { ENGINE_DEFAULTS } from "../defaults.js";

export interface PlanOptions {
  /** Matrices' dtype (default: the checkpoint's torch_dtype, else bf16). */
  weightDType?: DType;
  /** The backend's compute dtype for activations, norms, biases and the KV cache (CPU: f32; CUDA: bf16). */
  activationDType: DType;
  maxModelLen?: number;
  maxNumSeqs?: number;
  maxNumBatchedTokens?: number;
  blockSize?: number;
  /** A fixed KV budget in bytes (the CPU backend's --kv-cache-memory). */
  kvCacheMemory?: number;
  /** Or a device: memory per GPU, the number of GPUs and the fraction to use (--gpu-memory-utilization). */
  gpu?: { memoryBytes: number; count: number; utilization: number };
}

export interface MemoryPlan {
  parameters: number;
  weightBytes: number;
  /** Of which: the rotary cos/sin tables (f32). */
  ropeBytes: number;
  kvBytesPerToken: number;
  bytesPerBlock: number;
  activationBytes: number;
  activationBytesWithoutReuse: number;
  workspaceBytes: number;
  /** The KV budget the blocks come out of. */
  kvBudgetBytes: number;
  numBlocks: number;
  /** Tokens the KV cache holds. */
  kvTokens: number;
  /** Full-length (max-model-len) sequences that fit at once. */
  maxConcurrency: number;
  maxModelLen: number;
  /** Everything allocated: weights + KV + activations + workspace. */
  totalBytes: number;
  /** Why it does not fit, if it does not. */
  problems: string[];
}

/** A backend buffer's size: numel × element size, rounded up to 4 bytes as the allocators do. */
const buffer = (numel: number, dtype: DType) => Math.ceil((numel * dtypeBytes(dtype)) / 4) * 4;

/** Bytes of weights as the loader allocates them: fused qkv and gate_up matrices, 1-D parameters in the activation dtype. */
export function weightAllocations(
  c: ModelConfig,
  weightDType: DType,
  act: DType,
  maxModelLen: number,
): { parameters: number; bytes: number; ropeBytes: number } {
  const { hiddenSize: H, headDim: D, numHeads: Hq, numKvHeads: Hkv, intermediateSize: I, vocabSize: V } = c;
  let parameters = 0;
  let bytes = 0;
  const matrix = (rows: number, cols: number) => {
    parameters += rows * cols;
    bytes += buffer(rows * cols, weightDType);
  };
  const vector = (n: number) => {
    parameters += n;
    bytes += buffer(n, act);
  };
  // One layer, then scaled: every layer has the same shapes, and a config may claim absurdly many.
  vector(H);
  matrix((Hq + 2 * Hkv) * D, H);
  if (c.qkvBias) vector((Hq + 2 * Hkv) * D);
  if (c.qkNorm) {
    vector(D);
    vector(D);
  }
  matrix(H, Hq * D);
  if (c.oBias) vector(H);
  vector(H);
  matrix(2 * I, H);
  if (c.mlpBias) vector(2 * I);
  matrix(H, I);
  if (c.mlpBias) vector(H);
  parameters *= c.numLayers;
  bytes *= c.numLayers;
  matrix(V, H);
  vector(H);
  if (!c.tieWordEmbeddings) matrix(V, H);
  const ropeBytes = ropeTableBytes(c, maxModelLen);
  return { parameters, bytes: bytes + ropeBytes, ropeBytes };
}

/** The rotary cos and sin tables (f32, one row of head_dim/2 per position). */
export function ropeTableBytes(c: ModelConfig, maxModelLen: number): number {
  return 2 * buffer(maxModelLen * (c.headDim / 2), "f32");
}

/** The model runner's per-step input buffers (token ids, positions, slot mapping, sequence metadata, block tables). */
export function workspaceBytes(maxNumTokens: number, maxNumSeqs: number, maxModelLen: number, blockSize: number): number {
  const maxBlocksPerSeq = Math.ceil(maxModelLen / blockSize);
  return (
    3 * buffer(maxNumTokens, "i32") +
    buffer(maxNumSeqs + 1, "i32") +
    2 * buffer(maxNumSeqs, "i32") +
    buffer(maxNumSeqs * maxBlocksPerSeq, "i32")
  );
}

export function kvBytesPerTokenOf(c: ModelConfig, act: DType): number {
  return 2 * c.numLayers * c.numKvHeads * c.headDim * dtypeBytes(act);
}

export const DEFAULT_CPU_KV_CACHE_MEMORY = 4 * 2 ** 30;

export function planMemory(c: ModelConfig, o: PlanOptions): MemoryPlan {
  let maxModelLen = o.maxModelLen ?? c.maxPositionEmbeddings;
  if (c.slidingWindow !== null && maxModelLen > c.slidingWindow) maxModelLen = c.slidingWindow;
  const blockSize = o.blockSize ?? ENGINE_DEFAULTS.blockSize;
  const maxNumSeqs = o.maxNumSeqs ?? ENGINE_DEFAULTS.maxNumSeqs;
  const maxNumBatchedTokens = o.maxNumBatchedTokens ?? ENGINE_DEFAULTS.maxNumBatchedTokens;
  const weightDType = o.weightDType ?? c.torchDtype ?? "bf16";
  const act = o.activationDType;
  const w = weightAllocations(c, weightDType, act, maxModelLen);
  const arena = planActivations(c, { maxNumTokens: maxNumBatchedTokens, maxNumLogits: maxNumSeqs }, dtypeBytes(act));
  const workspace = workspaceBytes(maxNumBatchedTokens, maxNumSeqs, maxModelLen, blockSize);
  const kvBytesPerToken = kvBytesPerTokenOf(c, act);
  const bytesPerBlock = blockSize * kvBytesPerToken;
  const problems: string[] = [];
  let kvBudgetBytes: number;
  if (o.gpu) {
    const usable = o.gpu.memoryBytes * o.gpu.count * o.gpu.utilization;
    kvBudgetBytes = Math.max(0, usable - w.bytes - arena.totalBytes - workspace);
    if (w.bytes > usable) {
      problems.push(
        `the weights (${formatBytes(w.bytes)}) exceed the usable GPU memory (${formatBytes(usable)}): quantize them or offload layers to the CPU`,
      );
    }
  } else {
    kvBudgetBytes = o.kvCacheMemory ?? DEFAULT_CPU_KV_CACHE_MEMORY;
  }
  const numBlocks = Math.floor(kvBudgetBytes / bytesPerBlock);
  if (numBlocks * blockSize < maxModelLen) {
    problems.push(
      `the KV cache holds ${numBlocks * blockSize} tokens, fewer than one ${maxModelLen}-token sequence: lower --max-model-len or give the KV cache more memory`,
    );
  }
  return {
    parameters: w.parameters,
    weightBytes: w.bytes,
    ropeBytes: w.ropeBytes,
    kvBytesPerToken,
    bytesPerBlock,
    activationBytes: arena.totalBytes,
    activationBytesWithoutReuse: arena.unsharedBytes,
    workspaceBytes: workspace,
    kvBudgetBytes,
    numBlocks,
    kvTokens: numBlocks * blockSize,
    maxConcurrency: (numBlocks * blockSize) / maxModelLen,
    maxModelLen,
    totalBytes: w.bytes + numBlocks * bytesPerBlock + arena.totalBytes + workspace,
    problems,
  };
}

export function formatBytes(b: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) {
    b /= 1024;
    i++;
  }
  return `${i === 0 ? b : b.toFixed(2)} ${units[i]}`;
}

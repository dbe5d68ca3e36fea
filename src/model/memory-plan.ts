/**
 * What a model needs, computed from its config alone, with the same
 * arithmetic the loader, the model and the engine use when they allocate:
 * weight bytes, KV bytes per token, the activation arena, the KV blocks a
 * budget buys and how many full-length sequences fit. `tokamak plan` prints
 * it; tests hold it equal to what `serve` actually allocates.
 */
import { type DType, dtypeBytes, elementType, tensorBytes } from "../backend/dtype.js";
import { ggufFileType, ggufTensorType } from "../convert/gguf-file-types.js";
import { hfToGgufName } from "./gguf-names.js";
import { type DeclaredTensor, declaredLlamaTensors } from "./weights.js";
import type { ModelConfig } from "./config.js";
import { planActivations } from "./llama.js";
import { ENGINE_DEFAULTS } from "../defaults.js";

export interface PlanOptions {
  /** Matrices' dtype (default: the checkpoint's torch_dtype, else bf16). */
  weightDType?: DType;
  /** Or a format: int8/fp8 at load, a GGUF type and its mix (see weightFormat); overrides weightDType. */
  weightFormat?: WeightFormat;
  /** The KV cache's element type (default: the activation dtype; fp8_e4m3 for --kv-cache-dtype fp8). */
  kvCacheDType?: DType;
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
const buffer = (numel: number, dtype: DType) => Math.ceil(tensorBytes(dtype, numel) / 4) * 4;

/**
 * How a plan stores the matrices: a dense dtype, a load-time quantization (int8/fp8 with f32
 * per-channel scales) or a GGUF file type with its mix (q4_k_m gives some tensors Q6_K).
 */
export interface WeightFormat {
  name: string;
  /** The element type of a declared matrix; `moreBits`: a layer where mixes upgrade attn_v and ffn_down. */
  matrix(t: DeclaredTensor, moreBits: boolean, tiedEmbeddings: boolean): DType;
  table(t: DeclaredTensor, tiedEmbeddings: boolean): DType;
}

/** The format a name gives: a dtype, int8 / fp8, or a GGUF type (q8_0, q4_k_m, ...); `stored` is the checkpoint's dtype. */
export function weightFormat(name: string, stored: DType): WeightFormat {
  if (name === "int8" || name === "fp8") {
    const q: DType = name === "int8" ? "int8" : "fp8_e4m3";
    // The LM head keeps its encoding, as the loader does (quant-method.ts).
    return { name, matrix: (t) => (t.name === "lm_head.weight" ? stored : q), table: () => stored };
  }
  const ft = ggufFileType(name);
  const gguf = (t: DeclaredTensor, moreBits: boolean, tied: boolean) => {
    const g = hfToGgufName(t.name) ?? t.name;
    return ggufTensorType(ft, g, t.shape, moreBits, tied);
  };
  return { name, matrix: gguf, table: (t, tied) => gguf(t, false, tied) };
}

/** Layers that llama.cpp's mixes give more bits (use_more_bits), counted without a loop over absurd layer counts. */
function moreBitsLayers(layers: number): number {
  const first = Math.floor(layers / 8);
  const lastStart = Math.floor((7 * layers) / 8);
  // Layers [first, lastStart) with (layer - first) mod 3 = 2.
  return first + (layers - lastStart) + Math.floor((lastStart - first) / 3);
}

/** Bytes of weights as the loader allocates them, from the architecture's declaration; 1-D parameters in the activation dtype. */
export function weightAllocations(
  c: ModelConfig,
  format: DType | WeightFormat,
  act: DType,
  maxModelLen: number,
): { parameters: number; bytes: number; ropeBytes: number } {
  const fmt: WeightFormat = typeof format === "string" ? { name: format, matrix: () => format, table: () => format } : format;
  const tensors = declaredLlamaTensors(c);
  const tied = !tensors.some((t) => t.name === "lm_head.weight");
  const more = moreBitsLayers(c.numLayers);
  let parameters = 0;
  let bytes = 0;
  const matrixBytes = (dtype: DType, t: DeclaredTensor) => {
    const numel = t.shape[0]! * t.shape[1]!;
    return buffer(numel, dtype) + (elementType(dtype).kind === "channel" ? buffer(t.shape[0]!, "f32") : 0);
  };
  for (const t of tensors) {
    const numel = t.shape.reduce((a, b) => a * b, 1);
    const count = t.perLayer ? c.numLayers : 1;
    parameters += numel * count;
    if (t.role === "vector") bytes += buffer(numel, act) * count;
    else if (t.role === "table") bytes += buffer(numel, fmt.table(t, tied));
    else if (!t.perLayer) bytes += matrixBytes(fmt.matrix(t, false, tied), t);
    else bytes += more * matrixBytes(fmt.matrix(t, true, tied), t) + (c.numLayers - more) * matrixBytes(fmt.matrix(t, false, tied), t);
  }
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
  const w = weightAllocations(c, o.weightFormat ?? weightDType, act, maxModelLen);
  const arena = planActivations(c, { maxNumTokens: maxNumBatchedTokens, maxNumLogits: maxNumSeqs }, dtypeBytes(act));
  const workspace = workspaceBytes(maxNumBatchedTokens, maxNumSeqs, maxModelLen, blockSize);
  const kvBytesPerToken = kvBytesPerTokenOf(c, o.kvCacheDType ?? act);
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

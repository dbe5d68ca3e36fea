/**
 * The Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3), written once
 * against the backend op set. Per layer, following the paper:
 *
 *   h   = h + Attention(RMSNorm(h))        (q/k RMSNorm per head for Qwen3)
 *   h   = h + MLP(RMSNorm(h))              MLP(x) = down(silu(gate(x)) · up(x))
 *
 * The residual add is fused into the next RMSNorm, RoPE into the KV-cache
 * write, and only the rows whose logits are wanted go through the final norm
 * and the LM head. All activations live in one arena planned at construction;
 * forward() only issues ops.
 */
import type { AttentionMetadata, Backend, KvScales, RopeTable } from "../backend/backend.js";
import { type DType, dtypeBytes } from "../backend/dtype.js";
import { Tensor } from "../backend/tensor.js";
import { type ArenaPlan, type BufferRequest, planArena } from "./arena.js";
import type { ModelConfig } from "./config.js";
import { freeLlamaWeights, type LlamaWeights } from "./weights.js";

/** One flat batch: the new tokens of every scheduled sequence, back to back. */
export interface ForwardBatch {
  numTokens: number;
  /** i32 [numTokens] */
  tokenIds: Tensor;
  /** i32 [numTokens] */
  positions: Tensor;
  /** i32 [numTokens]: cache slot (block · blockSize + offset) each token's K/V goes to; -1 to skip. */
  slotMapping: Tensor;
  attention: AttentionMetadata;
  /** i32 [numLogits]: rows of the batch whose next-token logits are wanted (usually each sequence's last). */
  logitsIndices: Tensor;
}

/** Paged KV cache: per layer, K and V of shape [numBlocks, blockSize, numKvHeads, headDim]. */
export interface KVCache {
  numBlocks: number;
  blockSize: number;
  k: Tensor[];
  v: Tensor[];
  /** fp8 caches store value / scale (vLLM's k_scale and v_scale; 1 without calibrated scales). */
  scales: KvScales;
}

export interface ModelLimits {
  /** Most tokens in one forward pass (vLLM's max_num_batched_tokens). */
  maxNumTokens: number;
  /** Most logits rows in one forward pass (sequences). */
  maxNumLogits: number;
}

interface Activations {
  residual: Tensor;
  mlpOut: Tensor;
  normed: Tensor;
  qkv: Tensor;
  attn: Tensor;
  attnOut: Tensor;
  gateUp: Tensor;
  act: Tensor;
  lastDelta: Tensor;
  lastResidual: Tensor;
  lastNormed: Tensor;
  logits: Tensor;
}

/**
 * The forward pass's activation buffers: shape, and the first and last op that
 * use each. Op indices of one layer (the same plan serves every layer): 1 norm,
 * 2 qkv, 3 rope, 4 attention, 5 o_proj, 6 norm, 7 gate_up, 8 silu·mul, 9 down;
 * the tail gathers, norms and projects the last rows.
 */
export function activationShapes(config: ModelConfig, limits: ModelLimits): Record<keyof Activations, [number[], number, number]> {
  const { hiddenSize: H, numHeads: Hq, numKvHeads: Hkv, headDim: D, intermediateSize: I, vocabSize: V } = config;
  const T = limits.maxNumTokens;
  const S = limits.maxNumLogits;
  return {
    residual: [[T, H], 0, 99],
    mlpOut: [[T, H], 0, 99],
    normed: [[T, H], 1, 7],
    qkv: [[T, (Hq + 2 * Hkv) * D], 2, 4],
    attn: [[T, Hq * D], 4, 5],
    attnOut: [[T, H], 5, 6],
    gateUp: [[T, 2 * I], 7, 8],
    act: [[T, I], 8, 9],
    lastDelta: [[S, H], 10, 12],
    lastResidual: [[S, H], 11, 12],
    lastNormed: [[S, H], 12, 13],
    logits: [[S, V], 0, 99],
  };
}

/**
 * The activations for these limits: what is allocated (with buffer reuse) and what it would be without.
 * The logits live through the whole pass and never share, so they get their own allocation, which the
 * sampling op reads in place (on the CPU, a wasm memory); the plan counts them after the shared arena.
 */
export function planActivations(config: ModelConfig, limits: ModelLimits, elementBytes: number): ArenaPlan {
  const { logits, ...shared } = activationShapes(config, limits);
  const requests: BufferRequest[] = Object.entries(shared).map(([name, [shape, first, last]]) => ({
    name,
    bytes: shape.reduce((a, b) => a * b, 1) * elementBytes,
    first,
    last,
  }));
  const arena = planArena(requests);
  const logitsBytes = logits[0].reduce((a, b) => a * b, 1) * elementBytes;
  const offsets = new Map(arena.offsets);
  offsets.set("logits", arena.totalBytes);
  return { offsets, totalBytes: arena.totalBytes + logitsBytes, unsharedBytes: arena.unsharedBytes + logitsBytes };
}

export class LlamaModel {
  readonly arenaPlan: ArenaPlan;
  private acts: Activations;
  private arena: Tensor;
  private logits: Tensor;
  private readonly qkvDim: number;
  private readonly scale: number;

  constructor(
    readonly config: ModelConfig,
    readonly weights: LlamaWeights,
    readonly backend: Backend,
    readonly rope: RopeTable,
    readonly limits: ModelLimits,
  ) {
    const { numHeads: Hq, numKvHeads: Hkv, headDim: D } = config;
    this.qkvDim = (Hq + 2 * Hkv) * D;
    this.scale = 1 / Math.sqrt(D);
    const elt = dtypeBytes(backend.activationDType);
    const shapes = activationShapes(config, limits);
    this.arenaPlan = planActivations(config, limits, elt);
    const logitsShape = shapes.logits[0];
    const logitsElems = logitsShape.reduce((a, b) => a * b, 1);
    const arena = backend.alloc(
      [this.arenaPlan.totalBytes / elt - logitsElems],
      backend.activationDType,
      "activations",
      "activation arena",
    );
    this.arena = arena;
    this.logits = backend.alloc(logitsShape, backend.activationDType, "activations", "logits", { samplingInput: true });
    const view = (name: string, shape: number[]) =>
      name === "logits" ? this.logits : new Tensor(arena.storage, backend.activationDType, shape, this.arenaPlan.offsets.get(name)! / elt);
    this.acts = Object.fromEntries(Object.entries(shapes).map(([name, [shape]]) => [name, view(name, shape)])) as unknown as Activations;
  }

  /** Runs the batch and returns logits [numLogits, vocab] (its own buffer, valid until the next call). */
  forward(batch: ForwardBatch, kv: KVCache): Tensor {
    const T = batch.numTokens;
    const S = batch.logitsIndices.numel;
    if (T < 1 || T > this.limits.maxNumTokens)
      throw new RangeError(`forward: ${T} tokens; this model was planned for 1..${this.limits.maxNumTokens}`);
    if (S > this.limits.maxNumLogits) throw new RangeError(`forward: ${S} logits rows; planned for at most ${this.limits.maxNumLogits}`);
    const b = this.backend;
    const w = this.weights;
    const a = this.acts;
    const eps = this.config.rmsNormEps;
    const residual = a.residual.rows(0, T);
    const mlpOut = a.mlpOut.rows(0, T);
    const normed = a.normed.rows(0, T);

    b.embedding(residual, batch.tokenIds, w.embed);
    w.layers.forEach((layer, l) => {
      if (l === 0) b.rmsNorm(normed, residual, layer.inputNorm, eps);
      else b.rmsNorm(normed, mlpOut, layer.inputNorm, eps, residual);
      this.attention(l, normed, batch, kv);
      b.rmsNorm(normed, a.attnOut.rows(0, T), layer.postNorm, eps, residual);
      this.mlp(l, normed, mlpOut);
    });

    // Final residual add, norm and LM head on the requested rows only.
    const delta = a.lastDelta.rows(0, S);
    const res = a.lastResidual.rows(0, S);
    const last = a.lastNormed.rows(0, S);
    const logits = a.logits.rows(0, S);
    b.gatherRows(delta, mlpOut, batch.logitsIndices);
    b.gatherRows(res, residual, batch.logitsIndices);
    b.rmsNorm(last, delta, w.norm, eps, res);
    w.lmHead.forward(b, logits, last);
    return logits;
  }

  /** Free the weights, rotary tables and activation arena. */
  dispose(): void {
    for (const t of [this.rope.cos, this.rope.sin, this.arena, this.logits]) this.backend.free(t.storage);
    freeLlamaWeights(this.backend, this.weights);
  }

  private attention(l: number, x: Tensor, batch: ForwardBatch, kv: KVCache): void {
    const { numHeads: Hq, numKvHeads: Hkv, headDim: D } = this.config;
    const b = this.backend;
    const layer = this.weights.layers[l]!;
    const T = batch.numTokens;
    const qkv = this.acts.qkv.rows(0, T);
    layer.qkv.forward(b, qkv, x);
    const q = headsView(qkv, 0, Hq, D);
    const k = headsView(qkv, Hq * D, Hkv, D);
    const v = headsView(qkv, (Hq + Hkv) * D, Hkv, D);
    if (layer.qNorm && layer.kNorm) {
      b.rmsNorm(q, q, layer.qNorm, this.config.rmsNormEps);
      b.rmsNorm(k, k, layer.kNorm, this.config.rmsNormEps);
    }
    b.ropeAndCacheWrite(q, k, v, batch.positions, this.rope, batch.slotMapping, kv.k[l]!, kv.v[l]!, kv.scales);
    const attn = this.acts.attn.rows(0, T);
    b.pagedAttention(attn.view([T, Hq, D]), q, kv.k[l]!, kv.v[l]!, batch.attention, this.scale, kv.scales);
    layer.o.forward(b, this.acts.attnOut.rows(0, T), attn);
  }

  private mlp(l: number, x: Tensor, out: Tensor): void {
    const b = this.backend;
    const layer = this.weights.layers[l]!;
    const T = x.shape[0]!;
    const gateUp = this.acts.gateUp.rows(0, T);
    const act = this.acts.act.rows(0, T);
    layer.gateUp.forward(b, gateUp, x);
    b.siluAndMul(act, gateUp);
    layer.down.forward(b, out, act);
  }
}

/** [t, heads, d] view of columns [col, col + heads·d) of a [t, features] tensor. */
function headsView(t: Tensor, col: number, heads: number, d: number): Tensor {
  return new Tensor(t.storage, t.dtype, [t.shape[0]!, heads, d], t.offset + col, [t.rowStride, d, 1]);
}

/** Allocate a paged KV cache for `numBlocks` blocks in one storage. */
export function allocateKVCache(
  backend: Backend,
  config: ModelConfig,
  numBlocks: number,
  blockSize: number,
  dtype: DType = backend.activationDType,
): KVCache {
  const { numLayers: L, numKvHeads: Hkv, headDim: D } = config;
  // One storage per layer and per K/V, as vLLM keeps them: no single buffer grows with the layer count.
  const shape = [numBlocks, blockSize, Hkv, D];
  const k: Tensor[] = [];
  const v: Tensor[] = [];
  try {
    for (let l = 0; l < L; l++) {
      k.push(backend.alloc(shape, dtype, "kv-cache", `kv cache layer ${l} keys`));
      v.push(backend.alloc(shape, dtype, "kv-cache", `kv cache layer ${l} values`));
    }
  } catch (err) {
    for (const t of [...k, ...v]) backend.free(t.storage);
    throw err;
  }
  return { numBlocks, blockSize, k, v, scales: { k: 1, v: 1 } };
}

/** Give the KV cache's storages back to the backend. */
export function freeKVCache(backend: Backend, kv: KVCache): void {
  for (const t of [...kv.k, ...kv.v]) backend.free(t.storage);
}

/** Bytes one token of context takes in the KV cache, over all layers. */
export function kvBytesPerToken(config: ModelConfig, backend: Backend, dtype: DType = backend.activationDType): number {
  return 2 * config.numLayers * config.numKvHeads * config.headDim * dtypeBytes(dtype);
}

import type { SamplingParams } from "./sampling-params.js";

/**
 * A 64-bit seed (as exact as a JSON number holds it) folded into the 32-bit state: the high word is mixed in,
 * so 2^32 or -2^63 no longer alias 0; seeds in [0, 2^32) keep the stream they always had.
 */
export function foldSeed(seed: number): number {
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 2 ** 32) >>> 0;
  return hi === 0 ? lo : (lo ^ Math.imul(hi ^ (hi >>> 16), 0x9e3779b1)) >>> 0;
}

/** A small, fast, seedable PRNG (mulberry32): each request owns one, so a seed reproduces its tokens whatever the batch. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = foldSeed(seed);
  }
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
}

export function argmax(row: ArrayLike<number>): number {
  let best = 0;
  let bestV = -Infinity;
  for (let i = 0; i < row.length; i++) {
    const v = row[i]!;
    if (v > bestV) {
      bestV = v;
      best = i;
    }
  }
  return best;
}

/** log Σ exp(row), stable. */
export function logSumExp(row: ArrayLike<number>): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) max = Math.max(max, row[i]!);
  if (max === -Infinity) return -Infinity;
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i]! - max);
  return max + Math.log(sum);
}

/** What the sampler needs to know of a request's history. */
export interface SamplingState {
  readonly promptTokenIds: readonly number[];
  readonly outputTokenIds: readonly number[];
  /** Occurrences of each token in the output so far. */
  readonly outputCounts: ReadonlyMap<number, number>;
  readonly rng: Rng;
  /** End-of-sequence ids (masked while min_tokens is not reached). */
  readonly eosTokenIds: readonly number[];
}

export interface TokenLogprob {
  token: number;
  logprob: number;
}

export interface SampledToken {
  token: number;
  /** log-probability of the sampled token under the model (before sampling transforms), when requested. */
  logprob?: number;
  topLogprobs?: TokenLogprob[];
}

/** The k largest entries of row (indices), best first, in O(V log k). */
export function topKIndices(row: ArrayLike<number>, k: number): number[] {
  const heap: number[] = []; // min-heap on row value
  const less = (a: number, b: number) => row[a]! < row[b]!;
  const siftDown = (i: number) => {
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < heap.length && less(heap[l]!, heap[m]!)) m = l;
      if (r < heap.length && less(heap[r]!, heap[m]!)) m = r;
      if (m === i) return;
      [heap[i], heap[m]] = [heap[m]!, heap[i]!];
      i = m;
    }
  };
  for (let i = 0; i < row.length; i++) {
    if (heap.length < k) {
      heap.push(i);
      for (let j = heap.length - 1; j > 0;) {
        const p = (j - 1) >> 1;
        if (!less(heap[j]!, heap[p]!)) break;
        [heap[j], heap[p]] = [heap[p]!, heap[j]!];
        j = p;
      }
    } else if (row[i]! > row[heap[0]!]!) {
      heap[0] = i;
      siftDown(0);
    }
  }
  return heap.sort((a, b) => row[b]! - row[a]! || a - b);
}

/** Penalties, logit bias and the min_tokens mask, in place (vLLM's order). */
export function applyLogitsProcessors(row: Float32Array, p: SamplingParams, s: SamplingState): void {
  for (const [id, bias] of Object.entries(p.logitBias)) {
    const i = Number(id);
    if (i < row.length) row[i] = row[i]! + bias;
  }
  if (s.outputTokenIds.length < p.minTokens) {
    for (const id of p.stopTokenIds) if (id < row.length) row[id] = -Infinity;
    if (!p.ignoreEos) for (const id of s.eosTokenIds) if (id < row.length) row[id] = -Infinity;
  }
  if (p.repetitionPenalty !== 1) {
    const seen = new Set<number>(s.promptTokenIds);
    for (const t of s.outputTokenIds) seen.add(t);
    for (const t of seen) {
      const v = row[t]!;
      row[t] = v > 0 ? v / p.repetitionPenalty : v * p.repetitionPenalty;
    }
  }
  if (p.frequencyPenalty !== 0 || p.presencePenalty !== 0) {
    for (const [t, count] of s.outputCounts) row[t] = row[t]! - p.frequencyPenalty * count - p.presencePenalty;
  }
}

/**
 * Pick the next token from one logits row (modified in place). Greedy at
 * temperature 0; otherwise softmax(logits / T) truncated by top-k, top-p and
 * min-p, sampled with the request's own RNG (one draw per token).
 */
export function sampleToken(row: Float32Array, p: SamplingParams, s: SamplingState): SampledToken {
  let logprobInfo: { lse: number; raw: Float32Array } | undefined;
  if (p.logprobs !== null) logprobInfo = { lse: logSumExp(row), raw: row.slice() };
  applyLogitsProcessors(row, p, s);
  const token = p.temperature < 1e-5 ? argmax(row) : sampleFromDistribution(row, p, s.rng);
  if (!logprobInfo) return { token };
  const { lse, raw } = logprobInfo;
  const top = p.logprobs! > 0 ? topKIndices(raw, p.logprobs!).map((t) => ({ token: t, logprob: raw[t]! - lse })) : undefined;
  return { token, logprob: raw[token]! - lse, topLogprobs: top };
}

function sampleFromDistribution(row: Float32Array, p: SamplingParams, rng: Rng): number {
  const invT = 1 / p.temperature;
  // Candidates best first. Tokens more than 40 nats below the best carry < 1e-17 of the mass each: leaving them
  // out changes no top-p or min-p decision, and keeps the sort to a handful of tokens instead of the vocabulary.
  let cand: number[];
  if (p.topK > 0) {
    cand = topKIndices(row, Math.min(p.topK, row.length));
  } else {
    const max = row[argmax(row)]!;
    const floor = max - 40 * p.temperature;
    cand = [];
    for (let i = 0; i < row.length; i++) if (row[i]! >= floor) cand.push(i);
    cand.sort((a, b) => row[b]! - row[a]! || a - b);
  }
  const best = row[cand[0]!]!;
  let weights = cand.map((t) => Math.exp((row[t]! - best) * invT));
  let total = weights.reduce((a, b) => a + b, 0);
  if (p.topP < 1) {
    let acc = 0;
    let keep = 0;
    while (keep < weights.length && acc < p.topP * total) acc += weights[keep++]!;
    cand = cand.slice(0, keep);
    weights = weights.slice(0, keep);
    total = acc;
  }
  if (p.minP > 0) {
    // weights[0] is the most likely token's (relative) probability.
    const threshold = p.minP * weights[0]!;
    let keep = weights.findIndex((w) => w < threshold);
    if (keep === -1) keep = weights.length;
    cand = cand.slice(0, keep);
    weights = weights.slice(0, keep);
    total = weights.reduce((a, b) => a + b, 0);
  }
  let r = rng.next() * total;
  for (let i = 0; i < cand.length; i++) {
    r -= weights[i]!;
    if (r < 0) return cand[i]!;
  }
  return cand[cand.length - 1]!;
}

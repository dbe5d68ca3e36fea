/** Per-request sampling settings (the subset the first generate command needs; the engine grows it). */
export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  topK: number;
  topP: number;
  seed?: number;
}

export const GREEDY: SamplingParams = { temperature: 0, topK: 0, topP: 1 };

/** A small, fast, seedable PRNG (mulberry32) so a seed reproduces a sample regardless of batch. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
}

export function argmax(row: Float32Array, offset = 0, n = row.length - offset): number {
  let best = 0;
  let bestV = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = row[offset + i]!;
    if (v > bestV) {
      bestV = v;
      best = i;
    }
  }
  return best;
}

/** log-softmax of one logits row, in f64 for accuracy. */
export function logSoftmax(row: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of row) max = Math.max(max, v);
  let sum = 0;
  for (const v of row) sum += Math.exp(v - max);
  const lse = max + Math.log(sum);
  return Float64Array.from(row, (v) => v - lse);
}

/** Pick the next token from one logits row: greedy, or temperature with top-k / top-p truncation. */
export function sample(row: Float32Array, p: SamplingParams, rng: Rng): number {
  if (p.temperature <= 0) return argmax(row);
  let ids = Array.from(row.keys());
  ids.sort((a, b) => row[b]! - row[a]!);
  if (p.topK > 0) ids = ids.slice(0, p.topK);
  const max = row[ids[0]!]!;
  let probs = ids.map((i) => Math.exp((row[i]! - max) / p.temperature));
  let sum = probs.reduce((a, b) => a + b, 0);
  if (p.topP < 1) {
    let acc = 0;
    let keep = 0;
    while (keep < probs.length && acc < p.topP * sum) acc += probs[keep++]!;
    ids = ids.slice(0, keep);
    probs = probs.slice(0, keep);
    sum = acc;
  }
  let r = rng.next() * sum;
  for (let i = 0; i < ids.length; i++) {
    r -= probs[i]!;
    if (r <= 0) return ids[i]!;
  }
  return ids[ids.length - 1]!;
}

/**
 * The sampling op on the CPU, over logits rows in place: logits processors (bias, min_tokens mask,
 * repetition / frequency / presence penalties, vLLM's order), an allowed-token bitmask, then greedy or
 * temperature sampling truncated by top-k, top-p and min-p, with one counter-based draw per token.
 * Log-probabilities come from the raw logits (vLLM's default), only for rows that ask.
 *
 * Cost: greedy rows make one read of the row; sampled rows one read plus work on the candidates within
 * 40 nats (times T) of the best token — tokens further down carry under e^-40 of the mass each and change
 * no decision. Top-k and top-p find their cut by selection and bucketing, not by sorting the vocabulary.
 */
import { uniform } from "../rng.js";
import type { RowLogprobs, SampleOutput, SampleRow, SamplingRow, TokenLogprob } from "../sampling.js";

/** Nats below the best (scaled) logit past which a token's weight, under e^-40, changes nothing. */
const CUTOFF_NATS = 40;
/** Temperatures below this are greedy. */
export const GREEDY_TEMPERATURE = 1e-5;

let candIdx = new Int32Array(0);
/** The candidates' (processed) logits, beside their ids: the passes below read them without indirection. */
let candV = new Float32Array(0);
let candW = new Float64Array(0);
let keep = new Uint8Array(0);

function ensureScratch(n: number): void {
  if (candIdx.length >= n) return;
  candIdx = new Int32Array(n);
  candV = new Float32Array(n);
  candW = new Float64Array(n);
  keep = new Uint8Array(n);
}

/** Full-row passes done natively (sample.wat over the memory `data` lives in): element offset and count. */
export interface RowKernels {
  rowmax(offset: number, n: number): number;
  argmax(offset: number, n: number): number;
}

/**
 * Sample one token per row of `data` (row r starts at offset + r · rowStride, `vocab` logits each).
 * The rows are modified (processors and masks are applied in place); their owner reads them no more.
 */
export function sampleRows(
  data: Float32Array,
  offset: number,
  rowStride: number,
  vocab: number,
  rows: readonly SampleRow[],
  kernels?: RowKernels,
): SampleOutput {
  const tokens = new Int32Array(rows.length);
  const logprobs: (RowLogprobs | null)[] = new Array<RowLogprobs | null>(rows.length).fill(null);
  for (let r = 0; r < rows.length; r++) {
    const { row, mask } = rows[r]!;
    const x = data.subarray(offset + r * rowStride, offset + r * rowStride + vocab);
    const p = row.params;
    let raw: Float32Array = x;
    let lse = 0;
    let top: TokenLogprob[] | undefined;
    if (p.logprobs !== null) {
      lse = logSumExp(x);
      if (p.logprobs > 0) top = topKIndices(x, Math.min(p.logprobs, vocab)).map((t) => ({ token: t, logprob: x[t]! - lse }));
      if (mask || row.hasProcessors) raw = x.slice(); // the processors below write into x
    }
    applyLogitsProcessors(x, row);
    if (mask) applyMask(x, mask);
    const at = offset + r * rowStride;
    const token =
      p.temperature < GREEDY_TEMPERATURE
        ? kernels
          ? kernels.argmax(at, vocab)
          : argmax(x)
        : sampleFromDistribution(x, row, uniform(p.key, row.numOutput), kernels ? kernels.rowmax(at, vocab) : undefined);
    tokens[r] = token;
    if (p.logprobs !== null) logprobs[r] = { logprob: raw[token]! - lse, top };
  }
  return { tokens, logprobs };
}

/** Index of the largest entry (the first, on ties); 0 for an empty or all -Infinity row. */
export function argmax(x: Float32Array): number {
  const n = x.length;
  let m0 = -Infinity;
  let m1 = -Infinity;
  let m2 = -Infinity;
  let m3 = -Infinity;
  let i = 0;
  // Four independent maxima keep the loop free of a serial dependency; the index is found in a second, short scan.
  for (; i + 4 <= n; i += 4) {
    const a = x[i]!;
    const b = x[i + 1]!;
    const c = x[i + 2]!;
    const d = x[i + 3]!;
    if (a > m0) m0 = a;
    if (b > m1) m1 = b;
    if (c > m2) m2 = c;
    if (d > m3) m3 = d;
  }
  let m = m0;
  if (m1 > m) m = m1;
  if (m2 > m) m = m2;
  if (m3 > m) m = m3;
  for (; i < n; i++) if (x[i]! > m) m = x[i]!;
  if (m === -Infinity) return 0;
  for (let j = 0; j < n; j++) if (x[j] === m) return j;
  return 0;
}

/** log Σ exp(x), stable. */
export function logSumExp(x: ArrayLike<number>): number {
  let max = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i]! > max) max = x[i]!;
  if (max === -Infinity) return -Infinity;
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += Math.exp(x[i]! - max);
  return max + Math.log(sum);
}

/** The k largest entries of x (indices), best first (lower index first on ties), in O(V log k). */
export function topKIndices(x: ArrayLike<number>, k: number): number[] {
  const heap: number[] = []; // min-heap on (value, then higher index = worse)
  const worse = (a: number, b: number) => x[a]! < x[b]! || (x[a] === x[b] && a > b);
  const siftDown = (i: number) => {
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < heap.length && worse(heap[l]!, heap[m]!)) m = l;
      if (r < heap.length && worse(heap[r]!, heap[m]!)) m = r;
      if (m === i) return;
      [heap[i], heap[m]] = [heap[m]!, heap[i]!];
      i = m;
    }
  };
  if (k <= 0) return [];
  for (let i = 0; i < x.length; i++) {
    if (heap.length < k) {
      heap.push(i);
      for (let j = heap.length - 1; j > 0;) {
        const p = (j - 1) >> 1;
        if (!worse(heap[j]!, heap[p]!)) break;
        [heap[j], heap[p]] = [heap[p]!, heap[j]!];
        j = p;
      }
    } else if (x[i]! > x[heap[0]!]!) {
      heap[0] = i;
      siftDown(0);
    }
  }
  return heap.sort((a, b) => x[b]! - x[a]! || a - b);
}

/** Bias, the min_tokens mask and the penalties, in place (vLLM's order). */
export function applyLogitsProcessors(x: Float32Array, row: SamplingRow): void {
  const p = row.params;
  const V = x.length;
  for (const [id, bias] of p.logitBias) if (id < V) x[id] = x[id]! + bias;
  if (row.numOutput < p.minTokens) for (const id of p.minTokensBanned) if (id < V) x[id] = -Infinity;
  if (row.seen) {
    const rp = p.repetitionPenalty;
    for (const t of row.seen) {
      if (t >= V) continue;
      const v = x[t]!;
      x[t] = v > 0 ? v / rp : v * rp;
    }
  }
  if (p.frequencyPenalty !== 0 || p.presencePenalty !== 0) {
    for (const [t, count] of row.counts) if (t < V) x[t] = x[t]! - p.frequencyPenalty * count - p.presencePenalty;
  }
}

/** Tokens whose bit is clear in `mask` get -Infinity. */
export function applyMask(x: Float32Array, mask: Uint32Array): void {
  const V = x.length;
  const words = Math.ceil(V / 32);
  if (mask.length < words) throw new RangeError(`allowed-token mask has ${mask.length} words; a vocabulary of ${V} needs ${words}`);
  for (let w = 0; w < words; w++) {
    const bits = mask[w]!;
    if (bits === 0xffffffff) continue;
    const end = Math.min(V, w * 32 + 32);
    for (let i = w * 32; i < end; i++) if (((bits >>> (i & 31)) & 1) === 0) x[i] = -Infinity;
  }
}

/**
 * softmax(x / T) truncated by top-k, then top-p (the smallest best-first set reaching the mass), then
 * min-p (tokens under min_p times the best one's probability), sampled with draw `u`: the kept tokens are
 * walked in index order, so no full sort is ever needed and every backend walks them the same way.
 */
function sampleFromDistribution(x: Float32Array, row: SamplingRow, u: number, rowMax?: number): number {
  const p = row.params;
  const V = x.length;
  const invT = 1 / p.temperature;
  let m = rowMax ?? -Infinity;
  if (rowMax === undefined) for (let i = 0; i < V; i++) if (x[i]! > m) m = x[i]!;
  if (m === -Infinity) return 0;
  ensureScratch(V);
  const floor = m - CUTOFF_NATS * p.temperature;
  let n = 0;
  if (p.topK > 0 && p.topK < V) {
    // Top-k: count the candidates by how far below the best they are (BUCKETS_PER_NAT per nat of x / T) and
    // collect only the buckets that hold the k best. A token in a later bucket is below every token in an
    // earlier one, so the k best are all collected; the exact cut among them is keepBest's.
    const bucketScale = invT * BUCKETS_PER_NAT;
    const counts = topKCounts;
    counts.fill(0);
    for (let i = 0; i < V; i++) {
      const v = x[i]!;
      if (v >= floor) counts[Math.min(TOPK_BUCKETS - 1, Math.floor((m - v) * bucketScale))]!++;
    }
    let last = 0;
    for (let acc = counts[0]!; acc < p.topK && last < TOPK_BUCKETS - 1;) acc += counts[++last]!;
    for (let i = 0; i < V; i++) {
      const v = x[i]!;
      if (v >= floor && Math.min(TOPK_BUCKETS - 1, Math.floor((m - v) * bucketScale)) <= last) {
        candIdx[n] = i;
        candV[n++] = v;
      }
    }
  } else {
    for (let i = 0; i < V; i++) {
      const v = x[i]!;
      if (v >= floor) {
        candIdx[n] = i;
        candV[n++] = v;
      }
    }
  }
  keep.fill(1, 0, n);
  // Top-k needs only the values: cut first, so exp (most of the cost) runs on k tokens, not every candidate.
  if (p.topK > 0 && n > p.topK) keepBest(n, p.topK);
  for (let j = 0; j < n; j++) candW[j] = keep[j] ? Math.exp((candV[j]! - m) * invT) : 0;
  if (p.topP < 1) keepTopP(n, p.topP, m, invT);
  if (p.minP > 0) for (let j = 0; j < n; j++) if (candW[j]! < p.minP) keep[j] = 0; // the best token's weight is 1
  let total = 0;
  let last = -1;
  for (let j = 0; j < n; j++) {
    if (keep[j]) {
      total += candW[j]!;
      last = j;
    }
  }
  let target = u * total;
  for (let j = 0; j < n; j++) {
    if (!keep[j]) continue;
    target -= candW[j]!;
    if (target < 0) return candIdx[j]!;
  }
  return candIdx[last]!;
}

/** Keep only the k best kept candidates (by value, then lower index). */
function keepBest(n: number, k: number): void {
  const vals = candV.slice(0, n); // every candidate is still kept when top-k runs
  const c = n;
  if (c <= k) return;
  const kth = nthLargest(vals.subarray(0, c), k);
  let above = 0;
  for (let j = 0; j < n; j++) if (keep[j] && candV[j]! > kth) above++;
  let ties = k - above; // candidates equal to the k-th value: the lowest indices are kept
  for (let j = 0; j < n; j++) {
    if (!keep[j]) continue;
    const v = candV[j]!;
    if (v > kth) continue;
    if (v === kth && ties > 0) ties--;
    else keep[j] = 0;
  }
}

/** The k-th largest of vals (1-based), by quickselect; vals is reordered. */
function nthLargest(vals: Float32Array, k: number): number {
  let lo = 0;
  let hi = vals.length - 1;
  const target = k - 1;
  while (lo < hi) {
    const pivot = vals[(lo + hi) >>> 1]!;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (vals[i]! > pivot) i++;
      while (vals[j]! < pivot) j--;
      if (i <= j) {
        const t = vals[i]!;
        vals[i] = vals[j]!;
        vals[j] = t;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else return vals[target]!;
  }
  return vals[target]!;
}

const BUCKETS_PER_NAT = 16;
const TOPK_BUCKETS = CUTOFF_NATS * BUCKETS_PER_NAT + 1;
const topKCounts = new Int32Array(TOPK_BUCKETS);

/**
 * Top-p over the kept candidates: best first, add weights until the sum reaches p of the total. The
 * candidates are bucketed by how far below the best they are; only the bucket where the mass is reached
 * is sorted.
 */
function keepTopP(n: number, topP: number, m: number, invT: number): void {
  const nb = CUTOFF_NATS * BUCKETS_PER_NAT + 1;
  const sums = new Float64Array(nb);
  const counts = new Int32Array(nb + 1);
  const bucketOf = (j: number) => Math.min(nb - 1, Math.floor((m - candV[j]!) * invT * BUCKETS_PER_NAT));
  let total = 0;
  for (let j = 0; j < n; j++) {
    if (!keep[j]) continue;
    const b = bucketOf(j);
    sums[b] = sums[b]! + candW[j]!;
    counts[b + 1]!++;
    total += candW[j]!;
  }
  const goal = topP * total;
  let acc = 0;
  let cut = 0;
  while (cut < nb - 1 && acc + sums[cut]! < goal) acc += sums[cut++]!;
  // Buckets before `cut` are kept whole, after it dropped; inside it, best first until the goal is met.
  const inCut: number[] = [];
  for (let j = 0; j < n; j++) {
    if (!keep[j]) continue;
    const b = bucketOf(j);
    if (b > cut) keep[j] = 0;
    else if (b === cut) {
      inCut.push(j);
      keep[j] = 0;
    }
  }
  inCut.sort((a, b) => candV[b]! - candV[a]! || candIdx[a]! - candIdx[b]!);
  for (const j of inCut) {
    if (acc >= goal) break;
    keep[j] = 1;
    acc += candW[j]!;
  }
}

// The sampling op on the device: logits processors, the allowed-token mask,
// greedy and temperature sampling (top-k, top-p, min-p, one Philox draw per
// token) and log-probabilities. Twin of src/backend/cpu/sample.ts, whose
// semantics these kernels follow step for step; the RNG is the one of
// src/backend/rng.ts (Philox2x32-10, key = the row's 32-bit key, counter =
// (row.numOutput, stream 0)).
//
// Rows: logits are f32, row r at logits + r · logits_stride (any stride, any
// alignment), `vocab` entries each; one CTA per row, rows looped grid-stride
// (any grid.x ≥ 1 works; grid.x = num_rows is the usual launch). Every kernel
// is a template over BLOCK, the CTA size and its __launch_bounds__: any
// multiple of 32 in [32, 1024] is correct; the sizes in parentheses below are
// the ones manifest.ts launches and CI compiles. No dynamic shared memory;
// vocab < 2^30.
//
// The host's order for one sampling call (what CudaBackend.sample will do):
//   1. row_logsumexp_f32       rows asking for logprobs: lse of the RAW logits
//   2. (copy the raw rows that want logprobs and that a processor or mask will touch)
//   3. logits_processors_f32   rows with processor entries
//   4. apply_token_mask_f32    rows with an allowed-token mask
//   5. argmax_rows_f32         greedy rows (temperature < 1e-5)
//   6. sample_rows_f32         the other rows (both kernels may run over all rows: each skips the other's)
//   7. gather_logprobs_f32     the sampled token's logprob and the top-n, from the raw logits
//
// Kernels and their arguments (pointers are device addresses of the first
// element; strides in elements):
//
// logits_processors_f32<BLOCK>(logits, logits_stride, row_start, token, bias,
//     rep, freq, presence, ban, vocab, num_rows)
//   CSR over rows: row r's entries are [row_start[r], row_start[r+1]) (i32,
//   num_rows + 1 values). Entry e touches token[e] (i32; ids outside [0, vocab)
//   are skipped, as the CPU skips ids ≥ V) with, all f64 so that the results are
//   the CPU's bits (the CPU computes in double and stores f32 after each step):
//     bias[e]      logit bias (0: none)
//     rep[e]       repetition penalty for a prompt ∪ output token (1: none)
//     freq[e]      frequency_penalty · count (0 for tokens not in the output)
//     presence[e]  presence_penalty for output tokens (0 otherwise)
//     ban[e]       i32, nonzero: min_tokens ban (→ -inf)
//   v = f32(x + bias); v = f32(v > 0 ? v / rep : v · rep); v = f32((v − freq) − presence);
//   if ban: v = −inf. The CPU's order is bias → ban → repetition → frequency /
//   presence; applying the ban last gives the same value because −inf stays −inf
//   through the later steps (repetition_penalty > 0 and finite penalties, which
//   resolveSamplingParams guarantees). Steps whose parameter is neutral (bias 0,
//   rep 1, freq = presence = 0) are skipped, as the CPU skips a token that is in
//   none of its lists; the only possible difference is the sign of a zero logit
//   (an explicit bias of 0 turns −0 into +0 on the CPU), which no later step can
//   observe (every comparison treats ±0 as equal). A token must appear at most
//   once per row (the host merges a token's bias, ban, penalties into one entry).
//   Launch: grid (num_rows), block BLOCK (128).
//
// apply_token_mask_f32<BLOCK>(logits, logits_stride, allowed, mask_stride, mask_row, vocab, num_rows)
//   allowed: u32 words, row m's mask at allowed + m · mask_stride (mask_stride ≥
//   ceil(vocab / 32): the host checks this, as applyMask throws); bit t % 32 of
//   word t / 32 set = token t allowed; a clear bit writes −inf. mask_row (i32,
//   nullable): the mask row of logits row r, < 0 = no mask; 0 (absent): row r
//   uses mask row r. Launch: grid (num_rows), block BLOCK (256).
//
// argmax_rows_f32<BLOCK>(tokens, logits, logits_stride, temperature, vocab, num_rows)
//   tokens[r] (i32) = the first index of the row's maximum (NaN ignored; ties →
//   lowest index; an all −inf / NaN row → 0), exactly argmax() of sample.ts.
//   temperature (f64, nullable): when given, only rows with temperature < 1e-5
//   (greedy) are done and the others left untouched. Launch: grid (num_rows), block BLOCK (1024).
//
// sample_rows_f32<BLOCK>(tokens, logits, logits_stride, temperature, top_k, top_p,
//     min_p, key, counter, vocab, num_rows)
//   Per row (f64 temperature/top_p/min_p, i32 top_k, u32 key/counter): rows with
//   temperature < 1e-5 are skipped (argmax_rows_f32 does them). Otherwise, as
//   sampleFromDistribution: m = row max (−inf → token 0); candidates x ≥ m − 40·T;
//   weights w = exp((x − m) / T) in double; top-k (k > 0 and more than k
//   candidates) keeps the k best by (value desc, index asc); top-p (p < 1) keeps
//   the shortest best-first prefix of those whose weight reaches p · their total
//   (an item is kept iff the weight before it is < p · total); min-p keeps
//   w ≥ min_p; u = uniform(key, counter) (Philox2x32-10, stream 0, 53 bits); the
//   kept tokens are walked in INDEX order and the first whose running sum exceeds
//   u · total is the token (the last kept one if none does). A row whose maximum
//   is +inf gives what the CPU gives there (its weights are NaN): the last +inf
//   token, or the k-th one in index order when top-k cuts. Launch: grid (num_rows), block BLOCK (512:
//   ~120 registers a thread without spills; 1024 would cap them at 64 and spill).
//
// row_logsumexp_f32<BLOCK>(lse, logits, logits_stride, num_top, vocab, num_rows)
//   lse[r] (f64) = log Σ exp(x) of the raw row (max + log Σ exp(x − max) in
//   double; all −inf → −inf; NaN anywhere → NaN), logSumExp() of sample.ts.
//   num_top (i32, nullable): rows with num_top[r] < 0 want no logprobs and are
//   skipped. Launch BEFORE the processors. grid (num_rows), block BLOCK (1024).
//
// gather_logprobs_f32<BLOCK>(logprob, top_tokens, top_logprobs, top_stride, raw,
//     raw_stride, lse, tokens, num_top, vocab, num_rows)
//   For rows with num_top[r] ≥ 0: logprob[r] (f64) = raw[r, tokens[r]] − lse[r]
//   (NaN for a token outside [0, vocab)); for n = min(num_top[r], 20, vocab) > 0,
//   top_tokens[r · top_stride + j] (i32) and top_logprobs[...] (f64), j < n, are
//   the n best raw logits by (value desc, index asc), as topKIndices(). NaN
//   logits are never picked (the CPU's heap may keep one; such a row's lse is
//   NaN anyway); if fewer than n non-NaN logits exist the rest is token −1,
//   logprob NaN. raw is the logits as they were before the processors and the
//   mask: the logits buffer itself when nothing touched the row, else a copy.
//   Launch: grid (num_rows), block BLOCK (1024).
//
// How the truncations run without sorting and without holding a row (up to
// 262,144 logits for Gemma) in shared memory: top-k and top-p are both cuts of
// the best-first order, found by a radix select (4 passes of 8-bit digits over
// an order-preserving key of the f32 value, ±0 merged) — counted for top-k,
// weighted for top-p — plus an index-ordered select among the tokens tied at
// the cut. Weights are summed as 128-bit fixed point (w · 2^96, truncated:
// under 2^-96 per token, far below double's rounding), so every sum is exact,
// the same in every pass and independent of the order of the shared-memory
// atomics: results are deterministic and do not depend on the schedule.
//
// Parity with the CPU (what is bit-exact and what is not):
//   exact: the processors and the mask (same double operations, same f32
//     roundings), argmax, the candidate set (the floor is computed with
//     non-contracted __dmul_rn/__dsub_rn, no FMA), the top-k set, the Philox
//     words and the uniform u (tested on the host by test/cuda-sampling-philox.test.ts).
//   within rounding: exp() in double may differ from V8's Math.exp by 1 ulp, and
//     the CPU sums weights in double in index order where these kernels sum
//     exactly. The top-p cut and the drawn token can therefore differ only when
//     p · total or u · total falls within ~1e-15 (relative) of a boundary between
//     two tokens' cumulative weights; lse and logprobs agree to ~1e-15 relative.
//   test/cuda-sampling-philox.test.ts runs these kernels on the host under an
//   emulation of the CUDA thread model against sampleRows (and checks Philox);
//   they have not yet run on a GPU.
//
// Cost (per row, one CTA): argmax / lse: one read of the row. sample: one read
// for the max, one pass per top-k radix digit (no exp), one pass with exp per
// top-p digit (only when p < 1) and one with exp for the walk, plus short
// index-ordered scans of one warp's chunk. Rows of a batch run on separate SMs.
#include "common.cuh"

namespace tk {

constexpr double kGreedyTemperature = 1e-5;  // GREEDY_TEMPERATURE of sample.ts
constexpr double kCutoffNats = 40.0;         // CUTOFF_NATS of sample.ts
constexpr int kMaxTopLogprobs = 20;
constexpr int kIntMax = 0x7fffffff;

// ---------------------------------------------------------------- Philox2x32-10 (host and device)

constexpr u32 kPhiloxM0 = 0xd256d193u;
constexpr u32 kPhiloxW0 = 0x9e3779b9u;

__host__ __device__ __forceinline__ u32 philox_mulhi(u32 a, u32 b) {
#ifdef __CUDA_ARCH__
  return __umulhi(a, b);
#else
  return (u32)(((u64)a * (u64)b) >> 32);
#endif
}

/** Philox2x32-10 of counter (c0, c1) under key: philox2x32() of src/backend/rng.ts. */
__host__ __device__ __forceinline__ void philox2x32_10(u32 key, u32 c0, u32 c1, u32& out0, u32& out1) {
  u32 x0 = c0;
  u32 x1 = c1;
  u32 k = key;
#pragma unroll
  for (int r = 0; r < 10; r++) {
    const u32 hi = philox_mulhi(kPhiloxM0, x0);
    const u32 lo = kPhiloxM0 * x0;
    x0 = hi ^ k ^ x1;
    x1 = lo;
    k += kPhiloxW0;
  }
  out0 = x0;
  out1 = x1;
}

/** uniform(key, counter) of rng.ts (stream 0): a double in [0, 1) with 53 random bits. */
__host__ __device__ __forceinline__ double philox_uniform(u32 key, u32 counter) {
  u32 w0, w1;
  philox2x32_10(key, counter, 0u, w0, w1);
  return ((double)(w0 >> 5) * 67108864.0 + (double)(w1 >> 6)) * 0x1p-53;  // exact: < 2^53, and a power-of-two scale
}

// ---------------------------------------------------------------- 128-bit fixed point

struct U128 {
  u64 lo, hi;
};

__device__ __forceinline__ U128 u128(u64 lo) { return U128{lo, 0ull}; }

__device__ __forceinline__ U128 add128(U128 a, U128 b) {
  U128 r;
  r.lo = a.lo + b.lo;
  r.hi = a.hi + b.hi + (r.lo < a.lo ? 1ull : 0ull);
  return r;
}

__device__ __forceinline__ U128 sub128(U128 a, U128 b) {
  U128 r;
  r.lo = a.lo - b.lo;
  r.hi = a.hi - b.hi - (a.lo < b.lo ? 1ull : 0ull);
  return r;
}

__device__ __forceinline__ bool lt128(U128 a, U128 b) { return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo); }

/** a · k, for the small multipliers of the top-p tie count (no overflow: the result is at most a row's total). */
__device__ __forceinline__ U128 mul128(U128 a, u32 k) {
  const u64 l0 = (a.lo & 0xffffffffull) * k;
  const u64 l1 = (a.lo >> 32) * k;
  U128 r;
  r.lo = l0 + (l1 << 32);
  r.hi = a.hi * k + (l1 >> 32) + (r.lo < l0 ? 1ull : 0ull);
  return r;
}

/** The nearest double (two roundings; within 2 ulp). */
__device__ __forceinline__ double to_double(U128 a) { return (double)a.hi * 0x1p64 + (double)a.lo; }

/** floor(d) for 0 ≤ d < 2^128 (negative, NaN and < 1 give 0). */
__device__ __forceinline__ U128 from_double(double d) {
  if (!(d >= 1.0)) return u128(0);
  const u64 bits = (u64)__double_as_longlong(d);
  const int sh = (int)((bits >> 52) & 0x7ff) - 1075;  // d = mant · 2^sh
  const u64 mant = (bits & 0xfffffffffffffull) | (1ull << 52);
  U128 r;
  if (sh >= 64) {
    r.lo = 0;
    r.hi = sh >= 128 ? ~0ull : mant << (sh - 64);
  } else if (sh > 0) {
    r.lo = mant << sh;
    r.hi = mant >> (64 - sh);
  } else {
    r.lo = mant >> -sh;  // sh > -53 here, as d ≥ 1
    r.hi = 0;
  }
  return r;
}

/** A weight in (0, 1] as fixed point with 96 fraction bits (a row's total stays below 2^127). */
__device__ __forceinline__ U128 fixed_weight(double w) { return from_double(w * 0x1p96); }

__device__ __forceinline__ U128 shfl_xor128(U128 a, int o) {
  a.lo = __shfl_xor_sync(kFullMask, a.lo, o);
  a.hi = __shfl_xor_sync(kFullMask, a.hi, o);
  return a;
}

__device__ __forceinline__ U128 warp_sum128(U128 v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = add128(v, shfl_xor128(v, o));
  return v;
}

__device__ __forceinline__ U128 warp_inclusive_scan128(U128 v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    U128 y;
    y.lo = __shfl_up_sync(kFullMask, v.lo, o);
    y.hi = __shfl_up_sync(kFullMask, v.hi, o);
    if (lane >= o) v = add128(v, y);
  }
  return v;
}

/** Exact in any order: the low word's wrap-arounds are counted into the high word. */
__device__ __forceinline__ void atomic_add128(U128* p, U128 v) {
  const u64 old = atomicAdd(&p->lo, v.lo);
  const u64 hi = v.hi + (old + v.lo < old ? 1ull : 0ull);
  if (hi != 0) atomicAdd(&p->hi, hi);
}

// ---------------------------------------------------------------- keys and small reductions

__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }

/** An order-preserving u32 key of a (non-NaN) float, with −0 and +0 the same key. */
__device__ __forceinline__ u32 order_key(float x) {
  u32 b = __float_as_uint(x);
  if ((b << 1) == 0) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/** The float of an order key (+0 for zero). */
__device__ __forceinline__ float key_value(u32 k) { return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k); }

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ int warp_max_i32(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

__device__ __forceinline__ int warp_sum_i32(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

/** (v, i) replaced by (ov, oi) when that is better: larger value, or equal value and lower index. */
__device__ __forceinline__ void arg_better(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

/** Shared memory of one row's work. */
template <int BLOCK>
struct RowSmem {
  U128 hist[256];    // radix histogram (counts in .lo, or weights)
  U128 stage[BLOCK]; // a warp's weights, summed by the leader of each group of lanes with the same digit
  U128 wsum[33];     // per-warp sums / scan
  int wint[32];      // per-warp counts or indices
  float fred[32];
  double dred[32];
  float top_val[32];
  int top_idx[32];
  // broadcasts
  U128 before, at, goal, target, base;
  u32 key;
  int found, sel_warp, sel_rank, result, count;
};

template <int BLOCK>
__device__ __forceinline__ float block_max_f32(float v, RowSmem<BLOCK>& sm) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sm.fred[warp] = v;
  __syncthreads();
  v = lane < BLOCK / 32 ? sm.fred[lane] : neg_inf();
  return warp_max(v);
}

template <int BLOCK>
__device__ __forceinline__ double block_sum_f64(double v, RowSmem<BLOCK>& sm) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum_f64(v);
  __syncthreads();
  if (lane == 0) sm.dred[warp] = v;
  __syncthreads();
  v = lane < BLOCK / 32 ? sm.dred[lane] : 0.0;
  return warp_sum_f64(v);
}

template <int BLOCK>
__device__ __forceinline__ int block_sum_i32(int v, RowSmem<BLOCK>& sm) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum_i32(v);
  __syncthreads();
  if (lane == 0) sm.wint[warp] = v;
  __syncthreads();
  v = lane < BLOCK / 32 ? sm.wint[lane] : 0;
  return warp_sum_i32(v);
}

/** Exclusive prefix of v over the CTA in thread order (exact). */
template <int BLOCK>
__device__ __forceinline__ U128 block_exclusive_scan128(U128 v, RowSmem<BLOCK>& sm) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const U128 incl = warp_inclusive_scan128(v);
  __syncthreads();
  if (lane == 31) sm.wsum[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const U128 t = lane < BLOCK / 32 ? sm.wsum[lane] : u128(0);
    const U128 ti = warp_inclusive_scan128(t);
    if (lane < BLOCK / 32) sm.wsum[lane] = sub128(ti, t);
  }
  __syncthreads();
  return add128(sm.wsum[warp], sub128(incl, v));
}

template <int BLOCK>
__device__ __forceinline__ float row_max(const float* x, int vocab, RowSmem<BLOCK>& sm) {
  float m = neg_inf();
  for (int i = threadIdx.x; i < vocab; i += BLOCK) m = fmaxf(m, x[i]);  // fmaxf drops NaN, as `x > m` does
  return block_max_f32<BLOCK>(m, sm);
}

/** Elements per warp chunk of the index-ordered passes: warp w owns [w·C, (w+1)·C). */
template <int BLOCK>
__device__ __forceinline__ int warp_chunk(int vocab) {
  return ((vocab + BLOCK / 32 - 1) / (BLOCK / 32) + 31) / 32 * 32;
}

// ---------------------------------------------------------------- index-ordered select

/**
 * The index of the rank-th (0-based) element, in index order, for which pred(i)
 * holds; rank = rank_of(count of such elements) is evaluated once (−1 when it
 * is out of range). One pass of counts per warp chunk, then one warp rescans
 * its chunk with ballots. All threads must call it.
 */
template <int BLOCK, typename Pred, typename RankOf>
__device__ int ordered_select(int vocab, Pred pred, RankOf rank_of, RowSmem<BLOCK>& sm) {
  constexpr int kWarps = BLOCK / 32;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int chunk = warp_chunk<BLOCK>(vocab);
  const int start = warp * chunk;
  const int end = min(vocab, start + chunk);
  int count = 0;
  for (int s = start; s < end; s += 32) {
    const int i = s + lane;
    count += __popc(__ballot_sync(kFullMask, i < end && pred(i)));
  }
  __syncthreads();
  if (lane == 0) sm.wint[warp] = count;
  __syncthreads();
  if (threadIdx.x == 0) {
    int total = 0;
    for (int w = 0; w < kWarps; w++) total += sm.wint[w];
    const int rank = rank_of(total);
    sm.sel_warp = -1;
    sm.result = -1;
    int before = 0;
    for (int w = 0; w < kWarps && rank >= 0; w++) {
      if (rank < before + sm.wint[w]) {
        sm.sel_warp = w;
        sm.sel_rank = rank - before;
        break;
      }
      before += sm.wint[w];
    }
  }
  __syncthreads();
  if (warp == sm.sel_warp) {
    int rr = sm.sel_rank;
    for (int s = start; s < end; s += 32) {
      const int i = s + lane;
      u32 bal = __ballot_sync(kFullMask, i < end && pred(i));
      const int c = __popc(bal);
      if (rr < c) {  // warp-uniform
        for (int k = 0; k < rr; k++) bal &= bal - 1;
        if (lane == 0) sm.result = s + __ffs(bal) - 1;
        break;
      }
      rr -= c;
    }
  }
  __syncthreads();
  return sm.result;
}

// ---------------------------------------------------------------- radix select over the best-first order

struct Select {
  /** false: the total weight is ≤ the goal, so the cut keeps everything. */
  bool found;
  /** The order key of the cut value: Σ(key > it) < goal ≤ Σ(key ≥ it). */
  u32 key;
  /** Σ weight of the items with a larger key, of those with this key, and the goal. */
  U128 before, at, goal;
};

/**
 * Radix select (8-bit digits, most significant first) over the items for which
 * item(i, key, v) is true: the largest key whose items, with all larger ones,
 * reach the goal. kCount: every item weighs 1 (goal_of returns a count);
 * otherwise weight(v) (U128). goal = goal_of(total of the first pass), and
 * nothing is selected when total ≤ goal. All threads must call it.
 */
template <int BLOCK, bool kCount, typename Item, typename Weight, typename GoalOf>
__device__ Select radix_select(int vocab, Item item, Weight weight, GoalOf goal_of, RowSmem<BLOCK>& sm) {
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  u32 prefix = 0;
  u32 pmask = 0;
  for (int pass = 0; pass < 4; pass++) {
    const int shift = 24 - 8 * pass;
    __syncthreads();  // the previous pass's readers are done with hist and the broadcasts
    for (int b = tid; b < 256; b += BLOCK) sm.hist[b] = u128(0);
    __syncthreads();
    for (int base = 0; base < vocab; base += BLOCK) {  // uniform trip count: the warp collectives below see every lane
      const int i = base + tid;
      u32 key = 0;
      float v = 0.0f;
      const bool valid = i < vocab && item(i, key, v) && (key & pmask) == prefix;
      const u32 digit = (key >> shift) & 255u;
      const u32 peers = __match_any_sync(kFullMask, valid ? digit : 0x100u);
      const bool leader = valid && lane == __ffs(peers) - 1;
      if constexpr (kCount) {
        if (leader) atomicAdd(&sm.hist[digit].lo, (u64)__popc(peers));
      } else {
        sm.stage[tid] = valid ? weight(v) : u128(0);
        __syncwarp();
        if (leader) {
          U128 s = u128(0);
          for (u32 p = peers; p != 0; p &= p - 1) s = add128(s, sm.stage[warp * 32 + __ffs(p) - 1]);
          atomic_add128(&sm.hist[digit], s);
        }
        __syncwarp();
      }
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l owns digits 255 − 8l down to 248 − 8l: lane order is descending digit order.
      U128 s = u128(0);
#pragma unroll
      for (int j = 0; j < 8; j++) s = add128(s, sm.hist[255 - 8 * lane - j]);
      bool stop = false;
      if (pass == 0) {
        const U128 total = warp_sum128(s);
        const U128 goal = goal_of(total);
        if (lane == 0) {
          sm.goal = goal;
          sm.before = u128(0);
          sm.found = 1;
        }
        stop = !lt128(goal, total);
      }
      __syncwarp();
      const U128 goal = sm.goal;
      const U128 before = sm.before;
      const U128 incl = add128(before, warp_inclusive_scan128(s));
      const u32 hit = __ballot_sync(kFullMask, !lt128(incl, goal));
      __syncwarp();
      if (stop || hit == 0) {
        if (lane == 0) sm.found = 0;
      } else if (lane == __ffs(hit) - 1) {
        U128 acc = sub128(incl, s);
        for (int j = 0; j < 8; j++) {
          const int d = 255 - 8 * lane - j;
          const U128 next = add128(acc, sm.hist[d]);
          if (!lt128(next, goal)) {
            sm.key = (u32)d;
            sm.before = acc;
            sm.at = sm.hist[d];
            break;
          }
          acc = next;
        }
      }
    }
    __syncthreads();
    if (!sm.found) break;  // uniform
    prefix |= sm.key << shift;
    pmask |= 0xffu << shift;
  }
  Select r;
  r.found = sm.found != 0;
  r.key = prefix;
  r.before = sm.before;
  r.at = sm.at;
  r.goal = sm.goal;
  return r;
}

// ---------------------------------------------------------------- the weighted index-order walk

/**
 * The first index i (index order) among the kept items whose running weight
 * exceeds u · total; the last kept item when none does (u · total rounded up to
 * the total); 0 when nothing is kept. kept(i, w) says whether item i is kept
 * and gives its weight. Level 1: exact sums per warp chunk; level 2: the whole
 * CTA splits the chosen chunk into one short piece per thread.
 */
template <int BLOCK, typename Kept>
__device__ int weighted_walk(int vocab, double u, Kept kept, RowSmem<BLOCK>& sm) {
  constexpr int kWarps = BLOCK / 32;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int chunk = warp_chunk<BLOCK>(vocab);
  {
    const int start = warp * chunk;
    const int end = min(vocab, start + chunk);
    U128 acc = u128(0);
    int last = -1;
    for (int i = start + lane; i < end; i += 32) {
      U128 w;
      if (kept(i, w)) {
        acc = add128(acc, w);
        last = i;
      }
    }
    acc = warp_sum128(acc);
    last = warp_max_i32(last);
    __syncthreads();
    if (lane == 0) {
      sm.wsum[warp] = acc;
      sm.wint[warp] = last;
    }
    __syncthreads();
  }
  if (tid == 0) {
    U128 total = u128(0);
    int last = -1;
    for (int w = 0; w < kWarps; w++) {
      total = add128(total, sm.wsum[w]);
      last = max(last, sm.wint[w]);
    }
    const U128 target = from_double(u * to_double(total));
    sm.target = target;
    sm.result = last < 0 ? 0 : last;
    sm.sel_warp = -1;
    U128 before = u128(0);
    for (int w = 0; w < kWarps; w++) {
      const U128 next = add128(before, sm.wsum[w]);
      if (lt128(target, next)) {
        sm.sel_warp = w;
        sm.base = before;
        break;
      }
      before = next;
    }
  }
  __syncthreads();
  const int sel = sm.sel_warp;
  if (sel >= 0) {  // uniform
    const U128 target = sm.target;
    const U128 chunk_base = sm.base;
    const int cs = sel * chunk;
    const int ce = min(vocab, cs + chunk);
    const int piece = (ce - cs + BLOCK - 1) / BLOCK;
    const int ps = cs + tid * piece;
    const int pe = min(ce, ps + piece);
    U128 s = u128(0);
    for (int i = ps; i < pe; i++) {
      U128 w;
      if (kept(i, w)) s = add128(s, w);
    }
    const U128 base = add128(chunk_base, block_exclusive_scan128<BLOCK>(s, sm));
    if (!lt128(target, base) && lt128(target, add128(base, s))) {  // exactly one thread's range holds the target
      U128 run = base;
      for (int i = ps; i < pe; i++) {
        U128 w;
        if (!kept(i, w)) continue;
        run = add128(run, w);
        if (lt128(target, run)) {
          sm.result = i;
          break;
        }
      }
    }
    __syncthreads();
  }
  return sm.result;
}

// ---------------------------------------------------------------- one sampled row

template <int BLOCK>
__device__ int sample_row(const float* x, int vocab, double temperature, int top_k, double top_p, double min_p, double u,
                          RowSmem<BLOCK>& sm) {
  const float m = row_max<BLOCK>(x, vocab, sm);
  if (m == neg_inf()) return 0;
  if (m == pos_inf()) {
    // The CPU's weights are NaN here: top-p and min-p keep everything and its walk ends on the last kept token.
    return max(0, ordered_select<BLOCK>(
                      vocab, [&](int i) { return x[i] == pos_inf(); },
                      [&](int n) { return top_k > 0 && n > top_k ? top_k - 1 : n - 1; }, sm));
  }
  const double md = (double)m;
  const double inv_t = 1.0 / temperature;
  const double floor_value = __dsub_rn(md, __dmul_rn(kCutoffNats, temperature));  // no FMA: the CPU rounds twice
  auto candidate = [&](int i, float& v) {
    v = x[i];
    return (double)v >= floor_value;
  };
  auto weight_of = [&](float v) { return exp(((double)v - md) * inv_t); };
  auto weight = [&](float v) { return fixed_weight(weight_of(v)); };

  // Top-k: the k-th best value and, among the tokens tied at it, the last index kept.
  u32 k_key = 0;  // below every non-NaN key: no cut
  int k_idx = kIntMax;
  if (top_k > 0) {
    const Select s = radix_select<BLOCK, true>(
        vocab,
        [&](int i, u32& key, float& v) {
          if (!candidate(i, v)) return false;
          key = order_key(v);
          return true;
        },
        weight, [&](U128) { return u128((u64)top_k); }, sm);
    if (s.found) {
      k_key = s.key;
      const int keep = (int)(s.goal.lo - s.before.lo);  // ties to keep, lowest indices first
      if ((u64)keep < s.at.lo) {
        k_idx = ordered_select<BLOCK>(
            vocab,
            [&](int i) {
              float v;
              return candidate(i, v) && order_key(v) == k_key;
            },
            [&](int) { return keep - 1; }, sm);
      }
    }
  }
  auto in_top_k = [&](int i, float& v) {
    if (!candidate(i, v)) return false;
    const u32 k = order_key(v);
    return k > k_key || (k == k_key && i <= k_idx);
  };

  // Top-p over what top-k kept: a cut of the same best-first order, so it replaces the top-k cut.
  u32 c_key = k_key;
  int c_idx = k_idx;
  if (top_p < 1.0) {
    const Select s = radix_select<BLOCK, false>(
        vocab,
        [&](int i, u32& key, float& v) {
          if (!in_top_k(i, v)) return false;
          key = order_key(v);
          return true;
        },
        weight, [&](U128 total) { return from_double(top_p * to_double(total)); }, sm);
    if (s.found) {
      // Ties at the cut weigh w1 each; tie j (index order) is kept iff before + j · w1 < goal.
      const U128 w1 = weight(key_value(s.key));
      const U128 room = sub128(s.goal, s.before);  // > 0
      const u32 ties = (u32)rint(to_double(s.at) / to_double(w1));
      u32 keep = (u32)fmax(1.0, fmin((double)ties, ceil(to_double(room) / to_double(w1))));
      while (keep > 1 && !lt128(mul128(w1, keep - 1), room)) keep--;
      while (keep < ties && lt128(mul128(w1, keep), room)) keep++;
      const u32 p_key = s.key;
      int p_idx = p_key == k_key ? k_idx : kIntMax;
      if (keep < ties) {
        p_idx = ordered_select<BLOCK>(
            vocab,
            [&](int i) {
              float v;
              return in_top_k(i, v) && order_key(v) == p_key;
            },
            [&](int) { return (int)keep - 1; }, sm);
      }
      c_key = p_key;
      c_idx = p_idx;
    }
  }

  // Min-p, then the draw over the kept tokens in index order.
  return weighted_walk<BLOCK>(
      vocab, u,
      [&](int i, U128& w) {
        float v;
        if (!candidate(i, v)) return false;
        const u32 k = order_key(v);
        if (!(k > c_key || (k == c_key && i <= c_idx))) return false;
        const double wd = weight_of(v);
        if (min_p > 0.0 && wd < min_p) return false;  // the best token weighs 1
        w = fixed_weight(wd);
        return true;
      },
      sm);
}

// ---------------------------------------------------------------- kernels

template <int BLOCK>
__global__ void __launch_bounds__(BLOCK, 1)
    logits_processors_f32(float* logits, int logits_stride, const int* __restrict__ row_start, const int* __restrict__ token,
                          const double* __restrict__ bias, const double* __restrict__ rep, const double* __restrict__ freq,
                          const double* __restrict__ presence, const int* __restrict__ ban, int vocab, int num_rows) {
  for (int r = blockIdx.x; r < num_rows; r += gridDim.x) {
    float* x = logits + (i64)r * logits_stride;
    const int end = row_start[r + 1];
    for (int e = row_start[r] + threadIdx.x; e < end; e += BLOCK) {
      const int t = token[e];
      if (t < 0 || t >= vocab) continue;
      if (ban[e] != 0) {
        x[t] = neg_inf();
        continue;
      }
      float v = x[t];
      const double b = bias[e];
      if (b != 0.0) v = (float)((double)v + b);
      const double rp = rep[e];
      if (rp != 1.0) v = (float)(v > 0.0f ? (double)v / rp : (double)v * rp);
      const double fc = freq[e];
      const double pr = presence[e];
      if (fc != 0.0 || pr != 0.0) v = (float)(((double)v - fc) - pr);
      x[t] = v;
    }
  }
}

template <int BLOCK>
__global__ void __launch_bounds__(BLOCK, 1) apply_token_mask_f32(float* logits, int logits_stride, const u32* __restrict__ allowed,
                                                                   int mask_stride, const int* __restrict__ mask_row, int vocab,
                                                                   int num_rows) {
  for (int r = blockIdx.x; r < num_rows; r += gridDim.x) {
    const int mr = mask_row != nullptr ? mask_row[r] : r;
    if (mr < 0) continue;
    float* x = logits + (i64)r * logits_stride;
    const u32* words = allowed + (i64)mr * mask_stride;
    for (int i = threadIdx.x; i < vocab; i += BLOCK) {
      if (((words[i >> 5] >> (i & 31)) & 1u) == 0) x[i] = neg_inf();  // a warp reads one word: a broadcast
    }
  }
}

template <int BLOCK>
__global__ void __launch_bounds__(BLOCK, 1) argmax_rows_f32(int* __restrict__ tokens, const float* __restrict__ logits, int logits_stride,
                                                              const double* __restrict__ temperature, int vocab, int num_rows) {
  __shared__ float s_val[32];
  __shared__ int s_idx[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  for (int r = blockIdx.x; r < num_rows; r += gridDim.x) {
    if (temperature != nullptr && !(temperature[r] < kGreedyTemperature)) continue;
    const float* x = logits + (i64)r * logits_stride;
    float bv = neg_inf();
    int bi = kIntMax;
    for (int i = threadIdx.x; i < vocab; i += BLOCK) {
      const float v = x[i];
      if (v > bv) {  // indices rise: the first of equal values stays; NaN never wins
        bv = v;
        bi = i;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) arg_better(bv, bi, __shfl_xor_sync(kFullMask, bv, o), __shfl_xor_sync(kFullMask, bi, o));
    __syncthreads();
    if (lane == 0) {
      s_val[warp] = bv;
      s_idx[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
      bv = lane < BLOCK / 32 ? s_val[lane] : neg_inf();
      bi = lane < BLOCK / 32 ? s_idx[lane] : kIntMax;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) arg_better(bv, bi, __shfl_xor_sync(kFullMask, bv, o), __shfl_xor_sync(kFullMask, bi, o));
      if (lane == 0) tokens[r] = bv == neg_inf() ? 0 : bi;
    }
  }
}

template <int BLOCK>
__global__ void __launch_bounds__(BLOCK, 1)
    sample_rows_f32(int* __restrict__ tokens, const float* __restrict__ logits, int logits_stride, const double* __restrict__ temperature,
                    const int* __restrict__ top_k, const double* __restrict__ top_p, const double* __restrict__ min_p,
                    const u32* __restrict__ key, const u32* __restrict__ counter, int vocab, int num_rows) {
  static_assert(BLOCK % 32 == 0 && BLOCK >= 32 && BLOCK <= 1024, "BLOCK must be a multiple of 32 in [32, 1024]");
  __shared__ RowSmem<BLOCK> sm;
  for (int r = blockIdx.x; r < num_rows; r += gridDim.x) {
    const double t = temperature[r];
    if (t < kGreedyTemperature) continue;  // argmax_rows_f32's row
    const double u = philox_uniform(key[r], counter[r]);
    const int token = sample_row<BLOCK>(logits + (i64)r * logits_stride, vocab, t, top_k[r], top_p[r], min_p[r], u, sm);
    if (threadIdx.x == 0) tokens[r] = token;
    __syncthreads();
  }
}

template <int BLOCK>
__global__ void __launch_bounds__(BLOCK, 1) row_logsumexp_f32(double* __restrict__ lse, const float* __restrict__ logits, int logits_stride,
                                                                const int* __restrict__ num_top, int vocab, int num_rows) {
  __shared__ RowSmem<BLOCK> sm;
  for (int r = blockIdx.x; r < num_rows; r += gridDim.x) {
    if (num_top != nullptr && num_top[r] < 0) continue;
    const float* x = logits + (i64)r * logits_stride;
    const float m = row_max<BLOCK>(x, vocab, sm);
    if (m == neg_inf()) {
      if (threadIdx.x == 0) lse[r] = (double)neg_inf();
      continue;
    }
    const double md = (double)m;
    double s = 0.0;
    for (int i = threadIdx.x; i < vocab; i += BLOCK) s += exp((double)x[i] - md);  // NaN (or +inf − +inf) propagates, as on the CPU
    s = block_sum_f64<BLOCK>(s, sm);
    if (threadIdx.x == 0) lse[r] = md + log(s);
  }
}

template <int BLOCK>
__global__ void __launch_bounds__(BLOCK, 1)
    gather_logprobs_f32(double* __restrict__ logprob, int* __restrict__ top_tokens, double* __restrict__ top_logprobs, int top_stride,
                        const float* __restrict__ raw, int raw_stride, const double* __restrict__ lse, const int* __restrict__ tokens,
                        const int* __restrict__ num_top, int vocab, int num_rows) {
  static_assert(BLOCK % 32 == 0 && BLOCK >= 32 && BLOCK <= 1024, "BLOCK must be a multiple of 32 in [32, 1024]");
  __shared__ RowSmem<BLOCK> sm;
  const double nan = __longlong_as_double(0x7ff8000000000000ll);
  for (int r = blockIdx.x; r < num_rows; r += gridDim.x) {
    const int want = num_top[r];
    if (want < 0) continue;
    const float* x = raw + (i64)r * raw_stride;
    const double l = lse[r];
    if (threadIdx.x == 0) {
      const int t = tokens[r];
      logprob[r] = t >= 0 && t < vocab ? (double)x[t] - l : nan;
    }
    const int n = min(min(want, kMaxTopLogprobs), vocab);
    if (n <= 0) continue;
    auto item = [&](int i, u32& key, float& v) {
      v = x[i];
      if (v != v) return false;
      key = order_key(v);
      return true;
    };
    const Select s = radix_select<BLOCK, true>(
        vocab, item, [](float) { return u128(1); }, [&](U128) { return u128((u64)n); }, sm);
    u32 c_key = 0;
    int c_idx = kIntMax;
    if (s.found) {
      c_key = s.key;
      const int keep = (int)(s.goal.lo - s.before.lo);
      if ((u64)keep < s.at.lo) {
        c_idx = ordered_select<BLOCK>(
            vocab,
            [&](int i) {
              u32 k;
              float v;
              return item(i, k, v) && k == c_key;
            },
            [&](int) { return keep - 1; }, sm);
      }
    }
    // Exactly n tokens pass the cut (all non-NaN ones when there are at most n): collect, then order them.
    __syncthreads();
    if (threadIdx.x == 0) sm.count = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < vocab; i += BLOCK) {
      u32 k;
      float v;
      if (item(i, k, v) && (k > c_key || (k == c_key && i <= c_idx))) {
        const int slot = atomicAdd(&sm.count, 1);
        if (slot < 32) {
          sm.top_val[slot] = v;
          sm.top_idx[slot] = i;
        }
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      const int c = min(sm.count, n);
      for (int a = 1; a < c; a++) {  // insertion sort by (value desc, index asc): the slots' order does not matter
        const float v = sm.top_val[a];
        const int i = sm.top_idx[a];
        int b = a - 1;
        while (b >= 0 && (sm.top_val[b] < v || (sm.top_val[b] == v && sm.top_idx[b] > i))) {
          sm.top_val[b + 1] = sm.top_val[b];
          sm.top_idx[b + 1] = sm.top_idx[b];
          b--;
        }
        sm.top_val[b + 1] = v;
        sm.top_idx[b + 1] = i;
      }
      for (int j = 0; j < n; j++) {
        top_tokens[(i64)r * top_stride + j] = j < c ? sm.top_idx[j] : -1;
        top_logprobs[(i64)r * top_stride + j] = j < c ? (double)sm.top_val[j] - l : nan;
      }
    }
    __syncthreads();
  }
}

}  // namespace tk

// Paged attention over a flat batch mixing prefill chunks and decodes (varlen,
// causal, GQA). Twin of CpuBackend.pagedAttention / attentionRange.
//
// Inputs (see AttentionMetadata in src/backend/backend.ts):
//   q            [tokens, num_heads, HEAD_DIM] view, any token/head strides, contiguous last dim
//   k/v_cache    contiguous [num_blocks, block_size, num_kv_heads, HEAD_DIM], 16-byte aligned base
//   query_start_loc i32 [num_seqs + 1]: sequence s owns query rows [qsl[s], qsl[s+1])
//   seq_lens     i32 [num_seqs]: context length of s including this step's tokens
//   block_tables i32 [num_seqs, block_table_stride]: block ids of s, in order (any ids, any order)
// Query row j of a sequence with q rows sits at position seq_len − q + j and
// attends to positions 0..that position. Query head h reads KV head
// h / (num_heads / num_kv_heads).
//   out[t, h] = Σ_p softmax_p(q[t, h] · k[p] · scale) · v[p]
// computed with an online (running max) softmax in f32; exp2 of scores pre-
// multiplied by log2(e).
//
// Work split: one CTA per (tile of M = 4·QPW query vectors of one sequence,
// KV head, KV split). The query vectors of sequence s for KV head g are its
// q rows × the `num_heads / num_kv_heads` query heads sharing g, numbered
// vector = row · group + head_in_group; a tile is M consecutive vectors (a
// decode row of a group of 4 fills one tile with QPW = 1; a prefill tile of
// QPW = 4 and group 4 covers 4 rows). Every K/V row is read from global memory
// once per tile and shared by all its query vectors through shared memory.
// Warp w owns vectors w, w + 4, ... of the tile; within a warp lane i scores
// key i of each 32-key tile and owns output dims i, i + 32, ... .
//
// KV splits (flash-decoding): gridDim.z = num_splits. Split z of a tile covers
// keys [z·chunk, (z+1)·chunk) with chunk = roundUp(ceil(kv_end / num_splits), 32),
// kv_end the last visible position of the tile + 1, so the split adapts to each
// sequence's length under a fixed grid (CUDA graphs). With num_splits = 1 the
// kernel writes `out` directly; with more it writes normalised partial outputs
// and their log2-sum-exp2 to the workspace and paged_attention_combine merges
// them:
//   partial_out f32 [num_splits, num_tokens, num_heads, HEAD_DIM]
//   partial_lse f32 [num_splits, num_tokens, num_heads]   (log2 domain; −inf: no visible key)
//
// Launch (paged_attention<T, HEAD_DIM, QPW>):
//   grid  (ceil(num_tokens · group / M) + num_seqs, num_kv_heads, num_splits) — an upper bound on
//         the tiles; CTAs past the last tile exit at once. Any grid.x ≥ Σ_s ceil(q_s · group / M) works.
//   block 128 threads (4 warps; required)
//   shared memory: static, 4·(M·D + 32·(D+4) + 32·D) + 264 bytes (41.7 KB for D = 128, QPW = 4; ≤ 48 KB)
// Launch (paged_attention_combine<T>): grid (num_tokens, num_heads), block min(roundUp32(D), 128), no shared memory.
//
// Limits of this first version: CUDA cores only (no tensor cores, no cp.async
// double buffering); HEAD_DIM a multiple of 8 and at most 128 (static shared
// memory); K/V staged in shared memory as f32.
#include "common.cuh"

namespace tk {

constexpr int kAttnWarps = 4;
constexpr int kAttnThreads = kAttnWarps * 32;
static_assert(kAttnThreads == 128, "the kernels' __launch_bounds__ say 128");
/** Keys per shared-memory tile: one per lane. */
constexpr int kKvTile = 32;

/**
 * The tile this CTA owns: warp 0 scans the sequences' tile counts (32 at a
 * time, warp prefix sum) until the running total passes blockIdx.x. Returns
 * {sequence, tile within the sequence}; sequence −1 when blockIdx.x is past the
 * last tile.
 */
__device__ __forceinline__ int2 find_tile(const int* query_start_loc, int num_seqs, int group, int vectors_per_tile) {
  __shared__ int2 found;
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const int target = (int)blockIdx.x;
    int2 result = make_int2(-1, 0);
    int before = 0;
    for (int s0 = 0; s0 < num_seqs; s0 += 32) {
      const int s = s0 + lane;
      int n = 0;
      if (s < num_seqs) n = max(0, ((query_start_loc[s + 1] - query_start_loc[s]) * group + vectors_per_tile - 1) / vectors_per_tile);
      int inclusive = n;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(kFullMask, inclusive, o);
        if (lane >= o) inclusive += y;
      }
      const int exclusive = before + inclusive - n;
      const u32 hit = __ballot_sync(kFullMask, n > 0 && target >= exclusive && target < exclusive + n);
      if (hit != 0) {
        const int src = __ffs(hit) - 1;
        result = make_int2(s0 + src, target - __shfl_sync(kFullMask, exclusive, src));
        break;
      }
      before += __shfl_sync(kFullMask, inclusive, 31);
    }
    if (lane == 0) found = result;
  }
  __syncthreads();
  return found;
}

template <typename T, int HEAD_DIM, int QPW>
__global__ void __launch_bounds__(128, 1)
    paged_attention(T* out, int out_stride_t, int out_stride_h, const T* q, int q_stride_t, int q_stride_h, const T* __restrict__ k_cache,
                    const T* __restrict__ v_cache, const int* __restrict__ query_start_loc, const int* __restrict__ seq_lens,
                    const int* __restrict__ block_tables, int block_table_stride, int num_seqs, int num_heads, int num_kv_heads,
                    int block_size, float scale, float* __restrict__ partial_out, float* __restrict__ partial_lse, int num_tokens) {
  constexpr int D = HEAD_DIM;
  constexpr int M = kAttnWarps * QPW;  // query vectors per CTA
  constexpr int KS = D + 4;            // padded K row (floats): float4 aligned, conflict-free per-lane reads
  constexpr int DPL = (D + 31) / 32;   // output dims per lane
  constexpr int CPR = D / 8;           // 8-element chunks per K/V row
  static_assert(D % 8 == 0 && D >= 8 && D <= 128, "HEAD_DIM must be a multiple of 8 in [8, 128]");
  static_assert(QPW >= 1 && QPW <= 8, "QPW must be in [1, 8]");

  __shared__ __align__(16) float q_s[M * D];
  __shared__ __align__(16) float k_s[kKvTile * KS];
  __shared__ __align__(16) float v_s[kKvTile * D];
  __shared__ i64 row_s[kKvTile];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int group = num_heads / num_kv_heads;
  const int kvh = blockIdx.y;

  const int2 tile = find_tile(query_start_loc, num_seqs, group, M);
  const int seq = tile.x;
  if (seq < 0) return;  // uniform over the CTA

  // Geometry of this tile and split.
  const int q_start = query_start_loc[seq];
  const int q_len = query_start_loc[seq + 1] - q_start;
  const int ctx = seq_lens[seq];
  const int v0 = tile.y * M;
  const int nv = min(M, q_len * group - v0);
  const int first_pos = ctx - q_len;  // position of query row 0
  const int kv_end = max(0, min(ctx, first_pos + (v0 + nv - 1) / group + 1));
  int kv_lo = 0;
  int kv_hi = kv_end;
  if (gridDim.z > 1) {
    const int chunk = ((kv_end + (int)gridDim.z - 1) / (int)gridDim.z + kKvTile - 1) / kKvTile * kKvTile;
    kv_lo = min(kv_end, (int)blockIdx.z * chunk);
    kv_hi = min(kv_end, kv_lo + chunk);
  }

  // Q tile into shared memory, pre-scaled so scores come out in log2 units.
  const float q_scale = scale * kLog2e;
  for (int i = threadIdx.x; i < M * D; i += kAttnThreads) {
    const int v = i / D;
    const int d = i - v * D;
    float x = 0.0f;
    if (v < nv) {
      const int row = (v0 + v) / group;
      const int h = kvh * group + (v0 + v) - row * group;
      x = load(q + (i64)(q_start + row) * q_stride_t + (i64)h * q_stride_h + d) * q_scale;
    }
    q_s[i] = x;
  }

  // Per-warp state for its vectors mi: vector index mi·4 + warp of the tile.
  int q_pos[QPW];
  float m_run[QPW], l_run[QPW], acc[QPW][DPL];
#pragma unroll
  for (int mi = 0; mi < QPW; mi++) {
    const int v = mi * kAttnWarps + warp;
    q_pos[mi] = v < nv ? first_pos + (v0 + v) / group : -1;  // -1: not a vector, sees nothing
    m_run[mi] = neg_inf();
    l_run[mi] = 0.0f;
#pragma unroll
    for (int dd = 0; dd < DPL; dd++) acc[mi][dd] = 0.0f;
  }

  const int* bt = block_tables + (i64)seq * block_table_stride;
  const i64 kv_row_stride = (i64)num_kv_heads * D;
  for (int t0 = kv_lo; t0 < kv_hi; t0 += kKvTile) {
    const int n_keys = min(kKvTile, kv_hi - t0);
    // Where each key of the tile lives: block table lookup once per key.
    if (threadIdx.x < kKvTile) {
      i64 off = -1;
      if ((int)threadIdx.x < n_keys) {
        const int p = t0 + threadIdx.x;
        const int blk = bt[p / block_size];
        off = ((i64)blk * block_size + p % block_size) * kv_row_stride + (i64)kvh * D;
      }
      row_s[threadIdx.x] = off;
    }
    __syncthreads();  // row_s ready; also orders the Q tile stores before the first use
    for (int c = threadIdx.x; c < kKvTile * CPR; c += kAttnThreads) {
      const int n = c / CPR;
      const int d0 = (c - n * CPR) * 8;
      const i64 off = row_s[n];
      float kv[8], vv[8];
      if (off >= 0) {
        load_pack<8>(k_cache + off + d0, kv);
        load_pack<8>(v_cache + off + d0, vv);
      } else {
#pragma unroll
        for (int j = 0; j < 8; j++) kv[j] = vv[j] = 0.0f;  // zeros, never garbage: p·NaN would poison the sum
      }
      float4* kd = reinterpret_cast<float4*>(k_s + n * KS + d0);
      float4* vd = reinterpret_cast<float4*>(v_s + n * D + d0);
      kd[0] = make_float4(kv[0], kv[1], kv[2], kv[3]);
      kd[1] = make_float4(kv[4], kv[5], kv[6], kv[7]);
      vd[0] = make_float4(vv[0], vv[1], vv[2], vv[3]);
      vd[1] = make_float4(vv[4], vv[5], vv[6], vv[7]);
    }
    __syncthreads();

    // Scores of key t0 + lane against each of this warp's vectors.
    float s[QPW];
#pragma unroll
    for (int mi = 0; mi < QPW; mi++) s[mi] = 0.0f;
    const float* krow = k_s + lane * KS;
#pragma unroll 8
    for (int d = 0; d < D; d += 4) {
      const float4 kk = *reinterpret_cast<const float4*>(krow + d);
#pragma unroll
      for (int mi = 0; mi < QPW; mi++) {
        const float4 qq = *reinterpret_cast<const float4*>(q_s + (mi * kAttnWarps + warp) * D + d);
        s[mi] += qq.x * kk.x + qq.y * kk.y + qq.z * kk.z + qq.w * kk.w;
      }
    }

    // Online softmax: causal mask, running max, rescale what was accumulated.
    const int p = t0 + lane;
#pragma unroll
    for (int mi = 0; mi < QPW; mi++) {
      if (lane >= n_keys || p > q_pos[mi]) s[mi] = neg_inf();
      const float m_new = fmaxf(m_run[mi], warp_max(s[mi]));
      float alpha = 1.0f;
      float pr = 0.0f;
      if (m_new != neg_inf()) {  // warp-uniform: some key visible so far
        alpha = exp2f(m_run[mi] - m_new);
        pr = exp2f(s[mi] - m_new);
      }
      l_run[mi] = l_run[mi] * alpha + warp_sum(pr);
      m_run[mi] = m_new;
#pragma unroll
      for (int dd = 0; dd < DPL; dd++) acc[mi][dd] *= alpha;
      s[mi] = pr;
    }

    // acc += P · V: key n's weight comes from lane n; each V row is read once per warp.
    for (int n = 0; n < n_keys; n++) {
      float vv[DPL];
#pragma unroll
      for (int dd = 0; dd < DPL; dd++) {
        const int d = lane + 32 * dd;
        vv[dd] = d < D ? v_s[n * D + d] : 0.0f;
      }
#pragma unroll
      for (int mi = 0; mi < QPW; mi++) {
        const float pn = __shfl_sync(kFullMask, s[mi], n);
#pragma unroll
        for (int dd = 0; dd < DPL; dd++) acc[mi][dd] += pn * vv[dd];
      }
    }
    __syncthreads();  // before the next tile overwrites k_s / v_s / row_s
  }

  // Normalise and write: straight to out, or to this split's slice of the workspace.
#pragma unroll
  for (int mi = 0; mi < QPW; mi++) {
    const int v = mi * kAttnWarps + warp;
    if (v >= nv) continue;
    const int row = (v0 + v) / group;
    const int h = kvh * group + (v0 + v) - row * group;
    const int t = q_start + row;
    const float inv = l_run[mi] > 0.0f ? 1.0f / l_run[mi] : 0.0f;
    if (gridDim.z == 1) {
      T* o = out + (i64)t * out_stride_t + (i64)h * out_stride_h;
#pragma unroll
      for (int dd = 0; dd < DPL; dd++) {
        const int d = lane + 32 * dd;
        if (d < D) store(o + d, acc[mi][dd] * inv);
      }
    } else {
      const i64 idx = ((i64)blockIdx.z * num_tokens + t) * num_heads + h;
      float* o = partial_out + idx * D;
#pragma unroll
      for (int dd = 0; dd < DPL; dd++) {
        const int d = lane + 32 * dd;
        if (d < D) o[d] = acc[mi][dd] * inv;
      }
      if (lane == 0) partial_lse[idx] = l_run[mi] > 0.0f ? m_run[mi] + log2f(l_run[mi]) : neg_inf();
    }
  }
}

/**
 * Merges the num_splits partial results of paged_attention:
 *   out[t, h] = Σ_z 2^(lse_z − max) · o_z / Σ_z 2^(lse_z − max)
 * over the splits that saw a key. Rows outside [qsl[0], qsl[num_seqs]) (batch
 * padding no sequence owns) are left untouched, as paged_attention leaves them.
 */
template <typename T>
__global__ void __launch_bounds__(128, 1)
    paged_attention_combine(T* out, int out_stride_t, int out_stride_h, const float* __restrict__ partial_out,
                            const float* __restrict__ partial_lse, const int* __restrict__ query_start_loc, int num_seqs, int num_tokens,
                            int num_heads, int head_dim, int num_splits) {
  const int t = blockIdx.x;
  const int h = blockIdx.y;
  if (t < query_start_loc[0] || t >= query_start_loc[num_seqs]) return;
  const i64 split_stride = (i64)num_tokens * num_heads;
  const i64 idx = (i64)t * num_heads + h;
  float mx = neg_inf();
  for (int z = 0; z < num_splits; z++) mx = fmaxf(mx, partial_lse[z * split_stride + idx]);
  float wsum = 0.0f;
  if (mx != neg_inf()) {
    for (int z = 0; z < num_splits; z++) wsum += exp2f(partial_lse[z * split_stride + idx] - mx);
  }
  const float inv = wsum > 0.0f ? 1.0f / wsum : 0.0f;
  T* o = out + (i64)t * out_stride_t + (i64)h * out_stride_h;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float a = 0.0f;
    for (int z = 0; z < num_splits; z++) {
      const float lse = partial_lse[z * split_stride + idx];
      if (lse != neg_inf()) a += exp2f(lse - mx) * partial_out[(z * split_stride + idx) * head_dim + d];
    }
    store(o + d, a * inv);
  }
}

}  // namespace tk

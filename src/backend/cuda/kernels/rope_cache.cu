// Rotary embedding fused with the paged KV-cache write. Twin of
// CpuBackend.ropeAndCacheWrite.
//
// For each token t at position p = positions[t]:
//   1. rotate q [t, heads, head_dim] and k [t, kv_heads, head_dim] in place,
//      NeoX / Hugging Face "rotate half" pairing over the first rot_dim dims:
//        x1 = x[i], x2 = x[i + rot_dim/2], c = cos[p, i], s = sin[p, i]
//        x[i] = x1·c − x2·s,   x[i + rot_dim/2] = x2·c + x1·s      (i < rot_dim/2)
//      cos/sin are f32 tables [max_positions, rot_dim/2], contiguous;
//   2. when slot = slot_mapping[t] ≥ 0, write the rotated k and the unchanged
//      v of every KV head into the caches, which are contiguous
//      [num_blocks, block_size, kv_heads, head_dim]: slot = block·block_size +
//      offset, so row (slot, h) starts at element (slot·kv_heads + h)·head_dim
//      whatever the block size. Slot < 0 (padding) writes nothing.
// The cache receives exactly the bits stored back into k.
//
// q, k and v are [tokens, heads, head_dim] views with contiguous last
// dimension and any token/head strides (they usually are column ranges of one
// fused qkv buffer). A position outside [0, max_positions) leaves that
// token's q and k unrotated (the host validates positions; this only keeps a
// bad one from reading out of bounds).
//
// Launch: one CTA per token (grid.x = numTokens; tokens are looped
// grid-stride), block clamp(roundUp32((heads + kv_heads) · rot_dim / 2), 32, 256)
// (any multiple of 32 up to 256, the launch bound), no shared memory.
#include "common.cuh"

namespace tk {

template <typename T>
__global__ void __launch_bounds__(256, 1)
    rope_cache_write(T* q, int q_stride_t, int q_stride_h, T* k, int k_stride_t, int k_stride_h, const T* v, int v_stride_t, int v_stride_h,
                     const int* __restrict__ positions, const float* __restrict__ cos_table, const float* __restrict__ sin_table, int rot_dim,
                     int max_positions, const int* __restrict__ slot_mapping, T* __restrict__ k_cache, T* __restrict__ v_cache, int num_tokens,
                     int num_heads, int num_kv_heads, int head_dim) {
  const int half = rot_dim >> 1;
  for (int t = blockIdx.x; t < num_tokens; t += gridDim.x) {
    const int pos = positions[t];
    const bool rotate = pos >= 0 && pos < max_positions;
    const int slot = slot_mapping[t];
    const i64 cache_row = (i64)slot * num_kv_heads * head_dim;
    const float* cs = cos_table + (i64)(rotate ? pos : 0) * half;
    const float* sn = sin_table + (i64)(rotate ? pos : 0) * half;

    // 1. Rotary pairs of every q head, then every k head; rotated k goes straight to the cache.
    const int pairs = (num_heads + num_kv_heads) * half;
    for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
      const int h = i / half;
      const int j = i - h * half;
      const bool is_k = h >= num_heads;
      T* x = is_k ? k + (i64)t * k_stride_t + (i64)(h - num_heads) * k_stride_h : q + (i64)t * q_stride_t + (i64)h * q_stride_h;
      float x1 = load(x + j);
      float x2 = load(x + j + half);
      if (rotate) {
        const float c = cs[j];
        const float s = sn[j];
        const float y1 = x1 * c - x2 * s;
        const float y2 = x2 * c + x1 * s;
        x1 = y1;
        x2 = y2;
        store(x + j, x1);
        store(x + j + half, x2);
      }
      if (is_k && slot >= 0) {
        T* kc = k_cache + cache_row + (i64)(h - num_heads) * head_dim;
        store(kc + j, x1);
        store(kc + j + half, x2);
      }
    }

    // 2. k dims past the rotary part (partial rotary), and all of v.
    if (slot >= 0) {
      const int rest = head_dim - rot_dim;
      for (int i = threadIdx.x; i < num_kv_heads * rest; i += blockDim.x) {
        const int h = i / rest;
        const int d = rot_dim + (i - h * rest);
        k_cache[cache_row + (i64)h * head_dim + d] = k[(i64)t * k_stride_t + (i64)h * k_stride_h + d];
      }
      for (int i = threadIdx.x; i < num_kv_heads * head_dim; i += blockDim.x) {
        const int h = i / head_dim;
        const int d = i - h * head_dim;
        v_cache[cache_row + i] = v[(i64)t * v_stride_t + (i64)h * v_stride_h + d];
      }
    }
  }
}

}  // namespace tk

// RMSNorm, optionally fused with the residual add. Twin of CpuBackend.rmsNorm.
//
//   without residual:  out = x / sqrt(mean(x²) + eps) · weight
//   with residual:     residual += x (rounded to T and stored), then
//                      out = residual / sqrt(mean(residual²) + eps) · weight
//
// Rows are the rows of a 2-D [tokens, dim] view or of a 3-D [tokens, heads,
// dim] view (Qwen3's per-head q/k norm); row r sits at
//   (r / heads) · stride_t + (r % heads) · stride_h   (elements; heads = 1 for 2-D)
// in each of out, x and residual, each with its own strides. out may be x
// itself (in-place q/k norm): every thread rewrites exactly the elements it
// read. residual must not overlap out or x.
//
// Numerics: f32 throughout, one rounding on each store. With a residual the
// sum of squares and the output use the residual as stored (rounded to T), as
// Hugging Face's `hidden = residual + hidden` in the model dtype does.
//
// Two entry points with the same arguments:
//   rms_norm       one CTA per row (rows looped grid-stride); for wide rows
//                  (hidden sizes). grid.x = numRows, block = clamp(roundUp32(dim / 8), 32, 512)
//                  (any multiple of 32 up to 512, the launch bound), 128 bytes of static shared memory.
//   rms_norm_warp  one warp per row; for short rows (q/k norm over head_dim,
//                  tiny test models). block (32, 4) (blockDim.x must be 32; blockDim.y rows per
//                  CTA, up to 8), grid.x = ceil(numRows / blockDim.y), no shared memory.
#include "common.cuh"

namespace tk {

/** Sum of squares of this thread's share of a row; adds x into the residual first when there is one. */
template <int N, typename T>
__device__ __forceinline__ float rms_sum_squares(const T* x, T* res, int dim, int tid, int nthreads) {
  float ss = 0.0f;
  for (int i = tid * N; i < dim; i += nthreads * N) {
    float v[N];
    load_pack<N>(x + i, v);
    if (res != nullptr) {
      float r[N];
      load_pack<N>(res + i, r);
#pragma unroll
      for (int j = 0; j < N; j++) v[j] = round_to<T>(v[j] + r[j]);
      store_pack<N>(res + i, v);
    }
#pragma unroll
    for (int j = 0; j < N; j++) ss += v[j] * v[j];
  }
  return ss;
}

/** out = src · inv · weight over this thread's share of a row (the same share rms_sum_squares visited). */
template <int N, typename T, typename W>
__device__ __forceinline__ void rms_scale(T* out, const T* src, const W* weight, int dim, float inv, int tid, int nthreads) {
  for (int i = tid * N; i < dim; i += nthreads * N) {
    float v[N], g[N];
    load_pack<N>(src + i, v);
    load_pack<N>(weight + i, g);
#pragma unroll
    for (int j = 0; j < N; j++) v[j] = v[j] * inv * g[j];
    store_pack<N>(out + i, v);
  }
}

/** One row by a group of threads: the whole CTA (kWarp false) or one warp (kWarp true). */
template <bool kWarp, typename T, typename W>
__device__ __forceinline__ void rms_norm_row(T* out, const T* x, T* res, const W* weight, int dim, float eps, int tid, int nthreads,
                                             float* scratch) {
  const bool vec = (dim & 7) == 0 && aligned16(out) && aligned16(x) && aligned16(weight) && (res == nullptr || aligned16(res));
  float ss = vec ? rms_sum_squares<8>(x, res, dim, tid, nthreads) : rms_sum_squares<1>(x, res, dim, tid, nthreads);
  ss = kWarp ? warp_sum(ss) : block_sum(ss, scratch);
  const float inv = rsqrtf(ss / (float)dim + eps);
  const T* src = res != nullptr ? res : x;
  if (vec) {
    rms_scale<8>(out, src, weight, dim, inv, tid, nthreads);
  } else {
    rms_scale<1>(out, src, weight, dim, inv, tid, nthreads);
  }
}

__device__ __forceinline__ i64 row_offset(int r, int heads, int stride_t, int stride_h) {
  const int t = r / heads;
  return (i64)t * stride_t + (i64)(r - t * heads) * stride_h;
}

template <typename T, typename W>
__global__ void __launch_bounds__(512, 1)
    rms_norm(T* out, int out_stride_t, int out_stride_h, const T* x, int x_stride_t, int x_stride_h, T* residual, int res_stride_t,
             int res_stride_h, const W* __restrict__ weight, int num_rows, int heads, int dim, float eps) {
  __shared__ float scratch[32];
  for (int r = blockIdx.x; r < num_rows; r += gridDim.x) {
    T* res = residual != nullptr ? residual + row_offset(r, heads, res_stride_t, res_stride_h) : nullptr;
    rms_norm_row<false>(out + row_offset(r, heads, out_stride_t, out_stride_h), x + row_offset(r, heads, x_stride_t, x_stride_h), res,
                        weight, dim, eps, threadIdx.x, blockDim.x, scratch);
  }
}

template <typename T, typename W>
__global__ void __launch_bounds__(256, 1)
    rms_norm_warp(T* out, int out_stride_t, int out_stride_h, const T* x, int x_stride_t, int x_stride_h, T* residual, int res_stride_t,
                  int res_stride_h, const W* __restrict__ weight, int num_rows, int heads, int dim, float eps) {
  // Rows are warp-uniform and no CTA barrier is used, so warps may finish at different times.
  for (int r = blockIdx.x * blockDim.y + threadIdx.y; r < num_rows; r += gridDim.x * blockDim.y) {
    T* res = residual != nullptr ? residual + row_offset(r, heads, res_stride_t, res_stride_h) : nullptr;
    rms_norm_row<true>(out + row_offset(r, heads, out_stride_t, out_stride_h), x + row_offset(r, heads, x_stride_t, x_stride_h), res,
                       weight, dim, eps, threadIdx.x, 32, nullptr);
  }
}

}  // namespace tk

// Activation quantization for FP8 W8A8 matmuls (cuBLASLt on sm_89+, see
// createFp8LinearDescriptors in linear-gemm.ts): x (bf16 / f32) -> e4m3 with a
// scale such that x ≈ scale · q, computed from the absolute maximum.
//
// The host's order, per tensor (one scale for the whole activation):
//   1. cuMemsetD32Async(amax, 0, 1)          absmax_rows accumulates into it with atomicMax
//   2. absmax_rows<T>(amax, x, ..., per_row = 0)
//   3. quantize_fp8_e4m3<T>(q, ..., scale_out, x, ..., amax, ..., per_row = 0)
//   4. cuBLASLt FP8 matmul with B_SCALE_POINTER = scale_out (A_SCALE_POINTER = the weight's scale)
// or per row ("per token", B_SCALE_MODE = OUTER_VEC_32F): per_row = 1 in steps 2 and 3, no memset (each row's
// maximum is written, not accumulated), amax and scale_out [num_rows].
//
// absmax_rows<T>(amax, x, x_stride, num_rows, cols, per_row)
//   max |x[r, c]| over the row (per_row ≠ 0: amax[r] = it) or over all rows (per_row = 0: atomicMax into
//   amax[0], which must hold 0 or a smaller non-negative f32 first). NaN elements are ignored.
//   Launch: grid (num_rows) (any grid.x works: rows are looped grid-stride), block 256.
//
// quantize_fp8_e4m3<T>(out, out_stride, scale_out, x, x_stride, amax, num_rows, cols, per_row)
//   s = max(amax / 448, 1 / (448 · 512)) (of row r, or of the tensor), out[r, c] = e4m3(x[r, c] · (1 / s))
//   rounded to nearest even and saturated to ±448 (f32_to_e4m3 of quant_blocks.cuh); scale_out[r] (per row) or
//   scale_out[0] = s, what cuBLASLt multiplies back. amax must be finite.
//   Launch: grid (ceil(cols / 2048), min(num_rows, 65535)), block 256; 8 columns per thread, rows over grid.y.
#include "quant_blocks.cuh"

namespace tk {

constexpr float kFp8Max = 448.0f;
/** The smallest scale, as vLLM's: keeps 1 / s finite for an all-zero row. */
constexpr float kFp8MinScale = 1.0f / (448.0f * 512.0f);

__device__ __forceinline__ float fp8_scale_from_amax(float amax) { return fmaxf(qb_fdiv(amax, kFp8Max), kFp8MinScale); }

template <typename T>
__global__ void __launch_bounds__(256) absmax_rows(float* amax, const T* x, int x_stride, int num_rows, int cols, int per_row) {
  __shared__ float scratch[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int r = blockIdx.x; r < num_rows; r += gridDim.x) {
    const T* row = x + (i64)r * x_stride;
    float m = 0.0f;
    if ((cols & 7) == 0 && aligned16(row)) {
      for (int c = threadIdx.x * 8; c < cols; c += blockDim.x * 8) {
        float v[8];
        load_pack<8>(row + c, v);
#pragma unroll
        for (int i = 0; i < 8; i++) m = fmaxf(m, fabsf(v[i]));
      }
    } else {
      for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, fabsf(load(row + c)));
    }
    m = warp_max(m);
    __syncthreads();  // scratch may still be read for the previous row
    if (lane == 0) scratch[warp] = m;
    __syncthreads();
    if (warp == 0) {
      m = warp_max(lane < (int)(blockDim.x >> 5) ? scratch[lane] : 0.0f);
      if (lane == 0) {
        if (per_row) {
          amax[r] = m;
        } else {
          atomicMax(reinterpret_cast<unsigned int*>(amax), __float_as_uint(m));  // non-negative floats order as their bits
        }
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(256) quantize_fp8_e4m3(u8* out, int out_stride, float* scale_out, const T* x, int x_stride,
                                                         const float* amax, int num_rows, int cols, int per_row) {
  for (int r = blockIdx.y; r < num_rows; r += gridDim.y) {
    const float s = fp8_scale_from_amax(amax[per_row ? r : 0]);
    const float inv = qb_fdiv(1.0f, s);
    if (blockIdx.x == 0 && threadIdx.x == 0 && (per_row || r == 0)) scale_out[per_row ? r : 0] = s;
    const T* src = x + (i64)r * x_stride;
    u8* dst = out + (i64)r * out_stride;
    for (int c = (blockIdx.x * blockDim.x + threadIdx.x) * 8; c < cols; c += gridDim.x * blockDim.x * 8) {
      if (c + 8 <= cols && aligned16(src + c) && (reinterpret_cast<u64>(dst + c) & 7) == 0) {
        float v[8];
        load_pack<8>(src + c, v);
        u32 lo = 0, hi = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
          lo |= f32_to_e4m3(qb_fmul(v[i], inv)) << (8 * i);
          hi |= f32_to_e4m3(qb_fmul(v[i + 4], inv)) << (8 * i);
        }
        *reinterpret_cast<uint2*>(dst + c) = make_uint2(lo, hi);
      } else {
        for (int i = c; i < min(cols, c + 8); i++) dst[i] = (u8)f32_to_e4m3(qb_fmul(load(src + i), inv));
      }
    }
  }
}

}  // namespace tk

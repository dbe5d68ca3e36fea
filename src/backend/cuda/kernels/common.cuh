// Shared device helpers for Tokamak's CUDA kernels.
//
// These sources are compiled at run time by NVRTC for the GPU found, so they
// include NO toolkit header (no cuda_bf16.h / cuda_fp16.h / <cstdint>): NVRTC
// then needs no -I to a toolkit that users may not have. Everything needed
// here (uint4, float4, __shfl_xor_sync, exp2f, ...) is built into both NVRTC
// and nvcc.
//
// How entry points are named (one scheme for every .cu file in this folder):
//   Every kernel is a `__global__` function TEMPLATE in namespace `tk`, with no
//   `extern "C"` anywhere. The launcher asks NVRTC for the instantiations it
//   needs with nvrtcAddNameExpression("tk::rms_norm<tk::bf16, tk::bf16>") and
//   looks the cubin symbol up with nvrtcGetLoweredName; only those
//   instantiations are compiled. manifest.ts gives each kernel's template
//   parameters, name expression, argument list and launch configuration. The
//   CI compile test instantiates the same name expressions with nvcc by taking
//   their addresses, exactly as NVRTC does.
//   Compile options: -std=c++17 --gpu-architecture=sm_XX, and either
//   -I<this folder> or common.cuh handed to nvrtcCreateProgram as a header
//   named "common.cuh".
//
// Element types: `float`, `tk::f16` and `tk::bf16` (16-bit storage structs of
// our own). Kernels load every element into f32, compute in f32 and round once
// when storing (round-to-nearest-even, the same bits as src/backend/dtype.ts).
#pragma once

namespace tk {

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

/** IEEE binary16, stored as its bits. */
struct __align__(2) f16 {
  u16 bits;
};

/** bfloat16 (the top half of an f32), stored as its bits. */
struct __align__(2) bf16 {
  u16 bits;
};

constexpr u32 kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// ---------------------------------------------------------------- scalar conversions

__device__ __forceinline__ float bf16_bits_to_f32(u32 b) { return __uint_as_float((b & 0xffffu) << 16); }

/** Round to nearest even, as PyTorch does; NaN stays a (quiet) NaN instead of rounding into infinity. */
__device__ __forceinline__ u16 f32_to_bf16_bits(float f) {
  u32 u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (u16)(u >> 16);
}

__device__ __forceinline__ float f16_bits_to_f32(u16 h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

/** cvt.rn: round to nearest even; overflow gives infinity, NaN a NaN. */
__device__ __forceinline__ u16 f32_to_f16_bits(float f) {
  u16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}

// ---------------------------------------------------------------- the Dtype tag
//
// Dtype<T> converts single elements and packs of 8 elements (16 bytes for the
// 16-bit types, 32 bytes for f32) to and from f32. Pack functions need the
// address 16-byte aligned; kernels check alignment at run time and fall back
// to scalar code, so any row stride and offset works.

template <typename T>
struct Dtype;

template <>
struct Dtype<float> {
  static constexpr int kBytes = 4;
  __device__ __forceinline__ static float to_f32(float x) { return x; }
  __device__ __forceinline__ static float from_f32(float x) { return x; }
  __device__ __forceinline__ static void load8(const float* p, float (&v)[8]) {
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
    v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
  __device__ __forceinline__ static void store8(float* p, const float (&v)[8]) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
};

template <>
struct Dtype<bf16> {
  static constexpr int kBytes = 2;
  __device__ __forceinline__ static float to_f32(bf16 x) { return bf16_bits_to_f32(x.bits); }
  __device__ __forceinline__ static bf16 from_f32(float x) {
    bf16 r;
    r.bits = f32_to_bf16_bits(x);
    return r;
  }
  __device__ __forceinline__ static void load8(const bf16* p, float (&v)[8]) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const u32 w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      v[2 * i] = __uint_as_float(w[i] << 16);  // element 2i is the low half (little endian)
      v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
  __device__ __forceinline__ static void store8(bf16* p, const float (&v)[8]) {
    u32 w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) w[i] = (u32)f32_to_bf16_bits(v[2 * i]) | ((u32)f32_to_bf16_bits(v[2 * i + 1]) << 16);
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  }
};

template <>
struct Dtype<f16> {
  static constexpr int kBytes = 2;
  __device__ __forceinline__ static float to_f32(f16 x) { return f16_bits_to_f32(x.bits); }
  __device__ __forceinline__ static f16 from_f32(float x) {
    f16 r;
    r.bits = f32_to_f16_bits(x);
    return r;
  }
  __device__ __forceinline__ static void load8(const f16* p, float (&v)[8]) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const u32 w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      v[2 * i] = f16_bits_to_f32((u16)(w[i] & 0xffffu));
      v[2 * i + 1] = f16_bits_to_f32((u16)(w[i] >> 16));
    }
  }
  __device__ __forceinline__ static void store8(f16* p, const float (&v)[8]) {
    u32 w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) w[i] = (u32)f32_to_f16_bits(v[2 * i]) | ((u32)f32_to_f16_bits(v[2 * i + 1]) << 16);
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  }
};

template <typename T>
__device__ __forceinline__ float load(const T* p) {
  return Dtype<T>::to_f32(*p);
}

template <typename T>
__device__ __forceinline__ void store(T* p, float v) {
  *p = Dtype<T>::from_f32(v);
}

/** The value a store of `v` as T would leave behind, back in f32. */
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return Dtype<T>::to_f32(Dtype<T>::from_f32(v));
}

/**
 * N elements at p into v: N = 8 uses one packed load (p must be 16-byte
 * aligned), N = 1 a scalar load. Lets one loop body serve both paths.
 */
template <int N, typename T>
__device__ __forceinline__ void load_pack(const T* p, float (&v)[N]) {
  if constexpr (N == 8) {
    Dtype<T>::load8(p, v);
  } else {
#pragma unroll
    for (int i = 0; i < N; i++) v[i] = load(p + i);
  }
}

template <int N, typename T>
__device__ __forceinline__ void store_pack(T* p, const float (&v)[N]) {
  if constexpr (N == 8) {
    Dtype<T>::store8(p, v);
  } else {
#pragma unroll
    for (int i = 0; i < N; i++) store(p + i, v[i]);
  }
}

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<u64>(p) & 15u) == 0; }

// ---------------------------------------------------------------- reductions

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

/**
 * Sum over a 1-D CTA whose size is a multiple of 32 (at most 1024); every
 * thread gets the total. `scratch` is 32 floats of shared memory; the call
 * synchronises the CTA, so all threads must reach it.
 */
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

// ---------------------------------------------------------------- row copies

/**
 * dst[0..n) = src[0..n) converted, by threads [tid, tid + nthreads, ...).
 * Packed 16-byte loads when both rows are aligned and n is a multiple of 8.
 */
template <typename TO, typename TI>
__device__ __forceinline__ void copy_row(TO* dst, const TI* src, int n, int tid, int nthreads) {
  if ((n & 7) == 0 && aligned16(dst) && aligned16(src)) {
    for (int i = tid * 8; i < n; i += nthreads * 8) {
      float v[8];
      load_pack<8>(src + i, v);
      store_pack<8>(dst + i, v);
    }
  } else {
    for (int i = tid; i < n; i += nthreads) store(dst + i, load(src + i));
  }
}

template <typename T>
__device__ __forceinline__ void zero_row(T* dst, int n, int tid, int nthreads) {
  for (int i = tid; i < n; i += nthreads) store(dst + i, 0.0f);
}

}  // namespace tk

// Quantized weight blocks: the ggml block layouts of llama.cpp's ggml-common.h
// (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, MXFP4) and two per-channel
// formats of our own (INT8, FP8_E4M3), decoded 16 elements at a time. Used by
// quant_gemv.cu (dequant-fused matrix-vector products), quant_dequant.cu
// (dequantize to bf16 for the large-batch cuBLASLt path) and quant_fp8.cu (the
// f32 -> e4m3 rounding of activations).
//
// Weight matrices are [N, K] row-major: row n is K / kQK blocks of kBytes
// bytes each, rows packed back to back (row n starts at byte n · rowBytes,
// rowBytes = K / kQK · kBytes), exactly as a GGUF tensor stores them. K must be
// a multiple of kQK. INT8 and FP8_E4M3 are plain [N, K] bytes (int8 two's
// complement / OCP e4m3fn) with an f32 scale per row (or one per tensor): they
// are described as "blocks" of 32 bytes with no scale of their own (kRowScale).
//
// The decoder of each format: QB<Q>::decode16(blk, h, q, s, o) reads the block
// at `blk` (any alignment; it may read up to 3 bytes past the 16 elements' last
// byte, which every caller's staging buffer has room for) and gives, for the
// elements [16h, 16h + 16) of the block, small integers (or e4m3 values) q[i] as
// exact floats and the half-block's scale s and offset o, such that element i is
//   value(s, q[i], o) = kOffset ? fl(fl(s · q[i]) + o) : fl(s · q[i])
// which is ggml's dequantize_row_* formula for that format, step by step in
// f32 with the same roundings (no FMA contraction), so the values are ggml's
// bit for bit (test/cuda-quant-emulation.test.ts checks this against a
// TypeScript dequantizer). The matrix-vector kernel instead accumulates
// s · Σ q·x (+ o · Σ x): the same dot product, rounded differently.
//
// Host build: with TK_HOST defined (test/cuda-quant-emulation.test.ts compiles
// these files with g++ against a small emulation of the CUDA built-ins), the
// device primitives below (byte_perm, funnel shift, cp.async, f16 conversion)
// have plain C++ twins with the same results.
#pragma once
#include "common.cuh"

namespace tk {

typedef unsigned char u8;
typedef signed char i8;

// ---------------------------------------------------------------- format tags (template arguments)

struct Q8_0 {};
struct Q4_0 {};
struct Q4_1 {};
struct Q5_0 {};
struct Q5_1 {};
struct Q4_K {};
struct Q5_K {};
struct Q6_K {};
struct MXFP4 {};
/** int8 [N, K] with an f32 scale per row (scale[n · scaleStride]). */
struct INT8 {};
/** OCP FP8 e4m3fn [N, K] with an f32 scale per row or per tensor (scale[n · scaleStride]). */
struct FP8_E4M3 {};

// ---------------------------------------------------------------- primitives (device, and their host twins)

#ifdef TK_HOST
__device__ __forceinline__ float qb_as_float(u32 u) {
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
__device__ __forceinline__ u32 qb_as_uint(float f) {
  u32 u;
  __builtin_memcpy(&u, &f, 4);
  return u;
}
/** __byte_perm without the sign-replicate mode (selector nibbles 0..7 only). */
__device__ __forceinline__ u32 qb_prmt(u32 a, u32 b, u32 s) {
  const unsigned long long v = ((unsigned long long)b << 32) | a;
  u32 r = 0;
  for (int i = 0; i < 4; i++) r |= (u32)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xffu) << (8 * i);
  return r;
}
__device__ __forceinline__ u32 qb_shf_r(u32 lo, u32 hi, u32 sh) {
  return (u32)((((unsigned long long)hi << 32) | lo) >> (sh & 31));
}
__device__ __forceinline__ float qb_fmul(float a, float b) { return a * b; }
__device__ __forceinline__ float qb_fadd(float a, float b) { return a + b; }
__device__ __forceinline__ float qb_fdiv(float a, float b) { return a / b; }
/** IEEE binary16 -> f32 (exact), in integer operations. */
__device__ __forceinline__ float qb_f16_to_f32(u32 h) {
  const u32 sign = (h & 0x8000u) << 16;
  const u32 e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return qb_as_float(sign | 0x7f800000u | (m << 13));
  if (e != 0) return qb_as_float(sign | ((e + 112) << 23) | (m << 13));
  return qb_as_float(qb_as_uint((float)m * 5.9604644775390625e-8f) | sign);  // m · 2^-24, exact
}
/** n little-endian 32-bit words from p (any alignment). */
template <int N>
__device__ __forceinline__ void ld_bytes(const u8* p, u32 (&w)[N]) {
  __builtin_memcpy(w, p, 4 * N);
}
/** 16 bytes global -> shared, `bytes` (0..16) of them read and the rest zeroed (cp.async with src-size). */
__device__ __forceinline__ void stage16(u8* dst, const u8* src, int bytes) {
  for (int i = 0; i < 16; i++) dst[i] = i < bytes ? src[i] : 0;
}
__device__ __forceinline__ void stage_commit() {}
template <int N>
__device__ __forceinline__ void stage_wait() {}
#else
__device__ __forceinline__ float qb_as_float(u32 u) { return __uint_as_float(u); }
__device__ __forceinline__ u32 qb_as_uint(float f) { return __float_as_uint(f); }
__device__ __forceinline__ u32 qb_prmt(u32 a, u32 b, u32 s) { return __byte_perm(a, b, s); }
__device__ __forceinline__ u32 qb_shf_r(u32 lo, u32 hi, u32 sh) { return __funnelshift_r(lo, hi, sh); }
// Explicit roundings: the dequantized values must not be contracted into FMAs.
__device__ __forceinline__ float qb_fmul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float qb_fadd(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float qb_fdiv(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float qb_f16_to_f32(u32 h) { return f16_bits_to_f32((u16)h); }
/**
 * n little-endian 32-bit words from p (any alignment): n + 1 aligned loads and funnel shifts. Reads the aligned
 * word holding p + 4n as well (up to 3 bytes past the last one wanted; buffers here are padded for it).
 */
template <int N>
__device__ __forceinline__ void ld_bytes(const u8* p, u32 (&w)[N]) {
  // Pointer arithmetic (not an integer round trip) keeps the address space known: shared loads stay ld.shared.
  const u32 mis = (u32)(reinterpret_cast<u64>(p) & 3);
  const u32* a = reinterpret_cast<const u32*>(p - mis);
  const u32 sh = mis * 8;
  u32 t[N + 1];
#pragma unroll
  for (int i = 0; i <= N; i++) t[i] = a[i];
#pragma unroll
  for (int i = 0; i < N; i++) w[i] = qb_shf_r(t[i], t[i + 1], sh);
}
__device__ __forceinline__ u32 smem_addr(const void* p) {
  u32 r;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
  return r;
}
/**
 * 16 bytes global -> shared with both addresses 16-byte aligned: `bytes` (0..16) of them read, the rest zeroed.
 * cp.async (sm_80+, L2 only: weights are read once) in a commit group; a plain copy before sm_80.
 */
__device__ __forceinline__ void stage16(u8* dst, const u8* src, int bytes) {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(bytes) : "memory");
#else
  if (bytes == 16) {
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
  } else {
    for (int i = 0; i < 16; i++) dst[i] = i < bytes ? src[i] : 0;
  }
#endif
}
__device__ __forceinline__ void stage_commit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
/** Waits until at most N of this thread's most recent commit groups are still in flight. */
template <int N>
__device__ __forceinline__ void stage_wait() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
#endif

__device__ __forceinline__ u32 ld_u16(const u8* p) { return (u32)p[0] | ((u32)p[1] << 8); }

/** fl(value) = byte_i − bias for the four bytes of w, exactly: 2^23 + byte built by a byte permute, then one add. */
__device__ __forceinline__ void bytes_to_f32(u32 w, float bias, float* out) {
#pragma unroll
  for (int i = 0; i < 4; i++) out[i] = qb_as_float(qb_prmt(w, 0x4b000000u, 0x7540u | (u32)i)) - (8388608.0f + bias);
}

/** ggml_e8m0_to_fp32_half: 2^(e − 128) (MXFP4's scale, halved because kvalues_mxfp4 are doubled). */
__device__ __forceinline__ float e8m0_half(u32 e) { return qb_as_float(e < 2 ? 0x00200000u << e : (e - 1) << 23); }

/** OCP e4m3fn byte -> f32, exactly: 0x7f / 0xff are NaN, no infinities, subnormals m · 2^-9. */
__device__ __forceinline__ float e4m3_to_f32(u32 b) {
  const u32 mag = b & 0x7fu;
  const float f = mag == 0x7fu ? qb_as_float(0x7fc00000u) : qb_as_float(mag << 20) * 0x1p120f;  // exact: a power-of-two scaling
  return qb_as_float(qb_as_uint(f) | ((b & 0x80u) << 24));
}

/**
 * f32 -> OCP e4m3fn, round to nearest even, saturating: |x| ≥ 448 (and ±inf) gives ±448, NaN the NaN 0x7f;
 * what cvt.rn.satfinite.e4m3x2.f32 does on sm_89+.
 */
__device__ __forceinline__ u32 f32_to_e4m3(float x) {
  const u32 u = qb_as_uint(x);
  const u32 sign = (u >> 24) & 0x80u;
  const u32 a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7fu;
  if (a >= 0x43e00000u) return sign | 0x7eu;  // 448 and above
  if (a < 0x3c800000u) {                      // below 2^-6: subnormal, m = rne(|x| · 2^9) in 0..8 (8 is the smallest normal)
    const float m = qb_fadd(qb_fadd(qb_as_float(a) * 512.0f, 8388608.0f), -8388608.0f);
    return sign | (u32)m;
  }
  const u32 r = a + 0x7ffffu + ((a >> 20) & 1u);  // round the mantissa to 3 bits (a carry moves into the exponent)
  return sign | ((r >> 20) - (120u << 3));
}

/** ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes. */
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, u32& sc, u32& m) {
  if (j < 4) {
    sc = q[j] & 63u;
    m = q[j + 4] & 63u;
  } else {
    sc = (q[j + 4] & 0xfu) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

/** Low (shift 0) or high (shift 4) nibbles of the bytes of w[0..4), less `bias`: 16 values. */
__device__ __forceinline__ void nibbles_to_f32(const u32 (&w)[4], int shift, float bias, float (&q)[16]) {
#pragma unroll
  for (int i = 0; i < 4; i++) bytes_to_f32((w[i] >> shift) & 0x0f0f0f0fu, bias, &q[4 * i]);
}

/** Bits 0..3 of x to bit 4 of bytes 0..3 (the fifth bit of four 5-bit quants). */
__device__ __forceinline__ u32 spread_bits4(u32 x) { return ((x & 1u) << 4) | ((x & 2u) << 11) | ((x & 4u) << 18) | ((x & 8u) << 25); }

// ---------------------------------------------------------------- the decoders

template <typename Q>
struct QB;

template <>
struct QB<Q8_0> {  // { f16 d; i8 qs[32]; }: d · q
  static constexpr int kQK = 32, kBytes = 34;
  static constexpr bool kOffset = false, kRowScale = false;
  __device__ __forceinline__ static void decode16(const u8* b, int h, float (&q)[16], float& s, float& o) {
    s = qb_f16_to_f32(ld_u16(b));
    o = 0.0f;
    u32 w[4];
    ld_bytes<4>(b + 2 + 16 * h, w);
#pragma unroll
    for (int i = 0; i < 4; i++) bytes_to_f32(w[i] ^ 0x80808080u, 128.0f, &q[4 * i]);
  }
};

template <>
struct QB<Q4_0> {  // { f16 d; u8 qs[16]; }: element j < 16 low nibble of qs[j], j ≥ 16 high nibble of qs[j − 16]; d · (nibble − 8)
  static constexpr int kQK = 32, kBytes = 18;
  static constexpr bool kOffset = false, kRowScale = false;
  __device__ __forceinline__ static void decode16(const u8* b, int h, float (&q)[16], float& s, float& o) {
    s = qb_f16_to_f32(ld_u16(b));
    o = 0.0f;
    u32 w[4];
    ld_bytes<4>(b + 2, w);
    nibbles_to_f32(w, 4 * h, 8.0f, q);
  }
};

template <>
struct QB<Q4_1> {  // { f16 d, m; u8 qs[16]; }: d · nibble + m
  static constexpr int kQK = 32, kBytes = 20;
  static constexpr bool kOffset = true, kRowScale = false;
  __device__ __forceinline__ static void decode16(const u8* b, int h, float (&q)[16], float& s, float& o) {
    s = qb_f16_to_f32(ld_u16(b));
    o = qb_f16_to_f32(ld_u16(b + 2));
    u32 w[4];
    ld_bytes<4>(b + 4, w);
    nibbles_to_f32(w, 4 * h, 0.0f, q);
  }
};

/** The 16 5-bit quants of half h: nibbles of qs (low for h = 0, high for h = 1) with bit 16h + j of qh as bit 4. */
__device__ __forceinline__ void q5_decode16(const u8* qs, u32 qh, int h, float bias, float (&q)[16]) {
  u32 w[4];
  ld_bytes<4>(qs, w);
  const u32 hb = qh >> (16 * h);
#pragma unroll
  for (int i = 0; i < 4; i++) bytes_to_f32(((w[i] >> (4 * h)) & 0x0f0f0f0fu) | spread_bits4(hb >> (4 * i)), bias, &q[4 * i]);
}

template <>
struct QB<Q5_0> {  // { f16 d; u8 qh[4]; u8 qs[16]; }: d · ((nibble | high bit << 4) − 16)
  static constexpr int kQK = 32, kBytes = 22;
  static constexpr bool kOffset = false, kRowScale = false;
  __device__ __forceinline__ static void decode16(const u8* b, int h, float (&q)[16], float& s, float& o) {
    s = qb_f16_to_f32(ld_u16(b));
    o = 0.0f;
    u32 qh[1];
    ld_bytes<1>(b + 2, qh);
    q5_decode16(b + 6, qh[0], h, 16.0f, q);
  }
};

template <>
struct QB<Q5_1> {  // { f16 d, m; u8 qh[4]; u8 qs[16]; }: d · (nibble | high bit << 4) + m
  static constexpr int kQK = 32, kBytes = 24;
  static constexpr bool kOffset = true, kRowScale = false;
  __device__ __forceinline__ static void decode16(const u8* b, int h, float (&q)[16], float& s, float& o) {
    s = qb_f16_to_f32(ld_u16(b));
    o = qb_f16_to_f32(ld_u16(b + 2));
    u32 qh[1];
    ld_bytes<1>(b + 4, qh);
    q5_decode16(b + 8, qh[0], h, 0.0f, q);
  }
};

template <>
struct QB<MXFP4> {  // { u8 e; u8 qs[16]; }: kvalues_mxfp4[nibble] · 2^(e − 128)
  static constexpr int kQK = 32, kBytes = 17;
  static constexpr bool kOffset = false, kRowScale = false;
  __device__ __forceinline__ static void decode16(const u8* b, int h, float (&q)[16], float& s, float& o) {
    s = e8m0_half(b[0]);
    o = 0.0f;
    u32 w[4];
    ld_bytes<4>(b + 1, w);
#pragma unroll
    for (int i = 0; i < 4; i++) {
      // Four nibbles become the four selectors of a lookup in kvalues_mxfp4 {0, 1, 2, 3, 4, 6, 8, 12, 0, −1, ..., −12}
      // (int8 bytes): entries 0..7 from one register pair, 8..15 from another, picked by bit 3.
      u32 v = (w[i] >> (4 * h)) & 0x0f0f0f0fu;
      v = (v | (v >> 4)) & 0x00ff00ffu;
      v = (v | (v >> 8)) & 0x0000ffffu;
      const u32 lo = qb_prmt(0x03020100u, 0x0c080604u, v & 0x7777u);
      const u32 hi = qb_prmt(0xfdfeff00u, 0xf4f8fafcu, v & 0x7777u);
      const u32 vals = qb_prmt(lo, hi, 0x3210u | ((v & 0x8888u) >> 1));
      bytes_to_f32(vals ^ 0x80808080u, 128.0f, &q[4 * i]);
    }
  }
};

template <>
struct QB<Q4_K> {  // { f16 d, dmin; u8 scales[12]; u8 qs[128]; }: 8 sub-blocks of 32, (d · sc) · nibble − dmin · m
  static constexpr int kQK = 256, kBytes = 144;
  static constexpr bool kOffset = true, kRowScale = false;
  __device__ __forceinline__ static void decode16(const u8* b, int h, float (&q)[16], float& s, float& o) {
    u32 sc, m;
    scale_min_k4(h >> 1, b + 4, sc, m);
    s = qb_fmul(qb_f16_to_f32(ld_u16(b)), (float)sc);
    o = -qb_fmul(qb_f16_to_f32(ld_u16(b + 2)), (float)m);
    // Sub-block j = h / 2: the low (j even) or high (j odd) nibbles of qs[32 · (j / 2) .. + 32).
    u32 w[4];
    ld_bytes<4>(b + 16 + 32 * (h >> 2) + 16 * (h & 1), w);
    nibbles_to_f32(w, 4 * ((h >> 1) & 1), 0.0f, q);
  }
};

template <>
struct QB<Q5_K> {  // { f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }: Q4_K's with bit j of qh[l] as the fifth bit
  static constexpr int kQK = 256, kBytes = 176;
  static constexpr bool kOffset = true, kRowScale = false;
  __device__ __forceinline__ static void decode16(const u8* b, int h, float (&q)[16], float& s, float& o) {
    const int j = h >> 1;
    u32 sc, m;
    scale_min_k4(j, b + 4, sc, m);
    s = qb_fmul(qb_f16_to_f32(ld_u16(b)), (float)sc);
    o = -qb_fmul(qb_f16_to_f32(ld_u16(b + 2)), (float)m);
    u32 w[4], qh[4];
    ld_bytes<4>(b + 48 + 32 * (h >> 2) + 16 * (h & 1), w);
    ld_bytes<4>(b + 16 + 16 * (h & 1), qh);
#pragma unroll
    for (int i = 0; i < 4; i++) bytes_to_f32(((w[i] >> (4 * (j & 1))) & 0x0f0f0f0fu) | (((qh[i] >> j) & 0x01010101u) << 4), 0.0f, &q[4 * i]);
  }
};

template <>
struct QB<Q6_K> {  // { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }: (d · scales[h]) · (q6 − 32), 16 elements per scale
  static constexpr int kQK = 256, kBytes = 210;
  static constexpr bool kOffset = false, kRowScale = false;
  __device__ __forceinline__ static void decode16(const u8* b, int h, float (&q)[16], float& s, float& o) {
    s = qb_fmul(qb_f16_to_f32(ld_u16(b + 208)), (float)(int)(i8)b[192 + h]);
    o = 0.0f;
    // Half 128 · n of the block, quarter g: ql[64n + 32 (g & 1) + l] (low nibble for g < 2), bits 2g of qh[32n + l].
    const int n = h >> 3, g = (h >> 1) & 3, l0 = 16 * (h & 1);
    u32 w[4], qh[4];
    ld_bytes<4>(b + 64 * n + 32 * (g & 1) + l0, w);
    ld_bytes<4>(b + 128 + 32 * n + l0, qh);
#pragma unroll
    for (int i = 0; i < 4; i++)
      bytes_to_f32(((w[i] >> (4 * (g >> 1))) & 0x0f0f0f0fu) | (((qh[i] >> (2 * g)) & 0x03030303u) << 4), 32.0f, &q[4 * i]);
  }
};

template <>
struct QB<INT8> {  // int8 quants; the row's scale is applied by the caller
  static constexpr int kQK = 32, kBytes = 32;
  static constexpr bool kOffset = false, kRowScale = true;
  __device__ __forceinline__ static void decode16(const u8* b, int h, float (&q)[16], float& s, float& o) {
    s = 1.0f;
    o = 0.0f;
    u32 w[4];
    ld_bytes<4>(b + 16 * h, w);
#pragma unroll
    for (int i = 0; i < 4; i++) bytes_to_f32(w[i] ^ 0x80808080u, 128.0f, &q[4 * i]);
  }
};

template <>
struct QB<FP8_E4M3> {  // e4m3fn values; the row's (or tensor's) scale is applied by the caller
  static constexpr int kQK = 32, kBytes = 32;
  static constexpr bool kOffset = false, kRowScale = true;
  __device__ __forceinline__ static void decode16(const u8* b, int h, float (&q)[16], float& s, float& o) {
    s = 1.0f;
    o = 0.0f;
    u32 w[4];
    ld_bytes<4>(b + 16 * h, w);
#pragma unroll
    for (int i = 0; i < 16; i++) q[i] = e4m3_to_f32((w[i >> 2] >> (8 * (i & 3))) & 0xffu);
  }
};

/** Element value from decode16's outputs, rounded as ggml's formula (s = 1, o = 0 for INT8 / FP8 before the row scale). */
template <typename Q>
__device__ __forceinline__ float quant_value(float s, float q, float o) {
  const float v = qb_fmul(s, q);
  return QB<Q>::kOffset ? qb_fadd(v, o) : v;
}

/**
 * Copies the bytes [start, end) of a weight matrix into `dst` (16-byte aligned shared memory) as 16-byte aligned
 * chunks, by threads tid, tid + nthreads, ...: dst[0] holds the byte at start rounded down to 16, so the byte at
 * `start` lands at dst[start & 15]. Nothing at or past `limit` (the end of the matrix) is read; the up to 15 bytes
 * before `start` in its aligned chunk are (they are inside the allocation whenever `limit − rows · rowBytes` is).
 * Asynchronous: stage_commit() / stage_wait<>() and a barrier before the bytes are read by other threads.
 */
__device__ __forceinline__ void stage_bytes(u8* dst, const u8* start, const u8* end, const u8* limit, int tid, int nthreads) {
  const u8* a0 = reinterpret_cast<const u8*>(reinterpret_cast<u64>(start) & ~(u64)15);
  const int chunks = (int)((end - a0 + 15) >> 4);
  for (int c = tid; c < chunks; c += nthreads) {
    const u8* src = a0 + 16 * c;
    const i64 left = limit - src;
    stage16(dst + 16 * c, src, left >= 16 ? 16 : (int)left);
  }
}

/** Where `start` landed in the buffer stage_bytes filled. */
__device__ __forceinline__ int stage_offset(const u8* start) { return (int)(reinterpret_cast<u64>(start) & 15); }

/** 16-byte chunks stage_bytes needs at most for `bytes` bytes at any alignment. */
__host__ __device__ constexpr int stage_chunks(int bytes) { return (bytes + 30) / 16; }

}  // namespace tk

// Dequant-fused matrix-vector products for small batches (decode):
//
//   out[m, n] = rowScale(n) · Σ_k x[m, k] · W[n, k]  (+ bias[n])     m < numRows ≤ ROWS, n < N
//
// W is a quantized [N, K] weight matrix in one of the formats of
// quant_blocks.cuh (ggml's Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q4_K / Q5_K /
// Q6_K / MXFP4 blocks, or INT8 / FP8_E4M3 with a per-row scale), x and out are
// activations in T (f32 or bf16; f16 also compiles), accumulated in f32 and
// rounded once on the store. rowScale(n) is scale[n · scaleStride] for INT8 and
// FP8_E4M3 (scaleStride 1: per row, 0: one scale for the tensor) and 1 for the
// block formats (whose scales are in the blocks; `scale` may be 0). bias is f32
// [N] or 0.
//
// quant_gemv<Q, T, ROWS>(out, out_stride, x, x_stride, w, scale, scale_stride, bias, num_rows, n, k)
//   out      [num_rows, out_stride] T; x [num_rows, x_stride] T (strides in elements, any value and alignment:
//            16-byte aligned rows take the vector path)
//   w        the weight bytes, 16-byte aligned (GGUF aligns tensor data to 32); rows of K / QK blocks
//   num_rows activation rows, 1 ≤ num_rows ≤ ROWS (ROWS ∈ {1, 2, 4, 8}: take the smallest that holds the batch;
//            more rows than 8 go through dequantize + cuBLASLt, or several launches)
//   k        a multiple of the format's block size (32, or 256 for the K formats)
//   Launch: grid (ceil(n / 8)), block 128 (required), no dynamic shared memory.
//
// Structure. A CTA of 4 warps computes 8 output columns (weight rows), 2 per
// warp, for all ROWS activation rows. K is walked in chunks of KC = 4096 / ROWS
// elements: each chunk of x is converted to f32 once per CTA into shared memory
// (padded so the warps' 16-byte reads are conflict-free), with its 16-element
// sums for the formats with an offset (Q4_1, Q5_1, Q4_K, Q5_K). Each warp
// streams its two weight rows through a 3-stage cp.async pipeline of 16-byte
// loads into its own shared buffers, 512 elements of each row per pass, so two
// passes of loads are in flight while one is computed; in a pass lane l takes
// elements [16 l, 16 l + 16) of both rows: it decodes them (QB<Q>::decode16),
// reads the 16 x values of each activation row once for both weight rows, and
// accumulates s · Σ q·x (+ o · Σx) in f32. Lanes' partial sums are added with a
// butterfly at the end. Shared memory: 20 KiB of x, ≤ 1 KiB of sums, ≤ 13.5 KiB
// of weight stages (Q8_0), so several CTAs fit on an SM.
#include "quant_blocks.cuh"

namespace tk {

constexpr int kGemvWarps = 4;
constexpr int kGemvRowsPerWarp = 2;
/** Elements of one weight row a warp handles per pass: 32 lanes × 16. */
constexpr int kGemvPass = 512;
/** ROWS × KC: the x chunk staged per CTA (f32). */
constexpr int kGemvXElems = 4096;
constexpr int kGemvStages = 3;

template <typename Q>
struct GemvStage {
  static constexpr int kPassBytes = kGemvPass / QB<Q>::kQK * QB<Q>::kBytes;
  /** One row's pass at any alignment, plus 16 bytes for the decoders' over-read. */
  static constexpr int kRowBytes = stage_chunks(kPassBytes) * 16 + 16;
};

/** Index of element e of a staged x row: 4 floats of padding after every 16, so lanes 16 elements apart hit distinct banks. */
__device__ __forceinline__ int gemv_xpad(int e) { return e + (e >> 4) * 4; }

template <typename Q, typename T, int ROWS>
__global__ void __launch_bounds__(128)
    quant_gemv(T* out, int out_stride, const T* x, int x_stride, const u8* __restrict__ w, const float* scale, int scale_stride,
               const float* bias, int num_rows, int n, int k) {
  static_assert(ROWS >= 1 && ROWS <= 8 && (ROWS & (ROWS - 1)) == 0, "ROWS is 1, 2, 4 or 8");
  using B = QB<Q>;
  constexpr int KC = kGemvXElems / ROWS;
  constexpr int kXRow = KC + KC / 4;
  constexpr int kPassesPerChunk = KC / kGemvPass;
  constexpr int kRowBytes = GemvStage<Q>::kRowBytes;
  constexpr int kBlocksPerPass = kGemvPass / B::kQK;
  __shared__ __align__(16) float xs[ROWS * kXRow];
  __shared__ float xsum[B::kOffset ? ROWS * (KC / 16) : 1];
  __shared__ __align__(16) u8 ws[kGemvWarps][kGemvStages][kGemvRowsPerWarp][kRowBytes];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int n0 = blockIdx.x * (kGemvWarps * kGemvRowsPerWarp) + warp * kGemvRowsPerWarp;
  const i64 row_bytes = (i64)(k / B::kQK) * B::kBytes;
  const u8* w_end = w + row_bytes * n;
  const int passes = (k + kGemvPass - 1) / kGemvPass;

  // Pass p of this warp's rows into stage p % kGemvStages (one commit group per pass, empty past the end).
  auto issue = [&](int p) {
    if (p < passes) {
      const int b0 = p * kBlocksPerPass;
      const int b1 = min(k / B::kQK, b0 + kBlocksPerPass);
#pragma unroll
      for (int rr = 0; rr < kGemvRowsPerWarp; rr++) {
        if (n0 + rr >= n) break;
        const u8* row = w + row_bytes * (n0 + rr);
        stage_bytes(ws[warp][p % kGemvStages][rr], row + (i64)b0 * B::kBytes, row + (i64)b1 * B::kBytes, w_end, lane, 32);
      }
    }
    stage_commit();
  };

  float acc[kGemvRowsPerWarp][ROWS];
#pragma unroll
  for (int rr = 0; rr < kGemvRowsPerWarp; rr++)
#pragma unroll
    for (int r = 0; r < ROWS; r++) acc[rr][r] = 0.0f;

#pragma unroll
  for (int p = 0; p < kGemvStages - 1; p++) issue(p);

  for (int p = 0; p < passes; p++) {
    if (p % kPassesPerChunk == 0) {
      // Stage x[:, k0 .. k0 + KC) as f32 (zeros past k and past num_rows), and the 16-element sums.
      const int k0 = (p / kPassesPerChunk) * KC;
      __syncthreads();  // every warp is done with the previous chunk
      for (int g = threadIdx.x; g < ROWS * (KC / 16); g += blockDim.x) {
        const int r = g / (KC / 16);
        const int kg = (g - r * (KC / 16)) * 16;
        const int kk = k0 + kg;
        float v[2][8];
        if (r < num_rows && kk < k) {
          const T* src = x + (i64)r * x_stride + kk;
          if (kk + 16 <= k && aligned16(src)) {
            load_pack<8>(src, v[0]);
            load_pack<8>(src + 8, v[1]);
          } else {
#pragma unroll
            for (int i = 0; i < 16; i++) v[i >> 3][i & 7] = kk + i < k ? load(src + i) : 0.0f;
          }
        } else {
#pragma unroll
          for (int i = 0; i < 16; i++) v[i >> 3][i & 7] = 0.0f;
        }
        float4* dst = reinterpret_cast<float4*>(xs + r * kXRow + gemv_xpad(kg));
#pragma unroll
        for (int j = 0; j < 4; j++) dst[j] = make_float4(v[j >> 1][(j & 1) * 4], v[j >> 1][(j & 1) * 4 + 1], v[j >> 1][(j & 1) * 4 + 2], v[j >> 1][(j & 1) * 4 + 3]);
        if constexpr (B::kOffset) {
          float sum = 0.0f;
#pragma unroll
          for (int i = 0; i < 16; i++) sum += v[i >> 3][i & 7];
          xsum[g] = sum;
        }
      }
      __syncthreads();
    }

    issue(p + kGemvStages - 1);
    stage_wait<kGemvStages - 1>();
    __syncwarp();  // the other lanes' copies of pass p are visible

    const int e0 = p * kGemvPass + lane * 16;
    if (e0 < k) {
      const int blk = e0 / B::kQK;
      const int h = (e0 - blk * B::kQK) >> 4;
      float q[kGemvRowsPerWarp][16], s[kGemvRowsPerWarp], o[kGemvRowsPerWarp];
#pragma unroll
      for (int rr = 0; rr < kGemvRowsPerWarp; rr++) {
        if (n0 + rr < n) {
          const u8* first = w + row_bytes * (n0 + rr) + (i64)(p * kBlocksPerPass) * B::kBytes;
          const u8* src = ws[warp][p % kGemvStages][rr] + stage_offset(first) + (blk - p * kBlocksPerPass) * B::kBytes;
          B::decode16(src, h, q[rr], s[rr], o[rr]);
        } else {
#pragma unroll
          for (int i = 0; i < 16; i++) q[rr][i] = 0.0f;
          s[rr] = 0.0f;
          o[rr] = 0.0f;
        }
      }
      const int xe = (p % kPassesPerChunk) * kGemvPass + lane * 16;
#pragma unroll
      for (int r = 0; r < ROWS; r++) {
        const float4* xp = reinterpret_cast<const float4*>(xs + r * kXRow + gemv_xpad(xe));
        float dot[kGemvRowsPerWarp];
#pragma unroll
        for (int rr = 0; rr < kGemvRowsPerWarp; rr++) dot[rr] = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
          const float4 xv = xp[j];
#pragma unroll
          for (int rr = 0; rr < kGemvRowsPerWarp; rr++) {
            dot[rr] = fmaf(q[rr][4 * j], xv.x, dot[rr]);
            dot[rr] = fmaf(q[rr][4 * j + 1], xv.y, dot[rr]);
            dot[rr] = fmaf(q[rr][4 * j + 2], xv.z, dot[rr]);
            dot[rr] = fmaf(q[rr][4 * j + 3], xv.w, dot[rr]);
          }
        }
#pragma unroll
        for (int rr = 0; rr < kGemvRowsPerWarp; rr++) {
          acc[rr][r] = fmaf(s[rr], dot[rr], acc[rr][r]);
          if constexpr (B::kOffset) acc[rr][r] = fmaf(o[rr], xsum[r * (KC / 16) + (xe >> 4)], acc[rr][r]);
        }
      }
    }
    __syncwarp();  // stage p % kGemvStages is free for pass p + kGemvStages
  }

#pragma unroll
  for (int rr = 0; rr < kGemvRowsPerWarp; rr++) {
    const int col = n0 + rr;
    float row_scale = 1.0f;
    if constexpr (B::kRowScale) row_scale = col < n ? scale[(i64)col * scale_stride] : 0.0f;
    const float b = bias != nullptr && col < n ? bias[col] : 0.0f;
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
      const float v = warp_sum(acc[rr][r]);
      if (lane == (rr * ROWS + r) % 32 && col < n && r < num_rows) {
        float y = v;
        if constexpr (B::kRowScale) y *= row_scale;
        store(out + (i64)r * out_stride + col, y + b);
      }
    }
  }
}

}  // namespace tk

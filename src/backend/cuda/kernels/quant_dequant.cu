// Dequantization of a quantized weight matrix (or a tile of its rows) to a
// dense one, for batches too large for quant_gemv.cu: dequantize the [rows, K]
// tile into a bf16 scratch buffer, then run the bf16 GEMM of linear-gemm.ts on
// it (cuBLASLt), tile after tile when the whole matrix does not fit.
//
// dequant_rows<Q, TO>(out, out_stride, w, scale, scale_stride, num_rows, cols)
//   out[r, c] = value of element (r, c) of W (quant_blocks.cuh), rounded once to TO (round to nearest even):
//   exactly ggml's dequantize_row_* values for the block formats; q · scale[r · scale_stride] for INT8 and
//   FP8_E4M3 (scale_stride 1: per row, 0: per tensor; `scale` is ignored, and may be 0, for the block formats).
//   w: the first row's bytes (a row tile is w + r0 · rowBytes); rows of cols / QK blocks (cols a multiple of the
//   block size); the bytes before w in its 16-byte aligned chunk must be readable (any address inside a device
//   allocation, or one that is 16-byte aligned). out: [num_rows, out_stride] TO, 16-byte aligned rows take
//   the vector stores.
//   Launch: grid (ceil(cols / 2048), min(num_rows, 65535)), block 128 (required); rows are looped over grid.y.
//   Each CTA stages its 2048 elements' blocks with 16-byte cp.async loads, then each thread decodes 16 elements.
#include "quant_blocks.cuh"

namespace tk {

constexpr int kDequantTile = 2048;

template <typename Q, typename TO>
__global__ void __launch_bounds__(128)
    dequant_rows(TO* out, int out_stride, const u8* __restrict__ w, const float* scale, int scale_stride, int num_rows, int cols) {
  using B = QB<Q>;
  constexpr int kTileBytes = kDequantTile / B::kQK * B::kBytes;
  __shared__ __align__(16) u8 ws[stage_chunks(kTileBytes) * 16 + 16];
  const i64 row_bytes = (i64)(cols / B::kQK) * B::kBytes;
  const u8* w_end = w + row_bytes * num_rows;
  const int e0 = blockIdx.x * kDequantTile;
  if (e0 >= cols) return;  // uniform over the CTA
  const int e1 = min(cols, e0 + kDequantTile);
  for (int r = blockIdx.y; r < num_rows; r += gridDim.y) {
    const u8* row = w + row_bytes * r;
    const u8* start = row + (i64)(e0 / B::kQK) * B::kBytes;
    __syncthreads();  // the previous row's reads of ws are done
    stage_bytes(ws, start, row + (i64)(e1 / B::kQK) * B::kBytes, w_end, threadIdx.x, blockDim.x);
    stage_commit();
    stage_wait<0>();
    __syncthreads();
    const int e = e0 + (int)threadIdx.x * 16;
    if (e < e1) {
      const int blk = (e - e0) / B::kQK;
      float q[16], s, o;
      B::decode16(ws + stage_offset(start) + blk * B::kBytes, ((e - e0) - blk * B::kQK) >> 4, q, s, o);
      float row_scale = 1.0f;
      if constexpr (B::kRowScale) row_scale = scale[(i64)r * scale_stride];
      float v[2][8];
#pragma unroll
      for (int i = 0; i < 16; i++) {
        float y = quant_value<Q>(s, q[i], o);
        if constexpr (B::kRowScale) y = qb_fmul(y, row_scale);
        v[i >> 3][i & 7] = y;
      }
      TO* dst = out + (i64)r * out_stride + e;
      if (aligned16(dst)) {
        store_pack<8>(dst, v[0]);
        store_pack<8>(dst + 8, v[1]);
      } else {
#pragma unroll
        for (int i = 0; i < 16; i++) store(dst + i, v[i >> 3][i & 7]);
      }
    }
  }
}

}  // namespace tk

// Bias add: out[r, c] += bias[c]. Linear layers add their bias in the
// cuBLASLt epilogue; this kernel is the fallback where an epilogue cannot
// (e.g. a bias dtype cuBLASLt does not take with that output type) and the
// CPU twin of CpuBackend.linear's bias term.
//
// Each thread handles 8 consecutive columns of a row. Launch: block 256,
// grid (ceil(cols / 2048), min(rows, 65535)); rows are looped grid-stride
// over grid.y. No shared memory.
#include "common.cuh"

namespace tk {

template <typename T, typename W>
__global__ void __launch_bounds__(256, 1) bias_add(T* __restrict__ out, int out_stride, const W* __restrict__ bias, int num_rows, int cols) {
  const i64 c64 = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (c64 >= cols) return;  // no barriers below
  const int c = (int)c64;
  const bool vec = c + 8 <= cols && aligned16(bias + c);
  float b[8];
  if (vec) {
    load_pack<8>(bias + c, b);
  } else {
#pragma unroll
    for (int j = 0; j < 8; j++) b[j] = c + j < cols ? load(bias + c + j) : 0.0f;
  }
  for (int r = blockIdx.y; r < num_rows; r += gridDim.y) {
    T* o = out + (i64)r * out_stride + c;
    if (vec && aligned16(o)) {
      float v[8];
      load_pack<8>(o, v);
#pragma unroll
      for (int j = 0; j < 8; j++) v[j] += b[j];
      store_pack<8>(o, v);
    } else {
      for (int j = 0; j < 8 && c + j < cols; j++) store(o + j, load(o + j) + b[j]);
    }
  }
}

}  // namespace tk

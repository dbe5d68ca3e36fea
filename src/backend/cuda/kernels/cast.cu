// Dtype conversion of a 2-D strided tensor: out[r, c] = TO(x[r, c]). Used to
// bring weights and tables into the dtype a kernel or cuBLASLt wants at load
// time, and to read results back as f32. Rounds to nearest even.
//
// Each thread handles 8 consecutive columns of a row. Launch: block 256,
// grid (ceil(cols / 2048), min(rows, 65535)); rows are looped grid-stride
// over grid.y. A contiguous tensor of any size is one row (rows = 1,
// cols = numel; cols < 2^31). No shared memory.
#include "common.cuh"

namespace tk {

template <typename TO, typename TI>
__global__ void __launch_bounds__(256, 1) cast(TO* __restrict__ out, int out_stride, const TI* __restrict__ x, int x_stride, int num_rows, int cols) {
  const i64 c64 = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (c64 >= cols) return;  // no barriers below
  const int c = (int)c64;
  for (int r = blockIdx.y; r < num_rows; r += gridDim.y) {
    const TI* src = x + (i64)r * x_stride + c;
    TO* dst = out + (i64)r * out_stride + c;
    if (c + 8 <= cols && aligned16(src) && aligned16(dst)) {
      float v[8];
      load_pack<8>(src, v);
      store_pack<8>(dst, v);
    } else {
      for (int j = 0; j < 8 && c + j < cols; j++) store(dst + j, load(src + j));
    }
  }
}

}  // namespace tk

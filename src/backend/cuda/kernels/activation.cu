// SiLU-and-multiply for the gated MLP. Twin of CpuBackend.siluAndMul.
//
//   x [rows, 2·inter] = [gate | up]  →  out [rows, inter] = silu(gate) · up,  silu(g) = g / (1 + e^-g)
//
// Each thread handles 8 consecutive columns of a row (one 16-byte pack when
// the rows are aligned, scalar otherwise), so a CTA covers 8·blockDim columns.
// Launch: block 256, grid (ceil(inter / 2048), min(rows, 65535)); rows are
// looped grid-stride over grid.y. No shared memory.
#include "common.cuh"

namespace tk {

template <typename T>
__global__ void __launch_bounds__(256, 1)
    silu_and_mul(T* __restrict__ out, int out_stride, const T* __restrict__ x, int x_stride, int num_rows, int inter) {
  const i64 c64 = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (c64 >= inter) return;  // no barriers below
  const int c = (int)c64;
  for (int r = blockIdx.y; r < num_rows; r += gridDim.y) {
    const T* gate = x + (i64)r * x_stride + c;
    const T* up = gate + inter;
    T* o = out + (i64)r * out_stride + c;
    if (c + 8 <= inter && aligned16(gate) && aligned16(up) && aligned16(o)) {
      float g[8], u[8];
      load_pack<8>(gate, g);
      load_pack<8>(up, u);
#pragma unroll
      for (int j = 0; j < 8; j++) g[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
      store_pack<8>(o, g);
    } else {
      for (int j = 0; j < 8 && c + j < inter; j++) {
        const float g = load(gate + j);
        store(o + j, g / (1.0f + expf(-g)) * load(up + j));
      }
    }
  }
}

}  // namespace tk

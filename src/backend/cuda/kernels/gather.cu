// Row gather: out[r, :] = x[indices[r], :]. Used to pick the rows whose
// logits are wanted (each sequence's last token) before the final norm and
// the LM head. Twin of CpuBackend.gatherRows.
//
// Launch: grid.x = numRows (the kernel strides over rows, so fewer CTAs also
// work), block 256 (any multiple of 32 up to 256, the launch bound), no shared memory.
// An index outside [0, numSrcRows) writes a zero row (the host validates).
#include "common.cuh"

namespace tk {

template <typename T>
__global__ void __launch_bounds__(256, 1) gather_rows(T* __restrict__ out, int out_stride, const T* __restrict__ x, int x_stride,
                                                    const int* __restrict__ indices, int num_rows, int num_src_rows, int cols) {
  for (int r = blockIdx.x; r < num_rows; r += gridDim.x) {
    const int i = indices[r];
    T* dst = out + (i64)r * out_stride;
    if (i < 0 || i >= num_src_rows) {
      zero_row(dst, cols, threadIdx.x, blockDim.x);
    } else {
      copy_row(dst, x + (i64)i * x_stride, cols, threadIdx.x, blockDim.x);
    }
  }
}

}  // namespace tk

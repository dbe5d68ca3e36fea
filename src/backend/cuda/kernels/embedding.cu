// Embedding gather: out[t, :] = table[ids[t], :], converting the table's dtype
// (the file's) to the activation dtype. Twin of CpuBackend.embedding.
//
// Launch: grid.x = numTokens (the kernel strides over tokens, so fewer CTAs
// also work), block 256 (any multiple of 32 up to 256, the launch bound), no shared memory.
// A token id outside [0, vocab) writes a zero row instead of reading out of
// bounds (the host validates ids before the step; this only keeps a bad id
// from faulting the device).
#include "common.cuh"

namespace tk {

template <typename TO, typename TT>
__global__ void __launch_bounds__(256, 1)
    embedding(TO* __restrict__ out, int out_stride, const int* __restrict__ ids, const TT* __restrict__ table, int table_stride, int hidden,
              int vocab, int num_tokens) {
  for (int t = blockIdx.x; t < num_tokens; t += gridDim.x) {
    const int id = ids[t];
    TO* dst = out + (i64)t * out_stride;
    if (id < 0 || id >= vocab) {
      zero_row(dst, hidden, threadIdx.x, blockDim.x);
    } else {
      copy_row(dst, table + (i64)id * table_stride, hidden, threadIdx.x, blockDim.x);
    }
  }
}

}  // namespace tk

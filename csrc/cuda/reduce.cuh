// Warp and block sums of the norm kernels, and the second stage of their deterministic
// reductions; results stay on the device.
//
// A sum over a buffer is taken in two stages instead of with floating-point atomics (whose order,
// and so whose rounding, changes from run to run): each block writes its partial sum to its own
// slot of a scratch buffer, then sum_partials_kernel adds the slots up in a fixed order. Both
// stages depend only on the sizes and the grid, so the same input gives the same bits every time.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace graphsam_ext {

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; the result is valid in thread 0. blockDim.x must be a multiple of 32.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T partial[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int nwarps = blockDim.x >> 5;
  v = threadIdx.x < nwarps ? partial[lane] : T(0);
  if (warp == 0) v = warp_sum(v);
  __syncthreads();
  return v;
}

// Second stage: out[s] = sum of partials[s * count, (s + 1) * count) (added to out[s] when
// accumulate), for s < nout; one block per output, each thread adding a fixed strided subset of
// the slots in order before the block's fixed tree.
template <typename T>
__global__ void sum_partials_kernel(const T* partials, int64_t count, int64_t nout, T* out, bool accumulate) {
  for (int64_t s = blockIdx.x; s < nout; s += gridDim.x) {
    T acc = T(0);
    for (int64_t j = threadIdx.x; j < count; j += blockDim.x) acc += partials[s * count + j];
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[s] = accumulate ? out[s] + acc : acc;
  }
}

}  // namespace graphsam_ext

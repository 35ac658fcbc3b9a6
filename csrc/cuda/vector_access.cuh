// 16-byte vector loads and stores for the flat-buffer kernels.
// A thread handles kPack consecutive elements per iteration (one float4, or two double2). The
// loads and stores are vectorized only where every buffer of a call sits at the same offset from
// a 16-byte boundary; a segment's elements before its first boundary (the head) and after its
// last full pack (the tail) go through the same per-element code one element at a time.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

namespace graphsam_ext {

constexpr int kPack = 4;  // elements per thread per iteration

template <typename T>
struct Vec16;

template <>
struct Vec16<float> {
  using type = float4;
  static constexpr int width = 4;
  __device__ __forceinline__ static void unpack(const float4& a, float* out) {
    out[0] = a.x;
    out[1] = a.y;
    out[2] = a.z;
    out[3] = a.w;
  }
  __device__ __forceinline__ static float4 pack(const float* in) { return make_float4(in[0], in[1], in[2], in[3]); }
};

template <>
struct Vec16<double> {
  using type = double2;
  static constexpr int width = 2;
  __device__ __forceinline__ static void unpack(const double2& a, double* out) {
    out[0] = a.x;
    out[1] = a.y;
  }
  __device__ __forceinline__ static double2 pack(const double* in) { return make_double2(in[0], in[1]); }
};

// How a kernel body touches memory: N consecutive elements, as 16-byte vectors or one by one.
template <int N, bool Vector>
struct Access {
  static constexpr int n = N;
  static constexpr bool vector = Vector;
};
using ScalarAccess = Access<1, false>;
using PackedAccess = Access<kPack, true>;

template <typename A, typename T>
__device__ __forceinline__ void load(const T* ptr, T (&out)[A::n]) {
  if constexpr (A::vector) {
    using V = Vec16<T>;
    static_assert(A::n % V::width == 0, "a pack is a whole number of 16-byte vectors");
#pragma unroll
    for (int c = 0; c < A::n / V::width; ++c) {
      V::unpack(reinterpret_cast<const typename V::type*>(ptr)[c], out + c * V::width);
    }
  } else {
#pragma unroll
    for (int k = 0; k < A::n; ++k) out[k] = ptr[k];
  }
}

template <typename A, typename T>
__device__ __forceinline__ void store(T* ptr, const T (&in)[A::n]) {
  if constexpr (A::vector) {
    using V = Vec16<T>;
#pragma unroll
    for (int c = 0; c < A::n / V::width; ++c) {
      reinterpret_cast<typename V::type*>(ptr)[c] = V::pack(in + c * V::width);
    }
  } else {
#pragma unroll
    for (int k = 0; k < A::n; ++k) ptr[k] = in[k];
  }
}

// The offset, in elements, of the buffers from a 16-byte boundary when they all share one;
// -1 when they do not (the kernels then run element by element). Null pointers are ignored.
template <typename T>
int common_alignment(std::initializer_list<const void*> buffers) {
  int64_t bytes = -1;
  for (const void* ptr : buffers) {
    if (ptr == nullptr) continue;
    const auto b = static_cast<int64_t>(reinterpret_cast<std::uintptr_t>(ptr) % 16);
    if (b % static_cast<int64_t>(sizeof(T)) != 0 || (bytes >= 0 && b != bytes)) return -1;
    bytes = b;
  }
  return bytes < 0 ? 0 : static_cast<int>(bytes / static_cast<int64_t>(sizeof(T)));
}

// Calls body(i, PackedAccess{}) for each full pack of [lo, hi) that starts on a 16-byte boundary,
// and body(i, ScalarAccess{}) for the elements before the first one and after the last; the
// threads of the grid (blockIdx.x, threadIdx.x) share the work. align: the buffers' common
// offset from a 16-byte boundary (common_alignment), -1 for element-by-element access only.
// Which thread sees which elements, and in what order, depends only on lo, hi, align and the
// grid's x size, so per-thread sums are reproducible.
template <typename T, typename Body>
__device__ __forceinline__ void for_each_pack(int64_t lo, int64_t hi, int align, Body&& body) {
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t body_lo = hi, body_hi = hi;
  if (align >= 0) {
    constexpr int64_t width = Vec16<T>::width;
    const int64_t head = (width - (align + lo) % width) % width;
    body_lo = lo + head < hi ? lo + head : hi;
    body_hi = body_lo + (hi - body_lo) / kPack * kPack;
  }
  for (int64_t i = body_lo + tid * kPack; i < body_hi; i += stride * kPack) body(i, PackedAccess{});
  const int64_t head = body_lo - lo;
  const int64_t rest = head + (hi - body_hi);
  for (int64_t j = tid; j < rest; j += stride) body(j < head ? lo + j : body_hi + (j - head), ScalarAccess{});
}

}  // namespace graphsam_ext

// The random keep decision of the dropout op, shared by the CPU and CUDA kernels (and written
// again with int64 tensor ops in graphsam_ext/ops/reference.py, the test oracle).
//
// Element i of a call with 64-bit seed s gets the 64-bit output of splitmix64 (Steele, Lea and
// Flood, 2014) at counter i + 1 of the stream s: z = s + (i + 1) * gamma, then the splitmix64
// finalizer. Nothing depends on which thread (or GPU block) handles i, so every backend and
// every thread count produce the same mask, and backward regenerates it from (s, i) instead of
// storing it. The keep decision uses the high 32 bits r of that output: the element is kept when
// r >= t with t = round(p * 2^32), so P(keep) = 1 - t / 2^32, within 2^-33 of 1 - p.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GSE_DROPOUT_HD __host__ __device__ __forceinline__
#else
#define GSE_DROPOUT_HD inline
#endif

namespace graphsam_ext {
namespace dropout_math {

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;  // 2^64 / golden ratio, odd
constexpr uint64_t kMix1 = 0xBF58476D1CE4E5B9ull;
constexpr uint64_t kMix2 = 0x94D049BB133111EBull;

// The 32 random bits of element `index` of stream `seed`, in the low half of the result.
GSE_DROPOUT_HD uint64_t random_bits(uint64_t seed, uint64_t index) {
  uint64_t z = seed + (index + 1) * kGamma;
  z = (z ^ (z >> 30)) * kMix1;
  z = (z ^ (z >> 27)) * kMix2;
  z ^= z >> 31;
  return z >> 32;
}

// t = round(p * 2^32) in [0, 2^32] for p in [0, 1): an element is dropped when its bits are < t.
// p * 2^32 + 0.5 is exact in double (below 2^33), so the rounding is the same on every backend.
inline uint64_t drop_threshold(double p) { return static_cast<uint64_t>(std::floor(p * 4294967296.0 + 0.5)); }

// 1 / (1 - p), the factor of a kept element, rounded once to the arithmetic type.
inline double keep_scale(double p) { return 1.0 / (1.0 - p); }

}  // namespace dropout_math
}  // namespace graphsam_ext

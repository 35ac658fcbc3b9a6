// CPU kernel of the dropout op: out = x * (keep ? 1 / (1 - p) : 0) with the counter-based keep
// decision of dropout_math.h. The same op applied to the output gradient is its backward.
// at::parallel_for splits the elements into ranges; each element's bits depend only on (seed,
// index), so the result is the same for any number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cstdint>

#include "dropout_math.h"

namespace graphsam_ext {
namespace {

constexpr const char* kOp = "dropout (CPU)";
constexpr int64_t kGrain = 32768;

// The loops are compiled for AVX-512 (64-bit multiplies in one instruction), AVX2 and the
// baseline, and picked at load time; the arithmetic is integer hashing and one rounded multiply
// per element, so every version gives the same bits.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define GSE_DROPOUT_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define GSE_DROPOUT_CLONES
#endif

template <typename scalar_t>
__attribute__((always_inline)) inline void dropout_range_impl(const scalar_t* __restrict__ x,
                                                              scalar_t* __restrict__ out, int64_t lo, int64_t hi,
                                                              uint64_t seed, uint64_t threshold,
                                                              at::opmath_type<scalar_t> scale) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = lo; i < hi; ++i) {
    const bool keep = dropout_math::random_bits(seed, static_cast<uint64_t>(i)) >= threshold;
    out[i] = static_cast<scalar_t>(static_cast<acc_t>(x[i]) * (keep ? scale : acc_t(0)));
  }
}

// One non-template function per dtype: target_clones applies to plain functions.
GSE_DROPOUT_CLONES void dropout_range(const float* x, float* out, int64_t lo, int64_t hi, uint64_t seed,
                                      uint64_t threshold, float scale) {
  dropout_range_impl(x, out, lo, hi, seed, threshold, scale);
}
GSE_DROPOUT_CLONES void dropout_range(const double* x, double* out, int64_t lo, int64_t hi, uint64_t seed,
                                      uint64_t threshold, double scale) {
  dropout_range_impl(x, out, lo, hi, seed, threshold, scale);
}
GSE_DROPOUT_CLONES void dropout_range(const c10::BFloat16* x, c10::BFloat16* out, int64_t lo, int64_t hi,
                                      uint64_t seed, uint64_t threshold, float scale) {
  dropout_range_impl(x, out, lo, hi, seed, threshold, scale);
}
GSE_DROPOUT_CLONES void dropout_range(const c10::Half* x, c10::Half* out, int64_t lo, int64_t hi, uint64_t seed,
                                      uint64_t threshold, float scale) {
  dropout_range_impl(x, out, lo, hi, seed, threshold, scale);
}

at::Tensor dropout_cpu(const at::Tensor& x, double p, const at::Tensor& seed) {
  TORCH_CHECK_VALUE(p >= 0.0 && p < 1.0, kOp, ": p must be in [0, 1), got ", p);
  const auto st = x.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf, kOp,
                   ": x must be float32, float64, bfloat16 or float16, got ", st);
  TORCH_CHECK_VALUE(x.device().is_cpu(), kOp, ": x must be on the CPU, got ", x.device());
  TORCH_CHECK_VALUE(seed.device().is_cpu() && seed.scalar_type() == at::kLong && seed.numel() == 1, kOp,
                    ": seed must be a one-element int64 CPU tensor, got ", seed.scalar_type(), " with ",
                    seed.numel(), " elements on ", seed.device(), "; draw one with graphsam_ext.ops.draw_dropout_seed()");
  const at::Tensor input = x.contiguous();
  at::Tensor out = at::empty(input.sizes(), input.options());
  const uint64_t s = static_cast<uint64_t>(seed.item<int64_t>());
  const uint64_t threshold = dropout_math::drop_threshold(p);
  const double scale = dropout_math::keep_scale(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st, "dropout_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = input.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const acc_t sc = static_cast<acc_t>(scale);
    at::parallel_for(0, input.numel(), kGrain, [&](int64_t lo, int64_t hi) {
      dropout_range(xp, op, lo, hi, s, threshold, sc);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(graphsam_ext, CPU, m) { m.impl("dropout", &dropout_cpu); }

}  // namespace graphsam_ext

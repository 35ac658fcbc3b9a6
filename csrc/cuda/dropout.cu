// CUDA kernel of the dropout op, the same expression as csrc/cpu/dropout.cpp: out = x * (keep ?
// 1 / (1 - p) : 0) with the counter-based keep decision of dropout_math.h, so both backends give
// the same mask for a seed. Grid-stride over elements; 64-bit indices. The seed is a CPU tensor
// read on the host at launch (no device synchronization); it reaches the kernel as an argument.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "dropout_math.h"

namespace graphsam_ext {
namespace {

constexpr const char* kOp = "dropout (CUDA)";
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

template <typename scalar_t>
__global__ void dropout_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int64_t n, uint64_t seed,
                               uint64_t threshold, at::opmath_type<scalar_t> scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const bool keep = dropout_math::random_bits(seed, static_cast<uint64_t>(i)) >= threshold;
    out[i] = static_cast<scalar_t>(static_cast<acc_t>(x[i]) * (keep ? scale : acc_t(0)));
  }
}

at::Tensor dropout_cuda(const at::Tensor& x, double p, const at::Tensor& seed) {
  TORCH_CHECK_VALUE(p >= 0.0 && p < 1.0, kOp, ": p must be in [0, 1), got ", p);
  const auto st = x.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf, kOp,
                   ": x must be float32, float64, bfloat16 or float16, got ", st);
  TORCH_CHECK_VALUE(x.is_cuda(), kOp, ": x must be a CUDA tensor, got one on ", x.device());
  TORCH_CHECK_VALUE(seed.device().is_cpu() && seed.scalar_type() == at::kLong && seed.numel() == 1, kOp,
                    ": seed must be a one-element int64 CPU tensor (a GPU value would have to be read back, "
                    "a host sync), got ", seed.scalar_type(), " with ", seed.numel(), " elements on ", seed.device(),
                    "; draw one with graphsam_ext.ops.draw_dropout_seed()");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor input = x.contiguous();
  at::Tensor out = at::empty(input.sizes(), input.options());
  const int64_t n = input.numel();
  if (n == 0) return out;
  const uint64_t s = static_cast<uint64_t>(seed.item<int64_t>());
  const uint64_t threshold = dropout_math::drop_threshold(p);
  const double scale = dropout_math::keep_scale(p);
  const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st, "dropout_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dropout_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(input.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                                              n, s, threshold, static_cast<acc_t>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(graphsam_ext, CUDA, m) { m.impl("dropout", &dropout_cuda); }

}  // namespace graphsam_ext

// CUDA kernels of the flat-buffer SAM / GraphSAM / Adam / SGD ops.
// Segmented kernels use a 2-D grid: blockIdx.y walks the segments (tensors), blockIdx.x strides
// inside one, so no per-element segment search is needed. Scales, the skip flag and Adam's step
// are read from device memory: a step never synchronizes with the host.
// Only c10/cuda headers: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "checks.h"
#include "cuda/reduce.cuh"
#include "sam_math.h"

namespace graphsam_ext {
namespace {

constexpr const char* kBackend = "CUDA";
constexpr int kThreads = 256;

struct Segments {
  const int64_t* offsets;  // nullptr: one segment [0, n)
  int64_t n;
  int64_t nseg;
  __device__ __forceinline__ void range(int64_t seg, int64_t& lo, int64_t& hi) const {
    lo = offsets ? offsets[seg] : 0;
    hi = offsets ? offsets[seg + 1] : n;
  }
};

Segments make_segments(const c10::optional<at::Tensor>& offsets, int64_t n, int64_t nseg) {
  return Segments{offsets ? offsets->data_ptr<int64_t>() : nullptr, n, offsets ? nseg : 1};
}

dim3 segmented_grid(int64_t n, int64_t nseg) {
  const int64_t per_seg = std::max<int64_t>(1, n / std::max<int64_t>(1, nseg));
  const int64_t bx = std::min<int64_t>(std::max<int64_t>(1, (per_seg + kThreads * 4 - 1) / (kThreads * 4)), 1024);
  return dim3(static_cast<unsigned>(bx), static_cast<unsigned>(std::min<int64_t>(nseg, 65535)));
}

// The flag (checked by the op's argument checks) as a bool on the device, read by the kernel.
const bool* skip_ptr(const c10::optional<at::Tensor>& skip, at::Tensor& holder) {
  if (!skip.has_value()) return nullptr;
  holder = skip->to(at::kBool).contiguous();
  return holder.data_ptr<bool>();
}

// The skip flag and the step count of a base update, as device pointers the kernel reads.
struct StepScalars {
  at::Tensor skip_holder, step64;
  const bool* skip;
  const double* step;
  StepScalars(const c10::optional<at::Tensor>& skip_flag, const at::Tensor& step_count)
      : step64(step_count.to(at::kDouble).contiguous()) {
    skip = skip_ptr(skip_flag, skip_holder);
    step = step64.data_ptr<double>();
  }
};

template <typename T>
__global__ void sum_squares_kernel(const T* x, const T* w, int power, double shift, Segments segs, double* out) {
  for (int64_t seg = blockIdx.y; seg < segs.nseg; seg += gridDim.y) {
    int64_t lo, hi;
    segs.range(seg, lo, hi);
    double acc = 0.0;
    for (int64_t i = lo + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < hi; i += int64_t(gridDim.x) * blockDim.x)
      acc += square_term<T, double>(x[i], w ? w[i] : T(0), power, shift);
    acc = block_sum(acc);
    if (threadIdx.x == 0 && acc != 0.0) atomicAdd(out + seg, acc);
  }
}

template <typename T>
void launch_sum_squares(const T* x, const T* w, int power, double shift, Segments segs, double* out,
                        cudaStream_t stream) {
  if (segs.n == 0) return;
  sum_squares_kernel<T><<<segmented_grid(segs.n, segs.nseg), kThreads, 0, stream>>>(x, w, power, shift, segs, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor sum_squares_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                            const c10::optional<at::Tensor>& offsets, int64_t weight_power, double shift) {
  const int64_t nseg = check_sum_squares(x, weight, offsets, weight_power, kBackend);
  const c10::cuda::CUDAGuard guard(x.device());
  const Segments segs = make_segments(offsets, x.numel(), nseg);
  at::Tensor out = at::zeros({segs.nseg}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sum_squares_cuda", [&] {
    launch_sum_squares<scalar_t>(x.data_ptr<scalar_t>(), weight ? weight->data_ptr<scalar_t>() : nullptr,
                                 static_cast<int>(weight_power), shift, segs, out.data_ptr<double>(),
                                 c10::cuda::getCurrentCUDAStream());
  });
  return offsets ? out : out.squeeze(0);
}

void zero_cuda(at::Tensor& x) {
  check_param(x, "zero_", kBackend);
  const c10::cuda::CUDAGuard guard(x.device());
  x.zero_();
}

template <typename T>
__global__ void perturb_kernel(T* p, T* backup, const T* d, const double* scale, bool adaptive, const bool* skip,
                               Segments segs) {
  const bool skipped = skip != nullptr && *skip;
  for (int64_t seg = blockIdx.y; seg < segs.nseg; seg += gridDim.y) {
    int64_t lo, hi;
    segs.range(seg, lo, hi);
    const T s = static_cast<T>(scale[segs.offsets ? seg : 0]);
    for (int64_t i = lo + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < hi; i += int64_t(gridDim.x) * blockDim.x) {
      const T pi = p[i];
      backup[i] = pi;
      if (!skipped) p[i] = perturb_element<T>(pi, d[i], s, adaptive);
    }
  }
}

void perturb_cuda(at::Tensor& param, at::Tensor& backup, const at::Tensor& direction, const at::Tensor& scale,
                  const c10::optional<at::Tensor>& offsets, bool adaptive, const c10::optional<at::Tensor>& skip) {
  const int64_t nseg = check_perturb(param, backup, direction, scale, offsets, skip, kBackend);
  if (param.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(param.device());
  at::Tensor skip_holder;
  const bool* sk = skip_ptr(skip, skip_holder);
  const at::Tensor scale64 = scale.to(at::kDouble).contiguous();
  const Segments segs = make_segments(offsets, param.numel(), nseg);
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "perturb_cuda", [&] {
    perturb_kernel<scalar_t><<<segmented_grid(segs.n, segs.nseg), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        param.data_ptr<scalar_t>(), backup.data_ptr<scalar_t>(), direction.data_ptr<scalar_t>(),
        scale64.data_ptr<double>(), adaptive, sk, segs);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The optional GraphSAM direction EMA of a base update, as the kernels see it. Without a direction
// the update runs as one segment and d is nullptr.
template <typename T>
struct DeviceFold {
  T* d;
  const double* inv;  // one per segment, or one
  T beta, one_minus_beta;
  double* out;        // ||d_new||^2 is added here
};

// Host side of the fold: checks done, holds the float64 inv_norm alive during the launch.
struct FoldArgs {
  at::Tensor direction, direction_sq, inv64;  // undefined without a direction
  Segments segs;
  double beta;

  FoldArgs(const at::Tensor& param, const c10::optional<at::Tensor>& d, const c10::optional<at::Tensor>& inv_norm,
           const c10::optional<at::Tensor>& offsets, int64_t nseg, double b, const c10::optional<at::Tensor>& dsq)
      : segs(make_segments(offsets, param.numel(), nseg)), beta(b) {
    if (!d.has_value()) return;
    direction = *d;
    direction_sq = *dsq;
    inv64 = inv_norm->to(at::kDouble).contiguous();
  }
  dim3 grid() const { return segmented_grid(segs.n, segs.nseg); }
  template <typename T>
  DeviceFold<T> device() const {
    if (!direction.defined()) return DeviceFold<T>{nullptr, nullptr, T(0), T(1), nullptr};
    return DeviceFold<T>{direction.data_ptr<T>(), inv64.data_ptr<double>(), static_cast<T>(beta),
                         static_cast<T>(1.0 - beta), direction_sq.data_ptr<double>()};
  }
};

// Folds g into the EMA at element i (unless skipped) and returns the new d_i.
template <typename T>
__device__ __forceinline__ T fold_element(const DeviceFold<T>& fold, int64_t i, T g, T inv, bool skipped,
                                          bool init = false) {
  T di = fold.d[i];
  if (!skipped) {
    di = direction_element<T>(di, g, inv, fold.beta, fold.one_minus_beta, init);
    fold.d[i] = di;
  }
  return di;
}

template <typename T>
__device__ __forceinline__ void add_fold_sum(const DeviceFold<T>& fold, double acc) {
  acc = block_sum(acc);
  if (threadIdx.x == 0 && acc != 0.0) atomicAdd(fold.out, acc);
}

// Grid-stride loop over every segment. With a direction, each element's g is folded into the EMA
// first and the block's sum of d_new^2 is added to the total; update(i, g_i) then does the base
// optimizer's part.
template <typename T, typename Update>
__device__ __forceinline__ void fold_and_update(const T* g, const DeviceFold<T>& fold, bool skipped, bool init,
                                                const Segments& segs, Update&& update) {
  for (int64_t seg = blockIdx.y; seg < segs.nseg; seg += gridDim.y) {
    int64_t lo, hi;
    segs.range(seg, lo, hi);
    const T inv = fold.d ? static_cast<T>(fold.inv[segs.offsets ? seg : 0]) : T(0);
    double acc = 0.0;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = lo + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < hi; i += stride) {
      const T gi = g[i];
      if (fold.d) {
        const T di = fold_element(fold, i, gi, inv, skipped, init);
        acc += static_cast<double>(di) * static_cast<double>(di);
      }
      update(i, gi);
    }
    if (fold.d) add_fold_sum(fold, acc);
  }
}

// direction_update_: the fold on its own (no base update), optionally as the EMA's start.
template <typename T>
__global__ void direction_kernel(const T* g, DeviceFold<T> fold, bool init, const bool* skip, Segments segs) {
  const bool skipped = skip != nullptr && *skip;
  fold_and_update(g, fold, skipped, init, segs, [](int64_t, T) {});
}

at::Tensor direction_update_cuda(at::Tensor& direction, const at::Tensor& grad, const at::Tensor& inv_norm,
                                 const c10::optional<at::Tensor>& offsets, double beta, bool init,
                                 const c10::optional<at::Tensor>& skip) {
  const int64_t nseg = check_direction_update(direction, grad, inv_norm, offsets, beta, skip, kBackend);
  const c10::cuda::CUDAGuard guard(direction.device());
  at::Tensor out = at::zeros({}, direction.options().dtype(at::kDouble));
  if (direction.numel() == 0) return out;
  at::Tensor skip_holder;
  const bool* sk = skip_ptr(skip, skip_holder);
  const FoldArgs fold(direction, direction, inv_norm, offsets, nseg, beta, out);
  AT_DISPATCH_FLOATING_TYPES(direction.scalar_type(), "direction_update_cuda", [&] {
    direction_kernel<scalar_t><<<fold.grid(), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        grad.data_ptr<scalar_t>(), fold.device<scalar_t>(), init, sk, fold.segs);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

template <typename T>
__global__ void adam_kernel(T* p, const T* src, const T* g, T* m, T* v, const double* step, const bool* skip,
                            Segments segs, DeviceFold<T> fold, double lr, double beta1, double beta2, double eps,
                            double weight_decay, bool decoupled) {
  const bool skipped = skip != nullptr && *skip;
  const AdamBias bias = adam_bias(*step, lr, beta1, beta2);
  const T omb1 = static_cast<T>(1.0 - beta1), b2 = static_cast<T>(beta2), omb2 = static_cast<T>(1.0 - beta2),
          ep = static_cast<T>(eps), wd = static_cast<T>(weight_decay), decay = static_cast<T>(1.0 - lr * weight_decay),
          ss = static_cast<T>(bias.step_size), bc2 = static_cast<T>(bias.bc2_sqrt);
  fold_and_update(g, fold, skipped, false, segs, [&](int64_t i, T gi) {
    T pi = src[i];
    if (!skipped) {
      T mi = m[i], vi = v[i];
      adam_element<T>(pi, gi, mi, vi, omb1, b2, omb2, ep, wd, decoupled, decay, ss, bc2);
      m[i] = mi;
      v[i] = vi;
    }
    p[i] = pi;
  });
}

void adam_step_cuda(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                    const at::Tensor& step, const c10::optional<at::Tensor>& source,
                    const c10::optional<at::Tensor>& skip, double lr, double beta1, double beta2, double eps,
                    double weight_decay, bool decoupled, const c10::optional<at::Tensor>& direction,
                    const c10::optional<at::Tensor>& inv_norm, const c10::optional<at::Tensor>& offsets, double beta,
                    const c10::optional<at::Tensor>& direction_sq) {
  const BaseStepArgs args{param, grad, step, source, skip, direction, inv_norm, offsets, beta, direction_sq};
  const int64_t nseg = check_adam_step(args, exp_avg, exp_avg_sq, kBackend);
  if (param.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(param.device());
  const StepScalars scalars(skip, step);
  const FoldArgs fold(param, direction, inv_norm, offsets, nseg, beta, direction_sq);
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "adam_step_cuda", [&] {
    scalar_t* p = param.data_ptr<scalar_t>();
    adam_kernel<scalar_t><<<fold.grid(), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        p, source ? source->data_ptr<scalar_t>() : p, grad.data_ptr<scalar_t>(), exp_avg.data_ptr<scalar_t>(),
        exp_avg_sq.data_ptr<scalar_t>(), scalars.step, scalars.skip, fold.segs, fold.device<scalar_t>(), lr, beta1,
        beta2, eps, weight_decay, decoupled);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename T>
__global__ void sgd_kernel(T* p, const T* src, const T* g, T* buf, const double* step, const bool* skip,
                           Segments segs, DeviceFold<T> fold, T lr, T momentum, T one_minus_dampening,
                           T weight_decay, bool nesterov) {
  const bool skipped = skip != nullptr && *skip;
  const bool first = *step <= 1.0;
  fold_and_update(g, fold, skipped, false, segs, [&](int64_t i, T gi) {
    T pi = src[i];
    if (!skipped) sgd_element<T>(pi, gi, buf ? buf + i : nullptr, first, lr, momentum, one_minus_dampening,
                                 weight_decay, nesterov);
    p[i] = pi;
  });
}

void sgd_step_cuda(at::Tensor& param, const at::Tensor& grad, at::Tensor& momentum_buffer, const at::Tensor& step,
                   const c10::optional<at::Tensor>& source, const c10::optional<at::Tensor>& skip, double lr,
                   double momentum, double dampening, double weight_decay, bool nesterov,
                   const c10::optional<at::Tensor>& direction, const c10::optional<at::Tensor>& inv_norm,
                   const c10::optional<at::Tensor>& offsets, double beta,
                   const c10::optional<at::Tensor>& direction_sq) {
  const BaseStepArgs args{param, grad, step, source, skip, direction, inv_norm, offsets, beta, direction_sq};
  const int64_t nseg = check_sgd_step(args, momentum_buffer, momentum, kBackend);
  if (param.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(param.device());
  const StepScalars scalars(skip, step);
  const FoldArgs fold(param, direction, inv_norm, offsets, nseg, beta, direction_sq);
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "sgd_step_cuda", [&] {
    scalar_t* p = param.data_ptr<scalar_t>();
    sgd_kernel<scalar_t><<<fold.grid(), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        p, source ? source->data_ptr<scalar_t>() : p, grad.data_ptr<scalar_t>(),
        momentum != 0.0 ? momentum_buffer.data_ptr<scalar_t>() : nullptr, scalars.step, scalars.skip, fold.segs,
        fold.device<scalar_t>(), static_cast<scalar_t>(lr), static_cast<scalar_t>(momentum),
        static_cast<scalar_t>(1.0 - dampening), static_cast<scalar_t>(weight_decay), nesterov);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(graphsam_ext, CUDA, m) {
  m.impl("sum_squares", &sum_squares_cuda);
  m.impl("zero_", &zero_cuda);
  m.impl("perturb_", &perturb_cuda);
  m.impl("direction_update_", &direction_update_cuda);
  m.impl("adam_step_", &adam_step_cuda);
  m.impl("sgd_step_", &sgd_step_cuda);
}

}  // namespace graphsam_ext

// CUDA kernels of the flat-buffer SAM / GraphSAM / Adam / SGD ops.
// Segmented kernels use a 2-D grid: blockIdx.y walks the segments (tensors), blockIdx.x strides
// inside one, so no per-element segment search is needed. Each thread takes kPack elements at a
// time with 16-byte loads and stores where the buffers' alignment allows (vector_access.cuh);
// the per-element arithmetic is the one of sam_math.h, shared with the CPU kernels. Sums of
// squares are two-stage and deterministic (reduce.cuh). Scales, the skip flag and Adam's step are
// read from device memory: a step never synchronizes with the host.
// Only c10/cuda headers: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "checks.h"
#include "cuda/reduce.cuh"
#include "cuda/vector_access.cuh"
#include "sam_math.h"

namespace graphsam_ext {
namespace {

constexpr const char* kBackend = "CUDA";
constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;

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

// Enough blocks in x for one pack per thread of an average segment, at most 1024.
dim3 segmented_grid(int64_t n, int64_t nseg) {
  const int64_t per_seg = std::max<int64_t>(1, n / std::max<int64_t>(1, nseg));
  const int64_t per_block = int64_t(kThreads) * kPack;
  const int64_t bx = std::min<int64_t>(std::max<int64_t>(1, (per_seg + per_block - 1) / per_block), 1024);
  return dim3(static_cast<unsigned>(bx), static_cast<unsigned>(std::min<int64_t>(nseg, kMaxGridY)));
}

// One slot per (segment, block in x) for the first stage of a deterministic sum.
at::Tensor partial_sums(const at::Tensor& like, const dim3& grid, int64_t nseg) {
  return at::empty({nseg * int64_t(grid.x)}, like.options().dtype(at::kDouble));
}

// The block's share of a segment's sum, into its own slot (every block writes every slot it owns,
// zero included, so the scratch buffer needs no initialization).
__device__ __forceinline__ void write_partial(double acc, int64_t seg, double* partials) {
  acc = block_sum(acc);
  if (threadIdx.x == 0) partials[seg * gridDim.x + blockIdx.x] = acc;
}

// out[s] (+)= the partial sums of segment s, for nout outputs of count slots each.
void launch_sum_partials(const at::Tensor& partials, int64_t count, int64_t nout, double* out, bool accumulate,
                         cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(nout, kMaxGridY));
  sum_partials_kernel<double><<<blocks, kThreads, 0, stream>>>(partials.data_ptr<double>(), count, nout, out,
                                                               accumulate);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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

// unscale == nullptr: a plain sum. Otherwise x is unscale (the same buffer), multiplied in place by
// the reciprocal of *grad_scale (float64, rounded to T once, as GradScaler.unscale_) before it is summed.
template <typename T>
__global__ void sum_squares_kernel(const T* x, const T* w, int power, double shift, Segments segs, int align,
                                   double* partials, T* unscale = nullptr, const double* grad_scale = nullptr) {
  const T inv = unscale != nullptr ? static_cast<T>(1.0 / *grad_scale) : T(1);
  for (int64_t seg = blockIdx.y; seg < segs.nseg; seg += gridDim.y) {
    int64_t lo, hi;
    segs.range(seg, lo, hi);
    double acc = 0.0;
    for_each_pack<T>(lo, hi, align, [&](int64_t i, auto access) {
      using A = decltype(access);
      T xv[A::n], wv[A::n];
      load<A>(x + i, xv);
      if (unscale != nullptr) {
#pragma unroll
        for (int k = 0; k < A::n; ++k) xv[k] = xv[k] * inv;
        store<A>(unscale + i, xv);
      }
      if (w != nullptr) {
        load<A>(w + i, wv);
      } else {
#pragma unroll
        for (int k = 0; k < A::n; ++k) wv[k] = T(0);
      }
#pragma unroll
      for (int k = 0; k < A::n; ++k) acc += square_term<T, double>(xv[k], wv[k], power, shift);
    });
    write_partial(acc, seg, partials);
  }
}

// The (nseg,) sums of squares of x; with scale64 (the loss scale as a float64 device tensor) x is
// first unscaled in place, in the same pass.
at::Tensor launch_sum_squares(const at::Tensor& x, const c10::optional<at::Tensor>& weight, const Segments& segs,
                              int64_t weight_power, double shift, const at::Tensor* scale64) {
  if (segs.n == 0) return at::zeros({segs.nseg}, x.options().dtype(at::kDouble));
  at::Tensor out = at::empty({segs.nseg}, x.options().dtype(at::kDouble));
  const dim3 grid = segmented_grid(segs.n, segs.nseg);
  const at::Tensor partials = partial_sums(x, grid, segs.nseg);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sum_squares_cuda", [&] {
    scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = weight_power > 0 ? weight->data_ptr<scalar_t>() : nullptr;
    sum_squares_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        xp, wp, static_cast<int>(weight_power), shift, segs, common_alignment<scalar_t>({xp, wp}),
        partials.data_ptr<double>(), scale64 ? xp : nullptr,
        scale64 ? scale64->data_ptr<double>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  launch_sum_partials(partials, grid.x, segs.nseg, out.data_ptr<double>(), false, stream);
  return out;
}

at::Tensor sum_squares_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                            const c10::optional<at::Tensor>& offsets, int64_t weight_power, double shift) {
  const int64_t nseg = check_sum_squares(x, weight, offsets, weight_power, kBackend);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor out = launch_sum_squares(x, weight, make_segments(offsets, x.numel(), nseg), weight_power, shift,
                                            nullptr);
  return offsets ? out : out.squeeze(0);
}

// found_inf <- 1 where one of the n sums is not finite (every thread that finds one writes the same value).
__global__ void flag_nonfinite_kernel(const double* sums, int64_t n, float* found_inf) {
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    if (!isfinite(sums[i])) *found_inf = 1.0f;
}

// x <- x / grad_scale in place and sum_squares of the result, in one pass; found_inf <- 1 where a
// segment's sum is not finite. The scale is read on the device: no synchronization.
at::Tensor unscale_sum_squares_cuda(at::Tensor& x, const at::Tensor& grad_scale, at::Tensor& found_inf,
                                    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& offsets,
                                    int64_t weight_power, double shift) {
  const int64_t nseg = check_unscale_sum_squares(x, grad_scale, found_inf, weight, offsets, weight_power, kBackend);
  const c10::cuda::CUDAGuard guard(x.device());
  const Segments segs = make_segments(offsets, x.numel(), nseg);
  const at::Tensor scale64 = grad_scale.to(at::kDouble).contiguous();
  const at::Tensor out = launch_sum_squares(x, weight, segs, weight_power, shift, &scale64);
  if (segs.n > 0) {
    flag_nonfinite_kernel<<<1, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(out.data_ptr<double>(), segs.nseg,
                                                                                 found_inf.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return offsets ? out : out.squeeze(0);
}

void zero_cuda(at::Tensor& x) {
  check_param(x, "zero_", kBackend);
  const c10::cuda::CUDAGuard guard(x.device());
  x.zero_();
}

template <typename T>
__global__ void perturb_kernel(T* p, T* backup, const T* d, const double* scale, bool adaptive, const bool* skip,
                               Segments segs, int align) {
  const bool skipped = skip != nullptr && *skip;
  for (int64_t seg = blockIdx.y; seg < segs.nseg; seg += gridDim.y) {
    int64_t lo, hi;
    segs.range(seg, lo, hi);
    const T s = static_cast<T>(scale[segs.offsets ? seg : 0]);
    for_each_pack<T>(lo, hi, align, [&](int64_t i, auto access) {
      using A = decltype(access);
      T pv[A::n], dv[A::n];
      load<A>(p + i, pv);
      load<A>(d + i, dv);
      store<A>(backup + i, pv);
      if (skipped) return;
#pragma unroll
      for (int k = 0; k < A::n; ++k) pv[k] = perturb_element<T>(pv[k], dv[k], s, adaptive);
      store<A>(p + i, pv);
    });
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
    scalar_t* p = param.data_ptr<scalar_t>();
    scalar_t* b = backup.data_ptr<scalar_t>();
    const scalar_t* d = direction.data_ptr<scalar_t>();
    perturb_kernel<scalar_t><<<segmented_grid(segs.n, segs.nseg), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        p, b, d, scale64.data_ptr<double>(), adaptive, sk, segs, common_alignment<scalar_t>({p, b, d}));
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
  double* partials;   // first stage of ||d_new||^2: one slot per (segment, block in x)
};

// Host side of the fold: checks done, holds the float64 inv_norm and the partial sums alive
// during the launch; finish() adds ||d_new||^2 to direction_sq.
struct FoldArgs {
  at::Tensor direction, direction_sq, inv64, partials;  // undefined without a direction
  Segments segs;
  double beta;

  FoldArgs(const at::Tensor& param, const c10::optional<at::Tensor>& d, const c10::optional<at::Tensor>& inv_norm,
           const c10::optional<at::Tensor>& offsets, int64_t nseg, double b, const c10::optional<at::Tensor>& dsq)
      : segs(make_segments(offsets, param.numel(), nseg)), beta(b) {
    if (!d.has_value()) return;
    direction = *d;
    direction_sq = *dsq;
    inv64 = inv_norm->to(at::kDouble).contiguous();
    partials = partial_sums(param, grid(), segs.nseg);
  }
  dim3 grid() const { return segmented_grid(segs.n, segs.nseg); }
  template <typename T>
  DeviceFold<T> device() const {
    if (!direction.defined()) return DeviceFold<T>{nullptr, nullptr, T(0), T(1), nullptr};
    return DeviceFold<T>{direction.data_ptr<T>(), inv64.data_ptr<double>(), static_cast<T>(beta),
                         static_cast<T>(1.0 - beta), partials.data_ptr<double>()};
  }
  template <typename T>
  const T* direction_ptr() const {
    return direction.defined() ? direction.data_ptr<T>() : nullptr;
  }
  // Second stage: every segment's partial sums, in one fixed order, added to direction_sq.
  void finish(cudaStream_t stream) const {
    if (!direction.defined()) return;
    launch_sum_partials(partials, partials.numel(), 1, direction_sq.data_ptr<double>(), true, stream);
  }
};

// Loop over every segment, kPack elements at a time where aligned. With a direction, each
// element's g is folded into the EMA first (unless skipped) and the block's sum of d_new^2 goes to
// its partial-sum slot; update(i, g, access) then does the base optimizer's part.
template <typename T, typename Update>
__device__ __forceinline__ void fold_and_update(const T* g, const DeviceFold<T>& fold, bool skipped, bool init,
                                                const Segments& segs, int align, Update&& update) {
  for (int64_t seg = blockIdx.y; seg < segs.nseg; seg += gridDim.y) {
    int64_t lo, hi;
    segs.range(seg, lo, hi);
    const T inv = fold.d ? static_cast<T>(fold.inv[segs.offsets ? seg : 0]) : T(0);
    double acc = 0.0;
    for_each_pack<T>(lo, hi, align, [&](int64_t i, auto access) {
      using A = decltype(access);
      T gv[A::n];
      load<A>(g + i, gv);
      if (fold.d) {
        T dv[A::n];
        load<A>(fold.d + i, dv);
#pragma unroll
        for (int k = 0; k < A::n; ++k) {
          if (!skipped) dv[k] = direction_element<T>(dv[k], gv[k], inv, fold.beta, fold.one_minus_beta, init);
          acc += static_cast<double>(dv[k]) * static_cast<double>(dv[k]);
        }
        if (!skipped) store<A>(fold.d + i, dv);
      }
      update(i, gv, access);
    });
    if (fold.d) write_partial(acc, seg, fold.partials);
  }
}

// direction_update_: the fold on its own (no base update), optionally as the EMA's start.
template <typename T>
__global__ void direction_kernel(const T* g, DeviceFold<T> fold, bool init, const bool* skip, Segments segs,
                                 int align) {
  const bool skipped = skip != nullptr && *skip;
  fold_and_update(g, fold, skipped, init, segs, align, [](int64_t, const auto&, auto) {});
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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(direction.scalar_type(), "direction_update_cuda", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    direction_kernel<scalar_t><<<fold.grid(), kThreads, 0, stream>>>(
        g, fold.device<scalar_t>(), init, sk, fold.segs,
        common_alignment<scalar_t>({g, fold.direction_ptr<scalar_t>()}));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  fold.finish(stream);
  return out;
}

template <typename T>
__global__ void adam_kernel(T* p, const T* src, const T* g, T* m, T* v, const double* step, const bool* skip,
                            Segments segs, int align, DeviceFold<T> fold, double lr, double beta1, double beta2,
                            double eps, double weight_decay, bool decoupled) {
  const bool skipped = skip != nullptr && *skip;
  const AdamBias bias = adam_bias(*step, lr, beta1, beta2);
  const T omb1 = static_cast<T>(1.0 - beta1), b2 = static_cast<T>(beta2), omb2 = static_cast<T>(1.0 - beta2),
          ep = static_cast<T>(eps), wd = static_cast<T>(weight_decay), decay = static_cast<T>(1.0 - lr * weight_decay),
          ss = static_cast<T>(bias.step_size), bc2 = static_cast<T>(bias.bc2_sqrt);
  fold_and_update(g, fold, skipped, false, segs, align, [&](int64_t i, const auto& gv, auto access) {
    using A = decltype(access);
    T pv[A::n];
    load<A>(src + i, pv);
    if (!skipped) {
      T mv[A::n], vv[A::n];
      load<A>(m + i, mv);
      load<A>(v + i, vv);
#pragma unroll
      for (int k = 0; k < A::n; ++k) adam_element<T>(pv[k], gv[k], mv[k], vv[k], omb1, b2, omb2, ep, wd, decoupled,
                                                     decay, ss, bc2);
      store<A>(m + i, mv);
      store<A>(v + i, vv);
    }
    store<A>(p + i, pv);
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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "adam_step_cuda", [&] {
    scalar_t* p = param.data_ptr<scalar_t>();
    const scalar_t* src = source ? source->data_ptr<scalar_t>() : p;
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* m = exp_avg.data_ptr<scalar_t>();
    scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();
    const int align = common_alignment<scalar_t>({p, src, g, m, v, fold.direction_ptr<scalar_t>()});
    adam_kernel<scalar_t><<<fold.grid(), kThreads, 0, stream>>>(p, src, g, m, v, scalars.step, scalars.skip,
                                                                 fold.segs, align, fold.device<scalar_t>(), lr, beta1,
                                                                 beta2, eps, weight_decay, decoupled);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  fold.finish(stream);
}

template <typename T>
__global__ void sgd_kernel(T* p, const T* src, const T* g, T* buf, const double* step, const bool* skip,
                           Segments segs, int align, DeviceFold<T> fold, T lr, T momentum, T one_minus_dampening,
                           T weight_decay, bool nesterov) {
  const bool skipped = skip != nullptr && *skip;
  const bool first = *step <= 1.0;
  fold_and_update(g, fold, skipped, false, segs, align, [&](int64_t i, const auto& gv, auto access) {
    using A = decltype(access);
    T pv[A::n];
    load<A>(src + i, pv);
    if (!skipped) {
      T bv[A::n];
      if (buf != nullptr) load<A>(buf + i, bv);
#pragma unroll
      for (int k = 0; k < A::n; ++k) sgd_element<T>(pv[k], gv[k], buf != nullptr ? bv + k : nullptr, first, lr,
                                                    momentum, one_minus_dampening, weight_decay, nesterov);
      if (buf != nullptr) store<A>(buf + i, bv);
    }
    store<A>(p + i, pv);
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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "sgd_step_cuda", [&] {
    scalar_t* p = param.data_ptr<scalar_t>();
    const scalar_t* src = source ? source->data_ptr<scalar_t>() : p;
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* buf = momentum != 0.0 ? momentum_buffer.data_ptr<scalar_t>() : nullptr;
    const int align = common_alignment<scalar_t>({p, src, g, buf, fold.direction_ptr<scalar_t>()});
    sgd_kernel<scalar_t><<<fold.grid(), kThreads, 0, stream>>>(
        p, src, g, buf, scalars.step, scalars.skip, fold.segs, align, fold.device<scalar_t>(),
        static_cast<scalar_t>(lr), static_cast<scalar_t>(momentum), static_cast<scalar_t>(1.0 - dampening),
        static_cast<scalar_t>(weight_decay), nesterov);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  fold.finish(stream);
}

}  // namespace

TORCH_LIBRARY_IMPL(graphsam_ext, CUDA, m) {
  m.impl("sum_squares", &sum_squares_cuda);
  m.impl("unscale_sum_squares_", &unscale_sum_squares_cuda);
  m.impl("zero_", &zero_cuda);
  m.impl("perturb_", &perturb_cuda);
  m.impl("direction_update_", &direction_update_cuda);
  m.impl("adam_step_", &adam_step_cuda);
  m.impl("sgd_step_", &sgd_step_cuda);
}

}  // namespace graphsam_ext

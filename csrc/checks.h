// Argument checks shared by the CPU and CUDA kernels.
// Messages read "<op> (<backend>): <what is wrong>" so a user sees which op and which argument.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

#define GSE_CHECK(cond, op, backend, ...) TORCH_CHECK(cond, op, " (", backend, "): ", __VA_ARGS__)

namespace graphsam_ext {

inline void check_flat(const at::Tensor& t, const at::Tensor& like, const char* name, const char* op,
                       const char* backend) {
  GSE_CHECK(t.device() == like.device(), op, backend, name, " is on ", t.device(), " but the parameters are on ",
            like.device(), "; move it to the same device");
  GSE_CHECK(t.scalar_type() == like.scalar_type(), op, backend, name, " has dtype ", t.scalar_type(),
            " but the parameters have ", like.scalar_type(), "; use one dtype per flat buffer");
  GSE_CHECK(t.is_contiguous(), op, backend, name, " must be contiguous (call .contiguous())");
  GSE_CHECK(t.numel() == like.numel(), op, backend, name, " has ", t.numel(), " elements but the parameters have ",
            like.numel());
}

inline void check_param(const at::Tensor& p, const char* op, const char* backend) {
  GSE_CHECK(p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble, op, backend,
            "param must be float32 or float64, got ", p.scalar_type());
  GSE_CHECK(p.is_contiguous(), op, backend, "param must be contiguous (a flat buffer)");
}

// offsets: int64 (nseg + 1,) on the data's device, starting at 0 and ending at numel.
// Monotonicity is checked on the CPU only; on CUDA reading it back would sync the host.
inline int64_t check_offsets(const c10::optional<at::Tensor>& offsets, const at::Tensor& like, const char* op,
                             const char* backend) {
  if (!offsets.has_value()) return 0;
  const at::Tensor& o = *offsets;
  GSE_CHECK(o.dim() == 1 && o.numel() >= 2, op, backend, "offsets must be 1-D with at least 2 entries, got shape ",
            o.sizes());
  GSE_CHECK(o.scalar_type() == at::kLong, op, backend, "offsets must be int64, got ", o.scalar_type());
  GSE_CHECK(o.device() == like.device(), op, backend, "offsets is on ", o.device(), " but the data is on ",
            like.device());
  GSE_CHECK(o.is_contiguous(), op, backend, "offsets must be contiguous");
  if (o.device().is_cpu()) {
    const int64_t* ptr = o.data_ptr<int64_t>();
    const int64_t n = o.numel();
    GSE_CHECK(ptr[0] == 0 && ptr[n - 1] == like.numel(), op, backend, "offsets must start at 0 and end at ",
              like.numel(), ", got ", ptr[0], " .. ", ptr[n - 1]);
    for (int64_t i = 1; i < n; ++i) {
      GSE_CHECK(ptr[i] >= ptr[i - 1], op, backend, "offsets must be non-decreasing (entry ", i, ")");
    }
  }
  return o.numel() - 1;
}

inline void check_scalar_tensor(const at::Tensor& t, const at::Tensor& like, const char* name, const char* op,
                                const char* backend) {
  GSE_CHECK(t.device() == like.device(), op, backend, name, " is on ", t.device(), " but the data is on ",
            like.device(), "; keep it on the same device (no host sync)");
}

}  // namespace graphsam_ext

// ---- per-op argument checks of the flat-buffer SAM ops, shared by both backends ----
namespace graphsam_ext {

using NamedTensors = std::vector<std::pair<const at::Tensor*, const char*>>;

// The CPU kernels read and write every buffer at the same index only, and are compiled on the
// promise that buffers do not overlap; one that is the very same buffer as another is fine.
inline void check_no_partial_overlap(const NamedTensors& buffers, const char* op, const char* backend) {
  for (size_t i = 0; i < buffers.size(); ++i) {
    for (size_t j = i + 1; j < buffers.size(); ++j) {
      const at::Tensor& a = *buffers[i].first;
      const at::Tensor& b = *buffers[j].first;
      if (a.numel() == 0 || b.numel() == 0 || a.data_ptr() == b.data_ptr()) continue;
      const auto a0 = reinterpret_cast<std::uintptr_t>(a.data_ptr());
      const auto b0 = reinterpret_cast<std::uintptr_t>(b.data_ptr());
      const bool disjoint = a0 + a.nbytes() <= b0 || b0 + b.nbytes() <= a0;
      GSE_CHECK(disjoint, op, backend, buffers[i].second, " and ", buffers[j].second,
                " overlap in memory; pass separate buffers (only source may be param itself)");
    }
  }
}

inline void check_skip(const c10::optional<at::Tensor>& skip, const at::Tensor& like, const char* op,
                       const char* backend) {
  if (!skip.has_value()) return;
  check_scalar_tensor(*skip, like, "skip", op, backend);
  GSE_CHECK(skip->numel() == 1, op, backend, "skip must hold one element");
}

inline int64_t check_sum_squares(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                 const c10::optional<at::Tensor>& offsets, int64_t weight_power,
                                 const char* backend) {
  const char* op = "sum_squares";
  check_param(x, op, backend);
  GSE_CHECK(weight_power >= 0 && weight_power <= 2, op, backend, "weight_power must be 0, 1 or 2, got ",
            weight_power);
  GSE_CHECK(weight_power == 0 || weight.has_value(), op, backend, "weight_power > 0 needs a weight tensor");
  if (weight.has_value()) check_flat(*weight, x, "weight", op, backend);
  return check_offsets(offsets, x, op, backend);
}

// unscale_sum_squares_: sum_squares' arguments, the loss scale (one element, any floating dtype)
// and the found_inf flag (one float32 element, as torch.amp.GradScaler keeps it), both on x's device.
inline int64_t check_unscale_sum_squares(const at::Tensor& x, const at::Tensor& grad_scale, const at::Tensor& found_inf,
                                         const c10::optional<at::Tensor>& weight,
                                         const c10::optional<at::Tensor>& offsets, int64_t weight_power,
                                         const char* backend) {
  const char* op = "unscale_sum_squares_";
  check_scalar_tensor(grad_scale, x, "grad_scale", op, backend);
  GSE_CHECK(grad_scale.numel() == 1 && grad_scale.is_floating_point(), op, backend,
            "grad_scale must be one floating-point element (the GradScaler's scale), got ", grad_scale.scalar_type(),
            " of shape ", grad_scale.sizes());
  check_scalar_tensor(found_inf, x, "found_inf", op, backend);
  GSE_CHECK(found_inf.numel() == 1 && found_inf.scalar_type() == at::kFloat, op, backend,
            "found_inf must be one float32 element, got ", found_inf.scalar_type(), " of shape ", found_inf.sizes());
  if (weight.has_value()) {
    check_no_partial_overlap({{&x, "x"}, {&*weight, "weight"}}, op, backend);
    GSE_CHECK(weight->data_ptr() != x.data_ptr() || weight->numel() == 0, op, backend,
              "weight must not be x itself (x is unscaled in place)");
  }
  return check_sum_squares(x, weight, offsets, weight_power, backend);
}

// Checks a 0-dim value, or one value per segment when offsets are given; returns nseg.
inline int64_t check_segment_values(const at::Tensor& values, const char* name, const at::Tensor& like,
                                    const c10::optional<at::Tensor>& offsets, const char* op, const char* backend) {
  const int64_t nseg = check_offsets(offsets, like, op, backend);
  check_scalar_tensor(values, like, name, op, backend);
  GSE_CHECK(values.numel() == (offsets ? nseg : 1), op, backend, name, " must have ", (offsets ? nseg : 1),
            " element(s) (one per segment), got ", values.numel());
  return nseg;
}

inline int64_t check_perturb(const at::Tensor& param, const at::Tensor& backup, const at::Tensor& direction,
                             const at::Tensor& scale, const c10::optional<at::Tensor>& offsets,
                             const c10::optional<at::Tensor>& skip, const char* backend) {
  const char* op = "perturb_";
  check_param(param, op, backend);
  check_flat(backup, param, "backup", op, backend);
  check_flat(direction, param, "direction", op, backend);
  check_no_partial_overlap({{&param, "param"}, {&backup, "backup"}, {&direction, "direction"}}, op, backend);
  check_skip(skip, param, op, backend);
  return check_segment_values(scale, "scale", param, offsets, op, backend);
}

inline int64_t check_direction_update(const at::Tensor& direction, const at::Tensor& grad,
                                      const at::Tensor& inv_norm, const c10::optional<at::Tensor>& offsets,
                                      double beta, const c10::optional<at::Tensor>& skip, const char* backend) {
  const char* op = "direction_update_";
  check_param(direction, op, backend);
  check_flat(grad, direction, "grad", op, backend);
  check_no_partial_overlap({{&direction, "direction"}, {&grad, "grad"}}, op, backend);
  GSE_CHECK(beta >= 0.0 && beta < 1.0, op, backend, "beta must be in [0, 1), got ", beta);
  check_skip(skip, direction, op, backend);
  return check_segment_values(inv_norm, "inv_norm", direction, offsets, op, backend);
}

// The optional GraphSAM direction EMA of a base update: direction, inv_norm and direction_sq come
// together; returns the number of segments of inv_norm (0 without offsets).
inline int64_t check_direction_fold(const char* op, const at::Tensor& param,
                                    const c10::optional<at::Tensor>& direction,
                                    const c10::optional<at::Tensor>& inv_norm,
                                    const c10::optional<at::Tensor>& offsets, double beta,
                                    const c10::optional<at::Tensor>& direction_sq, const char* backend) {
  if (!direction.has_value()) {
    GSE_CHECK(!inv_norm.has_value() && !offsets.has_value() && !direction_sq.has_value(), op, backend,
              "inv_norm, offsets and direction_sq are only used with a direction; pass direction too or none");
    return 0;
  }
  GSE_CHECK(inv_norm.has_value() && direction_sq.has_value(), op, backend,
            "a direction needs inv_norm (0-dim or one per segment) and direction_sq (0-dim float64 accumulator)");
  check_flat(*direction, param, "direction", op, backend);
  GSE_CHECK(beta >= 0.0 && beta < 1.0, op, backend, "beta must be in [0, 1), got ", beta);
  check_scalar_tensor(*direction_sq, param, "direction_sq", op, backend);
  GSE_CHECK(direction_sq->dim() == 0 && direction_sq->scalar_type() == at::kDouble, op, backend,
            "direction_sq must be a 0-dim float64 tensor, got ", direction_sq->scalar_type(), " of shape ",
            direction_sq->sizes());
  return check_segment_values(*inv_norm, "inv_norm", param, offsets, op, backend);
}

// The arguments adam_step_ and sgd_step_ share besides their optimizer state.
struct BaseStepArgs {
  const at::Tensor& param;
  const at::Tensor& grad;
  const at::Tensor& step;
  const c10::optional<at::Tensor>& source;
  const c10::optional<at::Tensor>& skip;
  const c10::optional<at::Tensor>& direction;
  const c10::optional<at::Tensor>& inv_norm;
  const c10::optional<at::Tensor>& offsets;
  double beta;
  const c10::optional<at::Tensor>& direction_sq;
};

// `state` are the optimizer buffers, checked like the param. Returns the fold's segment count.
inline int64_t check_base_step(const char* op, const BaseStepArgs& args, NamedTensors state, const char* backend) {
  const at::Tensor& param = args.param;
  check_param(param, op, backend);
  check_flat(args.grad, param, "grad", op, backend);
  for (const auto& entry : state) check_flat(*entry.first, param, entry.second, op, backend);
  if (args.source.has_value()) check_flat(*args.source, param, "source", op, backend);
  check_scalar_tensor(args.step, param, "step", op, backend);
  check_skip(args.skip, param, op, backend);
  const int64_t nseg = check_direction_fold(op, param, args.direction, args.inv_norm, args.offsets, args.beta,
                                            args.direction_sq, backend);
  state.insert(state.begin(), {{&param, "param"}, {&args.grad, "grad"}});
  if (args.source.has_value()) state.emplace_back(&*args.source, "source");
  if (args.direction.has_value()) state.emplace_back(&*args.direction, "direction");
  check_no_partial_overlap(state, op, backend);
  return nseg;
}

inline int64_t check_adam_step(const BaseStepArgs& args, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                               const char* backend) {
  return check_base_step("adam_step_", args, {{&exp_avg, "exp_avg"}, {&exp_avg_sq, "exp_avg_sq"}}, backend);
}

// The momentum buffer is only read (and checked) when momentum != 0.
inline int64_t check_sgd_step(const BaseStepArgs& args, const at::Tensor& momentum_buffer, double momentum,
                              const char* backend) {
  if (momentum != 0.0) return check_base_step("sgd_step_", args, {{&momentum_buffer, "momentum_buffer"}}, backend);
  return check_base_step("sgd_step_", args, {}, backend);
}

}  // namespace graphsam_ext

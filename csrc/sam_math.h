// Per-element arithmetic of the SAM / GraphSAM / base-optimizer kernels.
// Included by the CPU (.cpp) and CUDA (.cu) kernels so both run exactly the same expressions;
// the operation order follows torch.optim's single-tensor Adam and SGD.
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define GSE_HD __host__ __device__ __forceinline__
#else
#define GSE_HD inline
#endif

namespace graphsam_ext {

// Square root in the argument's own precision (plain sqrt(float) would go through double on the
// host, which also blocks vectorization).
GSE_HD float sqrt_same(float x) { return sqrtf(x); }
GSE_HD double sqrt_same(double x) { return sqrt(x); }

// Adam's step-dependent constants, computed in double from the (possibly device-resident) step.
struct AdamBias {
  double step_size;  // lr / (1 - beta1^step)
  double bc2_sqrt;   // sqrt(1 - beta2^step)
};

GSE_HD AdamBias adam_bias(double step, double lr, double beta1, double beta2) {
  AdamBias b;
  b.step_size = lr / (1.0 - pow(beta1, step));
  b.bc2_sqrt = sqrt(1.0 - pow(beta2, step));
  return b;
}

// Adam / AdamW for one element. `decay` is 1 - lr * weight_decay (AdamW only).
template <typename T>
GSE_HD void adam_element(T& p, T g, T& m, T& v, T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T weight_decay,
                         bool decoupled, T decay, T step_size, T bc2_sqrt) {
  if (weight_decay != T(0)) {
    if (decoupled) {
      p = p * decay;
    } else {
      g = g + weight_decay * p;
    }
  }
  m = m + one_minus_beta1 * (g - m);
  v = v * beta2 + one_minus_beta2 * g * g;
  const T denom = sqrt_same(v) / bc2_sqrt + eps;
  p = p + (-step_size) * (m / denom);
}

// SGD with momentum / dampening / nesterov / weight decay for one element.
template <typename T>
GSE_HD void sgd_element(T& p, T g, T* buf, bool first, T lr, T momentum, T one_minus_dampening, T weight_decay,
                        bool nesterov) {
  if (weight_decay != T(0)) g = g + weight_decay * p;
  if (momentum != T(0)) {
    const T b = first ? g : *buf * momentum + one_minus_dampening * g;
    *buf = b;
    g = nesterov ? g + momentum * b : b;
  }
  p = p + (-lr) * g;
}

// SAM perturbation of one element: p + scale * d, or p + scale * p^2 * d (adaptive / ASAM).
template <typename T>
GSE_HD T perturb_element(T p, T d, T scale, bool adaptive) {
  return adaptive ? p + scale * (p * p * d) : p + scale * d;
}

// GraphSAM direction EMA: d <- beta * d + (1 - beta) * g * inv_norm (or g * inv_norm at init).
template <typename T>
GSE_HD T direction_element(T d, T g, T inv_norm, T beta, T one_minus_beta, bool init) {
  return init ? g * inv_norm : beta * d + one_minus_beta * (g * inv_norm);
}

// The term summed by sum_squares: (|w|^power * x + shift)^2.
template <typename T, typename Acc>
GSE_HD Acc square_term(T x, T w, int power, Acc shift) {
  Acc a = static_cast<Acc>(x);
  if (power >= 1) {
    Acc aw = fabs(static_cast<Acc>(w));
    a = a * (power == 2 ? aw * aw : aw);
  }
  a = a + shift;
  return a * a;
}

}  // namespace graphsam_ext

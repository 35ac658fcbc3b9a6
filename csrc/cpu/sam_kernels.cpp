// CPU kernels of the flat-buffer SAM / GraphSAM / Adam / SGD ops.
// Elementwise ops run at::parallel_for over element ranges; reductions use fixed-size chunks
// combined in order, so results do not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "checks.h"
#include "sam_math.h"

namespace graphsam_ext {
namespace {

// The loops are also compiled for AVX2 and picked at load time (an ifunc). FMA stays off in
// both versions, so the arithmetic (and the result) is the same whichever runs.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define GSE_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GSE_CPU_CLONES
#endif

constexpr const char* kBackend = "CPU";
constexpr int64_t kGrain = 32768;
constexpr int64_t kChunk = 16384;

// Streaming (non-temporal) stores are used for buffers of at least this size written now and read
// only after other passes over memory (the perturbation's backup, zeroed gradients): they skip
// reading the destination lines first and leave the cache to the data in use.
constexpr int64_t kStreamBytes = int64_t(4) << 20;
constexpr int64_t kPageBytes = 4096;

template <typename T>
bool use_streaming(int64_t n) {
  return n * int64_t(sizeof(T)) >= kStreamBytes;
}

#if defined(__SSE2__)
inline void stream16(float* dst, const float* src) { _mm_stream_ps(dst, src ? _mm_loadu_ps(src) : _mm_setzero_ps()); }
inline void stream16(double* dst, const double* src) { _mm_stream_pd(dst, src ? _mm_loadu_pd(src) : _mm_setzero_pd()); }
#endif

// dst[lo, hi) <- src[lo, hi), or 0 when src is nullptr, with streaming stores where the CPU has
// them. Call stream_fence() before the data is read by another thread.
template <typename T>
void stream_store(T* dst, const T* src, int64_t lo, int64_t hi) {
  int64_t i = lo;
#if defined(__SSE2__)
  constexpr int64_t kLanes = 16 / sizeof(T);
  for (; i < hi && (reinterpret_cast<std::uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = src ? src[i] : T(0);
  for (; i + kLanes <= hi; i += kLanes) stream16(dst + i, src ? src + i : nullptr);
#endif
  for (; i < hi; ++i) dst[i] = src ? src[i] : T(0);
}

inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Long passes prefetch a line a few pages ahead of each stream once per page: the hardware
// prefetchers stop at page boundaries, and a page started early keeps the pass streaming.
template <typename T>
inline void prefetch_pages_ahead(const T* x) {
#if defined(__SSE2__)
  _mm_prefetch(reinterpret_cast<const char*>(x) + 8 * kPageBytes, _MM_HINT_T0);
#endif
}

template <typename T>
constexpr int64_t page_elements() {
  return kPageBytes / int64_t(sizeof(T));
}

// The flag was checked by the op's argument checks; on the CPU reading it costs no sync.
bool read_skip(const c10::optional<at::Tensor>& skip) { return skip.has_value() && skip->item<bool>(); }

// Calls fn(segment, lo, hi) for each piece of [begin, end) that lies in one segment.
template <typename Fn>
void for_each_segment(const int64_t* offsets, int64_t nseg, int64_t begin, int64_t end, Fn&& fn) {
  if (offsets == nullptr) {
    fn(int64_t(0), begin, end);
    return;
  }
  int64_t seg = std::upper_bound(offsets, offsets + nseg + 1, begin) - offsets - 1;
  while (begin < end && seg < nseg) {
    const int64_t hi = std::min(end, offsets[seg + 1]);
    if (hi > begin) fn(seg, begin, hi);
    begin = std::max(begin, hi);
    ++seg;
  }
}

const int64_t* offsets_ptr(const c10::optional<at::Tensor>& offsets) {
  return offsets.has_value() ? offsets->data_ptr<int64_t>() : nullptr;
}

// The loops below take every constant by value: inside a [&] lambda the captured references
// could alias the stores, which stops the compiler from vectorizing.

#if defined(__GNUC__)
// Four doubles in one vector (GCC / clang vector extension): the float sums below widen to
// double, which the auto-vectorizer does not do on its own.
typedef double Double4 __attribute__((vector_size(32)));

template <typename T>
inline void load_double4(const T* x, Double4& out) {
  out = Double4{static_cast<double>(x[0]), static_cast<double>(x[1]), static_cast<double>(x[2]),
                static_cast<double>(x[3])};
}
#endif

// sum over [lo, hi) of square_term (|w|^Power * x + shift)^2, in double, with 16 running sums
// (lane j takes the elements i + j) combined in a fixed order: the result is the same whichever
// clone runs and however the range was split. Power 0 without a shift is the plain sum x^2.
template <typename T, int Power, bool Shift>
GSE_CPU_CLONES double sum_squares_lanes(const T* x, const T* w, double shift, int64_t lo, int64_t hi) {
  double acc[16] = {0};
  int64_t i = lo;
#if defined(__GNUC__)
  Double4 a[4] = {};
  for (; i + 16 <= hi; i += 16) {
    if (i % page_elements<T>() == 0) {
      prefetch_pages_ahead(x + i);
      if (Power) prefetch_pages_ahead(w + i);
    }
    for (int k = 0; k < 4; ++k) {
      Double4 v;
      load_double4(x + i + 4 * k, v);
      if (Power) {
        Double4 aw;
        load_double4(w + i + 4 * k, aw);
        aw = aw < 0 ? -aw : aw;
        v = v * (Power == 2 ? aw * aw : aw);
      }
      if (Shift) v = v + shift;
      a[k] += v * v;
    }
  }
  for (int k = 0; k < 4; ++k)
    for (int j = 0; j < 4; ++j) acc[4 * k + j] = a[k][j];
#else
  for (; i + 16 <= hi; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += square_term<T, double>(x[i + j], w ? w[i + j] : T(0), Power, shift);
#endif
  for (; i < hi; ++i) acc[0] += square_term<T, double>(x[i], w ? w[i] : T(0), Power, shift);
  for (int width = 8; width > 0; width /= 2)
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  return acc[0];
}

template <typename T>
double plain_sum_squares_range(const T* x, int64_t lo, int64_t hi) {
  return sum_squares_lanes<T, 0, false>(x, nullptr, 0.0, lo, hi);
}

template <typename T>
double sum_squares_range(const T* x, const T* w, int power, double shift, int64_t lo, int64_t hi) {
  const bool shifted = shift != 0.0;
  switch (power) {
    case 0:
      return shifted ? sum_squares_lanes<T, 0, true>(x, w, shift, lo, hi) : plain_sum_squares_range<T>(x, lo, hi);
    case 1:
      return shifted ? sum_squares_lanes<T, 1, true>(x, w, shift, lo, hi) : sum_squares_lanes<T, 1, false>(x, w, shift, lo, hi);
    default:
      return shifted ? sum_squares_lanes<T, 2, true>(x, w, shift, lo, hi) : sum_squares_lanes<T, 2, false>(x, w, shift, lo, hi);
  }
}

// Every buffer is read and written at index i only (the source may be param itself), so there is
// no dependence between iterations; GSE_IVDEP says so, which the compiler cannot prove with this
// many pointers. Loop-invariant pointer tests (`b`, `ema.d`) are unswitched into vectorized loops.
#if defined(__GNUC__) && !defined(__clang__)
#define GSE_IVDEP _Pragma("GCC ivdep")
#else
#define GSE_IVDEP
#endif

// b == nullptr: the backup was already taken.
template <typename T>
GSE_CPU_CLONES void perturb_range(T* p, T* b, const T* d, int64_t lo, int64_t hi, T scale, bool adaptive) {
  GSE_IVDEP
  for (int64_t i = lo; i < hi; ++i) {
    const T pi = p[i];
    if (b) b[i] = pi;
    p[i] = perturb_element<T>(pi, d[i], scale, adaptive);
  }
}

// Updates d over [lo, hi) and returns the sum of squares of the new values (same pass).
template <typename T>
GSE_CPU_CLONES double direction_range(T* d, const T* g, int64_t lo, int64_t hi, T inv, T beta, T one_minus_beta, bool init) {
  for (int64_t i = lo; i < hi; ++i) d[i] = direction_element<T>(d[i], g[i], inv, beta, one_minus_beta, init);
  // the range is one chunk at most, so it is still in cache for the sum
  return plain_sum_squares_range<T>(d, lo, hi);
}

// The GraphSAM EMA a base update may carry: d <- beta d + (1 - beta) g inv, in the update's loop.
template <typename T>
struct Ema {
  T* d;  // nullptr: no EMA
  T inv, beta, one_minus_beta;
};

template <typename T>
GSE_CPU_CLONES void adam_range(T* p, const T* src, const T* g, T* m, T* v, int64_t lo, int64_t hi, T omb1, T b2, T omb2, T eps,
                T wd, bool decoupled, T decay, T step_size, T bc2, Ema<T> ema) {
  GSE_IVDEP
  for (int64_t i = lo; i < hi; ++i) {
    const T gi = g[i];
    if (ema.d) ema.d[i] = direction_element<T>(ema.d[i], gi, ema.inv, ema.beta, ema.one_minus_beta, false);
    T pi = src[i], mi = m[i], vi = v[i];
    adam_element<T>(pi, gi, mi, vi, omb1, b2, omb2, eps, wd, decoupled, decay, step_size, bc2);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

template <typename T>
GSE_CPU_CLONES void sgd_range(T* p, const T* src, const T* g, T* buf, int64_t lo, int64_t hi, bool first, T lr, T momentum,
               T one_minus_dampening, T wd, bool nesterov, Ema<T> ema) {
  GSE_IVDEP
  for (int64_t i = lo; i < hi; ++i) {
    const T gi = g[i];
    if (ema.d) ema.d[i] = direction_element<T>(ema.d[i], gi, ema.inv, ema.beta, ema.one_minus_beta, false);
    T pi = src[i];
    sgd_element<T>(pi, gi, buf ? buf + i : nullptr, first, lr, momentum, one_minus_dampening, wd, nesterov);
    p[i] = pi;
  }
}

// x[lo, hi) *= inv (the loss scale's reciprocal, rounded to T once, as GradScaler.unscale_ does).
template <typename T>
GSE_CPU_CLONES void unscale_range(T* x, int64_t lo, int64_t hi, T inv) {
  for (int64_t i = lo; i < hi; ++i) x[i] = x[i] * inv;
}

// Deterministic segmented sum of square_term over fixed chunks. With `unscale`, each piece of x is
// first multiplied by inv in place and then summed while it is still in cache (one pass).
template <typename T>
at::Tensor sum_squares_impl(const T* x, const T* w, int power, double shift, int64_t n, const int64_t* offsets,
                            int64_t nseg, const at::TensorOptions& opts, T* unscale = nullptr, T inv = T(1)) {
  const int64_t segs = offsets ? nseg : 1;
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  // partial[c] holds, for chunk c, the sums of the segments it touches, in order
  std::vector<std::vector<std::pair<int64_t, double>>> partial(nchunks);
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      for_each_segment(offsets, nseg, c * kChunk, std::min(n, (c + 1) * kChunk), [&](int64_t s, int64_t lo, int64_t hi) {
        if (unscale) unscale_range<T>(unscale, lo, hi, inv);
        partial[c].emplace_back(s, sum_squares_range<T>(x, w, power, shift, lo, hi));
      });
    }
  });
  at::Tensor out = at::zeros({segs}, opts.dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  for (const auto& chunk : partial)
    for (const auto& sv : chunk) o[sv.first] += sv.second;
  return offsets ? out : out.squeeze(0);
}

at::Tensor sum_squares_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                           const c10::optional<at::Tensor>& offsets, int64_t weight_power, double shift) {
  const int64_t nseg = check_sum_squares(x, weight, offsets, weight_power, kBackend);
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sum_squares_cpu", [&] {
    return sum_squares_impl<scalar_t>(x.data_ptr<scalar_t>(), weight ? weight->data_ptr<scalar_t>() : nullptr,
                                      static_cast<int>(weight_power), shift, x.numel(), offsets_ptr(offsets), nseg,
                                      x.options());
  });
}

// x <- x / grad_scale (in place), then sum_squares of the result in the same pass; found_inf <- 1
// where a segment's sum is not finite (never reset, as torch's unscale). The CPU reads the scale
// from the tensor, which costs no synchronization.
at::Tensor unscale_sum_squares_cpu(at::Tensor& x, const at::Tensor& grad_scale, at::Tensor& found_inf,
                                   const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& offsets,
                                   int64_t weight_power, double shift) {
  const int64_t nseg = check_unscale_sum_squares(x, grad_scale, found_inf, weight, offsets, weight_power, kBackend);
  const double inv = 1.0 / grad_scale.to(at::kDouble).item<double>();
  at::Tensor out = AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "unscale_sum_squares_cpu", [&] {
    scalar_t* xp = x.data_ptr<scalar_t>();
    return sum_squares_impl<scalar_t>(xp, weight ? weight->data_ptr<scalar_t>() : nullptr,
                                      static_cast<int>(weight_power), shift, x.numel(), offsets_ptr(offsets), nseg,
                                      x.options(), xp, static_cast<scalar_t>(inv));
  });
  const double* o = out.data_ptr<double>();
  for (int64_t s = 0; s < out.numel(); ++s) {
    if (!std::isfinite(o[s])) {
      found_inf.fill_(1.0);
      break;
    }
  }
  return out;
}

void zero_cpu(at::Tensor& x) {
  check_param(x, "zero_", kBackend);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "zero_cpu", [&] {
    if (!use_streaming<scalar_t>(x.numel())) {
      x.zero_();
      return;
    }
    scalar_t* ptr = x.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      stream_store<scalar_t>(ptr, nullptr, begin, end);
      stream_fence();
    });
  });
}

// scale: 0-dim (one scale) or (nseg,) per segment; any floating dtype (read as double).
void perturb_cpu(at::Tensor& param, at::Tensor& backup, const at::Tensor& direction, const at::Tensor& scale,
                 const c10::optional<at::Tensor>& offsets, bool adaptive, const c10::optional<at::Tensor>& skip) {
  const int64_t nseg = check_perturb(param, backup, direction, scale, offsets, skip, kBackend);
  const bool skipped = read_skip(skip);
  const at::Tensor scale64 = scale.to(at::kDouble).contiguous();
  const double* sc = scale64.data_ptr<double>();
  const int64_t* off = offsets_ptr(offsets);
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "perturb_cpu", [&] {
    scalar_t* p = param.data_ptr<scalar_t>();
    scalar_t* b = backup.data_ptr<scalar_t>();
    const scalar_t* d = direction.data_ptr<scalar_t>();
    const bool streaming = use_streaming<scalar_t>(param.numel());
    at::parallel_for(0, param.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for_each_segment(off, nseg, begin, end, [&](int64_t s, int64_t lo, int64_t hi) {
        const scalar_t sc_s = static_cast<scalar_t>(sc[off ? s : 0]);
        if (!streaming) {
          if (skipped) {
            std::copy(p + lo, p + hi, b + lo);
          } else {
            perturb_range<scalar_t>(p, b, d, lo, hi, sc_s, adaptive);
          }
          return;
        }
        // a page of p is copied out, then perturbed while it is still in cache
        for (int64_t a = lo; a < hi; a += page_elements<scalar_t>()) {
          const int64_t z = std::min(hi, a + page_elements<scalar_t>());
          prefetch_pages_ahead(p + a);
          prefetch_pages_ahead(d + a);
          stream_store(b, p, a, z);
          if (!skipped) perturb_range<scalar_t>(p, nullptr, d, a, z, sc_s, adaptive);
        }
      });
      if (streaming) stream_fence();
    });
  });
}

// Returns the sum of squares of the updated direction (0-dim float64) from the same pass.
at::Tensor direction_update_cpu(at::Tensor& direction, const at::Tensor& grad, const at::Tensor& inv_norm,
                                const c10::optional<at::Tensor>& offsets, double beta, bool init,
                                const c10::optional<at::Tensor>& skip) {
  const int64_t nseg = check_direction_update(direction, grad, inv_norm, offsets, beta, skip, kBackend);
  const bool skipped = read_skip(skip);
  const at::Tensor inv64 = inv_norm.to(at::kDouble).contiguous();
  const double* inv = inv64.data_ptr<double>();
  const int64_t* off = offsets_ptr(offsets);
  const int64_t n = direction.numel();
  return AT_DISPATCH_FLOATING_TYPES(direction.scalar_type(), "direction_update_cpu", [&] {
    scalar_t* d = direction.data_ptr<scalar_t>();
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t bt = static_cast<scalar_t>(beta);
    const scalar_t omb = static_cast<scalar_t>(1.0 - beta);
    if (skipped) return sum_squares_impl<scalar_t>(d, nullptr, 0, 0.0, n, nullptr, 0, direction.options());
    // fixed chunks, partial sums combined in order: deterministic whatever the thread count
    const int64_t nchunks = (n + kChunk - 1) / kChunk;
    std::vector<double> partial(nchunks, 0.0);
    at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        for_each_segment(off, nseg, c * kChunk, std::min(n, (c + 1) * kChunk), [&](int64_t s, int64_t lo, int64_t hi) {
          partial[c] += direction_range<scalar_t>(d, g, lo, hi, static_cast<scalar_t>(inv[off ? s : 0]), bt, omb, init);
        });
      }
    });
    double total = 0.0;
    for (double v : partial) total += v;
    return at::scalar_tensor(total, direction.options().dtype(at::kDouble));
  });
}

// The optional GraphSAM direction EMA of a base update (adam_step_ / sgd_step_ with a direction).
struct DirectionFold {
  at::Tensor direction, direction_sq, inv64;  // undefined without a direction
  const int64_t* offsets;
  int64_t nseg;
  double beta;

  DirectionFold(const BaseStepArgs& args, int64_t nsegments)
      : offsets(offsets_ptr(args.offsets)), nseg(nsegments), beta(args.beta) {
    if (!args.direction.has_value()) return;
    direction = *args.direction;
    direction_sq = *args.direction_sq;
    inv64 = args.inv_norm->to(at::kDouble).contiguous();
  }
  bool active() const { return direction.defined(); }
  void add(double value) const { direction_sq.add_(value); }
};

// The skip flag of a checked base update; a skipped step restores here and updates nothing.
bool restore_if_skipped(const BaseStepArgs& args, at::Tensor& param) {
  const bool skipped = read_skip(args.skip);
  if (skipped && args.source.has_value()) param.copy_(*args.source);
  return skipped;
}

// Runs update(lo, hi, ema) over [0, n). With a direction, the update's loop also runs the EMA,
// over fixed chunks: each chunk's new d is summed while it is still in cache, and the partial sums
// are combined in order. ||d_new||^2 is added to direction_sq. A skipped step runs no update (its
// caller restores) and adds ||d||^2.
template <typename T, typename Update>
void run_base_update(int64_t n, const DirectionFold& fold, bool skipped, Update&& update) {
  if (!fold.active()) {
    if (!skipped)
      at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) { update(begin, end, Ema<T>{nullptr, 0, 0, 0}); });
    return;
  }
  T* d = fold.direction.data_ptr<T>();
  if (skipped) {
    fold.add(sum_squares_impl<T>(d, nullptr, 0, 0.0, n, nullptr, 0, fold.direction.options()).template item<double>());
    return;
  }
  const double* inv = fold.inv64.data_ptr<double>();
  const T bt = static_cast<T>(fold.beta), omb = static_cast<T>(1.0 - fold.beta);
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(nchunks, 0.0);
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t lo = c * kChunk, hi = std::min(n, (c + 1) * kChunk);
      for_each_segment(fold.offsets, fold.nseg, lo, hi, [&](int64_t s, int64_t a, int64_t b) {
        update(a, b, Ema<T>{d, static_cast<T>(inv[fold.offsets ? s : 0]), bt, omb});
      });
      partial[c] = plain_sum_squares_range<T>(d, lo, hi);
    }
  });
  double total = 0.0;
  for (double v : partial) total += v;
  fold.add(total);
}

void adam_step_cpu(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                   const at::Tensor& step, const c10::optional<at::Tensor>& source,
                   const c10::optional<at::Tensor>& skip, double lr, double beta1, double beta2, double eps,
                   double weight_decay, bool decoupled, const c10::optional<at::Tensor>& direction,
                   const c10::optional<at::Tensor>& inv_norm, const c10::optional<at::Tensor>& offsets, double beta,
                   const c10::optional<at::Tensor>& direction_sq) {
  const BaseStepArgs args{param, grad, step, source, skip, direction, inv_norm, offsets, beta, direction_sq};
  const DirectionFold fold(args, check_adam_step(args, exp_avg, exp_avg_sq, kBackend));
  const bool skipped = restore_if_skipped(args, param);
  const AdamBias bias = adam_bias(skipped ? 1.0 : step.item<double>(), lr, beta1, beta2);
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "adam_step_cpu", [&] {
    scalar_t* p = param.data_ptr<scalar_t>();
    const scalar_t* src = source ? source->data_ptr<scalar_t>() : p;
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* m = exp_avg.data_ptr<scalar_t>();
    scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();
    const scalar_t omb1 = static_cast<scalar_t>(1.0 - beta1), b2 = static_cast<scalar_t>(beta2),
                   omb2 = static_cast<scalar_t>(1.0 - beta2), ep = static_cast<scalar_t>(eps),
                   wd = static_cast<scalar_t>(weight_decay), decay = static_cast<scalar_t>(1.0 - lr * weight_decay),
                   ss = static_cast<scalar_t>(bias.step_size), bc2 = static_cast<scalar_t>(bias.bc2_sqrt);
    run_base_update<scalar_t>(param.numel(), fold, skipped, [&](int64_t begin, int64_t end, Ema<scalar_t> ema) {
      adam_range<scalar_t>(p, src, g, m, v, begin, end, omb1, b2, omb2, ep, wd, decoupled, decay, ss, bc2, ema);
    });
  });
}

void sgd_step_cpu(at::Tensor& param, const at::Tensor& grad, at::Tensor& momentum_buffer, const at::Tensor& step,
                  const c10::optional<at::Tensor>& source, const c10::optional<at::Tensor>& skip, double lr,
                  double momentum, double dampening, double weight_decay, bool nesterov,
                  const c10::optional<at::Tensor>& direction, const c10::optional<at::Tensor>& inv_norm,
                  const c10::optional<at::Tensor>& offsets, double beta,
                  const c10::optional<at::Tensor>& direction_sq) {
  const BaseStepArgs args{param, grad, step, source, skip, direction, inv_norm, offsets, beta, direction_sq};
  const DirectionFold fold(args, check_sgd_step(args, momentum_buffer, momentum, kBackend));
  const bool skipped = restore_if_skipped(args, param);
  const bool first = step.item<double>() <= 1.0;
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "sgd_step_cpu", [&] {
    scalar_t* p = param.data_ptr<scalar_t>();
    const scalar_t* src = source ? source->data_ptr<scalar_t>() : p;
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* buf = momentum != 0.0 ? momentum_buffer.data_ptr<scalar_t>() : nullptr;
    const scalar_t lr_ = static_cast<scalar_t>(lr), mom = static_cast<scalar_t>(momentum),
                   omd = static_cast<scalar_t>(1.0 - dampening), wd = static_cast<scalar_t>(weight_decay);
    run_base_update<scalar_t>(param.numel(), fold, skipped, [&](int64_t begin, int64_t end, Ema<scalar_t> ema) {
      sgd_range<scalar_t>(p, src, g, buf, begin, end, first, lr_, mom, omd, wd, nesterov, ema);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(graphsam_ext, CPU, m) {
  m.impl("sum_squares", &sum_squares_cpu);
  m.impl("unscale_sum_squares_", &unscale_sum_squares_cpu);
  m.impl("zero_", &zero_cpu);
  m.impl("perturb_", &perturb_cpu);
  m.impl("direction_update_", &direction_update_cpu);
  m.impl("adam_step_", &adam_step_cpu);
  m.impl("sgd_step_", &sgd_step_cpu);
}

}  // namespace graphsam_ext

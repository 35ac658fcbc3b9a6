// CUDA kernels of the sparse graph-attention op (CSR over destination nodes).
//
// One warp per (destination node, head). Lane l owns the features d = l, l + 32, ... of the
// head (VPT of them, a compile-time bound), so a score is one warp-wide sum and the running
// output of the online softmax stays in registers. Half and bfloat16 inputs are accumulated in
// float. The forward saves only lse (num_nodes x heads). The backward recomputes each edge's
// probability from lse and scatters dk / dv to the source nodes with atomics into float (or
// double) buffers, so those two gradients are not bitwise reproducible.
// CSR values are not read back to the host (that would sync); the kernels assert on them.
// Includes stay at the c10 level: ATen/cuda/CUDAContext.h needs the cuSPARSE / cuBLAS headers.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "graph_attn_math.h"

namespace graphsam_ext {
namespace {

constexpr const char* kFwd = "graph_attention_forward (CUDA)";
constexpr const char* kBwd = "graph_attention_backward (CUDA)";
constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int kMaxDim = 8 * kWarp;

#define GA_CHECK(cond, op, ...) TORCH_CHECK_VALUE(cond, op, ": ", __VA_ARGS__)

// Sum over the warp; the butterfly leaves the same bits in every lane (a + b == b + a), so all
// lanes take the same softmax branches.
template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

template <typename index_t>
__device__ __forceinline__ void assert_row(const index_t* rowptr, int64_t i, int64_t num_edges) {
  CUDA_KERNEL_ASSERT(rowptr[i] >= 0 && rowptr[i] <= rowptr[i + 1] && rowptr[i + 1] <= num_edges);
}

template <typename scalar_t, typename index_t, int VPT>
__global__ void forward_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                               const scalar_t* __restrict__ v, const index_t* __restrict__ rowptr,
                               const index_t* __restrict__ col, const scalar_t* __restrict__ edge,
                               const scalar_t* __restrict__ bias, scalar_t* __restrict__ out,
                               at::opmath_type<scalar_t>* __restrict__ lse, int64_t num_nodes, int64_t num_edges,
                               int heads, int dim, double scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= num_nodes * heads) return;  // whole warps leave together: shuffles stay full-mask
  const int64_t i = warp / heads;
  const int h = int(warp % heads);
  const int64_t hd = int64_t(heads) * dim;
  const int64_t base = h * int64_t(dim);

  acc_t qr[VPT], acc[VPT];
#pragma unroll
  for (int t = 0; t < VPT; ++t) {
    const int d = lane + t * kWarp;
    qr[t] = d < dim ? acc_t(q[i * hd + base + d]) : acc_t(0);
    acc[t] = acc_t(0);
  }
  OnlineSoftmax<acc_t> sm;
  sm.init();
  assert_row(rowptr, i, num_edges);
  for (int64_t e = rowptr[i]; e < rowptr[i + 1]; ++e) {
    const int64_t j = col[e];
    CUDA_KERNEL_ASSERT(j >= 0 && j < num_nodes);
    acc_t partial = acc_t(0);
    acc_t ev[VPT];
#pragma unroll
    for (int t = 0; t < VPT; ++t) {
      const int d = lane + t * kWarp;
      ev[t] = (edge != nullptr && d < dim) ? acc_t(edge[e * hd + base + d]) : acc_t(0);
      if (d < dim) partial += qr[t] * (acc_t(k[j * hd + base + d]) + ev[t]);
    }
    acc_t score = warp_sum(partial) * acc_t(scale);
    if (bias != nullptr) score += acc_t(bias[e * heads + h]);
    acc_t rescale;
    const acc_t p = sm.push(score, rescale);
#pragma unroll
    for (int t = 0; t < VPT; ++t) {
      const int d = lane + t * kWarp;
      if (d < dim) acc[t] = acc[t] * rescale + p * (acc_t(v[j * hd + base + d]) + ev[t]);
    }
  }
  const acc_t inv = sm.inv_sum();
#pragma unroll
  for (int t = 0; t < VPT; ++t) {
    const int d = lane + t * kWarp;
    if (d < dim) out[i * hd + base + d] = scalar_t(acc[t] * inv);
  }
  if (lane == 0) lse[i * heads + h] = sm.lse();
}

template <typename scalar_t, typename index_t, int VPT>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_out,
                                const at::opmath_type<scalar_t>* __restrict__ grad_lse,
                                const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                const scalar_t* __restrict__ v, const index_t* __restrict__ rowptr,
                                const index_t* __restrict__ col, const scalar_t* __restrict__ edge,
                                const scalar_t* __restrict__ bias, const scalar_t* __restrict__ out,
                                const at::opmath_type<scalar_t>* __restrict__ lse, scalar_t* __restrict__ dq,
                                at::opmath_type<scalar_t>* __restrict__ dk_acc,
                                at::opmath_type<scalar_t>* __restrict__ dv_acc, scalar_t* __restrict__ dedge,
                                scalar_t* __restrict__ dbias, int64_t num_nodes, int64_t num_edges, int heads,
                                int dim, double scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= num_nodes * heads) return;
  const int64_t i = warp / heads;
  const int h = int(warp % heads);
  const int64_t hd = int64_t(heads) * dim;
  const int64_t base = h * int64_t(dim);
  const acc_t sc = acc_t(scale);

  acc_t qr[VPT], gr[VPT], dqr[VPT];
  acc_t partial = acc_t(0);
#pragma unroll
  for (int t = 0; t < VPT; ++t) {
    const int d = lane + t * kWarp;
    qr[t] = d < dim ? acc_t(q[i * hd + base + d]) : acc_t(0);
    gr[t] = d < dim ? acc_t(grad_out[i * hd + base + d]) : acc_t(0);
    if (d < dim) partial += gr[t] * acc_t(out[i * hd + base + d]);
    dqr[t] = acc_t(0);
  }
  const acc_t delta = warp_sum(partial) - (grad_lse != nullptr ? grad_lse[i * heads + h] : acc_t(0));
  const acc_t row_lse = lse[i * heads + h];
  assert_row(rowptr, i, num_edges);
  for (int64_t e = rowptr[i]; e < rowptr[i + 1]; ++e) {
    const int64_t j = col[e];
    CUDA_KERNEL_ASSERT(j >= 0 && j < num_nodes);
    acc_t kr[VPT];
    acc_t score_part = acc_t(0), dp_part = acc_t(0);
#pragma unroll
    for (int t = 0; t < VPT; ++t) {
      const int d = lane + t * kWarp;
      if (d < dim) {
        const acc_t ev = edge != nullptr ? acc_t(edge[e * hd + base + d]) : acc_t(0);
        kr[t] = acc_t(k[j * hd + base + d]) + ev;
        score_part += qr[t] * kr[t];
        dp_part += gr[t] * (acc_t(v[j * hd + base + d]) + ev);
      } else {
        kr[t] = acc_t(0);
      }
    }
    acc_t score = warp_sum(score_part) * sc;
    if (bias != nullptr) score += acc_t(bias[e * heads + h]);
    const acc_t p = edge_probability(score, row_lse);
    const acc_t ds = score_grad(p, warp_sum(dp_part), delta);
    const acc_t w = sc * ds;
#pragma unroll
    for (int t = 0; t < VPT; ++t) {
      const int d = lane + t * kWarp;
      if (d < dim) {
        dqr[t] += w * kr[t];
        const acc_t dk_e = w * qr[t];
        const acc_t dv_e = p * gr[t];
        atomicAdd(dk_acc + j * hd + base + d, dk_e);
        atomicAdd(dv_acc + j * hd + base + d, dv_e);
        if (dedge != nullptr) dedge[e * hd + base + d] = scalar_t(dk_e + dv_e);
      }
    }
    if (dbias != nullptr && lane == 0) dbias[e * heads + h] = scalar_t(ds);
  }
#pragma unroll
  for (int t = 0; t < VPT; ++t) {
    const int d = lane + t * kWarp;
    if (d < dim) dq[i * hd + base + d] = scalar_t(dqr[t]);
  }
}

struct Sizes {
  int64_t n, h, d, e;
};

Sizes check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& rowptr, const at::Tensor& col, const c10::optional<at::Tensor>& edge,
                   const c10::optional<at::Tensor>& bias) {
  GA_CHECK(q.dim() == 3, op, "q must be (num_nodes, heads, dim), got shape ", q.sizes());
  GA_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), op, "k and v must have q's shape ", q.sizes());
  const auto st = q.scalar_type();
  GA_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op,
           "q must be float32, float64, float16 or bfloat16, got ", st);
  GA_CHECK(k.scalar_type() == st && v.scalar_type() == st, op, "q, k and v must share one dtype");
  GA_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), op, "q, k and v must be contiguous");
  GA_CHECK(q.size(2) <= kMaxDim, op, "dim must be at most ", kMaxDim, " on CUDA, got ", q.size(2),
           "; use more heads of a smaller dim");
  GA_CHECK(rowptr.dim() == 1 && rowptr.numel() == q.size(0) + 1, op, "rowptr must be (num_nodes + 1,), got ",
           rowptr.sizes());
  GA_CHECK(col.dim() == 1, op, "col must be 1-D (num_edges,), got ", col.sizes());
  GA_CHECK(rowptr.scalar_type() == col.scalar_type() &&
               (col.scalar_type() == at::kLong || col.scalar_type() == at::kInt),
           op, "rowptr and col must both be int64 or both int32");
  GA_CHECK(rowptr.is_contiguous() && col.is_contiguous(), op, "rowptr and col must be contiguous");
  const int64_t n = q.size(0), h = q.size(1), d = q.size(2), e = col.numel();
  GA_CHECK(q.is_cuda(), op, "q must be a CUDA tensor");
  for (const at::Tensor* t : {&k, &v, &rowptr, &col}) {
    GA_CHECK(t->device() == q.device(), op, "every input must be on q's device ", q.device(), ", got ",
             t->device());
  }
  if (edge.has_value()) {
    GA_CHECK(edge->dim() == 3 && edge->size(0) == e && edge->size(1) == h && edge->size(2) == d, op,
             "edge must be (num_edges, heads, dim), got ", edge->sizes());
    GA_CHECK(edge->scalar_type() == st && edge->is_contiguous() && edge->device() == q.device(), op,
             "edge must be contiguous, on q's device, with q's dtype");
  }
  if (bias.has_value()) {
    GA_CHECK(bias->dim() == 2 && bias->size(0) == e && bias->size(1) == h, op,
             "bias must be (num_edges, heads), got ", bias->sizes());
    GA_CHECK(bias->scalar_type() == st && bias->is_contiguous() && bias->device() == q.device(), op,
             "bias must be contiguous, on q's device, with q's dtype");
  }
  return {n, h, d, e};
}

at::ScalarType acc_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

int64_t blocks_for(const Sizes& s) { return (s.n * s.h * kWarp + kThreads - 1) / kThreads; }

// Calls fn(std::integral_constant<int, VPT>) with the smallest VPT covering dim.
template <typename Fn>
void dispatch_vpt(int64_t dim, Fn&& fn) {
  if (dim <= kWarp) {
    fn(std::integral_constant<int, 1>());
  } else if (dim <= 2 * kWarp) {
    fn(std::integral_constant<int, 2>());
  } else if (dim <= 4 * kWarp) {
    fn(std::integral_constant<int, 4>());
  } else {
    fn(std::integral_constant<int, 8>());
  }
}

template <typename T>
const T* optional_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor> graph_attention_forward_cuda(const at::Tensor& q, const at::Tensor& k,
                                                                const at::Tensor& v, const at::Tensor& rowptr,
                                                                const at::Tensor& col,
                                                                const c10::optional<at::Tensor>& edge,
                                                                const c10::optional<at::Tensor>& bias,
                                                                double scale) {
  const Sizes s = check_inputs(kFwd, q, k, v, rowptr, col, edge, bias);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({s.n, s.h}, q.options().dtype(acc_type(q.scalar_type())));
  if (s.n * s.h == 0 || s.d == 0) {
    out.zero_();
    lse.zero_();
    return {out, lse};
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "graph_attention_forward_cuda", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "graph_attention_forward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      dispatch_vpt(s.d, [&](auto vpt) {
        forward_kernel<scalar_t, index_t, decltype(vpt)::value><<<blocks_for(s), kThreads, 0, stream>>>(
            q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), rowptr.data_ptr<index_t>(),
            col.data_ptr<index_t>(), optional_ptr<scalar_t>(edge), optional_ptr<scalar_t>(bias),
            out.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(), s.n, s.e, int(s.h), int(s.d), scale);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> graph_attention_backward_cuda(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& rowptr, const at::Tensor& col, const c10::optional<at::Tensor>& edge,
    const c10::optional<at::Tensor>& bias, const at::Tensor& out, const at::Tensor& lse, double scale) {
  const Sizes s = check_inputs(kBwd, q, k, v, rowptr, col, edge, bias);
  const auto acc = acc_type(q.scalar_type());
  GA_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(), kBwd, "grad_out and out must have q's shape");
  GA_CHECK(grad_out.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(), kBwd,
           "grad_out and out must have q's dtype");
  GA_CHECK(grad_out.device() == q.device() && out.device() == q.device() && lse.device() == q.device(), kBwd,
           "grad_out, out and lse must be on q's device");
  GA_CHECK(lse.sizes() == at::IntArrayRef({s.n, s.h}) && lse.scalar_type() == acc, kBwd,
           "lse must be (num_nodes, heads) in ", acc, ", as returned by the forward");
  if (grad_lse.has_value()) {
    GA_CHECK(grad_lse->sizes() == lse.sizes() && grad_lse->scalar_type() == acc &&
                 grad_lse->device() == q.device(),
             kBwd, "grad_lse must match lse's shape, dtype and device");
  }
  const c10::cuda::CUDAGuard guard(q.device());
  at::globalContext().alertNotDeterministic(kBwd);
  const at::Tensor g = grad_out.contiguous();
  const at::Tensor o = out.contiguous();
  const at::Tensor l = lse.contiguous();
  const c10::optional<at::Tensor> gl =
      grad_lse.has_value() ? c10::optional<at::Tensor>(grad_lse->contiguous()) : c10::nullopt;
  at::Tensor dq = at::empty_like(q);
  at::Tensor dk_acc = at::zeros(q.sizes(), q.options().dtype(acc));
  at::Tensor dv_acc = at::zeros(q.sizes(), q.options().dtype(acc));
  // every edge belongs to exactly one destination row, so these are written without atomics
  at::Tensor dedge = edge.has_value() ? at::zeros_like(*edge) : q.new_empty({0});
  at::Tensor dbias = bias.has_value() ? at::zeros_like(*bias) : q.new_empty({0});
  if (s.n * s.h > 0 && s.d > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "graph_attention_backward_cuda", [&] {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "graph_attention_backward_cuda",
                                      [&] {
        using acc_t = at::opmath_type<scalar_t>;
        dispatch_vpt(s.d, [&](auto vpt) {
          backward_kernel<scalar_t, index_t, decltype(vpt)::value><<<blocks_for(s), kThreads, 0, stream>>>(
              g.data_ptr<scalar_t>(), optional_ptr<acc_t>(gl), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
              v.data_ptr<scalar_t>(), rowptr.data_ptr<index_t>(), col.data_ptr<index_t>(),
              optional_ptr<scalar_t>(edge), optional_ptr<scalar_t>(bias), o.data_ptr<scalar_t>(),
              l.data_ptr<acc_t>(), dq.data_ptr<scalar_t>(), dk_acc.data_ptr<acc_t>(), dv_acc.data_ptr<acc_t>(),
              edge.has_value() ? dedge.data_ptr<scalar_t>() : nullptr,
              bias.has_value() ? dbias.data_ptr<scalar_t>() : nullptr, s.n, s.e, int(s.h), int(s.d), scale);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  } else {
    dq.zero_();
  }
  return {dq, dk_acc.to(q.scalar_type()), dv_acc.to(q.scalar_type()), dedge, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(graphsam_ext, CUDA, m) {
  m.impl("graph_attention_forward", &graph_attention_forward_cuda);
  m.impl("graph_attention_backward", &graph_attention_backward_cuda);
}

}  // namespace graphsam_ext

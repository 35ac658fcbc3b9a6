// CPU kernels of the sparse graph-attention op (CSR over destination nodes).
//
// Forward: at::parallel_for over destination nodes; each node streams its incoming edges once
// with an online softmax and saves only lse (num_nodes x heads).
// Backward, two passes, both free of races and of atomics, so the result is deterministic:
//   1. over destinations: recompute each edge's probability from lse, write dq, dedge, dbias
//      and keep p and dscore per (edge, head) - num_edges x heads scalars, never x dim;
//   2. over sources (a transposed CSR built here by a stable counting sort): dk and dv are sums
//      over the edges leaving each node, added in edge order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "graph_attn_math.h"

namespace graphsam_ext {
namespace {

constexpr const char* kFwd = "graph_attention_forward (CPU)";
constexpr const char* kBwd = "graph_attention_backward (CPU)";

// Value errors surface in Python as ValueError, like the checks of the Python wrapper.
#define GA_CHECK(cond, op, ...) TORCH_CHECK_VALUE(cond, op, ": ", __VA_ARGS__)

// Rows per parallel task: enough work per task to pay for the scheduling.
int64_t grain_for(int64_t rows, int64_t edges, int64_t hd) {
  const int64_t work_per_row = hd * (1 + edges / std::max<int64_t>(rows, 1));
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(work_per_row, 1));
}

struct Sizes {
  int64_t n, h, d, e;
};

// The first thing wrong with a CSR graph, if any.
struct CsrProblem {
  enum Kind { kNone, kEnds, kDecreasing, kColumn } kind = kNone;
  int64_t index = 0;  // kEnds: rowptr[0]; kDecreasing: the entry; kColumn: the edge
  int64_t value = 0;  // kEnds: rowptr[num_nodes]; kColumn: col[edge]
};

template <typename index_t>
CsrProblem find_csr_problem(const index_t* rp, const index_t* c, int64_t n, int64_t e) {
  CsrProblem p;
  if (rp[0] != 0 || rp[n] != e) {
    p.kind = CsrProblem::kEnds;
    p.index = rp[0];
    p.value = rp[n];
    return p;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (rp[i + 1] < rp[i]) {
      p.kind = CsrProblem::kDecreasing;
      p.index = i + 1;
      return p;
    }
  }
  for (int64_t x = 0; x < e; ++x) {
    if (c[x] < 0 || c[x] >= n) {
      p.kind = CsrProblem::kColumn;
      p.index = x;
      p.value = c[x];
      return p;
    }
  }
  return p;
}

// Shape, dtype, device and layout checks shared by forward and backward; CSR values are
// checked too, since a bad index would read out of bounds.
Sizes check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& rowptr, const at::Tensor& col, const c10::optional<at::Tensor>& edge,
                   const c10::optional<at::Tensor>& bias) {
  GA_CHECK(q.dim() == 3, op, "q must be (num_nodes, heads, dim), got shape ", q.sizes());
  GA_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), op, "k and v must have q's shape ", q.sizes(),
           ", got ", k.sizes(), " and ", v.sizes());
  const auto st = q.scalar_type();
  GA_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16, op,
           "q must be float32, float64 or bfloat16, got ", st);
  GA_CHECK(k.scalar_type() == st && v.scalar_type() == st, op, "q, k and v must share one dtype");
  GA_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), op, "q, k and v must be contiguous");
  GA_CHECK(rowptr.dim() == 1 && rowptr.numel() == q.size(0) + 1, op, "rowptr must be (num_nodes + 1,) = (",
           q.size(0) + 1, ",), got ", rowptr.sizes());
  GA_CHECK(col.dim() == 1, op, "col must be 1-D (num_edges,), got ", col.sizes());
  GA_CHECK(rowptr.scalar_type() == col.scalar_type() &&
               (col.scalar_type() == at::kLong || col.scalar_type() == at::kInt),
           op, "rowptr and col must both be int64 or both int32, got ", rowptr.scalar_type(), " and ",
           col.scalar_type());
  GA_CHECK(rowptr.is_contiguous() && col.is_contiguous(), op, "rowptr and col must be contiguous");
  const int64_t n = q.size(0), h = q.size(1), d = q.size(2), e = col.numel();
  if (edge.has_value()) {
    GA_CHECK(edge->dim() == 3 && edge->size(0) == e && edge->size(1) == h && edge->size(2) == d, op,
             "edge must be (num_edges, heads, dim) = (", e, ", ", h, ", ", d, "), got ", edge->sizes());
    GA_CHECK(edge->scalar_type() == st && edge->is_contiguous(), op, "edge must be contiguous with q's dtype");
  }
  if (bias.has_value()) {
    GA_CHECK(bias->dim() == 2 && bias->size(0) == e && bias->size(1) == h, op,
             "bias must be (num_edges, heads) = (", e, ", ", h, "), got ", bias->sizes());
    GA_CHECK(bias->scalar_type() == st && bias->is_contiguous(), op, "bias must be contiguous with q's dtype");
  }
  for (const at::Tensor* t : {&k, &v, &rowptr, &col}) {
    GA_CHECK(t->device().is_cpu(), op, "every input must be on the CPU, got one on ", t->device());
  }
  GA_CHECK(q.device().is_cpu(), op, "q must be on the CPU");
  if (edge.has_value()) GA_CHECK(edge->device().is_cpu(), op, "edge must be on the CPU");
  if (bias.has_value()) GA_CHECK(bias->device().is_cpu(), op, "bias must be on the CPU");
  // scanned outside any dispatch lambda: an exception thrown from inside one crashed the
  // process with some compiler / torch combinations (gcc 13, torch 2.11)
  const CsrProblem bad = col.scalar_type() == at::kLong
                             ? find_csr_problem(rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), n, e)
                             : find_csr_problem(rowptr.data_ptr<int32_t>(), col.data_ptr<int32_t>(), n, e);
  GA_CHECK(bad.kind != CsrProblem::kEnds, op, "rowptr must start at 0 and end at num_edges = ", e, ", got ",
           bad.index, " .. ", bad.value, "; build the CSR with graphsam_ext.ops.build_csr");
  GA_CHECK(bad.kind != CsrProblem::kDecreasing, op, "rowptr must be non-decreasing (entry ", bad.index,
           "); build the CSR with graphsam_ext.ops.build_csr");
  GA_CHECK(bad.kind != CsrProblem::kColumn, op, "col[", bad.index, "] = ", bad.value,
           " is not a node index in [0, ", n, ")");
  return {n, h, d, e};
}

template <typename acc_t, typename scalar_t>
inline acc_t dot(const acc_t* a, const scalar_t* b, const scalar_t* b2, int64_t d) {
  // four independent partial sums let the compiler keep several multiply-adds in flight
  acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t x = 0;
  if (b2 == nullptr) {
    for (; x + 4 <= d; x += 4) {
      s0 += a[x] * acc_t(b[x]);
      s1 += a[x + 1] * acc_t(b[x + 1]);
      s2 += a[x + 2] * acc_t(b[x + 2]);
      s3 += a[x + 3] * acc_t(b[x + 3]);
    }
    for (; x < d; ++x) s0 += a[x] * acc_t(b[x]);
  } else {
    for (; x + 4 <= d; x += 4) {
      s0 += a[x] * (acc_t(b[x]) + acc_t(b2[x]));
      s1 += a[x + 1] * (acc_t(b[x + 1]) + acc_t(b2[x + 1]));
      s2 += a[x + 2] * (acc_t(b[x + 2]) + acc_t(b2[x + 2]));
      s3 += a[x + 3] * (acc_t(b[x + 3]) + acc_t(b2[x + 3]));
    }
    for (; x < d; ++x) s0 += a[x] * (acc_t(b[x]) + acc_t(b2[x]));
  }
  return (s0 + s1) + (s2 + s3);
}

template <typename scalar_t, typename index_t>
void forward_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rowptr,
                    const at::Tensor& col, const c10::optional<at::Tensor>& edge,
                    const c10::optional<at::Tensor>& bias, double scale, const Sizes& s, at::Tensor& out,
                    at::Tensor& lse) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const scalar_t* vp = v.data_ptr<scalar_t>();
  const scalar_t* ep = edge.has_value() ? edge->data_ptr<scalar_t>() : nullptr;
  const scalar_t* bp = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
  const index_t* rp = rowptr.data_ptr<index_t>();
  const index_t* cp = col.data_ptr<index_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  acc_t* lp = lse.data_ptr<acc_t>();
  const int64_t H = s.h, D = s.d, HD = s.h * s.d;
  const acc_t sc = acc_t(scale);

  at::parallel_for(0, s.n, grain_for(s.n, s.e, HD), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> qa(HD), acc(HD);
    std::vector<OnlineSoftmax<acc_t>> sm(H);
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t x = 0; x < HD; ++x) {
        qa[x] = acc_t(qp[i * HD + x]);
        acc[x] = acc_t(0);
      }
      for (auto& state : sm) state.init();
      for (int64_t e = rp[i]; e < rp[i + 1]; ++e) {
        const int64_t j = cp[e];
        const scalar_t* kj = kp + j * HD;
        const scalar_t* vj = vp + j * HD;
        const scalar_t* ee = ep ? ep + e * HD : nullptr;
        for (int64_t h = 0; h < H; ++h) {
          const int64_t o = h * D;
          acc_t score = sc * dot(qa.data() + o, kj + o, ee ? ee + o : nullptr, D);
          if (bp) score += acc_t(bp[e * H + h]);
          acc_t rescale;
          const acc_t p = sm[h].push(score, rescale);
          acc_t* a = acc.data() + o;
          if (rescale != acc_t(1)) {
            for (int64_t x = 0; x < D; ++x) a[x] *= rescale;
          }
          if (p == acc_t(0)) continue;
          if (ee) {
            for (int64_t x = 0; x < D; ++x) a[x] += p * (acc_t(vj[o + x]) + acc_t(ee[o + x]));
          } else {
            for (int64_t x = 0; x < D; ++x) a[x] += p * acc_t(vj[o + x]);
          }
        }
      }
      for (int64_t h = 0; h < H; ++h) {
        const acc_t inv = sm[h].inv_sum();
        for (int64_t x = 0; x < D; ++x) op[i * HD + h * D + x] = scalar_t(acc[h * D + x] * inv);
        lp[i * H + h] = sm[h].lse();
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> graph_attention_forward_cpu(const at::Tensor& q, const at::Tensor& k,
                                                               const at::Tensor& v, const at::Tensor& rowptr,
                                                               const at::Tensor& col,
                                                               const c10::optional<at::Tensor>& edge,
                                                               const c10::optional<at::Tensor>& bias,
                                                               double scale) {
  const Sizes s = check_inputs(kFwd, q, k, v, rowptr, col, edge, bias);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({s.n, s.h}, q.options().dtype(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "graph_attention_forward_cpu", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "graph_attention_forward_cpu", [&] {
      forward_kernel<scalar_t, index_t>(q, k, v, rowptr, col, edge, bias, scale, s, out, lse);
    });
  });
  return {out, lse};
}

template <typename scalar_t, typename index_t>
void backward_kernel(const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q,
                     const at::Tensor& k, const at::Tensor& v, const at::Tensor& rowptr, const at::Tensor& col,
                     const c10::optional<at::Tensor>& edge, const c10::optional<at::Tensor>& bias,
                     const at::Tensor& out, const at::Tensor& lse, double scale, const Sizes& s, at::Tensor& dq,
                     at::Tensor& dk, at::Tensor& dv, at::Tensor& dedge, at::Tensor& dbias) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* gp = grad_out.data_ptr<scalar_t>();
  const acc_t* glp = grad_lse.has_value() ? grad_lse->data_ptr<acc_t>() : nullptr;
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const scalar_t* vp = v.data_ptr<scalar_t>();
  const scalar_t* ep = edge.has_value() ? edge->data_ptr<scalar_t>() : nullptr;
  const scalar_t* bp = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
  const scalar_t* outp = out.data_ptr<scalar_t>();
  const acc_t* lp = lse.data_ptr<acc_t>();
  const index_t* rp = rowptr.data_ptr<index_t>();
  const index_t* cp = col.data_ptr<index_t>();
  scalar_t* dqp = dq.data_ptr<scalar_t>();
  scalar_t* dkp = dk.data_ptr<scalar_t>();
  scalar_t* dvp = dv.data_ptr<scalar_t>();
  scalar_t* dep = ep ? dedge.data_ptr<scalar_t>() : nullptr;
  scalar_t* dbp = bp ? dbias.data_ptr<scalar_t>() : nullptr;
  const int64_t N = s.n, H = s.h, D = s.d, E = s.e, HD = s.h * s.d;
  const acc_t sc = acc_t(scale);

  // per (edge, head) probability and score gradient, shared by both passes; allocated as
  // tensors so memory profilers see them
  at::Tensor prob_t = at::empty({E, H}, lse.options());
  at::Tensor dscore_t = at::empty({E, H}, lse.options());
  acc_t* prob = prob_t.data_ptr<acc_t>();
  acc_t* dscore = dscore_t.data_ptr<acc_t>();

  // pass 1: one destination at a time
  at::parallel_for(0, N, grain_for(N, E, HD), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> qa(HD), ga(HD), dqa(HD), delta(H);
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t x = 0; x < HD; ++x) {
        qa[x] = acc_t(qp[i * HD + x]);
        ga[x] = acc_t(gp[i * HD + x]);
        dqa[x] = acc_t(0);
      }
      for (int64_t h = 0; h < H; ++h) {
        delta[h] = dot(ga.data() + h * D, outp + i * HD + h * D, static_cast<const scalar_t*>(nullptr), D) -
                   (glp ? glp[i * H + h] : acc_t(0));
      }
      for (int64_t e = rp[i]; e < rp[i + 1]; ++e) {
        const int64_t j = cp[e];
        const scalar_t* kj = kp + j * HD;
        const scalar_t* vj = vp + j * HD;
        const scalar_t* ee = ep ? ep + e * HD : nullptr;
        for (int64_t h = 0; h < H; ++h) {
          const int64_t o = h * D;
          acc_t score = sc * dot(qa.data() + o, kj + o, ee ? ee + o : nullptr, D);
          if (bp) score += acc_t(bp[e * H + h]);
          const acc_t p = edge_probability(score, lp[i * H + h]);
          const acc_t dp = dot(ga.data() + o, vj + o, ee ? ee + o : nullptr, D);
          const acc_t ds = score_grad(p, dp, delta[h]);
          prob[e * H + h] = p;
          dscore[e * H + h] = ds;
          const acc_t w = sc * ds;
          acc_t* g = dqa.data() + o;
          if (ee) {
            for (int64_t x = 0; x < D; ++x) g[x] += w * (acc_t(kj[o + x]) + acc_t(ee[o + x]));
            scalar_t* de = dep + e * HD + o;
            for (int64_t x = 0; x < D; ++x) de[x] = scalar_t(w * qa[o + x] + p * ga[o + x]);
          } else {
            for (int64_t x = 0; x < D; ++x) g[x] += w * acc_t(kj[o + x]);
          }
          if (dbp) dbp[e * H + h] = scalar_t(ds);
        }
      }
      for (int64_t x = 0; x < HD; ++x) dqp[i * HD + x] = scalar_t(dqa[x]);
    }
  });

  // transposed CSR: the edges leaving each source node, in increasing edge order
  at::Tensor by_source_t = at::empty({E}, rowptr.options().dtype(at::kLong));
  at::Tensor source_ptr_t = at::zeros({N + 1}, rowptr.options().dtype(at::kLong));
  at::Tensor dst_t = at::empty({E}, rowptr.options().dtype(at::kLong));
  int64_t* by_source = by_source_t.data_ptr<int64_t>();
  int64_t* sptr = source_ptr_t.data_ptr<int64_t>();
  int64_t* dst = dst_t.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i)
    for (int64_t e = rp[i]; e < rp[i + 1]; ++e) dst[e] = i;
  for (int64_t e = 0; e < E; ++e) ++sptr[cp[e] + 1];
  for (int64_t j = 0; j < N; ++j) sptr[j + 1] += sptr[j];
  {
    std::vector<int64_t> fill(sptr, sptr + N);
    for (int64_t e = 0; e < E; ++e) by_source[fill[cp[e]]++] = e;
  }

  // pass 2: one source at a time
  at::parallel_for(0, N, grain_for(N, E, HD), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dka(HD), dva(HD);
    for (int64_t j = begin; j < end; ++j) {
      std::fill(dka.begin(), dka.end(), acc_t(0));
      std::fill(dva.begin(), dva.end(), acc_t(0));
      for (int64_t t = sptr[j]; t < sptr[j + 1]; ++t) {
        const int64_t e = by_source[t];
        const int64_t i = dst[e];
        const scalar_t* qi = qp + i * HD;
        const scalar_t* gi = gp + i * HD;
        for (int64_t h = 0; h < H; ++h) {
          const int64_t o = h * D;
          const acc_t w = sc * dscore[e * H + h];
          const acc_t p = prob[e * H + h];
          for (int64_t x = 0; x < D; ++x) {
            dka[o + x] += w * acc_t(qi[o + x]);
            dva[o + x] += p * acc_t(gi[o + x]);
          }
        }
      }
      for (int64_t x = 0; x < HD; ++x) {
        dkp[j * HD + x] = scalar_t(dka[x]);
        dvp[j * HD + x] = scalar_t(dva[x]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> graph_attention_backward_cpu(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& rowptr, const at::Tensor& col, const c10::optional<at::Tensor>& edge,
    const c10::optional<at::Tensor>& bias, const at::Tensor& out, const at::Tensor& lse, double scale) {
  const Sizes s = check_inputs(kBwd, q, k, v, rowptr, col, edge, bias);
  const auto acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  GA_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(), kBwd, "grad_out and out must have q's shape");
  GA_CHECK(grad_out.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(), kBwd,
           "grad_out and out must have q's dtype");
  GA_CHECK(lse.sizes() == at::IntArrayRef({s.n, s.h}) && lse.scalar_type() == acc_type, kBwd,
           "lse must be (num_nodes, heads) in ", acc_type, ", as returned by the forward");
  if (grad_lse.has_value()) {
    GA_CHECK(grad_lse->sizes() == lse.sizes() && grad_lse->scalar_type() == acc_type, kBwd,
             "grad_lse must match lse's shape and dtype");
  }
  const at::Tensor g = grad_out.contiguous();
  const at::Tensor o = out.contiguous();
  const at::Tensor l = lse.contiguous();
  const c10::optional<at::Tensor> gl =
      grad_lse.has_value() ? c10::optional<at::Tensor>(grad_lse->contiguous()) : c10::nullopt;
  at::Tensor dq = at::empty_like(q);
  at::Tensor dk = at::empty_like(q);
  at::Tensor dv = at::empty_like(q);
  at::Tensor dedge = edge.has_value() ? at::empty_like(*edge) : q.new_empty({0});
  at::Tensor dbias = bias.has_value() ? at::empty_like(*bias) : q.new_empty({0});
  AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "graph_attention_backward_cpu", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "graph_attention_backward_cpu", [&] {
      backward_kernel<scalar_t, index_t>(g, gl, q, k, v, rowptr, col, edge, bias, o, l, scale, s, dq, dk, dv, dedge,
                                         dbias);
    });
  });
  return {dq, dk, dv, dedge, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(graphsam_ext, CPU, m) {
  m.impl("graph_attention_forward", &graph_attention_forward_cpu);
  m.impl("graph_attention_backward", &graph_attention_backward_cpu);
}

}  // namespace graphsam_ext

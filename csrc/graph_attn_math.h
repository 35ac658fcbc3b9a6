// Per-edge arithmetic of the sparse graph-attention kernels.
// Included by the CPU (.cpp) and CUDA (.cu) kernels so both run the same softmax expressions.
//
// For destination i with incoming edges e (source j):
//   score_e = scale * <q_i, k_j + edge_e> + bias_e
//   lse_i   = log sum_e exp(score_e)           (0 for a node with no incoming edge)
//   out_i   = sum_e exp(score_e - lse_i) (v_j + edge_e)
// The forward keeps a running maximum m and running sum l (online softmax) so each edge is
// read once; the backward recomputes p_e = exp(score_e - lse_i) from the saved lse and uses
//   dscore_e = p_e * (<dout_i, v_j + edge_e> - delta_i),  delta_i = <dout_i, out_i> - dlse_i.
#pragma once
#include <cmath>
#include <limits>

#ifndef GSE_HD
#if defined(__CUDACC__)
#define GSE_HD __host__ __device__ __forceinline__
#else
#define GSE_HD inline
#endif
#endif

namespace graphsam_ext {

// Running state of one (node, head) softmax.
template <typename acc_t>
struct OnlineSoftmax {
  acc_t m;  // largest score so far (-inf before the first finite score)
  acc_t l;  // sum of exp(score - m) so far

  GSE_HD void init() {
    m = -std::numeric_limits<acc_t>::infinity();
    l = acc_t(0);
  }

  // Adds one score. Returns the probability weight of the new edge relative to the new maximum;
  // `rescale` is the factor the caller must apply to what it has accumulated so far. A score of
  // -inf (a bias used as a mask) contributes nothing, instead of the NaN exp(-inf - -inf).
  GSE_HD acc_t push(acc_t score, acc_t& rescale) {
    rescale = acc_t(1);
    if (score == -std::numeric_limits<acc_t>::infinity()) return acc_t(0);
    if (score > m) {
      rescale = exp(m - score);  // exp(-inf) = 0 on the first edge
      l *= rescale;
      m = score;
    }
    const acc_t p = exp(score - m);
    l += p;
    return p;
  }

  // 1 / l for normalizing the accumulated values; 0 when nothing was accumulated, so a node
  // without incoming edges (or with every edge masked) outputs zeros.
  GSE_HD acc_t inv_sum() const { return l > acc_t(0) ? acc_t(1) / l : acc_t(0); }

  GSE_HD acc_t lse() const { return l > acc_t(0) ? m + log(l) : acc_t(0); }
};

// Probability of one edge recomputed in the backward from the saved log-sum-exp.
template <typename acc_t>
GSE_HD acc_t edge_probability(acc_t score, acc_t lse) {
  return exp(score - lse);
}

// Gradient of the loss with respect to one score (softmax backward).
template <typename acc_t>
GSE_HD acc_t score_grad(acc_t p, acc_t dp, acc_t delta) {
  return p * (dp - delta);
}

}  // namespace graphsam_ext

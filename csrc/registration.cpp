// The one TORCH_LIBRARY block of graphsam_ext: every operator schema lives here.
// Kernels register themselves per backend with TORCH_LIBRARY_IMPL in csrc/cpu and csrc/cuda;
// fake (meta) kernels and autograd formulas are registered from Python (graphsam_ext/ops).
#include <torch/library.h>

TORCH_LIBRARY(graphsam_ext, m) {
  // ---- flat-buffer SAM / GraphSAM ops (graphsam_ext/ops/sam.py documents each) ----
  m.def("sum_squares(Tensor x, Tensor? weight, Tensor? offsets, int weight_power, float shift) -> Tensor");
  m.def(
      "unscale_sum_squares_(Tensor(a!) x, Tensor grad_scale, Tensor(b!) found_inf, Tensor? weight, Tensor? offsets, "
      "int weight_power, float shift) -> Tensor");
  m.def("zero_(Tensor(a!) x) -> ()");
  m.def(
      "perturb_(Tensor(a!) param, Tensor(b!) backup, Tensor direction, Tensor scale, Tensor? offsets, "
      "bool adaptive, Tensor? skip) -> ()");
  m.def(
      "direction_update_(Tensor(a!) direction, Tensor grad, Tensor inv_norm, Tensor? offsets, float beta, "
      "bool init, Tensor? skip) -> Tensor");
  m.def(
      "adam_step_(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor step, "
      "Tensor? source, Tensor? skip, float lr, float beta1, float beta2, float eps, float weight_decay, "
      "bool decoupled, Tensor(d!)? direction=None, Tensor? inv_norm=None, Tensor? offsets=None, float beta=0., "
      "Tensor(e!)? direction_sq=None) -> ()");
  m.def(
      "sgd_step_(Tensor(a!) param, Tensor grad, Tensor(b!) momentum_buffer, Tensor step, Tensor? source, "
      "Tensor? skip, float lr, float momentum, float dampening, float weight_decay, bool nesterov, "
      "Tensor(d!)? direction=None, Tensor? inv_norm=None, Tensor? offsets=None, float beta=0., "
      "Tensor(e!)? direction_sq=None) -> ()");
  // ---- sparse graph attention (graphsam_ext/ops/graph_attention.py documents each) ----
  m.def(
      "graph_attention_forward(Tensor q, Tensor k, Tensor v, Tensor rowptr, Tensor col, Tensor? edge, Tensor? bias, "
      "float scale) -> (Tensor, Tensor)");
  m.def(
      "graph_attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, Tensor rowptr, "
      "Tensor col, Tensor? edge, Tensor? bias, Tensor out, Tensor lse, float scale) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // ---- dropout with a counter-based mask (graphsam_ext/ops/dropout.py documents it) ----
  m.def("dropout(Tensor x, float p, Tensor seed) -> Tensor");
}

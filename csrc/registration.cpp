// The one TORCH_LIBRARY block of graphsam_ext: every operator schema lives here.
// Kernels register themselves per backend with TORCH_LIBRARY_IMPL in csrc/cpu and csrc/cuda;
// fake (meta) kernels and autograd formulas are registered from Python (graphsam_ext/ops).
#include <torch/extension.h>
#include <torch/library.h>

#ifdef _OPENMP
#include <omp.h>
#endif

TORCH_LIBRARY(graphsam_ext, m) {
  // ---- flat-buffer SAM / GraphSAM ops (graphsam_ext/ops/sam.py documents each) ----
  m.def("sum_squares(Tensor x, Tensor? weight, Tensor? offsets, int weight_power, float shift) -> Tensor");
  m.def(
      "perturb_(Tensor(a!) param, Tensor(b!) backup, Tensor direction, Tensor scale, Tensor? offsets, "
      "bool adaptive, Tensor? skip) -> ()");
  m.def(
      "direction_update_(Tensor(a!) direction, Tensor grad, Tensor inv_norm, Tensor? offsets, float beta, "
      "bool init, Tensor? skip) -> Tensor");
  m.def(
      "adam_step_(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor step, "
      "Tensor? source, Tensor? skip, float lr, float beta1, float beta2, float eps, float weight_decay, "
      "bool decoupled) -> ()");
  m.def(
      "sgd_step_(Tensor(a!) param, Tensor grad, Tensor(b!) momentum_buffer, Tensor step, Tensor? source, "
      "Tensor? skip, float lr, float momentum, float dampening, float weight_decay, bool nesterov) -> ()");
  // ---- sparse graph attention (graphsam_ext/ops/graph_attention.py documents each) ----
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = GRAPHSAM_EXT_VERSION;
#ifdef GRAPHSAM_EXT_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = GRAPHSAM_EXT_CUDA_ARCHS;
#else
  info["cuda"] = false;
  info["cuda_archs"] = "";
#endif
#ifdef _OPENMP
  info["openmp"] = true;
  info["omp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["omp_max_threads"] = 1;
#endif
  info["torch_built_against"] = TORCH_VERSION;
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "graphsam_ext native library: operators are registered in torch.ops.graphsam_ext";
  module.def("build_info", &build_info, "How this native library was built");
}

// The Python module graphsam_ext._C: importing it loads the operator library; it also reports
// how the library was built. The operators themselves are reached through torch.ops.graphsam_ext.
#include <torch/extension.h>

#ifdef _OPENMP
#include <omp.h>
#endif

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

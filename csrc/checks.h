// Argument checks shared by the CPU and CUDA kernels.
// Messages read "<op> (<backend>): <what is wrong>" so a user sees which op and which argument.
#pragma once
#include <ATen/ATen.h>

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

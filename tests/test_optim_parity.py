"""reference vs foreach vs fused: parameters and every state entry after 10 steps."""
import pytest
import torch

from graphsam_ext import _backend
from graphsam_ext.optim import SAM, GraphSAM
from tests.conftest import DEVICES
from tests.optim_helpers import run

OPTIMIZERS = {
    "sam": lambda **kw: (SAM, dict(rho=0.05, **kw)),
    "asam": lambda **kw: (SAM, dict(rho=0.5, adaptive=True, **kw)),
    "graphsam": lambda **kw: (GraphSAM, dict(rho=0.05, steps_per_epoch=4, **kw)),
    "graphsam-ref": lambda **kw: (GraphSAM, dict(rho=0.05, steps_per_epoch=4, mode="reference", **kw)),
}
BASES = {
    "adam": dict(lr=1e-2),
    "adamw": dict(lr=1e-2, weight_decay=0.02),
    "sgd": dict(lr=1e-2, momentum=0.9, nesterov=True),
}


def ulp_distance(a, b):
    """max |a - b| in units of the last place of the tensor's largest magnitude.

    Measured per tensor rather than per element: a momentum buffer is a sum that can cancel to
    values far below its rounding error, where an element-wise ULP count means nothing.
    """
    if a.numel() == 0:
        return 0.0
    scale = torch.maximum(a.abs().max(), b.abs().max()).clamp_min(torch.finfo(a.dtype).tiny)
    return float((a - b).abs().max() / (torch.finfo(a.dtype).eps * scale))


def compare(a_opt, a_params, b_opt, b_params, dtype):
    for pa, pb in zip(a_params, b_params):
        check(pa.detach(), pb.detach(), dtype, "param")
        sa, sb = a_opt.state[pa], b_opt.state[pb]
        assert set(sa) == set(sb), (set(sa), set(sb))
        for key in sa:
            check(torch.as_tensor(sa[key]).float() if key == "step" else sa[key],
                  torch.as_tensor(sb[key]).float() if key == "step" else sb[key], dtype, key)


def check(a, b, dtype, what):
    if dtype == torch.float64:
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"{what}: {m}")
    else:
        # the fused kernels round like torch's scalar CPU path; torch's vectorized ops may fuse
        # multiply-adds, so each op can differ by one rounding: a few ULP after 10 steps
        distance = ulp_distance(a, b)
        assert distance <= 8, f"{what}: {distance} ULP apart"


IMPLS = ["foreach", "fused"]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("total", [1, 3, 4097, 278011])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_implementations_agree(name, base, total, dtype):
    results = {}
    for impl in ["reference"] + IMPLS:
        cls, kw = OPTIMIZERS[name](implementation=impl, base_optimizer=base, **BASES[base])
        params, opt, losses = run(lambda groups: cls(groups, **kw), total, dtype=dtype)
        assert opt.implementation == impl
        results[impl] = (params, opt, losses)
    ref_params, ref_opt, _ = results["reference"]
    for impl in IMPLS:
        params, opt, _ = results[impl]
        compare(opt, params, ref_opt, ref_params, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_is_the_default_where_native(device):
    from tests.optim_helpers import make_params
    opt = GraphSAM(make_params(3, device=device))
    assert opt.implementation == ("fused" if _backend.use_native(device) else "foreach")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no visible CUDA device")
@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_fused_matches_cpu_reference(name, base, dtype):
    results = {}
    for device, impl in [("cpu", "reference"), ("cuda", "fused")]:
        cls, kw = OPTIMIZERS[name](implementation=impl, base_optimizer=base, **BASES[base])
        params, opt, _ = run(lambda groups: cls(groups, **kw), 4097, dtype=dtype, device=device)
        results[device] = (params, opt)
    (cpu_params, cpu_opt), (gpu_params, gpu_opt) = results["cpu"], results["cuda"]
    for pa, pb in zip(gpu_params, cpu_params):
        check(pa.detach().cpu(), pb.detach(), dtype, "param")
        for key, value in gpu_opt.state[pa].items():
            check(torch.as_tensor(value).cpu().float() if key == "step" else value.cpu(),
                  torch.as_tensor(cpu_opt.state[pb][key]).float() if key == "step" else cpu_opt.state[pb][key],
                  dtype, key)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("base", ["adam", "sgd"])
def test_mixed_dtypes_agree(name, base):
    """float32 and float64 parameters: the fused engine keeps one buffer per dtype, and the norms,
    the direction's ||d||^2 and per-tensor scales span both."""
    from tests.optim_helpers import make_params
    results = {}
    for impl in ["reference", "fused"]:
        params = [p if i % 2 else torch.nn.Parameter(p.detach().double()) for i, p in enumerate(make_params(4097))]
        cls, kw = OPTIMIZERS[name](implementation=impl, base_optimizer=base, **BASES[base])
        _, opt, _ = run(lambda groups: cls(groups, **kw), 4097, start=params)
        if impl == "fused":
            assert len(opt.engine.flat.buckets) == 2
        results[impl] = (params, opt)
    (ref_params, ref_opt), (params, opt) = results["reference"], results["fused"]
    for pa, pb in zip(params, ref_params):
        check(pa.detach().float(), pb.detach().float(), torch.float32, f"param ({pa.dtype})")
        for key, value in opt.state[pa].items():
            check(torch.as_tensor(value).float(), torch.as_tensor(ref_opt.state[pb][key]).float(),
                  torch.float32, f"{key} ({pa.dtype})")

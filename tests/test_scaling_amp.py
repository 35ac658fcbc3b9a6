"""fp16 with a gradient scaler for the SAM family (docs/scaling.md, graphsam_ext/optim/amp.py).

- The fused op ``unscale_sum_squares_`` against ``ops.reference`` on seeded random buffers of
  awkward sizes (1, 3, 1023, 4097 elements, several tensors), every weight power, a shift, scales
  that are powers of two and one that is not, non-finite elements: unscaled buffers bit for bit,
  sums to 1e-12 relative, found_inf exactly.
- ``step(closure, grad_scaler=scaler)`` under float16 autocast equals the step without a scaler
  whose closure divides the same scaled gradients by the scale itself (bit for bit: the scales are
  powers of two), for every SAM-family optimizer on every engine, for several steps.
- An inf in the first or in the second closure call of a step skips it: parameters and every
  per-parameter state tensor bit-identical, the scale halved as torch's GradScaler does, and
  training goes on.
- No host synchronization: on the CPU no Python-level read of a tensor happens inside a fused
  step and the kernels receive the scaler's tensors; on CUDA under set_sync_debug_mode("error").
"""
import warnings

import pytest
import torch

from graphsam_ext import _backend, ops
from graphsam_ext.ops import reference
from graphsam_ext.optim import AESAM, SAM, GraphSAM, LookSAM, SAMOne
from graphsam_ext.optim.accumulate import accumulating_closure
from graphsam_ext.optim.family import SAMFamily
from tests.conftest import DEVICES
from tests.test_fault_injection import IMPLS, assert_same, skip_counters, snapshot

native = pytest.mark.skipif(_backend.native_library() is None, reason="native library not built")

OPTIMIZERS = {
    "sam": lambda ps, impl: SAM(ps, rho=0.05, lr=1e-2, implementation=impl),
    "asam": lambda ps, impl: SAM(ps, rho=0.5, adaptive=True, lr=1e-2, implementation=impl),
    "sam-k": lambda ps, impl: SAM(ps, rho=0.05, sam_every=2, lr=1e-2, implementation=impl),
    "graphsam": lambda ps, impl: GraphSAM(ps, rho=0.05, steps_per_epoch=2, lr=1e-2, implementation=impl),
    "graphsam-ref": lambda ps, impl: GraphSAM(ps, rho=0.05, steps_per_epoch=2, mode="reference", lr=1e-2,
                                              implementation=impl),
    "sam-one": lambda ps, impl: SAMOne(ps, rho=0.05, steps_per_epoch=2, lr=1e-2, implementation=impl),
    "looksam": lambda ps, impl: LookSAM(ps, rho=0.05, k=2, lr=1e-2, implementation=impl),
    "ae-sam": lambda ps, impl: AESAM(ps, rho=0.05, c=-1e6, decision="host", lr=1e-2, implementation=impl),
    "sam-sgd": lambda ps, impl: SAM(ps, "sgd", rho=0.05, lr=1e-2, momentum=0.9, implementation=impl),
    "graphsam-clip": lambda ps, impl: GraphSAM(ps, rho=0.05, steps_per_epoch=2, max_grad_norm=0.5, lr=1e-2,
                                               implementation=impl),
}
SCALE = 2.0 ** 12


# -- the fused op against the reference ---------------------------------------------------------------------

def _segments(sizes, device):
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    return torch.tensor(bounds, dtype=torch.int64, device=device)


CASES = [[1], [3], [1023], [4097], [1, 3, 1023, 4097], [5, 0, 17, 2048]]


@native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sizes", CASES, ids=lambda s: "+".join(map(str, s)))
@pytest.mark.parametrize("scale", [SCALE, 3.0])
def test_unscale_sum_squares_matches_the_reference(device, dtype, sizes, scale):
    gen = torch.Generator().manual_seed(sum(sizes))
    n = sum(sizes)
    offsets = _segments(sizes, device)
    for weight_power, shift, per_tensor in [(0, 0.0, False), (0, 0.0, True), (1, 0.0, False), (2, 0.0, True),
                                            (0, 1e-8, True)]:
        x = (torch.randn(n, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)
        w = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype).to(device)
        grad_scale = torch.tensor(scale, device=device)
        x_ref = x.clone()
        found, found_ref = torch.zeros((), device=device), torch.zeros((), device=device)
        args = (w if weight_power else None, offsets if per_tensor else None, weight_power, shift)
        sq = ops.unscale_sum_squares_(x, grad_scale, found, *args)
        sq_ref = reference.unscale_sum_squares_(x_ref, grad_scale, found_ref, *args)
        assert torch.equal(x, x_ref)
        torch.testing.assert_close(sq, sq_ref, rtol=1e-12, atol=0)
        # the sum is the plain sum of squares of the unscaled buffer
        torch.testing.assert_close(sq, ops.sum_squares(x, *args), rtol=1e-12, atol=0)
        assert float(found) == float(found_ref) == 0.0


@native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("at", [0, 1022, 4096])
def test_unscale_sum_squares_sets_found_inf(device, bad, at):
    sizes = [1, 3, 1023, 4097]
    x = torch.randn(sum(sizes), generator=torch.Generator().manual_seed(at)).to(device)
    x[at] = float(bad)
    x_ref = x.clone()
    found, found_ref = torch.zeros((), device=device), torch.zeros((), device=device)
    grad_scale = torch.tensor(SCALE, device=device)
    offsets = _segments(sizes, device)
    sq = ops.unscale_sum_squares_(x, grad_scale, found, None, offsets, 0, 0.0)
    reference.unscale_sum_squares_(x_ref, grad_scale, found_ref, None, offsets, 0, 0.0)
    assert float(found) == float(found_ref) == 1.0
    assert torch.equal(x.isnan(), x_ref.isnan()) and torch.equal(x.nan_to_num(), x_ref.nan_to_num())
    assert (~torch.isfinite(sq)).sum() == 1
    # found_inf is only ever set, never cleared, as torch's unscale
    ops.unscale_sum_squares_(torch.ones(8, device=device), grad_scale, found, None, None, 0, 0.0)
    assert float(found) == 1.0


@native
def test_unscale_sum_squares_argument_errors():
    x = torch.ones(8)
    with pytest.raises(RuntimeError, match="found_inf must be one float32 element"):
        ops.unscale_sum_squares_(x, torch.tensor(2.0), torch.zeros((), dtype=torch.float64))
    with pytest.raises(RuntimeError, match="grad_scale must be one floating-point element"):
        ops.unscale_sum_squares_(x, torch.ones(2), torch.zeros(()))
    with pytest.raises(RuntimeError, match="weight must not be x itself"):
        ops.unscale_sum_squares_(x, torch.tensor(2.0), torch.zeros(()), x, None, 1, 0.0)


# -- the optimizers ------------------------------------------------------------------------------------------

def _model(device, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(device)


def _data(device, batch):
    gen = torch.Generator().manual_seed(100 + batch)
    return torch.randn(32, 6, generator=gen).to(device), torch.randn(32, 3, generator=gen).to(device)


def drive(name, impl, scaled, steps=5, device="cpu", fault=None, init_scale=SCALE):
    """``steps`` steps under float16 autocast. scaled: the closure backpropagates scaler.scale(loss)
    and the step gets the scaler; otherwise the closure backpropagates loss * scale itself and
    divides the gradients by the scale (the float32 computation of the same gradients).
    fault: (step, call) whose gradients get an inf. Returns (model, opt, scaler, snapshots)."""
    model = _model(device)
    opt = OPTIMIZERS[name](model.parameters(), impl)
    scaler = torch.amp.GradScaler(device, init_scale=init_scale)
    snaps = {}
    for batch in range(steps):
        x, y = _data(device, batch)
        calls = [0]

        def closure():
            with torch.autocast(device, dtype=torch.float16):
                out = model(x)
            loss = ((out.float() - y) ** 2).mean()
            if scaled:
                scaler.scale(loss).backward()
            else:
                (loss * init_scale).backward()
                for p in model.parameters():
                    p.grad.div_(init_scale)
            if fault is not None and (batch, calls[0]) == fault:
                model[0].weight.grad[1, 2] = float("inf")
            calls[0] += 1
            return loss

        if fault is not None and batch == fault[0]:
            snaps["before"] = snapshot(list(model.parameters()), opt)
            snaps["scale_before"] = scaler.get_scale()
        if scaled:
            opt.step(closure, grad_scaler=scaler)
            scaler.update()
        else:
            opt.step(closure)
        if fault is not None and batch == fault[0]:
            snaps["after"] = snapshot(list(model.parameters()), opt)
            snaps["scale_after"] = scaler.get_scale()
    return model, opt, scaler, snaps


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fp16_with_scaler_equals_the_unscaled_computation(name, impl):
    scaled, opt, scaler, _ = drive(name, impl, scaled=True)
    plain, _, _, _ = drive(name, impl, scaled=False)
    start = _model("cpu")
    for p, q, p0 in zip(scaled.parameters(), plain.parameters(), start.parameters()):
        assert torch.equal(p, q)
        assert not torch.equal(p, p0)
    assert scaler.get_scale() == SCALE and opt.skipped_steps == 0


# (step, call) of the first and the second closure call of a two-call step, and a one-call step
FAULTS = {"first": (2, 0), "second": (2, 1), "only": (3, 0)}
ONE_CALL = {"sam-k", "graphsam", "graphsam-ref", "sam-one", "looksam", "graphsam-clip"}  # step 3 makes one closure call


def _fault_cases():
    for name in OPTIMIZERS:
        for phase in FAULTS:
            if phase != "only" or name in ONE_CALL:
                yield pytest.param(name, phase, id=f"{name}-{phase}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,phase", list(_fault_cases()))
def test_inf_in_either_pass_skips_the_step_and_backs_off_the_scale(name, phase, impl):
    with pytest.warns(RuntimeWarning, match="not finite"):
        model, opt, scaler, snaps = drive(name, impl, scaled=True, steps=6, fault=FAULTS[phase])
    before_params, before_state = snaps["before"]
    after_params, after_state = snaps["after"]
    assert_same(after_params, before_params, "params")
    assert_same(after_state["state"], before_state["state"])
    assert_same(skip_counters(after_state["sam_family"]), skip_counters(before_state["sam_family"]))
    assert snaps["scale_after"] == snaps["scale_before"] / 2 == SCALE / 2
    assert opt.skipped_steps == 1
    # the steps after it train, with finite weights
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), after_params))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_overflowing_scale_backs_off_until_steps_are_taken():
    # 2**40 overflows float16 in the backward pass: the scaler backs off, then steps are taken
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model, opt, scaler, _ = drive("graphsam", "fused", scaled=True, steps=30, init_scale=2.0 ** 40)
    assert 0 < opt.skipped_steps < 30
    assert scaler.get_scale() < 2.0 ** 40
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fp16_with_scaler_tracks_float32_training():
    # float16 forward and backward against float32 ones: the same trajectory up to float16 rounding
    def train(precision):
        model = _model("cpu")
        opt = GraphSAM(model.parameters(), rho=0.05, steps_per_epoch=4, lr=1e-2)
        scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
        for batch in range(8):
            x, y = _data("cpu", batch)

            def closure():
                with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                    out = model(x)
                loss = ((out.float() - y) ** 2).mean()
                (loss if scaler is None else scaler.scale(loss)).backward()
                return loss

            opt.step(closure, grad_scaler=scaler)
            if scaler is not None:
                scaler.update()
        return model

    fp16, fp32, start = train("fp16"), train("fp32"), _model("cpu")
    flat = lambda m: torch.cat([p.detach().reshape(-1) for p in m.parameters()])  # noqa: E731
    moved = (flat(fp32) - flat(start)).norm()
    assert moved > 0.1
    assert (flat(fp16) - flat(fp32)).norm() < 0.02 * moved


@pytest.mark.parametrize("impl", IMPLS)
def test_accumulating_closure_with_a_scaler_equals_one_batch(impl):
    results = []
    for n in (1, 4):
        model = _model("cpu").double()
        opt = SAM(model.parameters(), rho=0.05, lr=1e-2, implementation=impl)
        scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
        x, y = _data("cpu", 0)
        micro = list(zip(x.double().chunk(n), y.double().chunk(n)))
        loss = opt.step(accumulating_closure(micro, lambda b: ((model(b[0]) - b[1]) ** 2).mean(),
                                             grad_scaler=scaler), grad_scaler=scaler)
        scaler.update()
        results.append(([p.detach().clone() for p in model.parameters()], loss))
    (one, loss1), (four, loss4) = results
    for p, q in zip(one, four):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss1, loss4, rtol=1e-10, atol=0)  # the unscaled mean loss


def test_scaler_api_errors():
    model = _model("cpu")
    opt = SAM(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    x, y = _data("cpu", 0)

    def closure():
        loss = ((model(x) - y) ** 2).mean()
        scaler.scale(loss).backward()
        return loss

    with pytest.raises(TypeError, match="grad_scaler: expected a torch.amp.GradScaler"):
        opt.step(closure, grad_scaler=2.0)
    opt.step(closure, grad_scaler=scaler)
    with pytest.raises(RuntimeError, match="call scaler.update"):
        opt.step(closure, grad_scaler=scaler)
    scaler.update()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="do not call scaler.unscale_"):
        opt.step(closure, grad_scaler=scaler)
    # a disabled scaler is no scaler: the closure's scale() returns the loss as it is
    off = torch.amp.GradScaler("cpu", enabled=False)
    opt.step(lambda: off.scale(((model(x) - y) ** 2).mean()).backward(), grad_scaler=off)


def test_scaler_step_with_a_positional_closure_routes_to_the_scaled_step():
    # GradScaler.step(optimizer, closure) hands itself to the step (torch warns that it will stop);
    # a keyword closure= is refused by torch
    a, b = _model("cpu"), _model("cpu")
    results = []
    for model, via_scaler in ((a, True), (b, False)):
        opt = GraphSAM(model.parameters(), rho=0.05, lr=1e-2)
        scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
        for batch in range(3):
            x, y = _data("cpu", batch)

            def closure():
                loss = ((model(x) - y) ** 2).mean()
                scaler.scale(loss).backward()
                return loss

            if via_scaler and batch > 0:  # GradScaler.step needs a scale made by scaler.scale() before it
                with pytest.warns(FutureWarning, match="GradScaler is going to stop passing itself"):
                    scaler.step(opt, closure)
            else:
                opt.step(closure, grad_scaler=scaler)
            scaler.update()
        results.append(scaler.get_scale())
    assert results == [SCALE, SCALE]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_frozen_parameters_with_a_scaler_still_record_the_step():
    model = _model("cpu")
    opt = SAM(model.parameters(), lr=1e-2)
    for p in model.parameters():
        p.requires_grad_(False)
    scaler = torch.amp.GradScaler("cpu")
    opt.step(lambda: torch.zeros(()), grad_scaler=scaler)
    scaler.update()  # would raise "No inf checks were recorded" without the step's record
    assert scaler.get_scale() == 2.0 ** 16


# -- no host synchronization ---------------------------------------------------------------------------------

HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@native
@pytest.mark.parametrize("name", ["sam", "graphsam", "graphsam-clip"])
def test_fused_step_makes_no_host_read_and_the_kernels_get_the_scaler_tensors(name, monkeypatch):
    model = _model("cpu")
    opt = OPTIMIZERS[name](model.parameters(), "fused")
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    seen = []
    kernel = ops.unscale_sum_squares_

    def spy(x, grad_scale, found_inf, *args):
        seen.append((grad_scale, found_inf))
        return kernel(x, grad_scale, found_inf, *args)

    monkeypatch.setattr("graphsam_ext.optim.engines.fused.ops.unscale_sum_squares_", spy)
    x, y = _data("cpu", 0)

    def closure():
        loss = ((model(x) - y) ** 2).mean()
        scaler.scale(loss).backward()
        return loss

    reads, calls = [], 0

    def forbidden(method):
        def read(self, *args, **kwargs):
            reads.append(method)
            raise AssertionError(f"Tensor.{method} called inside the fused step (a host read)")
        return read

    for step in range(3):
        seen.clear()
        with monkeypatch.context() as m:
            # the CPU-only skip counter read (``_record_skip``) is the one read on purpose: it is
            # skipped on GPUs; everything else in the step must stay on the device
            m.setattr(SAMFamily, "_check_skipped", lambda self: None)
            for method in HOST_READS:
                m.setattr(torch.Tensor, method, forbidden(method))
            opt.step(closure, grad_scaler=scaler)
        # one unscale per closure call (GraphSAM: two at an epoch's start), each given the
        # scaler's scale and the found_inf tensor the scaler then holds for update()
        assert len(seen) == opt.closure_calls - calls
        calls = opt.closure_calls
        recorded = list(scaler._per_optimizer_states[id(opt)]["found_inf_per_device"].values())
        for grad_scale, found_inf in seen:
            assert isinstance(grad_scale, torch.Tensor) and float(grad_scale) == SCALE
            assert found_inf is recorded[0] and found_inf.dtype == torch.float32
        scaler.update()
    assert reads == []


@native
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no visible CUDA device")
@pytest.mark.parametrize("name", ["sam", "graphsam"])
def test_cuda_fused_fp16_step_has_no_host_sync_and_skips_on_inf(name):
    assert _backend.use_native(torch.device("cuda"))
    device = "cuda"
    model = _model(device)
    opt = OPTIMIZERS[name](model.parameters(), "fused")
    assert opt.implementation == "fused"
    scaler = torch.amp.GradScaler(device, init_scale=SCALE)
    batches = [_data(device, b) for b in range(4)]
    inf_at = 2

    def closure_for(batch):
        x, y = batches[batch]

        def closure():
            with torch.autocast(device, dtype=torch.float16):
                out = model(x)
            loss = ((out.float() - y) ** 2).mean()
            scaler.scale(loss).backward()
            if batch == inf_at:
                model[2].weight.grad.fill_(float("inf"))
            return loss
        return closure

    opt.step(closure_for(0), grad_scaler=scaler)  # warm-up: lazy initializations outside the check
    scaler.update()
    torch.cuda.synchronize()
    before = None
    for batch in range(1, 4):
        if batch == inf_at:
            torch.cuda.synchronize()
            before = [p.detach().clone() for p in model.parameters()]
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step(closure_for(batch), grad_scaler=scaler)
            scaler.update()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        if batch == inf_at:
            assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
            assert scaler.get_scale() == SCALE / 2
    assert opt.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the CUDA steps equal the CPU fused ones for the steps without the inf
    cpu_model, _, _, _ = drive(name, "fused", scaled=True, steps=1)
    cuda_model, _, _, _ = drive(name, "fused", scaled=True, steps=1, device=device)
    for p, q in zip(cpu_model.parameters(), cuda_model.parameters()):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-4, atol=1e-5)

"""Steps whose gradients are exactly zero: a zero norm gives a zero contribution and a zero
perturbation, never NaN, in every engine and every SAM-family optimizer."""
import pytest
import torch

from graphsam_ext.optim import AESAM, SAM, GraphSAM, LookSAM, SAMOne
from tests.optim_helpers import loss_fn, make_params, make_targets, param_groups

IMPLS = ["reference", "foreach", "fused"]
TOTAL = 4097

OPTIMIZERS = {
    "sam": lambda g, impl, **kw: SAM(g, rho=0.05, implementation=impl, **kw),
    "asam": lambda g, impl, **kw: SAM(g, rho=0.5, adaptive=True, implementation=impl, **kw),
    "sam-k": lambda g, impl, **kw: SAM(g, rho=0.05, sam_every=2, implementation=impl, **kw),
    "graphsam": lambda g, impl, **kw: GraphSAM(g, rho=0.05, steps_per_epoch=3, implementation=impl, **kw),
    "graphsam-per-tensor": lambda g, impl, **kw: GraphSAM(g, rho=0.05, steps_per_epoch=3,
                                                          normalization="per_tensor", implementation=impl, **kw),
    "graphsam-ref": lambda g, impl, **kw: GraphSAM(g, rho=0.05, steps_per_epoch=3, mode="reference",
                                                   implementation=impl, **kw),
    "sam-one": lambda g, impl, **kw: SAMOne(g, rho=0.05, steps_per_epoch=3, implementation=impl, **kw),
    "looksam": lambda g, impl, **kw: LookSAM(g, rho=0.05, k=2, implementation=impl, **kw),
    "ae-sam": lambda g, impl, **kw: AESAM(g, rho=0.05, implementation=impl, **kw),
    "ae-sam-device": lambda g, impl, **kw: AESAM(g, rho=0.05, decision="device", implementation=impl, **kw),
}


def zeroed_run(make_opt, zero_at, steps=4, zero_tensors=None):
    """``steps`` closure steps; at the steps in ``zero_at`` the loss is multiplied by 0 (every
    gradient exactly zero), or, with ``zero_tensors``, those tensors get no loss term at all."""
    params = make_params(TOTAL)
    targets = make_targets(params)
    opt = make_opt(param_groups(params, 2))
    for batch in range(steps):
        def closure():
            opt.zero_grad()
            if batch in zero_at and zero_tensors is not None:
                kept = [i for i in range(len(params)) if i not in zero_tensors]
                loss = loss_fn([params[i] for i in kept], [targets[i] for i in kept], batch)
                loss = loss + 0.0 * sum(params[i].sum() for i in zero_tensors)
            else:
                loss = loss_fn(params, targets, batch)
                if batch in zero_at:
                    loss = loss * 0.0
            loss.backward()
            return loss
        opt.step(closure)
    return params, opt


def assert_finite_state(opt, params):
    for p in params:
        assert torch.isfinite(p).all()
        for key, value in opt.state[p].items():
            assert torch.isfinite(torch.as_tensor(value)).all(), key


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("zero_at", [0, 1, 2], ids=lambda z: f"zero-at-{z}")
def test_zero_gradient_step_is_not_skipped(impl, name, zero_at):
    """A zero-gradient step is a valid step (no skip, nothing non-finite), and the steps after
    it keep moving the parameters."""
    params, opt = zeroed_run(lambda g: OPTIMIZERS[name](g, impl, lr=1e-2), {zero_at}, steps=zero_at + 1)
    assert opt.skipped_steps == 0
    assert_finite_state(opt, params)
    before = [p.detach().clone() for p in params]
    targets = make_targets(params)
    for batch in range(2):
        opt.step(lambda: loss_fn(params, targets, batch).backward())
    assert opt.skipped_steps == 0
    assert_finite_state(opt, params)
    assert all(not torch.equal(p.detach(), b) for p, b in zip(params, before))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["paper", "reference"])
@pytest.mark.parametrize("zero_at", [0, 1], ids=lambda z: f"zero-at-{z}")
def test_rho_zero_graphsam_with_a_zeroed_loss_is_adam(impl, mode, zero_at):
    """rho = 0: GraphSAM equals torch.optim.Adam even when the loss is zeroed at one step of four."""
    kw = dict(lr=1e-2, weight_decay=0.01)
    want, _ = zeroed_run(lambda g: torch.optim.Adam(g, **kw), {zero_at})
    got, opt = zeroed_run(lambda g: GraphSAM(g, rho=0.0, steps_per_epoch=3, mode=mode, implementation=impl,
                                             **kw), {zero_at})
    assert opt.skipped_steps == 0
    for x, y in zip(got, want):
        if impl == "fused":
            torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(x.detach(), y.detach())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["graphsam", "graphsam-per-tensor", "graphsam-ref"])
def test_one_zero_tensor_contributes_nothing(impl, name):
    """Per-tensor normalization where one tensor's gradient is zero: that tensor's share of the
    direction is zero (not NaN), the others are normalized as usual."""
    params, opt = zeroed_run(lambda g: OPTIMIZERS[name](g, impl, lr=1e-2), {0, 1, 2}, steps=3, zero_tensors={2})
    assert opt.skipped_steps == 0
    assert_finite_state(opt, params)
    direction = [opt.state[p]["direction"] for p in params]
    assert torch.count_nonzero(direction[2]) == 0
    assert all(torch.count_nonzero(d) > 0 for i, d in enumerate(direction) if i != 2)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_zero_gradient_gives_zero_perturbation(impl, adaptive):
    params = make_params(TOTAL)
    opt = SAM(param_groups(params, 2), rho=0.05, adaptive=adaptive, implementation=impl)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.first_step()
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)
    opt.second_step()
    assert opt.skipped_steps == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_graphsam_zero_exact_gradient_gives_zero_perturbation(impl):
    params = make_params(TOTAL)
    opt = GraphSAM(param_groups(params, 2), rho=0.05, implementation=impl)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.exact_gradient_step()
    opt.first_step()
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)
    for p in params:
        assert torch.count_nonzero(opt.state[p]["direction"]) == 0

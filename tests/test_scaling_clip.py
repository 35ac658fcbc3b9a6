"""Gradient clipping by the global norm of the updating gradient: SAM / GraphSAM with
``max_grad_norm`` against ``torch.nn.utils.clip_grad_norm_`` and torch's Adam step."""
import pytest
import torch

from graphsam_ext import _backend
from graphsam_ext.optim import SAM, GraphSAM

NATIVE = _backend.use_native(torch.device("cpu"))
ENGINES = ["foreach", "reference",
           pytest.param("fused", marks=pytest.mark.skipif(not NATIVE, reason="native library not built"))]
STEPS, MAX_NORM, RHO, LR = 6, 0.05, 0.1, 1e-2
# float64: the two computations differ only in rounding (the clip coefficient is computed once
# in each, from sums in different orders)
RTOL, ATOL = 1e-9, 1e-12


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()


def _batch(t):
    gen = torch.Generator().manual_seed(t)
    return torch.randn(16, 5, generator=gen, dtype=torch.float64), torch.randn(16, 2, generator=gen,
                                                                                dtype=torch.float64)


def _grads(model, x, y):
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def _reference_sam():
    """SAM by hand: perturb along g / ||g||, gradient at theta + eps, restore, clip, Adam."""
    model = _model()
    params = list(model.parameters())
    adam = torch.optim.Adam(params, lr=LR)
    norms = []
    for t in range(STEPS):
        x, y = _batch(t)
        g = _grads(model, x, y)
        gnorm = torch.sqrt(sum((gi * gi).sum() for gi in g))
        eps = [RHO * gi / (gnorm + 1e-12) for gi in g]
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.add_(e)
        _grads(model, x, y)
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, MAX_NORM)))
        adam.step()
    return params, norms


def _run(opt_of):
    model = _model()
    opt = opt_of(model.parameters())
    for t in range(STEPS):
        x, y = _batch(t)

        def closure():
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
    return list(model.parameters()), opt


@pytest.mark.parametrize("impl", ENGINES)
def test_sam_clipping_equals_clip_grad_norm_then_the_base_step(impl):
    want, norms = _reference_sam()
    assert max(norms) > MAX_NORM  # the clipping is active
    got, _ = _run(lambda ps: SAM(ps, rho=RHO, lr=LR, max_grad_norm=MAX_NORM, implementation=impl))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    unclipped, _ = _run(lambda ps: SAM(ps, rho=RHO, lr=LR, implementation=impl))
    assert any(not torch.allclose(a, b, rtol=RTOL, atol=ATOL) for a, b in zip(unclipped, want))


@pytest.mark.parametrize("impl", ENGINES)
def test_graphsam_clipping_equals_its_unclipped_run_with_a_clipped_update(impl):
    """GraphSAM clips the gradient the base update uses and keeps the EMA of w / ||w||: against a
    GraphSAM whose torch base optimizer (an Adam class) sees clip_grad_norm_'s result."""
    class ClippedAdam(torch.optim.Adam):
        def step(self, closure=None):
            torch.nn.utils.clip_grad_norm_([p for g in self.param_groups for p in g["params"]], MAX_NORM)
            return super().step(closure)

    want, ref = _run(lambda ps: GraphSAM(ps, base_optimizer=ClippedAdam, rho=RHO, lr=LR, steps_per_epoch=3,
                                         implementation="foreach"))
    got, opt = _run(lambda ps: GraphSAM(ps, rho=RHO, lr=LR, steps_per_epoch=3, max_grad_norm=MAX_NORM,
                                        implementation=impl))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    for p, q in zip(opt.engine.params, ref.engine.params):
        torch.testing.assert_close(opt.state[p]["direction"], ref.state[q]["direction"], rtol=RTOL, atol=ATOL)


def test_max_grad_norm_must_be_positive():
    with pytest.raises(ValueError, match="max_grad_norm"):
        SAM(_model().parameters(), max_grad_norm=0.0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        GraphSAM(_model().parameters(), max_grad_norm=-1.0)

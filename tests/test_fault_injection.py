"""Fault injection: every SAM-family optimizer x every engine through zero, NaN and infinite
gradients at each phase of a step, closures that raise (RuntimeError, KeyboardInterrupt), None
gradients, frozen and unfrozen parameters and a late param group.

The rules checked (docs/optimizers.md):
- zero gradients: a valid step (not skipped, nothing non-finite); the engines agree.
- NaN / inf: the step is skipped, parameters and the whole state dict are what they were
  before it, ``skipped_steps`` is 1, and later steps train again.
- a closure that raises: the exception leaves ``step()`` with the parameters restored and the
  state dict unchanged, and carrying on gives bit for bit what a run without the failed step gives.
- None gradients count as zero gradients; frozen parameters are left alone until unfrozen; a
  late param group trains from fresh state; the engines agree under each.
"""
import pytest
import torch

from graphsam_ext.optim import AESAM, SAM, GraphSAM, LookSAM, SAMOne
from tests.optim_helpers import loss_fn, make_params, make_targets, param_groups

IMPLS = ["reference", "foreach", "fused"]
TOTAL = 37
STEPS = 6
FAULT_STEP = 2  # a step with two closure calls in every optimizer below

# name -> (factory, a step with one closure call or None). The factories' epochs / periods are 2
# steps, so step 2 takes two closure calls (exact gradient, SAM step) and step 3 one.
OPTIMIZERS = {
    "sam": (lambda g, impl: SAM(g, rho=0.05, lr=1e-2, implementation=impl), None),
    "asam": (lambda g, impl: SAM(g, rho=0.5, adaptive=True, lr=1e-2, implementation=impl), None),
    "sam-k": (lambda g, impl: SAM(g, rho=0.05, sam_every=2, lr=1e-2, implementation=impl), 3),
    "graphsam": (lambda g, impl: GraphSAM(g, rho=0.05, steps_per_epoch=2, lr=1e-2, implementation=impl), 3),
    "graphsam-ref": (lambda g, impl: GraphSAM(g, rho=0.05, steps_per_epoch=2, mode="reference", lr=1e-2,
                                              implementation=impl), 3),
    "sam-one": (lambda g, impl: SAMOne(g, rho=0.05, steps_per_epoch=2, lr=1e-2, implementation=impl), 3),
    "looksam": (lambda g, impl: LookSAM(g, rho=0.05, k=2, lr=1e-2, implementation=impl), 3),
    # c far below zero: every step is a SAM step, so the second closure call is always there
    "ae-sam-host": (lambda g, impl: AESAM(g, rho=0.05, c=-1e6, decision="host", lr=1e-2, implementation=impl),
                    None),
    "ae-sam-device": (lambda g, impl: AESAM(g, rho=0.05, decision="device", lr=1e-2, implementation=impl), None),
}

PHASES = {"first": (FAULT_STEP, 0), "second": (FAULT_STEP, 1), "only": (3, 0)}


def _phase_cases():
    for name, (_, one_call) in OPTIMIZERS.items():
        for phase in PHASES:
            if phase != "only" or one_call is not None:
                yield pytest.param(name, phase, id=f"{name}-{phase}")


PHASE_CASES = list(_phase_cases())


class Fault(Exception):
    """Stands for an out-of-memory error raised by the forward pass."""


def drive(name, impl, fault=None, steps=STEPS, skip_step=None, setup=None):
    """``steps`` closure steps of optimizer ``name``. fault: (step, call, kind) poisons that closure
    call; skip_step: a step index whose batch is not run (the run a failed step is compared with).
    setup(step, params, opt) runs before each step. Returns (params, opt, snapshots), snapshots
    holding (params, state_dict) before and after the faulty step."""
    factory, _ = OPTIMIZERS[name]
    params = make_params(TOTAL)
    targets = make_targets(params)
    opt = factory(param_groups(params, 2), impl)
    snapshots = {}
    for batch in range(steps):
        if batch == skip_step:
            continue
        if setup is not None:
            setup(batch, params, opt)
        calls = [0]

        def closure():
            call = calls[0]
            calls[0] += 1
            loss = loss_fn(params, targets, batch)
            kind = fault[2] if fault is not None and (batch, call) == fault[:2] else None
            if kind == "zero":
                loss = loss * 0.0
            elif kind in ("nan", "inf"):
                loss = loss + params[0].sum() * float(kind)
            elif kind == "raise":
                raise Fault("CUDA out of memory (injected)")
            elif kind == "interrupt":
                raise KeyboardInterrupt
            elif kind == "none":
                loss = loss_fn(params[2:], targets[2:], batch)
            loss.backward()
            if kind == "none":
                for p in params[:2]:
                    p.grad = None
            return loss

        if fault is not None and batch == fault[0]:
            snapshots["before"] = snapshot(params, opt)
            try:
                opt.step(closure)
            except (Fault, KeyboardInterrupt):
                snapshots["raised"] = True
            snapshots["after"] = snapshot(params, opt)
        else:
            opt.step(closure)
    return params, opt, snapshots


def snapshot(params, opt):
    return [p.detach().clone() for p in params], clone(opt.state_dict())


def clone(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(clone(v) for v in value)
    return value


def assert_same(a, b, path="state"):
    """Exact equality of nested state (tensors bit for bit, NaN == NaN)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, path
        assert torch.equal(a, b) or torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()), path
    elif isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


COUNTERS = {"skipped", "closure_calls", "sam_step_count", "look_step_count", "epoch", "step_in_epoch", "rho",
            "radius"}


def skip_counters(extra):
    return {k: v for k, v in extra.items() if k not in COUNTERS}


def assert_finite(params, opt):
    for p in params:
        assert torch.isfinite(p).all()
        for key, value in opt.state[p].items():
            assert torch.isfinite(torch.as_tensor(value)).all(), key


def assert_engines_agree(params, ref_params):
    for x, y in zip(params, ref_params):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,phase", PHASE_CASES)
def test_zero_gradients(impl, name, phase):
    step, call = PHASES[phase]
    params, opt, _ = drive(name, impl, fault=(step, call, "zero"))
    assert opt.skipped_steps == 0
    assert_finite(params, opt)
    ref_params, _, _ = drive(name, "reference", fault=(step, call, "zero"))
    assert_engines_agree(params, ref_params)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("name,phase", PHASE_CASES)
def test_non_finite_gradients_skip_the_step(impl, kind, name, phase):
    step, call = PHASES[phase]
    with pytest.warns(RuntimeWarning, match="not finite"):
        params, opt, snaps = drive(name, impl, fault=(step, call, kind), steps=step + 1)
        assert opt.skipped_steps == 1
    before_params, before_state = snaps["before"]
    after_params, after_state = snaps["after"]
    assert_same(after_params, before_params, "params")
    # a skipped step still counts as a step (epoch and SAM-k / LookSAM counters, rho schedule);
    # everything it would have changed stays as it was: per-parameter state and the norms
    assert_same(after_state["state"], before_state["state"])
    assert_same(skip_counters(after_state["sam_family"]), skip_counters(before_state["sam_family"]))
    targets = make_targets(params)
    for batch in range(step + 1, step + 3):
        opt.step(lambda: loss_fn(params, targets, batch).backward())
    assert opt.skipped_steps == 1
    assert all(not torch.equal(p.detach(), b) for p, b in zip(params, before_params))
    assert_finite(params, opt)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["raise", "interrupt"])
@pytest.mark.parametrize("name,phase", PHASE_CASES)
def test_closure_that_raises_restores_everything(impl, kind, name, phase):
    step, call = PHASES[phase]
    params, opt, snaps = drive(name, impl, fault=(step, call, kind))
    assert snaps["raised"]
    assert not opt.engine.perturbed
    before_params, before_state = snaps["before"]
    after_params, after_state = snaps["after"]
    assert_same(after_params, before_params, "params")
    assert_same(after_state, before_state)
    # the failed step leaves no trace: the run equals one that never had that step
    clean_params, clean_opt, _ = drive(name, impl, skip_step=step)
    assert_same([p.detach() for p in params], [p.detach() for p in clean_params], "params")
    assert_same(clone(opt.state_dict()), clone(clean_opt.state_dict()))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_none_gradients_count_as_zero(impl, name):
    """Two tensors get no gradient at one step (p.grad = None): the same as zero gradients there."""
    params, opt, _ = drive(name, impl, fault=(FAULT_STEP, 0, "none"))
    assert opt.skipped_steps == 0
    assert_finite(params, opt)
    want, _ = drive_with_zero_terms(name, impl)
    assert_same([p.detach() for p in params], [p.detach() for p in want], "params")


def drive_with_zero_terms(name, impl):
    """As ``drive(fault=(FAULT_STEP, 0, 'none'))`` with the two tensors' gradients zero instead of None."""
    factory, _ = OPTIMIZERS[name]
    params = make_params(TOTAL)
    targets = make_targets(params)
    opt = factory(param_groups(params, 2), impl)
    for batch in range(STEPS):
        calls = [0]

        def closure():
            first = calls[0] == 0 and batch == FAULT_STEP
            calls[0] += 1
            if first:
                loss = loss_fn(params[2:], targets[2:], batch) + 0.0 * (params[0].sum() + params[1].sum())
            else:
                loss = loss_fn(params, targets, batch)
            loss.backward()
            return loss
        opt.step(closure)
    return params, opt


FROZEN = (1, 3)
UNFREEZE_AT = 3


def freeze(batch, params, opt):
    for i in FROZEN:
        params[i].requires_grad_(batch >= UNFREEZE_AT)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_frozen_then_unfrozen(impl, name):
    start = make_params(TOTAL)
    seen = {}

    def setup(batch, params, opt):
        freeze(batch, params, opt)
        if batch == UNFREEZE_AT:
            seen["at_unfreeze"] = [params[i].detach().clone() for i in FROZEN]
    params, opt, _ = drive(name, impl, setup=setup)
    for i, value in zip(FROZEN, seen["at_unfreeze"]):
        assert torch.equal(value, start[i])  # untouched while frozen
        assert not torch.equal(params[i].detach(), start[i])  # trained once unfrozen
    assert opt.skipped_steps == 0
    assert_finite(params, opt)
    ref_params, _, _ = drive(name, "reference", setup=freeze)
    assert_engines_agree(params, ref_params)


LATE_AT = 3


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_late_param_group(impl, name):
    start = make_params(TOTAL)
    late = len(param_groups(start, 2)[0]["params"])

    def run_late(engine):
        factory, _ = OPTIMIZERS[name]
        params = make_params(TOTAL)
        targets = make_targets(params)
        groups = param_groups(params, 2)
        opt = factory(groups[:1], engine)
        for batch in range(STEPS):
            if batch == LATE_AT:
                assert all(torch.equal(p.detach(), s) for p, s in zip(params[late:], start[late:]))
                opt.add_param_group(groups[1])
            opt.step(lambda: loss_fn(params, targets, batch).backward())
        return params, opt

    params, opt = run_late(impl)
    assert all(not torch.equal(p.detach(), s) for p, s in zip(params, start))
    assert opt.skipped_steps == 0
    assert_finite(params, opt)
    ref_params, _ = run_late("reference")
    assert_engines_agree(params, ref_params)


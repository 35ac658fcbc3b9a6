"""SAM / GraphSAM semantics: equivalences, independent re-implementations, resume, bad input."""
import io
import math
import warnings

import pytest
import torch

from graphsam_ext.optim import SAM, GraphSAM, rho_at_epoch
from tests.conftest import DEVICES
from tests.optim_helpers import loss_fn, make_params, make_targets, param_groups, run

IMPLS = ["reference", "foreach", "fused"]
TOTAL = 4097


def run_changing(make_opt, first_groups, before_step, steps=10):
    """Closure steps (the closure zeroes the gradients, as torch's optimizers need) with
    ``before_step(batch, params, opt)`` changing the setup between steps."""
    params = make_params(TOTAL)
    targets = make_targets(params)
    opt = make_opt(first_groups(params))
    for batch in range(steps):
        before_step(batch, params, opt)

        def closure():
            opt.zero_grad()
            loss = loss_fn(params, targets, batch)
            loss.backward()
            return loss
        opt.step(closure)
    return params


def torch_run(opt_cls, **kw):
    """Ten steps of a torch optimizer on the test problem, two param groups."""
    return run_changing(lambda groups: opt_cls(groups, **kw), lambda params: param_groups(params, 2),
                        lambda *_: None)


def assert_params(a, b, exact):
    for x, y in zip(a, b):
        if exact:
            assert torch.equal(x.detach(), y.detach())
        else:
            torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls", [SAM, GraphSAM])
@pytest.mark.parametrize("base,torch_cls,kw", [
    ("adam", torch.optim.Adam, dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)),
    ("adamw", torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05)),
    ("sgd", torch.optim.SGD, dict(lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=1e-3)),
])
def test_rho_zero_is_the_base_optimizer(impl, cls, base, torch_cls, kw):
    want = torch_run(torch_cls, **kw)
    extra = dict(steps_per_epoch=3) if cls is GraphSAM else {}
    got, _, _ = run(lambda groups: cls(groups, base_optimizer=base, rho=0.0, implementation=impl, **extra, **kw),
                    TOTAL)
    # reference and foreach call torch's own update code: bit-identical; the fused kernel rounds
    # each operation once where torch's vectorized CPU ops may fuse a multiply-add
    assert_params(got, want, exact=impl != "fused")


def published_sam(params, targets, steps, rho, lr):
    """SAM as published (Foret et al. 2021, Alg. 1) around torch.optim.Adam, per tensor."""
    opt = torch.optim.Adam(param_groups(params, 1), lr=lr)
    for batch in range(steps):
        for p in params:
            p.grad = None
        loss_fn(params, targets, batch).backward()
        with torch.no_grad():
            norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
            eps = [rho * p.grad / (norm + 1e-12) for p in params]
            for p, e in zip(params, eps):
                p.add_(e)
        for p in params:
            p.grad = None
        loss_fn(params, targets, batch).backward()
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        opt.step()
    return params


@pytest.mark.parametrize("impl", IMPLS)
def test_sam_matches_published_update(impl):
    params = make_params(TOTAL, torch.float64)
    want = published_sam(params, make_targets(params), 10, rho=0.1, lr=1e-2)
    got, _, _ = run(lambda groups: SAM(groups, rho=0.1, lr=1e-2, implementation=impl), TOTAL,
                    dtype=torch.float64, groups=1)
    for x, y in zip(got, want):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-10, atol=1e-12)


def paper_graphsam(params, targets, steps, steps_per_epoch, rho, beta, gamma, lr):
    """GraphSAM as written in the paper (Wang et al. 2024), per tensor, around torch.optim.Adam."""
    opt = torch.optim.Adam(param_groups(params, 1), lr=lr)

    def grads(batch):
        for p in params:
            p.grad = None
        loss_fn(params, targets, batch).backward()
        return [p.grad.clone() for p in params]

    def gnorm(gs):
        return torch.sqrt(sum((g.double() ** 2).sum() for g in gs))

    d = None
    for batch in range(steps):
        epoch, t = divmod(batch, steps_per_epoch)
        rho_e = rho * gamma ** epoch
        if t == 0:
            g = grads(batch)
            n = gnorm(g)
            d = [x / n for x in g]
        dn = gnorm(d)
        eps = [rho_e * x / dn for x in d]
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.add_(e)
        w = grads(batch)
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        for p, x in zip(params, w):
            p.grad = x
        opt.step()
        wn = gnorm(w)
        d = [beta * x + (1 - beta) * y / wn for x, y in zip(d, w)]
    return params


@pytest.mark.parametrize("impl", IMPLS)
def test_graphsam_matches_paper_algorithm(impl):
    params = make_params(TOTAL, torch.float64)
    want = paper_graphsam(params, make_targets(params), 10, 4, rho=0.2, beta=0.9, gamma=0.5, lr=1e-2)
    got, opt, _ = run(lambda groups: GraphSAM(groups, rho=0.2, beta=0.9, gamma=0.5, steps_per_epoch=4, lr=1e-2,
                                              implementation=impl), TOTAL, dtype=torch.float64, groups=1)
    for x, y in zip(got, want):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-9, atol=1e-11)
    assert opt.epoch == 2 and opt.rho == pytest.approx(0.05)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("make", [
    lambda g, impl: SAM(g, rho=0.05, lr=1e-2, implementation=impl),
    lambda g, impl: GraphSAM(g, rho=0.05, steps_per_epoch=3, lr=1e-2, implementation=impl),
    lambda g, impl: GraphSAM(g, rho=0.05, steps_per_epoch=3, mode="reference", base_optimizer="sgd",
                             momentum=0.9, lr=1e-2, implementation=impl),
    lambda g, impl: GraphSAM(g, rho=0.05, steps_per_epoch=3, base_optimizer=torch.optim.RMSprop, lr=1e-2,
                             implementation=impl),
])
def test_resume_equals_uninterrupted(impl, make):
    def with_scheduler(groups):
        opt = make(groups, impl)
        opt.scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
        return opt

    def steps(params, opt, first, count):
        targets = make_targets(params)
        for batch in range(first, first + count):
            def closure():
                loss = loss_fn(params, targets, batch)
                loss.backward()
                return loss
            opt.step(closure)
            opt.scheduler.step()

    straight = make_params(TOTAL)
    opt = with_scheduler(param_groups(straight, 2))
    steps(straight, opt, 0, 20)

    first = make_params(TOTAL)
    opt1 = with_scheduler(param_groups(first, 2))
    steps(first, opt1, 0, 10)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in first], "opt": opt1.state_dict(),
                "sched": opt1.scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = [torch.nn.Parameter(t) for t in saved["params"]]
    opt2 = with_scheduler(param_groups(resumed, 2))
    opt2.load_state_dict(saved["opt"])
    opt2.scheduler.load_state_dict(saved["sched"])
    steps(resumed, opt2, 10, 10)
    for x, y in zip(resumed, straight):
        assert torch.equal(x.detach(), y.detach())
    for x, y in zip(resumed, straight):
        for key in opt.state[y]:
            assert torch.equal(torch.as_tensor(opt2.state[x][key]), torch.as_tensor(opt.state[y][key])), key


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls", [SAM, GraphSAM])
@pytest.mark.parametrize("bad_call", [0, 1])
def test_nonfinite_gradient_skips_the_step(device, impl, cls, bad_call):
    params = make_params(TOTAL, device=device)
    targets = make_targets(params)
    # GraphSAM: the third step starts an epoch, so it has two closure calls like SAM's steps
    extra = dict(steps_per_epoch=2) if cls is GraphSAM else {}
    opt = cls(param_groups(params, 2), lr=1e-2, implementation=impl, **extra)
    calls = {"n": 0}

    def closure(poison=False):
        loss = loss_fn(params, targets, 0)
        if poison:
            loss = loss + params[0].sum() * float("nan")
        loss.backward()
        return loss

    opt.step(closure)
    opt.step(closure)
    before = [p.detach().clone() for p in params]
    state_before = {i: {k: torch.as_tensor(v).clone() for k, v in opt.state[p].items()} for i, p in enumerate(params)}

    def poisoned():
        calls["n"] += 1
        return closure(poison=calls["n"] - 1 == bad_call)

    with pytest.warns(RuntimeWarning, match="not finite"):
        opt.step(poisoned)
        assert opt.skipped_steps == 1
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)
    for i, p in enumerate(params):
        for k, v in opt.state[p].items():
            assert torch.equal(torch.as_tensor(v), state_before[i][k]), k
    opt.step(closure)
    assert opt.skipped_steps == 1
    assert not torch.equal(params[0].detach(), before[0])


@pytest.mark.parametrize("cls", [SAM, GraphSAM])
def test_replaced_gradients_are_noticed(cls):
    """zero_grad(set_to_none=True) by the user makes autograd allocate new grads: still correct."""
    def loop(opt, params, targets, user_clears):
        for batch in range(6):
            def closure():
                if user_clears:
                    for p in params:
                        p.grad = None
                loss = loss_fn(params, targets, batch)
                loss.backward()
                return loss
            opt.step(closure)
        return params

    a = make_params(TOTAL)
    b = make_params(TOTAL)
    loop(cls(param_groups(a, 2), lr=1e-2, implementation="fused"), a, make_targets(a), user_clears=True)
    loop(cls(param_groups(b, 2), lr=1e-2, implementation="reference"), b, make_targets(b), user_clears=False)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-6, atol=1e-7)


def test_two_phase_api_equals_closure_api():
    a, b = make_params(TOTAL), make_params(TOTAL)
    targets = make_targets(a)
    opt_a = GraphSAM(param_groups(a, 2), rho=0.1, steps_per_epoch=3, lr=1e-2)
    opt_b = GraphSAM(param_groups(b, 2), rho=0.1, steps_per_epoch=3, lr=1e-2)
    for batch in range(7):
        opt_a.step(lambda: loss_fn(a, targets, batch).backward())

        def backward():
            opt_b.zero_grad()
            loss_fn(b, targets, batch).backward()
        if opt_b.needs_exact_gradient:
            backward()
            opt_b.exact_gradient_step()
        opt_b.first_step()
        backward()
        opt_b.second_step()
    for x, y in zip(a, b):
        assert torch.equal(x.detach(), y.detach())


def run_with_late_group(make_opt, add_at=4):
    """Start with the first param group, add the second with ``add_param_group`` at step ``add_at``."""
    def add(batch, params, opt):
        if batch == add_at:
            opt.add_param_group(param_groups(params, 2)[1])
    return run_changing(make_opt, lambda params: param_groups(params, 2)[:1], add)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls", [SAM, GraphSAM])
@pytest.mark.parametrize("base,torch_cls,kw", [
    ("adam", torch.optim.Adam, dict(lr=1e-2, weight_decay=0.01)),
    ("sgd", torch.optim.SGD, dict(lr=1e-2, momentum=0.9)),
    (torch.optim.RMSprop, torch.optim.RMSprop, dict(lr=1e-2)),
])
def test_add_param_group_later_is_the_base_optimizer(impl, cls, base, torch_cls, kw):
    """With rho = 0, adding a group after some steps does what torch's optimizer does: the new
    parameters start from fresh state, the others keep theirs."""
    want = run_with_late_group(lambda groups: torch_cls(groups, **kw))
    extra = dict(steps_per_epoch=3) if cls is GraphSAM else {}
    got = run_with_late_group(
        lambda groups: cls(groups, base_optimizer=base, rho=0.0, implementation=impl, **extra, **kw))
    assert_params(got, want, exact=impl != "fused")


@pytest.mark.parametrize("impl", IMPLS)
def test_add_param_group_checks(impl):
    params = make_params(TOTAL)
    targets = make_targets(params)
    first, second = param_groups(params, 2)
    opt = GraphSAM([first], rho=0.1, lr=1e-2, implementation=impl)
    before = [p.detach().clone() for p in params[len(first["params"]):]]
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({**second, "lr": -1.0})
    assert len(opt.param_groups) == 1
    loss_fn(params, targets, 0).backward()
    opt.exact_gradient_step()
    opt.first_step()
    with pytest.raises(RuntimeError, match="second_step"):
        opt.add_param_group(second)
    assert len(opt.param_groups) == 1
    opt.zero_grad()
    loss_fn(params, targets, 0).backward()
    opt.second_step()
    opt.add_param_group(second)
    assert len(opt.param_groups) == 2
    opt.step(lambda: loss_fn(params, targets, 1).backward())
    after = params[len(first["params"]):]
    assert all(not torch.equal(a.detach(), b) for a, b in zip(after, before))


FROZEN = (1, 4)  # indices of the parameters frozen at first


def run_freezing(make_opt, unfreeze_at=4, steps=9):
    """Parameters FROZEN have requires_grad=False until step ``unfreeze_at``."""
    def freeze(batch, params, opt):
        for i in FROZEN:
            params[i].requires_grad_(batch >= unfreeze_at)
    return run_changing(make_opt, lambda params: param_groups(params, 2), freeze, steps)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls", [SAM, GraphSAM])
@pytest.mark.parametrize("base,torch_cls,kw", [
    ("adamw", torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.5)),
    ("sgd", torch.optim.SGD, dict(lr=1e-2, momentum=0.9, weight_decay=0.1)),
    (torch.optim.RMSprop, torch.optim.RMSprop, dict(lr=1e-2, weight_decay=0.1)),
])
def test_frozen_parameters_are_left_alone(impl, cls, base, torch_cls, kw):
    """Like torch's optimizers, ours skip parameters that do not require grad (no weight decay,
    no momentum) and take them up with fresh state once they are unfrozen."""
    want = run_freezing(lambda groups: torch_cls(groups, **kw))
    extra = dict(steps_per_epoch=3) if cls is GraphSAM else {}
    got = run_freezing(lambda groups: cls(groups, base_optimizer=base, rho=0.0, implementation=impl, **extra, **kw))
    assert_params(got, want, exact=impl != "fused")
    start = make_params(TOTAL)
    frozen_only = run_freezing(lambda groups: cls(groups, base_optimizer=base, rho=0.1, implementation=impl,
                                                  **extra, **kw), unfreeze_at=99)
    for i in FROZEN:
        assert torch.equal(frozen_only[i].detach(), start[i])


@pytest.mark.parametrize("runner", [run_with_late_group, run_freezing], ids=["add_param_group", "freezing"])
@pytest.mark.parametrize("cls", [SAM, GraphSAM])
def test_rebuilt_engines_parity(runner, cls):
    """With rho > 0, engines rebuilt for a late group or a frozen / unfrozen parameter (the fused
    one with new flat buffers and per-run step counts) keep agreeing with the reference."""
    runs = {impl: runner(lambda groups: cls(groups, rho=0.1, lr=1e-2, weight_decay=0.1, implementation=impl))
            for impl in IMPLS}
    for impl in ("foreach", "fused"):
        assert_params(runs[impl], runs["reference"], exact=False)


@pytest.mark.parametrize("impl", IMPLS)
def test_graphsam_perturbation_after_freezing(impl):
    """Freezing a parameter that has a direction renormalizes the rest: the next perturbation of
    the trainable parameters has norm rho."""
    params = make_params(TOTAL)
    targets = make_targets(params)
    opt = GraphSAM(param_groups(params, 2), rho=0.1, lr=0.0, implementation=impl)
    for batch in range(3):
        opt.step(lambda: loss_fn(params, targets, batch).backward())
    params[0].requires_grad_(False)
    before = [p.detach().clone() for p in params]
    opt.first_step()
    moved = torch.stack([(p.detach().double() - b.double()).norm() for p, b in zip(params, before)])
    assert moved[0] == 0
    torch.testing.assert_close(moved.norm().item(), 0.1, rtol=1e-4, atol=0)
    loss_fn(params, targets, 3).backward()
    opt.second_step()


@pytest.mark.parametrize("impl", IMPLS)
def test_all_parameters_frozen(impl):
    params = make_params(TOTAL)
    targets = make_targets(params)
    start = [p.detach().clone() for p in params]
    for p in params:
        p.requires_grad_(False)
    opt = GraphSAM(param_groups(params, 2), rho=0.1, implementation=impl)
    loss = opt.step(lambda: loss_fn(params, targets, 0))
    assert torch.isfinite(loss) and opt.closure_calls == 1
    assert all(torch.equal(p.detach(), s) for p, s in zip(params, start))
    with pytest.raises(RuntimeError, match="requires grad"):
        opt.first_step()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_parameters(dtype):
    """The fused kernels take float32 / float64: asked for, it says so; by default the foreach
    engine takes such parameters."""
    params = [torch.nn.Parameter(p.detach().to(dtype)) for p in make_params(TOTAL)]
    with pytest.raises(ValueError, match="float32 and float64 parameters.*implementation='foreach'"):
        GraphSAM(params, implementation="fused")
    opt = GraphSAM(params, lr=1e-2)
    assert opt.implementation == "foreach"
    start = [p.detach().clone() for p in params]
    targets = make_targets(params)
    opt.step(lambda: loss_fn(params, targets, 0).float().backward())
    assert all(p.dtype == dtype and not torch.equal(p.detach(), s) for p, s in zip(params, start))


def test_closure_calls_per_epoch():
    steps_per_epoch = 5
    _, g, _ = run(lambda groups: GraphSAM(groups, steps_per_epoch=steps_per_epoch), 3, steps=2 * steps_per_epoch)
    _, s, _ = run(lambda groups: SAM(groups), 3, steps=2 * steps_per_epoch)
    _, k, _ = run(lambda groups: SAM(groups, sam_every=5), 3, steps=2 * steps_per_epoch)
    assert g.closure_calls == 2 * (steps_per_epoch + 1)
    assert s.closure_calls == 4 * steps_per_epoch
    assert k.closure_calls == 2 * steps_per_epoch + 2


def test_rho_schedules():
    assert [rho_at_epoch(1.0, 0.5, 2, e) for e in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert [rho_at_epoch(1.0, 0.5, 1, e, "compounding") for e in range(4)] == [1, 0.5, 0.125, 0.5 ** 6]
    opt = GraphSAM(make_params(3), rho=0.4, gamma=0.5, lam=2)
    rhos = []
    for _ in range(5):
        opt.start_epoch()
        rhos.append(opt.rho)
    assert rhos == pytest.approx([0.4, 0.4, 0.2, 0.2, 0.1])


def test_reference_mode_perturbation_saturates_at_radius():
    """After the first step of an epoch the released code's perturbation has norm `radius` per tensor."""
    params = make_params(TOTAL)
    targets = make_targets(params)
    opt = GraphSAM(param_groups(params, 1), mode="reference", rho=0.05, radius=0.01, implementation="fused")
    opt.step(lambda: loss_fn(params, targets, 0).backward())
    before = [p.detach().clone() for p in params]
    opt.first_step()
    for p, b in zip(params, before):
        assert float((p.detach() - b).norm()) == pytest.approx(0.01, rel=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls", [SAM, GraphSAM])
@pytest.mark.parametrize("base_cls", [torch.optim.RMSprop, torch.optim.Adagrad])
def test_generic_base_optimizer(impl, cls, base_cls):
    """Bases that set their state up lazily (RMSprop) or at construction (Adagrad)."""
    want = torch_run(base_cls, lr=1e-3)
    extra = dict(steps_per_epoch=3) if cls is GraphSAM else {}
    got, opt, _ = run(lambda groups: cls(groups, base_optimizer=base_cls, rho=0.0, lr=1e-3, implementation=impl,
                                         **extra), TOTAL)
    assert_params(got, want, exact=True)  # the update is the base's own code
    assert isinstance(opt.base_optimizer, base_cls)


@pytest.mark.parametrize("kwargs,match", [
    (dict(rho=-0.1), "rho"),
    (dict(rho=math.nan), "rho"),
    (dict(rho=math.inf), "rho"),
    (dict(weight_decay=math.nan), "weight_decay"),
    (dict(base_optimizer="sgd", momentum=math.nan), "momentum"),
    (dict(base_optimizer="sgd", dampening=-0.5), "dampening"),
    (dict(beta=1.0), "beta"),
    (dict(gamma=0.0), "gamma"),
    (dict(lam=0), "lam"),
    (dict(steps_per_epoch=0), "steps_per_epoch"),
    (dict(mode="released"), "mode"),
    (dict(base_optimizer="lamb"), "base_optimizer"),
    (dict(implementation="cuda"), "implementation"),
    (dict(lr=-1.0), "lr"),
    (dict(betas=(1.0, 0.9)), "betas"),
    (dict(rho_schedule="cosine"), "rho_schedule"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        GraphSAM(make_params(3), **kwargs)


def test_bad_input_errors():
    params = make_params(3)
    with pytest.raises(TypeError, match="unknown argument"):
        SAM(params, momentum=0.9)
    opt = SAM(params)
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    with pytest.raises(TypeError, match="base_optimizer"):
        SAM(params, base_optimizer=3)
    with pytest.raises(TypeError, match="floating-point"):
        SAM([torch.zeros(3, dtype=torch.int64)])
    emb = torch.nn.Embedding(10, 3, sparse=True)
    # (the fused path keeps a dense gradient buffer that autograd accumulates sparse grads into)
    opt = SAM(emb.parameters(), implementation="reference")
    with pytest.raises(ValueError, match="sparse gradients"):
        opt.step(lambda: emb(torch.tensor([1, 2])).sum().backward())
    with pytest.raises(ValueError, match="not a SAM state dict"):
        opt.load_state_dict(torch.optim.Adam(emb.parameters()).state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device besides the CPU")
def test_params_on_several_devices_rejected():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3, device="cuda"))]
    with pytest.raises(ValueError, match="one device"):
        SAM(params, implementation="fused")


# the helper below wraps opt.step after the scheduler was made, which LRScheduler warns about
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_lr_scheduler_drives_fused_updates():
    a, opt_a, _ = run(lambda g: _scheduled(SAM(g, lr=1e-2, implementation="fused")), TOTAL)
    b, opt_b, _ = run(lambda g: _scheduled(SAM(g, lr=1e-2, implementation="reference")), TOTAL)
    assert opt_a.param_groups[0]["lr"] != 1e-2
    for x, y in zip(a, b):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-6, atol=1e-7)


def _scheduled(opt):
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    original = opt.step

    def step(closure):
        loss = original(closure)
        sched.step()
        return loss
    opt.step = step
    return opt


def test_warning_is_emitted_once():
    params = make_params(3)
    opt = SAM(params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            opt.step(lambda: (params[0].sum() * math.inf).backward())
    assert sum("not finite" in str(w.message) for w in caught) == 1
    assert opt.skipped_steps == 3

"""LookSAM, AE-SAM, SAM-One and SAM-k: per-tensor oracles written from the published rules, parity
of the engines (parameters and state), rho = 0 is Adam, state_dict round trips, rho as a
param-group entry."""
import io
import math

import pytest
import torch

from graphsam_ext import _backend
from graphsam_ext.optim import AESAM, SAM, GraphSAM, LookSAM, SAMOne
from tests.optim_helpers import loss_fn, make_params, make_targets, param_groups, run
from tests.test_optim_parity import compare

IMPLS = ["reference", "foreach", "fused"]
TOTAL = 4097


def grads_at(params, targets, batch):
    for p in params:
        p.grad = None
    loss_fn(params, targets, batch).backward()
    return [p.grad.clone() for p in params]


def norm(xs):
    return torch.sqrt(sum((x.double() ** 2).sum() for x in xs))


def adam_with(opt, params, gradients):
    for p, g in zip(params, gradients):
        p.grad = g
    opt.step()


def sam_gradient(params, targets, batch, g, rho):
    """g_s = grad L(theta + rho g / ||g||), theta put back afterwards."""
    n = norm(g)
    eps = [rho * x / (n + 1e-12) for x in g]
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.add_(e)
    gs = grads_at(params, targets, batch)
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.sub_(e)
    return gs


def published_looksam(params, targets, steps, rho, k, alpha, lr):
    """LookSAM, Liu et al. 2022, Alg. 1, around torch.optim.Adam."""
    opt = torch.optim.Adam(param_groups(params, 1), lr=lr)
    g_v = None
    for t in range(steps):
        g = grads_at(params, targets, t)
        if t % k == 0:
            g_s = sam_gradient(params, targets, t, g, rho)
            cos = sum((a.double() * b.double()).sum() for a, b in zip(g, g_s)) / (norm(g) * norm(g_s))
            g_v = [b - norm(g_s) * cos * a / norm(g) for a, b in zip(g, g_s)]
            adam_with(opt, params, g_s)
        else:
            adam_with(opt, params, [a + alpha * (norm(g) / norm(g_v)) * v for a, v in zip(g, g_v)])
    return params


def published_aesam(params, targets, steps, rho, delta, c, lr):
    """AE-SAM, Jiang et al. 2023: SAM when ||g||^2 >= mu + c sigma (EMA statistics), else Adam."""
    opt = torch.optim.Adam(param_groups(params, 1), lr=lr)
    mu = var = None
    choices = []
    for t in range(steps):
        g = grads_at(params, targets, t)
        s = float(norm(g)) ** 2
        if mu is None:
            mu, var = s, 0.0
        else:
            mu = delta * mu + (1 - delta) * s
            var = delta * var + (1 - delta) * (s - mu) ** 2
        choices.append(s >= mu + c * math.sqrt(var))
        adam_with(opt, params, sam_gradient(params, targets, t, g, rho) if choices[-1] else g)
    return params, choices


def published_sam_one(params, targets, steps, steps_per_epoch, rho, gamma, lr):
    """SAM-One (GraphSAM paper's ablation): each epoch's first exact gradient perturbs the epoch."""
    opt = torch.optim.Adam(param_groups(params, 1), lr=lr)
    d = None
    for t in range(steps):
        epoch, i = divmod(t, steps_per_epoch)
        if i == 0:
            g = grads_at(params, targets, t)
            d = [x / norm(g) for x in g]
        eps = [rho * gamma ** epoch * x / norm(d) for x in d]
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.add_(e)
        w = grads_at(params, targets, t)
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        adam_with(opt, params, w)
    return params


def published_sam_k(params, targets, steps, k, rho, lr):
    """SAM-k: a SAM step at steps 0, k, 2k, ...; a plain Adam step at the others."""
    opt = torch.optim.Adam(param_groups(params, 1), lr=lr)
    for t in range(steps):
        g = grads_at(params, targets, t)
        adam_with(opt, params, sam_gradient(params, targets, t, g, rho) if t % k == 0 else g)
    return params


def assert_close64(got, want):
    for x, y in zip(got, want):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("impl", IMPLS)
def test_looksam_matches_published_rule(impl):
    params = make_params(TOTAL, torch.float64)
    want = published_looksam(params, make_targets(params), 10, rho=0.2, k=3, alpha=0.7, lr=1e-2)
    got, opt, _ = run(lambda g: LookSAM(g, rho=0.2, k=3, alpha=0.7, lr=1e-2, implementation=impl), TOTAL,
                      dtype=torch.float64, groups=1)
    assert_close64(got, want)
    assert opt.closure_calls == 10 + 4
    u = torch.cat([opt.state[p]["orthogonal"].reshape(-1) for p in got])
    assert float(u.norm()) == pytest.approx(1.0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("decision", ["device", "host"])
def test_aesam_matches_published_rule(impl, decision):
    params = make_params(TOTAL, torch.float64)
    want, choices = published_aesam(params, make_targets(params), 12, rho=0.2, delta=0.9, c=0.0, lr=1e-2)
    assert 0 < sum(choices) < len(choices)  # both branches are exercised
    got, opt, _ = run(lambda g: AESAM(g, rho=0.2, delta=0.9, c=0.0, decision=decision, lr=1e-2,
                                      implementation=impl), TOTAL, dtype=torch.float64, steps=12, groups=1)
    assert_close64(got, want)
    assert opt.sam_steps == sum(choices)
    assert opt.closure_calls == (24 if decision == "device" else 12 + sum(choices))


@pytest.mark.parametrize("impl", IMPLS)
def test_sam_one_matches_published_rule(impl):
    params = make_params(TOTAL, torch.float64)
    want = published_sam_one(params, make_targets(params), 10, 4, rho=0.2, gamma=0.5, lr=1e-2)
    got, opt, _ = run(lambda g: SAMOne(g, rho=0.2, gamma=0.5, steps_per_epoch=4, lr=1e-2, implementation=impl),
                      TOTAL, dtype=torch.float64, groups=1)
    assert_close64(got, want)
    assert opt.closure_calls == 10 + 3


@pytest.mark.parametrize("impl", IMPLS)
def test_sam_k_matches_its_definition(impl):
    params = make_params(TOTAL, torch.float64)
    want = published_sam_k(params, make_targets(params), 10, 3, rho=0.2, lr=1e-2)
    got, opt, _ = run(lambda g: SAM(g, rho=0.2, sam_every=3, lr=1e-2, implementation=impl), TOTAL,
                      dtype=torch.float64, groups=1)
    assert_close64(got, want)
    assert opt.closure_calls == 10 + 4


VARIANTS = {
    "looksam": lambda **kw: LookSAM(rho=0.5, k=3, alpha=0.5, **kw),
    "ae-sam": lambda **kw: AESAM(rho=0.1, c=0.0, **kw),
    "ae-sam-device": lambda **kw: AESAM(rho=0.1, c=0.0, decision="device", **kw),
    "sam-one": lambda **kw: SAMOne(rho=0.1, steps_per_epoch=4, **kw),
}
BASES = {"adam": dict(lr=1e-2, weight_decay=0.01), "sgd": dict(lr=1e-2, momentum=0.9)}


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("total", [3, 4097])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_engines_agree(name, base, total, dtype):
    results = {}
    for impl in IMPLS:
        params, opt, _ = run(lambda g: VARIANTS[name](params=g, base_optimizer=base, implementation=impl,
                                                      **BASES[base]), total, dtype=dtype)
        results[impl] = (params, opt)
    ref_params, ref_opt = results["reference"]
    for impl in ("foreach", "fused"):
        params, opt = results[impl]
        if name == "looksam" and dtype == torch.float32:
            # u is the normalized difference of two nearly parallel gradients: the cancellation
            # multiplies the engines' few-ULP float32 differences (fused Adam rounds like torch's
            # scalar path) by ||g|| / ||g_v||, so a relative bound instead of 8 ULP; float64 is tight
            for pa, pb in zip(params, ref_params):
                torch.testing.assert_close(pa.detach(), pb.detach(), rtol=1e-4, atol=1e-6)
                for key, value in opt.state[pa].items():
                    torch.testing.assert_close(torch.as_tensor(value).float(),
                                               torch.as_tensor(ref_opt.state[pb][key]).float(), rtol=1e-4, atol=1e-6)
        else:
            compare(opt, params, ref_opt, ref_params, dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_rho_zero_is_adam(impl, name):
    kw = dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.01)
    want, _, _ = run(lambda g: _AdamClosure(g, **kw), TOTAL)
    make = VARIANTS[name]
    got, opt, _ = run(lambda g: _with_rho(make(params=g, implementation=impl, **kw), 0.0), TOTAL)
    for x, y in zip(got, want):
        if impl == "fused":
            torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(x.detach(), y.detach())


class _AdamClosure(torch.optim.Adam):
    """torch's Adam zeroing the gradients before the closure, as ours do."""

    def step(self, closure):
        self.zero_grad()
        with torch.enable_grad():
            loss = closure()
        super().step()
        return loss


def _with_rho(opt, rho):
    opt.rho = rho
    if isinstance(opt, GraphSAM):
        opt.rho0 = rho
    return opt


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_state_dict_round_trip(impl, name):
    make = VARIANTS[name]
    straight, opt, _ = run(lambda g: make(params=g, implementation=impl, lr=1e-2), TOTAL, steps=10)

    first, opt1, _ = run(lambda g: make(params=g, implementation=impl, lr=1e-2), TOTAL, steps=5)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in first], "opt": opt1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = [torch.nn.Parameter(t) for t in saved["params"]]
    opt2 = make(params=param_groups(resumed, 2), implementation=impl, lr=1e-2)
    opt2.load_state_dict(saved["opt"])
    targets = make_targets(resumed)
    for batch in range(5, 10):
        opt2.step(lambda: loss_fn(resumed, targets, batch).backward())
    for x, y in zip(resumed, straight):
        assert torch.equal(x.detach(), y.detach())
        for key in opt.state[y]:
            assert torch.equal(torch.as_tensor(opt2.state[x][key]), torch.as_tensor(opt.state[y][key])), key
    assert opt2.closure_calls == opt.closure_calls


@pytest.mark.parametrize("name", list(VARIANTS))
def test_fused_is_the_default(name):
    opt = VARIANTS[name](params=make_params(3))
    assert opt.implementation == ("fused" if _backend.use_native("cpu") else "foreach")


@pytest.mark.parametrize("make,match", [
    (lambda p: LookSAM(p, k=0), "k"),
    (lambda p: LookSAM(p, alpha=-1.0), "alpha"),
    (lambda p: LookSAM(p, rho=math.nan), "rho"),
    (lambda p: AESAM(p, delta=1.0), "delta"),
    (lambda p: AESAM(p, c=math.inf), "c"),
    (lambda p: AESAM(p, decision="gpu"), "decision"),
    (lambda p: SAMOne(p, gamma=0.0), "gamma"),
])
def test_bad_arguments_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make(make_params(3))


# -- rho as a param-group entry --------------------------------------------------------------
ALL = {
    "sam": lambda g: SAM(g, rho=0.1, lr=1e-2),
    "graphsam": lambda g: GraphSAM(g, rho=0.1, gamma=0.5, steps_per_epoch=2, lr=1e-2),
    "sam-one": lambda g: SAMOne(g, rho=0.1, gamma=0.5, steps_per_epoch=2, lr=1e-2),
    "looksam": lambda g: LookSAM(g, rho=0.1, k=3, lr=1e-2),
    "ae-sam": lambda g: AESAM(g, rho=0.1, lr=1e-2),
    "ae-sam-device": lambda g: AESAM(g, rho=0.1, decision="device", lr=1e-2),
}


@pytest.mark.parametrize("name", list(ALL))
def test_rho_is_a_param_group_entry(name):
    params, opt, _ = run(ALL[name], TOTAL, steps=5)
    want = 0.1 * 0.5 ** 2 if name in ("graphsam", "sam-one") else 0.1  # epochs of 2 steps: the third epoch
    assert all(group["rho"] == pytest.approx(want) for group in opt.param_groups)
    assert opt.rho == pytest.approx(want)


@pytest.mark.parametrize("name", list(ALL))
def test_rho_set_in_the_groups_drives_the_step(name):
    """rho = 0 written into the groups (as a scheduler would) makes the steps plain Adam steps."""
    def zero_rho(groups):
        opt = ALL[name](groups)
        for group in opt.param_groups:
            group["rho"] = 0.0
        if isinstance(opt, GraphSAM):
            opt.start_epoch()
            for group in opt.param_groups:
                group["rho"] = 0.0
        return opt
    got, _, _ = run(zero_rho, TOTAL, steps=2 if name in ("graphsam", "sam-one") else 6)
    want, _, _ = run(lambda g: _AdamClosure(g, lr=1e-2), TOTAL, steps=2 if name in ("graphsam", "sam-one") else 6)
    for x, y in zip(got, want):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-6, atol=1e-7)


def test_rho_must_agree_across_groups():
    params = make_params(TOTAL)
    groups = param_groups(params, 2)
    groups[1]["rho"] = 0.2
    opt = SAM(groups, rho=0.1)
    targets = make_targets(params)
    with pytest.raises(ValueError, match="rho: the param groups hold different values"):
        opt.step(lambda: loss_fn(params, targets, 0).backward())
    with pytest.raises(ValueError, match="rho"):
        SAM(make_params(3), rho=0.1).add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "rho": -1.0})


def test_state_dict_without_rho_in_the_groups_loads():
    """A state dict saved before rho was a group entry: the groups get its rho back."""
    params, opt, _ = run(lambda g: GraphSAM(g, rho=0.2, gamma=0.5, steps_per_epoch=2, lr=1e-2), TOTAL, steps=3)
    sd = opt.state_dict()
    for group in sd["param_groups"]:
        del group["rho"]
    fresh = GraphSAM(param_groups(make_params(TOTAL), 2), rho=0.2, gamma=0.5, steps_per_epoch=2, lr=1e-2)
    fresh.load_state_dict(sd)
    assert all(group["rho"] == pytest.approx(0.1) for group in fresh.param_groups)


def test_build_optimizer_names_and_keyword_arguments():
    from graphsam_ext.train.optimizers import OPTIMIZER_NAMES, build_optimizer

    assert {"looksam", "ae-sam", "sam-one"} <= set(OPTIMIZER_NAMES)
    params = make_params(TOTAL)
    look = build_optimizer("looksam", params, lr=1e-2, rho=1e-4, looksam_k=4, looksam_alpha=0.3)
    assert isinstance(look, LookSAM) and (look.k, look.alpha, look.rho) == (4, 0.3, 1e-4)
    assert (build_optimizer("looksam", params).k, build_optimizer("looksam", params).alpha) == (8, 0.2)
    ae = build_optimizer("ae-sam", params, aesam_delta=0.8, aesam_c=1.5)
    assert isinstance(ae, AESAM) and (ae.delta, ae.c) == (0.8, 1.5)
    one = build_optimizer("sam_one", params, rho=0.2, gamma=0.25, lam=2)
    assert isinstance(one, SAMOne) and (one.rho0, one.gamma, one.lam) == (0.2, 0.25, 2)


@pytest.mark.parametrize("optimizer,want", [("graphsam", [0.05, 0.025, 0.0125]), ("sam", [0.05] * 3),
                                            ("adam", [None] * 3)])
def test_training_loop_records_the_rho_in_use(tmp_path, monkeypatch, optimizer, want):
    """The epoch records (metrics.csv's rho column) read rho from the param groups: GraphSAM's
    decayed rho of each epoch, SAM's constant one, nothing for torch's optimizers."""
    from tests.test_train import _seed_run, tiny_config, write_tiny_csv

    monkeypatch.setenv("GRAPHSAM_CACHE_DIR", str(tmp_path / "cache"))
    cfg = tiny_config(write_tiny_csv(tmp_path / "tiny.csv"), epochs=3, patience=10, rho=0.05, gamma=0.5, lam=1)
    result = _seed_run(cfg, tmp_path, optimizer, optimizer).run()
    got = [record["rho"] for record in result["history"]]
    assert got == ([pytest.approx(w) for w in want] if want[0] is not None else want)


CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="no visible CUDA device")


@CUDA_ONLY
@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_fused_matches_cpu_reference(name, dtype):
    results = {}
    for device, impl in [("cpu", "reference"), ("cuda", "fused")]:
        params, opt, _ = run(lambda g: VARIANTS[name](params=g, implementation=impl, lr=1e-2), TOTAL, dtype=dtype,
                             device=device)
        results[device] = (params, opt)
    (cpu_params, cpu_opt), (gpu_params, gpu_opt) = results["cpu"], results["cuda"]
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for pa, pb in zip(gpu_params, cpu_params):
        torch.testing.assert_close(pa.detach().cpu(), pb.detach(), **tol)
        for key, value in gpu_opt.state[pa].items():
            torch.testing.assert_close(torch.as_tensor(value).cpu().double(),
                                       torch.as_tensor(cpu_opt.state[pb][key]).double(), **tol)


@CUDA_ONLY
@pytest.mark.parametrize("name", ["sam", "graphsam", "sam-one", "looksam", "ae-sam-device"])
def test_fused_cuda_steps_do_not_synchronize(name):
    """Inside an epoch a fused step on the GPU reads nothing back to the host (AE-SAM's choice
    included, with decision="device"); torch raises on any synchronizing call in this mode."""
    if not _backend.use_native("cuda"):
        pytest.skip("this build has no CUDA kernels")
    params = make_params(TOTAL, device="cuda")
    targets = make_targets(params)
    opt = ALL[name](param_groups(params, 2))
    assert opt.implementation == "fused"
    if isinstance(opt, GraphSAM):
        opt.steps_per_epoch = 100
    for batch in range(2):  # the first step starts the epoch (GraphSAM checks skips there)
        opt.step(lambda: loss_fn(params, targets, batch).backward())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in range(2, 5):
            opt.step(lambda: loss_fn(params, targets, batch).backward())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert opt.skipped_steps == 0

"""Native flat-buffer SAM ops against ops.reference, on seeded random inputs and awkward sizes."""
import zlib

import pytest
import torch

from graphsam_ext import _backend, ops
from graphsam_ext.ops import reference
from tests.conftest import DEVICES

pytestmark = pytest.mark.skipif(_backend.native_library() is None, reason="native library not built")

SIZES = [0, 1, 3, 4 * 1024 + 1, 278011]
DTYPES = [torch.float32, torch.float64]


def tol(dtype):
    # inputs are O(1): an absolute bound of a few ULP of 1 covers results that cancel
    # (a momentum update can land near zero, where a relative bound means nothing)
    return dict(rtol=2e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)


def random_offsets(n, gen, device):
    """Random tensor boundaries, including empty segments, covering [0, n)."""
    k = int(torch.randint(1, 9, (1,), generator=gen))
    cuts = torch.randint(0, n + 1, (k,), generator=gen).sort().values.tolist()
    return torch.tensor([0] + cuts + [n], dtype=torch.int64, device=device)


def native(name):
    return getattr(torch.ops.graphsam_ext, name)


@pytest.fixture
def gen(request):
    """A generator with a fixed seed per test (from its id), so a failure reproduces; the seed is
    in the test report's properties and printed with a failure."""
    seed = zlib.crc32(request.node.nodeid.encode())
    request.node.user_properties.append(("seed", seed))
    print(f"random seed of {request.node.name}: {seed}")
    return torch.Generator().manual_seed(seed)


def rand(n, dtype, device, gen, scale=1.0):
    return (torch.randn(n, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("power", [0, 1, 2])
@pytest.mark.parametrize("segmented", [False, True])
@pytest.mark.parametrize("shift", [0.0, 1e-3])
def test_sum_squares(device, dtype, n, power, segmented, shift, gen):
    x, w = rand(n, dtype, device, gen), rand(n, dtype, device, gen)
    offsets = random_offsets(n, gen, device) if segmented else None
    got = native("sum_squares")(x, w if power else None, offsets, power, shift)
    want = reference.sum_squares(x, w if power else None, offsets, power, shift)
    assert got.dtype == torch.float64 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("power", [0, 1, 2])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_sum_squares_propagates_non_finite(device, power, bad, gen):
    """A non-finite element anywhere (vector body or scalar tail) makes the norm non-finite,
    which is how the optimizers detect a step to skip; signed zeros in the weight change nothing."""
    n = 4 * 1024 + 7
    x, w = rand(n, torch.float32, device, gen), rand(n, torch.float32, device, gen)
    w[:: 5] = 0.0
    w[1:: 5] = -0.0
    clean = native("sum_squares")(x, w if power else None, None, power, 1e-3)
    torch.testing.assert_close(clean, reference.sum_squares(x, w if power else None, None, power, 1e-3),
                               rtol=1e-12, atol=1e-12)
    for where in (int(torch.randint(0, n - 7, (1,), generator=gen)), n - 1):
        y = x.clone()
        y[where] = bad
        got = native("sum_squares")(y, w if power else None, None, power, 1e-3)
        assert not torch.isfinite(got), (where, got)


# Large enough for the CPU kernels' streaming-store paths (buffers of 4 MiB and more).
STREAMING = (1 << 20) + 5


def misaligned(x):
    """The same values in a buffer that starts one element past an aligned allocation."""
    out = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)[1:]
    out.copy_(x)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES + [STREAMING])
def test_zero(device, dtype, n, gen):
    outer = torch.full((n + 2,), 7.0, dtype=dtype, device=device)
    inner = outer[1:-1]  # starts one element past an aligned allocation
    inner.copy_(rand(n, dtype, device, gen))
    native("zero_")(inner)
    assert torch.equal(inner, torch.zeros_like(inner))
    assert outer[0].item() == 7.0 and outer[-1].item() == 7.0, "zero_ wrote outside its buffer"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES + [STREAMING])
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("segmented", [False, True])
@pytest.mark.parametrize("skipped", [False, True])
def test_perturb(device, dtype, n, adaptive, segmented, skipped, gen):
    p, d = misaligned(rand(n, dtype, device, gen)), rand(n, dtype, device, gen)
    offsets = random_offsets(n, gen, device) if segmented else None
    nseg = offsets.numel() - 1 if segmented else 1
    scale = torch.rand(nseg, generator=gen, dtype=torch.float64).to(device)
    scale = scale if segmented else scale[0]
    skip = torch.tensor(skipped, device=device)
    p1, b1, p2, b2 = misaligned(p), misaligned(torch.empty_like(p)), p.clone(), torch.empty_like(p)
    native("perturb_")(p1, b1, d, scale, offsets, adaptive, skip)
    reference.perturb_(p2, b2, d, scale, offsets, adaptive, skip)
    torch.testing.assert_close(p1, p2, **tol(dtype))
    assert torch.equal(b1, p), "the backup must be an exact copy"
    if skipped:
        assert torch.equal(p1, p)
    p1.copy_(b1)
    assert torch.equal(p1, p), "restore must be exact"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("segmented", [False, True])
@pytest.mark.parametrize("init", [False, True])
def test_direction_update(device, dtype, n, segmented, init, gen):
    d, g = rand(n, dtype, device, gen), rand(n, dtype, device, gen)
    offsets = random_offsets(n, gen, device) if segmented else None
    nseg = offsets.numel() - 1 if segmented else 1
    inv = (torch.rand(nseg, generator=gen, dtype=torch.float64) + 0.1).to(device)
    inv = inv if segmented else inv[0]
    d1, d2 = d.clone(), d.clone()
    s1 = native("direction_update_")(d1, g, inv, offsets, 0.9, init, None)
    s2 = reference.direction_update_(d2, g, inv, offsets, 0.9, init, None)
    torch.testing.assert_close(d1, d2, **tol(dtype))
    torch.testing.assert_close(s1, s2, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-12)
    torch.testing.assert_close(s1, (d1.double() ** 2).sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_direction_update_skip(device, gen):
    d, g = rand(100, torch.float32, device, gen), rand(100, torch.float32, device, gen)
    d1 = d.clone()
    s = native("direction_update_")(d1, g, torch.tensor(2.0, device=device), None, 0.5, False,
                                    torch.tensor(True, device=device))
    assert torch.equal(d1, d)
    torch.testing.assert_close(s, (d.double() ** 2).sum())


ADAM_CASES = [
    dict(weight_decay=0.0, decoupled=False),
    dict(weight_decay=0.1, decoupled=False),
    dict(weight_decay=0.1, decoupled=True),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("case", ADAM_CASES)
@pytest.mark.parametrize("with_source", [False, True])
def test_adam_step(device, dtype, n, case, with_source, gen):
    p, g, src = rand(n, dtype, device, gen), rand(n, dtype, device, gen), rand(n, dtype, device, gen)
    m, v = rand(n, dtype, device, gen), rand(n, dtype, device, gen).abs()
    step = torch.tensor(float(torch.randint(1, 50, (1,), generator=gen)), device=device)
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, **case)
    out = []
    for fn in (native("adam_step_"), reference.adam_step_):
        pp, mm, vv = p.clone(), m.clone(), v.clone()
        fn(pp, g, mm, vv, step, src if with_source else None, None, hp["lr"], hp["beta1"], hp["beta2"], hp["eps"],
           hp["weight_decay"], hp["decoupled"])
        out.append((pp, mm, vv))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, **tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("case", [dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
                                  dict(momentum=0.9, dampening=0.1, nesterov=False, weight_decay=1e-3),
                                  dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-3)])
@pytest.mark.parametrize("first", [False, True])
def test_sgd_step(device, dtype, n, case, first, gen):
    p, g, buf, src = (rand(n, dtype, device, gen) for _ in range(4))
    step = torch.tensor(1.0 if first else 7.0, device=device)
    out = []
    for fn in (native("sgd_step_"), reference.sgd_step_):
        pp, bb = p.clone(), buf.clone()
        fn(pp, g, bb, step, src, None, 0.05, case["momentum"], case["dampening"], case["weight_decay"],
           case["nesterov"])
        out.append((pp, bb))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, **tol(dtype))


def base_step_args(kind, n, dtype, device, gen):
    """(param, grad, state buffers..., step, source) for a base update of `kind`, fresh random."""
    p, g, src, m = (rand(n, dtype, device, gen) for _ in range(4))
    step = torch.tensor(float(torch.randint(1, 50, (1,), generator=gen)), device=device)
    if kind == "adam":
        v = rand(n, dtype, device, gen).abs()
        return (p, g, m, v, step, src), dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1,
                                            decoupled=False)
    return (p, g, m, step, src), dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3, nesterov=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("segmented", [False, True])
@pytest.mark.parametrize("skipped", [False, True])
def test_base_step_with_direction(device, dtype, n, kind, segmented, skipped, gen):
    """The direction EMA folded into a base update equals direction_update_ followed by the update."""
    args, hp = base_step_args(kind, n, dtype, device, gen)
    d = rand(n, dtype, device, gen)
    offsets = random_offsets(n, gen, device) if segmented else None
    nseg = offsets.numel() - 1 if segmented else 1
    inv = (torch.rand(nseg, generator=gen, dtype=torch.float64) + 0.1).to(device)
    inv = inv if segmented else inv[0]
    skip = torch.tensor(skipped, device=device)
    fused = [a.clone() for a in args] + [d.clone(), torch.full((), 0.25, dtype=torch.float64, device=device)]
    getattr(ops, f"{kind}_step_")(*fused[:-2], skip=skip, direction=fused[-2], inv_norm=inv, offsets=offsets,
                                  beta=0.9, direction_sq=fused[-1], **hp)
    # the same with the reference code, and with the two native ops one after the other
    ref = [a.clone() for a in args] + [d.clone(), torch.full((), 0.25, dtype=torch.float64, device=device)]
    getattr(reference, f"{kind}_step_")(*ref[:-2], skip, *hp.values(), ref[-2], inv, offsets, 0.9, ref[-1])
    d2 = d.clone()
    sq2 = native("direction_update_")(d2, args[1], inv, offsets, 0.9, False, skip)
    for a, b in zip(fused[:-1], ref[:-1]):
        torch.testing.assert_close(a, b, **tol(dtype))
    assert torch.equal(fused[-2], d2), "the folded EMA must match direction_update_ bit for bit"
    torch.testing.assert_close(fused[-1], sq2 + 0.25, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused[-1], ref[-1], rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-12)
    if skipped:
        assert torch.equal(fused[0], args[-1]) and torch.equal(fused[-2], d)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_base_step_skip_restores_only(device, kind, gen):
    p, g, src, m, v = (rand(1000, torch.float32, device, gen) for _ in range(5))
    pp, mm, vv = p.clone(), m.clone(), v.abs()
    skip, step = torch.tensor(True, device=device), torch.tensor(3.0, device=device)
    v0 = vv.clone()
    if kind == "adam":
        native("adam_step_")(pp, g, mm, vv, step, src, skip, 0.1, 0.9, 0.999, 1e-8, 0.0, False)
    else:
        native("sgd_step_")(pp, g, mm, step, src, skip, 0.1, 0.9, 0.0, 0.0, False)
    assert torch.equal(pp, src) and torch.equal(mm, m) and torch.equal(vv, v0)


def test_opcheck_every_op(gen):
    n = 257
    p, d, g, src = (rand(n, torch.float32, "cpu", gen) for _ in range(4))
    m, v = rand(n, torch.float32, "cpu", gen), rand(n, torch.float32, "cpu", gen).abs()
    offsets = torch.tensor([0, 10, 10, 200, n])
    step, skip = torch.tensor(3.0), torch.tensor(False)
    cases = [
        ("zero_", (p.clone(),)),
        ("sum_squares", (g, p, offsets, 1, 0.0)),
        ("sum_squares", (g, None, None, 0, 0.0)),
        ("unscale_sum_squares_", (g.clone(), torch.tensor(8.0), torch.zeros(()), p, offsets, 1, 0.0)),
        ("perturb_", (p.clone(), torch.empty_like(p), d, torch.rand(4, generator=gen, dtype=torch.float64), offsets, True, skip)),
        ("direction_update_", (d.clone(), g, torch.tensor(0.5, dtype=torch.float64), None, 0.9, False, skip)),
        ("adam_step_", (p.clone(), g, m.clone(), v.clone(), step, src, skip, 1e-3, 0.9, 0.999, 1e-8, 0.01, True)),
        ("sgd_step_", (p.clone(), g, m.clone(), step, None, None, 1e-2, 0.9, 0.0, 0.0, True)),
        ("adam_step_", (p.clone(), g, m.clone(), v.clone(), step, src, skip, 1e-3, 0.9, 0.999, 1e-8, 0.0, False,
                        d.clone(), torch.rand(4, generator=gen, dtype=torch.float64), offsets, 0.9,
                        torch.zeros((), dtype=torch.float64))),
        ("sgd_step_", (p.clone(), g, m.clone(), step, src, None, 1e-2, 0.9, 0.0, 0.0, False,
                       d.clone(), torch.tensor(0.5, dtype=torch.float64), None, 0.5,
                       torch.zeros((), dtype=torch.float64))),
    ]
    for name, args in cases:
        torch.library.opcheck(native(name), args)


def test_errors_name_the_argument():
    p = torch.zeros(10)
    with pytest.raises(RuntimeError, match=r"sum_squares \(CPU\): offsets must start at 0 and end at 10"):
        native("sum_squares")(p, None, torch.tensor([0, 5]), 0, 0.0)
    with pytest.raises(RuntimeError, match="offsets must be non-decreasing"):
        native("sum_squares")(p, None, torch.tensor([0, 7, 5, 10]), 0, 0.0)
    with pytest.raises(RuntimeError, match="backup has dtype Double but the parameters have Float"):
        native("perturb_")(p, torch.zeros(10, dtype=torch.float64), p, torch.tensor(1.0), None, False, None)
    with pytest.raises(RuntimeError, match="grad has 9 elements but the parameters have 10"):
        native("adam_step_")(p, torch.zeros(9), p.clone(), p.clone(), torch.tensor(1.0), None, None,
                             1e-3, 0.9, 0.999, 1e-8, 0.0, False)
    with pytest.raises(RuntimeError, match="param must be float32 or float64"):
        native("sum_squares")(torch.zeros(3, dtype=torch.int32), None, None, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"adam_step_ \(CPU\): a direction needs inv_norm"):
        native("adam_step_")(p, p.clone(), p.clone(), p.clone(), torch.tensor(1.0), None, None,
                             1e-3, 0.9, 0.999, 1e-8, 0.0, False, p.clone())
    with pytest.raises(RuntimeError, match="direction_sq must be a 0-dim float64 tensor"):
        native("sgd_step_")(p, p.clone(), p.clone(), torch.tensor(1.0), None, None, 0.1, 0.0, 0.0, 0.0, False,
                            p.clone(), torch.tensor(1.0), None, 0.9, torch.zeros(()))
    with pytest.raises(RuntimeError, match="only used with a direction"):
        native("sgd_step_")(p, p.clone(), p.clone(), torch.tensor(1.0), None, None, 0.1, 0.0, 0.0, 0.0, False,
                            None, torch.tensor(1.0))
    buf = torch.zeros(20)
    with pytest.raises(RuntimeError, match=r"perturb_ \(CPU\): param and backup overlap in memory"):
        native("perturb_")(buf[:10], buf[5:15], torch.zeros(10), torch.tensor(1.0), None, False, None)
    with pytest.raises(RuntimeError, match="grad and exp_avg overlap in memory"):
        native("adam_step_")(p, buf[:10], buf[3:13], p.clone(), torch.tensor(1.0), None, None,
                             1e-3, 0.9, 0.999, 1e-8, 0.0, False)
    with pytest.raises(RuntimeError, match="momentum_buffer and direction overlap in memory"):
        native("sgd_step_")(p, p.clone(), buf[:10], torch.tensor(1.0), None, None, 0.1, 0.9, 0.0, 0.0, False,
                            buf[1:11], torch.tensor(1.0), None, 0.9, torch.zeros((), dtype=torch.float64))
    with pytest.raises(RuntimeError, match="scale must have 2 element"):
        native("perturb_")(p, p.clone(), p, torch.ones(3), torch.tensor([0, 4, 10]), False, None)


def test_source_may_be_param_itself(gen):
    """Restoring from the parameter itself is the plain in-place update, not an overlap."""
    p, g, m = (rand(1000, torch.float32, "cpu", gen) for _ in range(3))
    v = rand(1000, torch.float32, "cpu", gen).abs()
    step = torch.tensor(2.0)
    a = [t.clone() for t in (p, m, v)]
    b = [t.clone() for t in (p, m, v)]
    native("adam_step_")(a[0], g, a[1], a[2], step, a[0], None, 1e-2, 0.9, 0.999, 1e-8, 0.0, False)
    native("adam_step_")(b[0], g, b[1], b[2], step, None, None, 1e-2, 0.9, 0.999, 1e-8, 0.0, False)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_wrappers_follow_backend_choice(monkeypatch):
    """The ops module uses the reference code where no native kernel exists for a device."""
    x = torch.randn(33, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(_backend, "use_native", lambda device: False)
    assert torch.equal(ops.sum_squares(x), reference.sum_squares(x))


def test_required_native_library_fails_the_run_when_missing(tmp_path):
    """GRAPHSAM_REQUIRE_NATIVE=1 (make test) turns a library that did not load into a failed run,
    not a run whose kernel tests all skip."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "GRAPHSAM_REQUIRE_NATIVE": "1", "GRAPHSAM_EXT_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_ops_sam.py",
                          "-k", "opcheck"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "GRAPHSAM_REQUIRE_NATIVE=1 but the native library did not load" in out.stdout + out.stderr

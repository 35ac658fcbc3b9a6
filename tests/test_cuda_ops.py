"""CUDA-only checks of the flat-buffer SAM kernels: opcheck of every op, no host sync inside fused
SAM / GraphSAM steps, bitwise-reproducible sums of squares, and the 16-byte vector paths (every
size, start offset and mix of alignments) against ops.reference.

Every test here needs a visible CUDA device and a native build with CUDA kernels; elsewhere (CI,
CPU machines) they are skipped. scripts/gpu_check.sh runs them on a GPU machine.
"""
import pytest
import torch

from graphsam_ext import _backend, ops
from graphsam_ext.ops import reference
from graphsam_ext.optim import SAM, GraphSAM
from tests import optim_helpers


def _cuda_kernels() -> bool:
    lib = _backend.native_library()
    return torch.cuda.is_available() and lib is not None and bool(lib.build_info().get("cuda"))


pytestmark = pytest.mark.skipif(not _cuda_kernels(), reason="no visible CUDA device or no CUDA kernels built")

DEVICE = "cuda"
DTYPES = [torch.float32, torch.float64]
# around the pack of 4 elements and the 16-byte boundary: heads and tails of every length
SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 31, 4 * 1024 + 1, 4 * 1024 + 3, 278011]
STARTS = [0, 1, 2, 3]  # element offset of a buffer from an aligned allocation


def native(name):
    return getattr(torch.ops.graphsam_ext, name)


def tol(dtype):
    return dict(rtol=2e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(torch.randint(0, 2**31, (1,)).item())


def rand(n, dtype, gen, scale=1.0):
    return (torch.randn(n, generator=gen, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


class Placed:
    """A buffer of n elements that starts ``start`` elements into a larger allocation, with guard
    elements around it that no kernel may write."""

    GUARD = 8

    def __init__(self, values, start):
        n = values.numel()
        self.outer = torch.full((start + n + self.GUARD,), 12345.0, dtype=values.dtype, device=values.device)
        self.t = self.outer[start:start + n]
        self.t.copy_(values)
        self.start = start

    def guards_intact(self):
        n = self.t.numel()
        return bool((self.outer[:self.start] == 12345.0).all()) and bool(
            (self.outer[self.start + n:] == 12345.0).all())


def random_offsets(n, gen):
    k = int(torch.randint(1, 9, (1,), generator=gen))
    cuts = torch.randint(0, n + 1, (k,), generator=gen).sort().values.tolist()
    return torch.tensor([0] + cuts + [n], dtype=torch.int64, device=DEVICE)


def per_segment(offsets, gen):
    """A positive 0-dim float64 value, or one per segment."""
    nseg = offsets.numel() - 1 if offsets is not None else 1
    v = (torch.rand(nseg, generator=gen, dtype=torch.float64) + 0.1).to(DEVICE)
    return v if offsets is not None else v[0]


# ---- opcheck ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_every_op(dtype, gen):
    n = 1029
    p, d, g, src = (rand(n, dtype, gen) for _ in range(4))
    m, v = rand(n, dtype, gen), rand(n, dtype, gen).abs()
    offsets = torch.tensor([0, 10, 10, 203, n], device=DEVICE)
    f64 = dict(dtype=torch.float64, device=DEVICE)
    step, skip = torch.tensor(3.0, device=DEVICE), torch.tensor(False, device=DEVICE)
    cases = [
        ("zero_", (p.clone(),)),
        ("sum_squares", (g, None, None, 0, 0.0)),
        ("sum_squares", (g, p, offsets, 1, 0.0)),
        ("sum_squares", (g, p, None, 2, 1e-3)),
        ("unscale_sum_squares_", (g.clone(), torch.tensor(8.0, device=DEVICE), torch.zeros((), device=DEVICE), p,
                                  offsets, 1, 0.0)),
        ("perturb_", (p.clone(), torch.empty_like(p), d, torch.rand(4, **f64), offsets, True, skip)),
        ("perturb_", (p.clone(), torch.empty_like(p), d, torch.tensor(0.3, **f64), None, False, None)),
        ("direction_update_", (d.clone(), g, torch.tensor(0.5, **f64), None, 0.9, False, skip)),
        ("direction_update_", (d.clone(), g, torch.rand(4, **f64), offsets, 0.9, True, None)),
        ("adam_step_", (p.clone(), g, m.clone(), v.clone(), step, src, skip, 1e-3, 0.9, 0.999, 1e-8, 0.01, True)),
        ("adam_step_", (p.clone(), g, m.clone(), v.clone(), step, src, skip, 1e-3, 0.9, 0.999, 1e-8, 0.0, False,
                        d.clone(), torch.rand(4, **f64), offsets, 0.9, torch.zeros((), **f64))),
        ("sgd_step_", (p.clone(), g, m.clone(), step, None, None, 1e-2, 0.9, 0.0, 0.0, True)),
        ("sgd_step_", (p.clone(), g, m.clone(), step, src, None, 1e-2, 0.9, 0.0, 0.0, False,
                       d.clone(), torch.tensor(0.5, **f64), None, 0.5, torch.zeros((), **f64))),
    ]
    for name, args in cases:
        torch.library.opcheck(native(name), args)


# ---- no host synchronization inside a step ---------------------------------------------------

def _problem(seed=0):
    params = optim_helpers.make_params(278011, torch.float32, DEVICE, seed=seed)
    targets = optim_helpers.make_targets(params)
    return params, targets


def _closure(params, targets, batch):
    def closure():
        loss = optim_helpers.loss_fn(params, targets, batch)
        loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("make", [
    pytest.param(lambda p: SAM(p, rho=0.05, lr=1e-3, implementation="fused"), id="sam"),
    pytest.param(lambda p: SAM(p, rho=0.5, adaptive=True, lr=1e-3, implementation="fused"), id="asam"),
    pytest.param(lambda p: SAM(p, rho=0.05, base_optimizer="sgd", lr=1e-2, momentum=0.9, implementation="fused"),
                 id="sam-sgd"),
])
def test_fused_sam_step_does_not_sync(make):
    params, targets = _problem()
    opt = make(params)
    opt.step(_closure(params, targets, 0))  # builds the flat buffers and the state (may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in range(1, 4):
            opt.step(_closure(params, targets, batch))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("mode", ["paper", "reference"])
def test_fused_graphsam_step_does_not_sync(mode):
    """The epoch's first step (exact gradient, two closure calls) and the steps inside it; the
    epoch boundary itself (start_epoch) is outside the checked region."""
    params, targets = _problem()
    opt = GraphSAM(params, rho=0.05, lr=1e-3, mode=mode, implementation="fused")
    opt.step(_closure(params, targets, 0))
    opt.step(_closure(params, targets, 1))
    opt.start_epoch()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in range(2, 6):
            opt.step(_closure(params, targets, batch))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(torch.isfinite(p).all() for p in params)


# ---- determinism -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("segmented", [False, True])
@pytest.mark.parametrize("power", [0, 1])
def test_sum_squares_is_bitwise_reproducible(dtype, segmented, power, gen):
    """Large enough for hundreds of blocks per segment, where floating-point atomics would add the
    block sums in a different order from run to run. A copy at another address with the same
    alignment gives the same bits too."""
    n = 10_000_019
    x, w = rand(n, dtype, gen), rand(n, dtype, gen)
    offsets = torch.tensor([0, 17, 3_000_001, 3_000_001, n], device=DEVICE) if segmented else None
    weight = w if power else None
    first = native("sum_squares")(x, weight, offsets, power, 0.0)
    for _ in range(4):
        again = native("sum_squares")(x, weight, offsets, power, 0.0)
        assert torch.equal(again, first), (again - first)
    moved = native("sum_squares")(x.clone(), None if weight is None else weight.clone(), offsets, power, 0.0)
    assert torch.equal(moved, first)
    torch.testing.assert_close(first, reference.sum_squares(x, weight, offsets, power, 0.0), rtol=1e-11, atol=0)


@pytest.mark.parametrize("kind", ["adam", "direction"])
def test_folded_direction_norm_is_bitwise_reproducible(kind, gen):
    n = 10_000_019
    p, g, d, m = (rand(n, torch.float32, gen) for _ in range(4))
    v = rand(n, torch.float32, gen).abs()
    offsets = torch.tensor([0, 5, 4_000_000, n], device=DEVICE)
    inv = torch.tensor([0.5, 0.25, 0.125], dtype=torch.float64, device=DEVICE)
    sums = []
    for _ in range(4):
        dd = d.clone()
        if kind == "adam":
            sq = torch.zeros((), dtype=torch.float64, device=DEVICE)
            ops.adam_step_(p.clone(), g, m.clone(), v.clone(), torch.tensor(3.0, device=DEVICE), lr=1e-3, beta1=0.9,
                           beta2=0.999, eps=1e-8, direction=dd, inv_norm=inv, offsets=offsets, beta=0.9,
                           direction_sq=sq)
        else:
            sq = native("direction_update_")(dd, g, inv, offsets, 0.9, False, None)
        sums.append(sq)
    assert all(torch.equal(s, sums[0]) for s in sums), sums
    torch.testing.assert_close(sums[0], (dd.double() ** 2).sum(), rtol=1e-11, atol=0)


# ---- vectorized paths vs the reference ---------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("segmented", [False, True])
def test_sum_squares_any_alignment(dtype, n, start, segmented, gen):
    x, w = Placed(rand(n, dtype, gen), start), Placed(rand(n, dtype, gen), start)
    offsets = random_offsets(n, gen) if segmented else None
    for power in (0, 1, 2):
        got = native("sum_squares")(x.t, w.t if power else None, offsets, power, 1e-3)
        want = reference.sum_squares(x.t, w.t if power else None, offsets, power, 1e-3)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    mixed = Placed(w.t, (start + 1) % 4)  # buffers at different alignments: element by element
    got = native("sum_squares")(x.t, mixed.t, offsets, 1, 0.0)
    torch.testing.assert_close(got, reference.sum_squares(x.t, w.t, offsets, 1, 0.0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("segmented", [False, True])
def test_perturb_any_alignment(dtype, n, start, adaptive, segmented, gen):
    p, d = rand(n, dtype, gen), rand(n, dtype, gen)
    offsets = random_offsets(n, gen) if segmented else None
    scale = per_segment(offsets, gen)
    for d_start in (start, (start + 1) % 4):
        pp, bb, dd = Placed(p, start), Placed(torch.zeros_like(p), start), Placed(d, d_start)
        native("perturb_")(pp.t, bb.t, dd.t, scale, offsets, adaptive, None)
        p2, b2 = p.clone(), torch.empty_like(p)
        reference.perturb_(p2, b2, d, scale, offsets, adaptive, None)
        torch.testing.assert_close(pp.t, p2, **tol(dtype))
        assert torch.equal(bb.t, p), "the backup must be an exact copy"
        assert pp.guards_intact() and bb.guards_intact(), "perturb_ wrote outside its buffers"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("segmented", [False, True])
def test_direction_update_any_alignment(dtype, n, start, segmented, gen):
    d, g = rand(n, dtype, gen), rand(n, dtype, gen)
    offsets = random_offsets(n, gen) if segmented else None
    inv = per_segment(offsets, gen)
    for g_start in (start, (start + 3) % 4):
        dd, gg = Placed(d, start), Placed(g, g_start)
        s1 = native("direction_update_")(dd.t, gg.t, inv, offsets, 0.9, False, None)
        d2 = d.clone()
        s2 = reference.direction_update_(d2, g, inv, offsets, 0.9, False, None)
        torch.testing.assert_close(dd.t, d2, **tol(dtype))
        torch.testing.assert_close(s1, s2, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-12)
        assert dd.guards_intact()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("with_direction", [False, True])
def test_base_step_any_alignment(dtype, n, start, kind, with_direction, gen):
    p, g, src, m, d = (rand(n, dtype, gen) for _ in range(5))
    v = rand(n, dtype, gen).abs()
    step = torch.tensor(float(torch.randint(2, 50, (1,), generator=gen)), device=DEVICE)
    offsets = random_offsets(n, gen) if with_direction else None
    inv = per_segment(offsets, gen)
    if kind == "adam":
        hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, decoupled=False)
        state = [m, v]
    else:
        hp = dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3, nesterov=True)
        state = [m]
    for other in (start, (start + 1) % 4):  # all aligned alike, then the gradient elsewhere
        placed = [Placed(t, start) for t in [p] + state + [src, d]]
        grad = Placed(g, other)
        pp, *st, ss, dd = (b.t for b in placed)
        fold = dict(direction=dd, inv_norm=inv, offsets=offsets, beta=0.9,
                    direction_sq=torch.full((), 0.25, dtype=torch.float64, device=DEVICE)) if with_direction else {}
        getattr(ops, f"{kind}_step_")(pp, grad.t, *st, step, ss, **hp, **fold)
        ref = [t.clone() for t in [p] + state] + [d.clone()]
        ref_fold = dict(direction=ref[-1], inv_norm=inv, offsets=offsets, beta=0.9,
                        direction_sq=torch.full((), 0.25, dtype=torch.float64, device=DEVICE)) if with_direction else {}
        getattr(reference, f"{kind}_step_")(ref[0], g, *ref[1:-1], step, src, None, *hp.values(), **ref_fold)
        for a, b in zip([pp] + st, ref[:-1]):
            torch.testing.assert_close(a, b, **tol(dtype))
        if with_direction:
            torch.testing.assert_close(dd, ref[-1], **tol(dtype))
            torch.testing.assert_close(fold["direction_sq"], ref_fold["direction_sq"],
                                       rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-12)
        assert all(b.guards_intact() for b in placed), "the base update wrote outside its buffers"


def test_backend_uses_the_kernels_on_this_card():
    """The first-use probe found kernels for this card (a missing kernel image would fall back)."""
    assert _backend.use_native(DEVICE)
    assert _backend._CUDA_READY.get(torch.cuda.current_device()) is True

"""graphsam_ext.ops.dropout and graphsam_ext.nn.Dropout: the kernels bit for bit against the
pure-PyTorch reference (and the reference against splitmix64 in Python integers), the keep
statistics, autograd, seeding, validation and registration (opcheck, torch.compile)."""
from __future__ import annotations

import math
import zlib

import pytest
import torch

from graphsam_ext import _backend, ops
from graphsam_ext import nn as gnn
from graphsam_ext.ops import reference
from tests.conftest import DEVICES

NATIVE = _backend.native_library() is not None
needs_native = pytest.mark.skipif(not NATIVE, reason="native library not built")
needs_cuda = pytest.mark.skipif(not (NATIVE and torch.cuda.is_available()),
                                reason="needs the native library and a CUDA device")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# empty, one element, odd, around the vector widths (8 / 16 lanes), 4k + 1, large-ish, the
# model's (atoms, hidden) shape, an empty 3-D tensor
SHAPES = [(0,), (1,), (7,), (15,), (16,), (17,), (4 * 1024 + 1,), (278011,), (1660, 64), (3, 0, 5)]
PROBABILITIES = [0.1, 0.5, 0.9, 1e-12]
MASK64 = (1 << 64) - 1
_INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@pytest.fixture
def gen(request):
    """A generator with a fixed seed per test (from its id), so a failure reproduces."""
    seed = zlib.crc32(request.node.nodeid.encode())
    print(f"random seed of {request.node.name}: {seed}")
    return torch.Generator().manual_seed(seed)


def random_seed(gen: torch.Generator) -> torch.Tensor:
    return torch.empty((), dtype=torch.int64).random_(-(1 << 63), None, generator=gen)


def rand(shape, dtype, device, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    ints = _INTS[actual.element_size()]
    same = actual.contiguous().view(ints) == expected.contiguous().view(ints)
    assert bool(same.all()), f"{int((~same).sum())} of {same.numel()} elements differ in their bits"


def splitmix64_high(seed: int, index: int) -> int:
    """The 32 bits of element ``index`` (csrc/dropout_math.h), in Python integers."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return (z ^ (z >> 31)) >> 32


def native_dropout(x, p, seed):
    return torch.ops.graphsam_ext.dropout(x, p, seed)


def binomial_bound(n: int, q: float, sigmas: float = 6.0) -> float:
    return sigmas * math.sqrt(n * q * (1.0 - q)) + 1.0


# ---- the random bits -----------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, -1, 1234567, -(1 << 63), (1 << 63) - 1])
def test_reference_bits_are_splitmix64(seed):
    n = 300
    bits = reference.dropout_bits(torch.tensor(seed), n, "cpu")
    assert bits.tolist() == [splitmix64_high(seed & MASK64, i) for i in range(n)]


def test_splitmix64_known_value():
    """splitmix64's first output for seed 0 is 0xE220A8397B1DCDAF (its published reference code)."""
    assert splitmix64_high(0, 0) == 0xE220A8397B1DCDAF >> 32


def test_threshold_is_p_times_two_to_the_32_rounded():
    assert reference.dropout_threshold(0.0) == 0
    assert reference.dropout_threshold(0.5) == 1 << 31
    assert reference.dropout_threshold(0.1) == 429496730  # 0.1 * 2^32 = 429496729.6
    assert reference.dropout_threshold(1e-12) == 0
    assert reference.dropout_threshold(3 / 2 ** 32) == 3
    assert reference.dropout_threshold(math.nextafter(1.0, 0.0)) == 1 << 32


# ---- kernels against the reference -----------------------------------------------------------

@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("p", PROBABILITIES)
def test_kernel_bitwise_equals_reference(device, dtype, shape, p, gen):
    x = rand(shape, dtype, device, gen)
    seed = random_seed(gen)
    out = native_dropout(x, p, seed)
    assert out.device == x.device and out.is_contiguous()
    assert_same_bits(out, reference.dropout(x, p, seed))


@needs_native
@pytest.mark.parametrize("device", DEVICES)
def test_kernel_keeps_sign_and_nan_like_torch(device):
    """A dropped element is x * 0 (so -0.0 for negative x and NaN for NaN), as torch's dropout."""
    x = torch.tensor([-1.0, float("nan"), float("inf"), 2.0] * 64, device=device)
    seed = torch.tensor(5)
    out = native_dropout(x, 0.5, seed)
    assert_same_bits(out, reference.dropout(x, 0.5, seed))
    keep = reference.dropout_keep(seed, x.numel(), 0.5, device)
    assert bool(out[~keep & (x == -1)].signbit().all()) and bool(out[~keep & x.isnan()].isnan().all())
    assert bool(out[~keep & x.isinf()].isnan().all())


@needs_native
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_input_follows_row_major_order(device, gen):
    x = rand((40, 33), torch.float32, device, gen).t()
    seed = random_seed(gen)
    out = ops.dropout(x, 0.3, seed=seed)
    assert out.is_contiguous()
    assert_same_bits(out, reference.dropout(x.contiguous(), 0.3, seed))
    assert_same_bits(native_dropout(x, 0.3, seed), out)


@needs_native
def test_cpu_result_does_not_depend_on_thread_count(gen):
    x = rand((278011,), torch.float32, "cpu", gen)
    seed = random_seed(gen)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native_dropout(x, 0.2, seed)
        torch.set_num_threads(2)
        two = native_dropout(x, 0.2, seed)
    finally:
        torch.set_num_threads(before)
    assert_same_bits(one, two)


@needs_cuda
def test_cuda_mask_equals_cpu_mask(gen):
    x = rand((4 * 1024 + 1, 3), torch.float32, "cpu", gen)
    seed = random_seed(gen)
    assert_same_bits(native_dropout(x.cuda(), 0.3, seed).cpu(), native_dropout(x, 0.3, seed))


@needs_cuda
def test_cuda_dropout_does_not_sync():
    x = torch.randn(1660, 64, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = ops.dropout(x, 0.1)
        out.backward(torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert x.grad is not None


# ---- statistics and scale ----------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_fraction_within_binomial_tolerance(device, p, gen):
    n = 1 << 20
    out = ops.dropout(torch.ones(n, device=device), p, seed=random_seed(gen))
    kept = int((out != 0).sum())
    assert abs(kept - n * (1 - p)) <= binomial_bound(n, 1 - p), (kept, n * (1 - p))


@pytest.mark.parametrize("device", DEVICES)
def test_neighbours_and_neighbouring_seeds_are_independent(device, gen):
    """Adjacent elements, and the masks of seeds s and s + 1, agree as often as independent coins."""
    n, p = 1 << 20, 0.5
    seed = random_seed(gen)
    keep = ops.dropout(torch.ones(n, device=device), p, seed=seed) != 0
    pairs = int((keep[1:] & keep[:-1]).sum())
    assert abs(pairs - (n - 1) * 0.25) <= binomial_bound(n - 1, 0.25)
    other = ops.dropout(torch.ones(n, device=device), p, seed=seed + 1) != 0
    agree = int((keep == other).sum())
    assert abs(agree - n * 0.5) <= binomial_bound(n, 0.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kept_elements_are_scaled_by_one_over_keep_probability(device, dtype, gen):
    p = 0.3
    x = rand((5000,), dtype, device, gen)
    seed = random_seed(gen)
    out = ops.dropout(x, p, seed=seed)
    keep = reference.dropout_keep(seed, x.numel(), p, device)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.tensor(1 / (1 - p), dtype=acc)
    assert_same_bits(out[keep], (x[keep].to(acc) * scale.to(device)).to(dtype))
    assert bool((out[~keep] == 0).all())


def test_extreme_probabilities():
    x = torch.ones(4096)
    assert bool((ops.dropout(x, 1e-12, seed=1) == 1).all())  # round(p * 2^32) = 0: keep everything
    nearly_one = math.nextafter(1.0, 0.0)
    out = ops.dropout(x, nearly_one, seed=1)  # round(p * 2^32) = 2^32: drop everything, no inf
    assert bool((out == 0).all())


# ---- autograd ---------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_is_grad_times_mask_over_keep_probability(device, dtype, gen):
    p = 0.25
    x = rand((1660, 64), dtype, device, gen).requires_grad_(True)
    grad = rand((1660, 64), dtype, device, gen)
    seed = random_seed(gen)
    ops.dropout(x, p, seed=seed).backward(grad)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    keep = reference.dropout_keep(seed, x.numel(), p, device).view(x.shape)
    assert_same_bits(x.grad, (grad.to(acc) * (keep.to(acc) * (1 / (1 - p)))).to(dtype))
    ref_x = x.detach().clone().requires_grad_(True)
    reference.dropout(ref_x, p, seed).backward(grad)
    assert_same_bits(x.grad, ref_x.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device, gen):
    x = rand((6, 7), torch.float64, device, gen).requires_grad_(True)
    seed = random_seed(gen)

    def fn(x):
        return ops.dropout(x, 0.4, seed=seed)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


# ---- seeds --------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_mask_different_seed_different_mask(device, gen):
    x = rand((4096,), torch.float32, device, gen)
    a = ops.dropout(x, 0.5, seed=42)
    assert_same_bits(ops.dropout(x, 0.5, seed=42), a)
    assert_same_bits(ops.dropout(x, 0.5, seed=torch.tensor(42)), a)
    assert not torch.equal(ops.dropout(x, 0.5, seed=43), a)
    # unsigned and signed spellings of one 64-bit seed are the same stream
    assert_same_bits(ops.dropout(x, 0.5, seed=(1 << 64) - 1), ops.dropout(x, 0.5, seed=-1))


@pytest.mark.parametrize("device", DEVICES)
def test_manual_seed_reproduces_and_the_stream_moves_on(device, gen):
    x = rand((4096,), torch.float32, device, gen)
    torch.manual_seed(123)
    first, second = ops.dropout(x, 0.5), ops.dropout(x, 0.5)
    torch.manual_seed(123)
    assert_same_bits(ops.dropout(x, 0.5), first)
    assert_same_bits(ops.dropout(x, 0.5), second)
    assert not torch.equal(first, second)


def test_seed_comes_from_the_default_cpu_generator():
    """The mask follows torch's CPU RNG state: saving and restoring it (a checkpoint) resumes."""
    x = torch.ones(4096)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    out = ops.dropout(x, 0.5)
    torch.set_rng_state(state)
    seed = torch.empty((), dtype=torch.int64).random_(-(1 << 63), None)
    assert_same_bits(out, reference.dropout(x, 0.5, seed))
    torch.set_rng_state(state)
    assert_same_bits(ops.dropout(x, 0.5), out)


def test_eval_mode_and_p_zero_return_the_input_without_drawing():
    x = torch.randn(100)
    state = torch.get_rng_state()
    assert ops.dropout(x, 0.5, training=False) is x
    assert ops.dropout(x, 0.0) is x
    module = gnn.Dropout(0.5).eval()
    assert module(x) is x
    assert torch.equal(torch.get_rng_state(), state)


# ---- the module ---------------------------------------------------------------------------------

def test_module_is_a_drop_in_for_torch_dropout():
    ours, theirs = gnn.Dropout(0.1), torch.nn.Dropout(0.1)
    assert repr(ours) == "Dropout(p=0.1)"
    assert ours.p == theirs.p and ours.training and dict(ours.state_dict()) == dict(theirs.state_dict())
    assert gnn.Dropout().p == theirs.__class__().p == 0.5
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), gnn.Dropout(0.2))
    x = torch.randn(300, 8)
    torch.manual_seed(0)
    out = model(x)
    assert out.shape == (300, 8)
    kept = (out != 0).float().mean().item()
    assert 0.7 < kept < 0.9
    model.eval()
    torch.testing.assert_close(model(x), model[0](x))


@pytest.mark.parametrize("device", DEVICES)
def test_module_matches_the_op_with_the_same_rng_state(device, gen):
    x = rand((128, 64), torch.float32, device, gen)
    torch.manual_seed(11)
    expect = ops.dropout(x, 0.2)
    torch.manual_seed(11)
    assert_same_bits(gnn.Dropout(0.2)(x), expect)


# ---- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_p_outside_zero_one_is_refused(p):
    x = torch.ones(10)
    with pytest.raises(ValueError, match=r"dropout: p must be in \[0, 1\)"):
        ops.dropout(x, p)
    with pytest.raises(ValueError, match=r"Dropout: p must be in \[0, 1\)"):
        gnn.Dropout(p)
    if NATIVE:
        with pytest.raises(ValueError, match=r"dropout \(CPU\): p must be in \[0, 1\)"):
            native_dropout(x, p, torch.tensor(0))


@pytest.mark.parametrize("p", ["0.1", True, None])
def test_p_of_the_wrong_type_is_refused(p):
    with pytest.raises(TypeError, match="p must be a float"):
        ops.dropout(torch.ones(3), p)
    with pytest.raises(TypeError, match="p must be a float"):
        gnn.Dropout(p)


def test_bad_inputs_and_seeds_are_refused():
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        ops.dropout(torch.ones(3, dtype=torch.int64), 0.1)
    with pytest.raises(TypeError, match="x must be a tensor"):
        ops.dropout([1.0, 2.0], 0.1)
    for seed in (torch.tensor(1.0), torch.tensor([1, 2]), 1.5, 1 << 64, -(1 << 63) - 1):
        with pytest.raises(ValueError, match="seed must be"):
            ops.dropout(torch.ones(3), 0.1, seed=seed)
    if NATIVE:
        with pytest.raises(ValueError, match=r"dropout \(CPU\): seed must be a one-element int64 CPU tensor"):
            native_dropout(torch.ones(3), 0.1, torch.tensor([1, 2]))
        with pytest.raises(TypeError, match=r"dropout \(CPU\): x must be float32"):
            native_dropout(torch.ones(3, dtype=torch.int32), 0.1, torch.tensor(1))


# ---- fallback and registration -----------------------------------------------------------------

@needs_native
@pytest.mark.parametrize("device", DEVICES)
def test_fallback_gives_the_same_bits(device, gen, monkeypatch):
    x = rand((1660, 64), torch.float32, device, gen)
    grad = rand((1660, 64), torch.float32, device, gen)
    seed = random_seed(gen)

    def run():
        leaf = x.clone().requires_grad_(True)
        out = ops.dropout(leaf, 0.1, seed=seed)
        out.backward(grad)
        return out.detach(), leaf.grad

    native_out, native_grad = run()
    monkeypatch.setattr(_backend, "use_native", lambda device: False)
    fallback_out, fallback_grad = run()
    assert_same_bits(native_out, fallback_out)
    assert_same_bits(native_grad, fallback_grad)


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(device, dtype, gen):
    x = rand((33, 5), dtype, device, gen).requires_grad_(True)
    torch.library.opcheck(torch.ops.graphsam_ext.dropout, (x, 0.3, random_seed(gen)))


@needs_native
def test_torch_compile_with_a_fixed_seed_matches_eager(gen):
    x = rand((257, 64), torch.float32, "cpu", gen).requires_grad_(True)
    seed = random_seed(gen)

    def fn(x, seed):
        return ops.dropout(x * 2, 0.3, seed=seed).sum(-1)

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    out = compiled(x, seed)
    (grad,) = torch.autograd.grad(out.sum(), x)
    expect = fn(x, seed)
    (expect_grad,) = torch.autograd.grad(expect.sum(), x)
    torch.testing.assert_close(out, expect)
    assert_same_bits(grad, expect_grad)


@needs_native
def test_torch_compile_of_the_module_draws_masks():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), gnn.Dropout(0.5))
    compiled = torch.compile(model)
    x = torch.randn(512, 64)
    torch.manual_seed(0)
    first = compiled(x)
    second = compiled(x)
    assert not torch.equal(first, second)
    for out in (first, second):
        kept = int((out != 0).sum())
        assert abs(kept - out.numel() / 2) <= binomial_bound(out.numel(), 0.5)

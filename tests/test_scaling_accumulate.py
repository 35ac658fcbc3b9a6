"""Gradient accumulation: N micro-batches through ``accumulating_closure`` give the step of one
batch N times as large, for every phase of SAM and GraphSAM."""
import pytest
import torch

from graphsam_ext import _backend
from graphsam_ext.optim import SAM, GraphSAM
from graphsam_ext.optim.accumulate import accumulating_closure

NATIVE = _backend.use_native(torch.device("cpu"))
ENGINES = ["foreach", "reference",
           pytest.param("fused", marks=pytest.mark.skipif(not NATIVE, reason="native library not built"))]
MICRO = 4
STEPS = 5
# float64 parameters: the accumulated and the one-batch gradient differ only in the order of the
# additions (rounding of ~1e-16 relative), which Adam's normalization leaves at that order
RTOL, ATOL = 1e-10, 1e-12


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()


def _data(steps, batch):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(steps, batch, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(steps, batch, 2, generator=gen, dtype=torch.float64)
    return x, y


def _train(make_opt, micro: int):
    model = _model()
    opt = make_opt(model.parameters())
    x, y = _data(STEPS, 4 * MICRO)
    calls = 0

    def loss_of(batch):
        nonlocal calls
        calls += 1
        xb, yb = batch
        return torch.nn.functional.mse_loss(model(xb), yb)

    for t in range(STEPS):
        chunks = list(zip(x[t].chunk(micro), y[t].chunk(micro)))
        opt.step(accumulating_closure(chunks, loss_of))
    return [p.detach().clone() for p in model.parameters()], opt, calls


OPTIMIZERS = {
    "sam": lambda impl: (lambda ps: SAM(ps, rho=0.1, lr=1e-2, implementation=impl)),
    "asam": lambda impl: (lambda ps: SAM(ps, rho=0.5, adaptive=True, lr=1e-2, implementation=impl)),
    "graphsam": lambda impl: (lambda ps: GraphSAM(ps, rho=0.1, lr=1e-2, steps_per_epoch=2, implementation=impl)),
}


@pytest.mark.parametrize("impl", ENGINES)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_accumulating_micro_batches_equals_one_large_batch(name, impl):
    make = OPTIMIZERS[name](impl)
    big, opt_big, calls_big = _train(make, micro=1)
    acc, opt_acc, calls_acc = _train(make, micro=MICRO)
    start = [p.detach() for p in _model().parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(big, start))  # the steps moved the weights
    for a, b in zip(acc, big):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    # every closure call of a step ran all micro-batches
    assert opt_acc.closure_calls == opt_big.closure_calls
    assert calls_acc == MICRO * calls_big
    if name == "graphsam":
        for p_acc, p_big in zip(opt_acc.engine.params, opt_big.engine.params):
            torch.testing.assert_close(opt_acc.state[p_acc]["direction"], opt_big.state[p_big]["direction"],
                                       rtol=RTOL, atol=ATOL)


def test_a_single_micro_batch_is_the_plain_closure():
    """N = 1 adds no scaling: the step is bit-identical to a closure that calls backward itself."""
    x, y = _data(STEPS, 8)

    def plain():
        model = _model()
        opt = SAM(model.parameters(), rho=0.1, lr=1e-2)
        for t in range(STEPS):
            def closure():
                loss = torch.nn.functional.mse_loss(model(x[t]), y[t])
                loss.backward()
                return loss
            opt.step(closure)
        return list(model.parameters())

    def accumulated():
        model = _model()
        opt = SAM(model.parameters(), rho=0.1, lr=1e-2)
        for t in range(STEPS):
            opt.step(accumulating_closure([(x[t], y[t])],
                                          lambda b: torch.nn.functional.mse_loss(model(b[0]), b[1])))
        return list(model.parameters())

    for a, b in zip(accumulated(), plain()):
        assert torch.equal(a, b)


def test_unequal_micro_batches_with_weights():
    """Micro-batches of sizes 1, 3, 4 weighted by their share give the mean over all 8."""
    model = _model()
    x, y = _data(1, 8)
    sizes = [1, 3, 4]
    chunks = list(zip(x[0].split(sizes), y[0].split(sizes)))
    loss_of = lambda b: torch.nn.functional.mse_loss(model(b[0]), b[1])  # noqa: E731
    accumulating_closure(chunks, loss_of, weights=[s / 8 for s in sizes])()
    acc = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss_of((x[0], y[0])).backward()
    for a, p in zip(acc, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=RTOL, atol=ATOL)


def test_argument_errors():
    with pytest.raises(ValueError, match="micro_batches"):
        accumulating_closure([], lambda b: b)
    with pytest.raises(ValueError, match="weights"):
        accumulating_closure([1, 2], lambda b: b, weights=[1.0])

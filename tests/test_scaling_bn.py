"""BatchNorm running statistics move only in the first forward pass of a SAM step."""
import copy

import pytest
import torch

from graphsam_ext.optim import SAM, GraphSAM
from graphsam_ext.optim.bn import bn_first_pass_only, frozen_bn_stats


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 1))


def _batch(t):
    gen = torch.Generator().manual_seed(10 + t)
    return torch.randn(16, 4, generator=gen), torch.randn(16, 1, generator=gen)


def _stats(model):
    bn = model[1]
    return bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)


OPTIMIZERS = {"sam": lambda ps: SAM(ps, rho=0.5, lr=1e-2),
              "graphsam": lambda ps: GraphSAM(ps, rho=0.5, lr=1e-2, steps_per_epoch=2)}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("wrap", [True, False])
def test_running_stats_follow_the_first_pass_of_each_step(name, wrap):
    model = _model()
    opt = OPTIMIZERS[name](model.parameters())
    for t in range(3):
        x, y = _batch(t)
        seen = []

        def closure():
            if not seen:  # what the step's first forward pass (at theta; GraphSAM inside an epoch: at
                # theta + eps) makes of the statistics, on a copy of the model as that pass finds it
                seen.append(copy.deepcopy(model))
                seen[0](x)
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        calls = opt.closure_calls
        opt.step(bn_first_pass_only(model, closure) if wrap else closure)
        got, want = _stats(model), _stats(seen[0])
        if wrap:
            torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
            torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
            assert got[2] == want[2]
        elif opt.closure_calls - calls > 1:  # without the helper the perturbed pass moves them again
            assert not torch.equal(got[0], want[0])
            assert got[2] == want[2] + opt.closure_calls - calls - 1


def test_frozen_bn_stats_normalizes_with_batch_statistics_and_restores_momentum():
    model = _model()
    model[1].momentum = None  # cumulative averaging
    x, _ = _batch(0)
    before = _stats(model)
    plain = copy.deepcopy(model)
    with frozen_bn_stats(model):
        out = model(x)
    assert model[1].momentum is None
    after = _stats(model)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1]) and after[2] == before[2]
    torch.testing.assert_close(out, plain(x))  # training-mode output: the batch statistics

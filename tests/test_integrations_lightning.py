"""Our optimizers under Lightning's automatic optimization (SAMCallback), against hand-written loops."""
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from graphsam_ext.errors import UserError  # noqa: E402  (after the importorskip above)
from graphsam_ext.integrations.lightning import SAMCallback, check_trainer  # noqa: E402
from graphsam_ext.optim import SAM, GraphSAM  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
BATCHES, BATCH_SIZE = 4, 8


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCHES * BATCH_SIZE, 5, generator=g, dtype=torch.float64)
    y = torch.sin(x).sum(dim=1, keepdim=True)
    return x, y


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()


class Module(pl.LightningModule):
    def __init__(self, make_optimizer):
        super().__init__()
        self.net = _net()
        self.make_optimizer = make_optimizer
        self.training_steps = 0

    def training_step(self, batch, batch_idx):
        self.training_steps += 1
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return self.make_optimizer(self.net.parameters())


def _trainer(epochs, callbacks=(SAMCallback,), **kwargs):
    return pl.Trainer(max_epochs=epochs, callbacks=[c() for c in callbacks], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1, **kwargs)


def _fit(make_optimizer, epochs, **kwargs):
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH_SIZE)
    module = Module(make_optimizer)
    trainer = _trainer(epochs, **kwargs)
    trainer.fit(module, loader)
    return module, trainer.optimizers[0]


def _by_hand(make_optimizer, epochs, clip=None, epoch_marks=True):
    """The same training without Lightning: the closure runs forward and backward (and the clip)."""
    x, y = _data()
    net = _net()
    opt = make_optimizer(net.parameters())
    calls = 0
    for _ in range(epochs):
        if epoch_marks and isinstance(opt, GraphSAM):
            opt.start_epoch()
        for b in range(BATCHES):
            xb, yb = x[b * BATCH_SIZE:(b + 1) * BATCH_SIZE], y[b * BATCH_SIZE:(b + 1) * BATCH_SIZE]

            def closure():
                nonlocal calls
                calls += 1
                loss = torch.nn.functional.mse_loss(net(xb), yb)
                loss.backward()
                if clip is not None:
                    clip(net.parameters())
                return loss
            opt.step(closure)
    return net, calls


def _assert_same(module, net):
    for (name, a), b in zip(module.net.named_parameters(), net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)


def _sam(params):
    return SAM(params, lr=0.01, rho=0.05)


def _graphsam(params):
    return GraphSAM(params, lr=0.01, rho=0.05, gamma=0.5)


def test_sam_calls_the_closure_twice_per_step_and_equals_a_loop():
    epochs = 2
    module, opt = _fit(_sam, epochs)
    assert opt.implementation == "fused"
    assert module.training_steps == 2 * BATCHES * epochs
    assert opt.closure_calls == 2 * BATCHES * epochs
    net, calls = _by_hand(_sam, epochs)
    assert calls == module.training_steps
    _assert_same(module, net)


def test_graphsam_calls_the_closure_once_inside_an_epoch_and_twice_at_its_start():
    epochs = 3
    module, opt = _fit(_graphsam, epochs)
    assert module.training_steps == epochs * (BATCHES + 1)
    assert opt.epoch == epochs - 1 and opt.step_in_epoch == BATCHES
    assert opt.rho == pytest.approx(0.05 * 0.5 ** (epochs - 1))
    net, calls = _by_hand(_graphsam, epochs)
    assert calls == module.training_steps
    _assert_same(module, net)


def test_without_the_callback_graphsam_misses_the_epochs():
    # the reason for SAMCallback: Lightning alone never tells GraphSAM where an epoch starts
    module, opt = _fit(_graphsam, 2, callbacks=())
    assert module.training_steps == 2 * BATCHES + 1
    assert opt.epoch == 0


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_clips_each_evaluation(algorithm):
    clip_val = 0.05
    module, opt = _fit(_sam, 2, gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm)
    if algorithm == "norm":
        def clip(params):
            torch.nn.utils.clip_grad_norm_(params, clip_val)
    else:
        def clip(params):
            torch.nn.utils.clip_grad_value_(params, clip_val)
    net, _ = _by_hand(_sam, 2, clip=clip)
    _assert_same(module, net)
    unclipped, _ = _by_hand(_sam, 2)
    assert not torch.allclose(next(unclipped.parameters()), next(net.parameters()))  # the clip mattered


def test_gradient_accumulation_is_refused():
    with pytest.raises(UserError, match="accumulate_grad_batches=2"):
        _fit(_sam, 1, accumulate_grad_batches=2)


def test_accumulation_is_fine_for_torch_optimizers():
    module, _ = _fit(lambda p: torch.optim.Adam(p, lr=0.01), 1, accumulate_grad_batches=2)
    assert module.training_steps == BATCHES


def test_steps_per_epoch_under_the_callback_is_refused():
    with pytest.raises(UserError, match="steps_per_epoch"):
        _fit(lambda p: GraphSAM(p, lr=0.01, steps_per_epoch=BATCHES), 1)


def test_grad_scaler_precision_is_refused():
    from lightning.pytorch.plugins.precision import MixedPrecision

    params = [torch.nn.Parameter(torch.zeros(2))]
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = SimpleNamespace(optimizers=[SAM(params)], lightning_module=None, accumulate_grad_batches=1,
                              precision_plugin=plugin, precision="16-mixed")
    with pytest.raises(UserError, match="GradScaler"):
        check_trainer(trainer)
    trainer.precision_plugin = MixedPrecision("bf16-mixed", "cpu")
    check_trainer(trainer)  # bf16 autocast has no scaler
    trainer.optimizers = [torch.optim.Adam(params)]
    trainer.precision_plugin = plugin
    check_trainer(trainer)  # nothing to check without one of ours


def test_bf16_mixed_precision_trains():
    module, opt = _fit(lambda p: SAM(p, lr=0.01), 1, precision="bf16-mixed")
    assert module.training_steps == 2 * BATCHES
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_the_documented_example_runs():
    text = DOCS.read_text()
    block = re.search(r"## Lightning.*?```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(block, str(DOCS), "exec"), scope)
    opt = scope["trainer"].optimizers[0]
    assert isinstance(opt, GraphSAM)
    assert opt.closure_calls == 3 * (8 + 1)
    assert opt.epoch == 2


def test_resume_inside_an_epoch_continues_that_epoch():
    from graphsam_ext.integrations.lightning import start_epochs

    opt = _graphsam(_net().parameters())
    trainer = SimpleNamespace(current_epoch=2, optimizers=[opt])
    start_epochs(trainer)
    assert (opt.epoch, opt.step_in_epoch) == (2, 0)
    opt.step_in_epoch = 3  # as a state dict saved inside epoch 2 would leave it
    start_epochs(trainer)
    assert (opt.epoch, opt.step_in_epoch) == (2, 3)
    trainer.current_epoch = 1
    with pytest.raises(UserError, match="later run"):
        start_epochs(trainer)
    assert opt.rho == pytest.approx(0.05 * 0.5 ** 2)

"""The training loop's --precision fp16: float16 autocast with a GradScaler (the SAM family gets
it through ``step(closure, grad_scaler=...)``, torch's optimizers through ``scaler.step``), and
the scaler's state in ``last.pt`` so that a stopped and resumed fp16 run is bit-identical. That
every optimizer trains under fp16 is tested with bf16 in tests/test_scaling_loop.py."""
import pytest
import torch

from graphsam_ext.errors import UserError
from tests.test_scaling_loop import _config, _run, csv  # noqa: F401 (csv is a fixture)


@pytest.mark.parametrize("optimizer", ["sam", "graphsam", "adam"])
def test_fp16_run_stopped_and_resumed_is_bit_identical(csv, tmp_path, optimizer):  # noqa: F811
    cfg = _config(csv, optimizers=[optimizer], precision="fp16", clip_grad_norm=1.0 if optimizer == "sam" else None)
    full = _run(cfg, tmp_path / "full", epochs=3)
    _run(cfg, tmp_path / "resumed", epochs=1)
    resumed = _run(cfg, tmp_path / "resumed", epochs=3)
    assert len(resumed.history) == 3
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert full.grad_scaler.state_dict() == resumed.grad_scaler.state_dict()
    assert full.grad_scaler.get_scale() in {2.0 ** k for k in range(17)}  # torch's 2**16 or halved from it


def test_resuming_an_fp32_run_with_fp16_is_refused(csv, tmp_path):  # noqa: F811
    _run(_config(csv, optimizers=["graphsam"]), tmp_path, epochs=1)
    with pytest.raises(UserError, match="without --precision fp16"):
        _run(_config(csv, optimizers=["graphsam"], precision="fp16"), tmp_path, epochs=2)


def test_precision_choices(csv):  # noqa: F811
    with pytest.raises(UserError, match="precision must be one of fp32, bf16, fp16"):
        _config(csv, precision="fp8")

"""Standardizer: masked per-task mean/std from the training labels, and its inverse."""
import pytest
import torch

from graphsam_ext.data import Standardizer


def test_fit_ignores_missing_labels():
    y = torch.tensor([[1.0, 10.0], [3.0, 0.0], [5.0, 30.0], [100.0, 20.0]])
    mask = torch.tensor([[True, True], [True, False], [True, True], [False, True]])
    s = Standardizer.fit(y, mask)
    assert torch.allclose(s.mean, torch.tensor([3.0, 20.0]))
    expected_std = torch.tensor([torch.tensor([1.0, 3.0, 5.0]).std(unbiased=False), torch.tensor([10.0, 30.0, 20.0]).std(unbiased=False)])
    assert torch.allclose(s.std, expected_std)
    z = s.transform(y)
    assert torch.allclose(z[:3, 0], (y[:3, 0] - 3.0) / expected_std[0])
    assert torch.allclose(s.inverse_transform(z), y, atol=1e-5)


def test_constant_and_empty_tasks_do_not_divide_by_zero():
    y = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    mask = torch.tensor([[True, False], [True, False]])
    s = Standardizer.fit(y, mask)
    assert s.mean.tolist() == [2.0, 0.0] and s.std.tolist() == [1.0, 1.0]
    assert torch.isfinite(s.transform(y)).all()


def test_instance_fit_state_dict_and_devices():
    s = Standardizer()
    with pytest.raises(RuntimeError, match="fit"):
        s.transform(torch.zeros(2, 1))
    returned = s.fit(torch.tensor([1.0, 2.0, 3.0]))
    assert returned is s and s.mean.shape == (1,)
    restored = Standardizer.from_state_dict(s.state_dict())
    y = torch.tensor([[4.0], [5.0]], dtype=torch.float64)
    out = restored.transform(y)
    assert out.dtype == torch.float64 and torch.allclose(out, s.transform(y))
    assert torch.allclose(Standardizer().load_state_dict(s.state_dict()).inverse_transform(out), y)

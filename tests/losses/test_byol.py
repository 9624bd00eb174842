import pytest
import torch

from solo_mixmask.losses import byol_loss


def test_byol_hand_cases():
    p = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z = torch.tensor([[5.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    # cos = 1, 0, -1 -> 2 - 2 cos = 0, 2, 4 -> mean 2.
    assert byol_loss(p, z).item() == pytest.approx(2.0)
    assert byol_loss(p[:1], z[:1]).item() == pytest.approx(0.0, abs=1e-6)


def test_byol_gradient_to_prediction_only():
    p = torch.randn(4, 3, requires_grad=True)
    z = torch.randn(4, 3, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


def test_byol_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="z.shape"):
        byol_loss(torch.randn(2, 3), torch.randn(2, 4))


def test_byol_per_sample_reduction():
    p = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z = torch.tensor([[5.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    per_sample = byol_loss(p, z, reduction="none")
    assert per_sample.shape == (3,)
    torch.testing.assert_close(per_sample, torch.tensor([0.0, 2.0, 4.0]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="reduction='sum'"):
        byol_loss(p, z, reduction="sum")

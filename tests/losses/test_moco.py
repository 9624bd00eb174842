import math

import pytest
import torch

from solo_mixmask.losses import moco_logits, moco_loss

# Two samples, d=2, one queued key (0, 1).
Q = torch.tensor([[3.0, 0.0], [0.0, 0.5]])  # normalised inside: (1, 0) and (0, 1)
K = torch.tensor([[1.0, 0.0], [2.0, 0.0]])  # both normalise to (1, 0)
QUEUE = torch.tensor([[0.0], [1.0]])


def test_logits_hand_case():
    logits = moco_logits(Q, K, QUEUE, temperature=0.5)
    # sample 0: q.k = 1, q.queue = 0; sample 1: q.k = 0, q.queue = 1; all divided by 0.5.
    assert torch.allclose(logits, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))


def test_loss_hand_case():
    # T = 1: sample 0 = -log(e / (e + 1)) = log(1 + 1/e) = 0.313262;
    # sample 1 = -log(1 / (1 + e)) = log(1 + e) = 1.313262; mean = 0.813262.
    per = moco_loss(Q, K, QUEUE, 1.0, reduction="none")
    assert per.shape == (2,)
    assert per.tolist() == pytest.approx([math.log(1 + math.exp(-1)), math.log(1 + math.e)])
    assert moco_loss(Q, K, QUEUE, 1.0).item() == pytest.approx(0.813262, abs=1e-6)
    # T = 0.5: (log(1 + e^-2) + log(1 + e^2)) / 2 = 1 + log(1 + e^-2) = 1.126928.
    assert moco_loss(Q, K, QUEUE, 0.5).item() == pytest.approx(1.126928, abs=1e-6)


def test_gradient_reaches_q_only():
    q = Q.clone().requires_grad_(True)
    k = K.clone().requires_grad_(True)
    queue = QUEUE.clone().requires_grad_(True)
    moco_loss(q, k, queue, 0.2).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None


def test_bfloat16_inputs_give_float32_loss():
    loss = moco_loss(Q.bfloat16(), K.bfloat16(), QUEUE, 1.0)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.813262, abs=1e-2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=0.0), "temperature=0.0"),
        (dict(reduction="sum"), "reduction='sum'"),
        (dict(queue=torch.zeros(3, 1)), r"queue.shape=\(3, 1\)"),
        (dict(k=torch.zeros(3, 2)), r"k.shape=\(3, 2\)"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    args = dict(q=Q, k=K, queue=QUEUE, temperature=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        moco_loss(**args)

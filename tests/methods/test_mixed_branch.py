"""The one mixed-branch helper (``methods/mixed_branch.py``) and MixMask / Un-Mix on MoCo as its
compositions: each step's loss is checked against a direct float64 computation."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from solo_mixmask.core import random_partner, reversed_partner
from solo_mixmask.losses.moco import moco_loss
from solo_mixmask.methods import METHODS
from solo_mixmask.methods.mixed_branch import MixedBranchLogic
from tests.conftest import mix_with, synthetic_batch, tiny_cfg
from tests.losses.test_mixed import paper_form


class _Base(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()


class ToyMixer:
    """A fixed mix: a quarter of each image, three quarters of its partner; given lambdas."""

    name, draws_on, DEFAULTS = "toy", "host", {}
    lam = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])

    def mix(self, images, partner, generator):
        return 0.25 * images + 0.75 * images[partner], self.lam

    def saved_streams(self):
        return {}


class Toy(MixedBranchLogic, _Base):
    """forward: the first 4 pixels of the first channel row, under the key "out"."""

    mixed_output = "out"
    mixer_rows = ((ToyMixer, "reversed"),)

    def forward(self, x):
        return {"out": x[:, 0, 0, :4], "other": torch.zeros(x.shape[0], 4)}

    def log_dict(self, values, **kwargs):
        self.logged = values


def test_mixed_branch_forwards_the_mixed_images_and_weights_the_pair_loss():
    model = Toy(OmegaConf.create({"seed": 3, "method_kwargs": {}}))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, 4, generator=g)
    target = torch.randn(5, 4, generator=g)
    partner = torch.tensor([4, 3, 2, 1, 0])  # the rule "reversed"
    lam = ToyMixer.lam

    def squared(pred, t):
        return ((pred - t) ** 2).sum(dim=1)

    loss = model.mixed_losses(x, target, squared)["train_toy_loss"]
    assert float(model.logged["train_toy_lambda"]) == pytest.approx(float(lam.mean()))
    pred = (0.25 * x + 0.75 * x[partner])[:, 0, 0, :4].double()
    t = target.double()
    expected = sum(
        float(lam[j]) * float(((pred[j] - t[j]) ** 2).sum())
        + (1 - float(lam[j])) * float(((pred[j] - t[int(partner[j])]) ** 2).sum())
        for j in range(5)
    )
    assert loss.item() == pytest.approx(expected / 5, rel=1e-5)


def _twins(method: str, **overrides):
    """Two copies of a method with the same weights and the same (fresh) mixing generators."""
    torch.manual_seed(0)
    model = METHODS[method](tiny_cfg(method, **overrides))
    twin = METHODS[method](tiny_cfg(method, **overrides))
    twin.load_state_dict(model.state_dict())
    return model, twin


@pytest.mark.parametrize("method", ["mixmask", "unmix"])
def test_moco_mixed_step_is_infonce_plus_the_paper_form(method):
    """Asymmetric MoCo + one mixed branch: CE + L(q1, k2) + lam L(q_mix, k2) + (1 - lam)
    L(q_mix_partner, k2), the mixed term written out in float64 (tests/losses)."""
    model, twin = _twins(method, method_kwargs__symmetric=False)
    batch = synthetic_batch()
    queue = model.key_queue.queue.clone()
    got = model.training_step(batch, 0)

    _, (x1, x2), y = batch
    o1 = twin.forward(x1)
    k2 = twin.momentum_forward(x2)["z"]
    partner = reversed_partner(8)
    mix = partial(mix_with, twin, "mask" if method == "mixmask" else "unmix")
    x_mix, lam = mix(x1, partner)
    q_mix = twin.forward(x_mix)["z"].detach()
    expected = (
        F.cross_entropy(o1["logits"], y).item()
        + moco_loss(o1["z"], k2, queue[0], 0.2).item()
        + paper_form(q_mix, k2, queue[0], lam, partner, 0.2)
    )
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_unmix_mixmask_draws_a_permutation_for_its_mask_branch():
    """Both branches on MoCo: the Un-Mix term with the reversed batch, the MixMask term with a
    random permutation drawn after it (METHOD.md section 4)."""
    model, twin = _twins("unmix_mixmask", method_kwargs__symmetric=False)
    batch = synthetic_batch()
    queue = model.key_queue.queue.clone()
    got = model.training_step(batch, 0)

    _, (x1, x2), y = batch
    o1 = twin.forward(x1)
    k2 = twin.momentum_forward(x2)["z"]
    x_unmix, lam_u = mix_with(twin, "unmix", x1, reversed_partner(8))
    perm = random_partner(8, generator=twin.ranked_generators().device(torch.device("cpu")))
    x_mask, lam_m = mix_with(twin, "mask", x1, perm)
    expected = (
        F.cross_entropy(o1["logits"], y).item()
        + moco_loss(o1["z"], k2, queue[0], 0.2).item()
        + paper_form(
            twin.forward(x_unmix)["z"].detach(), k2, queue[0], lam_u, reversed_partner(8), 0.2
        )
        + paper_form(twin.forward(x_mask)["z"].detach(), k2, queue[0], lam_m, perm, 0.2)
    )
    assert got.item() == pytest.approx(expected, rel=1e-5)

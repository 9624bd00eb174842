"""BYOL + Un-Mix + MixMask (``byol_unmix_mixmask``): the step's loss against a direct float64
computation of both mixed terms."""

from __future__ import annotations

import pytest
import torch

from solo_mixmask.core import random_partner, reversed_partner
from solo_mixmask.methods import METHODS
from tests.conftest import mix_with, synthetic_batch, tiny_cfg
from tests.losses.test_mixed import byol_mixed_float64
from tests.methods.test_byol_mixmask import byol_part, twins


def test_step_is_byol_plus_unmix_and_mixmask_regressions():
    """Un-Mix with the reversed batch, then MixMask with a random permutation drawn after it,
    both regressing the second views' momentum projections with weights lambda, 1 - lambda."""
    model, twin = twins("byol_unmix_mixmask")
    batch = synthetic_batch()
    got = model.training_step(batch, 0).item()

    base, x1, _, z2 = byol_part(twin, batch)
    x_unmix, lam_u = mix_with(twin, "unmix", x1, reversed_partner(8))
    perm = random_partner(8, generator=twin.ranked_generators().device(torch.device("cpu")))
    x_mask, lam_m = mix_with(twin, "mask", x1, perm)
    p_unmix = twin.forward(x_unmix)["p"].detach()
    p_mask = twin.forward(x_mask)["p"].detach()
    expected = (
        base
        + byol_mixed_float64(p_unmix, z2, lam_u, reversed_partner(8))
        + byol_mixed_float64(p_mask, z2, lam_m, perm)
    )
    assert got == pytest.approx(expected, rel=1e-5)


def test_unmix_config_is_checked():
    from solo_mixmask.errors import ConfigError

    cfg = tiny_cfg("byol_unmix_mixmask", method_kwargs__unmix_prob=2.0)
    with pytest.raises(ConfigError) as info:
        METHODS["byol_unmix_mixmask"].add_and_assert_specific_cfg(cfg)
    assert info.value.key == "method_kwargs.unmix_prob"

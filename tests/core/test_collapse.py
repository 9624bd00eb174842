"""The collapse measure, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from solo_mixmask.core.collapse import (
    COLLAPSE_FRACTION,
    embedding_std,
    is_collapsed,
    spread_std,
)


def test_identical_outputs_have_no_spread():
    z = torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.3, 0.4]])  # one direction, any length
    assert float(embedding_std(z)) == pytest.approx(0.0, abs=1e-7)


def test_orthogonal_outputs_by_hand():
    # rows e1, e2: each column is [1, 0] or [0, 1], unbiased std sqrt(0.5) = 1/sqrt(2)
    z = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    assert float(embedding_std(z)) == pytest.approx(1 / math.sqrt(2))
    assert spread_std(2) == pytest.approx(1 / math.sqrt(2))


def test_random_directions_are_near_the_spread_value():
    z = torch.randn(4096, 128, generator=torch.Generator().manual_seed(0))
    assert float(embedding_std(z)) == pytest.approx(spread_std(128), rel=0.02)
    assert not is_collapsed(float(embedding_std(z)), 128)


def test_collapse_rule_threshold():
    assert is_collapsed(0.099 * spread_std(64), 64)
    assert not is_collapsed(COLLAPSE_FRACTION * spread_std(64), 64)
    # 10% of the spread value means a mean pairwise cosine of about 0.99
    direction = torch.nn.functional.normalize(torch.randn(256), dim=0)
    noise = torch.randn(1024, 256, generator=torch.Generator().manual_seed(1))
    z = direction + 0.1 * noise / math.sqrt(256)
    unit = torch.nn.functional.normalize(z, dim=1)
    cosine = float((unit @ unit.T).mean())
    assert cosine == pytest.approx(0.99, abs=0.005)
    assert float(embedding_std(z)) / spread_std(256) == pytest.approx(0.1, rel=0.05)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="expected \\(B, d\\) with B >= 2"):
        embedding_std(torch.ones(1, 4))
    with pytest.raises(ValueError, match="dim=0"):
        spread_std(0)

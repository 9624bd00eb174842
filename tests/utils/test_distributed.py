"""Tests of solo_mixmask/utils/distributed.py: the unpadded evaluation shares of DDP ranks."""

from __future__ import annotations

import pytest
from torch.utils.data import DistributedSampler

from solo_mixmask.utils.distributed import UnpaddedDistributedSampler, evaluation_share

#: (images, processes): the loaders refuse fewer images than processes
CASES = [(n, w) for n in (1, 2, 3, 5, 7, 18, 33, 100, 10_001) for w in (1, 2, 3, 4, 8) if n >= w]


@pytest.mark.parametrize(("size", "world"), CASES)
def test_every_index_is_in_exactly_one_share_in_order(size, world):
    shares = [list(evaluation_share(size, r, world)) for r in range(world)]
    assert [i for share in shares for i in share] == list(range(size))  # once each, in order
    lengths = [len(share) for share in shares]
    assert max(lengths) - min(lengths) <= 1 and min(lengths) >= 1


@pytest.mark.parametrize(("size", "world"), CASES)
def test_sampler_yields_its_share_and_nothing_more(size, world):
    samplers = [UnpaddedDistributedSampler(range(size), r, world) for r in range(world)]
    # a DistributedSampler: Lightning (2.1 to 2.6) leaves it in place instead of injecting its
    # padding one into the loader
    assert all(isinstance(s, DistributedSampler) for s in samplers)
    indices = [i for s in samplers for i in s]
    assert indices == list(range(size))
    assert sum(len(s) for s in samplers) == size
    samplers[0].set_epoch(3)  # Lightning calls it; the order stays fixed
    assert list(samplers[0]) == list(evaluation_share(size, 0, world))


def test_bad_rank_is_refused():
    with pytest.raises(ValueError, match="rank"):
        UnpaddedDistributedSampler(range(4), 2, 2)

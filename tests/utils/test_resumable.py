"""The resumable training loader's position: taken back as saved, and refused when the run's
loader differs from the checkpoint's (batch size, processes or seed)."""

from __future__ import annotations

import pytest

from solo_mixmask.errors import CheckpointError
from solo_mixmask.utils.resumable import ResumableLoader


def _loader(batch_size: int = 4, seed: int = 5, world_size: int = 1) -> ResumableLoader:
    return ResumableLoader(list(range(32)), batch_size=batch_size, seed=seed, world_size=world_size)


def test_a_saved_position_is_taken_back():
    trained = _loader()
    trained.resumable_sampler.set_epoch(2)
    trained.batches_done = 3
    resumed = _loader()
    resumed.load_state_dict(trained.state_dict())
    assert (resumed.resumable_sampler.epoch, resumed.batches_done) == (2, 3)
    assert len(list(resumed)) == len(trained) - 3  # the epoch goes on after its 3 batches


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        ({"batch_size": 8}, "batch_size=8"),
        ({"seed": 6}, "seed=6"),
        ({"world_size": 2}, "world_size=2"),
    ],
)
def test_another_loader_than_the_checkpoints_is_refused(changed, named):
    """A resume goes on with the loader the checkpoint was trained with: another one would
    train another run (other data order, and another number of steps than the restored
    learning-rate schedule counts), so it is refused rather than mapped."""
    saved = _loader().state_dict()
    resumed = _loader(**changed)
    with pytest.raises(CheckpointError, match=named) as refused:
        resumed.load_state_dict(saved)
    assert "batch_size=4, world_size=1, seed=5" in str(refused.value)

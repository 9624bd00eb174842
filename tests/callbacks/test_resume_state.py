"""What a checkpoint records about the processes that trained it (:class:`ResumeState`), which
``resume`` compares with the processes it would run on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from solo_mixmask.callbacks.resume_state import (
    ResumeState,
    capture_rng_state,
    summed_epoch_means,
    trained_world_size,
)
from solo_mixmask.methods.base import EpochMeans
from solo_mixmask.utils.resumable import ResumableLoader


def _checkpoint(**state):
    return {"callbacks": {"ResumeState": state}}


def test_a_checkpoint_records_its_world_size():
    callback = ResumeState(None)
    callback.setup(SimpleNamespace(world_size=1, global_rank=0), None, "fit")
    saved = callback.state_dict()
    assert saved["world_size"] == 1
    assert trained_world_size(_checkpoint(**saved)) == 1


def test_older_checkpoints_give_their_world_size_from_the_loader_or_the_ranks_streams():
    assert trained_world_size(_checkpoint(loader={"epoch": 0, "world_size": 4})) == 4
    assert trained_world_size(_checkpoint(per_rank=[{}, {}])) == 2  # one entry per rank
    assert trained_world_size(_checkpoint(world_size=8, loader={"world_size": 8})) == 8


def test_a_checkpoint_that_recorded_no_world_size_gives_none():
    assert trained_world_size({}) is None
    assert trained_world_size(_checkpoint(rng={"torch": torch.get_rng_state()})) is None
    assert trained_world_size(_checkpoint(world_size=True)) is None  # not a number of processes


def _resume_state(batches_done=0, rank=0, world=1):
    """A ResumeState over a loader of 4 batches, ``batches_done`` of them trained, and a
    module holding only its epoch means."""
    loader = ResumableLoader(
        list(range(16 * world)), batch_size=4, seed=1, rank=rank, world_size=world
    )
    loader.batches_done = batches_done
    module = SimpleNamespace(epoch_means=EpochMeans())
    callback = ResumeState(loader)
    trainer = SimpleNamespace(world_size=world, global_rank=rank, num_training_batches=4)
    callback.setup(trainer, module, "fit")
    return callback, module.epoch_means


def _sums(total, weight):
    return {"train_x": {"total": torch.tensor(total), "weight": torch.tensor(weight)}}


@pytest.mark.parametrize("done, saved", [(0, False), (2, True), (4, False)])
def test_epoch_means_travel_only_inside_an_epoch(done, saved):
    """Sums saved after the epoch's last batch would be carried into the next epoch."""
    callback, means = _resume_state(done)
    means.update("train_x", torch.tensor(1.5), 4, sync=True)
    state = callback.state_dict()
    assert ("epoch_means" in state) is saved
    if saved:
        assert state["epoch_means"] == {"train_x": means.sums()["train_x"]}


def test_epoch_means_are_restored_when_the_saved_epoch_goes_on():
    callback, means = _resume_state(2)
    means.update("train_x", torch.tensor(1.5), 8, sync=True)
    state = callback.state_dict()
    resumed, restored = _resume_state()
    resumed.load_state_dict(state)
    assert restored.update("train_x", torch.tensor(3.0), 4, sync=True).compute() == 2.0
    # a checkpoint of a finished epoch (not expected to hold sums) moves to the next epoch:
    # its sums are not restored
    state["loader"]["batches_done"] = 4
    resumed, restored = _resume_state()
    resumed.load_state_dict(state)
    assert restored.update("train_x", torch.tensor(3.0), 4, sync=True).compute() == 3.0


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_restores_its_own_epoch_sums_and_they_are_counted_once(rank):
    ranks = [_sums(6.0, 4), _sums(2.0, 4)]
    loader = ResumableLoader(list(range(32)), batch_size=4, seed=1, rank=rank, world_size=2)
    loader.batches_done = 1
    state = {
        "loader": loader.state_dict(),
        "per_rank": [{"rng": capture_rng_state(), "epoch_means": sums} for sums in ranks],
        "epoch_means": summed_epoch_means(ranks),
    }
    assert state["epoch_means"] == _sums(8.0, 8)
    callback, means = _resume_state(rank=rank, world=2)
    callback.load_state_dict(state)
    assert means.sums() == {}  # restored into the means at their next update
    assert (
        means.update("train_x", torch.tensor(0.0), 4, sync=True).total
        == ranks[rank]["train_x"]["total"]
    )
    # without per-rank streams, rank 0 takes all the sums and the others none
    del state["per_rank"]
    callback, means = _resume_state(rank=rank, world=2)
    callback.load_state_dict(state)
    total = means.update("train_x", torch.tensor(0.0), 4, sync=True).total
    assert total == (8.0 if rank == 0 else 0.0)

"""What a checkpoint records about the processes that trained it (:class:`ResumeState`), which
``resume`` compares with the processes it would run on."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from solo_mixmask.callbacks.resume_state import ResumeState, trained_world_size


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

"""Checkpoints written before the mixed-branch redesign still load and train on identically.

The two checkpoints in ``tests/fixtures/legacy/`` were written by ``solo-mixmask pretrain`` at
commit 703fab3 (split BN with shuffled keys on, so every saved stream is in them); the figures in
``legacy_steps.json`` are what one more training step gave there (see ``tests.fixtures.legacy_step``).
"""

from __future__ import annotations

import json

import pytest

from tests.fixtures.legacy_step import METHODS, RECORD, step_after_restore


@pytest.mark.parametrize("method", METHODS)
def test_a_checkpoint_of_the_old_layout_restores_and_steps_as_it_did(method):
    recorded = json.loads(RECORD.read_text(encoding="utf-8"))[method]
    now = step_after_restore(method)
    assert set(now) == set(recorded)
    for name, value in recorded.items():
        assert now[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name

"""Exact resume: every checkpoint also holds the global RNG states and the training loader's
position, and a resumed run takes them back (:class:`ResumeState`).

Lightning 2.1 restarts a checkpoint saved inside a batch's end hooks one batch short; newer
versions complete that batch themselves (:func:`mark_batch_completed`).
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

from solo_mixmask.utils.resumable import ResumableLoader

#: Newer Lightning recognises a checkpoint saved in ``on_train_batch_end`` (its batch counted
#: as processed but not yet completed) and completes the batch when it restarts; 2.1 does not.
LIGHTNING_COMPLETES_BATCH_ON_RESTART = hasattr(_TrainingEpochLoop, "restarted_on_train_batch_end")


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states as weights_only-loadable values (tensors, ints, lists, strings)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (missing parts are left as they are)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        np_state = state["numpy"]
        keys = np_state["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (
                np_state["kind"],
                keys,
                np_state["pos"],
                np_state["has_gauss"],
                np_state["cached_gaussian"],
            )
        )
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


class ResumeState(Callback):
    """Saves/restores RNG states and the training loader's position in every checkpoint.

    The position is applied as soon as Lightning hands the callback its state (before it builds
    the first training iterator), so the resumed epoch skips exactly the batches already trained.
    Inside an epoch it also saves the method's partial epoch means (``epoch_means``, its
    :class:`~solo_mixmask.methods.base.EpochMeans`; Lightning saves none of its own) and
    restores them when the resumed loader goes on with that epoch, so that the epoch logs the
    means of all its batches.
    Beside the loader's position it records ``epoch_batches``, the batches an epoch runs
    (:func:`epoch_batches`; fewer than the loader's with ``limit_train_batches``), and
    ``world_size``, the processes that trained the run (:func:`trained_world_size`).
    Under DDP only rank 0 writes the file, so the per-rank streams (global RNGs and the method's
    ``generators``, seeded per rank) of every rank are gathered into ``per_rank`` when saving and
    each rank takes its own back when loading (same world size), overriding the rank-0 copy the
    method restores from ``checkpoint["method_generators"]``.

    A checkpoint written in a batch's end hooks (mid-epoch ``last.ckpt``) counts that batch as
    completed for Lightning 2.1 (:func:`mark_batch_completed`), whoever writes it; one written
    at the end of an epoch that ``max_time`` stopped part-way resumes inside that epoch
    (:func:`reopen_stopped_epoch`).
    """

    def __init__(self, loader: ResumableLoader | None):
        self.loader = loader
        self._trainer: Any = None
        self._module: Any = None

    @property
    def state_key(self) -> str:
        return "ResumeState"

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        self._trainer, self._module = trainer, pl_module

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.loader is not None:
            self.loader.batches_done = batch_idx + 1

    def _rank_streams(self) -> dict[str, Any]:
        generators = getattr(self._module, "generators", None)
        streams = {
            "rng": capture_rng_state(),
            "generators": generators.state_dict() if generators is not None else {},
        }
        means = getattr(self._module, "epoch_means", None)
        if means is not None and self._inside_epoch():
            streams["epoch_means"] = means.sums()
        return streams

    def _inside_epoch(self) -> bool:
        """Whether the loader has trained some but not all of its epoch's batches."""
        batches = epoch_batches(self._trainer)
        return (
            self.loader is not None
            and batches is not None
            and 0 < self.loader.batches_done < batches
        )

    def state_dict(self) -> dict[str, Any]:
        streams = self._rank_streams()
        world = int(getattr(self._trainer, "world_size", 1) or 1)
        state: dict[str, Any] = {"rng": streams["rng"], "world_size": world}
        if self.loader is not None:
            state["loader"] = self.loader.state_dict()
            batches = epoch_batches(self._trainer)
            if batches is not None:
                state["epoch_batches"] = batches
        ranks = [streams]
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * world
            # every rank runs dump_checkpoint for every save, so this collective is matched
            torch.distributed.all_gather_object(gathered, streams)
            state["per_rank"] = ranks = gathered
        if "epoch_means" in streams:
            state["epoch_means"] = summed_epoch_means([r["epoch_means"] for r in ranks])
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rank = int(getattr(self._trainer, "global_rank", 0) or 0)
        world = int(getattr(self._trainer, "world_size", 1) or 1)
        per_rank = state_dict.get("per_rank")
        if per_rank is not None and len(per_rank) == world:
            mine = per_rank[rank]
            restore_rng_state(mine["rng"])
            generators = getattr(self._module, "generators", None)
            if generators is not None and mine.get("generators"):
                generators.load_state_dict(mine["generators"])
        elif "rng" in state_dict:
            restore_rng_state(state_dict["rng"])
        if self.loader is not None and "loader" in state_dict:
            self.loader.load_state_dict(state_dict["loader"])
        means = getattr(self._module, "epoch_means", None)
        if means is not None and "epoch_means" in state_dict and self.loader is not None:
            if self.loader.batches_done > 0:  # the saved epoch goes on
                # each rank its own sums; without them (not expected: the loader refuses
                # another world size), rank 0 all of them, so they are counted once
                if per_rank is not None and len(per_rank) == world:
                    means.restore(per_rank[rank].get("epoch_means", {}))
                else:
                    means.restore(state_dict["epoch_means"] if rank == 0 else {})

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: Any, checkpoint: dict[str, Any]
    ) -> None:
        if not LIGHTNING_COMPLETES_BATCH_ON_RESTART:
            mark_batch_completed(checkpoint)
        if self.loader is not None:
            batches = epoch_batches(trainer)
            if batches is not None and self.loader.batches_done < batches:
                reopen_stopped_epoch(checkpoint)


def summed_epoch_means(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-rank partial epoch sums ``{name: {"total", "weight"}}`` of ``ranks`` added up."""
    summed: dict[str, Any] = {}
    for sums in ranks:
        for name, parts in sums.items():
            into = summed.setdefault(name, {k: torch.zeros_like(v) for k, v in parts.items()})
            for key, value in parts.items():
                into[key] = into[key] + value
    return summed


def trained_world_size(checkpoint: dict[str, Any]) -> int | None:
    """The number of processes (``devices x num_nodes`` as the Trainer resolved them) that
    trained ``checkpoint``: what :class:`ResumeState` recorded, else (written before it did)
    its training loader's ``world_size``, else one per rank in ``per_rank``; None when the
    checkpoint holds none of them."""
    state = (checkpoint.get("callbacks") or {}).get("ResumeState")
    if not isinstance(state, dict):
        return None
    loader = state.get("loader")
    per_rank = state.get("per_rank")
    recorded = [
        state.get("world_size"),
        loader.get("world_size") if isinstance(loader, dict) else None,
        len(per_rank) if isinstance(per_rank, list) and per_rank else None,
    ]
    for value in recorded:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def epoch_batches(trainer: Any) -> int | None:
    """The training batches an epoch of ``trainer`` runs (this rank's): the loader's length
    cut by ``limit_train_batches`` as Lightning computes it; None before the loader is set up
    or for an endless one. ``resume`` counts an epoch whose batches are all done as trained."""
    batches = getattr(trainer, "num_training_batches", None)
    if isinstance(batches, float) and batches.is_integer():
        batches = int(batches)
    return batches if isinstance(batches, int) and batches > 0 else None


def reopen_stopped_epoch(checkpoint: dict[str, Any]) -> None:
    """Count an epoch that ``max_time`` (or ``max_steps``) stopped part-way as not processed in
    ``checkpoint``, so that a resume trains the rest of it.

    Lightning ends a stopped epoch as it ends a whole one and writes the run's last
    checkpoint in its end hooks, with the epoch counted ``processed``: a resume (with a
    larger ``max_time``) restarted at the next epoch and never trained the rest of the stopped
    one. Called only while the loader's epoch has batches left; then a processed but not
    completed epoch is set back to the shape of a mid-epoch checkpoint."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress")
    if not progress:
        return
    for part in ("total", "current"):
        counts = progress.get(part)
        if counts and counts["processed"] == counts["completed"] + 1:
            counts["processed"] = counts["completed"]


def mark_batch_completed(checkpoint: dict[str, Any]) -> None:
    """Count a batch that was trained but not yet completed as completed in ``checkpoint``.

    Lightning counts a training batch ``processed`` after its step and ``completed`` after its
    ``on_train_batch_end`` hooks, so a checkpoint written in those hooks (Lightning's
    ``ModelCheckpoint(every_n_train_steps=...)``, :class:`~solo_mixmask.callbacks.stop.
    StopCheckpoint`) is one short. Lightning 2.1 restarts from ``completed``: the resumed
    epoch's batch indices would then end one early and its end-of-epoch validation be skipped.
    Checkpoints written between batches (``processed == completed``) are left as they are.
    """
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if not progress:
        return
    for part in ("total", "current"):
        counts = progress.get(part)
        if counts and counts["processed"] > counts["completed"]:
            counts["completed"] = counts["processed"]

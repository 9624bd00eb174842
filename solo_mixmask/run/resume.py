"""``solo-mixmask resume``: continue a run in its folder from its newest usable checkpoint.

``checkpoints/last.ckpt`` is used, else the newest ``epochNNN.ckpt`` that loads (a warning
names it); the checkpoint must be a training checkpoint of the run's own method whose tensors
fit the model of the run's config. Only the keys of :data:`RESUME_KEYS` may be overridden (what
a resumed run really applies; anything else would be recorded in ``config.yaml`` without
changing the run). ``max_epochs`` and ``max_time`` can grow; a finished run (all its epochs,
its ``max_steps`` or its ``max_time`` trained) is left untouched (:class:`NothingToResume`); a
run that finished but whose final save failed (no ``summary.json``) is finished from its
checkpoint: evaluated again, nothing trained. A resume runs on as many processes as trained
the checkpoint (``devices x num_nodes``; other devices may be named).

An epoch counts as trained when all the batches it runs are done: the training loader's, or
fewer with ``limit_train_batches`` (:func:`batches_per_epoch`). The training time that
``max_time`` limits is the one Lightning's ``Timer`` stored in the checkpoint.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from solo_mixmask.callbacks.resume_state import trained_world_size
from solo_mixmask.checkpoints.io import LAST, atomic_copy, safe_load_checkpoint
from solo_mixmask.checkpoints.saved_model import SavedModel, saved_model_of
from solo_mixmask.config.compose import apply_overrides, parse_overrides
from solo_mixmask.config.run_specs import resume_facts
from solo_mixmask.config.schema import max_time_seconds
from solo_mixmask.errors import CheckpointError, ConfigError
from solo_mixmask.run.folder import (
    CHECKPOINTS,
    CONFIG,
    INIT_METRICS,
    LOGS,
    SUMMARY,
    RunLock,
    is_rank_zero_process,
)
from solo_mixmask.run.pretrain import fractional_epochs, run_pretrain


class NothingToResume(Exception):
    """``resume`` of a run that already trained its ``max_epochs`` (or its ``max_steps``, or
    used up its ``max_time``): nothing was changed."""


#: The keys ``resume RUN key=value`` may change: where and how the rest of the run is carried
#: out, applied by the resumed process and recorded in ``config.yaml``. Every other key is
#: fixed by the checkpoint (weights, optimiser and schedule states, data position) or by the
#: run folder, so an override of it would be recorded without being applied. ``devices`` and
#: ``num_nodes`` may name other devices, not another number of processes than trained the
#: checkpoint (:func:`~solo_mixmask.run.pretrain.check_same_world_size`).
RESUME_KEYS = (
    "max_epochs",
    "max_time",
    "checkpoint.every_n_steps",
    "data.num_workers",
    "progress_bar",
    "accelerator",
    "devices",
    "num_nodes",
)


def check_resume_overrides(overrides: list[str]) -> None:
    """ConfigError naming the first override whose key is not one of :data:`RESUME_KEYS`."""
    for o in parse_overrides(overrides):
        if o.key_or_group not in RESUME_KEYS:
            value = None if o.is_delete() else o.value()
            raise ConfigError(
                o.key_or_group,
                value,
                f"a key that resume may change ({', '.join(RESUME_KEYS)}): the rest of a run "
                "comes from its checkpoint and folder, so a resumed run would record this "
                "value without applying it; start a new run (solo-mixmask pretrain) to train "
                f"with another {o.key_or_group}",
            )


def batches_per_epoch(loader_batches: int, limit: Any) -> int:
    """The training batches an epoch runs, as Lightning computes them from the loader's
    ``loader_batches`` and ``limit_train_batches`` (``limit``; None: absent): an int is a
    number of batches (at most the loader's), a float a fraction of them, rounded down."""
    if loader_batches <= 0 or limit is None or isinstance(limit, bool):
        return loader_batches
    if isinstance(limit, int):
        return min(loader_batches, limit)
    if isinstance(limit, float):
        return int(loader_batches * limit)
    return loader_batches  # not a number: the start-up checks refuse it


def _loader_position(checkpoint: dict[str, Any], limit: Any) -> tuple[int, int, int] | None:
    """(epoch, batches done, batches the epoch runs; 0 when unknown) of the checkpoint's
    training loader, None when it holds no loader position (a non-resumable loader). The
    batches an epoch runs are those the checkpoint recorded (``epoch_batches``, see
    :class:`~solo_mixmask.callbacks.resume_state.ResumeState`), else (a checkpoint written
    before it recorded them) the loader's cut by ``limit`` (``limit_train_batches``)."""
    state = (checkpoint.get("callbacks") or {}).get("ResumeState", {})
    loader = state.get("loader")
    if not isinstance(loader, dict) or "epoch" not in loader:
        return None
    done, total = int(loader.get("batches_done", 0)), int(loader.get("num_batches", 0) or 0)
    recorded = state.get("epoch_batches")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded > 0:
        total = recorded
    else:
        total = batches_per_epoch(total, limit)
    return int(loader["epoch"]), done, total


def epochs_trained(checkpoint: dict[str, Any], limit: Any = None) -> int | None:
    """Whole epochs (training and end-of-epoch evaluation) behind ``checkpoint``, or None when
    it holds no loader position (a non-resumable loader). ``limit``: the run's
    ``limit_train_batches`` (None: absent), for a checkpoint that did not record the batches
    an epoch runs.

    An epoch-end checkpoint is written after the epoch's evaluation, with all the epoch's
    batches done; a mid-epoch one never has all of them done.
    """
    position = _loader_position(checkpoint, limit)
    if position is None:
        return None
    epoch, done, total = position
    return epoch + (1 if total and done >= total else 0)


def epochs_begun(checkpoint: dict[str, Any], limit: Any = None) -> int | float | None:
    """Like :func:`epochs_trained`, with the fraction of batches done of an epoch in progress
    (2.5: two epochs and half of the third), as ``max_steps`` or ``max_time`` can end a run;
    None likewise."""
    position = _loader_position(checkpoint, limit)
    if position is None:
        return None
    epoch, done, total = position
    if 0 < done < total:
        return fractional_epochs(epoch, done, total)
    return epochs_trained(checkpoint, limit)


def training_seconds(checkpoint: dict[str, Any]) -> float | None:
    """The training time behind ``checkpoint`` that ``max_time`` limits: what Lightning's
    ``Timer`` stored (None when the run had no ``max_time``, so no Timer)."""
    timer = (checkpoint.get("callbacks") or {}).get("Timer")
    if not isinstance(timer, dict):
        return None
    elapsed = (timer.get("time_elapsed") or {}).get("train")
    if not isinstance(elapsed, int | float) or isinstance(elapsed, bool):
        return None
    return float(elapsed)


def as_duration(seconds: float) -> str:
    """``seconds`` (rounded down) as a ``max_time`` string, ``DD:HH:MM:SS``."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


def _used_up_max_time(
    run_dir: Path, cfg: DictConfig, elapsed: float | None, given: set[str], trained: str
) -> bool:
    """Whether the run has used up its ``max_time`` (``elapsed``: the checkpoint's training
    seconds) and needs only its summary, see :func:`resume_run`. Lightning's restored Timer
    would stop a fit of it at once: nothing trained or validated. NothingToResume when it has
    a summary; ConfigError when ``given`` (the keys overridden) holds ``max_time`` (not above
    the time trained) or ``max_epochs`` (which alone would train nothing). ``trained``: the
    epochs and steps, for the messages."""
    value = OmegaConf.select(cfg, "max_time")
    limit = max_time_seconds(value)
    if limit is None or elapsed is None or elapsed < limit:
        return False
    spent = as_duration(elapsed)
    more = f"max_time={as_duration(math.floor(elapsed) + 1)} or more, or ~max_time for no limit"
    if "max_time" in given:
        raise ConfigError(
            "max_time",
            value,
            f"more than the {spent} of training {run_dir} has had ({trained}): {more}; "
            "nothing was changed",
        )
    if "max_epochs" in given:
        raise ConfigError(
            "max_time",
            value,
            f"a longer max_time as well: {run_dir} has used up its max_time ({spent} of "
            f"training, {trained}), so max_epochs alone would train nothing; add {more}; "
            "nothing was changed",
        )
    if not (run_dir / SUMMARY).exists():
        return True
    raise NothingToResume(
        f"{run_dir} is finished (its max_time={value} is used up: {spent} of training, "
        f"{trained}); nothing was changed. To train it longer: solo-mixmask resume {run_dir} "
        f"max_time=DD:HH:MM:SS ({more.removeprefix('max_time=')})"
    )


def _reached_max_steps(run_dir: Path, cfg: DictConfig, steps: int) -> bool:
    """Whether the run has trained its ``max_steps`` (config key; not one resume may change)
    and needs only its summary, see :func:`resume_run`. NothingToResume when it has one."""
    max_steps = resume_facts(cfg).max_steps
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or not 0 < max_steps <= steps:
        return False
    if (run_dir / SUMMARY).exists():
        raise NothingToResume(
            f"{run_dir} is finished ({steps} steps trained, its max_steps={max_steps}); nothing "
            "was changed. resume cannot change max_steps: start a new run (solo-mixmask "
            "pretrain) to train longer"
        )
    return True


def _check_max_epochs(
    run_dir: Path, saved: DictConfig, cfg: DictConfig, done: int | None, given: bool
) -> bool:
    """Whether the run has trained all its epochs (and needs only its summary, see
    :func:`resume_run`). NothingToResume for a finished run resumed without ``max_epochs``
    (``given``: it was overridden); ConfigError for a ``max_epochs=N`` override with N not above
    the epochs already trained; a warning when ``max_epochs`` changes (what happens to the
    schedules)."""
    asked = resume_facts(cfg)
    try:
        old, new = int(resume_facts(saved).max_epochs), int(asked.max_epochs)
    except (TypeError, ValueError, AttributeError):
        return False  # prepare_config reports a bad max_epochs
    if done is not None and done >= new:
        if not given:
            if not (run_dir / SUMMARY).exists():
                return True
            raise NothingToResume(
                f"{run_dir} is finished ({done} of {old} epochs trained); nothing was changed. "
                f"To train it longer: solo-mixmask resume {run_dir} max_epochs=N (N > {done})"
            )
        raise ConfigError(
            "max_epochs",
            new,
            f"more than {done}: {run_dir} has already trained {done} epochs (its max_epochs is "
            f"{old}); nothing was changed",
        )
    if new != old:
        import warnings

        from solo_mixmask.errors import ConfigWarning

        schedule = asked.scheduler
        lr = (
            f"the learning-rate schedule ({schedule}) is restored from the checkpoint and still "
            f"spans {old} epochs (after them the rate stays at scheduler.min_lr="
            f"{asked.min_lr})"
            if schedule in ("warmup_cosine", "cosine")
            else f"the learning-rate schedule ({schedule}) is restored from the checkpoint"
        )
        warnings.warn(
            f"max_epochs changes from {old} to {new}: training continues to epoch {new}, but "
            f"{lr}, while the momentum tau schedule is recomputed over {new} epochs; the "
            f"result is not the one of a run started with max_epochs={new}",
            ConfigWarning,
            stacklevel=2,
        )
    return False


def _training_checkpoint(path: Path) -> dict[str, Any]:
    """``path`` loaded safely (weights only), CheckpointError unless it is a training
    checkpoint (weights, loop and optimiser states)."""
    checkpoint = safe_load_checkpoint(path)
    for key in ("state_dict", "loops", "optimizer_states"):
        if key not in checkpoint:
            raise CheckpointError(
                f"{path} is not a training checkpoint (no {key!r}); resume needs the last.ckpt "
                "that solo-mixmask pretrain wrote"
            )
    return checkpoint


def epoch_checkpoints(folder: Path) -> list[Path]:
    """The ``epochNNN.ckpt`` files of a checkpoint folder, newest (highest epoch) first."""
    found = []
    for path in folder.glob("epoch*.ckpt"):
        match = re.match(r"epoch(\d+)", path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path.stat().st_mtime, path))
    return [path for *_, path in sorted(found, reverse=True)]


def _newest_epoch_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest ``epochNNN.ckpt`` that loads as a training checkpoint, loaded; None when
    there is none (unusable ones are passed over with a warning)."""
    for path in epoch_checkpoints(folder):
        try:
            return path, _training_checkpoint(path)
        except CheckpointError as err:
            _warn(f"passing over {path}: {err}")
    return None


def _warn(message: str) -> None:
    import warnings

    from solo_mixmask.errors import ConfigWarning

    warnings.warn(message, ConfigWarning, stacklevel=3)


def _check_same_method(path: Path, saved: SavedModel, cfg: DictConfig) -> None:
    """CheckpointError when the checkpoint at ``path`` was written by another method than
    ``cfg.method``."""
    written_by = saved.cfg.get("method") if saved.cfg else None
    method = resume_facts(cfg).method
    if written_by is not None and written_by != method:
        raise CheckpointError(
            f"{path} was written by method {written_by!r}, but the run's config asks for "
            f"method={method!r}: a run resumes with its own method; start a new run "
            f"(solo-mixmask pretrain method={method} ...) to train another one"
        )


def resume_run(run_dir: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from ``checkpoints/last.ckpt``.

    The run folder's lock is taken first (:class:`~solo_mixmask.run.folder.RunLock`): a run that
    a live process trains is refused (ConfigError), a stale lock taken over with a warning.
    Without ``last.ckpt`` the newest usable ``epochNNN.ckpt`` is used (a warning names it).
    The checkpoint is read with ``torch.load(weights_only=True)``: a file that needs
    arbitrary pickled objects is refused (CheckpointError) before anything in it can run, and
    so is one written by another method, or (when the model is built) one whose tensors do not
    fit the model of the run's config. ``overrides`` may set the keys of :data:`RESUME_KEYS`
    only (ConfigError naming any other key, before anything changes). A run that already
    trained its ``max_epochs`` raises :class:`NothingToResume` and nothing in its folder
    changes; one that trained them but has no ``summary.json`` (its final save failed) is
    finished: evaluated from its checkpoint, which becomes ``last.ckpt``, and its summary
    written. ``max_epochs=N`` with ``N`` above the epochs trained extends the run; any other
    ``N`` is a ConfigError. Likewise a run that used up its ``max_time`` (the checkpoint's
    training time, as Lightning's ``Timer`` stored it) is finished, or finished from its
    checkpoint without a summary; ``max_time`` above that time trains on, any other
    ``max_time`` (or ``max_epochs`` without a longer ``max_time``) is a ConfigError. An epoch
    counts as trained when all the batches it runs are done (with ``limit_train_batches``,
    that many). A run stopped before its first checkpoint (and never finished) starts again
    from step 0 in the same folder. A ``config.yaml`` that cannot be read is a CheckpointError,
    and so is a resume on another number of processes (``devices x num_nodes`` as the Trainer
    resolves them) than trained the checkpoint, before the run folder changes; a checkpoint
    that did not record that number is not checked (a warning when ``devices`` or
    ``num_nodes`` is overridden).
    """
    run_dir = Path(run_dir)
    config_file = run_dir / CONFIG
    if not config_file.exists():
        raise CheckpointError(f"{run_dir} is not a run folder: {config_file} is missing")
    with RunLock(run_dir, "solo-mixmask resume", enabled=is_rank_zero_process()):
        return _resume_locked(run_dir, overrides)


def _not_yet_applied(saved: DictConfig, overrides: list[str]) -> list[str]:
    """``overrides`` less the deletions whose key ``saved`` lacks: a DDP child process reads
    the ``config.yaml`` in which rank 0 has already recorded the overrides (``~max_time``
    removed the key there, and deleting it again would fail in the child alone)."""
    absent = object()
    return [
        line
        for line, o in zip(overrides, parse_overrides(overrides), strict=True)
        if not (o.is_delete() and OmegaConf.select(saved, o.key_or_group, default=absent) is absent)
    ]


def _resume_locked(run_dir: Path, overrides: list[str] | None) -> dict[str, Any]:
    """:func:`resume_run` once the run folder's lock is held."""
    config_file, folder = run_dir / CONFIG, run_dir / CHECKPOINTS
    last = folder / LAST
    saved = _saved_config(config_file)
    cfg = saved
    if overrides:
        check_resume_overrides(overrides)
        if not is_rank_zero_process():
            overrides = _not_yet_applied(saved, overrides)
        cfg = apply_overrides(saved, overrides)  # hydra's grammar, as for pretrain
    if last.exists():
        try:
            checkpoint = _training_checkpoint(last)
        except CheckpointError as err:
            newest = epoch_checkpoints(folder)
            if not newest:
                raise
            raise CheckpointError(
                f"{err}; the newest epoch checkpoint is {newest[0]}: move {last} away and "
                "resume again to continue from it"
            ) from err
    else:
        found = _newest_epoch_checkpoint(folder)
        if found is None:
            if (run_dir / SUMMARY).exists() or any(folder.glob("*.ckpt")):
                raise CheckpointError(
                    f"{run_dir} has no checkpoint to resume from: {last} is missing"
                )
            import shutil

            _warn(
                f"{run_dir} was stopped before its first checkpoint: nothing was trained, so the "
                "run starts again from step 0 in this folder"
            )
            shutil.rmtree(run_dir / LOGS, ignore_errors=True)
            (run_dir / INIT_METRICS).unlink(missing_ok=True)
            return run_pretrain(cfg, run_dir=run_dir)
        last, checkpoint = found
    saved_model = saved_model_of(checkpoint)
    _check_same_method(last, saved_model, cfg)
    # not a key resume may change: the saved config's, as the run trained with it
    limit = OmegaConf.select(saved, "limit_train_batches")
    done = epochs_trained(checkpoint, limit)
    steps = int(checkpoint.get("global_step", 0))
    epochs = epochs_begun(checkpoint, limit)
    elapsed = training_seconds(checkpoint)
    world = trained_world_size(checkpoint)
    del checkpoint
    given = {o.key_or_group for o in parse_overrides(overrides or [])}
    if world is None and given & {"devices", "num_nodes"}:
        _warn(
            f"{last} does not record how many processes trained it, so this resume cannot check "
            "that devices x num_nodes is still that number: on another number the restored "
            "learning-rate schedule and the recomputed momentum schedule no longer match"
        )
    by_steps = _reached_max_steps(run_dir, cfg, steps)
    by_time = not by_steps and _used_up_max_time(
        run_dir, cfg, elapsed, given, f"{epochs} epochs, {steps} steps"
    )
    if by_steps or by_time or _check_max_epochs(run_dir, saved, cfg, done, "max_epochs" in given):
        # all trained, but no summary.json: the final save failed (a full disk)
        if by_steps:
            trained = f"trained its {steps} steps (max_steps)"
        elif by_time:
            trained = f"used up its max_time={OmegaConf.select(cfg, 'max_time')}"
        else:
            trained = f"trained its {done} epochs"
        _warn(
            f"{run_dir} has {trained} but has no {SUMMARY} (its final save failed, or a "
            f"stop came after its last checkpoint): finishing it from {last.name}, evaluated "
            "again, nothing trained"
        )
        if last != folder / LAST:
            atomic_copy(last, folder / LAST)
            last = folder / LAST
        return run_pretrain(
            cfg,
            resume_from=str(last),
            saved_model=saved_model,
            finished={"steps": steps, "epochs": (epochs if by_steps or by_time else done) or 0},
            trained_world=world,
        )
    if last != folder / LAST:
        _warn(
            f"{run_dir} has no checkpoints/last.ckpt: resuming from {last.name}, its newest "
            "epoch checkpoint (the steps trained after it are trained again)"
        )
    return run_pretrain(cfg, resume_from=str(last), saved_model=saved_model, trained_world=world)


def _saved_config(config_file: Path) -> DictConfig:
    """The run's ``config.yaml``, read (CheckpointError, one line, when it cannot be)."""
    import yaml

    from solo_mixmask.config.compose import yaml_problem

    try:
        saved = OmegaConf.load(config_file)
    except yaml.YAMLError as err:
        raise CheckpointError(
            f"{config_file} cannot be read: the run's config must be {yaml_problem(err)}; restore the "
            "file pretrain wrote, or start a new run"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file} cannot be read: {err}") from err
    if not isinstance(saved, DictConfig):
        raise CheckpointError(
            f"{config_file.parent} is not a run folder: {config_file} does not hold a mapping"
        )
    return saved

"""Whether a model can take the weights of a training checkpoint (``resume``):
:func:`check_model_fits`, from the checkpoint's :class:`SavedModel`."""

from __future__ import annotations

from typing import Any, NamedTuple

from solo_mixmask.config.schema import to_container
from solo_mixmask.errors import CheckpointError, short_list


def shape_mismatch(
    expected: dict[str, tuple[int, ...]], saved: dict[str, tuple[int, ...]], limit: int = 3
) -> str | None:
    """What keeps a model whose ``state_dict`` has tensor shapes ``expected`` from loading a
    checkpoint with ``saved`` shapes strictly (one line, at most ``limit`` names per kind), or
    None when they fit."""
    other = [k for k in expected if k in saved and tuple(saved[k]) != tuple(expected[k])]
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    parts = []
    if other:
        shown = [f"{k} {list(saved[k])} saved, {list(expected[k])} now" for k in other]
        parts.append(f"{len(other)} tensor(s) have another shape ({short_list(shown, limit)})")
    if missing:
        parts.append(
            f"{len(missing)} tensor(s) of the model are not in it ({short_list(missing, limit)})"
        )
    if extra:
        parts.append(
            f"{len(extra)} tensor(s) in it are not in the model ({short_list(extra, limit)})"
        )
    return "; ".join(parts) or None


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and empty dicts are values)."""
    if isinstance(node, dict) and node:
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


#: Config keys (and groups) that decide the shapes of a method's tensors.
MODEL_KEYS = ("method", "backbone.", "method_kwargs.", "data.num_classes")


def config_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key: saved value in the checkpoint, value now`` for the :data:`MODEL_KEYS` that differ
    between two run configs (plain dicts)."""
    before, after = _flatten(saved), _flatten(now)
    changed = []
    for key in sorted(set(before) | set(after)):
        if not key.startswith(MODEL_KEYS) or before.get(key) == after.get(key):
            continue
        changed.append(f"{key}: {before.get(key)!r} in the checkpoint, {after.get(key)!r} now")
    return changed


class SavedModel(NamedTuple):
    """What a resumed checkpoint holds of the model: tensor shapes by ``state_dict`` key and
    the config it was written with (None when it has none)."""

    shapes: dict[str, tuple[int, ...]]
    cfg: dict[str, Any] | None


def check_model_fits(model: Any, saved: SavedModel, checkpoint: str) -> None:
    """CheckpointError naming the tensors (and the method / backbone settings) that differ when
    ``model`` cannot take the weights of ``checkpoint`` (what Lightning would otherwise report
    as a long size-mismatch traceback)."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatch = shape_mismatch(shapes, saved.shapes)
    if mismatch is None:
        return
    changed = config_differences(saved.cfg or {}, to_container(model.cfg)) if saved.cfg else []
    settings = f"; settings that differ: {'; '.join(changed)}" if changed else ""
    raise CheckpointError(
        f"{checkpoint} does not fit the model this config builds{settings}; {mismatch}. A run "
        "resumes with its own method and backbone settings: drop those overrides, or start a "
        "new run with solo-mixmask pretrain"
    )


def saved_model_of(checkpoint: dict[str, Any]) -> SavedModel:
    """Tensor shapes and ``hyper_parameters.cfg`` of a training checkpoint (its one reader)."""
    hparams = checkpoint.get("hyper_parameters")
    saved_cfg = hparams.get("cfg") if isinstance(hparams, dict) else None
    shapes = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items() if hasattr(v, "shape")}
    return SavedModel(shapes, saved_cfg if isinstance(saved_cfg, dict) else None)

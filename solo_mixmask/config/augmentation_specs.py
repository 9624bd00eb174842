"""Crop pipelines (``cfg.augmentations``, solo-learn's layout) parsed into typed specs.

Pipeline ``i`` produces ``num_crops`` views. Keys missing from a pipeline take the MoCo v2
"aug-plus" values of :data:`DEFAULT_PIPELINE`. Blur may be given either as ``gaussian_prob: p``
or solo-learn 1.0.6's ``gaussian_blur: {prob}``; each block (``color_jitter``, ``grayscale``, ...)
also accepts ``enabled: false`` (= prob 0). A pipeline may carry its own ``mean`` / ``std``;
otherwise ``data.mean`` / ``data.std``, else the dataset's (:mod:`solo_mixmask.config.dataset_facts`).
Parsing is pure (no torch, no data): the config checks run it at start-up, and the data layer
builds its transforms from the specs (:mod:`solo_mixmask.data.augmentations`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from solo_mixmask.config.dataset_facts import KNOWN_DATASETS, normalisation_of
from solo_mixmask.errors import ConfigError

DEFAULT_PIPELINE: dict[str, Any] = {
    "rrc": {"enabled": True, "crop_min_scale": 0.2, "crop_max_scale": 1.0},
    "color_jitter": {
        "prob": 0.8,
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.4,
        "hue": 0.1,
    },
    "grayscale": {"prob": 0.2},
    "gaussian_prob": 0.5,
    "solarization": {"prob": 0.0},
    "equalization": {"prob": 0.0},
    "horizontal_flip": {"prob": 0.5},
    "crop_size": 32,
    "num_crops": 2,
}
_BLOCK_KEYS = {
    "rrc": ("enabled", "crop_min_scale", "crop_max_scale"),
    "color_jitter": ("enabled", "prob", "brightness", "contrast", "saturation", "hue"),
    "grayscale": ("enabled", "prob"),
    "gaussian_blur": ("enabled", "prob"),
    "solarization": ("enabled", "prob"),
    "equalization": ("enabled", "prob"),
    "horizontal_flip": ("enabled", "prob"),
}
#: The keys of one crop pipeline (an entry of ``augmentations``).
PIPELINE_KEYS = (*_BLOCK_KEYS, "gaussian_prob", "crop_size", "num_crops", "mean", "std")


@dataclass(frozen=True)
class CropSpec:
    """One validated crop pipeline; probabilities in [0, 1], sizes in pixels."""

    crop_size: int
    num_crops: int
    rrc: bool
    crop_min_scale: float
    crop_max_scale: float
    color_jitter_prob: float
    brightness: float
    contrast: float
    saturation: float
    hue: float
    grayscale_prob: float
    gaussian_prob: float
    solarization_prob: float
    equalization_prob: float
    horizontal_flip_prob: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# --------------------------------------------------------------------------- validation


def _number(key: str, value: Any, low: float, high: float, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not low <= float(value) <= high:
        raise ConfigError(key, value, allowed)
    return float(value)


def _prob(key: str, value: Any) -> float:
    return _number(key, value, 0.0, 1.0, "a probability in [0, 1]")


def _int_at_least(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(key, value, f"an int >= {low}")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


def _triple(key: str, value: Any, positive: bool) -> tuple[float, float, float]:
    allowed = f"a list of 3 {'positive ' if positive else ''}floats"
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise ConfigError(key, value, allowed)
    for v in value:
        if isinstance(v, bool) or not isinstance(v, Real) or (positive and v <= 0):
            raise ConfigError(key, value, allowed)
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _as_plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _merge_defaults(entry: Mapping, where: str) -> dict[str, Any]:
    """Check the keys of one pipeline and fill the missing ones from DEFAULT_PIPELINE."""
    for key in entry:
        if key not in PIPELINE_KEYS:
            raise ConfigError(f"{where}.{key}", entry[key], f"a key among {list(PIPELINE_KEYS)}")
    merged = copy.deepcopy(DEFAULT_PIPELINE)
    for key, value in entry.items():
        if key in _BLOCK_KEYS:
            value = {} if value is None else value
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{where}.{key}", value, f"a mapping with keys {list(_BLOCK_KEYS[key])}"
                )
            for sub in value:
                if sub not in _BLOCK_KEYS[key]:
                    raise ConfigError(
                        f"{where}.{key}.{sub}", value[sub], f"a key among {list(_BLOCK_KEYS[key])}"
                    )
            merged.setdefault(key, {}).update(value)
        else:
            merged[key] = value
    return merged


def _block_prob(merged: dict, block: str, where: str) -> float:
    enabled = _bool(f"{where}.{block}.enabled", merged[block].get("enabled", True))
    prob = _prob(f"{where}.{block}.prob", merged[block]["prob"])
    return prob if enabled else 0.0


def _blur_prob(entry: Mapping, merged: dict, where: str) -> float:
    prob = _prob(f"{where}.gaussian_prob", merged["gaussian_prob"])
    block = merged.get("gaussian_blur")
    if block is None:
        return prob
    if "prob" in block:
        block_prob = _prob(f"{where}.gaussian_blur.prob", block["prob"])
        if "gaussian_prob" in entry and block_prob != prob:
            raise ConfigError(
                f"{where}.gaussian_blur.prob",
                block["prob"],
                f"the value of {where}.gaussian_prob={prob} (give only one)",
            )
        prob = block_prob
    enabled = _bool(f"{where}.gaussian_blur.enabled", block.get("enabled", True))
    return prob if enabled else 0.0


def parse_pipeline(entry: Any, where: str, mean: tuple, std: tuple) -> CropSpec:
    """Validate one augmentation entry (missing keys -> defaults) into a CropSpec.

    ``where`` is the config path used in error messages, e.g. ``'augmentations[0]'``.
    """
    entry = _as_plain(entry)
    if not isinstance(entry, Mapping):
        raise ConfigError(where, entry, "a mapping of augmentation settings")
    m = _merge_defaults(entry, where)
    rrc, cj = m["rrc"], m["color_jitter"]
    max_scale = _number(
        f"{where}.rrc.crop_max_scale", rrc["crop_max_scale"], 1e-12, 1.0, "a float in (0, 1]"
    )
    min_scale = _number(
        f"{where}.rrc.crop_min_scale",
        rrc["crop_min_scale"],
        1e-12,
        max_scale,
        f"a float in (0, crop_max_scale={max_scale}]",
    )
    color = {
        k: _number(f"{where}.color_jitter.{k}", cj[k], 0.0, float("inf"), "a float >= 0")
        for k in ("brightness", "contrast", "saturation")
    }
    return CropSpec(
        crop_size=_int_at_least(f"{where}.crop_size", m["crop_size"], 8),
        num_crops=_int_at_least(f"{where}.num_crops", m["num_crops"], 1),
        rrc=_bool(f"{where}.rrc.enabled", rrc["enabled"]),
        crop_min_scale=min_scale,
        crop_max_scale=max_scale,
        color_jitter_prob=_block_prob(m, "color_jitter", where),
        hue=_number(f"{where}.color_jitter.hue", cj["hue"], 0.0, 0.5, "a float in [0, 0.5]"),
        grayscale_prob=_block_prob(m, "grayscale", where),
        gaussian_prob=_blur_prob(entry, m, where),
        solarization_prob=_block_prob(m, "solarization", where),
        equalization_prob=_block_prob(m, "equalization", where),
        horizontal_flip_prob=_block_prob(m, "horizontal_flip", where),
        mean=_triple(f"{where}.mean", m["mean"], False) if m.get("mean") is not None else mean,
        std=_triple(f"{where}.std", m["std"], True) if m.get("std") is not None else std,
        **color,
    )


def dataset_of(cfg: DictConfig) -> str:
    """``data.dataset``, one of :data:`~solo_mixmask.config.dataset_facts.KNOWN_DATASETS` (ConfigError
    naming the key otherwise)."""
    name = OmegaConf.select(cfg, "data.dataset", default=None)
    if name not in KNOWN_DATASETS:
        raise ConfigError("data.dataset", name, f"one of {list(KNOWN_DATASETS)}")
    return name


def normalisation_stats(cfg: DictConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of ``data.mean`` / ``data.std`` when given, else the dataset's defaults."""
    mean, std = normalisation_of(dataset_of(cfg))
    given_mean = _as_plain(OmegaConf.select(cfg, "data.mean", default=None))
    given_std = _as_plain(OmegaConf.select(cfg, "data.std", default=None))
    if given_mean is not None:
        mean = _triple("data.mean", given_mean, False)
    if given_std is not None:
        std = _triple("data.std", given_std, True)
    return mean, std


def pipeline_entries(cfg: DictConfig) -> list[Any]:
    """The entries of ``cfg.augmentations``, each a mapping (ConfigError naming the first that
    is not: ``augmentations.0=null`` was an AttributeError traceback)."""
    entries = OmegaConf.select(cfg, "augmentations", default=None)
    if not OmegaConf.is_list(entries) or not entries:
        shown = _as_plain(entries)
        raise ConfigError("augmentations", shown, "a non-empty list of crop pipelines")
    for i, entry in enumerate(entries):
        if not OmegaConf.is_dict(entry):
            raise ConfigError(f"augmentations[{i}]", entry, "a mapping of augmentation settings")
    return list(entries)


def parse_augmentations(cfg: DictConfig) -> list[CropSpec]:
    """All pipelines of ``cfg.augmentations``, validated (ConfigError on a bad value)."""
    entries = pipeline_entries(cfg)
    mean, std = normalisation_stats(cfg)
    return [parse_pipeline(e, f"augmentations[{i}]", mean, std) for i, e in enumerate(entries)]

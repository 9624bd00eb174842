"""Config defaults and start-up validation (solo-learn's schema).

Every check raises :class:`~solo_mixmask.errors.ConfigError` naming the key, the value given and
what is allowed, so a typo fails before any data is read or any weight is allocated.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from typing import Any

from omegaconf import Container, DictConfig, ListConfig, OmegaConf, open_dict

from solo_mixmask.errors import ConfigError

#: Keys every pretraining config may hold; anything else at the top level is a typo unless it is a
#: ``lightning.Trainer`` argument (those are passed through, as solo-learn does).
BASE_DEFAULTS: dict[str, Any] = {
    "name": "run",
    "method": "mixmask",
    "seed": 5,
    "backbone": {"name": "resnet18", "kwargs": {}, "cifar_stem": None},
    "method_kwargs": {},
    "momentum": {"base_tau": 0.99, "final_tau": 1.0, "classifier": False},
    "data": {
        "dataset": "fashion_mnist",
        "train_path": None,
        "val_path": None,
        "format": "image_folder",
        "num_workers": 2,
        "download": False,
        "no_labels": False,
        "train_subset": None,
        "val_subset": None,
        "knn_train_subset": 10000,
        "strict": False,
        "scan_images": False,
        "mean": None,
        "std": None,
    },
    "augmentations": [{"crop_size": 32, "num_crops": 2}],
    "optimizer": {
        "name": "sgd",
        "batch_size": 256,
        "lr": 0.03,
        "classifier_lr": 0.1,
        "weight_decay": 1e-4,
        "kwargs": {"momentum": 0.9},
    },
    "scheduler": {
        "name": "warmup_cosine",
        "warmup_epochs": 0,
        "warmup_start_lr": 0.0,
        "min_lr": 0.0,
    },
    "knn_eval": {"enabled": True, "k": 200, "T": 0.1},
    "checkpoint": {
        "enabled": True,
        "dir": "runs",
        "frequency": 1,
        "run_dir": None,
        "every_n_steps": None,
    },
    "logging": {"csv": True, "tensorboard": False},
    "wandb": {"enabled": False, "offline": True, "project": "solo-mixmask", "entity": None},
    "performance": {"channels_last": True, "compile": False, "compile_backend": "inductor"},
    "progress_bar": True,
    "max_epochs": 100,
    "devices": 1,
    "accelerator": "auto",
    "precision": "auto",  # bf16-mixed on CUDA, 32-true on CPU (pretrain.trainer_kwargs)
    "strategy": "auto",
    "num_nodes": 1,
    "sync_batchnorm": False,
}

OPTIMIZERS = ("sgd", "lars", "adamw")
#: Hydra's instantiation keys. solo-mixmask never calls ``hydra.utils.instantiate``; a config that
#: holds one of these anywhere is refused so that nobody believes it builds the object it names.
INSTANTIATION_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")
SCHEDULERS = ("warmup_cosine", "cosine", "step", "none")
#: ``data.format``: PIL loader workers, NVIDIA DALI, or the whole split in one device tensor.
DATA_FORMATS = ("image_folder", "dali", "memory")


def trainer_arg_names() -> set[str]:
    """Names of ``lightning.Trainer.__init__`` arguments (passed through from the config)."""
    import lightning

    return set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}


def select(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """Value at dotted ``key``, or ``default`` when absent or None (solo-learn's omegaconf_select)."""
    value = OmegaConf.select(cfg, key, default=default)
    return default if value is None else value


def _has_key(cfg: DictConfig, path: str) -> bool:
    """Whether dotted ``path`` exists in ``cfg``, even with a missing (``???``) value."""
    parent, _, leaf = path.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node.keys()


def fill_defaults(cfg: DictConfig, defaults: dict[str, Any], prefix: str = "") -> DictConfig:
    """Add every key of ``defaults`` that ``cfg`` lacks (recursively), in place; returns ``cfg``."""
    with open_dict(cfg):
        for key, value in defaults.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                if OmegaConf.select(cfg, path) is None:
                    OmegaConf.update(cfg, path, {}, force_add=True)
                fill_defaults(cfg, value, prefix=f"{path}.")
            elif not _has_key(cfg, path):  # a mandatory '???' counts as present
                OmegaConf.update(cfg, path, value, force_add=True)
    return cfg


def suggest(value: str, allowed: Iterable[str]) -> str:
    """' (did you mean X?)' for a close match among ``allowed``, else ''."""
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(cfg: DictConfig, key: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(key, value, f"one of {', '.join(allowed)}{suggest(value, allowed)}")


def check_number(
    cfg: DictConfig,
    key: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> None:
    """Check that ``cfg[key]`` is a number inside the (half-)open or closed interval given."""
    value = OmegaConf.select(cfg, key)
    kind = "an integer" if integer else "a number"
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(key, value, f"{kind} in {interval}")


def check_known_keys(cfg: DictConfig, key: str, allowed: Iterable[str]) -> None:
    """Fail on keys under ``key`` that are not in ``allowed`` (config typos)."""
    node = OmegaConf.select(cfg, key) if key else cfg
    allowed = set(allowed)
    for name in node or {}:
        if name not in allowed:
            where = f"{key}.{name}" if key else name
            raise ConfigError(
                where,
                node[name],
                f"no such key; allowed: {', '.join(sorted(allowed))}{suggest(name, allowed)}",
            )


def crop_size(cfg: DictConfig) -> int:
    """Crop size (pixels) of the first augmentation pipeline."""
    return int(cfg.augmentations[0].get("crop_size", 32))


def check_mandatory_values(cfg: DictConfig) -> None:
    """Fail on values a config leaves mandatory (``???``), naming the first one (sorted)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        others = f"; also unset: {', '.join(missing[1:])}" if len(missing) > 1 else ""
        raise ConfigError(
            missing[0],
            "???",
            f"a value: this config leaves it mandatory, pass {missing[0]}=...{others}",
        )


def check_no_instantiation(node: Any, prefix: str = "") -> None:
    """Fail on hydra instantiation keys (``_target_`` ...) anywhere in the config tree."""
    if isinstance(node, DictConfig):
        items = [(str(k), node._get_node(k)) for k in node.keys()]  # no interpolation resolving
    elif isinstance(node, ListConfig):
        items = [(f"[{i}]", node._get_node(i)) for i in range(len(node))]
    else:
        return
    for name, child in items:
        key = f"{prefix}{name}" if name.startswith("[") or not prefix else f"{prefix}.{name}"
        if name in INSTANTIATION_KEYS:
            raise ConfigError(
                key,
                OmegaConf.to_container(child) if isinstance(child, Container) else child._value(),
                "no hydra instantiation keys (_target_, _partial_, ...): solo-mixmask never "
                "instantiates classes named in a config; remove the key",
            )
        check_no_instantiation(child, key)


def check_batch_size(cfg: DictConfig) -> None:
    value = OmegaConf.select(cfg, "optimizer.batch_size")
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ConfigError(
            "optimizer.batch_size",
            value,
            "an integer >= 2 (per device): each image is mixed with a partner from the same "
            "per-device batch and InfoNCE needs more than one sample",
        )


def check_checkpoint(cfg: DictConfig) -> None:
    """``checkpoint.every_n_steps`` (null or >= 1) and ``checkpoint.frequency`` (>= 1)."""
    if OmegaConf.select(cfg, "checkpoint.every_n_steps") is not None:
        check_number(cfg, "checkpoint.every_n_steps", low=1, integer=True)
    check_number(cfg, "checkpoint.frequency", low=1, integer=True)


def validate_base(cfg: DictConfig) -> None:
    """Checks shared by every method (keys outside ``method_kwargs``)."""
    check_mandatory_values(cfg)
    check_no_instantiation(cfg)
    check_known_keys(cfg, "", set(BASE_DEFAULTS) | trainer_arg_names())
    check_batch_size(cfg)
    check_checkpoint(cfg)
    check_number(cfg, "optimizer.lr", low=0, low_open=True)
    check_number(cfg, "optimizer.weight_decay", low=0)
    check_choice(cfg, "optimizer.name", OPTIMIZERS)
    check_choice(cfg, "scheduler.name", SCHEDULERS)
    check_choice(cfg, "data.format", DATA_FORMATS)
    check_number(cfg, "max_epochs", low=1, integer=True)
    check_number(cfg, "momentum.base_tau", low=0, high=1)
    check_number(cfg, "momentum.final_tau", low=0, high=1)
    check_number(cfg, "knn_eval.k", low=1, integer=True)
    check_number(cfg, "knn_eval.T", low=0, low_open=True)
    check_number(cfg, "data.num_workers", low=0, integer=True)
    if not cfg.augmentations:
        raise ConfigError("augmentations", cfg.augmentations, "a non-empty list of crop pipelines")


def to_container(cfg: DictConfig) -> dict:
    """Plain, resolved python dict (for JSON, checkpoints and logging)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]

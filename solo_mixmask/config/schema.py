"""Config defaults and start-up validation (solo-learn's schema).

Every check raises :class:`~solo_mixmask.errors.ConfigError` naming the key, the value given and
what is allowed, so a typo fails before any data is read or any weight is allocated.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import typing
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from omegaconf import Container, DictConfig, ListConfig, OmegaConf, open_dict

from solo_mixmask.errors import (
    ConfigError,
    check_bool_value,
    check_choice_value,
    check_number_value,
)
from solo_mixmask.errors import config_warning as config_warning  # re-exported: the checks' warning
from solo_mixmask.errors import suggest as suggest  # re-exported: the checks' did-you-mean

#: The random seed of a config that names none (solo-learn's configs use 5).
DEFAULT_SEED = 5

#: Keys every pretraining config may hold; anything else at the top level is a typo unless it is a
#: ``lightning.Trainer`` argument (those are passed through, as solo-learn does).
BASE_DEFAULTS: dict[str, Any] = {
    "name": "run",
    "method": "mixmask",
    "seed": DEFAULT_SEED,
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
    "scheduler": {  # solo-learn's defaults (BaseMethod.add_and_assert_specific_cfg)
        "name": "warmup_cosine",
        "warmup_epochs": 10,
        "warmup_start_lr": 3e-5,
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
    "performance": {
        "channels_last": True,
        "compile": False,
        "compile_backend": "inductor",
        "compile_mode": "default",  # torch.compile mode (reduce-overhead: CUDA graphs)
        "optimizer_impl": "auto",  # solo_mixmask.utils.optim.OPTIMIZER_IMPLS
        "ema_foreach_lerp": True,  # one torch._foreach_lerp_ over all momentum pairs
        "knn_dtype": "float32",  # the k-NN monitor's similarity matmul (auto: bf16 on CUDA)
        "batch_online_forwards": False,  # a step's online inputs through the backbone at once
        "compile_augmentations": False,  # data.format=memory: the batched augmentations compiled
        "loss_check_lag": 0,  # steps before the NaN/inf guard reads a loss (0: a sync per step)
    },
    "progress_bar": True,
    "max_epochs": 100,
    "devices": 1,
    "accelerator": "auto",
    "precision": "auto",  # bf16-mixed on CUDA, 32-true on CPU (run.trainer.trainer_kwargs)
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
#: Boolean keys that may also be null (decided from the rest of the config: the CIFAR stem
#: for crops <= 64 px). Every other key whose default is true/false takes true/false only.
NULLABLE_BOOL_KEYS = ("backbone.cifar_stem",)
#: Trainer arguments that solo-mixmask sets itself, and the config keys that control them.
TRAINER_KEYS_SET_HERE = {
    "callbacks": "checkpoint.* and progress_bar",
    "logger": "logging.csv, logging.tensorboard and wandb.*",
    "default_root_dir": "checkpoint.dir or checkpoint.run_dir",
    "enable_checkpointing": "checkpoint.enabled",
    "enable_progress_bar": "progress_bar",
}
#: Optional logger packages: config key -> (importable modules, any one will do; pip command).
LOGGER_PACKAGES = {
    "wandb.enabled": (("wandb",), "pip install wandb"),
    "logging.tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard"),
}
#: Seeds Lightning accepts (numpy's uint32 range).
MAX_SEED = 2**32 - 1


def trainer_parameters() -> dict[str, inspect.Parameter]:
    """``lightning.Trainer.__init__``'s arguments by name (without ``self``), from its signature."""
    import lightning

    parameters = dict(inspect.signature(lightning.Trainer.__init__).parameters)
    parameters.pop("self", None)
    return parameters


def trainer_arg_names() -> set[str]:
    """Names of ``lightning.Trainer.__init__`` arguments (passed through from the config)."""
    return set(trainer_parameters())


def trainer_bool_args() -> dict[str, bool]:
    """``lightning.Trainer`` arguments typed ``bool`` (False) or ``Optional[bool]`` (True: null
    allowed), from its signature."""
    found = {}
    for name, param in trainer_parameters().items():
        if param.annotation in (bool, "bool"):
            found[name] = False
        elif param.annotation in (bool | None, "Optional[bool]", "bool | None"):
            found[name] = True
    return found


def _literal_values(annotation: Any) -> list[Any]:
    """Every value of the ``Literal[...]`` types inside ``annotation`` (Unions searched)."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for arg in typing.get_args(annotation) for v in _literal_values(arg)]


def select(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """Value at dotted ``key``, or ``default`` when absent or None (solo-learn's omegaconf_select)."""
    value = OmegaConf.select(cfg, key, default=default)
    return default if value is None else value


def _has_key(cfg: DictConfig, path: str) -> bool:
    """Whether dotted ``path`` exists in ``cfg``, even with a missing (``???``) value."""
    parent, _, leaf = path.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node.keys()


#: Sections whose explicit null means "none" (solo-learn reads ``optimizer.kwargs: null`` as no
#: keyword arguments), not "the defaults".
NULL_MEANS_NONE = ("optimizer.kwargs",)


def fill_defaults(cfg: DictConfig, defaults: dict[str, Any], prefix: str = "") -> DictConfig:
    """Add every key of ``defaults`` that ``cfg`` lacks (recursively), in place; returns ``cfg``.
    A section set to null gets its defaults, except those of :data:`NULL_MEANS_NONE`."""
    with open_dict(cfg):
        for key, value in defaults.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                missing = OmegaConf.select(cfg, path) is None
                if missing and path in NULL_MEANS_NONE and _has_key(cfg, path):
                    continue  # an explicit null: none
                if missing:
                    OmegaConf.update(cfg, path, {}, force_add=True)
                fill_defaults(cfg, value, prefix=f"{path}.")
            elif not _has_key(cfg, path):  # a mandatory '???' counts as present
                OmegaConf.update(cfg, path, value, force_add=True)
    return cfg


def check_choice(cfg: DictConfig, key: str, allowed: Iterable[str]) -> None:
    check_choice_value(key, OmegaConf.select(cfg, key), allowed)


def check_number(cfg: DictConfig, key: str, **interval: Any) -> None:
    """Check that ``cfg[key]`` is a finite number in the interval of
    :func:`~solo_mixmask.errors.check_number_value` (low, high, low_open, high_open, integer)."""
    check_number_value(key, OmegaConf.select(cfg, key), **interval)


def check_bool(cfg: DictConfig, key: str, allow_null: bool = False) -> None:
    """``cfg[key]`` is true or false (or null with ``allow_null``)."""
    check_bool_value(key, OmegaConf.select(cfg, key), allow_null)


def seed_of(cfg: DictConfig) -> int:
    """``seed`` (:data:`DEFAULT_SEED` when absent), which seeds the methods' random streams."""
    return int(select(cfg, "seed", DEFAULT_SEED))


def syncs_batch_norm(cfg: DictConfig) -> bool:
    """Whether ``sync_batchnorm`` (a Trainer argument) is set to true."""
    return select(cfg, "sync_batchnorm", False) is True


def backbone_name_of(cfg: DictConfig) -> str:
    """``backbone.name`` (solo-learn's configs and ours both name the backbone there)."""
    return str(select(cfg, "backbone.name", "the backbone"))


def trains_on_one_device(cfg: DictConfig) -> bool:
    """Whether the config trains on exactly one device (``devices`` 1 or one listed, one node);
    False when that is decided at run time (``auto``, ``-1``)."""
    devices = OmegaConf.select(cfg, "devices", default=1)
    if OmegaConf.is_list(devices):
        one = len(devices) == 1
    elif isinstance(devices, str) and "," in devices:  # "0,": Lightning's device 0
        one = len([d for d in devices.split(",") if d.strip()]) == 1
    else:
        one = str(devices).strip() == "1"
    return one and OmegaConf.select(cfg, "num_nodes", default=1) in (1, None)


def read_bool(cfg: DictConfig, key: str, default: bool = False) -> bool:
    """``cfg[key]`` as a bool (``default`` when absent or null); ConfigError for anything but
    true/false, so ``data.no_labels=maybe`` never reads as True."""
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


def check_run_name(cfg: DictConfig) -> None:
    """``name`` names the run folder under ``checkpoint.dir``: a plain folder name, so that it
    can never point elsewhere (``../../x``, ``a/b``, ``..``, empty)."""
    name = OmegaConf.select(cfg, "name", default=None)
    if isinstance(name, int) and not isinstance(name, bool):
        name = str(name)  # name=2024 reads as an int
    if (
        not isinstance(name, str)
        or not name.strip()
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
    ):
        quote = (  # name=nan, inf, true, 1e3 are read as values
            f"; it was read as a {type(name).__name__}: quote it, name=\"'...'\""
            if isinstance(name, bool | float)
            else ""
        )
        raise ConfigError(
            "name",
            name,
            f"a plain folder name (not empty, no '/' or '\\', not '.' or '..'){quote}",
        )


def bool_keys(defaults: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of ``defaults`` whose default value is true/false."""
    keys = []
    for name, value in defaults.items():
        if isinstance(value, dict):
            keys += bool_keys(value, f"{prefix}{name}.")
        elif isinstance(value, bool):
            keys.append(f"{prefix}{name}")
    return keys


def check_booleans(cfg: DictConfig) -> None:
    """Every boolean key of BASE_DEFAULTS, NULLABLE_BOOL_KEYS, and the boolean Trainer flags the
    config passes through (``enable_model_summary``, ...)."""
    for key in bool_keys(BASE_DEFAULTS):
        check_bool(cfg, key)
    for key in NULLABLE_BOOL_KEYS:
        check_bool(cfg, key, allow_null=True)
    for key, nullable in trainer_bool_args().items():
        if key in cfg:
            check_bool(cfg, key, allow_null=nullable)


def check_trainer_keys_set_here(cfg: DictConfig) -> None:
    """Refuse the Trainer arguments solo-mixmask sets itself (Lightning would get them twice)."""
    for key, instead in TRAINER_KEYS_SET_HERE.items():
        if key in cfg:
            raise ConfigError(
                key,
                OmegaConf.select(cfg, key),
                f"no value: solo-mixmask sets the Trainer's {key} itself; use {instead}",
            )


#: Trainer arguments whose other values would make summary.json report something other than
#: what it says, or postpone a stop: the values allowed, type included (``limit_val_batches: 1``
#: is one batch, ``1.0`` all of them), and why.
_EARLY_STOP = "null (solo-mixmask never stops early: it would only postpone a SIGTERM/Ctrl-C stop)"
TRAINER_ARGS_FIXED: dict[str, tuple[tuple[Any, ...], str]] = {
    "fast_dev_run": (
        (False, 0),
        "false (it trains and validates one batch, and those accuracies would be reported as the "
        "run's; for a short run use max_steps=N)",
    ),
    "overfit_batches": (
        (0, 0.0),
        "0 (it would report the accuracies of a run on a few repeated batches; use "
        "data.train_subset=N)",
    ),
    "barebones": ((False,), "false (it turns off the logging that summary.json is made from)"),
    "limit_val_batches": (
        (None, 1.0),
        "1.0 or null (the k-NN and linear accuracies would be measured on part of the validation "
        "images and reported as the run's; use data.val_subset=N)",
    ),
    "min_epochs": ((None,), _EARLY_STOP),
    "min_steps": ((None,), _EARLY_STOP),
}
#: Numeric Trainer arguments: whether null is allowed, and check_number_value's interval.
TRAINER_ARG_NUMBERS: dict[str, tuple[bool, dict[str, Any]]] = {
    "accumulate_grad_batches": (False, {"low": 1, "integer": True}),
    "check_val_every_n_epoch": (True, {"low": 1, "integer": True}),
    "log_every_n_steps": (True, {"low": 1, "integer": True}),
    "num_sanity_val_steps": (True, {"low": -1, "integer": True}),
    "reload_dataloaders_every_n_epochs": (False, {"low": 0, "integer": True}),
    "gradient_clip_val": (True, {"low": 0}),
}


def _same_value(value: Any, allowed: Any) -> bool:
    """``value == allowed`` of the same type (True is not 1, 1 is not 1.0)."""
    return type(value) is type(allowed) and value == allowed


def _check_batch_count(key: str, value: Any, time_allowed: bool = False) -> None:
    """null, a number of batches (an integer >= 1) or a fraction of an epoch's (a float in
    (0, 1]); with ``time_allowed`` a duration string too, which Lightning parses."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = value is None or (is_int and value >= 1) or (type(value) is float and 0 < value <= 1)
    if ok or (time_allowed and isinstance(value, str)):
        return
    allowed = "null, a number of batches (an integer >= 1)"
    fraction = "a fraction of an epoch's batches (a float in (0, 1])"
    if time_allowed:
        allowed = f"{allowed}, {fraction} or a duration 'DD:HH:MM:SS'"
    else:
        allowed = f"{allowed} or {fraction}"
    raise ConfigError(key, value, allowed)


def _accepts_str(name: str) -> bool:
    """Whether ``lightning.Trainer``'s argument ``name`` is typed to accept a string."""
    annotation = trainer_parameters()[name].annotation
    return annotation is str or str in typing.get_args(annotation)


def check_trainer_arguments(cfg: DictConfig) -> None:
    """The Lightning Trainer arguments a config may pass through (absent by default), before
    the Trainer is built. Without it, ``max_steps=true`` trained 1 step and ``2.5`` 3 steps,
    ``limit_train_batches=0`` trained nothing, ``limit_val_batches=2`` reported the k-NN of two
    validation batches, ``fast_dev_run`` that of one, ``min_epochs=abc`` was ignored, all with
    exit 0; ``accumulate_grad_batches=0``, ``check_val_every_n_epoch=0``, ``val_check_interval=0``
    and ``gradient_clip_val=abc`` were tracebacks. (``precision``, ``strategy``, ``accelerator``:
    :func:`check_trainer_flags`; booleans: :func:`check_booleans`.)"""
    if "max_steps" in cfg:
        value = cfg.max_steps
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if not (is_int and (value == -1 or value >= 1)):
            raise ConfigError(
                "max_steps", value, "a positive integer (optimiser steps) or -1 (no limit)"
            )
    for key, (allowed, why) in TRAINER_ARGS_FIXED.items():
        if key in cfg and not any(_same_value(cfg[key], a) for a in allowed):
            raise ConfigError(key, cfg[key], why)
    for key, (nullable, interval) in TRAINER_ARG_NUMBERS.items():
        if key not in cfg or (nullable and cfg[key] is None):
            continue
        try:
            check_number_value(key, cfg[key], **interval)
        except ConfigError as err:
            expected = f"{err.allowed}{' or null' if nullable else ''}"
            raise ConfigError(key, cfg[key], expected) from None
    if "limit_train_batches" in cfg:
        _check_batch_count("limit_train_batches", cfg.limit_train_batches)
    if "val_check_interval" in cfg:
        time_allowed = _accepts_str("val_check_interval")
        _check_batch_count("val_check_interval", cfg.val_check_interval, time_allowed)
    if "deterministic" in cfg:
        value = cfg.deterministic
        if not (value is None or isinstance(value, bool) or value == "warn"):
            raise ConfigError("deterministic", value, "true, false, 'warn' or null")
    if "max_time" in cfg:
        check_max_time(cfg.max_time)
    if "devices" in cfg and not _is_devices(cfg.devices):
        raise ConfigError(
            "devices",
            cfg.devices,
            "a number of devices (1, 2, ...; -1 or 'auto': all), a list of device indices "
            "([0, 1]) or Lightning's string forms ('2', '0,1')",
        )
    if "num_nodes" in cfg:
        value = cfg.num_nodes
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError("num_nodes", value, "a positive integer (machines)")


def _is_devices(value: Any) -> bool:
    """Whether ``value`` is a ``devices`` Lightning takes (``true`` once trained on 1 device
    and was recorded as ``devices: true``; null, 0 and -2 were tracebacks)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 1 or value == -1
    if isinstance(value, str):
        text = value.strip()
        if text in ("auto", "-1") or (text.isdigit() and int(text) >= 1):
            return True
        indices = [part.strip() for part in text.split(",") if part.strip()]
        return "," in text and bool(indices) and all(i.isdigit() for i in indices)
    if OmegaConf.is_list(value):
        return len(value) > 0 and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
        )
    return False


def max_time_seconds(value: Any) -> float | None:
    """A ``max_time`` as Lightning reads it (``"DD:HH:MM:SS"`` or a mapping of ``timedelta``
    arguments), in seconds; None when it is not one of these."""
    if isinstance(value, str):
        match = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", value.strip())
        if not match:
            return None
        days, hours, minutes, seconds = (int(g) for g in match.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()
    if isinstance(value, DictConfig | dict):
        try:
            return timedelta(**{str(k): v for k, v in dict(value).items()}).total_seconds()
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def check_max_time(value: Any) -> None:
    """``max_time``: null, ``"DD:HH:MM:SS"`` or a mapping of ``timedelta`` arguments. Lightning
    fails on anything else with a traceback after the data is built; YAML reads an unquoted
    ``1:00:00:00`` as the base-60 number 216000, which the message points out."""
    if value is None or max_time_seconds(value) is not None:
        return
    hint = ""
    if isinstance(value, int) and not isinstance(value, bool):
        hint = " (YAML reads an unquoted 1:00:00:00 as a base-60 number: quote it)"
    shown = OmegaConf.to_container(value) if isinstance(value, Container) else value
    raise ConfigError(
        "max_time",
        shown,
        "'DD:HH:MM:SS' (e.g. '00:12:00:00') or a mapping such as {hours: 12}" + hint,
    )


#: Lightning precisions that keep the weights, the optimiser and the momentum encoder in 16
#: bits: an SGD step or an EMA update below the weight's rounding step is lost (a tiny run in
#: bf16-true left 99% of its backbone unchanged by a whole epoch, and exited 0).
HALF_WEIGHT_PRECISIONS = ("16-true", "bf16-true")


def check_trainer_flags(cfg: DictConfig) -> None:
    """``precision``, ``strategy`` and ``accelerator`` as Lightning accepts them, and an
    accelerator that exists on this machine: checked before the Trainer is built. 16-bit
    weights (:data:`HALF_WEIGHT_PRECISIONS`) are refused: training uses the mixed ones."""
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    annotation = trainer_parameters()["precision"].annotation
    precisions = _literal_values(annotation)
    value = OmegaConf.select(cfg, "precision")
    if precisions:  # else an unknown Lightning: it checks the value itself
        allowed = [
            "auto",
            *(str(p) for p in precisions if isinstance(p, str) and p not in HALF_WEIGHT_PRECISIONS),
        ]
        if isinstance(value, bool) or value not in ["auto", *precisions]:
            raise ConfigError("precision", value, f"one of {', '.join(allowed)}")
    if value in HALF_WEIGHT_PRECISIONS:
        raise ConfigError(
            "precision",
            value,
            f"{value.split('-')[0]}-mixed ({value} keeps the weights, SGD and the momentum "
            "encoder's moving average in 16 bits, which lose every update smaller than a "
            "weight's rounding step; the mixed precisions compute in 16 bits on 32-bit weights)",
        )

    strategies = ["auto", *StrategyRegistry.available_strategies()]
    value = OmegaConf.select(cfg, "strategy")
    if not isinstance(value, str) or value.lower() not in strategies:  # Lightning lower-cases
        shown = ", ".join(strategies)
        raise ConfigError("strategy", value, f"one of {shown}{suggest(str(value), strategies)}")

    # accelerators as Lightning's registry spells them: it does not lower-case them ("CPU" was
    # accepted here, then failed in Lightning with a traceback)
    names = sorted(AcceleratorRegistry.available_accelerators())
    value = OmegaConf.select(cfg, "accelerator")
    if not isinstance(value, str) or value not in ["auto", "gpu", *names]:
        shown = (
            f"one of auto, gpu, {', '.join(names)}{suggest(str(value), ['auto', 'gpu', *names])}"
        )
        raise ConfigError("accelerator", value, shown)
    wanted = {"auto": [], "gpu": ["cuda", "mps"]}.get(value, [value])
    present = [n for n in names if AcceleratorRegistry[n]["accelerator"].is_available()]
    if wanted and not set(wanted) & set(present):
        raise ConfigError(
            "accelerator",
            value,
            f"one available on this machine: auto, {', '.join(present)} (no {value} device found)",
        )


def check_logger_packages(cfg: DictConfig) -> None:
    """An enabled optional logger needs its package installed (found before the run starts)."""
    for key, (modules, command) in LOGGER_PACKAGES.items():
        if OmegaConf.select(cfg, key) and not any(importlib.util.find_spec(m) for m in modules):
            raise ConfigError(key, True, f"false, or install the package first: {command}")


def check_known_keys(cfg: DictConfig, key: str, allowed: Iterable[str]) -> None:
    """Fail on keys under ``key`` that are not in ``allowed`` (config typos)."""
    node = OmegaConf.select(cfg, key) if key else cfg
    allowed = set(allowed)
    for name in node or {}:
        name = str(name)
        if name not in allowed:
            where = f"{key}.{name}" if key else name
            raise ConfigError(
                where,
                node[name],
                f"no such key; allowed: {', '.join(sorted(allowed))}{suggest(name, allowed)}",
            )


def crop_size(cfg: DictConfig) -> int:
    """Crop size (pixels) of the first augmentation pipeline."""
    from solo_mixmask.config.augmentation_specs import DEFAULT_PIPELINE, pipeline_entries

    return int(pipeline_entries(cfg)[0].get("crop_size", DEFAULT_PIPELINE["crop_size"]))


def smallest_crop_size(cfg: DictConfig) -> int:
    """The smallest crop size (pixels) among the augmentation pipelines."""
    from solo_mixmask.config.augmentation_specs import DEFAULT_PIPELINE, pipeline_entries

    return min(
        int(a.get("crop_size", DEFAULT_PIPELINE["crop_size"])) for a in pipeline_entries(cfg)
    )


def check_view_count(cfg: DictConfig, views: int, why: str) -> None:
    """ConfigError (key ``augmentations[*].num_crops``) unless the pipelines' ``num_crops``
    (the default pipeline's where one leaves it out) add up to ``views`` views per image; ``why`` says who
    needs that many."""
    from solo_mixmask.config.augmentation_specs import DEFAULT_PIPELINE, pipeline_entries

    crops = [int(a.get("num_crops", DEFAULT_PIPELINE["num_crops"])) for a in pipeline_entries(cfg)]
    if sum(crops) != views:
        raise ConfigError(
            "augmentations[*].num_crops", crops, f"{views} views per image in all: {why}"
        )


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
        items: list[tuple[str, Any]] = [(str(k), node._get_node(k)) for k in node.keys()]
    elif isinstance(node, ListConfig):
        items = [(f"[{i}]", node._get_node(i)) for i in range(len(node))]  # no interpolations
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
    batch_size_of(cfg)


def batch_size_of(cfg: DictConfig) -> int:
    """``optimizer.batch_size`` (images per device per step), checked: the one reader of it."""
    value = OmegaConf.select(cfg, "optimizer.batch_size")
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ConfigError(
            "optimizer.batch_size",
            value,
            "an integer >= 2 (per device): each image is mixed with a partner from the same "
            "per-device batch and InfoNCE needs more than one sample",
        )
    return value


def _check_betas(cfg: DictConfig, key: str) -> None:
    """AdamW's ``betas``: two numbers in [0, 1)."""
    value = OmegaConf.select(cfg, key)
    ok = isinstance(value, ListConfig) and len(value) == 2
    if ok:
        for i in range(2):
            try:
                check_number(cfg, f"{key}.{i}", low=0, high=1, high_open=True)
            except ConfigError:
                ok = False
    if not ok:
        shown = OmegaConf.to_container(value) if isinstance(value, Container) else value
        raise ConfigError(key, shown, "two numbers in [0, 1), e.g. [0.9, 0.999]")


#: Checks of the ``optimizer.kwargs`` that the optimisers take (their constructor arguments).
OPTIMIZER_KWARG_CHECKS: dict[str, Any] = {
    "momentum": lambda cfg, key: check_number(cfg, key, low=0, high=1, high_open=True),
    "dampening": lambda cfg, key: check_number(cfg, key, low=0, high=1),
    "nesterov": check_bool,
    "trust_coeff": lambda cfg, key: check_number(cfg, key, low=0, low_open=True),
    "eps": lambda cfg, key: check_number(cfg, key, low=0, low_open=True),
    "trust_clip": check_bool,
    "always_adapt": check_bool,
    "eta": lambda cfg, key: check_number(cfg, key, low=0, low_open=True),
    "clip_lr": check_bool,
    "exclude_bias_n_norm": check_bool,
    "betas": _check_betas,
    "amsgrad": check_bool,
}
#: solo-learn's names of LARS arguments -> timm's (``Lars``): the same numbers run in both.
SOLO_LEARN_LARS_KWARGS = {"eta": "trust_coeff", "clip_lr": "trust_clip"}
#: ``optimizer.kwargs`` each ``optimizer.name`` takes: torch.optim.SGD, timm's Lars (also under
#: solo-learn's names, :data:`SOLO_LEARN_LARS_KWARGS`, and solo-learn's ``exclude_bias_n_norm``:
#: 1-D tensors, biases and norm layers, get neither weight decay nor the trust ratio),
#: torch.optim.AdamW (``momentum``, an engine default, is dropped for AdamW: its momentum is
#: ``betas``).
OPTIMIZER_KWARGS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum", "dampening", "nesterov"),
    "lars": (
        "momentum",
        "dampening",
        "nesterov",
        "trust_coeff",
        "eps",
        "trust_clip",
        "always_adapt",
        "eta",
        "clip_lr",
        "exclude_bias_n_norm",
    ),
    "adamw": ("betas", "eps", "amsgrad", "momentum"),
}


def check_optimizer_kwargs(cfg: DictConfig) -> None:
    """``optimizer.kwargs``: only the arguments ``optimizer.name`` takes (did-you-mean for a
    typo, which the optimiser would refuse with a TypeError after the data is opened), each in
    its range (``momentum`` in [0, 1): 1 and above never forget a gradient and diverge), and
    Nesterov only with a momentum and no dampening (as torch requires)."""
    kwargs = OmegaConf.select(cfg, "optimizer.kwargs")
    if kwargs is None:
        return
    if not isinstance(kwargs, DictConfig):
        raise ConfigError("optimizer.kwargs", kwargs, "a mapping of optimiser arguments or null")
    name = cfg.optimizer.name
    check_known_keys(cfg, "optimizer.kwargs", OPTIMIZER_KWARGS[name])
    for arg in map(str, kwargs.keys()):
        OPTIMIZER_KWARG_CHECKS[arg](cfg, f"optimizer.kwargs.{arg}")
    if kwargs.get("nesterov") and (
        not kwargs.get("momentum", 0) or kwargs.get("dampening", 0) != 0
    ):
        raise ConfigError(
            "optimizer.kwargs.nesterov",
            True,
            "false unless optimizer.kwargs.momentum > 0 and optimizer.kwargs.dampening = 0 "
            "(Nesterov momentum needs a momentum and no dampening)",
        )
    for solo_name, timm_name in SOLO_LEARN_LARS_KWARGS.items():
        if solo_name in kwargs and timm_name in kwargs:
            raise ConfigError(
                f"optimizer.kwargs.{solo_name}",
                kwargs[solo_name],
                f"absent when optimizer.kwargs.{timm_name} is given (solo-learn's and timm's "
                "names of one LARS argument): keep one",
            )
    momentum = kwargs.get("momentum")
    default = BASE_DEFAULTS["optimizer"]["kwargs"]["momentum"]
    if name == "adamw" and momentum is not None and momentum != default:
        config_warning(
            "optimizer.kwargs.momentum",
            momentum,
            "is not used by adamw: its momentum is optimizer.kwargs.betas",
        )


def host_memory_bytes() -> int | None:
    """Physical memory of this machine in bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def readable_bytes(n: float) -> str:
    """``512 bytes``, ``1.5 GB``, ``128 TB`` ... (powers of 1000)."""
    if n < 1000:
        return f"{int(n)} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000:
            return f"{n:.3g} {unit}"
    return f"{n / 1000:.3g} PB"


def check_fits_in_memory(cfg: DictConfig, key: str, nbytes: int, what: str) -> None:
    """ConfigError naming ``key`` when a tensor of ``nbytes`` (``what``) cannot fit in memory:
    the model is built on the host, so more than its physical memory can never be allocated
    (the run would die in an allocation error, or swap the machine to a halt); for a run that
    will use a CUDA device (``accelerator`` gpu/cuda, or auto with one present) the device's
    memory bounds it too."""
    limits = []
    host = host_memory_bytes()
    if host:
        limits.append((host, "the host's memory"))
    accelerator = str(select(cfg, "accelerator", "auto")).lower()
    if accelerator in ("auto", "gpu", "cuda"):
        import torch

        if torch.cuda.is_available():
            total = torch.cuda.get_device_properties(0).total_memory
            limits.append((int(total), "the GPU's memory"))
    for limit, where in limits:
        if nbytes > limit:
            raise ConfigError(
                key,
                OmegaConf.select(cfg, key),
                f"a size that fits in memory: {what} take {readable_bytes(nbytes)}, more than "
                f"{where} ({readable_bytes(limit)})",
            )


def warn_one_class(classes: int, no_labels: bool = False) -> None:
    """One ``warning:`` line when labelled data has a single class: every k-NN vote and linear
    prediction is that class, so the accuracies are 100% whatever the features."""
    if classes == 1 and not no_labels:
        config_warning(
            "data.num_classes",
            classes,
            "is one class: every k-NN vote and linear prediction is that class, so their "
            "accuracy is 100% by construction and says nothing about the features (evaluate on "
            "labelled data with 2 or more classes)",
        )


def check_checkpoint(cfg: DictConfig) -> None:
    """``checkpoint.every_n_steps`` (null or >= 1) and ``checkpoint.frequency`` (>= 1)."""
    if OmegaConf.select(cfg, "checkpoint.every_n_steps") is not None:
        check_number(cfg, "checkpoint.every_n_steps", low=1, integer=True)
    check_number(cfg, "checkpoint.frequency", low=1, integer=True)


def check_labels(cfg: DictConfig) -> None:
    """``data.no_labels=true`` (unlabelled images) only with ``knn_eval.enabled=false``: the
    k-NN monitor needs labelled images."""
    if read_bool(cfg, "data.no_labels") and read_bool(cfg, "knn_eval.enabled", True):
        raise ConfigError(
            "data.no_labels",
            True,
            "false while knn_eval.enabled=true (the k-NN monitor needs labelled images); to "
            "pretrain on unlabelled images pass data.no_labels=true knn_eval.enabled=false",
        )


def warn_knn_k(cfg: DictConfig) -> None:
    """k-NN votes over at most ``data.knn_train_subset`` images: a larger k is clamped."""
    k, memory = OmegaConf.select(cfg, "knn_eval.k"), OmegaConf.select(cfg, "data.knn_train_subset")
    if not OmegaConf.select(cfg, "knn_eval.enabled") or isinstance(memory, bool):
        return
    if isinstance(memory, int) and memory >= 1 and k > memory:  # (< 1: an error of data_spec)
        config_warning(
            "knn_eval.k",
            k,
            f"is larger than the k-NN memory (data.knn_train_subset={memory} images): "
            f"k-NN uses k={memory} and reports knn_k={memory}",
        )


#: ``scheduler.lr_decay_steps`` (epochs) and ``scheduler.gamma`` of ``scheduler.name=step``
#: when absent or null (these keys have no BASE_DEFAULTS entry).
STEP_DECAY_EPOCHS = (60, 80)
STEP_DECAY_RATE = 0.1


def warn_step_milestones(cfg: DictConfig) -> None:
    """A ``step`` schedule's milestones at or beyond ``max_epochs`` are never reached: a
    warning naming them (the default ones, :data:`STEP_DECAY_EPOCHS`, included), never a
    decay silently missing."""
    if cfg.scheduler.name != "step":
        return
    given = OmegaConf.select(cfg, "scheduler.lr_decay_steps")
    steps = list(given) if given is not None else list(STEP_DECAY_EPOCHS)
    late = sorted(s for s in steps if s >= cfg.max_epochs)
    if late:
        default = "" if given is not None else "(scheduler.name=step's default) "
        never = "the rate never decays" if len(late) == len(steps) else "those decays never happen"
        config_warning(
            "scheduler.lr_decay_steps",
            steps,
            f"{default}has milestones at or beyond max_epochs={cfg.max_epochs} "
            f"(epochs {', '.join(map(str, late))}): {never}",
        )


def warn_warmup(cfg: DictConfig) -> None:
    """A warm-up longer than training never reaches ``optimizer.lr`` (``max_steps``, known in
    steps only once the data is built, is checked by the method's scheduler)."""
    warmup, epochs = cfg.scheduler.warmup_epochs, cfg.max_epochs
    if cfg.scheduler.name == "warmup_cosine" and warmup > epochs:
        config_warning(
            "scheduler.warmup_epochs",
            warmup,
            f"is longer than max_epochs={epochs}: the learning rate is still warming up "
            "(below optimizer.lr) when training ends",
        )


#: ``scheduler.*`` settings by the schedules that read them (``scheduler.name``), with the
#: values that say nothing (a key at one of them, or absent, is never warned about): none, and
#: the engine's default, which every config holds once filled (solo-learn's ``cosine`` too
#: carries the 10-epoch warm-up default it does not read).
SCHEDULER_SETTINGS: dict[str, tuple[tuple[str, ...], tuple[Any, ...]]] = {
    "warmup_epochs": (("warmup_cosine",), (0, BASE_DEFAULTS["scheduler"]["warmup_epochs"])),
    "warmup_start_lr": (("warmup_cosine",), (0, BASE_DEFAULTS["scheduler"]["warmup_start_lr"])),
    "min_lr": (("warmup_cosine", "cosine"), (0,)),
    "lr_decay_steps": (("step",), (None,)),
    "gamma": (("step",), (None,)),
}


def warn_unused_scheduler_settings(cfg: DictConfig) -> None:
    """A ``scheduler.*`` setting that ``scheduler.name``'s schedule does not read (a warm-up
    with ``cosine``: solo-learn's ``cosine`` has none either) runs without it: a warning, never
    a setting silently dropped."""
    name = cfg.scheduler.name
    for key, (readers, inert) in SCHEDULER_SETTINGS.items():
        value = OmegaConf.select(cfg, f"scheduler.{key}")
        if name not in readers and value is not None and value not in inert:
            shown = OmegaConf.to_container(value) if OmegaConf.is_list(value) else value
            config_warning(
                f"scheduler.{key}",
                shown,
                f"has no effect with scheduler.name={name} (read by {' and '.join(readers)} only)",
            )


#: Keys the engine reads inside a section that have no default in :data:`BASE_DEFAULTS`.
SECTION_EXTRA_KEYS: dict[str, tuple[str, ...]] = {
    "data": ("num_classes", "dali_device"),
    "scheduler": ("lr_decay_steps", "gamma"),
}


def check_section_keys(cfg: DictConfig) -> None:
    """A misspelled key inside a section (``data.knn_train_sbset``, ``optimizer.lrr``) is an
    error with a did-you-mean, never a setting silently dropped. ``method_kwargs`` (checked by
    the method) and ``optimizer.kwargs`` (by :func:`check_optimizer_kwargs`) are not here."""
    for section, defaults in BASE_DEFAULTS.items():
        if isinstance(defaults, dict) and section != "method_kwargs":
            if isinstance(OmegaConf.select(cfg, section), DictConfig):
                allowed = set(defaults) | set(SECTION_EXTRA_KEYS.get(section, ()))
                check_known_keys(cfg, section, allowed)


def check_scheduler_numbers(cfg: DictConfig) -> None:
    """The learning rates the schedule starts and ends at (>= 0), and the step schedule's
    ``gamma`` (a decay: in (0, 1]) and ``lr_decay_steps`` (epochs: integers >= 1), when given."""
    check_number(cfg, "scheduler.warmup_start_lr", low=0)
    check_number(cfg, "scheduler.min_lr", low=0)
    if OmegaConf.select(cfg, "scheduler.gamma") is not None:
        check_number(cfg, "scheduler.gamma", low=0, high=1, low_open=True)
    steps = OmegaConf.select(cfg, "scheduler.lr_decay_steps")
    if steps is not None:
        if not isinstance(steps, ListConfig | list) or not steps:
            raise ConfigError(
                "scheduler.lr_decay_steps", steps, "a non-empty list of epochs (integers >= 1)"
            )
        for i, step in enumerate(steps):
            check_number_value(f"scheduler.lr_decay_steps[{i}]", step, low=1, integer=True)


#: ``performance.compile_mode``: torch.compile's modes ("reduce-overhead" adds CUDA graphs).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: ``performance.knn_dtype``: the k-NN monitor's similarity matmul ("auto": bfloat16 on CUDA,
#: float32 elsewhere).
KNN_DTYPES = ("float32", "bfloat16", "auto")


def check_performance(cfg: DictConfig) -> None:
    """The throughput levers of ``performance.*`` (booleans are checked with the others)."""
    from solo_mixmask.utils.optim import check_optimizer_impl

    check_choice(cfg, "performance.compile_mode", COMPILE_MODES)
    check_choice(cfg, "performance.knn_dtype", KNN_DTYPES)
    check_number(cfg, "performance.loss_check_lag", low=0, integer=True)
    if OmegaConf.select(cfg, "performance.batch_online_forwards") is True and syncs_batch_norm(cfg):
        raise ConfigError(
            "performance.batch_online_forwards",
            True,
            "false with sync_batchnorm=true (SyncBatchNorm would normalise the inputs of one "
            "call together)",
        )
    fmt = OmegaConf.select(cfg, "data.format")
    if OmegaConf.select(cfg, "performance.compile_augmentations") is True and fmt != "memory":
        raise ConfigError(
            "performance.compile_augmentations",
            True,
            f"false with data.format={fmt} (only data.format=memory augments batches with torch)",
        )
    compiles = ("performance.compile", "performance.compile_augmentations")
    if any(OmegaConf.select(cfg, key) is True for key in compiles):
        from solo_mixmask.utils.compiling import check_compile_backend

        check_compile_backend(OmegaConf.select(cfg, "performance.compile_backend"))
    impl = OmegaConf.select(cfg, "performance.optimizer_impl")
    check_optimizer_impl(impl, str(OmegaConf.select(cfg, "optimizer.name")))


def validate_base(cfg: DictConfig) -> None:
    """Checks shared by every method (keys outside ``method_kwargs``)."""
    from solo_mixmask.config.augmentation_specs import parse_augmentations

    check_mandatory_values(cfg)
    check_no_instantiation(cfg)
    check_known_keys(cfg, "", set(BASE_DEFAULTS) | trainer_arg_names())
    check_section_keys(cfg)
    check_trainer_keys_set_here(cfg)
    check_run_name(cfg)
    check_booleans(cfg)
    check_number(cfg, "seed", low=0, high=MAX_SEED, integer=True)
    check_trainer_flags(cfg)
    check_logger_packages(cfg)
    check_batch_size(cfg)
    check_checkpoint(cfg)
    check_number(cfg, "optimizer.lr", low=0, low_open=True)
    check_number(cfg, "optimizer.classifier_lr", low=0)
    check_number(cfg, "optimizer.weight_decay", low=0)
    check_choice(cfg, "optimizer.name", OPTIMIZERS)
    check_optimizer_kwargs(cfg)
    check_choice(cfg, "scheduler.name", SCHEDULERS)
    check_choice(cfg, "data.format", DATA_FORMATS)
    check_performance(cfg)
    check_number(cfg, "max_epochs", low=1, integer=True)
    check_trainer_arguments(cfg)
    check_number(cfg, "momentum.base_tau", low=0, high=1)
    check_number(cfg, "momentum.final_tau", low=0, high=1)
    if OmegaConf.select(cfg, "momentum.classifier") is True:
        raise ConfigError(
            "momentum.classifier",
            True,
            "false (this engine trains no momentum classifier; solo-learn's host does: "
            "solo-mixmask solo-pretrain)",
        )
    check_number(cfg, "knn_eval.k", low=1, integer=True)
    check_number(cfg, "knn_eval.T", low=0, low_open=True)
    check_number(cfg, "data.num_workers", low=0, integer=True)
    check_number(cfg, "scheduler.warmup_epochs", low=0)
    check_scheduler_numbers(cfg)
    check_labels(cfg)
    parse_augmentations(cfg)  # every pipeline, crop sizes included, before the method's checks
    warn_knn_k(cfg)
    warn_warmup(cfg)
    warn_step_milestones(cfg)
    warn_unused_scheduler_settings(cfg)


def resolve_interpolations(cfg: DictConfig) -> None:
    """Resolve every ``${...}`` of ``cfg`` in place, once, at start-up: the run, its checkpoints
    and ``config.yaml`` hold the values it used. Kept as expressions, ``config.yaml`` was
    resolved again by each later command (``${oc.env:VS}`` gave ``knn`` another validation
    subset than the run's, exit 0; ``${now:...}`` made the run impossible to resume or
    evaluate). Call it after :func:`check_mandatory_values`, which reads every value: an
    interpolation that does not resolve fails there, naming its key."""
    OmegaConf.resolve(cfg)


def to_container(cfg: DictConfig) -> dict:
    """Plain, resolved python dict (for JSON, checkpoints and logging)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]

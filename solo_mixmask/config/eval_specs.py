"""What the evaluation commands need from a config, composed, read and checked once.

- :func:`compose_eval_config` layers the evaluation config of a checkpoint: the engine defaults
  (:data:`~solo_mixmask.config.schema.BASE_DEFAULTS`), the command's own section, the run's config, a
  preset and ``key=value`` overrides, every given key checked against what the config knows;
- :func:`eval_spec` reads that config into the frozen :class:`EvalSpec` that ``linear``,
  ``finetune``, ``knn`` and ``embed`` use (they never read a config): the data layer's
  :class:`~solo_mixmask.config.data_specs.DataSpec` (with the seed, the loader workers and the batch
  size), the device, ``performance.channels_last``, ``knn_eval`` and the ``linear.*`` /
  ``finetune.*`` settings;
- :func:`mask_picture_spec` reads the config of ``show-masks`` into :class:`MaskPictureSpec`.

One default per key: a key the config lacks gets the engine's default (BASE_DEFAULTS, the data
layer's constants, a method's ``method_kwargs`` defaults), never a second value chosen here. Every
check raises :class:`~solo_mixmask.errors.ConfigError` naming the key, the value given and what
is allowed. No torch, no files read.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf, open_dict

from solo_mixmask.config import compose
from solo_mixmask.config.augmentation_specs import PIPELINE_KEYS
from solo_mixmask.config.data_specs import DataSpec, data_spec, image_count
from solo_mixmask.config.dataset_facts import eval_crop_of
from solo_mixmask.config.schema import (
    BASE_DEFAULTS,
    KNN_DTYPES,
    check_booleans,
    check_known_keys,
    check_number,
    read_bool,
)
from solo_mixmask.errors import ConfigError, check_choice_value

# --- the evaluation config ---------------------------------------------------------------------

#: Keys the data layer reads (:func:`~solo_mixmask.config.data_specs.data_spec`) that the engine's
#: defaults leave out; evaluation overrides may set them.
EVAL_EXTRA_KEYS: dict[str, Any] = {"data": {"num_classes": None, "dali_device": "auto"}}
#: Config nodes whose keys are free (a timm model's constructor arguments): not checked here.
FREE_KEYS = ("backbone.kwargs",)


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """``['a.b=1', '~c']`` -> ``[('a.b', 1), ('c', None)]`` (hydra's override grammar; which
    are deletions: :func:`deleted_keys`)."""
    parsed = compose.parse_overrides(overrides)
    compose.refuse_sweeps(parsed)
    return [(o.key_or_group, None if o.is_delete() else o.value()) for o in parsed]


def deleted_keys(overrides: Sequence[str]) -> dict[str, Any]:
    """The keys that ``overrides`` delete (``~key``, hydra's grammar), with the value a
    ``~key=value`` names (None for ``~key``)."""
    return {o.key_or_group: o.value() for o in compose.parse_overrides(overrides) if o.is_delete()}


def _restore_default(cfg: DictConfig, defaults: DictConfig, key: str, held: Any) -> None:
    """``~key`` of an evaluation: ``key`` takes the engine's (or the command's) default again,
    whatever the run or the preset set; a key without a default is deleted. As in hydra,
    ``~key=VALUE`` (``held``) deletes only a key holding VALUE, and deleting a key the config
    lacks is a ConfigError naming the override."""
    line = f"~{key}" if held is None else f"~{key}={held}"
    current = OmegaConf.select(cfg, key, default=_ABSENT)
    if current is _ABSENT:
        raise ConfigError(key, line, f"a key of the config to delete: {key} is not in it")
    if held is not None and current != held:
        raise ConfigError(
            key, line, f"~{key} or ~{key}=VALUE with the value it holds: {key} is {current!r}"
        )
    default = OmegaConf.select(defaults, key, default=_ABSENT)
    if default is not _ABSENT:
        OmegaConf.update(cfg, key, default, force_add=True)
        return
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig):
        raise ConfigError(key, line, "a key of a mapping to delete (not a list item)")
    del parent[leaf]


_ABSENT = object()


def check_given_keys(given: DictConfig, known: DictConfig, key: str = "") -> None:
    """ConfigError (with a did-you-mean) for the first key of ``given`` (overrides or a preset,
    as a tree) that ``known`` does not have, checked level by level with the pretraining
    checker :func:`~solo_mixmask.config.schema.check_known_keys`. Below a list, a leaf, an empty
    node of ``known`` (``method_kwargs`` without a run config) or :data:`FREE_KEYS` nothing is
    checked."""
    node = OmegaConf.select(given, key) if key else given
    schema = OmegaConf.select(known, key) if key else known
    if not isinstance(node, DictConfig) or not isinstance(schema, DictConfig):
        return
    if key in FREE_KEYS or (key and len(schema) == 0):
        return
    check_known_keys(given, key, [str(k) for k in schema.keys()])
    for name in map(str, node.keys()):
        check_given_keys(given, known, f"{key}.{name}" if key else name)


def _given_tree(parsed: Sequence[tuple[str, Any]]) -> DictConfig:
    """Overrides ``[(dotted key, value)]`` as one tree (list indexes become keys)."""
    tree = OmegaConf.create({})
    with open_dict(tree):
        for key, value in parsed:
            try:
                OmegaConf.update(tree, key, value, force_add=True)
            except Exception as err:  # omegaconf raises several types for a bad path
                raise ConfigError(key, value, f"a settable config key ({err})") from err
    return tree


def _dotted(tree: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"data": {"val_subset": 5}}`` -> ``[("data.val_subset", 5)]`` (leaves and lists)."""
    items: list[tuple[str, Any]] = []
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            items += _dotted(value, f"{key}.")
        else:
            items.append((key, value))
    return items


#: A segment of a :func:`check_not_read` section that stands for any list index but 0: the
#: crop pipelines beyond the first, pretraining's asymmetric views, are ``augmentations.+``.
LATER_INDEX = "+"


def _under(key: str, sections: Sequence[str]) -> str | None:
    """The first of ``sections`` that ``key`` is or lies below, else None; a section's
    segment :data:`LATER_INDEX` stands for any list index but 0 (``augmentations.1.crop_size``
    lies below ``augmentations.+``)."""
    parts = key.split(".")
    for section in sections:
        wanted = section.split(".")
        if len(parts) >= len(wanted) and all(
            w == p or (w == LATER_INDEX and p.isdigit() and int(p) > 0)
            for w, p in zip(wanted, parts)
        ):
            return section
    return None


def _named(key: str, section: str) -> str:
    """``section`` as ``key`` spells it (``augmentations.+`` read from ``augmentations.3.x`` is
    ``augmentations.3``)."""
    return ".".join(key.split(".")[: section.count(".") + 1])


def check_not_read(
    given: Sequence[tuple[str, Any]], not_read: Mapping[str, str], command: str, where: str = ""
) -> None:
    """ConfigError for the first ``(key, value)`` of ``given`` (overrides, or a preset's
    leaves) that ``command`` does not read although the config knows it (``data.val_subset``
    picks the k-NN's validation images, not ``linear``'s): ``not_read`` maps such a key to what
    to use instead, a template with ``{value}``, e.g. ``linear.val_subset={value}``. Never a
    setting silently dropped. A key of ``not_read`` also stands for the keys below it
    (``optimizer`` for ``optimizer.lr``)."""
    for key, value in given:
        section = _under(key, list(not_read))
        if section is not None:
            instead = not_read[section].format(value=value)
            named = _named(key, section)
            raise ConfigError(key, value, f"{instead} ({command} does not read {named}){where}")


#: Pretraining settings that no evaluation command reads (it trains no SSL model), with what
#: to use instead: ``{probe}`` is the command's own section (``linear``, ``finetune``).
#: ``optimizer.batch_size`` is read: the images per batch where no command setting says.
PRETRAINING_ONLY = {
    **{
        f"optimizer.{key}": "{probe}.* (its learning rates, weight_decay, momentum)"
        for key in BASE_DEFAULTS["optimizer"]
        if key != "batch_size"
    },
    "scheduler": "{probe}.lr_decay_epochs or {probe}.lr_decay_rate",
    "max_epochs": "{probe}.epochs",
    "max_steps": "{probe}.epochs",
    "momentum": "nothing: the momentum network is pretraining's",
    "method_kwargs": "nothing: the method's settings are pretraining's",
}


#: How a pretraining run was built and launched, which no evaluation command reads: the
#: backbone is rebuilt from the checkpoint, and an evaluation runs in one process on ``--device``.
RUN_SETUP_ONLY = {
    "backbone": "nothing: the backbone is rebuilt from the checkpoint",
    **{
        key: "--device (an evaluation runs in one process, on one device)"
        for key in ("devices", "num_nodes", "strategy", "accelerator")
    },
    "sync_batchnorm": "nothing: an evaluation runs in one process",
}


def pretraining_only(probe: str | None) -> dict[str, str]:
    """:data:`PRETRAINING_ONLY`, :data:`RUN_SETUP_ONLY` and :func:`unread_crop_keys` for a
    command whose own training settings are ``probe.*`` (None: a command that trains nothing,
    such as ``knn``). A command that trains a probe reads neither ``precision`` (it runs in
    float32), nor the k-NN's ``knn_eval`` and ``performance.knn_dtype``, nor
    ``optimizer.batch_size`` (its images per batch are ``probe.batch_size``)."""
    if probe is None:
        training = {
            key: f"nothing: this command trains nothing ({key} is pretraining's)"
            for key in PRETRAINING_ONLY
        }
    else:
        training = {key: text.format(probe=probe) for key, text in PRETRAINING_ONLY.items()}
        training["optimizer.batch_size"] = f"{probe}.batch_size={{value}}"
        training["precision"] = f"nothing: {probe} runs in float32"
        training.update(knn_only(probe))
    return {**training, **RUN_SETUP_ONLY, **unread_crop_keys(probe)}


#: The keys of the first crop pipeline that evaluation reads: its images are resized and
#: centre-cropped to ``crop_size`` and normalised with ``mean`` / ``std``.
EVAL_CROP_KEYS = ("crop_size", "mean", "std")


def unread_crop_keys(probe: str | None) -> dict[str, str]:
    """The crop pipelines' keys that no evaluation command reads (every key of
    ``augmentations.0`` but :data:`EVAL_CROP_KEYS`, and the later pipelines), with what to use
    instead: a command training a ``probe`` on images draws RandomResizedCrop + flip crops
    with ``probe.crop_min_scale``."""
    reads = ", ".join(f"augmentations.0.{k}" for k in EVAL_CROP_KEYS)
    instead = f"{reads} (evaluation centre-crops the images"
    instead += (
        f"; {probe}'s training crops are RandomResizedCrop + flip: {probe}.crop_min_scale)"
        if probe
        else ")"
    )
    unread = [f"augmentations.0.{k}" for k in PIPELINE_KEYS if k not in EVAL_CROP_KEYS]
    unread.append(f"augmentations.{LATER_INDEX}")
    return dict.fromkeys(unread, instead)


def knn_only(command: str) -> dict[str, str]:
    """The k-NN's settings (``knn_eval``, ``performance.knn_dtype``), which ``command`` (one
    that measures no k-NN: linear, finetune, embed) does not read."""
    return {
        key: f"nothing: {command} measures no k-NN (knn reads {key})"
        for key in ("knn_eval", "performance.knn_dtype")
    }


def refuse_not_read(
    overrides: Sequence[str],
    preset: Mapping[str, Any] | None,
    preset_name: str | None,
    not_read: Mapping[str, str] | None,
    command: str,
) -> None:
    """:func:`check_not_read` of the preset's keys, then of the overrides'."""
    if not not_read:
        return
    if preset:
        where = f" (in --preset {preset_name})" if preset_name else ""
        check_not_read(_dotted(preset), not_read, command, where)
    check_not_read(parse_overrides(overrides), not_read, command)


def compose_eval_config(
    from_run: dict[str, Any] | None,
    overrides: Sequence[str] = (),
    preset: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    preset_name: str | None = None,
    not_read: Mapping[str, str] | None = None,
    command: str = "this command",
) -> DictConfig:
    """The evaluation config, in this order (later wins): BASE_DEFAULTS and
    :data:`EVAL_EXTRA_KEYS`; ``defaults``, the command's own section (e.g. ``{"linear": {...}}``,
    its ``paper`` preset); ``from_run``, the run's config (None for a checkpoint without one);
    ``preset``, the chosen preset (``preset_name`` for messages); the ``overrides``. The keys of
    the preset and of the overrides are checked against what the config knows before anything is
    set. Changing ``data.dataset`` by override also forgets the run's ``data.num_classes``;
    without a run config the crop size follows the dataset (unless an override sets one).
    A key of the preset or of the overrides that ``command`` does not read (``not_read``, see
    :func:`check_not_read`) is a ConfigError naming the key to use instead. ``~key`` gives the
    key its default again, as in pretraining (:func:`_restore_default`)."""
    refuse_not_read(overrides, preset, preset_name, not_read, command)
    cfg = OmegaConf.create(copy.deepcopy(BASE_DEFAULTS))
    for layer in (copy.deepcopy(EVAL_EXTRA_KEYS), defaults):
        if layer:
            cfg.merge_with(OmegaConf.create(layer))  # in place: cfg stays a DictConfig
    engine_defaults = cfg.copy()  # what ~key restores
    if from_run:
        cfg.merge_with(OmegaConf.create(from_run))
    if preset:
        try:
            check_given_keys(OmegaConf.create(preset), cfg)
        except ConfigError as err:
            where = f" (in --preset {preset_name})" if preset_name else ""
            raise ConfigError(err.key, err.value, f"{err.allowed}{where}") from err
        cfg.merge_with(OmegaConf.create(preset))
    parsed = parse_overrides(overrides)
    check_given_keys(_given_tree(parsed), cfg)
    keys = {k for k, _ in parsed}
    deleted = deleted_keys(overrides)
    with open_dict(cfg):
        for key, value in parsed:
            if key in deleted:
                _restore_default(cfg, engine_defaults, key, deleted[key])
                continue
            if key in ("data.dataset", "data.train_path") and "data.num_classes" not in keys:
                # other images: the run's class count is theirs only if they say so; counted
                # from the training tree (or the dataset's known count) instead
                OmegaConf.update(cfg, "data.num_classes", None, force_add=True)
            try:
                OmegaConf.update(cfg, key, value, force_add=True)
            except Exception as err:  # omegaconf raises several types for a bad path
                raise ConfigError(key, value, f"a settable config key ({err})") from err
        if not from_run and not any(k.startswith("augmentations") for k in keys):
            dataset = OmegaConf.select(cfg, "data.dataset")
            cfg.augmentations = [{"crop_size": eval_crop_of(dataset), "num_crops": 1}]
    check_booleans(cfg)  # data.download=no must not download (bool("no") is True)
    return cfg


# --- the specs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """What ``linear.*`` and ``finetune.*`` share, checked: SGD with momentum and weight decay,
    a step schedule (the rate x ``lr_decay_rate`` after each of ``lr_decay_epochs``, sorted), a
    fresh linear head with weights N(0, ``init_std``), RandomResizedCrop(scale
    [``crop_min_scale``, 1]) training crops and ``val_subset`` validation images (None: all)."""

    epochs: int
    batch_size: int
    momentum: float
    weight_decay: float
    lr_decay_epochs: tuple[int, ...]
    lr_decay_rate: float
    init_std: float
    crop_min_scale: float
    val_subset: int | None

    def as_dict(self) -> dict[str, Any]:
        """Every setting by name (tuples as lists), as result files record them."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


@dataclass(frozen=True)
class LinearSettings(TrainSettings):
    """``linear.*``: the head's learning rate ``lr`` and ``train_subset`` labelled training
    images (None: all)."""

    lr: float
    train_subset: int | None


@dataclass(frozen=True)
class FinetuneSettings(TrainSettings):
    """``finetune.*``: learning rates of the backbone and of the head, Nesterov momentum."""

    backbone_lr: float
    head_lr: float
    nesterov: bool


@dataclass(frozen=True)
class KnnSettings:
    """``knn_eval``: neighbours ``k`` (>= 1) and the vote temperature (> 0); ``matmul_dtype``:
    ``performance.knn_dtype``, the online monitor's similarity dtype (float32, bfloat16, or auto:
    bfloat16 on CUDA)."""

    k: int
    temperature: float
    matmul_dtype: str = "float32"


@dataclass(frozen=True)
class EvalSpec:
    """Everything an evaluation command reads from its config, checked.

    - ``data``: the data layer's :class:`~solo_mixmask.config.data_specs.DataSpec` (also the seed,
      the loader workers and the batch size, see the properties);
    - ``device``: the torch device the command runs on (``cpu``, ``cuda``, ``cuda:1`` ...);
    - ``channels_last``: ``performance.channels_last``;
    - ``knn``: ``knn_eval``; ``linear`` / ``finetune``: the command's settings, None when the
      config has no such section.
    """

    data: DataSpec
    device: str
    channels_last: bool
    knn: KnnSettings
    linear: LinearSettings | None = None
    finetune: FinetuneSettings | None = None

    @property
    def seed(self) -> int:
        """``seed``: picks subsets and shuffles."""
        return self.data.seed

    @property
    def num_workers(self) -> int:
        """``data.num_workers``: loader processes."""
        return self.data.num_workers

    @property
    def batch_size(self) -> int:
        """``optimizer.batch_size``: images per batch where no command setting says."""
        return self.data.batch_size


def decay_epochs(cfg: DictConfig, key: str) -> tuple[int, ...]:
    """``cfg[key]``: the epochs of a step schedule, sorted (ConfigError unless a list of ints
    >= 1; null means none)."""
    steps = OmegaConf.select(cfg, key, default=None)
    steps = list(steps) if steps is not None else []
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps):
        raise ConfigError(key, steps, "a list of epochs (ints >= 1)")
    return tuple(sorted(steps))


def _number(cfg: DictConfig, key: str, **bounds: Any) -> float:
    check_number(cfg, key, **bounds)
    return float(OmegaConf.select(cfg, key))


def _integer(cfg: DictConfig, key: str, **bounds: Any) -> int:
    check_number(cfg, key, integer=True, **bounds)
    return int(OmegaConf.select(cfg, key))


def _train_settings(cfg: DictConfig, section: str) -> dict[str, Any]:
    """The :class:`TrainSettings` fields of ``cfg[section]`` (``linear`` or ``finetune``)."""
    return {
        "epochs": _integer(cfg, f"{section}.epochs", low=1),
        "batch_size": _integer(cfg, f"{section}.batch_size", low=1),
        "momentum": _number(cfg, f"{section}.momentum", low=0, high=1, high_open=True),
        "weight_decay": _number(cfg, f"{section}.weight_decay", low=0),
        "lr_decay_rate": _number(cfg, f"{section}.lr_decay_rate", low=0, low_open=True),
        "init_std": _number(cfg, f"{section}.init_std", low=0),
        "crop_min_scale": _number(cfg, f"{section}.crop_min_scale", low=0, high=1, low_open=True),
        "lr_decay_epochs": decay_epochs(cfg, f"{section}.lr_decay_epochs"),
        "val_subset": image_count(cfg, f"{section}.val_subset"),
    }


def linear_settings(cfg: DictConfig) -> LinearSettings:
    """``cfg.linear`` read and checked (ConfigError naming the key on a bad value)."""
    return LinearSettings(
        **_train_settings(cfg, "linear"),
        lr=_number(cfg, "linear.lr", low=0, low_open=True),
        train_subset=image_count(cfg, "linear.train_subset"),
    )


def finetune_settings(cfg: DictConfig) -> FinetuneSettings:
    """``cfg.finetune`` read and checked (ConfigError naming the key on a bad value; Nesterov
    momentum needs a momentum, as pretraining's ``optimizer.kwargs.nesterov`` does)."""
    settings = _train_settings(cfg, "finetune")
    nesterov = read_bool(cfg, "finetune.nesterov")
    if nesterov and settings["momentum"] == 0:
        raise ConfigError(
            "finetune.nesterov", True, "false unless finetune.momentum > 0 (Nesterov needs one)"
        )
    return FinetuneSettings(
        **settings,
        backbone_lr=_number(cfg, "finetune.backbone_lr", low=0),
        head_lr=_number(cfg, "finetune.head_lr", low=0, low_open=True),
        nesterov=nesterov,
    )


def knn_settings(cfg: DictConfig) -> KnnSettings:
    """``knn_eval.k``, ``knn_eval.T`` (an evaluation config holds them: BASE_DEFAULTS) and
    ``performance.knn_dtype`` (its default when absent)."""
    key = "performance.knn_dtype"
    dtype = OmegaConf.select(cfg, key, default=BASE_DEFAULTS["performance"]["knn_dtype"])
    check_choice_value(key, dtype, KNN_DTYPES)
    return KnnSettings(
        k=_integer(cfg, "knn_eval.k", low=1),
        temperature=_number(cfg, "knn_eval.T", low=0, low_open=True),
        matmul_dtype=str(dtype),
    )


def eval_spec(cfg: DictConfig, device: str) -> EvalSpec:
    """The :class:`EvalSpec` of an evaluation config (ConfigError naming the first bad key) for
    a command that runs on ``device``. ``linear`` and ``finetune`` are read when the config has
    the section (the command's presets put it there)."""
    return EvalSpec(
        data=data_spec(cfg),
        device=device,
        channels_last=read_bool(
            cfg, "performance.channels_last", BASE_DEFAULTS["performance"]["channels_last"]
        ),
        knn=knn_settings(cfg),
        linear=linear_settings(cfg) if "linear" in cfg else None,
        finetune=finetune_settings(cfg) if "finetune" in cfg else None,
    )


@dataclass(frozen=True)
class MaskPictureSpec:
    """What ``show-masks`` reads: the images (``data``; their first crop pipeline) and the
    masks' ``method_kwargs``: ``grid_size`` (>= 1), ``mask_ratio`` (in (0, 1)), Un-Mix's
    ``unmix_alpha`` (> 0)."""

    data: DataSpec
    grid_size: int
    mask_ratio: float
    unmix_alpha: float


#: The keys ``show-masks`` reads (a key below one of them too): the method and its masks'
#: settings, the training images and how evaluation crops and normalises them (the first
#: crop pipeline's ``crop_size``, ``mean``, ``std``).
MASK_PICTURE_READS = (
    "method",
    "method_kwargs.grid_size",
    "method_kwargs.mask_ratio",
    "method_kwargs.unmix_alpha",
    "data.dataset",
    "data.train_path",
    "data.format",
    "data.download",
    "data.no_labels",
    "data.strict",
    "data.scan_images",
    "data.mean",
    "data.std",
    "augmentations.0.crop_size",
    "augmentations.0.mean",
    "augmentations.0.std",
)
#: Keys ``show-masks`` reads as a whole but not each key below them: a list of crop pipelines
#: or an ``augmentations=GROUP`` option.
MASK_PICTURE_READS_WHOLE = ("augmentations",)
_SUBSETS = "--num-images (show-masks picks its columns from the whole training split)"
#: What to use instead of a key ``show-masks`` does not read (``{value}``: the value given);
#: any other such key: :data:`MASK_PICTURE_ONLY`.
MASK_PICTURE_INSTEAD = {
    "seed": "--seed {value}",
    "data.train_subset": _SUBSETS,
    "data.val_subset": _SUBSETS,
    "data.knn_train_subset": _SUBSETS,
    "data.val_path": "data.train_path (show-masks draws training images)",
    "method_kwargs": (
        "method_kwargs.grid_size, method_kwargs.mask_ratio or method_kwargs.unmix_alpha "
        "(show-masks draws both mask kinds, block and discrete)"
    ),
    "augmentations": (
        "augmentations.0.crop_size, augmentations.0.mean or augmentations.0.std (the images "
        "are centre-cropped as evaluation crops them)"
    ),
}
MASK_PICTURE_ONLY = (
    "nothing: show-masks reads only the dataset, its first crop pipeline's size and "
    "normalisation, and method_kwargs.grid_size / mask_ratio / unmix_alpha"
)


def refuse_unread_mask_picture_keys(overrides: Sequence[str]) -> None:
    """ConfigError for the first override whose key ``show-masks`` does not read (outside
    :data:`MASK_PICTURE_READS`), naming what to use instead (:data:`MASK_PICTURE_INSTEAD`):
    ``seed=1`` is ``--seed 1``, never dropped."""
    for key, value in parse_overrides(overrides):
        if key not in MASK_PICTURE_READS_WHOLE and _under(key, MASK_PICTURE_READS) is None:
            section = _under(key, list(MASK_PICTURE_INSTEAD))
            instead = MASK_PICTURE_INSTEAD[section] if section else MASK_PICTURE_ONLY
            raise ConfigError(
                key, value, f"{instead.format(value=value)} (show-masks does not read {key})"
            )


def mask_picture_spec(cfg: DictConfig) -> MaskPictureSpec:
    """The :class:`MaskPictureSpec` of a pretraining config; a ``method_kwargs`` key the method
    lacks gets the MixMask / Un-Mix default (ConfigError naming the first bad key)."""
    from solo_mixmask.core.mixing import MaskMixer
    from solo_mixmask.core.unmix import UnmixMixer

    given = OmegaConf.select(cfg, "method_kwargs", default=None) or {}
    defaults = {
        "grid_size": MaskMixer.DEFAULTS["grid_size"],
        "mask_ratio": MaskMixer.DEFAULTS["mask_ratio"],
        "unmix_alpha": UnmixMixer.DEFAULTS["unmix_alpha"],
    }
    kwargs = cast(
        DictConfig, OmegaConf.merge({"method_kwargs": defaults}, {"method_kwargs": given})
    )
    return MaskPictureSpec(
        data=data_spec(cfg),
        grid_size=_integer(kwargs, "method_kwargs.grid_size", low=1),
        mask_ratio=_number(
            kwargs, "method_kwargs.mask_ratio", low=0, high=1, low_open=True, high_open=True
        ),
        unmix_alpha=_number(kwargs, "method_kwargs.unmix_alpha", low=0, low_open=True),
    )

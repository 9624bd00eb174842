"""Shared pieces of offline evaluation: the evaluation config, the device and feature extraction.

The evaluation config of a checkpoint is built in this order (later wins):

1. the engine defaults (``solo_mixmask.config.BASE_DEFAULTS``);
2. the run's ``config.yaml`` (``<run>/config.yaml`` for ``<run>/checkpoints/x.ckpt``), else the
   config stored in the checkpoint (``hyper_parameters.cfg``, or solo-learn's ``args.json``);
3. a preset (the linear probe's ``configs/linear/<name>.yaml``);
4. command-line overrides ``key=value`` (values parsed as YAML: ``null``, ``10``, ``[1, 2]``).

Changing ``data.dataset`` by override also forgets the run's ``data.num_classes``. Without a run
config the crop size follows the dataset: 28 (Fashion-MNIST), 32 (CIFAR), 96 (STL-10), else 224.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from torch.utils.data import DataLoader

from solo_mixmask.checkpoints import LoadedBackbone, run_dir_of
from solo_mixmask.config import BASE_DEFAULTS, check_booleans
from solo_mixmask.errors import ConfigError

DEFAULT_CROP = {"fashion_mnist": 28, "cifar10": 32, "cifar100": 32, "stl10": 96}


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """``['a.b=1', 'c=null']`` -> ``[('a.b', 1), ('c', None)]`` (values parsed as YAML)."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("+")
        if not sep or not key:
            raise ConfigError("overrides", item, "key=value pairs, e.g. data.dataset=cifar10")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(key, raw, f"a YAML value ({err})") from err
        parsed.append((key, value))
    return parsed


def run_config(lb: LoadedBackbone, checkpoint: str | Path) -> dict[str, Any] | None:
    """The run's config: ``config.yaml`` of its run folder, else the one in the checkpoint."""
    run = run_dir_of(checkpoint)
    if run is not None:
        return OmegaConf.to_container(OmegaConf.load(run / "config.yaml"), resolve=True)  # type: ignore[return-value]
    return copy.deepcopy(lb.cfg) if lb.cfg else None


def eval_config(
    lb: LoadedBackbone,
    checkpoint: str | Path,
    overrides: Sequence[str] = (),
    preset: dict[str, Any] | None = None,
) -> DictConfig:
    """The evaluation config of ``checkpoint`` (see the module docstring)."""
    cfg = OmegaConf.create(copy.deepcopy(BASE_DEFAULTS))
    from_run = run_config(lb, checkpoint)
    if from_run:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(from_run))
    if preset:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(preset))
    parsed = parse_overrides(overrides)
    keys = {k for k, _ in parsed}
    with open_dict(cfg):
        for key, value in parsed:
            if key == "data.dataset" and "data.num_classes" not in keys:
                OmegaConf.update(cfg, "data.num_classes", None, force_add=True)
            try:
                OmegaConf.update(cfg, key, value, force_add=True)
            except Exception as err:  # omegaconf raises several types for a bad path
                raise ConfigError(key, value, f"a settable config key ({err})") from err
        crop_given = any(k.startswith("augmentations") for k in keys)
        if not from_run and not crop_given:
            dataset = OmegaConf.select(cfg, "data.dataset")
            cfg.augmentations = [{"crop_size": DEFAULT_CROP.get(dataset, 224), "num_crops": 1}]
    check_booleans(cfg)  # data.download=no must not download (bool("no") is True)
    return cfg  # type: ignore[return-value]


def eval_device(name: str | None = None) -> torch.device:
    """``name`` (e.g. 'cpu', 'cuda:0') or CUDA when available, else the CPU."""
    if name:
        try:
            return torch.device(name)
        except RuntimeError as err:
            raise ConfigError("--device", name, "a torch device such as cpu or cuda:0") from err
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare_backbone(lb: LoadedBackbone, device: torch.device, channels_last: bool) -> nn.Module:
    """The frozen backbone in eval mode on ``device`` (channels-last when asked)."""
    model = lb.build().to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    channels_last: bool = False,
    log_every: float = 30.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``loader`` of ``(x (B,3,H,W), y (B,))``.

    Returns ``(features (N, D) float32 on the CPU, targets (N,) int64)`` in loader order.
    Prints a progress line every ``log_every`` seconds.
    """
    feats, targets = [], []
    done, total = 0, len(loader.dataset)  # type: ignore[arg-type]
    last = time.perf_counter()
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats.append(model(x).float().cpu())
        targets.append(torch.as_tensor(y, dtype=torch.long))
        done += len(y)
        if time.perf_counter() - last > log_every:
            print(f"  features: {done}/{total} images", flush=True)
            last = time.perf_counter()
    return torch.cat(feats), torch.cat(targets)


def output_path(checkpoint: str | Path, name: str, out: str | Path | None) -> Path:
    """Where a result JSON goes: ``out`` when given; ``<run>/<name>.json`` for a checkpoint in a
    run folder; else ``<checkpoint stem>.<name>.json`` beside the checkpoint."""
    if out:
        return Path(out)
    run = run_dir_of(checkpoint)
    if run is not None:
        return run / f"{name}.json"
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.name.split('.')[0]}.{name}.json")

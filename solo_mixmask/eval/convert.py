"""Export the query backbone of a checkpoint for other frameworks.

- ``torchvision``: a plain state dict with torchvision's ResNet names and no ``fc``; load it with
  ``model = torchvision.models.resnet50(); model.fc = torch.nn.Identity();
  model.load_state_dict(sd, strict=True)`` (for a CIFAR-stem ResNet also replace ``conv1`` by a
  3x3 stride-1 conv, padding 1, or 2 for solo-learn's checkpoints, as the summary's
  ``stem_conv1`` says, and ``maxpool`` by ``Identity`` first). Only torchvision's plain ResNets
  (18, 34, 50, 101, 152; widths 64, 128, 256, 512; no ``backbone.kwargs`` beyond those widths)
  are accepted.
- ``timm``: the same tensors, for ``timm.create_model(arch, num_classes=0, **kwargs)`` (works
  for any timm backbone, not only ResNets).
- ``detectron2``: a pickle ``{"model": {name: numpy array}, "__author__": "solo-mixmask",
  "matching_heuristics": True}`` with Detectron2's ResNet names (``stem.conv1``,
  ``stem.conv1.norm``, ``res2``..``res5`` blocks ``resN.B.convK`` / ``resN.B.convK.norm``,
  ``resN.B.shortcut`` / ``resN.B.shortcut.norm``); BatchNorm counters
  (``num_batches_tracked``) are left out. Only standard-stem ResNets of torchvision's depths
  and widths convert (Detectron2 builds no other).

Projector, predictor, momentum encoder, queue and online classifier are never exported.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from solo_mixmask.backbones import CIFAR_STEM_PADDING, ZERO_INIT_KEYS
from solo_mixmask.checkpoints.backbone import (
    DEFAULT_RESNET_CHANNELS,
    RESNET_DEPTHS,
    LoadedBackbone,
    infer_resnet,
    load_backbone,
    resnet_layout,
)
from solo_mixmask.errors import CheckpointError, ConfigError
from solo_mixmask.paths import check_output_file
from solo_mixmask.run.folder import CHECKPOINTS, CONFIG

FORMATS = ("torchvision", "timm", "detectron2")
D2_AUTHOR = "solo-mixmask"

_BLOCK_RENAMES = (
    (re.compile(r"^conv(\d)\.(.+)$"), r"conv\1.\2"),
    (re.compile(r"^bn(\d)\.(.+)$"), r"conv\1.norm.\2"),
    (re.compile(r"^downsample\.0\.(.+)$"), r"shortcut.\1"),
    (re.compile(r"^downsample\.1\.(.+)$"), r"shortcut.norm.\1"),
)


def detectron2_name(key: str) -> str | None:
    """Detectron2's name of a torchvision ResNet key, or None for keys Detectron2 does not take
    (``num_batches_tracked``). Raises CheckpointError for a key outside the ResNet layout."""
    if key.endswith("num_batches_tracked"):
        return None
    if key.startswith("conv1."):
        return "stem.conv1." + key[len("conv1.") :]
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1.") :]
    match = re.match(r"^layer([1-4])\.(\d+)\.(.+)$", key)
    if match:
        stage, block, rest = int(match.group(1)), match.group(2), match.group(3)
        for pattern, replacement in _BLOCK_RENAMES:
            if pattern.match(rest):
                return f"res{stage + 1}.{block}." + pattern.sub(replacement, rest)
    raise CheckpointError(
        f"key {key!r} is not part of a torchvision ResNet: cannot name it for Detectron2"
    )


def _require_resnet(lb: LoadedBackbone, fmt: str) -> None:
    """CheckpointError unless ``lb`` is one of torchvision's plain ResNets: its layout, and
    trained as that architecture (a timm variant such as ``resnetaa50``, or ``backbone.kwargs``
    such as ``act_layer``, has the same tensors but computes other features)."""
    if not lb.state_dict:
        raise CheckpointError(f"{lb.path}: the query backbone is empty; nothing to convert")
    if not lb.is_resnet:
        raise CheckpointError(
            f"--format {fmt} needs a ResNet backbone with torchvision's layout (conv1, layer1.."
            f"layer4), but {lb.path} holds a {lb.arch!r}; use --format timm for other backbones"
        )
    plain = set(RESNET_DEPTHS.values())
    if lb.arch.split(".")[0] not in plain:  # a pretrained tag (resnet18.tv_in1k) is the same net
        raise CheckpointError(
            f"{lb.path}: the backbone was trained as timm's {lb.arch!r}, whose tensors fit a "
            f"torchvision ResNet but whose layers compute differently; --format {fmt} takes "
            f"{', '.join(sorted(plain))}. Use --format timm"
        )
    # the widths are checked from the tensors; the residual init sets starting values only
    other = sorted(k for k in lb.kwargs if k not in ("channels", *ZERO_INIT_KEYS))
    if other:
        raise CheckpointError(
            f"{lb.path}: the {lb.arch} was built with backbone.kwargs {other} "
            f"({ {k: lb.kwargs[k] for k in other} }), which torchvision's {lb.arch} does not "
            f"have; use --format timm (timm.create_model({lb.arch!r}, num_classes=0, **kwargs))"
        )


#: Why a format takes only the default ResNet depths and stage widths.
STANDARD_ONLY = {
    "torchvision": "its weights load into no torchvision model",
    "detectron2": (
        "Detectron2's build_resnet_backbone builds only the default widths (it asserts "
        "RES2_OUT_CHANNELS 64 for R18/R34) and would skip shape-mismatched weights with a "
        "log warning"
    ),
}


def _require_standard_widths(lb: LoadedBackbone, fmt: str) -> None:
    """CheckpointError for a ResNet's depths and stage widths that torchvision's
    ``resnet18/34/50/101/152`` do not have (e.g. the half-width ResNet-18 of the Fashion-MNIST
    configs): ``fmt`` (torchvision, detectron2) takes none of them; timm does."""
    try:
        arch, kwargs, _ = infer_resnet(lb.state_dict, str(lb.path))
    except CheckpointError as err:
        raise CheckpointError(
            f"{err}; --format {fmt} has no such ResNet, use --format timm"
        ) from err
    if kwargs.get("channels"):
        raise CheckpointError(
            f"{lb.path}: the {arch} has stage widths {kwargs['channels']}, --format {fmt} takes "
            f"only {list(DEFAULT_RESNET_CHANNELS)}: {STANDARD_ONLY[fmt]}. "
            f"Use --format timm (timm.create_model({arch!r}, num_classes=0, "
            f"channels={tuple(kwargs['channels'])}))"
        )


def to_torchvision(lb: LoadedBackbone) -> dict[str, torch.Tensor]:
    """The ResNet backbone as a torchvision state dict without ``fc`` (tensors cloned); only
    torchvision's depths and widths (:func:`_require_standard_widths`)."""
    _require_resnet(lb, "torchvision")
    _require_standard_widths(lb, "torchvision")
    lb.build()  # strict round trip through the architecture: fails loudly on odd weights
    return {k: v.detach().clone().contiguous() for k, v in lb.state_dict.items()}


def to_timm(lb: LoadedBackbone) -> dict[str, torch.Tensor]:
    """The backbone as a state dict for ``timm.create_model(lb.arch, num_classes=0, **kwargs)``."""
    if not lb.state_dict:
        raise CheckpointError(f"{lb.path}: the query backbone is empty; nothing to convert")
    lb.build()
    return {k: v.detach().clone().contiguous() for k, v in lb.state_dict.items()}


def to_detectron2(lb: LoadedBackbone) -> dict[str, Any]:
    """``{"model": {d2 name: np.ndarray}, "__author__", "matching_heuristics": True}``; only
    torchvision's depths and widths (:func:`_require_standard_widths`), standard stem."""
    _require_resnet(lb, "detectron2")
    if lb.cifar_stem:
        raise CheckpointError(
            f"{lb.path}: the backbone has the CIFAR stem (3x3 stride-1 conv1, no max-pool); "
            "Detectron2's ResNet expects the standard 7x7 stride-2 stem + max-pool, so its "
            "weights cannot be transferred. Convert with --format torchvision or timm instead, "
            "or pretrain with backbone.cifar_stem=false"
        )
    _require_standard_widths(lb, "detectron2")
    model: dict[str, np.ndarray] = {}
    for key, value in lb.state_dict.items():
        name = detectron2_name(key)
        if name is not None:
            model[name] = value.detach().cpu().float().numpy().copy()
    if not model:
        raise CheckpointError(f"{lb.path}: no backbone tensors to convert")
    return {"model": model, "__author__": D2_AUTHOR, "matching_heuristics": True}


def check_not_a_run_checkpoint(out: Path, checkpoint: str | Path) -> None:
    """ConfigError naming ``out`` when writing it would destroy a training checkpoint: when it
    is the checkpoint being converted (the same file under any name, links included), or any
    file of a run's ``checkpoints/`` folder (what ``resume`` and the evaluations read; a run
    folder is one holding ``config.yaml``). ``--force`` does not lift this."""
    target = out.resolve()
    source = Path(checkpoint).resolve()
    same = target == source
    if not same and target.exists() and source.exists():
        same = os.path.samefile(target, source)
    if same:
        raise ConfigError(
            "out",
            str(out),
            f"a file other than the checkpoint it converts ({checkpoint}): writing the export "
            "over it would destroy the training checkpoint",
        )
    folder = target.parent
    if folder.name == CHECKPOINTS and (folder.parent / CONFIG).is_file():
        raise ConfigError(
            "out",
            str(out),
            f"a path outside the run's {CHECKPOINTS}/ folder ({folder}): it holds the run's "
            "training checkpoints, which resume and the evaluations read; write the export "
            "beside the run instead",
        )


def _stem_recipe(lb: LoadedBackbone) -> str:
    """The CIFAR stem's conv1, to set on the torchvision / timm model before loading."""
    padding = lb.stem_padding if lb.stem_padding is not None else CIFAR_STEM_PADDING
    out, inputs = lb.state_dict["conv1.weight"].shape[:2]
    return f"nn.Conv2d({inputs}, {out}, 3, 1, {padding}, bias=False), and maxpool = nn.Identity()"


def convert_checkpoint(
    checkpoint: str | Path, out: str | Path, fmt: str, force: bool = False
) -> dict[str, Any]:
    """Convert ``checkpoint`` to ``out`` in format ``fmt`` (one of :data:`FORMATS`).

    Creates ``out``'s folder. Returns a summary dict (source, arch, kwargs, cifar_stem and the
    CIFAR stem's conv1 with its padding, format, tensors, out). Raises ValueError for an unknown format, ConfigError (naming ``out``) before
    reading the checkpoint when ``out`` is a folder, cannot be written, exists (unless
    ``force``) or is a training checkpoint (:func:`check_not_a_run_checkpoint`, whatever
    ``force`` says), CheckpointError when the checkpoint has no usable query backbone or
    non-finite weights (never writes an empty or NaN model).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is not allowed: expected one of {list(FORMATS)}")
    check_not_a_run_checkpoint(check_output_file("out", out, overwrite=force), checkpoint)
    lb = load_backbone(checkpoint)
    out = Path(out)
    if fmt == "detectron2":
        payload = to_detectron2(lb)
        count = len(payload["model"])
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as f:
            pickle.dump(payload, f)
    else:
        sd = to_torchvision(lb) if fmt == "torchvision" else to_timm(lb)
        count = len(sd)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(sd, out)
    return {
        "checkpoint": str(checkpoint),
        "source": lb.source,
        "format": fmt,
        "arch": lb.arch,
        # what timm.create_model needs to take the weights: the residual init only sets
        # starting values, and torchvision's name for it is not an argument of timm's
        "kwargs": {k: v for k, v in lb.kwargs.items() if k not in ZERO_INIT_KEYS},
        "cifar_stem": lb.cifar_stem,
        "stem_conv1": _stem_recipe(lb) if lb.cifar_stem else None,
        "blocks_per_stage": list(layout[1]) if (layout := resnet_layout(lb.state_dict)) else None,
        "tensors": count,
        "out": str(out),
    }

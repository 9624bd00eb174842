"""Finding the query backbone in a checkpoint (read by :func:`solo_mixmask.checkpoints.io.safe_load`).

Formats recognised by :func:`load_backbone` (the first that matches wins):

- ``solo-mixmask``: a Lightning checkpoint of this project, ``state_dict`` keys ``backbone.*``
  (plus momentum, projector, queue ... which are dropped) and ``hyper_parameters.cfg``;
- ``solo-learn``: a Lightning checkpoint with ``backbone.*`` keys but no ``cfg`` (solo-learn keeps
  its config in ``args.json`` beside the checkpoint, which is read when present);
- ``mixmask-authors``: the authors' release (MoCo layout), ``{"state_dict": {...}}`` with keys
  ``module.encoder_q.*`` (torchvision ResNet names; the MLP head at ``fc.0`` / ``fc.2`` is
  dropped); ``encoder_q.*`` without ``module.`` is accepted too;
- ``torchvision``: a plain ResNet state dict (``conv1.weight``, ``layer1.0...``; ``fc.*``
  dropped), optionally under ``state_dict`` and/or prefixed ``module.``.

For the last three the architecture is read off the tensor shapes (:func:`infer_resnet`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from solo_mixmask.checkpoints.io import safe_load
from solo_mixmask.config.engine_specs import backbone_spec
from solo_mixmask.errors import CheckpointError, ConfigError, first_lines, short_list

Tensor = torch.Tensor
StateDict = dict[str, Tensor]

#: (bottleneck?, blocks per stage) -> torchvision / timm ResNet name.
RESNET_DEPTHS: dict[tuple[bool, tuple[int, ...]], str] = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}
DEFAULT_RESNET_CHANNELS = (64, 128, 256, 512)

#: Padding of solo-learn's CIFAR stem (``nn.Conv2d(3, 64, 3, 1, 2)`` in its BaseMethod; ours
#: pads by 1): the weights have the same shape, so only the checkpoint's source tells them apart.
SOLO_LEARN_STEM_PADDING = 2

_AUTHOR_PREFIXES = ("module.encoder_q.", "encoder_q.")


@dataclass
class LoadedBackbone:
    """The query backbone found in a checkpoint.

    Attributes:
        state_dict: tensors of the backbone only (no classifier / head), CPU, with torchvision
            names for ResNets (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...).
        arch: timm model name (``resnet18``, ``resnet50``, ...; timm and torchvision agree on
            ResNet names).
        kwargs: extra timm constructor arguments (e.g. ``channels``) or ``{}``.
        cifar_stem: the 7x7 stride-2 stem + max-pool were replaced by a 3x3 stride-1 conv.
        stem_padding: that conv's padding in pixels: solo-learn's 2 for its checkpoints, None
            (build_backbone's 1) for the others; the weights do not record it.
        source: ``'solo-mixmask'``, ``'solo-learn'``, ``'mixmask-authors'`` or ``'torchvision'``.
        cfg: the run's config as a plain dict when the checkpoint (or ``args.json`` beside it)
            holds one, else None.
        path: the checkpoint file.
    """

    state_dict: StateDict
    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    cifar_stem: bool = False
    source: str = "torchvision"
    cfg: dict[str, Any] | None = None
    path: Path | None = None
    stem_padding: int | None = None

    @property
    def is_resnet(self) -> bool:
        """True when the state dict has torchvision's ResNet layout (conv1, layer1..layer4)."""
        return resnet_layout(self.state_dict) is not None

    @property
    def stem(self) -> dict[str, int]:
        """``build_backbone``'s stem arguments beyond its defaults (``{}`` or padding)."""
        return {} if self.stem_padding is None else {"stem_padding": self.stem_padding}

    def build(self) -> nn.Module:
        """The backbone (timm model, classifier removed) with these weights loaded strictly.

        Forward maps (B, 3, H, W) float images to (B, features_dim) pooled features.
        """
        from solo_mixmask.backbones import build_backbone
        from solo_mixmask.errors import ConfigError

        try:
            model, _ = build_backbone(self.arch, self.kwargs, self.cifar_stem, **self.stem)
        except ConfigError as err:
            raise CheckpointError(f"{self.path}: cannot rebuild its backbone: {err}") from err
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as err:
            raise CheckpointError(
                f"{self.path}: the backbone weights do not fit {self.arch} "
                f"(kwargs={self.kwargs}, cifar_stem={self.cifar_stem}): {first_lines(err)}"
            ) from err
        return model


# --------------------------------------------------------------------------- architecture


def resnet_layout(sd: StateDict) -> tuple[bool, tuple[int, ...]] | None:
    """(bottleneck?, blocks per stage) of a torchvision-named ResNet state dict, else None."""
    if "conv1.weight" not in sd or "layer1.0.conv1.weight" not in sd:
        return None
    blocks = []
    for stage in range(1, 5):
        ids = {int(m.group(1)) for k in sd if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if not ids:
            return None
        blocks.append(max(ids) + 1)
    return "layer1.0.conv3.weight" in sd, tuple(blocks)


def infer_resnet(sd: StateDict, where: str = "checkpoint") -> tuple[str, dict[str, Any], bool]:
    """(arch, timm kwargs, cifar_stem) of a torchvision-named ResNet state dict.

    Stage widths other than torchvision's become timm's ``channels`` argument (timm's plain 7x7
    stem is always 64 wide, whatever ``stem_width`` says); a 3x3 ``conv1`` means the CIFAR stem.
    Raises CheckpointError for an unknown depth.
    """
    layout = resnet_layout(sd)
    if layout is None:
        raise CheckpointError(
            f"{where}: the backbone is not a torchvision-style ResNet (no conv1.weight / "
            "layer1..layer4 keys) and the checkpoint has no config naming its architecture"
        )
    bottleneck, blocks = layout
    arch = RESNET_DEPTHS.get(layout)
    if arch is None:
        known = ", ".join(f"{v} {list(k[1])}" for k, v in RESNET_DEPTHS.items())
        raise CheckpointError(
            f"{where}: ResNet with {'bottleneck' if bottleneck else 'basic'} blocks per stage "
            f"{list(blocks)} is not a known depth ({known})"
        )
    last = "conv3" if bottleneck else "conv2"
    expansion = 4 if bottleneck else 1
    channels = tuple(
        int(sd[f"layer{s}.0.{last}.weight"].shape[0]) // expansion for s in range(1, 5)
    )
    kwargs: dict[str, Any] = {}
    if channels != DEFAULT_RESNET_CHANNELS:
        kwargs["channels"] = list(channels)
    return arch, kwargs, _is_cifar_stem(sd)


def _is_cifar_stem(sd: StateDict) -> bool:
    """Whether the first convolution is the 3x3 CIFAR stem (not ImageNet's 7x7)."""
    conv1 = sd.get("conv1.weight")
    return conv1 is not None and conv1.dim() == 4 and tuple(conv1.shape[-2:]) == (3, 3)


def _cfg_backbone(recorded: dict[str, Any], sd: StateDict) -> tuple[str, dict[str, Any], bool]:
    """(arch, kwargs, cifar_stem) from a run config that names ``backbone.name``. The stem is
    the one the run built when its config records ``backbone.cifar_stem`` (null: decided from
    the crop size, as the engine does), else read off the weights (a 3x3 ``conv1``): some timm
    models (HRNet, ...) have a native 3x3 ``conv1`` that is not the CIFAR stem."""
    backbone = recorded["backbone"]
    cifar = _is_cifar_stem(sd)
    if "cifar_stem" in backbone:
        try:
            cifar = backbone_spec(OmegaConf.create(recorded)).cifar_stem
        except (ConfigError, AttributeError, IndexError, KeyError, TypeError, ValueError):
            pass  # a config too partial to decide: the weights say
    return str(backbone["name"]), dict(backbone.get("kwargs") or {}), cifar


# --------------------------------------------------------------------------- formats


def _strip(sd: dict[str, Any], prefix: str) -> StateDict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _tensors_only(sd: dict[str, Any]) -> StateDict:
    return {k: v for k, v in sd.items() if isinstance(v, Tensor)}


def _drop_head(sd: StateDict) -> StateDict:
    """Drop torchvision's classifier / the MoCo MLP head stored as ``fc`` / ``fc.N``."""
    return {k: v for k, v in sd.items() if not (k.startswith("fc.") or k == "fc")}


def _solo_learn_args(path: Path) -> dict[str, Any] | None:
    """The parts of solo-learn's ``args.json`` (beside the checkpoint) that evaluation uses."""
    args_file = path.parent / "args.json"
    if not args_file.is_file():
        return None
    try:
        args = json.loads(args_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(args, dict):
        return None
    data = args.get("data") or {}
    keep = ("dataset", "train_path", "val_path", "num_classes", "no_labels")
    recorded: dict[str, Any] = {
        "backbone": {"name": (args.get("backbone") or {}).get("name")},
        "data": {k: data[k] for k in keep if k in data},
    }
    crops = args.get("augmentations") or []
    if isinstance(crops, list) and crops and isinstance(crops[0], dict) and "crop_size" in crops[0]:
        recorded["augmentations"] = [{"crop_size": int(crops[0]["crop_size"])}]
    return recorded


def describe_keys(obj: Any, limit: int = 8) -> str:
    """A short listing of a checkpoint's keys for error messages."""
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}, not a dict"
    keys = list(obj)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return f"{len(keys)} keys: {shown}{', ...' if len(keys) > limit else ''}"


def extract_backbone(obj: Any, path: Path | None = None) -> LoadedBackbone:
    """Find the query backbone in a loaded checkpoint object (see the module docstring).

    Raises CheckpointError when no query backbone keys are found (e.g. a checkpoint holding
    only a momentum encoder or a projector).
    """
    where = str(path) if path is not None else "checkpoint"
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: expected a dict of tensors, got {describe_keys(obj)}")
    state = obj.get("state_dict") if isinstance(obj.get("state_dict"), dict) else None
    if state is None and isinstance(obj.get("model"), dict):
        state = obj["model"]
    if state is None:
        state = obj
    sd = _tensors_only(state)

    # Lightning checkpoints (ours or solo-learn's): backbone.*
    backbone = _strip(sd, "backbone.")
    if backbone:
        hp = obj["hyper_parameters"] if isinstance(obj.get("hyper_parameters"), dict) else {}
        recorded = hp.get("cfg") if isinstance(hp.get("cfg"), dict) else None
        source = "solo-mixmask" if recorded is not None else "solo-learn"
        if recorded is None and path is not None:
            recorded = _solo_learn_args(path)
        backbone = _drop_head(backbone)
        if recorded is not None and (recorded.get("backbone") or {}).get("name"):
            arch, kwargs, cifar = _cfg_backbone(recorded, backbone)
        else:
            arch, kwargs, cifar = infer_resnet(backbone, where)
        padding = SOLO_LEARN_STEM_PADDING if source == "solo-learn" else None
        return LoadedBackbone(backbone, arch, kwargs, cifar, source, recorded, path, padding)

    # The authors' release (MoCo layout): module.encoder_q.*
    for prefix in _AUTHOR_PREFIXES:
        query = _strip(sd, prefix)
        if query:
            query = _drop_head(query)
            arch, kwargs, cifar = infer_resnet(query, where)
            return LoadedBackbone(query, arch, kwargs, cifar, "mixmask-authors", None, path)

    # A plain torchvision state dict, possibly saved from DataParallel (module.*).
    plain = _strip(sd, "module.") if sd and all(k.startswith("module.") for k in sd) else sd
    if resnet_layout(plain) is not None:
        plain = _drop_head(plain)
        arch, kwargs, cifar = infer_resnet(plain, where)
        return LoadedBackbone(plain, arch, kwargs, cifar, "torchvision", None, path)

    raise CheckpointError(
        f"{where}: no query backbone found. Looked for 'backbone.*' (solo-mixmask / solo-learn), "
        "'module.encoder_q.*' or 'encoder_q.*' (MoCo / MixMask release) and torchvision ResNet "
        f"names ('conv1.weight', 'layer1.*'); the state dict has {describe_keys(sd)}"
    )


def non_finite_tensors(sd: StateDict) -> list[str]:
    """Names of the floating-point tensors of ``sd`` that hold a NaN or an inf, in order."""
    return [
        name
        for name, tensor in sd.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def check_finite(lb: LoadedBackbone) -> LoadedBackbone:
    """``lb`` when every weight and BatchNorm statistic of its backbone is finite; else a
    CheckpointError naming the tensors: features computed from NaN/inf weights are NaN, and a
    k-NN vote, a linear probe or an export made from them would report a number that means
    nothing."""
    bad = non_finite_tensors(lb.state_dict)
    if bad:
        raise CheckpointError(
            f"{lb.path}: the query backbone holds non-finite weights (NaN or inf) in {len(bad)} "
            f"of {len(lb.state_dict)} tensors ({short_list(bad, 3)}); every feature it computes "
            "would be NaN, so no accuracy or export can be made from it. Use an earlier "
            "checkpoint of the run (checkpoints/epochNNN.ckpt)"
        )
    return lb


def load_backbone(path: str | Path) -> LoadedBackbone:
    """Safely load ``path`` and return its query backbone: the one loader of every evaluation
    and export command (CheckpointError when the file is unusable, has no query backbone or
    its weights are not all finite, :func:`check_finite`)."""
    path = Path(path)
    return check_finite(extract_backbone(safe_load(path), path))

"""The method contract: what the ``*Logic`` mixins need from the class they are mixed into.

The mixins (``MixedBranchLogic``, ``ProjectorLogic``, ``MoCoV2PlusLogic``, ``BYOLLogic``, ...) are
placed before a host: our ``BaseMomentumMethod`` / ``BYOL`` or solo-learn's. :class:`MethodHost`
lists every attribute and method they use from it. For the type checker only, the mixins
subclass it (``LogicBase``), so their ``super()`` calls and ``self.log`` / ``self.cfg`` uses are
checked against this contract; at run time ``LogicBase`` is ``object`` and nothing changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from torch import nn

if TYPE_CHECKING:

    class MethodHost:
        """A solo-learn style method: ``cls(cfg)``, a LightningModule with a momentum backbone."""

        cfg: DictConfig
        #: Width D of the backbone's features (B, D).
        features_dim: int
        #: Width d of the projector outputs measured by the collapse monitor (set when logged).
        embedding_dim: int
        #: The online backbone and its momentum (EMA) copy.
        backbone: nn.Module
        momentum_backbone: nn.Module
        #: Lightning's: train/eval mode and the trainer (None before ``fit``).
        training: bool
        _trainer: Any

        #: Views of a training batch through the online / momentum network (None = all).
        online_views: list[int] | None
        momentum_views: list[int] | None

        def __init__(self, cfg: DictConfig) -> None: ...

        @staticmethod
        def add_and_assert_specific_cfg(cfg: DictConfig) -> DictConfig:
            """Fill the method's config defaults and check them; returns the config."""
            ...

        @property
        def learnable_params(self) -> list[dict[str, Any]]:
            """Parameter groups ``{"name", "params", ...}``."""
            ...

        @property
        def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
            """(online, momentum) modules updated by EMA."""
            ...

        def forward(self, X: torch.Tensor) -> dict[str, Any]:
            """``X`` (B,3,H,W) -> ``{"feats": (B,D), "logits": ..., ...}``."""
            ...

        def momentum_forward(self, X: torch.Tensor) -> dict[str, Any]:
            """``X`` (B,3,H,W) -> ``{"feats": (B,D), ...}`` from the momentum network."""
            ...

        def training_step(self, batch: list[Any], batch_idx: int) -> Any:
            """The base's output dict (engine bases) or a method's loss tensor (e.g. BYOL)."""
            ...

        def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None: ...

        def log_dict(self, dictionary: Any, *args: Any, **kwargs: Any) -> None: ...

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...

        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...

    LogicBase = MethodHost
else:
    LogicBase = object

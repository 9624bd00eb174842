"""BYOL baseline: online projector + predictor regress the momentum projection of the other view.

``BYOLMixedBranchLogic`` adds mixed views (``byol_mixmask.py``, ``byol_unmix_mixmask.py``) on top
of any BYOL class: ours (``BYOL`` below) or solo-learn's own ``solo.methods.BYOL``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig

from solo_mixmask.config import check_known_keys, check_number, fill_defaults
from solo_mixmask.losses.byol import byol_loss
from solo_mixmask.methods.base import BaseMomentumMethod
from solo_mixmask.methods.batch_norm import BN_DEFAULTS, SplitBNLogic
from solo_mixmask.methods.heads import ProjectorLogic, log_embedding_std, mlp_head
from solo_mixmask.methods.mixed_branch import MixedBranchLogic
from solo_mixmask.methods.registry import MethodEntry

#: BYOL's ``method_kwargs`` and their defaults (solo-learn's CIFAR recipe).
BYOL_DEFAULTS: dict[str, Any] = {
    "proj_hidden_dim": 4096,
    "proj_output_dim": 256,
    "pred_hidden_dim": 4096,
    **BN_DEFAULTS,
}


def check_byol_config(cfg: DictConfig) -> None:
    """BYOL's head widths (proj_hidden_dim, proj_output_dim, pred_hidden_dim) are integers
    >= 1; ConfigError otherwise."""
    for key in ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim"):
        check_number(cfg, f"method_kwargs.{key}", low=1, integer=True)


class BYOLLogic(SplitBNLogic, ProjectorLogic):
    """Symmetric BYOL loss: byol(p1, k2) + byol(p2, k1), with BatchNorm in the heads."""

    projector_batch_norm = True
    method_defaults: dict[str, Any] = dict(BYOL_DEFAULTS)

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.predictor = mlp_head(
            kw.proj_output_dim, kw.pred_hidden_dim, kw.proj_output_dim, batch_norm=True
        )

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: DictConfig) -> DictConfig:
        cfg = super().add_and_assert_specific_cfg(cfg)
        fill_defaults(cfg, {"method_kwargs": cls.method_defaults})
        check_known_keys(cfg, "method_kwargs", cls.method_defaults)
        check_byol_config(cfg)
        return cfg

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        predictor = {"name": "predictor", "params": self.predictor.parameters()}
        return super().learnable_params + [predictor]

    def forward(self, X: torch.Tensor) -> dict[str, Any]:
        out = super().forward(X)
        out["p"] = self.predictor(out["z"])
        return out

    def training_step(self, batch: list[Any], batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        p, k = out["p"], out["momentum_z"]
        log_embedding_std(self, out["z"][0])
        loss = byol_loss(p[0], k[1]) + byol_loss(p[1], k[0])
        self.log("train_byol_loss", loss.detach(), on_epoch=True, sync_dist=True)
        return out["loss"] + loss


class BYOL(BYOLLogic, BaseMomentumMethod):
    """BYOL on the standalone engine."""


class BYOLMixedBranchLogic(MixedBranchLogic, SplitBNLogic):
    """Mixin over a BYOL class (ours or solo-learn's): BYOL's loss plus mixed-view terms.

    The BYOL step underneath is unchanged (its predictor, symmetric loss and tau schedule); its
    total loss gets ``mixed_losses(x1, z2, byol per-pair loss)`` added, where x1 (B,3,H,W) are
    the first view's images and z2 (B, d) the momentum projections of the second view, recorded
    from the base's own ``momentum_forward`` calls during its step (so no extra momentum pass,
    and the same code on solo-learn's BYOL, whose ``training_step`` returns only the loss).
    The mixed view's output is the predictor's ``p``.
    """

    mixed_output = "p"
    method_defaults: dict[str, Any] = dict(BYOL_DEFAULTS)

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self._momentum_z: list[torch.Tensor] | None = None  # recorded during training_step

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: DictConfig) -> DictConfig:
        # defaults first: solo-learn's BYOL only asserts that its keys are set
        fill_defaults(cfg, {"method_kwargs": cls.method_defaults})
        cfg = super().add_and_assert_specific_cfg(cfg)
        check_known_keys(cfg, "method_kwargs", cls.method_defaults)
        check_byol_config(cfg)
        return cfg

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> dict[str, Any]:
        out = super().momentum_forward(X)
        if self._momentum_z is not None:
            self._momentum_z.append(out["z"])
        return out

    def training_step(self, batch: list[Any], batch_idx: int) -> Any:
        """The host BYOL's loss tensor plus the mixed-view terms (typed as the contract's)."""
        self._momentum_z = []
        try:
            loss = super().training_step(batch, batch_idx)
            momentum_z = self._momentum_z
        finally:
            self._momentum_z = None
        if not isinstance(self, BYOLLogic):  # solo-learn's BYOL: its online z is not exposed
            log_embedding_std(self, momentum_z[-1])
        # the second view's momentum projections (B, d), as BYOL's own p1 -> z2 term uses them
        mixed = self.mixed_losses(batch[1][0], momentum_z[-1], partial(byol_loss, reduction="none"))
        if mixed:
            self.log_dict(
                {name: value.detach() for name, value in mixed.items()},
                on_epoch=True,
                sync_dist=True,
            )
        return loss + sum(mixed.values())


# solo-learn has its own byol, used as it is
ENTRY = MethodEntry(
    "byol",
    method=BYOL,
    logic=BYOLLogic,
    solo_base="BYOL",
)

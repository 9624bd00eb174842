"""BYOL baseline: online projector + predictor regress the momentum projection of the other view."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from solo_mixmask.config import check_known_keys, check_number, fill_defaults
from solo_mixmask.losses.byol import byol_loss
from solo_mixmask.methods.base import BaseMomentumMethod
from solo_mixmask.methods.heads import ProjectorLogic, mlp_head


class BYOLLogic(ProjectorLogic):
    """Symmetric BYOL loss: byol(p1, k2) + byol(p2, k1), with BatchNorm in the heads."""

    projector_batch_norm = True
    method_defaults: dict[str, Any] = {
        "proj_hidden_dim": 4096,
        "proj_output_dim": 256,
        "pred_hidden_dim": 4096,
    }

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.predictor = mlp_head(
            kw.proj_output_dim, kw.pred_hidden_dim, kw.proj_output_dim, batch_norm=True
        )

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: DictConfig) -> DictConfig:
        cfg = super().add_and_assert_specific_cfg(cfg)  # type: ignore[misc]
        fill_defaults(cfg, {"method_kwargs": cls.method_defaults})
        check_known_keys(cfg, "method_kwargs", cls.method_defaults)
        for key in cls.method_defaults:
            check_number(cfg, f"method_kwargs.{key}", low=1, integer=True)
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
        out = super().training_step(batch, batch_idx)  # type: ignore[misc]
        p, k = out["p"], out["momentum_z"]
        loss = byol_loss(p[0], k[1]) + byol_loss(p[1], k[0])
        self.log("train_byol_loss", loss.detach(), on_epoch=True, sync_dist=True)  # type: ignore[attr-defined]
        return out["loss"] + loss


class BYOL(BYOLLogic, BaseMomentumMethod):
    """BYOL on the standalone engine."""

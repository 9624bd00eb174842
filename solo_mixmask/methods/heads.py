"""Projection / prediction heads shared by the methods."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from solo_mixmask.backbones import momentum_copy
from solo_mixmask.core.collapse import embedding_std
from solo_mixmask.methods.contract import LogicBase

#: The logged collapse measure (per epoch) and the model attribute that holds its width d.
EMBEDDING_STD = "train_embedding_std"


def log_embedding_std(method: LogicBase, z: torch.Tensor) -> None:
    """Log the collapse measure :func:`~solo_mixmask.core.collapse.embedding_std` of projector
    outputs z (B, d) as the epoch mean ``train_embedding_std``, and keep d as
    ``method.embedding_dim`` (its spread value is 1/sqrt(d))."""
    method.embedding_dim = int(z.shape[1])
    method.log(EMBEDDING_STD, embedding_std(z), on_step=False, on_epoch=True, sync_dist=True)


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = False) -> nn.Sequential:
    """Linear -> (BatchNorm) -> ReLU -> Linear: MoCo v2's head (no BN) or BYOL's (with BN)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
    return nn.Sequential(*layers)


class ProjectorLogic(LogicBase):
    """Mixin: a projector on the online backbone and its momentum copy (EMA pair).

    Adds ``"z"`` (B, proj_output_dim) to ``forward`` and ``momentum_forward`` outputs. Reads
    ``method_kwargs.proj_hidden_dim`` / ``proj_output_dim``; ``projector_batch_norm`` picks
    MoCo v2's head (False) or BYOL's (True).
    """

    projector_batch_norm = False

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        dims = (self.features_dim, kw.proj_hidden_dim, kw.proj_output_dim)
        self.projector = mlp_head(*dims, batch_norm=self.projector_batch_norm)
        self.momentum_projector = mlp_head(*dims, batch_norm=self.projector_batch_norm)
        momentum_copy(self.projector, self.momentum_projector)

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        projector = {"name": "projector", "params": self.projector.parameters()}
        return super().learnable_params + [projector]

    @property
    def momentum_pairs(self) -> list[tuple[Any, Any]]:
        return super().momentum_pairs + [(self.projector, self.momentum_projector)]

    def forward(self, X: torch.Tensor) -> dict[str, Any]:
        out = super().forward(X)
        out["z"] = self.projector(out["feats"])
        return out

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> dict[str, Any]:
        out = super().momentum_forward(X)
        out["z"] = self.momentum_projector(out["feats"])
        return out

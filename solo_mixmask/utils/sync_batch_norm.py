"""``sync_batchnorm: true`` that keeps timm's activations: Lightning's plugin, timm's conversion.

Lightning's :class:`~lightning.pytorch.plugins.TorchSyncBatchNorm` converts every BatchNorm with
``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, which turns timm's ``BatchNormAct2d``
(BatchNorm, then dropout and activation in one layer: RegNet, EfficientNet, MobileNet) into a
plain ``SyncBatchNorm``: the activation is gone and the checkpoint keys are unchanged.
:class:`TimmSyncBatchNorm` converts with ``timm.layers.convert_sync_batchnorm`` (a
``SyncBatchNormAct`` keeps them), and its revert puts back the layers it replaced, holding the
synchronised layers' tensors. It subclasses Lightning's plugin, so that the Trainer takes it
beside ``sync_batchnorm=True``.
"""

from __future__ import annotations

from lightning.pytorch.plugins import TorchSyncBatchNorm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class TimmSyncBatchNorm(TorchSyncBatchNorm):
    """Every BatchNorm layer as a synchronised one that computes what it computed (timm's
    ``BatchNormAct2d`` with its activation), and back."""

    def __init__(self) -> None:
        #: The layers :meth:`apply` replaced, by their names in the model.
        self.replaced: dict[str, nn.Module] = {}

    def apply(self, model: nn.Module) -> nn.Module:
        """``model`` with its BatchNorm layers synchronised across processes."""
        from timm.layers import convert_sync_batchnorm

        self.replaced = {
            name: m for name, m in model.named_modules() if name and isinstance(m, _BatchNorm)
        }
        return convert_sync_batchnorm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        """``model`` with the layers :meth:`apply` replaced back in place, each given the
        parameters, buffers, submodules and mode of its synchronised version."""
        for name, layer in self.replaced.items():
            synced = model.get_submodule(name)
            named = [
                *synced.named_parameters(recurse=False),
                *synced.named_buffers(recurse=False),
                *synced.named_children(),
            ]
            for key, value in named:
                setattr(layer, key, value)
            layer.training = synced.training
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, layer)
        self.replaced = {}
        return model

"""Method registry: ``METHODS[name](cfg)`` builds a method, as in solo-learn.

``LOGIC[name]`` is the engine-independent half of each method; ``solo_mixmask.solo`` combines it
with solo-learn's own ``BaseMomentumMethod`` (MoCo family) or its own ``BYOL`` (``byol_*``).
"""

from solo_mixmask.methods.base import BaseMethod, BaseMomentumMethod
from solo_mixmask.methods.byol import BYOL, BYOLLogic
from solo_mixmask.methods.byol_mixmask import BYOLMixMask, BYOLMixMaskLogic
from solo_mixmask.methods.byol_unmix_mixmask import BYOLUnmixMixMask, BYOLUnmixMixMaskLogic
from solo_mixmask.methods.mixmask import MixMask, MixMaskLogic
from solo_mixmask.methods.mocov2plus import MoCoV2Plus, MoCoV2PlusLogic
from solo_mixmask.methods.unmix import Unmix, UnmixLogic
from solo_mixmask.methods.unmix_mixmask import UnmixMixMask, UnmixMixMaskLogic

METHODS = {
    "mocov2plus": MoCoV2Plus,
    "mixmask": MixMask,
    "unmix": Unmix,
    "unmix_mixmask": UnmixMixMask,
    "byol": BYOL,
    "byol_mixmask": BYOLMixMask,
    "byol_unmix_mixmask": BYOLUnmixMixMask,
}

LOGIC = {
    "mocov2plus": MoCoV2PlusLogic,
    "mixmask": MixMaskLogic,
    "unmix": UnmixLogic,
    "unmix_mixmask": UnmixMixMaskLogic,
    "byol": BYOLLogic,
    "byol_mixmask": BYOLMixMaskLogic,
    "byol_unmix_mixmask": BYOLUnmixMixMaskLogic,
}

__all__ = ["BaseMethod", "BaseMomentumMethod", "LOGIC", "METHODS"]

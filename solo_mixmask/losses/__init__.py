"""Pure-torch losses: MoCo InfoNCE, BYOL, and their lambda-weighted mixed forms."""

from solo_mixmask.losses.byol import byol_loss
from solo_mixmask.losses.mixed import mixed_byol_loss, mixed_loss, mixed_moco_loss
from solo_mixmask.losses.moco import moco_logits, moco_loss

__all__ = [
    "byol_loss",
    "mixed_byol_loss",
    "mixed_loss",
    "mixed_moco_loss",
    "moco_logits",
    "moco_loss",
]

"""Pure-torch losses: MoCo InfoNCE, its lambda-weighted mixed form, and BYOL."""

from solo_mixmask.losses.byol import byol_loss
from solo_mixmask.losses.mixed import mixed_moco_loss
from solo_mixmask.losses.moco import moco_logits, moco_loss

__all__ = ["byol_loss", "mixed_moco_loss", "moco_logits", "moco_loss"]

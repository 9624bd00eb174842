"""Pure-torch losses: MoCo InfoNCE, BYOL, and the lambda-weighted loss of mixed views."""

from solo_mixmask.losses.byol import byol_loss
from solo_mixmask.losses.mixed import mixed_loss
from solo_mixmask.losses.moco import moco_logits, moco_loss

__all__ = ["byol_loss", "mixed_loss", "moco_logits", "moco_loss"]

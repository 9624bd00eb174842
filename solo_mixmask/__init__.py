"""solo_mixmask: MixMask, Un-Mix and Un-Mix+MixMask pretraining with the solo-learn method contract."""

__version__ = "0.1.0"

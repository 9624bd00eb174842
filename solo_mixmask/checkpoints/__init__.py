"""Checkpoints: :mod:`~solo_mixmask.checkpoints.io` (the one safe load, atomic saves),
:mod:`~solo_mixmask.checkpoints.backbone` (the query backbone of any supported checkpoint),
:mod:`~solo_mixmask.checkpoints.saved_model` (whether a model can resume from one) and
:mod:`~solo_mixmask.checkpoints.callbacks` (when a run writes them)."""

"""The Lightning callbacks of a pretraining run, one job per module:

- :mod:`~solo_mixmask.callbacks.resume_state`: every checkpoint holds the RNG states and the
  training loader's position, so a resumed run sees exactly the batches it would have seen;
- :mod:`~solo_mixmask.callbacks.stop`: SIGTERM / Ctrl-C finish the step under way, write
  ``last.ckpt`` and end the run;
- :mod:`~solo_mixmask.callbacks.nonfinite`: a NaN/inf loss stops the run, naming its step,
  before it reaches the weights (or ``performance.loss_check_lag`` steps later) and never
  reaches a checkpoint;
- :mod:`~solo_mixmask.callbacks.speed`: images per second for the summary;
- :mod:`~solo_mixmask.callbacks.data_on_device`: the device for loaders that keep their images
  there;
- :mod:`~solo_mixmask.callbacks.last_validation`: the last epoch (or the step that reaches
  ``max_steps``) is validated whatever ``check_val_every_n_epoch`` says.

The checkpoint callbacks are :mod:`solo_mixmask.checkpoints.callbacks`. Which callbacks a run
uses is :func:`solo_mixmask.run.trainer.build_callbacks`.
"""

from solo_mixmask.callbacks.data_on_device import DataOnDevice
from solo_mixmask.callbacks.last_validation import ValidateLastEpoch
from solo_mixmask.callbacks.nonfinite import NonFiniteLossGuard
from solo_mixmask.callbacks.resume_state import (
    ResumeState,
    capture_rng_state,
    mark_batch_completed,
    restore_rng_state,
)
from solo_mixmask.callbacks.speed import TrainSpeed
from solo_mixmask.callbacks.stop import GracefulStop, StopCheckpoint, signal_name, stopped_error

__all__ = [
    "DataOnDevice",
    "GracefulStop",
    "NonFiniteLossGuard",
    "ResumeState",
    "StopCheckpoint",
    "TrainSpeed",
    "ValidateLastEpoch",
    "capture_rng_state",
    "mark_batch_completed",
    "restore_rng_state",
    "signal_name",
    "stopped_error",
]

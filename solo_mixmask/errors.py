"""Exceptions for user mistakes (as opposed to bugs in solo_mixmask), and for runs that stop
before their end (a non-finite loss, a stop signal); the command line maps each to one
``error:`` line and an exit status."""

import signal


class ConfigError(ValueError):
    """A config key holds a value that is not allowed.

    The message names the key, the value given and what is allowed, e.g.
    ``method_kwargs.mask_ratio=1.5 is not allowed: expected a float in (0, 1)``.
    """

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: expected {allowed}")


class DataError(RuntimeError):
    """The data a config points to cannot be used (missing folder, empty dataset, bad file)."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded safely or lacks what the command needs."""


class ConfigWarning(UserWarning):
    """A config value that runs but makes no sense (printed as one ``warning:`` line)."""


class CollapseWarning(ConfigWarning):
    """A run whose outputs collapsed: its figures measure no representation (one ``warning:``
    line, and ``"collapsed": true`` in ``summary.json``)."""


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss (or a weight about to be saved) became NaN or inf."""

    def __init__(self, what: str, step: int, epoch: int, checkpoint: str | None):
        self.what, self.step, self.epoch, self.checkpoint = what, step, epoch, checkpoint
        kept = (
            f"the last checkpoint, {checkpoint}, written before this happened, is kept"
            if checkpoint
            else "no checkpoint had been written yet"
        )
        super().__init__(
            f"{what} at step {step} (epoch {epoch}); training stopped and nothing non-finite "
            f"was saved; {kept}; lower optimizer.lr, add warm-up (scheduler.warmup_epochs) or "
            "use precision=32-true, then start again or resume"
        )


#: Exit statuses of a run stopped by a signal (128 + signal number, as a shell reports them).
EXIT_SIGTERM = 128 + int(signal.SIGTERM)  # 143
EXIT_SIGINT = 128 + int(signal.SIGINT)  # 130


class StopRequested(Exception):
    """A stop signal arrived outside Lightning's loops (nothing trained is lost by stopping)."""


class RunStopped(RuntimeError):
    """The run was stopped by SIGTERM or Ctrl-C; ``exit_status`` is 143 or 130."""

    def __init__(self, signum: int, message: str):
        self.signum = signum
        self.exit_status = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
        super().__init__(message)

"""Exceptions for user mistakes (as opposed to bugs in solo_mixmask), and for runs that stop
before their end (a non-finite loss, a stop signal); the command line maps each to one
``error:`` line and an exit status. Also the value checks that raise :class:`ConfigError`, so
that every layer (the mixers in ``core`` too) words a bad setting the same way, and
:func:`check_argument`, the same wording for a function's bad argument (a ValueError)."""

import difflib
import math
import signal
import warnings
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A config key holds a value that is not allowed.

    The message names the key, the value given and what is allowed, e.g.
    ``method_kwargs.mask_ratio=1.5 is not allowed: expected a float in (0, 1)``.
    """

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: expected {allowed}")


def suggest(value: object, allowed: Iterable[str]) -> str:
    """' (did you mean X?)' for a close match among ``allowed`` (first: one that differs from
    ``value`` in case alone, ``CPU`` -> ``cpu``), else ''."""
    allowed = list(allowed)
    same = [a for a in allowed if a.lower() == str(value).lower()]
    close = same or difflib.get_close_matches(str(value), allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_argument(ok: bool, name: str, value: Any, expected: str) -> None:
    """ValueError ``name=value is not allowed: expected ...`` unless ``ok``: a function's bad
    argument (the caller's bug), worded as a :class:`ConfigError`."""
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed: expected {expected}")


def check_int_argument(name: str, value: Any, minimum: int = 1) -> None:
    """:func:`check_argument` that ``value`` is an integer (``int(value) == value``) >= minimum."""
    ok = int(value) == value and value >= minimum
    check_argument(ok, name, value, f"an integer >= {minimum}")


def check_choice_value(key: str, value: Any, allowed: Iterable[str]) -> None:
    """ConfigError unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(key, value, f"one of {', '.join(allowed)}{suggest(value, allowed)}")


def check_number_value(
    key: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> None:
    """ConfigError unless ``value`` is a finite number (an integer with ``integer``) inside the
    (half-)open or closed interval given (an unbounded side is open: inf and nan never pass)."""
    kind = "an integer" if integer else "a number"
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(key, value, f"{kind} in {interval}")


def check_bool_value(key: str, value: Any, allow_null: bool = False) -> None:
    """ConfigError unless ``value`` is true or false (or None with ``allow_null``):
    ``bool("no")`` is True, so a string must never reach a ``bool(...)`` read."""
    if isinstance(value, bool) or (allow_null and value is None):
        return
    raise ConfigError(key, value, "true or false or null (auto)" if allow_null else "true or false")


def config_warning(key: str, value: Any, consequence: str) -> None:
    """One start-up warning: ``key=value`` runs, but ``consequence``. Shown once per process
    (the checks run again when the method is built): its location is the checker's line."""
    warnings.warn(f"{key}={value!r} {consequence}", ConfigWarning, stacklevel=2)


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

    def __init__(
        self, what: str, step: int, epoch: int, checkpoint: str | None, precision: str | None = None
    ):
        """``precision``: the run's (Lightning's name); full precision is not advised to a run
        that has it."""
        self.what, self.step, self.epoch, self.checkpoint = what, step, epoch, checkpoint
        kept = (
            f"the last checkpoint, {checkpoint}, written before this happened, is kept"
            if checkpoint
            else "no checkpoint had been written yet"
        )
        advice = ["lower optimizer.lr", "add warm-up (scheduler.warmup_epochs)"]
        if precision not in ("32-true", "64-true", "32", "64"):
            advice.append("use precision=32-true")
        super().__init__(
            f"{what} at step {step} (epoch {epoch}); training stopped and nothing non-finite "
            f"was saved; {kept}; {', '.join(advice[:-1])} or {advice[-1]} in a new run "
            "(solo-mixmask pretrain: resume keeps the run's settings and meets the same step)"
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


def short_list(names: list[str], limit: int) -> str:
    """The first ``limit`` names joined by commas, ``...`` when there are more."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def first_lines(err: BaseException, n: int = 3) -> str:
    """The first ``n`` lines of an exception's message, on one line."""
    return " ".join(str(err).strip().splitlines()[:n])

"""Exceptions raised for user mistakes (as opposed to bugs in solo_mixmask)."""


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

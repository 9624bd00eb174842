"""Presets of ``linear`` and ``finetune`` (``configs/linear/``, ``configs/finetune/``): found by
name or path, read, and described for ``--help``. No torch here: ``--help`` reads them.

A preset is a YAML mapping of config keys (``linear: {epochs: 30, ...}``). The command's
:data:`DEFAULT_PRESET` is also its defaults: a preset file that leaves a key out gets its value
from there (see :func:`solo_mixmask.eval.features.eval_config`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from solo_mixmask.config.compose import configs_root, refuse_yaml11_integers, yaml_problem
from solo_mixmask.errors import ConfigError

#: The preset a command uses when none is named; it also fills the keys a preset file leaves out.
DEFAULT_PRESET = "paper"
#: Old preset names still accepted: ``seed`` was the authors' (the seed repository's) recipe.
PRESET_ALIASES = {"seed": "paper"}


def presets_dir(command: str) -> Path:
    """The shipped presets of ``command`` (``linear`` or ``finetune``)."""
    return configs_root() / command


def load_preset(preset: str, folder: Path) -> dict[str, Any]:
    """A preset by name (``<folder>/<name>.yaml``, or an old name in PRESET_ALIASES) or by path
    to a YAML file (ConfigError naming ``--preset`` and the known names otherwise, and for a
    file that is not plain YAML, holds python tags or is not a mapping of config keys; naming
    the key for an integer YAML reads as another number, see
    :func:`~solo_mixmask.config.compose.refuse_yaml11_integers`)."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    path = Path(preset)
    if not path.suffix:
        path = folder / f"{PRESET_ALIASES.get(preset, preset)}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError("--preset", preset, f"one of {known} or a path to a YAML file")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as err:  # a python tag, or not YAML at all
        raise ConfigError("--preset", preset, yaml_problem(err)) from err
    if not isinstance(loaded, DictConfig):
        raise ConfigError(
            "--preset", preset, "a YAML mapping of config keys, e.g. 'linear: {epochs: 30}'"
        )
    refuse_yaml11_integers(path)  # 010 would be read as octal 8
    return OmegaConf.to_container(loaded, resolve=True)  # type: ignore[return-value]


def preset_defaults(folder: Path) -> dict[str, Any]:
    """The keys every preset of ``folder`` may set, with their defaults: its
    :data:`DEFAULT_PRESET` (``paper.yaml``)."""
    return load_preset(DEFAULT_PRESET, folder)


def describe_presets(command: str, describe: Callable[[dict[str, Any]], str]) -> str:
    """``paper (...) | small (...)``: every shipped preset of ``command``, the default first,
    each with ``describe`` of its ``<command>`` section, read from the files themselves (so
    that ``--help`` never disagrees with them)."""
    import yaml

    parts = []
    paths = sorted(
        presets_dir(command).glob("*.yaml"), key=lambda p: (p.stem != DEFAULT_PRESET, p.stem)
    )
    for path in paths:
        section = (yaml.safe_load(path.read_text()) or {}).get(command) or {}
        parts.append(f"{path.stem} ({describe(section)})")
    return " | ".join(parts)

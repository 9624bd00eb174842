"""Where the configs are, and how a config plus command-line overrides becomes one ``DictConfig``.

One override grammar serves every command: hydra's (``key=value``, ``+key=value``, ``~key``,
``group=option``, and with ``-m`` the sweeps ``key=a,b``). Values are read as hydra reads them,
so ``data.download=no`` stays the string ``"no"`` and the boolean check refuses it. ``~key``
deletes the key, as hydra does, before the engine's defaults are filled in
(:func:`~solo_mixmask.config.schema.fill_defaults`, when the config is checked): the key then
takes its default, as if the config had never set it.
"""

from __future__ import annotations

import argparse
import itertools
import re
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from solo_mixmask.errors import ConfigError

#: The config a bare ``solo-mixmask pretrain`` composes (configs/pretrain/<dataset>/<name>.yaml).
DEFAULT_DATASET = "fashion_mnist"
DEFAULT_CONFIG = "mixmask"


def configs_root() -> Path:
    """The shipped ``configs/`` folder.

    Installed from a wheel it is package data (``solo_mixmask/configs``); in a clone (editable
    install) it is the repository's top-level ``configs/``, which setup.cfg maps into the wheel.
    """
    packaged = Path(str(resources.files("solo_mixmask"))) / "configs"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "configs"


def yaml_problem(err: Exception) -> str:
    """What a config file must be, for a YAML error raised while reading it (one line)."""
    text = " ".join(str(err).split()).replace("tag:yaml.org,2002:", "!!")
    if "!!python/" in text:
        return (
            f"a config without python tags ({text}): a config holds plain values, "
            "solo-mixmask never builds python objects from it"
        )
    return f"valid YAML ({text})"


def refuse_yaml11_integers(file: Path, prefix: str = "") -> None:
    """ConfigError for a plain (unquoted) integer in the YAML ``file`` written with a leading
    zero or a colon: YAML 1.1, which hydra and OmegaConf read, takes ``02000`` as octal 1024 and
    ``1:30`` as base-60 90, another number than the one written and no error (a command-line
    ``seed=010`` is refused by hydra's grammar). The key is named by its path in the file after
    ``prefix`` (a config group's package), with the file."""
    import yaml

    def scalars(node: Any, keys: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                yield from scalars(value, (*keys, str(key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                yield from scalars(value, (*keys, str(i)))
        elif isinstance(node, yaml.ScalarNode) and node.style is None:
            yield keys, node

    root = yaml.compose(file.read_text(), Loader=yaml.SafeLoader)
    for keys, node in scalars(root, (prefix,) if prefix else ()):
        text = node.value
        base60 = ":" in text
        if node.tag == "tag:yaml.org,2002:int" and (base60 or re.fullmatch(r"[-+]?0[0-9_]+", text)):
            read = f"{'base-60' if base60 else 'octal'} {yaml.safe_load(text)}"
            fix = "in decimal digits" if base60 else "without the leading zero"
            raise ConfigError(
                ".".join(keys),
                text,
                f"a decimal number (YAML reads {text} as {read}): write it {fix}, or quote it "
                f"if you mean the text (in {file})",
            )


def refuse_group_keys_set_before(file: Path, choices: dict[str, Any]) -> None:
    """ConfigError for a key that the config ``file`` sets and that a config group of its
    defaults list after ``_self_`` (still chosen: ``choices``, hydra's) also sets: hydra applies
    the group after the file's own values, so the file's value was silently lost."""
    import yaml

    body = yaml.safe_load(file.read_text()) or {}
    defaults = body.get("defaults") if isinstance(body, dict) else None
    if not isinstance(defaults, list) or "_self_" not in defaults:
        return
    for entry in defaults[defaults.index("_self_") + 1 :]:
        if not isinstance(entry, dict) or len(entry) != 1:
            continue
        (group, option), *_ = entry.items()
        group = str(group).split()[-1]  # without "override " or "optional "
        held: Any = body
        for part in group.split("/"):
            held = held.get(part) if isinstance(held, dict) else None
        if held is not None and choices.get(group) is not None:
            raise ConfigError(
                group.replace("/", "."),
                f"set in {file}",
                f"{group} set by the file or by its defaults entry '{group}: {option}', not "
                "both: that entry comes after _self_ and overrides the file's value; remove one "
                "of them, or put _self_ last in the defaults list",
            )


def _composes(path: Path, name: str) -> bool:
    """Whether the config ``name`` of folder ``path`` composes without any override."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(path), version_base="1.3"):
            compose(config_name=name)
    except _hydra_errors():
        return False
    return True


def _hydra_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (HydraException, OmegaConfBaseException, TypeError, ValueError)


def parse_overrides(overrides: Sequence[str]) -> list[Any]:
    """``overrides`` parsed by hydra's grammar (a list of ``hydra.core.override_parser.types.
    Override``); ConfigError naming them when one is malformed or has no key (``=3``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except _hydra_errors() as err:
        reason = " ".join(str(err).split("\nSee ")[0].split())
        raise ConfigError(
            "overrides", list(overrides), f"key=value overrides in hydra's grammar ({reason})"
        ) from err
    for o in parsed:
        if not o.key_or_group:
            raise ConfigError(
                "overrides", o.input_line, "KEY=VALUE: this override is malformed (no key)"
            )
    return parsed


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """A copy of ``cfg`` with plain-key ``overrides`` applied in order. ``key=value`` sets the key
    (keys not in ``cfg`` are added, so keys with engine defaults need no ``+``). ``~key`` deletes
    it, as hydra does: the engine's defaults are filled in later, so the key takes its default
    (null is a value: for ``data.knn_train_subset`` every image, where the default is 10,000);
    ``~key=value`` deletes it only when it holds ``value``. A deletion hydra would refuse (a key
    ``cfg`` lacks, another value) is a ConfigError naming the override, and so is a list item.
    Sweeps are refused."""
    parsed = parse_overrides(overrides)
    refuse_sweeps(parsed)
    cfg = cfg.copy()
    with open_dict(cfg):
        for o in parsed:
            try:
                if o.is_delete():
                    _delete(cfg, o)
                else:
                    OmegaConf.update(cfg, o.key_or_group, o.value(), force_add=True)
            except _hydra_errors() as err:
                if isinstance(err, ConfigError):
                    raise
                raise ConfigError(
                    o.key_or_group, o.input_line, f"a settable config key ({err})"
                ) from err
    return cfg


def _delete(cfg: DictConfig, override: Any) -> None:
    """hydra's ``~key`` and ``~key=value`` (``override``) on ``cfg``, in place. Unlike hydra, a key
    holding null is deleted too (hydra reads null as absent and refuses it), so that
    ``~data.knn_train_subset`` also restores the default of a config that sets it to null."""
    key, line = override.key_or_group, override.input_line
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, throw_on_missing=False) if parent_key else cfg
    if isinstance(parent, ListConfig):
        raise ConfigError(
            key,
            line,
            f"a key of a mapping to delete: {parent_key} is a list, whose items are not "
            f"deleted one by one (set the whole list: {parent_key}=[...])",
        )
    if not isinstance(parent, DictConfig) or leaf not in parent.keys():
        raise ConfigError(
            key,
            line,
            f"a key of the config to delete: {key} is not in it (a key the config lacks "
            "takes the engine's default already)",
        )
    wanted = override.value()
    if wanted is not None:
        held = OmegaConf.select(cfg, key, throw_on_missing=False)
        if held != wanted:
            shown = (
                OmegaConf.to_container(held) if isinstance(held, DictConfig | ListConfig) else held
            )
            raise ConfigError(
                key,
                line,
                f"~{key} or ~{key}=VALUE with the value it holds: {key} is {shown!r}, not "
                f"{wanted!r} (as in hydra, ~KEY=VALUE deletes KEY only when it holds VALUE)",
            )
    del parent[leaf]


def refuse_sweeps(parsed: Sequence[Any]) -> None:
    """ConfigError for a sweep (``seed=1,2``) outside ``-m``, as hydra says it."""
    for o in parsed:
        if o.is_sweep_override():
            raise ConfigError(
                o.key_or_group,
                o.input_line.partition("=")[2],
                f"one value; for a list write {o.key_or_group}=[...], to run one job per value "
                "use -m (multirun)",
            )


def expand_sweeps(overrides: Sequence[str]) -> list[list[str]]:
    """``-m`` jobs: the cartesian product of the sweep overrides, in hydra's order (first key
    slowest). ``['a=1,2', 'b=x']`` -> ``[['a=1', 'b=x'], ['a=2', 'b=x']]``."""
    parsed = parse_overrides(overrides)
    choices = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(job) for job in itertools.product(*choices)]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config-path`` / ``--config-name`` of a pretraining config (see :func:`config_folder`),
    for every command that composes one."""
    parser.add_argument(
        "--config-path",
        default=None,
        help="folder of configs (default: configs/pretrain/<dataset>)",
    )
    parser.add_argument(
        "--config-name",
        default=DEFAULT_CONFIG,
        help=f"NAME or DATASET/NAME (default: {DEFAULT_DATASET}/{DEFAULT_CONFIG})",
    )


def config_folder(config_path: str | None, config_name: str) -> tuple[Path, str]:
    """``(folder, name)`` of a pretraining config: ``NAME`` or ``DATASET/NAME`` under
    configs/pretrain, or ``NAME`` in ``config_path``."""
    name = config_name[:-5] if config_name.endswith(".yaml") else config_name
    if config_path is None:
        folder, _, name = name.rpartition("/")
        path = configs_root() / "pretrain" / (folder or DEFAULT_DATASET)
    else:
        path = Path(config_path)
    path = path.resolve()
    if not (path / f"{name}.yaml").exists():
        known = sorted(p.stem for p in path.glob("*.yaml")) if path.is_dir() else []
        raise ConfigError(
            "--config-name", config_name, f"a config in {path}: {', '.join(known) or 'none found'}"
        )
    return path, name


def config_groups(path: Path) -> dict[str, list[str]]:
    """The config groups of a config folder and their options (``{'augmentations': [...]}``)."""
    return {
        p.name: sorted(q.stem for q in p.glob("*.yaml"))
        for p in sorted(path.iterdir())
        if p.is_dir()
    }


def compose_config(
    config_path: str | None, config_name: str, overrides: Sequence[str]
) -> DictConfig:
    """Compose a hydra config: ``config_name`` may be ``NAME`` or ``DATASET/NAME`` under
    configs/pretrain. Group overrides (``augmentations=asymmetric``) select configs; other keys
    are set or deleted (``~key``) directly, before any engine default is filled in (see
    :func:`apply_overrides`). The config and the group files it reads are refused for an
    integer YAML reads as another number (:func:`refuse_yaml11_integers`) and for a key a group
    chosen after ``_self_`` overrides (:func:`refuse_group_keys_set_before`)."""
    import yaml
    from hydra import compose, initialize_config_dir

    path, name = config_folder(config_path, config_name)
    groups = config_groups(path)
    parsed = parse_overrides(overrides)
    refuse_sweeps(parsed)
    for o in parsed:
        if o.key_or_group in groups and not o.is_delete() and o.value() == []:
            raise ConfigError(
                o.key_or_group,
                [],
                f"one config of the group {o.key_or_group}: {', '.join(groups[o.key_or_group])}",
            )
    group_overrides = [o.input_line for o in parsed if o.key_or_group in groups]
    try:
        with initialize_config_dir(config_dir=str(path), version_base="1.3"):
            cfg = compose(config_name=name, overrides=group_overrides, return_hydra_config=True)
    except yaml.YAMLError as err:  # the config file (or one it includes) is not plain YAML
        raise ConfigError("--config-name", config_name, yaml_problem(err)) from err
    except _hydra_errors() as err:
        problem = str(err).strip().splitlines()[0]  # hydra appends its search path
        if not group_overrides or not _composes(path, name):  # the config itself is broken
            where = f"{config_name} in {path}"
            raise ConfigError(
                "--config-name", where, f"a config hydra composes ({problem})"
            ) from err
        raise ConfigError(
            "overrides", list(overrides), f"valid hydra overrides ({problem})"
        ) from err
    choices: dict[str, Any] = {str(k): v for k, v in cfg.hydra.runtime.choices.items()}
    with open_dict(cfg):
        del cfg["hydra"]  # as compose does without return_hydra_config
    refuse_group_keys_set_before(path / f"{name}.yaml", choices)
    refuse_yaml11_integers(path / f"{name}.yaml")
    for group, option in choices.items():
        for chosen in option if isinstance(option, list) else [option]:
            file = path / group / (chosen if str(chosen).endswith(".yaml") else f"{chosen}.yaml")
            if chosen is not None and file.is_file():  # not hydra's own groups
                refuse_yaml11_integers(file, group.replace("/", "."))
    plain = [o.input_line for o in parsed if o.key_or_group not in groups]
    return apply_overrides(cfg, plain)

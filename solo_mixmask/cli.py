"""``solo-mixmask`` command line: one sub-command per job.

User mistakes (bad config values, missing data, unusable or unsafe checkpoints, impossible
Trainer settings) print one ``error:`` line and exit with status 2; a run stopped by a NaN/inf
loss prints one ``error:`` line and exits with status 3 (its last good checkpoint is kept); a
run stopped by SIGTERM (what SLURM and Kubernetes send) exits with 143 and one by Ctrl-C with
130, each with one ``error:`` line naming ``solo-mixmask resume RUN_DIR`` (``last.ckpt`` is
written after the step under way, see :class:`~solo_mixmask.callbacks.GracefulStop`).
Anything else is a bug and keeps its traceback. Settings that run but
make no sense (:class:`~solo_mixmask.errors.ConfigWarning`) print one ``warning:`` line each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from solo_mixmask.errors import CheckpointError, ConfigError, ConfigWarning, DataError

USER_ERRORS = (ConfigError, DataError, CheckpointError)


def configs_root() -> Path:
    """The repository's ``configs/`` folder (the package is installed editable from the repo)."""
    return Path(__file__).resolve().parents[1] / "configs"


def yaml_problem(err: Exception) -> str:
    """What a config file must be, for a YAML error raised while reading it (one line)."""
    text = " ".join(str(err).split()).replace("tag:yaml.org,2002:", "!!")
    if "!!python/" in text:
        return (
            f"a config without python tags ({text}): a config holds plain values, "
            "solo-mixmask never builds python objects from it"
        )
    return f"valid YAML ({text})"


def check_overrides(parsed: Sequence[Any], path: Path, groups: set[str]) -> None:
    """Overrides with no key (``=3``), and a config group given an empty list (``group=[]``
    selects none of its configs)."""
    for o in parsed:
        if not o.key_or_group:
            raise ConfigError(
                "overrides", o.input_line, "KEY=VALUE: this override is malformed (no key)"
            )
        if o.key_or_group in groups and not o.is_delete() and o.value() == []:
            options = sorted(p.stem for p in (path / o.key_or_group).glob("*.yaml"))
            raise ConfigError(
                o.key_or_group,
                [],
                f"one config of the group {o.key_or_group}: {', '.join(options)}",
            )


def compose_config(
    config_path: str | None, config_name: str, overrides: Sequence[str]
) -> DictConfig:
    """Compose a hydra config: ``config_name`` may be ``NAME`` or ``DATASET/NAME`` under configs/pretrain."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    name = config_name[:-5] if config_name.endswith(".yaml") else config_name
    if config_path is None:
        folder, _, name = name.rpartition("/")
        path = configs_root() / "pretrain" / (folder or "fashion_mnist")
    else:
        path = Path(config_path)
    path = path.resolve()
    if not (path / f"{name}.yaml").exists():
        known = sorted(p.stem for p in path.glob("*.yaml")) if path.is_dir() else []
        raise ConfigError(
            "--config-name", config_name, f"a config in {path}: {', '.join(known) or 'none found'}"
        )
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = {p.name for p in path.iterdir() if p.is_dir()}
    hydra_errors = (HydraException, OmegaConfBaseException, TypeError, ValueError)
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except hydra_errors as err:
        raise ConfigError("overrides", list(overrides), f"valid hydra overrides ({err})") from err
    check_overrides(parsed, path, groups)
    try:
        group_overrides = [o.input_line for o in parsed if o.key_or_group in groups]
        with initialize_config_dir(config_dir=str(path), version_base="1.3"):
            cfg = compose(config_name=name, overrides=group_overrides)
    except yaml.YAMLError as err:  # the config file (or one it includes) is not plain YAML
        raise ConfigError("--config-name", config_name, yaml_problem(err)) from err
    except hydra_errors as err:
        raise ConfigError("overrides", list(overrides), f"valid hydra overrides ({err})") from err
    # Plain keys are set directly, so keys with engine defaults need no '+' prefix.
    with open_dict(cfg):
        for o in parsed:
            if o.key_or_group not in groups:
                OmegaConf.update(
                    cfg, o.key_or_group, None if o.is_delete() else o.value(), force_add=True
                )
    return cfg


def _pretrain(args: argparse.Namespace) -> None:
    from solo_mixmask.pretrain import run_pretrain

    cfg = compose_config(args.config_path, args.config_name, args.overrides)
    summary = run_pretrain(cfg)
    print(json.dumps(summary, indent=2))
    print(
        f"Run folder: {summary['run_dir']}  (summary.json, config.yaml, checkpoints/, logs/metrics.csv)"
    )


def _resume(args: argparse.Namespace) -> None:
    from solo_mixmask.pretrain import NothingToResume, resume_run

    try:
        summary = resume_run(args.run_dir, args.overrides)
    except NothingToResume as done:
        print(done)
        return
    print(json.dumps(summary, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="solo-mixmask", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="self-supervised pretraining from a hydra config")
    p.add_argument(
        "--config-path",
        default=None,
        help="folder of configs (default: configs/pretrain/<dataset>)",
    )
    p.add_argument(
        "--config-name",
        default="mixmask",
        help="NAME or DATASET/NAME (default: fashion_mnist/mixmask)",
    )
    p.add_argument(
        "overrides", nargs="*", help="hydra overrides, e.g. max_epochs=5 method_kwargs.grid_size=4"
    )
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("resume", help="continue a run from its last checkpoint")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. max_epochs=20")
    p.set_defaults(func=_resume)
    from solo_mixmask.eval.commands import add_eval_commands
    from solo_mixmask.solo import add_solo_commands

    add_eval_commands(sub)
    add_solo_commands(sub)
    return parser


#: Exit statuses.
EXIT_USER_ERROR = 2
EXIT_NON_FINITE_LOSS = 3
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM), see solo_mixmask.callbacks.RunStopped


def _user_error_types() -> tuple[type[BaseException], ...]:
    """USER_ERRORS plus config-library and Lightning misconfiguration errors (lazy imports)."""
    from omegaconf.errors import OmegaConfBaseException

    types: list[type[BaseException]] = [*USER_ERRORS, OmegaConfBaseException]
    try:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    except ImportError:  # pragma: no cover - lightning is a dependency
        pass
    else:
        types.append(MisconfigurationException)
    return tuple(types)


def one_line(err: BaseException) -> str:
    """``err``'s message on one line; for an error re-raised from a DataLoader worker (whose
    message embeds the worker's traceback) the original message only."""
    text = str(err)
    if "Original Traceback" in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        last = lines[-1] if lines else text
        name = type(err).__name__
        for prefix in (f"{type(err).__module__}.{name}: ", f"{name}: "):
            if last.startswith(prefix):
                last = last[len(prefix) :]
        text = last
    return " ".join(text.split())


@contextlib.contextmanager
def config_warnings_as_lines() -> Iterator[None]:
    """Print each :class:`ConfigWarning` as one ``warning: ...`` line on stderr (no source line),
    other warnings as usual."""
    show = warnings.showwarning

    def show_line(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if issubclass(category, ConfigWarning):
            print(f"warning: {message}", file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_line
    try:
        yield
    finally:
        warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with config_warnings_as_lines():
            args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted; continue with `solo-mixmask resume RUN_DIR`", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        from solo_mixmask.callbacks import NonFiniteLossError, RunStopped

        if isinstance(err, RunStopped):
            print(f"error: {one_line(err)}", file=sys.stderr)
            return err.exit_status
        if isinstance(err, NonFiniteLossError):
            print(f"error: {one_line(err)}", file=sys.stderr)
            return EXIT_NON_FINITE_LOSS
        if isinstance(err, _user_error_types()):
            print(f"error: {one_line(err)}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``solo-mixmask`` command line: one sub-command per job.

User mistakes (bad config values, missing data, unusable or unsafe checkpoints, impossible
Trainer settings) print one ``error:`` line and exit with status 2; a run stopped by a NaN/inf
loss prints one ``error:`` line and exits with status 3 (its last good checkpoint is kept); a
run stopped by SIGTERM (what SLURM and Kubernetes send) exits with 143 and one by Ctrl-C with
130, each with one ``error:`` line naming ``solo-mixmask resume RUN_DIR`` (``last.ckpt`` is
written after the step under way, see :class:`~solo_mixmask.callbacks.stop.GracefulStop`).
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

from omegaconf import DictConfig, OmegaConf

from solo_mixmask import __version__
from solo_mixmask.config.compose import (  # noqa: F401 (compose_config, configs_root re-exported)
    add_config_arguments,
    compose_config,
    config_groups,
    configs_root,
    expand_sweeps,
)
from solo_mixmask.errors import (
    CheckpointError,
    ConfigError,
    ConfigWarning,
    DataError,
    NonFiniteLossError,
    RunStopped,
)

USER_ERRORS = (ConfigError, DataError, CheckpointError)


def _say(text: str) -> None:
    """Print ``text`` from the run's global rank 0 only: every DDP process runs the command."""
    from solo_mixmask.run.folder import is_rank_zero_process

    if is_rank_zero_process():
        print(text, flush=True)


def check_one_process(cfg: DictConfig) -> None:
    """ConfigError naming ``devices`` (or ``num_nodes``) unless ``cfg`` trains on one device:
    ``-m`` runs its jobs one after another in this process, and from the second job on the
    other processes of a multi-process run no longer find its run folder."""
    from solo_mixmask.config.run_specs import trainer_arguments
    from solo_mixmask.config.schema import trains_on_one_device

    if trains_on_one_device(cfg):
        return
    arguments = trainer_arguments(cfg)
    devices, nodes = arguments.get("devices", 1), arguments.get("num_nodes", 1)
    key, value = ("devices", devices) if nodes in (1, None) else ("num_nodes", nodes)
    raise ConfigError(
        key,
        value,
        "one device (devices=1 and num_nodes=1; auto and -1 may start several processes) with "
        "-m/--multirun: its jobs run one after another in this process, and a job on several "
        f"processes (devices={devices}, num_nodes={nodes}, strategy={arguments.get('strategy')}) "
        "leaves the next job's other processes without its run folder; run each job as its own "
        "solo-mixmask pretrain command (one per combination of values); nothing was run",
    )


def check_one_folder_per_job(configs: Sequence[DictConfig]) -> None:
    """ConfigError naming ``checkpoint.run_dir`` when several ``-m`` jobs would train into one
    fixed folder: the first would train there, and the next would find its run and stop."""
    from solo_mixmask.config.run_specs import folder_spec

    given: dict[Path, list[Any]] = {}  # the folder -> the values that name it
    for spec in map(folder_spec, configs):
        if spec.run_dir:
            given.setdefault(Path(spec.run_dir).resolve(), []).append(spec.run_dir)
    shared = next((values for values in given.values() if len(values) > 1), None)
    if shared is None:
        return
    raise ConfigError(
        "checkpoint.run_dir",
        shared[0],
        f"one folder per run, but {len(shared)} jobs of -m would train into it (the second "
        "would find the first's run and stop); with -m set checkpoint.dir=FOLDER instead, "
        "where each job gets a folder of its own (<name>-<time stamp>); nothing was run",
    )


def _pretrain(args: argparse.Namespace) -> None:
    from solo_mixmask.run.pretrain import prepare_config, run_pretrain

    if args.cfg:  # hydra's --cfg job: the config this run would receive, nothing trained
        _, cfg = prepare_config(compose_config(args.config_path, args.config_name, args.overrides))
        print(OmegaConf.to_yaml(cfg), end="")
        return
    if not args.multirun:
        summary = run_pretrain(compose_config(args.config_path, args.config_name, args.overrides))
        _say(json.dumps(summary, indent=2))
        _say(
            f"Run folder: {summary['run_dir']}  (summary.json, config.yaml, checkpoints/, "
            "logs/metrics.csv)"
        )
        return
    # -m: one run per combination of the sweep values, each in its own run folder. Every
    # job's config is composed and checked (one process each) before the first one trains.
    jobs = expand_sweeps(args.overrides)
    configs = [
        prepare_config(compose_config(args.config_path, args.config_name, job))[1] for job in jobs
    ]
    for cfg in configs:
        check_one_process(cfg)
    check_one_folder_per_job(configs)
    runs = []
    for i, job in enumerate(jobs):
        _say(f"[multirun] job {i + 1}/{len(jobs)}: {' '.join(job)}")
        summary = run_pretrain(compose_config(args.config_path, args.config_name, job))
        runs.append(
            {"overrides": job, "run_dir": summary["run_dir"], "knn_acc1": summary.get("knn_acc1")}
        )
        _say(f"[multirun] job {i + 1}/{len(jobs)} done: {summary['run_dir']}")
    _say(json.dumps(runs, indent=2))


def _config_list() -> str:
    """The --help epilog: the shipped pretraining configs and their config groups."""
    root = configs_root() / "pretrain"
    lines = ["configs (--config-name DATASET/NAME, in " + str(root) + "):"]
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        lines.append(f"  {folder.name}/: {', '.join(names)}")
        for group, options in config_groups(folder).items():
            lines.append(f"    group {group}=: {', '.join(options)}")
    lines += [
        "",
        "overrides use hydra's grammar: key=value, +key=value, ~key, group=option;",
        "with -m, key=a,b runs one job per value (e.g. -m method=mocov2plus,mixmask seed=1,2,3).",
    ]
    return "\n".join(lines)


def _resume(args: argparse.Namespace) -> None:
    from solo_mixmask.run.resume import NothingToResume, resume_run

    try:
        summary = resume_run(args.run_dir, args.overrides)
    except NothingToResume as done:
        _say(str(done))
        return
    _say(json.dumps(summary, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="solo-mixmask", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"solo-mixmask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining from a hydra config",
        epilog=_config_list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    p.add_argument(
        "--cfg",
        choices=["job"],
        default=None,
        help="print the composed config (engine defaults filled in and checked), train nothing",
    )
    p.add_argument(
        "-m",
        "--multirun",
        action="store_true",
        help="one run per combination of sweep values (key=a,b), each in its own run folder",
    )
    p.add_argument(
        "overrides", nargs="*", help="hydra overrides, e.g. max_epochs=5 method_kwargs.grid_size=4"
    )
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("resume", help="continue a run from its last checkpoint")
    p.add_argument("run_dir")
    p.add_argument(
        "overrides",
        nargs="*",
        help="overrides of the keys a resume may change, e.g. max_epochs=20 (the others are "
        "refused: an error line lists the allowed ones)",
    )
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
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM), see solo_mixmask.errors.RunStopped


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

    def show_line(message, category, filename, lineno, file=None, line=None):
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

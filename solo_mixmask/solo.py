"""Plug-in for real solo-learn (>= 1.0.6): our methods on solo-learn's own BaseMomentumMethod.

solo-learn looks methods up in the plain dict ``solo.methods.METHODS``. :func:`register` adds
``mixmask``, ``unmix``, ``unmix_mixmask``, ``mocov2`` (MoCo v2 with the seed's asymmetric loss,
which solo-learn lacks), ``byol_mixmask`` and ``byol_unmix_mixmask`` to it. Each entry is
``type(name, (XLogic, base), {})``: the engine-free method logic of ``solo_mixmask.methods`` on
top of solo-learn's ``BaseMomentumMethod`` (the MoCo family) or of solo-learn's own ``BYOL`` (the
``byol_*`` methods, which add only their mixed branches to its unchanged step), so solo-learn's
backbones, data pipelines, online classifier, k-NN monitor, checkpointer and scripts are used
unchanged, and the method step exists once. solo-learn's own entries are never replaced.

``solo-mixmask solo-pretrain`` / ``solo-linear`` run the checkout's ``main_pretrain.py`` /
``main_linear.py`` with the methods registered (:func:`run_solo_script`). Processes that Lightning's
DDP launcher starts re-enter through ``python -m solo_mixmask.solo <hydra args>`` and find the
script in ``$SOLO_MIXMASK_SOLO_SCRIPT``.

Importing this module never imports solo-learn.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import sys
import traceback
import types
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from solo_mixmask.errors import ConfigError, suggest

MIN_SOLO_VERSION = "1.0.6"
SOLO_REPO = "https://github.com/vturrisi/solo-learn"
INSTALL_HINT = (
    f"install solo-learn >= {MIN_SOLO_VERSION} from its repository, next to this package: "
    f"git clone {SOLO_REPO} && pip install -e ./solo-learn "
    "(the package registry only has solo-learn 1.0.2, which is too old)"
)
#: Environment variable naming the solo-learn script that DDP child processes must run.
SCRIPT_ENV = "SOLO_MIXMASK_SOLO_SCRIPT"
SCRIPTS = {"pretrain": "main_pretrain.py", "linear": "main_linear.py"}


class SoloMethod(NamedTuple):
    """How one name enters solo-learn's ``solo.methods.METHODS``."""

    #: Key of our method in ``solo_mixmask.methods.ENTRIES`` (whose ``*Logic`` mixin it uses).
    logic_key: str
    #: Name of the built class (an attribute of this module, so that it pickles).
    class_name: str
    #: ``method_kwargs`` defaults that differ from the logic's own.
    defaults: dict[str, Any]
    #: The solo-learn class under the logic: a name in ``SOLO_BASES``.
    base: str


def solo_methods() -> dict[str, SoloMethod]:
    """solo-learn method name -> :class:`SoloMethod`, read off the registry rows
    (``solo_mixmask.methods``; imports our methods, never solo-learn)."""
    from solo_mixmask.methods import ENTRIES

    return {
        solo.name: SoloMethod(row.name, solo.class_name, dict(solo.defaults), row.host.solo_base)
        for row in ENTRIES.values()
        for solo in row.solo_names
    }


#: solo-learn base class name -> (its module, its attribute).
SOLO_BASES = {
    "BaseMomentumMethod": ("solo.methods.base", "BaseMomentumMethod"),
    "BYOL": ("solo.methods", "BYOL"),
}

_BUILT: dict[str, type] = {}  # class name -> class, built once per process


class SoloLearnError(ImportError):
    """solo-learn is missing, too old, or its scripts cannot be found."""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def solo_checkout_version(checkout: Path) -> str | None:
    """The ``version=`` of ``checkout/setup.py``, or None when it cannot be read."""
    try:
        text = (checkout / "setup.py").read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.search(r"""version\s*=\s*["']([^"']+)["']""", text)
    return found.group(1) if found else None


def solo_version(checkout: Path | None = None) -> str | None:
    """Version of solo-learn: from ``checkout``'s setup.py, else the installed distribution."""
    if checkout is not None:
        version = solo_checkout_version(checkout)
        if version is not None:
            return version
    try:
        return importlib.metadata.version("solo-learn")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_solo_version(version: str | None, where: str) -> None:
    """Raise :class:`SoloLearnError` when ``version`` is older than ``MIN_SOLO_VERSION``."""
    if version is None:
        warnings.warn(
            f"cannot tell the version of solo-learn at {where}; solo-mixmask is tested with "
            f"{MIN_SOLO_VERSION}",
            stacklevel=2,
        )
        return
    if _version_tuple(version) < _version_tuple(MIN_SOLO_VERSION):
        raise SoloLearnError(
            f"solo-learn {version} found at {where}, but solo-mixmask needs >= "
            f"{MIN_SOLO_VERSION} (lightning 2.x, hydra configs): {INSTALL_HINT}"
        )


def _import_solo() -> tuple[types.ModuleType, dict[str, type]]:
    """``(solo.methods, {name: solo-learn class})`` for the names of ``SOLO_BASES``,
    version-checked."""
    try:
        import solo
        import solo.methods

        bases = {
            name: getattr(importlib.import_module(module), attr)
            for name, (module, attr) in SOLO_BASES.items()
        }
    except (ImportError, AttributeError) as err:
        raise SoloLearnError(f"solo-learn cannot be imported ({err}); {INSTALL_HINT}") from err
    package = Path(solo.__file__).resolve().parent
    check_solo_version(solo_version(package.parent), str(package))
    return solo.methods, bases


def solo_class(name: str, base: type) -> type:
    """The class registered as ``name``: the row's host logic and mixers on solo-learn's
    ``base`` (built by the row, as our engine's classes are)."""
    from solo_mixmask.methods import ENTRIES

    row_name, class_name, defaults, _ = solo_methods()[name]
    cls = _BUILT.get(class_name)
    if cls is not None and base in cls.__mro__:
        return cls
    row = ENTRIES[row_name]
    cls = row.build(
        (row.host.solo_logic, base),
        class_name,
        __name__,
        solo_mixmask_method=name,
        method_defaults=defaults,
    )
    _BUILT[class_name] = cls
    return cls


def register() -> dict[str, type]:
    """Add our methods to ``solo.methods.METHODS`` (idempotent); returns ``{name: class}`` added.

    A name that solo-learn already uses for its own method is left alone (with a warning).
    Raises :class:`SoloLearnError` when solo-learn is missing or older than 1.0.6.
    """
    solo_package, bases = _import_solo()
    registered: dict[str, type] = {}
    for name, (*_, base_name) in solo_methods().items():
        existing = solo_package.METHODS.get(name)
        if existing is not None and getattr(existing, "solo_mixmask_method", None) != name:
            warnings.warn(
                f"solo.methods.METHODS[{name!r}] is solo-learn's own {existing.__name__}; "
                "solo-mixmask leaves it in place",
                stacklevel=2,
            )
            continue
        cls = solo_class(name, bases[base_name])
        solo_package.METHODS[name] = cls
        registered[name] = cls
    return registered


def __getattr__(name: str) -> type:
    """Built classes are module attributes (``solo_mixmask.solo.MixMask``) so that they pickle."""
    if name in _BUILT:
        return _BUILT[name]
    # the import system's probes (``__path__`` on ``from solo_mixmask.solo import x``) and other
    # private names are never methods: answering them must not import the methods (and torch)
    if not name.startswith("_") and name in {entry.class_name for entry in solo_methods().values()}:
        register()
        return _BUILT[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------- scripts
def find_solo_script(kind: str, solo_learn_dir: str | os.PathLike | None = None) -> Path:
    """Path of solo-learn's ``main_<kind>.py``: in ``solo_learn_dir``, else next to ``solo``'s
    package folder (an editable install of a checkout). Raises :class:`SoloLearnError`."""
    if kind not in SCRIPTS:
        raise ValueError(f"kind={kind!r} is not allowed: expected one of {', '.join(SCRIPTS)}")
    if solo_learn_dir is not None:
        checkout = Path(solo_learn_dir).expanduser().resolve()
        script = checkout / SCRIPTS[kind]
        if not script.is_file():
            raise SoloLearnError(
                f"--solo-learn-dir {checkout} has no {SCRIPTS[kind]}: expected the root folder "
                f"of a solo-learn checkout ({SOLO_REPO})"
            )
        return script
    try:
        spec = importlib.util.find_spec("solo")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise SoloLearnError(f"solo-learn is not installed: {INSTALL_HINT}")
    package = Path(spec.origin).resolve().parent
    script = package.parent / SCRIPTS[kind]
    if not script.is_file():
        raise SoloLearnError(
            f"solo-learn is installed at {package} but {SCRIPTS[kind]} is not next to it "
            f"({script}): only a checkout installed with `pip install -e` keeps its scripts. "
            f"Pass --solo-learn-dir CHECKOUT, or {INSTALL_HINT}"
        )
    return script


def _use_checkout(checkout: Path) -> None:
    """Make ``import solo`` resolve to ``checkout/solo`` (as ``python main_pretrain.py`` does)."""
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    loaded = sys.modules.get("solo")
    loaded_file = getattr(loaded, "__file__", None) if loaded is not None else None
    if loaded_file:
        package = Path(loaded_file).resolve().parent
        if package.parent != checkout:
            raise SoloLearnError(
                f"solo-learn is already imported from {package}, not from the checkout {checkout}"
            )


def _auto_resume_matches_method_kwargs() -> None:
    """Make solo-learn's auto-resume compare ``method_kwargs`` too (idempotent).

    Its ``AutoResumer.SHOULD_MATCH`` leaves them out, so a run that changes only, say,
    ``method_kwargs.mask_ratio`` would resume (or find finished) the previous run's checkpoint.
    """
    from solo.utils.auto_resumer import AutoResumer

    if "method_kwargs" not in AutoResumer.SHOULD_MATCH:
        AutoResumer.SHOULD_MATCH.append("method_kwargs")


def run_solo_script(script: str | os.PathLike, hydra_args: Sequence[str]) -> None:
    """Run solo-learn's ``script`` as ``__main__`` with ``sys.argv[1:] = hydra_args``.

    Our methods are registered first, and auto-resume made to match ``method_kwargs``. While it
    runs, ``__main__.__spec__`` names this module and
    ``$SOLO_MIXMASK_SOLO_SCRIPT`` the script, so DDP child processes (which Lightning starts as
    ``python -m <__main__.__spec__.name> <sys.argv[1:]>``) register the methods too, and
    ``$HYDRA_FULL_ERROR=1`` makes hydra re-raise exceptions instead of exiting, so a
    :class:`~solo_mixmask.errors.ConfigError` of ours reaches the CLI as one ``error:`` line.
    sys.argv, ``__main__`` and the environment are restored afterwards.
    """
    script = Path(script).resolve()
    _use_checkout(script.parent)
    register()
    _auto_resume_matches_method_kwargs()
    code = compile(script.read_bytes(), str(script), "exec")
    module = types.ModuleType("__main__")
    module.__file__ = str(script)
    module.__spec__ = importlib.util.find_spec(__name__)
    env = {SCRIPT_ENV: str(script), "HYDRA_FULL_ERROR": os.environ.get("HYDRA_FULL_ERROR", "1")}
    saved_env = {key: os.environ.get(key) for key in env}
    saved_main, saved_argv = sys.modules["__main__"], sys.argv
    sys.modules["__main__"] = module
    sys.argv = [str(script), *hydra_args]
    os.environ.update(env)
    try:
        exec(code, module.__dict__)
    finally:
        sys.modules["__main__"], sys.argv = saved_main, saved_argv
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ------------------------------------------------------------------------------ sub-commands
def solo_configs_root() -> Path:
    """The repository's ``configs/solo/`` folder (solo-learn's layout: ``<dataset>/<method>.yaml``)."""
    from solo_mixmask.config.compose import configs_root

    return configs_root() / "solo"


def hydra_args(
    kind: str, config_path: str | None, config_name: str, overrides: Sequence[str]
) -> list[str]:
    """``--config-path ABS --config-name NAME overrides...`` for solo-learn's hydra main.

    Without ``config_path`` (pretraining only), ``config_name`` is ``DATASET/METHOD`` under
    configs/solo. Raises ConfigError when the config file does not exist.
    """
    name = config_name if config_name.endswith((".yaml", ".yml")) else f"{config_name}.yaml"
    if config_path is None:
        if kind != "pretrain":
            raise ConfigError("--config-path", None, "the folder of a solo-learn linear config")
        folder, _, name = name.rpartition("/")
        path = solo_configs_root() / folder
    else:
        path = Path(config_path).expanduser()
    path = path.resolve()
    if not (path / name).is_file():
        known = sorted(p.name for p in path.glob("*.y*ml")) if path.is_dir() else []
        where = ", ".join(known) if known else "none found"
        if config_path is None:
            datasets = sorted(p.name for p in solo_configs_root().iterdir() if p.is_dir())
            where += f"; datasets: {', '.join(datasets)}"
        raise ConfigError("--config-name", config_name, f"a config in {path} ({where})")
    return ["--config-path", str(path), "--config-name", name, *overrides]


def _config_check_frame(err: BaseException, script: Path) -> traceback.FrameSummary | None:
    """The frame that raised ``err`` when it is one of solo-learn's config checks: the body of
    ``script``'s ``main`` (e.g. its ``assert cfg.method in METHODS``) or a function of the
    checkout named ``parse_cfg`` / ``add_and_assert_*`` (solo-learn's names for them); else None."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return None
    last = frames[-1]
    path = Path(last.filename).resolve()
    if path == script:
        return last if last.name == "main" else None
    checks = last.name == "parse_cfg" or last.name.startswith("add_and_assert")
    return last if checks and script.parent in path.parents else None


def solo_config_error(err: BaseException, script: Path) -> str | None:
    """One line for ``err`` when it is a config mistake met while solo-learn composes (hydra) or
    parses (its asserts) the config of ``script``; None for anything else (a bug: keep its
    traceback). OmegaConf errors are already one line in the CLI."""
    from hydra.errors import HydraException
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, HydraException):
        text = str(err).split("\nConfig search path:")[0]  # hydra's search path: noise here
        first, *rest = text.splitlines() or [type(err).__name__]
        cause = err.__cause__
        if isinstance(cause, OmegaConfBaseException):  # e.g. "Key 'x' is not in struct"
            detail = str(cause).splitlines()[0]
            if isinstance(cause.parent_node, DictConfig) and cause.key is not None:
                keys = [str(key) for key in cause.parent_node.keys()]
                detail += f"{suggest(cause.key, keys)}; keys there: {', '.join(keys)}"
            first = f"{first.rstrip('.')}: {detail}."
        return " ".join(" ".join([first, *rest]).split())
    if isinstance(err, AssertionError):
        frame = _config_check_frame(err, script)
        if frame is None:
            return None
        where = f"{Path(frame.filename).name}:{frame.lineno}: {frame.line}"
        text = " ".join(str(err).split())
        return f"solo-learn refused the config: {text or 'assertion failed'} ({where})"
    return None


def _solo_command(args: argparse.Namespace) -> None:
    from hydra.errors import HydraException

    try:
        script = find_solo_script(args.solo_kind, args.solo_learn_dir)
        argv = hydra_args(args.solo_kind, args.config_path, args.config_name, args.overrides)
        run_solo_script(script, argv)
        return
    except SoloLearnError as err:
        message = str(err)
    except (HydraException, AssertionError) as err:  # only the script raises these
        found = solo_config_error(err, script)
        if found is None:
            raise
        message = found
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


def add_solo_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``solo-pretrain`` / ``solo-linear`` on the ``solo-mixmask`` parser."""
    helps = {
        "pretrain": "run solo-learn's main_pretrain.py with mixmask/unmix/unmix_mixmask/mocov2/"
        "byol_mixmask/byol_unmix_mixmask registered (configs/solo/<dataset>/<method>.yaml by "
        "default)",
        "linear": "run solo-learn's main_linear.py (offline linear probe of a pretrained checkpoint)",
    }
    for kind, help_text in helps.items():
        pretrain = kind == "pretrain"
        p = sub.add_parser(f"solo-{kind}", help=help_text, description=help_text)
        p.add_argument(
            "--solo-learn-dir",
            default=None,
            help="root of the solo-learn checkout (default: the folder above the installed "
            "`solo` package)",
        )
        p.add_argument(
            "--config-path",
            default=None,
            help="folder of solo-learn hydra configs"
            + (" (default: this repository's configs/solo/<dataset>)" if pretrain else ""),
        )
        p.add_argument(
            "--config-name",
            default="cifar10/mixmask" if pretrain else None,
            required=not pretrain,
            help="NAME[.yaml] in --config-path"
            + (
                ", or DATASET/METHOD under configs/solo (default: cifar10/mixmask)"
                if pretrain
                else ""
            ),
        )
        p.add_argument(
            "overrides",
            nargs="*",
            help="hydra overrides for solo-learn, e.g. data.train_path=/data optimizer.batch_size=64",
        )
        p.set_defaults(func=_solo_command, solo_kind=kind)


def _child_main() -> None:
    """``python -m solo_mixmask.solo <hydra args>``: how DDP child processes re-enter."""
    script = os.environ.get(SCRIPT_ENV)
    if not script:
        print(
            f"error: ${SCRIPT_ENV} is not set; run `solo-mixmask solo-pretrain` or "
            "`solo-mixmask solo-linear` instead",
            file=sys.stderr,
        )
        raise SystemExit(2)
    from solo_mixmask.solo import run_solo_script as run  # the importable module, not __main__

    run(script, sys.argv[1:])


if __name__ == "__main__":
    _child_main()

"""The package's import graph: no cycles, and layers that point one way
(core <- losses <- methods <- engine <- cli; config below everything that uses its specs;
inside the engine callbacks, checkpoints <- run.trainer <- run.pretrain <- run.resume). Read from the source (every ``import``, also those inside functions), so a lazy
import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "solo_mixmask"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: {solo_mixmask modules it imports}}``."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles() -> None:
    assert _cycle(import_graph()) is None, " -> ".join(_cycle(import_graph()) or [])


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _imports_from(prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    graph = import_graph()
    return {m: deps for m, deps in graph.items() if m.startswith(prefixes)}


def _outside(deps: set[str], allowed: tuple[str, ...]) -> set[str]:
    return {d for d in deps if not d.startswith(allowed)}


def test_layers_point_one_way() -> None:
    base = ("solo_mixmask.errors", "solo_mixmask.config.dataset_facts")
    core = ("solo_mixmask.core", "solo_mixmask.utils", *base)
    losses = ("solo_mixmask.losses", *core)
    below_engine = (
        "solo_mixmask.methods",
        "solo_mixmask.config.schema",
        "solo_mixmask.config.augmentation_specs",
        "solo_mixmask.config.engine_specs",
        "solo_mixmask.backbones",
        *losses,
    )
    for module, deps in _imports_from(("solo_mixmask.core", "solo_mixmask.utils")).items():
        assert not _outside(deps, core), (module, _outside(deps, core))
    for module, deps in _imports_from(("solo_mixmask.losses",)).items():
        assert not _outside(deps, losses), (module, _outside(deps, losses))
    for module, deps in _imports_from(("solo_mixmask.methods",)).items():
        assert not _outside(deps, below_engine), (module, _outside(deps, below_engine))
    # the config package turns YAML into specs: it builds nothing that uses them
    config = ("solo_mixmask.config", *core)
    for module, deps in _imports_from(("solo_mixmask.config",)).items():
        assert not _outside(deps, config), (module, _outside(deps, config))
    for module, deps in import_graph().items():
        if module != "solo_mixmask.cli":
            assert "solo_mixmask.cli" not in deps, module
    # the engine (callbacks, checkpoints, the run) never reaches up to the commands
    engine = ("solo_mixmask.callbacks", "solo_mixmask.checkpoints", "solo_mixmask.run")
    commands = ("solo_mixmask.cli", "solo_mixmask.eval")
    for module, deps in _imports_from(engine).items():
        assert not {d for d in deps if d.startswith(commands)}, module
    # a callback is one job, and a checkpoint is read or written the same way by every run:
    # neither builds the run that uses it
    for module, deps in _imports_from(
        ("solo_mixmask.callbacks", "solo_mixmask.checkpoints")
    ).items():
        above = ("solo_mixmask.run.trainer", "solo_mixmask.run.pretrain", "solo_mixmask.run.resume")
        assert not {d for d in deps if d.startswith(above)}, module


#: The package that turns the raw config into typed specs: the only place that reads config keys.
CONFIG_PACKAGE = "config"
CFG_NAMES = {"cfg", "config"}


def raw_config_reads() -> list[str]:
    """``file:line: source`` of each raw config read outside :data:`CONFIG_PACKAGE`:
    ``cfg.<key>``, ``self.cfg.<key>``, ``select(cfg, ...)``, ``cfg[...]`` and ``cfg.get(...)``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == CONFIG_PACKAGE:
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            value = getattr(node, "value", None)
            hit = (
                isinstance(node, ast.Attribute | ast.Subscript)
                and isinstance(value, ast.Name)
                and value.id in CFG_NAMES
                and isinstance(node.ctx, ast.Load)
            ) or (
                isinstance(node, ast.Attribute)
                and isinstance(value, ast.Attribute)
                and isinstance(value.value, ast.Name)
                and (value.value.id, value.attr) == ("self", "cfg")
            )
            hit = hit or (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "select"
            )
            if hit:
                found.append(f"{rel}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


def test_only_the_methods_read_raw_config_keys_outside_the_config_package() -> None:
    reads = raw_config_reads()
    assert len(reads) <= 40, reads
    # the methods read their method_kwargs (solo-learn's contract); nothing else does
    assert [r for r in reads if not r.startswith("methods/")] == []
    assert not [r for r in reads if r.startswith("methods/base.py")]
    assert [r for r in reads if ": cfg.method_kwargs" not in r] == []

"""The one method registry: every method module's ENTRY, and what is read off it."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import solo_mixmask.methods as methods
from solo_mixmask import solo as plugin
from solo_mixmask.methods.registry import MethodEntry
from tests.cli_helpers import ROOT


def _modules_with_entry() -> set[str]:
    found = set()
    for info in pkgutil.iter_modules(methods.__path__):
        module = importlib.import_module(f"solo_mixmask.methods.{info.name}")
        if isinstance(getattr(module, "ENTRY", None), MethodEntry):
            found.add(module.__name__)
    return found


def test_every_module_with_an_entry_is_registered() -> None:
    assert _modules_with_entry() == {module.__name__ for module in methods.MODULES}
    assert list(methods.METHODS) == [module.ENTRY.name for module in methods.MODULES]


@pytest.mark.parametrize("name", list(methods.ENTRIES))
def test_entry_is_consistent(name: str) -> None:
    entry = methods.ENTRIES[name]
    assert entry.name == name
    assert methods.METHODS[name] is entry.method and methods.LOGIC[name] is entry.logic
    assert issubclass(entry.method, entry.logic)
    assert issubclass(entry.method, methods.BaseMomentumMethod)
    assert entry.solo_base in plugin.SOLO_BASES
    # the standalone engine's configs exist for every registered method
    assert (ROOT / "configs" / "pretrain" / "fashion_mnist" / f"{name}.yaml").is_file()
    assert (ROOT / "configs" / "pretrain" / "cifar" / f"{name}.yaml").is_file()


def test_solo_learn_table_is_read_off_the_entries() -> None:
    table = plugin.solo_methods()
    # solo-learn's own mocov2plus and byol are used as they are; MoCo v2 (asymmetric) is added
    assert "mocov2plus" not in table and "byol" not in table
    assert table["mocov2"] == plugin.SoloMethod(
        "mocov2plus", "MoCoV2", {"symmetric": False}, "BaseMomentumMethod"
    )
    assert table["byol_mixmask"].base == "BYOL" and table["mixmask"].base == "BaseMomentumMethod"
    for name, row in table.items():
        entry = methods.ENTRIES[row.logic_key]
        assert name in {solo.name for solo in entry.solo_names}
        assert row.base == entry.solo_base
    assert len({row.class_name for row in table.values()}) == len(table)

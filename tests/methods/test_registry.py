"""The method registry: every method is a row (host + mixers), and what is read off the rows."""

from __future__ import annotations

import pytest

import solo_mixmask.methods as methods
from solo_mixmask import solo as plugin
from solo_mixmask.methods.mixed_branch import MixedBranchLogic
from tests.cli_helpers import ROOT


def _ours(cls: type) -> list[type]:
    return [c for c in cls.__mro__ if c.__module__.startswith("solo_mixmask")]


@pytest.mark.parametrize("name", list(methods.ENTRIES))
def test_a_row_builds_its_host_plus_at_most_one_class(name: str) -> None:
    row = methods.ENTRIES[name]
    cls = methods.METHODS[name]
    host = row.host.engine_class
    assert issubclass(cls, host) and issubclass(cls, methods.BaseMomentumMethod)
    assert len(_ours(cls)) <= len(_ours(host)) + 1
    assert cls.mixer_rows == row.mixers
    for mixer, _ in row.mixers:  # the mixers' keys are the method's defaults
        assert set(mixer.DEFAULTS) <= set(cls.method_defaults)
    assert issubclass(row.host.solo_logic, MixedBranchLogic)
    assert row.host.solo_base in plugin.SOLO_BASES
    # the standalone engine's configs exist for every registered method
    assert (ROOT / "configs" / "pretrain" / "fashion_mnist" / f"{name}.yaml").is_file()
    assert (ROOT / "configs" / "pretrain" / "cifar" / f"{name}.yaml").is_file()


def test_mixed_methods_are_classes_of_the_methods_module_so_that_they_pickle() -> None:
    assert methods.MixMask is methods.METHODS["mixmask"]  # type: ignore[attr-defined]
    assert methods.METHODS["mocov2plus"].__name__ == "MoCoV2Plus"


def test_solo_learn_table_is_read_off_the_rows() -> None:
    table = plugin.solo_methods()
    # solo-learn's own mocov2plus and byol are used as they are; MoCo v2 (asymmetric) is added
    assert "mocov2plus" not in table and "byol" not in table
    assert table["mocov2"] == plugin.SoloMethod(
        "mocov2plus", "MoCoV2", {"symmetric": False}, "BaseMomentumMethod"
    )
    assert table["byol_mixmask"].base == "BYOL" and table["mixmask"].base == "BaseMomentumMethod"
    for name, entry in table.items():
        row = methods.ENTRIES[entry.logic_key]
        assert name in {solo.name for solo in row.solo_names}
        assert entry.base == row.host.solo_base
    assert len({entry.class_name for entry in table.values()}) == len(table)

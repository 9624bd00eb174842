"""solo_mixmask.config.compose: config location, hydra's override grammar, sweeps."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from solo_mixmask.config import compose
from solo_mixmask.errors import ConfigError


def test_configs_root_holds_the_shipped_configs() -> None:
    root = compose.configs_root()
    assert (root / "pretrain" / "fashion_mnist" / "mixmask.yaml").is_file()
    assert (root / "linear" / "small.yaml").is_file()


def test_expand_sweeps_is_the_cartesian_product_in_hydra_order() -> None:
    jobs = compose.expand_sweeps(["method=mocov2plus,mixmask", "seed=1,2", "max_epochs=3"])
    assert jobs == [
        ["method=mocov2plus", "seed=1", "max_epochs=3"],
        ["method=mocov2plus", "seed=2", "max_epochs=3"],
        ["method=mixmask", "seed=1", "max_epochs=3"],
        ["method=mixmask", "seed=2", "max_epochs=3"],
    ]
    assert compose.expand_sweeps(["seed=1"]) == [["seed=1"]]
    assert compose.expand_sweeps([]) == [[]]


def test_a_sweep_without_multirun_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"seed='1,2'.*use -m"):
        compose.compose_config(None, "mixmask", ["seed=1,2"])


def test_apply_overrides_reads_values_as_hydra_does() -> None:
    cfg = OmegaConf.create({"a": {"b": 1}, "flag": True})
    out = compose.apply_overrides(cfg, ["a.b=2", "+a.c=[1,2]", "flag=no", "~a.b", "d.e=x"])
    assert out.a.b is None  # ~key: null
    assert list(out.a.c) == [1, 2]
    assert out.flag == "no"  # a string: the boolean check refuses it, it is never True
    assert out.d.e == "x"
    assert cfg.a.b == 1  # the input is not changed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["=3"], "malformed"), (["data.dataset"], "key=value"), (["a=[1,"], "key=value")],
)
def test_malformed_overrides_are_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compose.parse_overrides(overrides)


def test_config_groups_lists_each_group_and_its_options() -> None:
    folder, name = compose.config_folder(None, "cifar/mocov2plus")
    assert name == "mocov2plus" and folder.name == "cifar"
    groups = compose.config_groups(folder)
    assert groups["augmentations"] == ["asymmetric", "aug_plus"]

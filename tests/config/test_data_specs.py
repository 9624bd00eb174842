"""Tests of solo_mixmask/config/data_specs.py: the one parse of the data keys (defaults, one bad value per
key family naming the key), and that the data layer reads no config itself (by AST)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from solo_mixmask.config.data_specs import DaliSpec, DataSpec, data_spec
from solo_mixmask.config.schema import BASE_DEFAULTS, fill_defaults
from solo_mixmask.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[2] / "solo_mixmask"


def _cfg(**keys: Any):
    """The smallest config data_spec reads, with dotted ``keys`` set (``data__x`` = data.x)."""
    cfg = OmegaConf.create(
        {
            "data": {"dataset": "cifar10"},
            "optimizer": {"batch_size": 8},
            "augmentations": [{"crop_size": 32, "num_crops": 2}],
        }
    )
    for key, value in keys.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, force_add=True)
    return cfg


# --------------------------------------------------------------------------- the data layer


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_no_data_module_reads_a_config():
    """Every module under solo_mixmask/data/ receives a DataSpec: it imports neither omegaconf
    nor solo_mixmask.config.schema, and names no DictConfig (an annotation or an isinstance)."""
    modules = sorted((PACKAGE / "data").glob("*.py"))
    assert len(modules) >= 6
    for path in modules:
        tree = ast.parse(path.read_text())
        bad = {m for m in _imports(tree) if m.split(".")[0] == "omegaconf"}
        bad |= {m for m in _imports(tree) if m == "solo_mixmask.config.schema"}
        assert not bad, (path.name, bad)
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not names & {"DictConfig", "ListConfig", "OmegaConf"}, path.name


def test_data_specs_stays_below_torch_and_the_engine():
    tree = ast.parse((PACKAGE / "config" / "data_specs.py").read_text())
    allowed = (
        "__future__",
        "dataclasses",
        "typing",
        "omegaconf",
        "solo_mixmask.config.augmentation_specs",
        "solo_mixmask.config.schema",
        "solo_mixmask.config.dataset_facts",
        "solo_mixmask.errors",
    )
    assert _imports(tree) <= set(allowed), _imports(tree) - set(allowed)


# --------------------------------------------------------------------------- defaults


def test_defaults_of_absent_keys():
    spec = data_spec(_cfg())
    assert isinstance(spec, DataSpec)
    assert (spec.dataset, spec.format, spec.train_path, spec.val_path) == (
        "cifar10",
        "image_folder",
        None,
        None,
    )
    assert (spec.download, spec.no_labels, spec.strict, spec.scan_images) == (False,) * 4
    assert (spec.num_classes, spec.batch_size, spec.num_workers, spec.seed) == (None, 8, 2, 5)
    assert (spec.train_subset, spec.val_subset, spec.knn_train_subset) == (None, None, 10_000)
    assert spec.dali == DaliSpec("auto")
    assert spec.compile_augmentations is None  # eager augmentations
    assert [(c.crop_size, c.num_crops) for c in spec.crops] == [(32, 2)]
    assert spec.crops[0].mean == (0.4914, 0.4822, 0.4465)  # CIFAR-10's, from dataset_facts


def test_compiled_augmentations_carry_the_compile_backend():
    given = {"performance": {"compile_augmentations": True}}
    assert data_spec(_cfg(**given)).compile_augmentations == "inductor"
    given["performance"]["compile_backend"] = "aot_eager"
    assert data_spec(_cfg(**given)).compile_augmentations == "aot_eager"


def test_base_defaults_give_the_same_spec_as_absent_keys():
    filled = fill_defaults(OmegaConf.create({"data": {"dataset": "cifar10"}}), BASE_DEFAULTS)
    spec = data_spec(filled)
    assert (spec.format, spec.num_workers, spec.seed, spec.knn_train_subset) == (
        "image_folder",
        2,
        5,
        10_000,
    )
    assert spec.batch_size == 256 and spec.crops == data_spec(_cfg()).crops


def test_given_values_and_nulls():
    spec = data_spec(
        _cfg(
            data__format="memory",
            data__train_path="/a",
            data__val_path="/b",
            data__no_labels=True,
            data__num_classes=7,
            data__num_workers=None,  # null: the default
            data__train_subset=100,
            data__knn_train_subset=None,  # an explicit null: every image, not 10,000
            data__dali_device="cpu",
            seed=11,
            devices=4,
            num_nodes=2,
        )
    )
    assert (spec.format, spec.train_path, spec.val_path, spec.no_labels) == (
        "memory",
        "/a",
        "/b",
        True,
    )
    assert (spec.num_classes, spec.num_workers, spec.seed) == (7, 2, 11)
    assert (spec.train_subset, spec.knn_train_subset) == (100, None)
    assert spec.dali == DaliSpec("cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 3  # type: ignore[misc]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("data.dataset", "mnist", "one of ['fashion_mnist'"),
        ("data.format", "memmory", "one of image_folder, dali, memory (did you mean 'memory'?)"),
        ("data.train_path", 5, "a folder path or null"),
        ("data.download", "no", "true or false"),
        ("data.scan_images", 1, "true or false"),
        ("data.num_classes", 0, "an int >= 1 or null"),
        ("data.num_workers", -1, "an integer in [0, inf)"),
        ("seed", "five", "an integer in [0, 4294967295]"),
        ("optimizer.batch_size", 1, "an integer >= 2"),
        ("data.train_subset", 0, "null or an int >= 1"),
        ("data.knn_train_subset", "all", "null or an int >= 1"),
        ("data.dali_device", "tpu", "one of auto, gpu, cpu"),
        ("augmentations[0].crop_size", 4, "an int >= 8"),
        ("data.std", [0.2, 0.0, 0.2], "a list of 3 positive floats"),
    ],
)
def test_a_bad_value_names_its_key(key, value, allowed):
    if key.startswith("augmentations"):
        cfg = _cfg(augmentations=[{"crop_size": value}])
    else:
        cfg = _cfg(**{key.replace(".", "__"): value})
    with pytest.raises(ConfigError) as info:
        data_spec(cfg)
    assert info.value.key == key and info.value.value == value
    assert str(info.value).startswith(f"{key}={value!r} is not allowed: expected {allowed}")


def test_required_keys():
    with pytest.raises(ConfigError, match="data.dataset=None"):
        data_spec(OmegaConf.create({"optimizer": {"batch_size": 8}}))
    with pytest.raises(ConfigError, match="optimizer.batch_size=None"):
        data_spec(OmegaConf.create({"data": {"dataset": "cifar10"}, "augmentations": [{}]}))
    with pytest.raises(ConfigError, match="augmentations=None"):
        data_spec(
            OmegaConf.create({"data": {"dataset": "cifar10"}, "optimizer": {"batch_size": 8}})
        )

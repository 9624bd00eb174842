"""Issue 6, part 1 (in-process): start-up validation in solo_mixmask/config.py and the CLI's
error path: mandatory ``???`` values, hydra ``_target_`` keys, typos, boundaries, one-line errors.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from solo_mixmask import cli
from solo_mixmask.config import (
    BASE_DEFAULTS,
    check_mandatory_values,
    check_no_instantiation,
    fill_defaults,
    validate_base,
)
from solo_mixmask.errors import ConfigError, DataError
from solo_mixmask.methods import METHODS
from tests.cli_helpers import TINY
from tests.conftest import tiny_cfg

PACKAGE = Path(cli.__file__).resolve().parent


def _filled(**data):
    cfg = OmegaConf.create({"data": data})
    return fill_defaults(cfg, BASE_DEFAULTS)


def test_fill_defaults_keeps_mandatory_values():
    cfg = _filled(dataset="imagenet", train_path="???")
    assert OmegaConf.missing_keys(cfg) == {"data.train_path"}
    assert cfg.data.num_workers == BASE_DEFAULTS["data"]["num_workers"]  # others filled


def test_mandatory_value_names_the_first_key_and_the_others():
    cfg = _filled(dataset="imagenet", val_path="???", train_path="???")
    with pytest.raises(ConfigError) as info:
        check_mandatory_values(cfg)
    err = info.value
    assert (err.key, err.value) == ("data.train_path", "???")
    assert str(err) == (
        "data.train_path='???' is not allowed: expected a value: this config leaves it "
        "mandatory, pass data.train_path=...; also unset: data.val_path"
    )


@pytest.mark.parametrize(
    ("tree", "key"),
    [
        ({"_target_": "os.system"}, "_target_"),
        ({"backbone": {"name": "resnet18", "_target_": "os.system"}}, "backbone._target_"),
        ({"augmentations": [{"crop_size": 32}, {"_partial_": True}]}, "augmentations[1]._partial_"),
        ({"method_kwargs": {"head": {"_target_": "torch.nn.Linear"}}}, "method_kwargs.head._target_"),
    ],
)
def test_instantiation_keys_are_rejected_anywhere(tree, key):
    with pytest.raises(ConfigError) as info:
        check_no_instantiation(OmegaConf.create(tree))
    assert info.value.key == key
    assert "never instantiates classes" in str(info.value)


def test_instantiation_check_does_not_resolve_interpolations():
    # An interpolation is not evaluated by the check (a missing env var must not fail here).
    check_no_instantiation(OmegaConf.create({"a": "${oc.env:SOLO_MIXMASK_NOT_SET_123}"}))


def test_package_never_calls_hydra_instantiate():
    # The guarantee behind the check above: no code path turns a config into arbitrary objects.
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if re.search(r"from hydra\.utils import|hydra\.utils\.\w+\s*\(|\binstantiate\s*\(",
                     p.read_text())
    ]
    assert offenders == []


def test_target_key_through_the_cli(capsys):
    code = cli.main(["pretrain", *TINY, "backbone._target_=os.system"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "error: backbone._target_='os.system' is not allowed: expected no hydra instantiation "
        "keys (_target_, _partial_, ...): solo-mixmask never instantiates classes named in a "
        "config; remove the key"
    )


def test_top_level_typo_suggests_the_key(capsys):
    code = cli.main(["pretrain", *TINY, "+optimiser.lr=0.1"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert line.startswith("error: optimiser={'lr': 0.1} is not allowed: expected no such key")
    assert line.endswith("(did you mean 'optimizer'?)")


def test_bad_override_syntax_is_a_config_error(capsys):
    code = cli.main(["pretrain", "augmentations=[{crop_size:16}]"])  # a list for a hydra group
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: overrides=['augmentations=[{crop_size:16}]'] is not allowed")


@pytest.mark.parametrize(("value", "ok"), [(0.0, False), (1.0, False), (1e-6, True), (0.999, True)])
def test_mask_ratio_is_an_open_interval(value, ok):
    cfg = tiny_cfg("mixmask", method_kwargs__mask_ratio=value)
    if ok:
        METHODS["mixmask"].add_and_assert_specific_cfg(cfg)
    else:
        with pytest.raises(ConfigError, match=r"expected a number in \(0, 1\)"):
            METHODS["mixmask"].add_and_assert_specific_cfg(cfg)


@pytest.mark.parametrize(("grid", "ok"), [(0, False), (1, True), (16, True), (17, False)])
def test_grid_size_between_1_and_the_crop(grid, ok):
    cfg = tiny_cfg("mixmask", method_kwargs__grid_size=grid)  # 16-pixel crops
    if ok:
        METHODS["mixmask"].add_and_assert_specific_cfg(cfg)
    else:
        with pytest.raises(ConfigError, match=r"an integer in \[1, 16\]"):
            METHODS["mixmask"].add_and_assert_specific_cfg(cfg)


@pytest.mark.parametrize("value", [1, 0, True, 2.5])
def test_batch_size_needs_a_partner(value):
    cfg = fill_defaults(tiny_cfg("mocov2plus", optimizer__batch_size=value), BASE_DEFAULTS)
    with pytest.raises(ConfigError) as info:
        validate_base(cfg)
    assert info.value.key == "optimizer.batch_size"
    assert "partner from the same per-device batch" in str(info.value)


@pytest.mark.parametrize(("value", "ok"), [(None, True), (1, True), (500, True), (0, False),
                                           (2.5, False)])
def test_every_n_steps(value, ok):
    cfg = fill_defaults(tiny_cfg("byol", checkpoint__every_n_steps=value), BASE_DEFAULTS)
    if ok:
        validate_base(cfg)
    else:
        with pytest.raises(ConfigError, match=r"checkpoint\.every_n_steps="):
            validate_base(cfg)


def test_worker_error_is_reduced_to_its_own_message():
    # What DataLoader re-raises in the main process for an error inside a worker.
    wrapped = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        "call last):\n  File \"x.py\", line 1, in f\n    raise DataError(...)\n"
        "solo_mixmask.errors.DataError: cannot decode image file '/d/b/x.jpg': OSError: bad\n"
    )
    assert cli.one_line(wrapped) == "cannot decode image file '/d/b/x.jpg': OSError: bad"
    assert cli.one_line(ConfigError("a", 1, "b\n c")) == "a=1 is not allowed: expected b c"

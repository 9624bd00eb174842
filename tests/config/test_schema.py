"""Issue 6, part 1 (in-process): start-up validation in solo_mixmask/config/schema.py and the CLI's
error path: mandatory ``???`` values, hydra ``_target_`` keys, typos, boundaries, one-line errors.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from solo_mixmask import cli
from solo_mixmask.config.compose import compose_config, configs_root
from solo_mixmask.config.engine_specs import engine_spec, scheduler_spec
from solo_mixmask.config.schema import (
    BASE_DEFAULTS,
    check_mandatory_values,
    check_no_instantiation,
    fill_defaults,
    validate_base,
)
from solo_mixmask.errors import ConfigError, DataError
from solo_mixmask.methods import METHODS
from tests.cli_helpers import TINY, cli_error_line
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
        (
            {"method_kwargs": {"head": {"_target_": "torch.nn.Linear"}}},
            "method_kwargs.head._target_",
        ),
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
        if re.search(
            r"from hydra\.utils import|hydra\.utils\.\w+\s*\(|\binstantiate\s*\(", p.read_text()
        )
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


@pytest.mark.parametrize("method", ["mocov2plus", "mixmask", "unmix_mixmask", "byol_mixmask"])
@pytest.mark.parametrize("crops", [[1], [2, 1], [3]])
def test_two_views_in_all(method, crops):
    # a third view was forwarded by both networks, left out of the loss, and the mixed branch
    # scored against its keys instead of the second view's; one view was an IndexError
    pipelines = [{"crop_size": 16, "num_crops": n} for n in crops]
    cfg = tiny_cfg(method, augmentations=pipelines)
    with pytest.raises(ConfigError) as info:
        METHODS[method].add_and_assert_specific_cfg(cfg)
    assert (info.value.key, info.value.value) == ("augmentations[*].num_crops", crops)
    assert "2 views per image" in str(info.value)
    two = [{"crop_size": 16, "num_crops": 1}, {"crop_size": 16, "num_crops": 1}]
    METHODS[method].add_and_assert_specific_cfg(tiny_cfg(method, augmentations=two))


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


@pytest.mark.parametrize(
    ("value", "ok"), [(None, True), (1, True), (500, True), (0, False), (2.5, False)]
)
def test_every_n_steps(value, ok):
    cfg = fill_defaults(tiny_cfg("byol", checkpoint__every_n_steps=value), BASE_DEFAULTS)
    if ok:
        validate_base(cfg)
    else:
        with pytest.raises(ConfigError, match=r"checkpoint\.every_n_steps="):
            validate_base(cfg)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("optimizer.classifier_lr", True, r"a number in \[0, inf\)"),
        ("optimizer.classifier_lr", -5, r"a number in \[0, inf\)"),
        ("optimizer.classifier_lr", None, r"a number in \[0, inf\)"),
        ("scheduler.min_lr", True, r"a number in \[0, inf\)"),
        ("scheduler.warmup_start_lr", -1, r"a number in \[0, inf\)"),
        ("scheduler.gamma", 10, r"a number in \(0, 1\]"),
        ("scheduler.gamma", 0, r"a number in \(0, 1\]"),
        ("scheduler.lr_decay_steps", [1.9, 2.99], r"an integer in \[1, inf\)"),
        ("scheduler.lr_decay_steps", 30, "a non-empty list of epochs"),
        ("momentum.classifier", True, "no momentum classifier"),
    ],
)
def test_learning_rates_and_schedule_numbers_are_checked(key, value, allowed):
    # each was read as given: classifier_lr=true trained the classifier at lr 1.0 x scale,
    # min_lr=true ended the cosine at 1.0, lr_decay_steps [1.9, 2.99] decayed at epochs 1, 2,
    # momentum.classifier=true was accepted and no momentum classifier was trained
    overrides = {key.replace(".", "__"): value}
    if key.startswith("scheduler.gamma") or key.startswith("scheduler.lr_decay"):
        overrides["scheduler__name"] = "step"
    cfg = fill_defaults(tiny_cfg("mixmask", **overrides), BASE_DEFAULTS)
    with pytest.raises(ConfigError, match=allowed) as info:
        validate_base(cfg)
    assert info.value.key.startswith(key)


def test_step_schedule_numbers_and_zero_classifier_lr_pass():
    cfg = tiny_cfg(
        "mixmask",
        scheduler__name="step",
        scheduler__lr_decay_steps=[2, 3],
        scheduler__gamma=0.5,
        optimizer__classifier_lr=0.0,
    )
    validate_base(fill_defaults(cfg, BASE_DEFAULTS))


def test_null_optimizer_kwargs_mean_none_not_the_defaults():
    # solo-learn reads optimizer.kwargs: null as no keyword arguments; the defaults' filling
    # used to turn it into {momentum: 0.9}
    cfg = METHODS["mixmask"].add_and_assert_specific_cfg(
        tiny_cfg("mixmask", optimizer__kwargs=None)
    )
    assert cfg.optimizer.kwargs is None
    assert engine_spec(cfg).optimizer.kwargs == {}
    given = tiny_cfg("mixmask", optimizer__kwargs={"nesterov": True})  # a dict is still filled
    filled = METHODS["mixmask"].add_and_assert_specific_cfg(given)
    assert dict(filled.optimizer.kwargs) == {"nesterov": True, "momentum": 0.9}


def test_worker_error_is_reduced_to_its_own_message():
    # What DataLoader re-raises in the main process for an error inside a worker.
    wrapped = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 1, in f\n    raise DataError(...)\n'
        "solo_mixmask.errors.DataError: cannot decode image file '/d/b/x.jpg': OSError: bad\n"
    )
    assert cli.one_line(wrapped) == "cannot decode image file '/d/b/x.jpg': OSError: bad"
    assert cli.one_line(ConfigError("a", 1, "b\n c")) == "a=1 is not allowed: expected b c"


# --------------------------------------------------------------------------- booleans
# bool("no") is True: every boolean key takes true/false only (YAML / hydra booleans).

#: Boolean keys checked by validate_base (defaults, Trainer flags and the data layer's keys).
BOOL_KEYS = [
    "data.download",
    "data.no_labels",
    "data.strict",
    "data.scan_images",
    "checkpoint.enabled",
    "knn_eval.enabled",
    "performance.channels_last",
    "performance.compile",
    "performance.ema_foreach_lerp",
    "performance.batch_online_forwards",
    "performance.compile_augmentations",
    "wandb.enabled",
    "wandb.offline",
    "logging.csv",
    "logging.tensorboard",
    "progress_bar",
    "sync_batchnorm",
    "momentum.classifier",
    "backbone.cifar_stem",
    "enable_model_summary",  # a Lightning Trainer flag passed through
]


def _base(method: str = "mocov2plus", **overrides):
    return fill_defaults(tiny_cfg(method, **overrides), BASE_DEFAULTS)


@pytest.mark.parametrize("value", ["no", "maybe", 1])
@pytest.mark.parametrize("key", BOOL_KEYS)
def test_boolean_keys_take_only_true_or_false(key, value):
    with pytest.raises(ConfigError) as info:
        validate_base(_base(**{key.replace(".", "__"): value}))
    assert (info.value.key, info.value.value) == (key, value)
    assert "true or false" in str(info.value)


@pytest.mark.parametrize("key", BOOL_KEYS)
def test_boolean_keys_accept_false(key):
    validate_base(_base(**{key.replace(".", "__"): False}))


def test_eval_commands_check_booleans_too(tmp_path):
    from solo_mixmask.checkpoints.backbone import load_backbone
    from solo_mixmask.eval.features import eval_config
    from tests.eval.helpers import method_checkpoint

    path, _ = method_checkpoint(tmp_path / "a.ckpt")
    lb = load_backbone(path)
    assert eval_config(lb, path, ["data.download=false"]).data.download is False
    with pytest.raises(ConfigError, match=r"data\.download='maybe' .*true or false"):
        eval_config(lb, path, ["data.download=maybe"])  # (YAML 1.1 reads "no" as false here)


def test_cifar_stem_null_means_auto():
    validate_base(_base(backbone__cifar_stem=None))
    with pytest.raises(ConfigError, match=r"backbone\.cifar_stem='auto'.*true or false or null"):
        validate_base(_base(backbone__cifar_stem="auto"))


@pytest.mark.parametrize(
    ("method", "key"),
    [
        ("mocov2plus", "symmetric"),
        ("unmix", "symmetric"),
        ("mixmask", "per_sample_masks"),
        ("unmix_mixmask", "per_sample_masks"),
    ],
)
@pytest.mark.parametrize("value", ["no", "yes"])
def test_method_booleans_take_only_true_or_false(method, key, value):
    cfg = tiny_cfg(method, **{f"method_kwargs__{key}": value})
    with pytest.raises(ConfigError) as info:
        METHODS[method].add_and_assert_specific_cfg(cfg)
    assert (info.value.key, info.value.value) == (f"method_kwargs.{key}", value)
    assert "true or false" in str(info.value)


# --------------------------------------------------------------------------- start-up refusals
# Each of these once ended in a traceback (or after the run folder was made).


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("precision", "bogus", "bf16-mixed"),
        ("strategy", "bogus", "ddp"),
        ("accelerator", "tpu2", "cpu"),
        ("accelerator", "CPU", "did you mean 'cpu'?"),  # Lightning refused it with a traceback
        ("seed", "abc", "an integer in [0, 4294967295]"),
        ("seed", -1, "an integer in [0, 4294967295]"),
    ],
)
def test_trainer_values_are_checked_at_start_up(key, value, fragment):
    with pytest.raises(ConfigError) as info:
        validate_base(_base(**{key: value}))
    assert (info.value.key, info.value.value) == (key, value)
    assert fragment in str(info.value)


@pytest.mark.parametrize("value", ["auto", "32-true", "16-mixed", "bf16-mixed", 32, "32"])
def test_known_precisions_pass(value):
    validate_base(_base(precision=value))


@pytest.mark.parametrize(
    ("key", "instead"),
    [
        ("callbacks", "checkpoint.*"),
        ("logger", "logging.csv"),
        ("default_root_dir", "checkpoint.dir"),
        ("enable_checkpointing", "checkpoint.enabled"),
        ("enable_progress_bar", "progress_bar"),
    ],
)
def test_trainer_arguments_set_by_solo_mixmask_are_refused(key, instead):
    with pytest.raises(ConfigError) as info:
        validate_base(_base(**{key: "x"}))
    assert info.value.key == key
    assert "solo-mixmask sets" in str(info.value) and instead in str(info.value)


def test_crop_size_is_named_before_the_grid_check():
    cfg = tiny_cfg("mixmask", augmentations=[{"crop_size": 0, "num_crops": 2}])
    with pytest.raises(ConfigError) as info:
        METHODS["mixmask"].add_and_assert_specific_cfg(cfg)
    assert (info.value.key, info.value.value) == ("augmentations[0].crop_size", 0)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"channels": [0, 0, 0, 0]}, "backbone.kwargs.channels"),
        ({"channels": [8, -1, 32, 64]}, "backbone.kwargs.channels"),
        ({"channels": [8, 16, 32, 64], "stem_type": "deep", "stem_width": 0}, "backbone.kwargs"),
    ],
)
def test_backbone_without_channels_is_refused_when_built(kwargs, key):
    from solo_mixmask.backbones import build_backbone

    with pytest.raises(ConfigError) as info:
        build_backbone("resnet18", kwargs)
    assert info.value.key == key


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["strategy=bogus"], ["strategy='bogus'", "ddp"]),
        (["seed=abc"], ["seed='abc'", "an integer"]),
        (["augmentations=[]"], ["augmentations=[]", "aug_plus"]),
        (["logger=x"], ["logger='x'", "solo-mixmask sets", "logging."]),
        (["default_root_dir=/tmp/x"], ["default_root_dir='/tmp/x'", "checkpoint.dir"]),
        (["enable_checkpointing=false"], ["enable_checkpointing=False", "checkpoint.enabled"]),
        (["=3"], ["'=3'", "malformed"]),
        # issue 18: once trained until the first NaN loss (inf passed the "(0, inf)" check)
        (["optimizer.lr=inf"], ["optimizer.lr=inf", "(0, inf)"]),
        # issue 18: optimizer.kwargs were passed to the optimiser unchecked
        (["optimizer.kwargs.momentum=2"], ["optimizer.kwargs.momentum=2", "[0, 1)"]),
        (
            ["+optimizer.kwargs.nesterovv=true"],  # once a TypeError traceback
            ["optimizer.kwargs.nesterovv=True", "no such key", "did you mean 'nesterov'"],
        ),
        (
            ["optimizer.kwargs.nesterov=true", "optimizer.kwargs.momentum=0"],
            ["optimizer.kwargs.nesterov=True", "momentum > 0"],
        ),
        (
            ["optimizer.name=lars", "+optimizer.kwargs.etaa=0.02"],
            ["optimizer.kwargs.etaa=0.02", "no such key", "did you mean 'eta'"],
        ),
        (  # solo-learn's and timm's name of one argument
            [
                "optimizer.name=lars",
                "+optimizer.kwargs.eta=0.02",
                "+optimizer.kwargs.trust_coeff=0.1",
            ],
            ["optimizer.kwargs.eta=0.02", "trust_coeff", "keep one"],
        ),
        (
            ["optimizer.name=adamw", "+optimizer.kwargs.betas=[0.9,1.5]"],
            ["optimizer.kwargs.betas=[0.9, 1.5]", "two numbers in [0, 1)"],
        ),
        # issue 18: once IndexError / AttributeError (layer3) tracebacks from timm
        (["backbone.kwargs.channels=[]"], ["backbone.kwargs.channels=[]", "4 positive integers"]),
        (["backbone.kwargs.channels=[8,16]"], ["channels=[8, 16]", "4 positive integers"]),
        # max_steps=true trained 1 step, 2.5 trained 3, 0 none (no accuracy), each with exit 0;
        # a string was a traceback
        *(
            ([f"+max_steps={v}"], [f"max_steps={shown}", "positive integer", "-1 (no limit)"])
            for v, shown in [("true", "True"), ("2.5", "2.5"), ("0", "0"), ("abc", "'abc'")]
        ),
        # ran with exit 0 and reported the k-NN of one / two validation batches
        (["+fast_dev_run=true"], ["fast_dev_run=True", "max_steps=N"]),
        (["+limit_val_batches=2"], ["limit_val_batches=2", "data.val_subset"]),
        # 8 batches an epoch: once a traceback inside fit, and a run folder no run could reuse
        (["+val_check_interval=20"], ["val_check_interval=20", "an integer <= 8"]),
        (
            ["+val_check_interval=5", "+limit_train_batches=4"],
            ["val_check_interval=5", "an integer <= 4"],
        ),
        # issue 18: once a RuntimeError from the allocation of a 512 TB queue
        (
            ["method_kwargs.queue_size=1000000000000"],
            ["method_kwargs.queue_size=1000000000000", "fits in memory", "TB", "memory ("],
        ),
        pytest.param(
            ["wandb.enabled=true"],
            ["wandb.enabled=True", "pip install wandb"],
            marks=pytest.mark.skipif(_installed("wandb"), reason="wandb is installed"),
        ),
        pytest.param(
            ["logging.tensorboard=true"],
            ["logging.tensorboard=True", "pip install tensorboard"],
            marks=pytest.mark.skipif(
                _installed("tensorboard") or _installed("tensorboardX"),
                reason="tensorboard is installed",
            ),
        ),
    ],
)
def test_start_up_refusals_through_the_cli(capsys, tmp_path, overrides, fragments):
    line = cli_error_line(capsys, tmp_path / "runs", ["pretrain", *TINY, *overrides])
    for fragment in fragments:
        assert fragment in line, line


# Lightning Trainer arguments passed through from the config. Each refused value below either
# ran with exit 0 and a summary that reported something else than it says (limit_val_batches=2:
# the k-NN of two validation batches; fast_dev_run: of one; limit_train_batches=0: no training,
# no accuracy; min_epochs=abc: ignored) or ended in a traceback (accumulate_grad_batches=0,
# check_val_every_n_epoch=0, val_check_interval=0: ZeroDivisionError; gradient_clip_val=abc).
@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("fast_dev_run", True, "one batch"),
        ("fast_dev_run", 3, "max_steps=N"),
        ("overfit_batches", 2, "data.train_subset"),
        ("overfit_batches", 0.5, "data.train_subset"),
        ("barebones", True, "summary.json"),
        ("limit_val_batches", 2, "data.val_subset"),
        ("limit_val_batches", 1, "data.val_subset"),  # an int: one batch
        ("limit_val_batches", 0.5, "data.val_subset"),
        ("limit_val_batches", 0, "data.val_subset"),
        ("limit_val_batches", True, "data.val_subset"),
        ("min_epochs", 1, "SIGTERM"),
        ("min_epochs", "abc", "SIGTERM"),
        ("min_steps", 10, "SIGTERM"),
        ("accumulate_grad_batches", 0, "an integer in [1, inf)"),
        ("accumulate_grad_batches", 1.5, "an integer in [1, inf)"),
        ("accumulate_grad_batches", None, "an integer in [1, inf)"),
        ("check_val_every_n_epoch", 0, "an integer in [1, inf) or null"),
        ("log_every_n_steps", 0, "an integer in [1, inf) or null"),
        ("num_sanity_val_steps", -2, "an integer in [-1, inf) or null"),
        ("reload_dataloaders_every_n_epochs", -1, "an integer in [0, inf)"),
        ("gradient_clip_val", "abc", "a number in [0, inf) or null"),
        ("gradient_clip_val", -1.0, "a number in [0, inf) or null"),
        ("limit_train_batches", 0, "a fraction of an epoch's batches"),
        ("limit_train_batches", 1.5, "a fraction of an epoch's batches"),
        ("limit_train_batches", "abc", "a number of batches"),
        ("limit_train_batches", True, "a number of batches"),
        ("val_check_interval", 0, "a fraction of an epoch's batches"),
        ("val_check_interval", 0.0, "a fraction of an epoch's batches"),
        ("deterministic", "abc", "'warn'"),
        ("max_steps", 0, "-1 (no limit)"),
    ],
)
def test_passed_through_trainer_arguments_are_checked(key, value, fragment):
    with pytest.raises(ConfigError) as err:
        validate_base(_base(**{key: value}))
    assert err.value.key == key
    assert fragment in err.value.allowed, err.value.allowed


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("fast_dev_run", False),
        ("fast_dev_run", 0),
        ("overfit_batches", 0.0),
        ("barebones", False),
        ("limit_val_batches", 1.0),
        ("limit_val_batches", None),
        ("min_epochs", None),
        ("accumulate_grad_batches", 2),
        ("check_val_every_n_epoch", None),
        ("check_val_every_n_epoch", 5),
        ("num_sanity_val_steps", -1),
        ("gradient_clip_val", 0.5),
        ("limit_train_batches", 0.5),
        ("limit_train_batches", 1.0),
        ("limit_train_batches", 3),  # batches per epoch
        ("val_check_interval", 0.25),
        ("val_check_interval", 100),
        ("deterministic", "warn"),
        ("max_steps", -1),
    ],
)
def test_passed_through_trainer_arguments_that_are_accepted(key, value):
    validate_base(_base(**{key: value}))


def test_val_check_interval_duration_only_where_lightning_parses_one():
    """Lightning 2.6 reads "DD:HH:MM:SS"; 2.1.2 took the string for a number (a TypeError)."""
    import inspect
    import typing

    import lightning

    annotation = inspect.signature(lightning.Trainer).parameters["val_check_interval"].annotation
    cfg = _base(val_check_interval="00:00:10:00")
    if str in typing.get_args(annotation):
        validate_base(cfg)
    else:
        with pytest.raises(ConfigError, match="a fraction of an epoch's batches"):
            validate_base(cfg)


def test_unavailable_accelerator_names_the_key(capsys, tmp_path):
    import torch

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("a GPU is available here")
    line = cli_error_line(capsys, tmp_path / "runs", ["pretrain", *TINY, "accelerator=gpu"])
    assert line.startswith("error: accelerator='gpu' is not allowed"), line
    assert "cpu" in line


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("name: x\ndata: {dataset: fashion_mnist\n", ["valid YAML", "bad.yaml", "line 2"]),
        (
            'name: !!python/object/apply:builtins.print ["hi"]\nmethod: mixmask\n',
            ["python tag", "bad.yaml", "!!python/object/apply:builtins.print"],
        ),
    ],
)
def test_unreadable_config_file_is_one_error_line(capsys, tmp_path, text, fragments):
    (tmp_path / "bad.yaml").write_text(text)
    args = ["pretrain", "--config-path", str(tmp_path), "--config-name", "bad", *TINY]
    line = cli_error_line(capsys, tmp_path / "runs", args)
    for fragment in fragments:
        assert fragment in line, line


# --------------------------------------------------------------------------- warnings
# Settings that run but make no sense: one warning each at start-up.


def _config_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize(("ratio", "cells"), [(0.01, "0 of 16"), (0.99, "16 of 16")])
def test_mask_ratio_that_rounds_to_no_or_every_cell_warns(ratio, cells):
    cfg = tiny_cfg("mixmask", method_kwargs__mask_ratio=ratio)  # grid 4: 16 cells
    with pytest.warns(UserWarning, match=rf"method_kwargs\.mask_ratio={ratio}.*{cells}"):
        METHODS["mixmask"].add_and_assert_specific_cfg(cfg)


def test_tiny_temperature_warns():
    cfg = tiny_cfg("mocov2plus", method_kwargs__temperature=1e-7)
    with pytest.warns(UserWarning, match=r"method_kwargs\.temperature=1e-07"):
        METHODS["mocov2plus"].add_and_assert_specific_cfg(cfg)


def test_warmup_longer_than_training_warns():
    with pytest.warns(UserWarning, match=r"scheduler\.warmup_epochs=3 .*max_epochs=1"):
        validate_base(_base(scheduler__warmup_epochs=3))


@pytest.mark.parametrize(
    ("name", "settings", "expected"),
    [
        # a warm-up with cosine ran from the full rate at step 0, with no word
        (
            "cosine",
            {"warmup_epochs": 2},
            "scheduler.warmup_epochs=2 has no effect with "
            "scheduler.name=cosine (read by warmup_cosine only)",
        ),
        ("step", {"lr_decay_steps": [2], "warmup_start_lr": 0.001}, "scheduler.warmup_start_lr"),
        ("step", {"lr_decay_steps": [2], "min_lr": 0.001}, "scheduler.min_lr=0.001"),
        ("warmup_cosine", {"lr_decay_steps": [2], "gamma": 0.5}, "scheduler.lr_decay_steps=[2]"),
        ("warmup_cosine", {"gamma": 0.5}, "scheduler.gamma=0.5 has no effect"),
        ("none", {"min_lr": 0.001}, "read by warmup_cosine and cosine only"),
    ],
)
def test_scheduler_settings_the_schedule_does_not_read_warn(name, settings, expected):
    overrides = {f"scheduler__{key}": value for key, value in settings.items()}
    with pytest.warns(UserWarning, match=re.escape(expected)):
        validate_base(_base(scheduler__name=name, **overrides))


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # scheduler.name=step alone once ran a 20-epoch run at a constant rate, with no word
        (
            None,
            "=[60, 80] (scheduler.name=step's default) has milestones at or beyond "
            "max_epochs=3 (epochs 60, 80): the rate never decays",
        ),
        ([3, 1], "=[3, 1] has milestones at or beyond max_epochs=3 (epochs 3): those decays"),
    ],
)
def test_step_milestones_training_never_reaches_warn(steps, expected):
    extra = {} if steps is None else {"scheduler__lr_decay_steps": steps}
    with pytest.warns(UserWarning, match=re.escape(f"scheduler.lr_decay_steps{expected}")):
        validate_base(_base(scheduler__name="step", max_epochs=3, **extra))


def test_scheduler_settings_at_their_inert_values_do_not_warn(recwarn):
    for name in ("warmup_cosine", "cosine", "step", "none"):
        extra = {"scheduler__lr_decay_steps": [2]} if name == "step" else {}
        validate_base(_base(scheduler__name=name, max_epochs=3, **extra))
    assert not [m for m in _config_warnings(recwarn) if "scheduler." in m]


def test_scheduler_defaults_are_solo_learns(recwarn):
    """A solo-learn config that names only ``scheduler.name: warmup_cosine`` (its CIFAR
    mocov2plus.yaml, our configs/solo/) warms up for 10 epochs from 3e-5, as in solo-learn."""
    cfg = _base()
    del cfg.scheduler
    cfg.scheduler = {"name": "warmup_cosine"}
    cfg.max_epochs = 100
    spec = scheduler_spec(fill_defaults(cfg, BASE_DEFAULTS))
    assert (spec.warmup_epochs, spec.warmup_start_lr, spec.min_lr) == (10, 3e-5, 0.0)
    for name in ("cosine", "step", "none"):  # the warm-up default is not theirs to warn about
        cfg.scheduler.name = name
        validate_base(cfg)
    assert not [m for m in _config_warnings(recwarn) if "scheduler." in m]


def test_knn_k_above_the_memory_warns():
    with pytest.warns(UserWarning, match=r"knn_eval\.k=100 .*data\.knn_train_subset=64"):
        validate_base(_base(knn_eval__k=100, data__knn_train_subset=64))


def test_sensible_settings_do_not_warn(recwarn):
    METHODS["mixmask"].add_and_assert_specific_cfg(
        tiny_cfg("mixmask", method_kwargs__mask_ratio=0.5, method_kwargs__temperature=1e-5)
    )
    validate_base(_base(scheduler__warmup_epochs=1, knn_eval__k=64, data__knn_train_subset=64))
    validate_base(_base(knn_eval__k=1000, data__knn_train_subset=None))
    keys = ("mask_ratio", "temperature", "warmup", "knn_eval")
    assert not [m for m in _config_warnings(recwarn) if any(k in m for k in keys)]


@pytest.mark.parametrize(
    "config",
    sorted(
        str(p.relative_to(configs_root() / "pretrain").with_suffix(""))
        for p in (configs_root() / "pretrain").glob("*/*.yaml")
    ),
)
def test_shipped_configs_pass_the_optimizer_checks(config):
    # the optimizer.kwargs of every shipped config (sgd momentum, lars trust_coeff ...) are
    # arguments its optimiser takes, in range
    from solo_mixmask.config.schema import check_optimizer_kwargs

    cfg = fill_defaults(compose_config(None, config, []), BASE_DEFAULTS)
    check_optimizer_kwargs(cfg)


def test_momentum_given_to_adamw_warns_that_it_is_not_used():
    cfg = _base(optimizer__name="adamw", optimizer__kwargs__momentum=0.5)
    with pytest.warns(UserWarning, match=r"optimizer\.kwargs\.momentum=0\.5 is not used by adamw"):
        validate_base(cfg)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("performance.compile_mode", "fast", "reduce-overhead"),
        ("performance.knn_dtype", "half", "bfloat16"),
        ("performance.optimizer_impl", "fast", "foreach"),
        ("performance.loss_check_lag", -1, "an integer in [0, inf)"),
        ("performance.loss_check_lag", 1.5, "an integer in [0, inf)"),
        ("performance.loss_check_lag", True, "an integer in [0, inf)"),
    ],
)
def test_performance_levers_are_checked_at_start_up(key, value, allowed):
    with pytest.raises(ConfigError) as info:
        validate_base(_base(**{key.replace(".", "__"): value}))
    assert (info.value.key, info.value.value) == (key, value)
    assert allowed in str(info.value) and "\n" not in str(info.value)


def test_batched_online_forwards_refused_with_sync_batchnorm():
    cfg = _base(performance__batch_online_forwards=True, sync_batchnorm=True)
    with pytest.raises(ConfigError) as info:
        validate_base(cfg)
    assert (info.value.key, info.value.value) == ("performance.batch_online_forwards", True)
    assert "sync_batchnorm=true" in str(info.value)
    validate_base(_base(performance__batch_online_forwards=True))


def test_compiled_augmentations_only_with_the_memory_path_and_a_known_backend():
    # only data.format=memory augments batches with torch: elsewhere the setting would do nothing
    cfg = _base(performance__compile_augmentations=True)
    with pytest.raises(ConfigError) as info:
        validate_base(cfg)
    assert (info.value.key, info.value.value) == ("performance.compile_augmentations", True)
    assert "data.format=memory" in str(info.value)
    validate_base(_base(performance__compile_augmentations=True, data__format="memory"))
    cfg = _base(
        performance__compile_augmentations=True,
        data__format="memory",
        performance__compile_backend="nope",
    )
    with pytest.raises(ConfigError, match="performance.compile_backend='nope'"):
        validate_base(cfg)


def test_fused_optimizer_refused_for_lars():
    cfg = _base(optimizer__name="lars", performance__optimizer_impl="fused")
    with pytest.raises(ConfigError) as info:
        validate_base(cfg)
    assert info.value.key == "performance.optimizer_impl" and "optimizer.name=lars" in str(
        info.value
    )


@pytest.mark.parametrize("value", ["00:00:01:00", " 1:02:03:04 ", {"hours": 1}, None])
def test_max_time_as_lightning_reads_it_is_accepted(value):
    validate_base(_base(max_time=value))


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (216000, "base-60"),  # YAML's reading of an unquoted 1:00:00:00
        ("1h", "'DD:HH:MM:SS'"),
        ("00:1:00:00", "'DD:HH:MM:SS'"),
        ({"hourz": 1}, "{hours: 12}"),
    ],
)
def test_max_time_lightning_cannot_read_names_the_key(value, hint):
    """Lightning's Timer failed on these with a traceback after the data was built."""
    with pytest.raises(ConfigError) as info:
        validate_base(_base(max_time=value))
    assert info.value.key == "max_time" and hint in str(info.value)


def test_an_unquoted_yaml_max_time_is_refused_with_the_reason(tmp_path):
    (tmp_path / "run.yaml").write_text("max_time: 1:00:00:00\n")
    value = OmegaConf.load(tmp_path / "run.yaml").max_time
    with pytest.raises(ConfigError, match="quote it"):
        validate_base(_base(max_time=value))


@pytest.mark.parametrize(
    ("name", "quoted"), [("../x", False), ("a/b", False), (float("nan"), True), (True, True)]
)
def test_a_run_name_that_is_no_folder_name_is_refused(name, quoted):
    """name=nan, name=true (read as a float and a boolean) once got no hint to quote them."""
    with pytest.raises(ConfigError, match="a plain folder name") as info:
        validate_base(_base(name=name))
    assert ("quote it" in str(info.value)) is quoted

"""The evaluation spec: one default per key (the engine's), one ConfigError line per bad key."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from solo_mixmask.config.data_specs import DEFAULT_NUM_WORKERS
from solo_mixmask.config.eval_specs import (
    FinetuneSettings,
    LinearSettings,
    TrainSettings,
    check_not_read,
    compose_eval_config,
    eval_spec,
    mask_picture_spec,
    pretraining_only,
    refuse_unread_mask_picture_keys,
)
from solo_mixmask.config.schema import BASE_DEFAULTS
from solo_mixmask.errors import ConfigError
from solo_mixmask.eval.presets import preset_defaults, presets_dir


def _spec(*overrides: str, command: str | None = None):
    defaults = preset_defaults(presets_dir(command)) if command else None
    return eval_spec(compose_eval_config(None, overrides, defaults=defaults), "cpu")


def test_defaults_are_the_engines():
    spec = _spec()
    assert spec.num_workers == BASE_DEFAULTS["data"]["num_workers"] == DEFAULT_NUM_WORKERS
    assert spec.seed == BASE_DEFAULTS["seed"]
    assert spec.channels_last is BASE_DEFAULTS["performance"]["channels_last"]
    assert spec.batch_size == BASE_DEFAULTS["optimizer"]["batch_size"]
    assert (spec.knn.k, spec.knn.temperature) == (200, 0.1)
    assert spec.linear is None and spec.finetune is None and spec.device == "cpu"
    # a null number of workers is the engine's default too, not a second one
    assert _spec("data.num_workers=null").num_workers == DEFAULT_NUM_WORKERS


def test_linear_and_finetune_share_one_base():
    linear = _spec(command="linear").linear
    finetune = _spec(command="finetune").finetune
    assert isinstance(linear, LinearSettings) and isinstance(linear, TrainSettings)
    assert isinstance(finetune, FinetuneSettings) and isinstance(finetune, TrainSettings)
    assert linear.as_dict()["lr_decay_epochs"] == [60, 80]
    assert finetune.as_dict()["lr_decay_epochs"] == [12, 16]


@pytest.mark.parametrize(
    ("override", "command", "key"),
    [
        ("data.num_workers=-1", None, "data.num_workers"),
        ("seed=x", None, "seed"),
        ("knn_eval.T=0", None, "knn_eval.T"),
        ("performance.channels_last=maybe", None, "performance.channels_last"),
        ("linear.epochs=0", "linear", "linear.epochs"),
        ("finetune.momentum=2", "finetune", "finetune.momentum"),
        # momentum 1 never forgets a gradient (pretraining refused it, the probes took it)
        ("linear.momentum=1.0", "linear", "linear.momentum"),
        # Nesterov without momentum once became plain SGD with no word
        (("finetune.momentum=0", "finetune.nesterov=true"), "finetune", "finetune.nesterov"),
        ("finetune.lr_decay_epochs=[x]", "finetune", "finetune.lr_decay_epochs"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(override, command, key):
    with pytest.raises(ConfigError) as err:
        _spec(*([override] if isinstance(override, str) else override), command=command)
    assert err.value.key == key
    assert "\n" not in str(err.value)


def test_mask_picture_spec_defaults_and_checks():
    cfg = compose_eval_config(None)
    spec = mask_picture_spec(cfg)
    assert (spec.grid_size, spec.mask_ratio, spec.unmix_alpha) == (8, 0.5, 1.0)
    OmegaConf.update(cfg, "method_kwargs", {"mask_ratio": 1.0}, force_add=True)
    with pytest.raises(ConfigError, match=r"method_kwargs\.mask_ratio"):
        mask_picture_spec(cfg)


def test_deleting_a_key_restores_the_engine_default_not_the_runs():
    """``~key`` as in pretraining: the key takes its default again (it set null, which for
    ``data.knn_train_subset`` means every image)."""
    run = {"data": {"knn_train_subset": 64, "val_subset": 32}, "knn_eval": {"k": 5}}
    cfg = compose_eval_config(run, ["~data.knn_train_subset", "~knn_eval.k"])
    assert cfg.data.knn_train_subset == 10000 and cfg.knn_eval.k == 200
    assert cfg.data.val_subset == 32  # not deleted: the run's
    cfg = compose_eval_config(run, ["~data.val_subset=32"])
    assert cfg.data.val_subset is None  # the engine's default: every image


@pytest.mark.parametrize(
    ("override", "words"),
    [("~data.val_subset=5", "data.val_subset is 32"), ("~data.nothing", "no such key")],
)
def test_a_deletion_hydra_refuses_names_the_override(override, words):
    run = {"data": {"val_subset": 32}}
    with pytest.raises(ConfigError) as info:
        compose_eval_config(run, [override])
    assert info.value.key == override[1:].split("=")[0] and words in str(info.value)


@pytest.mark.parametrize("probe", [None, "linear"])
def test_no_evaluation_reads_the_backbone_or_the_launch_settings(probe):
    """Once: knn backbone.cifar_stem=false and knn devices=2 ran unchanged, exit 0."""
    refused = pretraining_only(probe)
    assert "rebuilt from the checkpoint" in refused["backbone"]
    for key in ("devices", "num_nodes", "strategy", "accelerator"):
        assert refused[key].startswith("--device"), key
    # a probe trains in float32 and measures no k-NN; knn and embed say their own
    assert ("precision" in refused, "knn_eval" in refused) == (probe is not None,) * 2
    with pytest.raises(ConfigError, match="does not read backbone"):
        compose_eval_config(None, ["backbone.cifar_stem=false"], not_read=refused)


@pytest.mark.parametrize("index", [1, 7, 8, 12])
def test_every_later_crop_pipeline_is_refused_by_its_own_name(index):
    """Once the later pipelines were listed as indices 1 to 7: a ninth was dropped, exit 0."""
    given = [(f"augmentations.{index}.crop_size", 16)]
    with pytest.raises(ConfigError, match=rf"\(linear does not read augmentations\.{index}\)$"):
        check_not_read(given, pretraining_only("linear"), "linear")
    check_not_read([("augmentations.0.crop_size", 16)], pretraining_only("linear"), "linear")


def test_show_masks_refuses_what_it_does_not_read():
    refuse_unread_mask_picture_keys(
        ["method_kwargs.grid_size=4", "augmentations.0.crop_size=24", "data.dataset=cifar10"]
    )
    refuse_unread_mask_picture_keys(["augmentations=asymmetric"])  # a group: a whole list
    with pytest.raises(ConfigError, match=r"seed=2 is not allowed: expected --seed 2"):
        refuse_unread_mask_picture_keys(["seed=2"])
    with pytest.raises(ConfigError, match="does not read augmentations.1.crop_size"):
        refuse_unread_mask_picture_keys(["augmentations.1.crop_size=24"])

"""solo_mixmask.config.engine_specs: the engine's config, read once into frozen specs."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from solo_mixmask.config.engine_specs import (
    STEP_DECAY_EPOCHS,
    STEP_DECAY_RATE,
    EngineSpec,
    default_of,
    engine_spec,
)
from solo_mixmask.config.schema import BASE_DEFAULTS, fill_defaults
from solo_mixmask.errors import ConfigError
from tests.conftest import tiny_cfg


def test_defaults_are_base_defaults():
    spec = engine_spec(fill_defaults(OmegaConf.create({}), BASE_DEFAULTS))
    opt, sch = BASE_DEFAULTS["optimizer"], BASE_DEFAULTS["scheduler"]
    assert spec.backbone.name == BASE_DEFAULTS["backbone"]["name"]
    assert spec.backbone.kwargs == BASE_DEFAULTS["backbone"]["kwargs"]
    assert spec.backbone.cifar_stem is True  # null: 32-pixel crops <= 64
    assert (spec.optimizer.name, spec.optimizer.batch_size, spec.optimizer.lr) == (
        opt["name"],
        opt["batch_size"],
        opt["lr"],
    )
    assert spec.optimizer.classifier_lr == opt["classifier_lr"]
    assert spec.optimizer.weight_decay == opt["weight_decay"]
    assert spec.optimizer.kwargs == opt["kwargs"]
    assert spec.scheduler.name == sch["name"]
    assert spec.scheduler.warmup_epochs == sch["warmup_epochs"]
    assert spec.scheduler.warmup_start_lr == sch["warmup_start_lr"]
    assert spec.scheduler.min_lr == sch["min_lr"]
    assert spec.scheduler.lr_decay_steps == STEP_DECAY_EPOCHS
    assert spec.scheduler.gamma == STEP_DECAY_RATE
    assert spec.momentum.base_tau == BASE_DEFAULTS["momentum"]["base_tau"]
    assert spec.momentum.final_tau == BASE_DEFAULTS["momentum"]["final_tau"]
    knn = BASE_DEFAULTS["knn_eval"]
    assert (spec.knn.enabled, spec.knn.k, spec.knn.T) == (knn["enabled"], knn["k"], knn["T"])
    assert spec.knn.memory == BASE_DEFAULTS["data"]["knn_train_subset"]
    perf = BASE_DEFAULTS["performance"]
    assert spec.performance.channels_last == perf["channels_last"]
    assert spec.performance.compile == perf["compile"]
    assert spec.performance.compile_backend == perf["compile_backend"]
    keys = (
        "compile_mode",
        "optimizer_impl",
        "ema_foreach_lerp",
        "knn_dtype",
        "batch_online_forwards",
    )
    for key in keys:
        assert getattr(spec.performance, key) == perf[key], key
    assert spec.num_classes == 10  # fashion_mnist


def test_parsed_spec_has_the_configs_values():
    cfg = tiny_cfg(
        "mixmask",
        backbone__cifar_stem=False,
        optimizer__name="adamw",
        optimizer__classifier_lr=0.5,
        optimizer__weight_decay=0.01,
        optimizer__kwargs={"betas": [0.8, 0.9]},
        scheduler__name="step",
        scheduler__lr_decay_steps=[5, 3],  # sorted: timm's bisect needs them so
        scheduler__gamma=0.5,
        momentum__base_tau=0.9,
        momentum__final_tau=0.95,
        knn_eval__T=0.2,
        data__knn_train_subset=None,
        performance__channels_last=False,
        performance__compile=True,
        performance__compile_backend="eager",
        performance__batch_online_forwards=True,
    )
    spec = engine_spec(cfg)
    assert spec.backbone.name == "resnet18"
    assert spec.backbone.kwargs == {"channels": [8, 16, 32, 64]}
    assert type(spec.backbone.kwargs["channels"]) is list  # plain python
    assert spec.backbone.cifar_stem is False
    assert (spec.optimizer.name, spec.optimizer.batch_size, spec.optimizer.lr) == ("adamw", 8, 0.1)
    assert (spec.optimizer.classifier_lr, spec.optimizer.weight_decay) == (0.5, 0.01)
    assert spec.optimizer.kwargs == {"betas": [0.8, 0.9]}
    assert (spec.scheduler.name, spec.scheduler.lr_decay_steps, spec.scheduler.gamma) == (
        "step",
        (3, 5),
        0.5,
    )
    assert (spec.momentum.base_tau, spec.momentum.final_tau) == (0.9, 0.95)
    assert (spec.knn.enabled, spec.knn.k, spec.knn.T, spec.knn.memory) == (True, 5, 0.2, None)
    assert spec.performance == type(spec.performance)(
        False, True, "eager", "default", "auto", True, "float32", True
    )
    assert spec.num_classes == 10


def test_null_optimizer_kwargs_are_none_and_big_crops_use_the_imagenet_stem():
    cfg = tiny_cfg("mixmask", optimizer__kwargs=None, augmentations=[{"crop_size": 96}])
    spec = engine_spec(cfg)
    assert spec.optimizer.kwargs == {}
    assert spec.backbone.cifar_stem is False


def test_num_classes_of_a_custom_dataset_is_required():
    cfg = tiny_cfg("mixmask", data__dataset="custom", data__num_classes=None)
    with pytest.raises(ConfigError, match="data.num_classes=None"):
        engine_spec(cfg)
    assert engine_spec(tiny_cfg("mixmask", data__num_classes=3)).num_classes == 3


def test_specs_are_frozen_and_defaults_are_copies():
    spec = engine_spec(fill_defaults(OmegaConf.create({}), BASE_DEFAULTS))
    assert isinstance(spec, EngineSpec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_classes = 3  # type: ignore[misc]
    spec.optimizer.kwargs["momentum"] = 0.5
    assert BASE_DEFAULTS["optimizer"]["kwargs"]["momentum"] == 0.9
    assert default_of("optimizer.kwargs") == {"momentum": 0.9}
    assert default_of("no.such.key") is None


def test_the_method_reads_its_spec():
    from solo_mixmask.methods import METHODS

    model = METHODS["mixmask"](tiny_cfg("mixmask", optimizer__classifier_lr=0.7))
    assert model.engine == engine_spec(model.cfg)
    classifier = next(g for g in model.learnable_params if g["name"] == "classifier")
    assert classifier["lr"] == 0.7

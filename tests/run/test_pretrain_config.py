"""The config a run uses is resolved once, at start-up: ``config.yaml`` holds values, never
``${...}`` expressions that a later command would resolve again (another environment gave
``knn`` another validation subset than the run's, exit 0; ``${now:...}`` made the run
impossible to resume or evaluate)."""

from __future__ import annotations

from omegaconf import OmegaConf

from solo_mixmask.config.compose import compose_config
from solo_mixmask.run.folder import CONFIG
from solo_mixmask.run.pretrain import prepare_config, run_pretrain
from tests.cli_helpers import TINY

INTERPOLATED = [
    "optimizer.lr=${optimizer.classifier_lr}",
    "name=run-${now:%Y}",
    "data.val_subset='${oc.decode:${oc.env:SOLO_MIXMASK_TEST_VAL_SUBSET}}'",
]


def test_prepare_config_resolves_every_interpolation(monkeypatch):
    monkeypatch.setenv("SOLO_MIXMASK_TEST_VAL_SUBSET", "24")
    _, cfg = prepare_config(compose_config(None, "fashion_mnist/mixmask", [*TINY, *INTERPOLATED]))
    text = OmegaConf.to_yaml(cfg)
    assert "${" not in text, text
    assert cfg.optimizer.lr == cfg.optimizer.classifier_lr and cfg.data.val_subset == 24
    assert cfg.name.startswith("run-20")


def test_config_yaml_holds_the_values_the_run_used(tmp_path, monkeypatch, fmnist_available):
    monkeypatch.setenv("SOLO_MIXMASK_TEST_VAL_SUBSET", "24")
    overrides = [
        *TINY,
        *INTERPOLATED,
        "data.train_subset=16",
        f"checkpoint.run_dir={tmp_path / 'r'}",
    ]
    summary = run_pretrain(compose_config(None, "fashion_mnist/mixmask", overrides))
    monkeypatch.setenv("SOLO_MIXMASK_TEST_VAL_SUBSET", "8")  # a later shell
    saved = OmegaConf.load(tmp_path / "r" / CONFIG)
    assert "${" not in (tmp_path / "r" / CONFIG).read_text()
    assert saved.data.val_subset == 24 and saved.optimizer.lr == saved.optimizer.classifier_lr
    assert summary["steps"] == 2

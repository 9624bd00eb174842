"""solo_mixmask.config.run_specs: the run's logger settings, read once into frozen specs."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from solo_mixmask.config.run_specs import LoggerSpec, WandbSpec, logger_spec
from solo_mixmask.config.schema import BASE_DEFAULTS


def test_defaults_are_base_defaults():
    spec = logger_spec(OmegaConf.create({}))
    wandb, logging = BASE_DEFAULTS["wandb"], BASE_DEFAULTS["logging"]
    assert spec == LoggerSpec(
        run_name=BASE_DEFAULTS["name"],
        csv=logging["csv"],
        tensorboard=logging["tensorboard"],
        wandb=WandbSpec(wandb["enabled"], wandb["offline"], wandb["project"], wandb["entity"]),
    )


def test_parsed_spec_has_the_configs_values():
    cfg = OmegaConf.create(
        {
            "name": "r1",
            "logging": {"csv": False, "tensorboard": True},
            "wandb": {"enabled": True, "offline": False, "project": "p", "entity": "e"},
        }
    )
    assert logger_spec(cfg) == LoggerSpec("r1", False, True, WandbSpec(True, False, "p", "e"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        logger_spec(cfg).csv = True  # type: ignore[misc]


def test_trainer_spec_defaults_are_base_defaults():
    from solo_mixmask.config.run_specs import CheckpointSpec, TrainerSpec, trainer_spec

    ckpt = BASE_DEFAULTS["checkpoint"]
    assert trainer_spec(OmegaConf.create({})) == TrainerSpec(
        checkpoint=CheckpointSpec(ckpt["enabled"], ckpt["frequency"], ckpt["every_n_steps"]),
        progress_bar=BASE_DEFAULTS["progress_bar"],
        model_summary=False,
        data_on_device=BASE_DEFAULTS["data"]["format"] == "memory",
        loss_check_lag=BASE_DEFAULTS["performance"]["loss_check_lag"],
    )


def test_trainer_spec_has_the_configs_values():
    from solo_mixmask.config.run_specs import CheckpointSpec, TrainerSpec, trainer_spec

    cfg = OmegaConf.create(
        {
            "checkpoint": {"enabled": False, "frequency": 3, "every_n_steps": 7},
            "progress_bar": False,
            "enable_model_summary": True,
            "data": {"format": "memory"},
            "performance": {"loss_check_lag": 2},
        }
    )
    arguments = {"enable_model_summary": True}  # a Trainer argument, passed through
    assert trainer_spec(cfg) == TrainerSpec(
        CheckpointSpec(False, 3, 7), False, True, True, arguments, loss_check_lag=2
    )


def test_trainer_arguments_are_the_trainer_keys_with_devices_a_number():
    from solo_mixmask.config.run_specs import trainer_arguments

    cfg = OmegaConf.create({"devices": "1", "max_epochs": 3, "name": "n", "optimizer": {}})
    assert trainer_arguments(cfg) == {"devices": 1, "max_epochs": 3}
    assert trainer_arguments(OmegaConf.create({"devices": "auto"})) == {"devices": "auto"}


def test_folder_spec_defaults_and_values():
    from solo_mixmask.config.run_specs import FolderSpec, folder_spec

    ckpt = BASE_DEFAULTS["checkpoint"]
    assert folder_spec(OmegaConf.create({})) == FolderSpec(
        BASE_DEFAULTS["name"], ckpt["dir"], ckpt["run_dir"]
    )
    cfg = OmegaConf.create({"name": "n", "checkpoint": {"dir": "/d", "run_dir": "/r"}})
    assert folder_spec(cfg) == FolderSpec("n", "/d", "/r")


def test_resume_facts_are_read_as_given():
    from solo_mixmask.config.run_specs import ResumeFacts, resume_facts

    assert resume_facts(OmegaConf.create({})) == ResumeFacts(
        None, None, None, BASE_DEFAULTS["scheduler"]["name"], BASE_DEFAULTS["scheduler"]["min_lr"]
    )
    cfg = OmegaConf.create(
        {
            "method": "byol",
            "max_epochs": "x",
            "max_steps": True,
            "scheduler": {"name": "step", "min_lr": 0.1},
        }
    )
    assert resume_facts(cfg) == ResumeFacts("byol", "x", True, "step", 0.1)


def test_run_spec_defaults_and_values():
    from solo_mixmask.config.run_specs import (
        RunSpec,
        folder_spec,
        logger_spec,
        run_spec,
        trainer_spec,
    )

    empty = OmegaConf.create({})
    parts = folder_spec(empty), trainer_spec(empty), logger_spec(empty)
    assert run_spec(empty) == RunSpec(
        BASE_DEFAULTS["method"],
        BASE_DEFAULTS["backbone"]["name"],
        BASE_DEFAULTS["seed"],
        BASE_DEFAULTS["knn_eval"]["enabled"],
        None,
        BASE_DEFAULTS["data"]["no_labels"],
        *parts,
    )
    cfg = OmegaConf.create(
        {
            "method": "byol",
            "backbone": {"name": "resnet50"},
            "seed": 7,
            "knn_eval": {"enabled": False},
            "data": {"num_classes": 3, "no_labels": True},
            "checkpoint": {"run_dir": "/r"},
        }
    )
    parts = folder_spec(cfg), trainer_spec(cfg), logger_spec(cfg)
    assert run_spec(cfg) == RunSpec("byol", "resnet50", 7, False, 3, True, *parts)
    assert run_spec(cfg).folder.run_dir == "/r"

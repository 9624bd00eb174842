"""Issue 6, part 4: checkpoints load with weights_only=True (a code-running pickle is refused and
never runs), configs cannot instantiate classes (see test_config.py), nothing reaches the network
unless asked (wandb offline by default, dataset downloads only with data.download=true).
"""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from solo_mixmask.checkpoints.io import SafeAtomicCheckpointIO, safe_load_checkpoint
from solo_mixmask.cli import compose_config, configs_root
from solo_mixmask.config.data_specs import data_spec
from solo_mixmask.config.schema import BASE_DEFAULTS, fill_defaults
from solo_mixmask.data import datasets as D
from solo_mixmask.errors import CheckpointError, DataError
from solo_mixmask.methods import METHODS
from tests.cli_helpers import error_lines, run
from tests.conftest import tiny_cfg


class Payload:
    """Unpickling this runs ``os.system('touch MARKER')``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_run_folder(folder: Path, marker: Path) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    OmegaConf.save(tiny_cfg("mixmask"), folder / "config.yaml")
    checkpoint = {
        "state_dict": {"w": torch.zeros(2)},
        "loops": {},
        "optimizer_states": [],
        "hyper_parameters": Payload(marker),
    }
    torch.save(checkpoint, folder / "checkpoints" / "last.ckpt")
    return folder


def test_resume_refuses_a_code_running_checkpoint(tmp_path):
    marker = tmp_path / "payload_ran"
    run_dir = _malicious_run_folder(tmp_path / "run", marker)
    # Sanity check of the payload itself: a plain pickle load would run it.
    assert not marker.exists()
    result = run(["resume", str(run_dir)])
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1
    assert "refusing to load" in lines[0] and "weights_only=True" in lines[0]
    assert str(run_dir / "checkpoints" / "last.ckpt") in lines[0]
    assert not marker.exists()


def test_payload_is_real(tmp_path):
    # Proves the test above would notice: an unsafe load does run the payload.
    marker = tmp_path / "ran"
    data = pickle.dumps(Payload(marker))
    pickle.loads(data)  # noqa: S301 - deliberately unsafe, on our own bytes
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["torch_zip", "legacy_pickle"])
def test_safe_loaders_refuse_payloads(tmp_path, fmt):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    if fmt == "torch_zip":
        torch.save({"state_dict": Payload(marker)}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"state_dict": Payload(marker)}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refusing to load"):
        safe_load_checkpoint(path)
    # The CheckpointIO plugin every Trainer of ours uses (Lightning 2.1 passes no weights_only).
    with pytest.raises(CheckpointError, match="refusing to load"):
        SafeAtomicCheckpointIO().load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        safe_load_checkpoint(path)


def test_trainer_uses_the_safe_checkpoint_io(tmp_path):
    from solo_mixmask.config.run_specs import run_spec
    from solo_mixmask.run.pretrain import prepare_config
    from solo_mixmask.run.trainer import build_callbacks, build_trainer

    _, cfg = prepare_config(tiny_cfg("mixmask", checkpoint__every_n_steps=2))
    run = run_spec(cfg)
    trainer = build_trainer(
        run.trainer, run.logger, tmp_path, build_callbacks(run.trainer, tmp_path)
    )
    assert isinstance(trainer.strategy.checkpoint_io, SafeAtomicCheckpointIO)


# --------------------------------------------------------------------------- network


@pytest.fixture
def no_network(monkeypatch):
    """Every name lookup and socket connection fails (and is counted)."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access blocked by the test ({address})")

    def no_lookup(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror(f"name lookup blocked by the test ({host})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    return attempts


def test_default_configs_keep_wandb_offline_and_downloads_off():
    names = sorted(
        p.relative_to(configs_root() / "pretrain").with_suffix("")
        for p in (configs_root() / "pretrain").glob("*/*.yaml")
    )
    assert len(names) >= 10
    for name in names:
        cfg = compose_config(None, str(name), [])
        assert OmegaConf.select(cfg, "wandb.enabled") is False, name
        assert OmegaConf.select(cfg, "wandb.offline") is True, name
        assert OmegaConf.select(cfg, "data.download", default=False) is False, name


def test_wandb_logger_is_offline_unless_asked(tmp_path, monkeypatch):
    import lightning.pytorch.loggers as loggers

    from solo_mixmask.config.run_specs import logger_spec
    from solo_mixmask.run.loggers import build_loggers

    def _loggers(cfg, run_dir):
        return build_loggers(logger_spec(cfg), run_dir)

    made = []
    monkeypatch.setattr(loggers, "WandbLogger", lambda **kw: made.append(kw) or "wandb")
    cfg = compose_config(None, "mixmask", [])
    assert "wandb" not in _loggers(cfg, tmp_path)
    cfg.wandb.enabled = True
    assert "wandb" in _loggers(cfg, tmp_path)
    assert made[-1]["offline"] is True
    cfg.wandb.offline = False
    _loggers(cfg, tmp_path)
    assert made[-1]["offline"] is False


def test_datasets_download_only_when_asked(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(D, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "not_installed")
    for name in ("cifar10", "fashion_mnist"):
        cfg = OmegaConf.create(
            {"data": {"dataset": name, "train_path": str(tmp_path / name), "download": False}}
        )
        with pytest.raises(DataError, match="data.download=true"):
            D.build_dataset(data_spec(fill_defaults(cfg, BASE_DEFAULTS)), "train", None)
    assert no_network == []
    cfg = OmegaConf.create(
        {"data": {"dataset": "fashion_mnist", "train_path": str(tmp_path / "fm"), "download": True}}
    )
    with pytest.raises(DataError, match="download"):
        D.build_dataset(data_spec(fill_defaults(cfg, BASE_DEFAULTS)), "train", None)
    assert no_network  # only data.download=true tried to connect


def test_building_a_method_needs_no_network(no_network):
    model = METHODS["mixmask"](tiny_cfg("mixmask"))  # timm backbone with pretrained=False
    assert model.features_dim == 64
    assert no_network == []

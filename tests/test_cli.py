"""The ``solo-mixmask`` front: --version, hydra's --cfg job and -m sweeps, --help, run output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from solo_mixmask import __version__
from solo_mixmask.cli import main
from tests.cli_helpers import TINY, error_lines, run


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"solo-mixmask {__version__}"


def test_version_and_help_import_neither_torch_nor_lightning() -> None:
    """``--version`` and ``--help`` answer in a fraction of a second: building the parser (its
    ``solo-*`` sub-commands included) must not import the methods, hence torch and Lightning."""
    probe = (
        "import sys\n"
        "from solo_mixmask.cli import build_parser\n"
        "build_parser()\n"
        "print(sorted(m for m in ('torch', 'lightning', 'solo_mixmask.methods') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_pretrain_help_lists_the_configs_and_their_groups(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    assert "--cfg" in out and "--multirun" in out
    line = next(line for line in out.splitlines() if line.strip().startswith("fashion_mnist/:"))
    assert {"byol", "mixmask", "mocov2plus"} <= set(line.split(":", 1)[1].replace(",", " ").split())
    assert "group augmentations=: asymmetric, aug_plus" in out


def test_cfg_job_prints_the_checked_config_and_trains_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    code = main(["pretrain", "--cfg", "job", "max_epochs=7", f"checkpoint.dir={runs}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "max_epochs: 7" in out
    assert "grid_size: 4" in out  # the composed config (configs/pretrain/fashion_mnist/mixmask)
    assert "knn_train_subset" in out  # engine defaults filled in
    assert not runs.exists()


def test_cfg_job_checks_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", "--cfg", "job", "method_kwargs.mask_ratio=1.5"]) == 2
    assert "method_kwargs.mask_ratio=1.5" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides",
    [
        ["data.train_subset=0"],  # the data settings' checks (data_spec)
        ["data.dali_device=tpu"],
        ["backbone.name=resnet19"],  # the backbone's name and kwargs (built on the meta device)
        ["backbone.kwargs.channels=[8,16]"],
        # the data format's checks that building its loader makes (check_data_settings)
        ["data.format=memory", "augmentations.0.equalization.prob=0.5"],
        ["data.format=dali"],  # fashion_mnist is not an ImageFolder tree
        # what the model's construction checks (the method built on the meta device): split
        # BatchNorm with a backbone that has none was accepted, then refused by the run
        [
            "backbone.name=convnext_atto",
            "backbone.kwargs.channels=null",
            "backbone.cifar_stem=false",
            "method_kwargs.bn_splits=2",
        ],
    ],
)
def test_cfg_job_runs_the_checks_the_run_makes_before_training(
    overrides: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pretrain", "--cfg", "job", *overrides]) == 2
    err = capsys.readouterr().err
    assert overrides[-1].split("=")[0].replace(".0.", "[0].") in err, err


def test_multirun_leaves_one_run_folder_per_job(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["pretrain", "-m", "--config-name", "fashion_mnist/mocov2plus", *TINY]
    result = run([*args, "seed=1,2", f"checkpoint.dir={runs}"])
    assert result.returncode == 0, result.stderr[-3000:]
    folders = sorted(p for p in runs.iterdir() if p.is_dir())
    assert len(folders) == 2
    seeds = [json.loads((f / "summary.json").read_text())["method"] for f in folders]
    assert seeds == ["mocov2plus", "mocov2plus"]
    configs = sorted((f / "config.yaml").read_text() for f in folders)
    assert "seed: 1" in configs[0] and "seed: 2" in configs[1]
    assert "[multirun] job 2/2: " in result.stdout
    # no progress bar (TINY sets progress_bar=false): one line per epoch instead
    assert result.stdout.count("epoch 1/1: ") == 2
    assert "model: MoCoV2Plus" in result.stdout
    for noise in ("💡 Tip", "LeafSpec", "Total FLOPs"):
        assert noise not in result.stdout + result.stderr


def test_multirun_checks_every_job_before_training_any(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = run(
        ["pretrain", "-m", *TINY, "method_kwargs.mask_ratio=0.5,1.5", f"checkpoint.dir={runs}"]
    )
    assert result.returncode == 2
    assert error_lines(result.stderr) and "mask_ratio=1.5" in error_lines(result.stderr)[0]
    assert not runs.exists()
    # a data setting of the second job too (its check used to come after job 1 had trained)
    result = run(["pretrain", "-m", *TINY, "data.val_subset=32,0", f"checkpoint.dir={runs}"])
    assert result.returncode == 2
    assert "data.val_subset=0" in error_lines(result.stderr)[0]
    assert not runs.exists()


def test_multirun_on_several_processes_is_refused_before_any_job(tmp_path: Path) -> None:
    """``-m`` with ``devices=2 strategy=ddp``: after job 1, Lightning's teardown removed the
    environment that tells rank 1 it is a child, so job 2's rank 1 made an empty folder of its
    own and printed it (exit 0). Now one error line naming the keys, before any job runs."""
    runs = tmp_path / "runs"
    args = ["pretrain", "-m", *TINY, "devices=2", "strategy=ddp", "seed=1,2"]
    result = run([*args, f"checkpoint.dir={runs}"])
    assert result.returncode == 2, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: devices=2 is not allowed: expected "), lines
    assert "num_nodes" in lines[0] and "-m" in lines[0], lines
    assert "[multirun]" not in result.stdout
    assert not runs.exists()


def test_multirun_jobs_sharing_one_run_dir_are_refused_before_any_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once: ``-m seed=1,2 checkpoint.run_dir=X`` trained job 1 into X, then job 2 stopped
    with "continue that run with solo-mixmask resume"."""
    fixed = tmp_path / "X"
    args = ["pretrain", "-m", *TINY, "seed=1,2", f"checkpoint.run_dir={fixed}"]
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = error_lines(captured.err)
    assert len(lines) == 1, captured.err[-3000:]
    assert lines[0].startswith(f"error: checkpoint.run_dir='{fixed}' is not allowed: "), lines
    assert "checkpoint.dir" in lines[0] and "2 jobs" in lines[0], lines
    assert "[multirun]" not in captured.out
    assert not fixed.exists()

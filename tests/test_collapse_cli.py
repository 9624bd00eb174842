"""Through the CLI: every run reports its collapse measure, a collapsed run says so, and a tiny
CIFAR-10 run trains with split BatchNorm and shuffled keys."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import ROOT, TINY, run_many
from tests.data.helpers import needs_fmnist

sys.path.insert(0, str(ROOT / "benchmarks"))
from common import cifar10_folder, cifar10_source  # noqa: E402


def _summary(tmp: Path) -> dict:
    (run_dir,) = [p for p in tmp.iterdir() if p.is_dir()]
    return json.loads((run_dir / "summary.json").read_text())


def _cifar_found() -> bool:
    """Whether CIFAR-10 is there; checked at collection, which must not unpack it (every
    pytest-xdist worker collects)."""
    try:
        cifar10_source(None)
    except SystemExit:
        return False
    return True


@needs_fmnist
def test_summary_has_the_collapse_measure_and_a_forced_collapse_warns(tmp_path):
    ok_dir, collapsed_dir = tmp_path / "ok", tmp_path / "collapsed"
    ok, collapsed = run_many(
        [
            ["pretrain", *TINY, f"checkpoint.dir={ok_dir}"],
            # weight decay 500 at lr 0.03 * 8 / 256 shrinks every weight by half per step: the
            # projector's output becomes its bias, the same for every image
            [
                "pretrain",
                *TINY,
                "max_epochs=2",
                "check_val_every_n_epoch=2",
                "optimizer.weight_decay=500",
                f"checkpoint.dir={collapsed_dir}",
            ],
        ]
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    summary = _summary(ok_dir)
    assert summary["embedding_std_spread"] == pytest.approx(0.25)  # proj_output_dim 16
    assert 0.1 * 0.25 < summary["embedding_std"] <= 1 and summary["collapsed"] is False
    assert "collapsed" not in ok.stderr and "COLLAPSED" not in ok.stdout
    assert "embedding_std" in ok.stdout  # the per-epoch line

    assert collapsed.returncode == 0, collapsed.stderr[-2000:]
    summary = _summary(collapsed_dir)
    assert summary["collapsed"] is True and summary["embedding_std"] < 0.1 * 0.25
    warnings = [line for line in collapsed.stderr.splitlines() if line.startswith("warning:")]
    assert [w for w in warnings if "the run collapsed" in w] == [
        w for w in warnings if "collapsed" in w
    ]
    assert len([w for w in warnings if "the run collapsed" in w]) == 1
    epoch_lines = [line for line in collapsed.stdout.splitlines() if line.startswith("epoch ")]
    assert "COLLAPSED" in epoch_lines[-1]
    # k-NN is printed on the epochs that measured it only (every 2nd epoch here)
    assert "k-NN" not in epoch_lines[0] and "k-NN top-1" in epoch_lines[1]


@pytest.mark.skipif(
    not _cifar_found(), reason="CIFAR-10 not found ($SOLO_MIXMASK_CIFAR10 or ../shared/data)"
)
def test_tiny_cifar_run_with_split_batch_norm_and_shuffled_keys(tmp_path):
    root = cifar10_folder(None, 8)
    (result,) = run_many(
        [
            [
                "pretrain",
                "--config-name",
                "cifar/mixmask",
                *[t for t in TINY if not t.startswith(("augmentations.", "data."))],
                "data.dataset=custom",
                f"data.train_path={root / 'train'}",
                f"data.val_path={root / 'test'}",
                "data.num_classes=10",
                "data.num_workers=0",
                "data.format=memory",
                "method_kwargs.bn_splits=4",
                "method_kwargs.shuffle_bn=true",
                "scheduler.warmup_epochs=0",
                f"checkpoint.dir={tmp_path}",
            ]
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _summary(tmp_path)
    assert summary["train_images"] == 80 and summary["steps"] == 10  # 8 per class, batch 8
    assert summary["embedding_std"] is not None
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert "shuffle_generators" in ckpt
    assert ckpt["hyper_parameters"]["cfg"]["method_kwargs"]["bn_splits"] == 4

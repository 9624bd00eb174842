"""benchmarks/accuracy.py --smoke: runs, table, paired differences and the k-NN plot."""

from __future__ import annotations

import pytest

from tests.benchmarks.helpers import load, run_script
from tests.data.helpers import needs_fmnist


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("accuracy")
    run_script("accuracy.py", "--smoke", "--out-dir", str(out))
    return out


@needs_fmnist
def test_smoke_runs_both_methods(result):
    res = load(result / "accuracy_smoke.json")
    assert res["errors"] == []
    assert [(r["method"], r["seed"]) for r in res["runs"]] == [("mocov2plus", 1), ("mixmask", 1)]
    for run in res["runs"]:
        assert 0 <= run["knn_acc1"] <= 100
        assert run["train_images"] == 64 and run["steps"] == 4  # 64 images, batch 16, 1 epoch
        epochs = [e for e, _ in run["curve"]]
        assert epochs == [0, 1]  # k-NN at initialisation, then after the epoch
        assert run["curve"][-1][1] == pytest.approx(run["knn_acc1"], abs=1e-3)
    assert 0 < res["raw_pixel_knn"] <= 100


@needs_fmnist
def test_aggregate_and_paired_difference(result):
    res = load(result / "accuracy_smoke.json")
    agg = res["aggregate"]
    moco, mix = (next(r for r in res["runs"] if r["method"] == m)
                 for m in ("mocov2plus", "mixmask"))
    assert agg["mixmask"]["knn_acc1"]["mean"] == pytest.approx(mix["knn_acc1"])
    assert agg["mixmask"]["knn_acc1"]["std"] == 0.0  # one seed
    diff = agg["mixmask"]["diff_to_mocov2plus"]
    assert diff["mean"] == pytest.approx(mix["knn_acc1"] - moco["knn_acc1"])
    assert "diff_to_mocov2plus" not in agg["mocov2plus"]


@needs_fmnist
def test_table_and_plot_written(result):
    md = (result / "accuracy_smoke.md").read_text()
    assert "| mocov2plus | 1 |" in md and "| mixmask | 1 |" in md
    assert "one seed only" in md and "Raw pixels" in md
    png = result / "accuracy_smoke.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_plan_fits_the_budget():
    """The budget arithmetic: subset = whole batches, within the dataset, time estimated."""
    import sys

    from tests.benchmarks.helpers import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy

    prof = accuracy.PROFILES["quick"]
    cal = {"step_s": {m: 0.5 for m in prof.methods}, "forward_img_s": 3000.0}
    p = accuracy.plan(prof, cal)
    assert p["train_subset"] % prof.batch_size == 0
    assert prof.batch_size * 2 <= p["train_subset"] <= 60_000
    # 12 runs x (10 s start + 4 evals of 6,000 images at 3000 / 1.5 img/s) = 264 s fixed;
    # (0.9 x 1800 - 264) / (3 epochs x 1.25 x 3 seeds x 4 methods x 0.5 s) = 60.3 -> 60 steps
    assert p["steps_per_epoch"] == 60 and p["train_subset"] == 60 * 128
    assert p["estimated_s"] == pytest.approx(264 + 3 * 60 * 1.25 * 3 * 4 * 0.5)
    assert p["estimated_s"] <= 0.9 * 30 * 60

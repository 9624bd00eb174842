"""benchmarks/same_seed.py: two accuracy.py results compared run by run, hand-made cases."""

from __future__ import annotations

import sys

import pytest

from tests.benchmarks.helpers import REPO
from tests.eval.helpers import write_one_step_epoch_logs

sys.path.insert(0, str(REPO / "benchmarks"))

import same_seed  # noqa: E402


def _run(method, seed, curve, ips, loss):
    return {
        "method": method,
        "seed": seed,
        "curve": curve,
        "knn_acc1": curve[-1][1],
        "images_per_sec": ips,
        "epoch_metrics": {"train_nce_loss": [[1, loss + 1.0], [2, loss]]},
    }


def _result(runs, **profile):
    return {"command": "accuracy.py ...", "runs": runs, "profile": {"epochs": 2, **profile}}


def test_pairs_by_method_and_seed_with_differences_and_speed():
    baseline = _result(
        [
            _run("mocov2plus", 1, [[0, 30.0], [1, 40.0], [2, 50.0]], 1000.0, 3.0),
            _run("mocov2plus", 2, [[0, 31.0], [2, 52.0]], 1000.0, 3.1),
        ],
        extra=[],
        budget_minutes=9.0,
    )
    new = _result(
        [
            _run("mocov2plus", 1, [[0, 30.0], [2, 49.25]], 2500.0, 2.5),
            _run("mixmask", 1, [[0, 30.0], [2, 55.0]], 1400.0, 2.0),
        ],
        extra=["performance.compile=true"],
        budget_minutes=5.0,  # how long it may take is not a training difference
    )
    cmp = same_seed.compare(new, baseline)
    assert cmp["differences"] == ["extra: [] -> ['performance.compile=true']"]
    assert cmp["unpaired"] == ["mixmask seed 1"]
    (pair,) = cmp["pairs"]
    assert pair["knn"] == [(0, 30.0, 30.0, 0.0), (2, 50.0, 49.25, -0.75)]  # epochs in both
    assert pair["last_epoch_metrics"] == {"train_nce_loss": (3.0, 2.5)}
    assert pair["speed_ratio"] == pytest.approx(2.5)
    assert cmp["largest_knn_difference"] == pytest.approx(0.75)  # trained epochs only
    assert cmp["baseline_seed_spread"]["mocov2plus"] == pytest.approx(1.4142, abs=1e-4)
    md = same_seed.markdown(cmp, "base.json")
    assert "| mocov2plus | 1 | 2 | 50.00 | 49.25 | -0.75 |" in md
    assert (
        "| mocov2plus | 1 | 1000.0 | 2500.0 | 2.50x | - | - | - | nce_loss 3.0000 -> 2.5000 |" in md
    )
    assert "Largest k-NN difference after training: 0.75 points (seed-to-seed std" in md
    assert "Not in the baseline: mixmask seed 1." in md


def test_one_seed_baseline_says_it_has_no_spread_to_judge_by():
    runs = [_run("mixmask", 3, [[0, 30.0], [1, 40.0]], 10.0, 1.0)]
    cmp = same_seed.compare(_result(runs), _result(runs))
    assert cmp["differences"] == [] and cmp["largest_knn_difference"] == 0.0
    assert "no seed-to-seed spread is measured" in same_seed.markdown(cmp, "b.json")


def test_epoch_metrics_reads_the_epoch_means_of_metrics_csv(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "metrics.csv").write_text(
        "epoch,step,train_nce_loss_step,train_nce_loss_epoch,train_embedding_std,val_knn_acc1\n"
        "0,3,6.9,,,\n"
        "0,3,,6.8,0.05,\n"
        "0,3,,,,41.0\n"
        "1,7,,6.1,0.07,\n"
    )
    assert same_seed.epoch_metrics(tmp_path) == {
        "train_embedding_std": [(1, 0.05), (2, 0.07)],
        "train_nce_loss": [(1, 6.8), (2, 6.1)],
    }
    assert same_seed.epoch_metrics(tmp_path / "missing") == {}


def test_a_file_that_is_not_an_accuracy_result_is_an_error_line(tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text('{"runs": [], "profile": {}}')
    bad.write_text('{"levers": {}}')
    with pytest.raises(SystemExit, match=f"error: results {bad} is not an accuracy.py result"):
        same_seed.main([str(good), str(bad)])
    with pytest.raises(SystemExit, match="error: baseline .*missing.json: .*No such file"):
        same_seed.main([str(tmp_path / "missing.json"), str(good)])


def test_the_benchmarks_keep_epoch_1_of_a_run_whose_epochs_are_one_step(tmp_path):
    import accuracy
    import cifar_grid

    write_one_step_epoch_logs(tmp_path)
    assert accuracy.knn_curve(tmp_path) == [(0, 28.0), (1, 21.0), (2, 37.0)]
    assert cifar_grid.series(tmp_path)["knn_acc1"] == [(1, 21.0), (2, 37.0)]
    assert cifar_grid.series(tmp_path)["mixed_loss"] == [(1, 1.6), (2, 3.0)]
    assert same_seed.epoch_metrics(tmp_path)["train_embedding_std"] == [(1, 0.07), (2, 0.06)]


def test_batches_timed_by_different_clocks_are_compared_by_wall_time_only():
    # the baseline predates images_per_sec_clock (timed on the host); the new run's batches
    # were timed by CUDA events: their img/s are different measures, the wall's are not
    old = {**_run("mixmask", 1, [[0, 30.0], [2, 50.0]], 9000.0, 3.0), "steps": 200}
    old["wall_seconds"] = 20.0
    new = {**_run("mixmask", 1, [[0, 30.0], [2, 50.5]], 7000.0, 3.0), "steps": 200}
    new.update(wall_seconds=16.0, images_per_sec_clock="cuda events")
    cmp = same_seed.compare(_result([new], batch_size=512), _result([old], batch_size=512))
    (pair,) = cmp["pairs"]
    assert pair["clocks"] == ("host", "cuda events") and pair["speed_ratio"] is None
    assert pair["wall_images_per_s"] == (pytest.approx(5120.0), pytest.approx(6400.0))
    assert pair["wall_ratio"] == pytest.approx(1.25)
    md = same_seed.markdown(cmp, "b.json")
    assert "| not comparable: clocks host -> cuda events | 5120 | 6400 | 1.25x |" in md
    same = {**new, "images_per_sec": 8400.0}  # same clock: compared
    (pair,) = same_seed.compare(_result([same], batch_size=512), _result([new], batch_size=512))[
        "pairs"
    ]
    assert pair["speed_ratio"] == pytest.approx(1.2) and pair["wall_ratio"] == pytest.approx(1.0)


def test_runs_built_with_another_residual_init_are_named_as_a_difference():
    """A code default (the ResNet's residual init) is in no profile: the runs' recorded
    backbone_kwargs show it, and a baseline from before they were recorded reads as timm's
    zero init."""
    old = _run("mocov2plus", 1, [[0, 30.0], [2, 50.0]], 1000.0, 3.0)
    kept = {"channels": [16, 32, 64, 128], "zero_init_last": False}
    now = {**_run("mocov2plus", 1, [[0, 28.0], [2, 52.0]], 1000.0, 2.9), "backbone_kwargs": kept}
    cmp = same_seed.compare(_result([now]), _result([old]))
    assert cmp["differences"] == ["mocov2plus seed 1 zero_init_last: True -> False"]
    assert "mocov2plus seed 1 zero_init_last: True -> False" in same_seed.markdown(cmp, "b.json")
    zeroed = {**now, "backbone_kwargs": {**kept, "zero_init_last": True}}
    assert same_seed.compare(_result([zeroed]), _result([old]))["differences"] == []
    same = same_seed.compare(_result([now]), _result([{**old, "backbone_kwargs": dict(kept)}]))
    assert same["differences"] == []


def test_profile_overrides_compare_across_the_extra_split():
    """A result from before ``user_extra`` recorded the profile's and the user's overrides in
    ``extra``: the same overrides in the new layout are no difference, another one is."""
    old = {"extra": ["a=1", "b=2"], "epochs": 3}
    new = {"extra": ["a=1"], "user_extra": ["b=2"], "epochs": 3}
    assert same_seed.profile_differences(new, old) == []
    other = {"extra": ["a=1"], "user_extra": ["b=3"], "epochs": 3}
    assert same_seed.profile_differences(other, old) == ["extra: ['a=1', 'b=2'] -> ['a=1', 'b=3']"]


def test_the_folder_the_images_were_unpacked_to_is_no_difference():
    """Once every comparison with the committed GPU baseline listed a ``data:`` difference:
    gpu_env.sh unpacks the tars to a folder named by the checksum of their source path."""
    old = {
        "data": ["data.dataset=custom", "data.train_path=/tmp/c/train", "data.val_path=/tmp/c/test"]
    }
    moved = {
        "data": [
            "data.dataset=custom",
            "data.train_path=/tmp/c_12/train",
            "data.val_path=/tmp/c_12/test",
        ]
    }
    assert same_seed.profile_differences(moved, old) == []
    other = {"data": ["data.dataset=cifar10", *moved["data"][1:]]}
    assert same_seed.profile_differences(other, old) == [
        "data: ['data.dataset=custom', 'data.train_path=...', 'data.val_path=...'] -> "
        "['data.dataset=cifar10', 'data.train_path=...', 'data.val_path=...']"
    ]

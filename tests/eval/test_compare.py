"""compare: a Markdown table and plots for two real runs (MoCo v2 vs MixMask)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from solo_mixmask.cli import main
from solo_mixmask.errors import ConfigWarning
from solo_mixmask.eval.compare import (
    compare_runs,
    epoch_curves,
    load_run,
    ssl_loss_curves,
    unique_names,
)
from tests.eval.helpers import write_one_step_epoch_logs


def test_compare_two_real_runs(tiny_runs, tmp_path, capsys):
    moco, mix = tiny_runs["mocov2plus"], tiny_runs["mixmask"]
    last = mix / "checkpoints" / "last.ckpt"
    (mix / "linear.json").write_text(json.dumps({"checkpoint": str(last), "acc1": 12.345}))
    (moco / "linear.json").unlink(missing_ok=True)
    out = tmp_path / "report"
    result = compare_runs([moco, mix], out)
    lines = (out / "report.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 4  # header, separator, 2 runs
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [r[1] for r in rows] == ["mocov2plus", "mixmask"]
    assert [r[2] for r in rows] == ["resnet18", "resnet18"]  # alike: no kwargs shown
    assert [r[3] for r in rows] == ["1", "1"]
    summary = json.loads((mix / "summary.json").read_text())
    assert rows[1][4] == f"{summary['knn_acc1']:.2f}"
    assert (rows[0][6], rows[1][6]) == ("-", "12.35")  # offline linear only where present
    assert result["table"] in (out / "report.md").read_text()
    for name, size in (("knn.png", (600, 400)), ("loss.png", (1100, 400))):
        with Image.open(out / name) as img:
            img.load()
            assert img.size == size

    record = load_run(mix)
    assert sorted(record.knn_curve) == [0, 1]  # before training, after epoch 1
    assert record.knn_curve[1] == summary["knn_acc1"]
    assert list(record.contrastive_curve) == [1]
    assert record.total_loss_curve[1] > record.contrastive_curve[1]  # nce + mask term

    assert main(["compare", str(moco), str(mix), "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    assert (
        "| mocov2plus | mocov2plus | resnet18 | 1 |" in printed
        and (tmp_path / "cli" / "knn.png").is_file()
    )


def test_offline_linear_of_other_weights_is_not_shown(tiny_runs, tmp_path):
    """linear.json of epoch000.ckpt, or of last.ckpt before a resume trained on, is not the
    row's: '-' and a warning naming why, never the other weights' accuracy."""
    import os

    from solo_mixmask.errors import ConfigWarning

    run = tiny_runs["mocov2plus"]
    last = run / "checkpoints" / "last.ckpt"
    linear = run / "linear.json"
    try:
        linear.write_text(json.dumps({"checkpoint": "x/checkpoints/epoch000.ckpt", "acc1": 15.6}))
        with pytest.warns(ConfigWarning, match="probed x/checkpoints/epoch000.ckpt"):
            assert load_run(run).offline_linear_acc1 is None
        linear.write_text(json.dumps({"checkpoint": str(last), "acc1": 10.9}))
        os.utime(linear, (last.stat().st_mtime - 60, last.stat().st_mtime - 60))
        with pytest.warns(ConfigWarning, match="written after it"):
            assert load_run(run).offline_linear_acc1 is None
        os.utime(linear)  # probed after the last save: this row's
        assert load_run(run).offline_linear_acc1 == 10.9
        # typed inside checkpoints/ (cd RUN/checkpoints && solo-mixmask linear last.ckpt)
        linear.write_text(json.dumps({"checkpoint": "last.ckpt", "acc1": 11.5}))
        assert load_run(run).offline_linear_acc1 == 11.5
    finally:
        linear.unlink(missing_ok=True)


def test_offline_linear_of_another_run_is_not_shown(tiny_runs, tmp_path, monkeypatch):
    """A linear.json that probed another run's last.ckpt (``linear B/checkpoints/last.ckpt
    --out A/linear.json``, or copied along with a run folder) is not A's row: '-' and a warning
    naming the other checkpoint; the real CLI's result is checked, path typed relative."""
    from solo_mixmask.errors import ConfigWarning

    moco, mix = tiny_runs["mocov2plus"], tiny_runs["mixmask"]
    linear = mix / "linear.json"
    monkeypatch.chdir(moco.parent)
    typed = f"{moco.name}/checkpoints/last.ckpt"  # passes the name check alone
    overrides = ["linear.epochs=1", "linear.train_subset=32", "linear.val_subset=16"]
    try:
        assert main(["linear", typed, "--out", str(linear), *overrides]) == 0
        result = json.loads(linear.read_text())
        assert result["checkpoint"] == typed
        assert result["checkpoint_resolved"] == str((moco / "checkpoints" / "last.ckpt").resolve())
        with pytest.warns(ConfigWarning, match="another run's checkpoints/last.ckpt"):
            assert load_run(mix).offline_linear_acc1 is None
        # the run's own, named by its absolute path: shown
        own = mix / "checkpoints" / "last.ckpt"
        linear.write_text(json.dumps({**result, "checkpoint_resolved": str(own.resolve())}))
        assert load_run(mix).offline_linear_acc1 == result["acc1"]
        # the probed path no longer exists (the run was moved since): the name check decides
        gone = tmp_path / "moved" / "checkpoints" / "last.ckpt"
        linear.write_text(json.dumps({**result, "checkpoint_resolved": str(gone)}))
        assert load_run(mix).offline_linear_acc1 == result["acc1"]
    finally:
        linear.unlink(missing_ok=True)


def test_runs_of_one_name_in_two_folders_are_told_apart(tiny_runs, tmp_path):
    # the README's per-seed folders: runs_a/mixmask-s1 and runs_b/mixmask-s1 were two rows
    # (and two legends) both named mixmask-s1
    import shutil

    for parent, run in (("runs_a", "mocov2plus"), ("runs_b", "mixmask")):
        shutil.copytree(tiny_runs[run], tmp_path / parent / "same-name")
    pair = [tmp_path / "runs_a" / "same-name", tmp_path / "runs_b" / "same-name"]
    table = compare_runs(pair, tmp_path / "out")["table"]
    assert "| runs_a/same-name |" in table and "| runs_b/same-name |" in table
    assert unique_names([tmp_path / "a" / "x", tmp_path / "b" / "y"]) == ["x", "y"]


def test_compare_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "summary.json is missing" in err


def test_epoch_curves_tell_the_untrained_k_nn_from_epoch_1_when_an_epoch_is_one_step(tmp_path):
    write_one_step_epoch_logs(tmp_path)
    curves = epoch_curves(tmp_path)
    assert curves["val_knn_acc1"] == {0: 28.0, 1: 21.0, 2: 37.0}
    assert curves["val_acc1"] == {0: 9.0, 1: 8.0, 2: 6.0}
    assert curves["train_nce_loss_epoch"] == {1: 1.5, 2: 2.9}
    assert not any(key.startswith("lr-") for key in curves)  # per-step rows carry no epoch
    contrastive, total = ssl_loss_curves(curves)
    assert contrastive == {1: 1.5, 2: 2.9}
    assert total == pytest.approx({1: 3.1, 2: 5.9})  # nce + mask, not the classifier's loss

    (tmp_path / "init_metrics.json").write_text("{}")  # not measured before training
    assert epoch_curves(tmp_path)["val_knn_acc1"] == {1: 21.0, 2: 37.0}  # the row at 0 is e1
    assert epoch_curves(tmp_path / "missing") == {}


def test_figures_measured_with_different_settings_are_marked(tiny_runs, tmp_path, capsys):
    """Once: two linear probes of different recipes (preset, epochs, images) stood side by
    side in the offline linear column, unmarked, as if they ranked the methods."""
    import shutil
    import warnings

    from omegaconf import OmegaConf

    runs = {}
    for name, method in (("a", "mocov2plus"), ("b", "mixmask")):
        runs[name] = tmp_path / name
        shutil.copytree(tiny_runs[method], runs[name])  # copy2: the files keep their times
        (runs[name] / "linear.json").unlink(missing_ok=True)
    probes = {
        "a": ["--preset", "small", "linear.epochs=1", "linear.train_subset=32"],
        "b": ["--preset", "paper", "linear.epochs=2", "linear.train_subset=48"],
    }
    for name, argv in probes.items():
        last = runs[name] / "checkpoints" / "last.ckpt"
        assert main(["linear", str(last), *argv, "linear.val_subset=16"]) == 0
    capsys.readouterr()

    with pytest.warns(ConfigWarning) as caught:
        result = compare_runs([runs["a"], runs["b"]], tmp_path / "out")
    lines = [str(w.message) for w in caught if "different settings" in str(w.message)]
    assert len(lines) == 1, lines  # the k-NN monitors were alike
    line = lines[0]
    assert line.startswith("offline linear top-1 (†) of a, b measured with different settings")
    for fragment in (
        "preset small (a), paper (b)",
        "linear.epochs 1 (a), 2 (b)",
        "linear.train_subset 32 (a), 48 (b)",
        "train_images 32 (a), 48 (b)",
        "linear.lr 1.0 (a), 30.0 (b)",
    ):
        assert fragment in line, line
    assert "val_images" not in line  # 16 each: alike
    rows = [[c.strip() for c in r.strip("|").split("|")] for r in result["table"].splitlines()[2:]]
    assert all(r[6].endswith(" †") for r in rows) and not any(r[4].endswith("†") for r in rows)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "† offline linear top-1 measured with different settings:" in report
    assert "- a: preset small, train_images 32, linear.epochs 1, linear.lr 1.0," in report
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    probe_b = saved["rows"][1]["offline_linear_settings"]
    assert (probe_b["preset"], probe_b["linear.epochs"], probe_b["val_images"]) == ("paper", 2, 16)
    assert "linear.epochs" in saved["rows"][0]["differs"]["offline linear top-1"]
    assert saved["warnings"] == [line]

    # the same recipe in both: nothing marked; a k-NN monitor at another T is
    linear_b = json.loads((runs["b"] / "linear.json").read_text())
    linear_a = json.loads((runs["a"] / "linear.json").read_text())
    same = {k: linear_a[k] for k in ("preset", "settings", "train_images", "val_images")}
    (runs["b"] / "linear.json").write_text(json.dumps({**linear_b, **same}))
    cfg = OmegaConf.load(runs["b"] / "config.yaml")
    cfg.knn_eval.T = 0.2
    OmegaConf.save(cfg, runs["b"] / "config.yaml")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compare_runs([runs["a"], runs["b"]], tmp_path / "out2")
    lines = [str(w.message) for w in caught if "different settings" in str(w.message)]
    assert lines == [
        "k-NN top-1 (†) of a, b measured with different settings: knn_eval.T "
        "0.1 (a), 0.2 (b); these figures do not rank the methods alone"
    ], lines
    rows = [[c.strip() for c in r.strip("|").split("|")] for r in result["table"].splitlines()[2:]]
    assert all(r[4].endswith(" †") for r in rows) and not any(r[6].endswith("†") for r in rows)
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--out", str(tmp_path / "cli")]) == 0
    captured = capsys.readouterr()
    assert "- b: knn_eval.T 0.2" in captured.out
    assert "warning: k-NN top-1 (†) of a, b measured with different settings" in captured.err


def _summary_run(root, name: str, **summary) -> object:
    """A run folder holding only ``summary.json`` (``summary``'s fields)."""
    run = root / name
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"method": "mixmask", "epochs": 2, **summary}))
    return run


@pytest.mark.parametrize("subsets", [True, False])
def test_monitors_on_images_that_other_seeds_picked_are_marked(tmp_path, subsets):
    """Once the k-NN and online linear columns of two seeds stood unmarked, although each
    run's seed picked its own data.val_subset / data.knn_train_subset images (none shared)."""
    import warnings

    size = 32 if subsets else None
    runs = []
    for seed in (1, 2):
        run = _summary_run(
            tmp_path, f"s{seed}", dataset="fashion_mnist", knn_acc1=40.0 + seed, linear_acc1=9.0
        )
        data = {"val_subset": size, "knn_train_subset": size}
        (run / "config.yaml").write_text(json.dumps({"seed": seed, "data": data}))
        runs.append(run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compare_runs(runs, tmp_path / "out")
    lines = sorted(str(w.message) for w in caught if "different settings" in str(w.message))
    if not subsets:  # every image of the splits: the seed picks nothing
        assert lines == []
        return
    assert [line.split(" (†)")[0] for line in lines] == ["k-NN top-1", "online linear top-1"]
    assert all("seed 1 (s1), 2 (s2)" in line for line in lines), lines


def test_a_collapsed_runs_accuracies_are_marked_and_named(tmp_path, capsys):
    """Once: a collapsed run's k-NN top-1 60.00 stood unmarked, the best of its column, and
    compare.json's rows did not say it had collapsed."""
    spread = {"embedding_std_spread": 0.25, "linear_acc1": 9.38}
    fine = _summary_run(tmp_path, "fine", knn_acc1=46.88, embedding_std=0.075, **spread)
    gone = _summary_run(
        tmp_path, "gone", knn_acc1=60.0, embedding_std=0.01, collapsed=True, **spread
    )
    with pytest.warns(ConfigWarning, match="gone collapsed"):
        result = compare_runs([fine, gone], tmp_path / "out")
    rows = [[c.strip() for c in r.strip("|").split("|")] for r in result["table"].splitlines()[2:]]
    assert (rows[0][4], rows[0][5]) == ("46.88", "9.38")
    assert (rows[1][4], rows[1][5]) == ("60.00 (collapsed)", "9.38 (collapsed)")
    line = "gone collapsed (embedding_std 0.0100, 4.0% of its spread value)"
    assert line in result["notes"] and line in (tmp_path / "out" / "report.md").read_text()
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert [r["collapsed"] for r in saved["rows"]] == [None, True]
    assert [r["embedding_std"] for r in saved["rows"]] == [0.075, 0.01]
    assert [r["embedding_std_spread"] for r in saved["rows"]] == [0.25, 0.25]
    assert [w for w in saved["warnings"] if line in w] == saved["warnings"]
    assert main(["compare", str(fine), str(gone), "--out", str(tmp_path / "cli")]) == 0
    captured = capsys.readouterr()
    assert line in captured.out and f"warning: {line}" in captured.err


def test_a_last_epoch_cut_short_is_plotted_at_its_fraction(tmp_path):
    """Once: a run of max_steps=12 at 8 steps per epoch (1.5 epochs in summary.json) had its
    curves' last point at x=2, as if it had trained two whole epochs."""
    run = _summary_run(tmp_path, "steps", epochs=1.5, knn_acc1=40.6)
    (run / "logs").mkdir()
    (run / "logs" / "metrics.csv").write_text(
        "epoch,step,train_nce_loss_epoch,val_knn_acc1\n"
        "0,7,,37.5\n"
        "0,7,2.48,\n"
        "1,11,,40.6\n"
        "1,11,2.41,\n"
    )
    record = load_run(run)
    assert record.knn_curve == {1: 37.5, 1.5: 40.6}
    assert max(record.contrastive_curve) == max(record.total_loss_curve) == 1.5
    # epochs not given: epoch 0 is whole (epoch 1 follows it), and tells 8 steps per epoch
    assert epoch_curves(run)["val_knn_acc1"] == {1: 37.5, 1.5: 40.6}


#: ``logs/metrics.csv`` of a real run (max_epochs=3 at 8 steps per epoch, k-NN every 5 steps:
#: check_val_every_n_epoch=null val_check_interval=5), its epoch, step and k-NN columns.
MID_EPOCH_VALIDATION_CSV = (
    "epoch,step,train_nce_loss_epoch,val_knn_acc1\n"
    "0,0,,28.1\n"  # before training (init_metrics.json)
    "0,4,,34.4\n"
    "0,7,2.48,\n"
    "1,9,,40.6\n"
    "1,14,,46.9\n"
    "1,15,2.98,\n"
    "2,19,,43.8\n"
    "2,23,,40.6\n"
    "2,23,2.96,\n"
)


def test_a_validation_inside_an_epoch_is_plotted_where_it_was_measured(tmp_path):
    """Once: the k-NN measured after 5 of 8 steps was plotted at epoch 1, and the ones after
    steps 10 and 20 were dropped (each overwritten by the next of its epoch)."""
    run = _summary_run(tmp_path, "rvci", epochs=3, steps=24, knn_acc1=40.6)
    (run / "logs").mkdir()
    (run / "logs" / "metrics.csv").write_text(MID_EPOCH_VALIDATION_CSV)
    (run / "init_metrics.json").write_text('{"knn_acc1_at_init": 28.1}')
    expected = {0: 28.1, 0.625: 34.4, 1.25: 40.6, 1.875: 46.9, 2.5: 43.8, 3: 40.6}
    assert epoch_curves(run, 3) == {
        "val_knn_acc1": expected,
        "train_nce_loss_epoch": {1: 2.48, 2: 2.98, 3: 2.96},
    }
    assert load_run(run).knn_curve == expected
    # k-NN every epoch at val_check_interval=5: after 5 of each epoch's 8 steps
    (run / "logs" / "metrics.csv").write_text(
        "epoch,step,train_nce_loss_epoch,val_knn_acc1\n"
        "0,0,,28.1\n0,4,,34.4\n0,7,2.48,\n1,12,,40.6\n1,15,2.98,\n"
    )
    assert epoch_curves(run, 2)["val_knn_acc1"] == {0: 28.1, 0.625: 34.4, 1.625: 40.6}


def test_a_resumed_runs_mid_epoch_validations_continue_its_steps(tmp_path):
    """A resume appends to metrics.csv with the global step going on; a run cut by max_steps
    inside its last epoch keeps that epoch's fraction (1.5 here)."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text(
        "epoch,step,train_nce_loss_epoch,val_knn_acc1\n"
        "0,4,,30.0\n0,7,,31.0\n0,7,2.5,\n"  # first session: 1 epoch
        "1,9,,35.0\n1,11,,36.0\n1,11,2.4,\n"  # resumed, stopped by max_steps=12
    )
    assert epoch_curves(tmp_path, 1.5) == {
        "val_knn_acc1": {0.625: 30.0, 1: 31.0, 1.25: 35.0, 1.5: 36.0},
        "train_nce_loss_epoch": {1: 2.5, 1.5: 2.4},
    }
    # max_time stopped epoch 0 after 4 steps (Lightning ends a stopped epoch as a whole one,
    # logging its means at step 3), and a resume trained the rest of it: 8 steps, not 4
    (tmp_path / "logs" / "metrics.csv").write_text(
        "epoch,step,train_nce_loss_epoch,val_knn_acc1\n"
        "0,3,2.6,\n0,4,,30.0\n0,7,,31.0\n0,7,2.5,\n1,15,,37.0\n1,15,2.3,\n"
    )
    assert epoch_curves(tmp_path, 2) == {
        "val_knn_acc1": {0.625: 30.0, 1: 31.0, 2: 37.0},
        "train_nce_loss_epoch": {0.5: 2.6, 1: 2.5, 2: 2.3},
    }


def _cells(table: str) -> list[list[str]]:
    """The data rows of a Markdown table, as lists of stripped cells."""
    return [[c.strip() for c in r.strip("|").split("|")] for r in table.splitlines()[2:]]


def test_runs_of_different_backbones_are_marked(tmp_path, capsys):
    """Once: a ResNet-18 and a ResNet-50 run were ranked side by side, and nothing in the table,
    the warnings or compare.json said that their backbones differed."""
    small = {"channels": [8, 16, 32, 64], "zero_init_last": True}
    r18 = _summary_run(
        tmp_path, "r18", backbone="resnet18", backbone_kwargs=small, knn_acc1=40.0, linear_acc1=9.0
    )
    r50 = _summary_run(
        tmp_path,
        "r50",
        backbone="resnet50",
        backbone_kwargs={"zero_init_last": True, "channels": [8, 16, 32, 64]},
        knn_acc1=50.0,
        linear_acc1=12.0,
    )
    with pytest.warns(ConfigWarning) as caught:
        result = compare_runs([r18, r50], tmp_path / "out")
    lines = [str(w.message) for w in caught]
    assert (
        "k-NN top-1 (†) of r18, r50 measured with different settings: backbone resnet18 (r18), "
        "resnet50 (r50); these figures do not rank the methods alone"
    ) in lines
    assert any(line.startswith("online linear top-1 (†) of r18, r50") for line in lines), lines
    assert not any("backbone_kwargs" in line for line in lines)  # alike, in another key order
    header = result["table"].splitlines()[0]
    assert "| backbone |" in header
    rows = _cells(result["table"])
    assert [r[2] for r in rows] == ["resnet18", "resnet50"]  # no kwargs differ
    assert all(r[4].endswith(" †") and r[5].endswith(" †") for r in rows), rows
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert [r["backbone"] for r in saved["rows"]] == ["resnet18", "resnet50"]
    assert saved["rows"][0]["backbone_kwargs"] == small
    assert saved["rows"][0]["differs"]["k-NN top-1"] == ["backbone"]

    # one name, other kwargs: the kwargs that differ are named in the column and the warning
    wide = _summary_run(
        tmp_path,
        "wide",
        backbone="resnet18",
        backbone_kwargs={**small, "channels": [64, 128, 256, 512]},
        knn_acc1=45.0,
    )
    with pytest.warns(ConfigWarning) as caught:
        result = compare_runs([r18, wide], tmp_path / "out2")
    rows = _cells(result["table"])
    assert [r[2] for r in rows] == [
        "resnet18 channels=[8, 16, 32, 64]",
        "resnet18 channels=[64, 128, 256, 512]",
    ]
    assert rows[0][4].endswith(" †"), rows
    line = next(str(w.message) for w in caught if str(w.message).startswith("k-NN top-1"))
    assert "backbone.kwargs.channels [8, 16, 32, 64] (r18), [64, 128, 256, 512] (wide)" in line
    assert "zero_init_last" not in line

    # a kwarg one run did not set is its backbone's default, not "not recorded"
    bare = _summary_run(
        tmp_path,
        "bare",
        backbone="resnet18",
        backbone_kwargs={"zero_init_last": True},
        knn_acc1=1.0,
    )
    with pytest.warns(
        ConfigWarning, match=r"channels \[8, 16, 32, 64\] \(r18\), default \(bare\);"
    ):
        result = compare_runs([r18, bare], tmp_path / "out4")
    assert [r[2] for r in _cells(result["table"])] == [
        "resnet18 channels=[8, 16, 32, 64]",
        "resnet18",
    ]

    # an older run's summary.json records neither: '?', marked, and no crash
    old = _summary_run(tmp_path, "old", knn_acc1=41.0)
    with pytest.warns(ConfigWarning, match=r"backbone resnet18 \(r18\), not recorded \(old\);"):
        result = compare_runs([r18, old], tmp_path / "out3")
    rows = _cells(result["table"])
    assert rows[1][2] == "?" and rows[1][4].endswith(" †"), rows
    saved = json.loads((tmp_path / "out3" / "compare.json").read_text())
    assert (saved["rows"][1]["backbone"], saved["rows"][1]["backbone_kwargs"]) == (None, None)


def test_byol_losses_are_not_plotted_on_the_infonce_axis(tmp_path):
    """Once: loss.png's one "contrastive loss" panel drew a BYOL run's 2 - 2cos next to MoCo's
    InfoNCE in nats, as if the curves compared."""
    from solo_mixmask.eval.compare import loss_rows

    runs = {}
    for name, columns in (
        ("moco", "train_nce_loss_epoch"),
        ("byol", "train_byol_loss_epoch,train_mask_loss_epoch"),
    ):
        runs[name] = _summary_run(tmp_path, name, method=name, epochs=2)
        (runs[name] / "logs").mkdir()
        values = ",".join(["0.5"] * len(columns.split(",")))
        (runs[name] / "logs" / "metrics.csv").write_text(
            f"epoch,step,{columns}\n0,7,{values}\n1,15,{values}\n"
        )
    records = [load_run(runs["moco"]), load_run(runs["byol"])]
    assert [(kind, [r.name for r in rows]) for kind, rows in loss_rows(records)] == [
        ("train_nce_loss_epoch", ["moco"]),
        ("train_byol_loss_epoch", ["byol"]),
    ]
    out = tmp_path / "out"
    compare_runs([runs["moco"], runs["byol"]], out)
    with Image.open(out / "loss.png") as img:
        assert img.size == (1100, 800)  # a row of panels per kind of loss
    assert "comparable across methods" not in (out / "report.md").read_text()
    # one kind alone: one row, as before
    assert [kind for kind, _ in loss_rows(records[:1])] == ["train_nce_loss_epoch"]

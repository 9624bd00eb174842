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
    assert [r[2] for r in rows] == ["1", "1"]
    summary = json.loads((mix / "summary.json").read_text())
    assert rows[1][3] == f"{summary['knn_acc1']:.2f}"
    assert (rows[0][5], rows[1][5]) == ("-", "12.35")  # offline linear only where present
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
    assert "| mocov2plus | mocov2plus | 1 |" in printed and (tmp_path / "cli" / "knn.png").is_file()


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
    assert all(r[5].endswith(" †") for r in rows) and not any(r[3].endswith("†") for r in rows)
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
    assert all(r[3].endswith(" †") for r in rows) and not any(r[5].endswith("†") for r in rows)
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
    assert (rows[0][3], rows[0][4]) == ("46.88", "9.38")
    assert (rows[1][3], rows[1][4]) == ("60.00 (collapsed)", "9.38 (collapsed)")
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
    assert epoch_curves(run)["val_knn_acc1"] == {1: 37.5, 2: 40.6}  # epochs not given

"""compare: a Markdown table and plots for two real runs (MoCo v2 vs MixMask)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from solo_mixmask.cli import main
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

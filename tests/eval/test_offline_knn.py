"""Offline k-NN (solo-mixmask knn) of a real run against its online monitor, and its bad inputs."""

from __future__ import annotations

import json

import pytest

from solo_mixmask.eval.offline_knn import run_knn


def test_offline_knn_agrees_with_the_online_monitor(tiny_runs):
    for method, run in tiny_runs.items():
        summary = json.loads((run / "summary.json").read_text())
        result = run_knn(run / "checkpoints" / "last.ckpt", device="cpu")
        assert result["train_images"] == 64 and result["val_images"] == 32  # the run's subsets
        assert set(result["k"]) == {"5", "10", "20", "100", "200"}  # defaults + knn_eval.k
        online = result["online"]
        assert (online["k"], online["temperature"], online["acc1"]) == (5, 0.1, summary["knn_acc1"])
        assert abs(online["offline_minus_online_acc1"]) <= 1.0, method
        assert abs(result["k"]["5"]["acc1"] - summary["knn_acc1"]) <= 1.0
        saved = json.loads((run / "knn.json").read_text())
        assert saved["k"] == result["k"]


def test_bad_k_and_temperature(tiny_runs):
    from solo_mixmask.errors import ConfigError

    ckpt = tiny_runs["mixmask"] / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="--k"):
        run_knn(ckpt, ks=[0])
    with pytest.raises(ConfigError, match="--temperature"):
        run_knn(ckpt, ks=[5], temperature=0.0)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (["knn_eval.T=0.5"], "temperature 0.5 offline, 0.1 online"),
        (["data.val_subset=16"], "data.val_subset 16 offline, 32 online"),
        # the in-memory path resizes the eval views with torch, the PIL path with PIL
        (["data.format=memory"], "data.format 'memory' offline, 'image_folder' online"),
        # the offline k-NN scores with performance.knn_dtype, as the monitor does
        (["performance.knn_dtype=bfloat16"], "similarities in bfloat16 offline, float32 online"),
    ],
)
def test_online_figure_keeps_its_own_settings_and_is_compared_only_alike(
    tiny_runs, tmp_path, capsys, overrides, reason
):
    # once: knn_eval.T=0.5 labelled the online figure (measured at T 0.1) as T 0.5 and
    # reported offline_minus_online_acc1 between the two
    from solo_mixmask.cli import main

    run = tiny_runs["mixmask"]
    out = tmp_path / "knn.json"
    argv = ["knn", str(run / "checkpoints" / "last.ckpt"), *overrides, "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    online = json.loads(out.read_text())["online"]
    summary = json.loads((run / "summary.json").read_text())
    assert (online["k"], online["temperature"], online["acc1"]) == (5, 0.1, summary["knn_acc1"])
    assert "offline_minus_online_acc1" not in online
    assert online["not_compared"] == reason


def test_online_figure_is_compared_only_on_the_weights_it_measured(tiny_runs, tmp_path):
    # once: knn of epoch000.ckpt (or of a last.ckpt a resume wrote after summary.json) reported
    # offline_minus_online_acc1 against the final weights' online k-NN
    import os
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_runs["mixmask"], run)  # copy2: the files keep their times
    last = run / "checkpoints" / "last.ckpt"
    shutil.copy2(last, run / "checkpoints" / "epoch000.ckpt")
    online = run_knn(run / "checkpoints" / "epoch000.ckpt", ks=[5], device="cpu")["online"]
    assert "offline_minus_online_acc1" not in online
    assert online["not_compared"] == "the online figure is of last.ckpt, not epoch000.ckpt"

    assert "offline_minus_online_acc1" in run_knn(last, ks=[5], device="cpu")["online"]
    later = (run / "summary.json").stat().st_mtime + 60
    os.utime(last, (later, later))
    online = run_knn(last, ks=[5], device="cpu")["online"]
    assert "offline_minus_online_acc1" not in online
    assert online["not_compared"] == "last.ckpt was written after summary.json (the run trained on)"


def test_online_figure_of_bf16_or_auto_similarities(tiny_runs, tmp_path):
    """A run whose monitor scored in bfloat16 (performance.knn_dtype=bfloat16, or auto on
    CUDA) is compared only with an offline k-NN that scored alike; auto does not say which the
    run used, so it is never compared."""
    import shutil

    from omegaconf import OmegaConf

    run = tmp_path / "run"
    shutil.copytree(tiny_runs["mixmask"], run)  # copy2: the files keep their times
    last = run / "checkpoints" / "last.ckpt"
    for setting, offline, reason in [
        ("bfloat16", [], None),  # the run's own setting, offline too
        ("bfloat16", ["performance.knn_dtype=float32"], "float32 offline, bfloat16 online"),
        ("auto", [], "float32 offline, performance.knn_dtype=auto online"),
    ]:
        cfg = OmegaConf.load(run / "config.yaml")
        OmegaConf.update(cfg, "performance.knn_dtype", setting)
        OmegaConf.save(cfg, run / "config.yaml")
        result = run_knn(last, ks=[5], overrides=offline, device="cpu")
        online = result["online"]
        if reason is None:
            assert result["matmul_dtype"] == "bfloat16" and "offline_minus_online_acc1" in online
        else:
            assert "offline_minus_online_acc1" not in online
            assert reason in online["not_compared"], online["not_compared"]

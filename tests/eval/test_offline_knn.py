"""Offline k-NN (solo-mixmask knn) of a real run against its online monitor, and its bad inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """A tiny MixMask run trained and validated in bf16-mixed on the CPU (as ``auto`` runs on
    CUDA): its online k-NN features were extracted under bfloat16 autocast."""
    from tests.conftest import FMNIST_DIR, tiny_cfg

    if not os.path.isdir(FMNIST_DIR):
        pytest.skip(f"Fashion-MNIST not installed at {FMNIST_DIR}")
    from solo_mixmask.run.pretrain import run_pretrain

    root = tmp_path_factory.mktemp("bf16")
    cfg = tiny_cfg(
        "mixmask",
        name="bf16",
        data__train_subset=32,
        data__knn_train_subset=64,
        data__val_subset=32,
        optimizer__batch_size=16,
        precision="bf16-mixed",
        checkpoint__dir=str(root),
        checkpoint__run_dir=str(root / "bf16"),
    )
    return Path(run_pretrain(cfg)["run_dir"])


def test_online_figure_of_a_bf16_run_is_not_compared_with_float32_features(bf16_run, capsys):
    """Once: the float32 offline k-NN of a bf16-mixed run (the online monitor extracts its
    features under autocast) reported offline_minus_online_acc1 as if measured alike."""
    from solo_mixmask.cli import main

    last = bf16_run / "checkpoints" / "last.ckpt"
    summary = json.loads((bf16_run / "summary.json").read_text())
    assert summary["precision"] == "bf16-mixed"  # recorded by the run
    result = run_knn(last, ks=[5], device="cpu", out=bf16_run / "f32.json")
    online = result["online"]
    assert result["precision"] == "32-true" and online["precision"] == "bf16-mixed"
    assert "offline_minus_online_acc1" not in online
    assert online["not_compared"] == (
        "features in float32 offline, bf16-mixed online (--precision run extracts them as the "
        "run did)"
    )
    # asked for, the features are extracted as the monitor did: compared, and equal
    argv = ["knn", str(last), "--k", "5", "--precision", "run", "--out", str(bf16_run / "r.json")]
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    result = json.loads((bf16_run / "r.json").read_text())
    assert result["precision"] == "bf16-mixed"
    assert result["online"]["offline_minus_online_acc1"] == 0.0
    assert result["k"]["5"]["acc1"] == summary["knn_acc1"]
    # the run's precision as an override would be the run's, not the features': refused
    argv = ["knn", str(last), "precision=bf16-mixed", "--out", str(bf16_run / "x.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "precision='bf16-mixed' is not allowed: expected --precision" in err, err


@pytest.mark.parametrize(
    ("config", "clock", "expected"),
    [
        ({"precision": "32-true", "accelerator": "gpu"}, "cuda events", "32-true"),
        ({"precision": 16}, None, "16-mixed"),  # Lightning's short name
        ({"precision": "auto", "accelerator": "cpu"}, None, "32-true"),
        ({"precision": "auto", "accelerator": "auto"}, "host", "32-true"),
        ({"precision": "auto", "accelerator": "auto"}, "cuda events", "bf16-mixed"),
        ({"accelerator": "gpu"}, None, "bf16-mixed"),  # no GradScaler state: bf16
        ({"precision": "auto", "accelerator": "auto"}, None, None),  # run older than the clock
        ({"precision": "auto", "accelerator": "auto"}, "mixed", None),  # resumed elsewhere
    ],
)
def test_the_runs_precision_is_resolved_as_the_run_resolved_it(tiny_runs, config, clock, expected):
    from solo_mixmask.eval.offline_knn import run_precision

    last = tiny_runs["mixmask"] / "checkpoints" / "last.ckpt"
    summary = {} if clock is None else {"images_per_sec_clock": clock}
    assert run_precision(config, summary, last) == expected
    assert run_precision(config, {**summary, "precision": "bf16-mixed"}, last) == "bf16-mixed"


def test_a_run_of_unrecorded_precision_is_not_compared(tiny_runs, tmp_path):
    """precision auto on accelerator auto, in a summary without the clock that says where it
    trained (older runs): the precision is not known, so neither is the difference."""
    import shutil

    from omegaconf import OmegaConf

    from solo_mixmask.errors import ConfigError

    run = tmp_path / "run"
    shutil.copytree(tiny_runs["mixmask"], run)  # copy2: the files keep their times
    last = run / "checkpoints" / "last.ckpt"
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.precision, cfg.accelerator = "auto", "auto"
    OmegaConf.save(cfg, run / "config.yaml")
    summary_file = run / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary.pop("precision")  # a run older than the summary's precision field
    for clock, reason in [
        ("host", None),  # trained off CUDA: 32-true
        ("cuda events", "features in float32 offline, bf16-mixed online"),
        (None, "the run's precision is not recorded"),
    ]:
        summary.pop("images_per_sec_clock", None)
        if clock is not None:
            summary["images_per_sec_clock"] = clock
        stamp = summary_file.stat().st_mtime
        summary_file.write_text(json.dumps(summary))
        os.utime(summary_file, (stamp, stamp))
        online = run_knn(last, ks=[5], device="cpu", out=tmp_path / "knn.json")["online"]
        if reason is None:
            assert "offline_minus_online_acc1" in online, online
        else:
            assert "offline_minus_online_acc1" not in online
            assert reason in online["not_compared"], online["not_compared"]
    with pytest.raises(ConfigError, match="--precision='run'.*precision is not recorded"):
        run_knn(last, ks=[5], device="cpu", out=tmp_path / "knn.json", precision="run")


def test_a_cuda_run_with_gradscaler_state_trained_in_fp16(tmp_path):
    import torch

    from solo_mixmask.eval.offline_knn import run_precision

    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "MixedPrecision": {"scale": 65536.0}}, ckpt)
    clock = {"images_per_sec_clock": "cuda events"}
    assert run_precision({"precision": "auto", "accelerator": "auto"}, clock, ckpt) == "16-mixed"
    assert run_precision({"accelerator": "cuda"}, {}, tmp_path / "missing.ckpt") is None

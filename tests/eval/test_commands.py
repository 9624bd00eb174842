"""The evaluation commands fail with one 'error:' line and status 2 on user mistakes."""

from __future__ import annotations

import pytest
import torch

from solo_mixmask.cli import build_parser, main


@pytest.mark.parametrize(
    "argv",
    [
        ["linear", "{missing}", "--preset", "small"],
        ["knn", "{missing}", "--k", "10", "20"],
        ["convert", "{missing}", "{out}", "--format", "detectron2"],
    ],
)
def test_missing_checkpoint(argv, tmp_path, capsys):
    missing = tmp_path / "no" / "last.ckpt"
    argv = [a.format(missing=missing, out=tmp_path / "o.pkl") for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0]
    assert "Traceback" not in captured.err


def test_options_and_overrides_in_any_order():
    parser = build_parser()
    args = parser.parse_args(["linear", "C", "--preset", "small", "linear.epochs=5", "a=1"])
    assert (args.checkpoint, args.preset, args.overrides) == (
        "C",
        "small",
        ["linear.epochs=5", "a=1"],
    )
    args = parser.parse_args(["knn", "C", "x=1", "--k", "10", "20", "y=2"])
    assert (args.k, args.overrides, args.k_overrides) == ([10, 20], ["x=1"], ["y=2"])
    # a second --k replaces the ks; the overrides caught after the first are kept
    args = parser.parse_args(["knn", "C", "--k", "5", "y=2", "--k", "10", "z=3"])
    assert (args.k, args.k_overrides) == ([10], ["y=2", "z=3"])
    args = parser.parse_args(["linear", "--no-cached-features", "C"])
    assert args.cached_features is False


# --------------------------------------------------------------------------- output paths
# Issue 12: a path that cannot take the output is one error line (exit 2) before any work.


def _error_line(capsys, argv) -> str:
    assert main([str(a) for a in argv]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.fixture
def checkpoint(tmp_path):
    from tests.eval.helpers import method_checkpoint

    return method_checkpoint(tmp_path / "m.ckpt", kwargs={"channels": [8, 16, 32, 64]})[0]


@pytest.fixture
def no_features(monkeypatch):
    """Fail the test if features are extracted (the output check must come first)."""
    from solo_mixmask.eval import linear, offline_knn

    def extract(*args, **kwargs):
        raise AssertionError("features were computed before the output path was checked")

    monkeypatch.setattr(offline_knn, "extract_features", extract)
    monkeypatch.setattr(linear, "extract_features", extract)


def test_convert_refuses_folders_unwritable_paths_and_existing_files(checkpoint, tmp_path, capsys):
    line = _error_line(capsys, ["convert", checkpoint, tmp_path, "--format", "timm"])
    assert line.startswith(f"error: out='{tmp_path}'") and "existing folder" in line, line
    line = _error_line(capsys, ["convert", checkpoint, "/proc/r18.pth", "--format", "timm"])
    assert "out='/proc/r18.pth'" in line and "not under /proc" in line, line
    line = _error_line(capsys, ["convert", checkpoint, checkpoint / "x.pth", "--format", "timm"])
    assert "is a file, not a folder" in line, line
    existing = tmp_path / "r18.pth"
    existing.write_bytes(b"an earlier export")
    line = _error_line(capsys, ["convert", checkpoint, existing, "--format", "timm"])
    assert "--force" in line and existing.read_bytes() == b"an earlier export", line
    assert main(["convert", str(checkpoint), str(existing), "--format", "timm", "--force"]) == 0
    assert torch.load(existing, weights_only=True)["conv1.weight"].shape[0] == 64


@pytest.mark.parametrize("command", ["knn", "linear"])
def test_unwritable_out_is_refused_before_features(
    command, checkpoint, tmp_path, capsys, no_features
):
    line = _error_line(capsys, [command, checkpoint, "--out", "/proc/result.json"])
    assert line.startswith("error: --out='/proc/result.json'") and "/proc" in line, line
    line = _error_line(capsys, [command, checkpoint, "--out", tmp_path])
    assert "existing folder" in line, line


@pytest.mark.parametrize("command", ["knn", "linear"])
def test_a_gpu_this_machine_lacks_names_device(
    command, checkpoint, capsys, monkeypatch, no_features
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = _error_line(capsys, [command, checkpoint, "--device", "cuda"])
    assert line.startswith("error: --device='cuda' is not allowed"), line
    assert "CUDA is not available" in line, line


def test_compare_out_must_be_a_folder(tmp_path, capsys):
    existing = tmp_path / "report.md"
    existing.write_text("mine")
    line = _error_line(capsys, ["compare", tmp_path / "no_run", "--out", existing])
    assert line.startswith(f"error: --out='{existing}'") and "existing file" in line, line
    assert existing.read_text() == "mine"


@pytest.mark.parametrize(
    ("out", "fragment"), [("{tmp}", "existing folder"), ("{tmp}/m.jpg", ".png")]
)
def test_show_masks_out_must_be_a_png_file(tmp_path, capsys, out, fragment, monkeypatch):
    from solo_mixmask.eval import pictures

    monkeypatch.setattr(pictures, "sample_images", lambda *a: pytest.fail("images were read"))
    out = out.format(tmp=tmp_path)
    line = _error_line(capsys, ["show-masks", "--out", out])
    assert line.startswith(f"error: --out='{out}'") and fragment in line, line

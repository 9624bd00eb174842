"""The evaluation commands fail with one 'error:' line and status 2 on user mistakes."""

from __future__ import annotations

import pytest

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
    args = parser.parse_args(["linear", "--no-cached-features", "C"])
    assert args.cached_features is False

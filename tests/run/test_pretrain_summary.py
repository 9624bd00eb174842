"""The summary's collapse fields: judged on the measured value, not on its rounding."""

from __future__ import annotations

import math

from solo_mixmask.eval.compare import embedding_std_cell
from solo_mixmask.run.pretrain import _last_logged, collapse_report

DIM = 128  # spread 1/sqrt(128) = 0.08839, collapse below 10% of it: 0.008839


def test_a_value_just_above_the_cut_is_not_collapsed_by_rounding(tmp_path):
    """0.00884 is above the cut; rounded to 4 decimals (0.0088) it was below, and the summary
    said collapsed where the epoch line did not."""
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,train_embedding_std\n0,0.2\n1,0.00884\n")
    std = _last_logged(csv, "train_embedding_std")
    assert std == 0.00884
    assert 0.00884 > 0.1 / math.sqrt(DIM) > 0.0088
    report = collapse_report(std, DIM)
    assert report["collapsed"] is False and report["embedding_std"] == 0.00884
    assert collapse_report(0.0088, DIM)["collapsed"] is True


def test_the_table_cell_shows_a_collapsed_share_with_one_decimal():
    assert embedding_std_cell(0.001, 0.25, True) == "0.0010 (0.4%) **collapsed**"
    assert embedding_std_cell(0.0612, 0.0884, False) == "0.0612 (69.2%)"
    assert embedding_std_cell(None, 0.0884, None) == "-"

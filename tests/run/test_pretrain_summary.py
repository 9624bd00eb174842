"""The summary's collapse fields and fractional epochs: judged on the measured value, not on its
rounding."""

from __future__ import annotations

import math

from solo_mixmask.eval.compare import embedding_std_cell
from solo_mixmask.run.pretrain import _logged_at, collapse_report, fractional_epochs

DIM = 128  # spread 1/sqrt(128) = 0.08839, collapse below 10% of it: 0.008839


def test_a_value_just_above_the_cut_is_not_collapsed_by_rounding(tmp_path):
    """0.00884 is above the cut; rounded to 4 decimals (0.0088) it was below, and the summary
    said collapsed where the epoch line did not."""
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train_embedding_std\n0,7,0.2\n1,15,0.00884\n")
    std = _logged_at(csv, "train_embedding_std", 15)
    assert std == 0.00884
    assert _logged_at(csv, "train_embedding_std", 14) is None  # never another step's
    assert 0.00884 > 0.1 / math.sqrt(DIM) > 0.0088
    report = collapse_report(std, DIM)
    assert report["collapsed"] is False and report["embedding_std"] == 0.00884
    assert collapse_report(0.0088, DIM)["collapsed"] is True


def test_the_table_cell_shows_a_collapsed_share_with_one_decimal():
    assert embedding_std_cell(0.001, 0.25, True) == "0.0010 (0.4%) **collapsed**"
    assert embedding_std_cell(0.0612, 0.0884, False) == "0.0612 (69.2%)"
    assert embedding_std_cell(None, 0.0884, None) == "-"


def test_an_epoch_in_progress_never_shows_as_done():
    """999 of 1000 batches of epoch 2 showed as 2.0 epochs (rounded to two decimals)."""
    assert fractional_epochs(1, 999, 1000) == 1.99
    assert fractional_epochs(1, 1, 2) == 1.5
    assert fractional_epochs(0, 1, 3) == 0.33
    assert fractional_epochs(0, 2, 3) == 0.66  # 0.666.. rounded down
    assert fractional_epochs(3, 29, 100) == 3.29  # exact hundredths stay exact
    assert fractional_epochs(2, 1, 1000) == 2.0  # 0.001 of an epoch: below the shown precision

"""benchmarks/common.py's timing summary."""

from __future__ import annotations

import sys

import pytest

from tests.benchmarks.helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from common import summary  # noqa: E402


@pytest.mark.parametrize(
    ("times", "q1", "q3"),
    [([2.0, 1.0], 1.25, 1.75), ([1.0, 2.0, 3.0], 1.5, 2.5), ([4.0], 4.0, 4.0)],
)
def test_quartiles_lie_between_the_fastest_and_slowest_time(times, q1, q3):
    # by hand: linear interpolation between the sorted times at 1/4 and 3/4 of their span
    s = summary(times)
    assert (s["q1_s"], s["q3_s"]) == pytest.approx((q1, q3))
    assert min(times) <= s["q1_s"] <= s["median_s"] <= s["q3_s"] <= max(times)
    assert s["min_s"] == min(times) and s["n"] == len(times)

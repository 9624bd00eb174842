"""benchmarks/step_time.py --smoke: every method timed, ratios and the mask share computed."""

from __future__ import annotations

import pytest

from tests.benchmarks.helpers import load, positive, run_script

METHODS = ("mocov2plus", "mixmask", "unmix", "unmix_mixmask", "byol")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("step_time")
    proc = run_script("step_time.py", "--smoke", "--out-dir", str(out))
    return load(out / "step_time.json"), (out / "step_time.md").read_text(), proc.stdout


def test_every_method_and_reference_is_timed(result):
    res, _, _ = result
    assert set(res["methods"]) == set(METHODS)
    for name, stats in res["methods"].items():
        assert stats["n"] == 2, name  # --smoke: 2 rounds after the warm-up
        assert positive(stats["median_s"]) and positive(stats["images_per_s"])
        assert stats["q1_s"] <= stats["median_s"] <= stats["q3_s"]
    for name in (
        "extra_pass",
        "moco_plus_extra",
        "masks_mixing",
        "mask_bank_refill",
        "unmix_mixing",
    ):
        assert positive(res["references"][name]["median_s"]), name
    assert res["settings"]["variant"].startswith("asymmetric")
    assert res["settings"]["method_kwargs"]["mixmask"]["symmetric"] is False


def test_ratios_follow_from_the_medians(result):
    res, _, _ = result
    m, refs = res["methods"], res["references"]
    moco = m["mocov2plus"]["median_s"]
    assert m["mocov2plus"]["ratio_to_mocov2plus"] == pytest.approx(1.0)
    extra = refs["extra_pass"]["median_s"]
    # FLOP-ideal: one extra query pass for mixmask / unmix, two for unmix_mixmask
    assert m["mixmask"]["ideal_ratio"] == pytest.approx((moco + extra) / moco)
    assert m["unmix_mixmask"]["ideal_ratio"] == pytest.approx((moco + 2 * extra) / moco)
    assert m["mixmask"]["ratio_to_mocov2plus"] == pytest.approx(m["mixmask"]["median_s"] / moco)
    gap = m["mixmask"]["ratio_to_mocov2plus"] / m["mixmask"]["ideal_ratio"] - 1
    assert res["goals"]["mixmask_gap_to_ideal"] == pytest.approx(gap)
    # masks taken from the bank + mixing, plus one bulk draw of the bank (4096 masks at grid 4,
    # one mask per step in the smoke settings) spread over the steps it serves
    per_step = refs["masks_mixing"]["median_s"] + refs["mask_bank_refill"]["median_s"] / 4096
    share = per_step / m["mixmask"]["median_s"]
    assert res["goals"]["mask_mixing_share_of_mixmask_step"] == pytest.approx(share)
    assert res["goals"]["mask_mixing_per_step"]["per_step_s"] == pytest.approx(per_step)
    assert "ideal_ratio" not in m["byol"]  # BYOL has no mixed queries


def test_markdown_and_stdout_hold_the_table(result):
    _, md, stdout = result
    assert "Command: `" in md and "--smoke" in md
    assert "| mixmask |" in md and "FLOP-ideal" in md and "## Goals" in md
    assert "| unmix_mixmask |" in stdout

"""benchmarks/gpu_check.sh --tiny (CPU): the GPU check's script runs and writes its JSON."""

from __future__ import annotations

from solo_mixmask.data.dali import dali_available
from tests.benchmarks.helpers import load, positive, run_gpu_script


def test_gpu_check_tiny_runs_on_cpu(tmp_path):
    # the script runs in this interpreter ($PYTHON), so dali_available() below speaks for it too
    run_gpu_script("gpu_check.sh", "--tiny", out=tmp_path, timeout=240)
    res = load(tmp_path / "gpu_check.json")
    assert (tmp_path / "gpu_check.log").is_file() and (tmp_path / "gpu_check.md").is_file()
    assert res["device"] == "cpu" and res["settings"]["tiny"] is True
    for method in ("mocov2plus", "mixmask", "unmix_mixmask"):
        s = res["steps"][method]
        assert positive(s["images_per_s"]) and s["n"] == 2
        assert s["peak_gpu_memory_gb"] == 0  # no GPU here
    assert res["steps"]["mixmask"]["ideal_ratio"] > 1
    assert res["steps"]["unmix_mixmask"]["ideal_ratio"] > res["steps"]["mixmask"]["ideal_ratio"]
    assert 0 < res["steps"]["mask_mixing_share_of_mixmask_step"] < 1
    assert res["host_syncs"] == {"skipped": "no CUDA device"}
    if dali_available():
        for fmt in ("dali", "image_folder"):
            assert positive(res["dali"][fmt]["images_per_s"]), fmt
            assert res["dali"][fmt]["view_shape"] == [8, 3, 32, 32]
            assert res["dali"][fmt]["views"] == 2
    else:
        assert "pip install solo-mixmask[dali]" in res["dali"]["skipped"]

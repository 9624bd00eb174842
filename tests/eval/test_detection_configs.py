"""The shipped Detectron2 configs hold the protocol's values (read as plain YAML)."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

DETECTION = Path(__file__).resolve().parents[2] / "configs" / "detection"


def _load(name: str) -> dict:
    cfg = yaml.safe_load((DETECTION / name).read_text())
    base = cfg.pop("_BASE_", None)
    if base is None:
        return cfg
    merged = _load(base)

    def merge(into: dict, new: dict) -> None:
        for k, v in new.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v)
            else:
                into[k] = v

    merge(merged, cfg)
    return merged


def test_base_settings_for_a_torchvision_backbone():
    cfg = _load("Base-RCNN-C4-SyncBN.yaml")
    imagenet_mean, imagenet_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    assert cfg["MODEL"]["PIXEL_MEAN"] == [round(255 * m, 3) for m in imagenet_mean]
    assert cfg["MODEL"]["PIXEL_STD"] == [round(255 * s, 3) for s in imagenet_std]
    assert cfg["INPUT"]["FORMAT"] == "RGB"
    assert cfg["MODEL"]["RESNETS"] == {
        "DEPTH": 50,
        "NORM": "SyncBN",
        "STRIDE_IN_1X1": False,
        "OUT_FEATURES": ["res4"],
    }
    assert cfg["MODEL"]["BACKBONE"]["FREEZE_AT"] == 0


def test_voc_and_coco_schedules():
    voc = _load("voc0712_faster_rcnn_R50_C4_24k.yaml")
    assert voc["MODEL"]["MASK_ON"] is False and voc["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 20
    assert ast.literal_eval(voc["DATASETS"]["TRAIN"]) == ("voc_2007_trainval", "voc_2012_trainval")
    assert voc["SOLVER"]["MAX_ITER"] == 24000
    assert ast.literal_eval(voc["SOLVER"]["STEPS"]) == (18000, 22000)
    coco = _load("coco_mask_rcnn_R50_C4_1x.yaml")
    assert coco["MODEL"]["MASK_ON"] is True and coco["MODEL"]["RESNETS"]["NORM"] == "SyncBN"
    assert coco["SOLVER"]["MAX_ITER"] == 90000
    assert ast.literal_eval(coco["SOLVER"]["STEPS"]) == (60000, 80000)

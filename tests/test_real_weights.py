"""The real PekingU/rtdetr_v2_r18vd checkpoint on the cats image against its published outputs.

Runs only where the weights are already in the Hugging Face hub cache (looked up as with HF_HUB_OFFLINE=1: the
network is never used, the cache is only read); skipped, saying where it looked and how to get them, elsewhere.

Reference values: transformers' RTDetrV2ForObjectDetection with the real weights and RTDetrImageProcessor's
defaults on tests/data/coco_000000039769.png (the PNG kept by huggingface/transformers in
tests/fixtures/tests_samples/COCO/), as asserted by transformers' integration test
tests/models/rt_detr_v2/test_modeling_rt_detr_v2.py (logits and box slices, post-processed top 4). The printed
lines at threshold 0.5 are the usage example of transformers' docs/source/en/model_doc/rt_detr_v2.md, computed on
the original JPEG of the same COCO image (images.cocodataset.org/val2017/000000039769.jpg).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close

from rtdetrv2_np import load_model
from rtdetrv2_np.errors import RTDetrError
from rtdetrv2_np.hub import hub_cache_dir, repo_folder, snapshot_model
from rtdetrv2_np.postprocess import post_process_object_detection
from rtdetrv2_np.preprocess import preprocess

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "PekingU/rtdetr_v2_r18vd"
CATS = "tests/data/coco_000000039769.png"

# Published values (see the module docstring).
LOGITS = [[-3.7047, -5.1914, -6.1787], [-4.0108, -9.3449, -5.2047], [-4.1287, -4.7461, -5.8633]]  # logits[0,:3,:3]
BOXES = [[0.2582, 0.5497, 0.4764], [0.1684, 0.1985, 0.2120], [0.7665, 0.4146, 0.4669]]         # pred_boxes[0,:3,:3]
TOP4_SCORES = [0.9652, 0.9599, 0.9462, 0.8613]               # threshold 0.0, target size (480, 640)
TOP4_LABELS = [15, 15, 65, 57]
TOP4_BOXES = [[341.14, 25.111, 639.98, 372.89], [12.780, 56.346, 317.67, 471.34], [39.959, 73.117, 175.65, 117.44],
              [-0.10521, 2.9717, 639.89, 473.62]]
LINES = ["cat: 0.97 [341.14, 25.11, 639.98, 372.89]",         # threshold 0.5 (the original JPEG)
         "cat: 0.96 [12.78, 56.35, 317.67, 471.34]",
         "remote: 0.95 [39.96, 73.12, 175.65, 117.44]",
         "sofa: 0.86 [-0.11, 2.97, 639.89, 473.62]",
         "sofa: 0.82 [-0.12, 1.78, 639.87, 473.52]",
         "remote: 0.79 [333.65, 76.38, 370.69, 187.48]"]
# Tolerances. The slices are published to 4 decimals and stated "to within 2e-4" (the integration test's
# 1e-4 plus the 5e-5 of printing); the post-processed values "to within 1e-3" (pixels and scores).
SLICE_ATOL = 2e-4
POST_ATOL = 1e-3
# Printed lines: the first four are the PNG values above, printed to 2 decimals, so they agree to 0.005 (rounding)
# + 1e-3 (POST_ATOL). The last two are known only from the JPEG: JPEG and PNG inputs move logits by up to 4e-4
# (transformers' convert_rt_detr_v2_weights_to_hf.py asserts logit slices computed on the JPEG; they differ from
# the integration test's PNG slices by 0 to 4e-4), boxes by about as much in normalised units, i.e. ~0.13 pixel at 640;
# scores by < 1e-4.
PNG_LINE_ATOL = 0.005 + POST_ATOL
JPEG_BOX_ATOL, JPEG_SCORE_ATOL = 0.15, 0.01
LINE = re.compile(r"^(?P<label>[\w ]+): (?P<score>-?\d+\.\d\d) \[(?P<box>[-\d., ]+)\]$")


@pytest.fixture(scope="module")
def snapshot():
    """The cached snapshot folder of PekingU/rtdetr_v2_r18vd, found without any network access, or skip."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return snapshot_model(HUB_ID)
    except RTDetrError:
        pytest.skip(f"{HUB_ID} is not in the hub cache (looked in {repo_folder(HUB_ID)}); to run these tests, fill "
                    f"the cache once with network access: python -c \"from rtdetrv2_np.hub import snapshot_model; "
                    f"snapshot_model('{HUB_ID}')\" (or huggingface-cli download {HUB_ID}), or set HF_HUB_CACHE "
                    f"to a cache that has it")
    finally:
        if old is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = old


@pytest.fixture(scope="module")
def outputs(snapshot):
    model = load_model(snapshot)
    pixel_values, sizes = preprocess([str(ROOT / CATS)])      # 640x640, as RTDetrImageProcessor's defaults
    assert sizes == [(480, 640)]
    return model, model(pixel_values)


def test_logits_and_boxes(outputs):
    _, out = outputs
    assert_close(out.logits[0, :3, :3], LOGITS, SLICE_ATOL, "logits[0, :3, :3]")
    assert_close(out.pred_boxes[0, :3, :3], BOXES, SLICE_ATOL, "pred_boxes[0, :3, :3]")


def test_top4_detections(outputs):
    _, out = outputs
    det = post_process_object_detection(out.logits, out.pred_boxes, target_sizes=[(480, 640)], threshold=0.0)[0]
    assert det["labels"][:4].tolist() == TOP4_LABELS
    assert_close(det["scores"][:4], TOP4_SCORES, POST_ATOL, "top-4 scores")
    assert_close(det["boxes"][:4], TOP4_BOXES, POST_ATOL, "top-4 boxes (pixels)")


def test_label_names_of_the_hub_config(outputs):
    model, _ = outputs
    assert [model.id2label[i] for i in (15, 57, 65)] == ["cat", "sofa", "remote"]


def test_printed_lines(snapshot):
    # the default model, from the cache the fixture found, through the command exactly as a user types it
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": hub_cache_dir(), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "rtdetrv2_np.detect", CATS], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{CATS} (640x480): {len(LINES)} detections", r.stdout
    for i, (line, want) in enumerate(zip(lines[1:], LINES)):
        got, exp = LINE.match(line), LINE.match(want)
        assert got and got["label"] == exp["label"], (line, want)
        if i < 4:                                              # the PNG's own values are known
            score, box, score_atol, box_atol = TOP4_SCORES[i], TOP4_BOXES[i], PNG_LINE_ATOL, PNG_LINE_ATOL
        else:                                                  # only the JPEG's printed ones
            score, box = float(exp["score"]), np.array(exp["box"].split(", "), float)
            score_atol, box_atol = JPEG_SCORE_ATOL, JPEG_BOX_ATOL
        assert abs(float(got["score"]) - score) <= score_atol, (line, want)
        assert np.abs(np.array(got["box"].split(", "), float) - box).max() <= box_atol, (line, want)

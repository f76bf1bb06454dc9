"""rtdetrv2_np.postprocess against transformers' post_process_object_detection (use_focal_loss=True), recorded by
tools/record_postprocess.py into tests/fixtures/postprocess/reference.npz, plus hand-computable tie and COCO cases."""

import json
import os

import numpy as np
import pytest

from rtdetrv2_np.errors import RTDetrError
from rtdetrv2_np.model.nn import sigmoid
from rtdetrv2_np.postprocess import (COCO_CATEGORY_TO_LABEL, COCO_LABEL_TO_CATEGORY, post_process_object_detection,
                                     to_coco_results)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = dict(np.load(os.path.join(ROOT, "tests", "fixtures", "postprocess", "reference.npz")))
META = json.loads(str(REF["meta_json"]))
LOGITS, BOXES = REF["inputs/logits"], REF["inputs/pred_boxes"]
SCORE_RTOL = 1e-6      # torch.sigmoid and our float32 sigmoid differ by up to 4 ulp (<= 4.8e-7 relative)


def key(label, box):
    return (int(label), box.tobytes())


def check_image(ours, ref, logits, boxes_all, what):
    """Compare one image's detections with the reference, allowing only what ties make arbitrary.

    Scores: elementwise within SCORE_RTOL, in order. Labels and boxes: bit-exact, compared as multisets over each run
    of (near-)equal reference scores, since torch.topk orders ties arbitrarily. For the run at the top-k cut-off, the
    reference may have kept other tied pairs than we do: ours must then be tied pairs of the same score.
    """
    n = len(ref["scores"])
    assert len(ours["scores"]) == n, f"{what}: {len(ours['scores'])} detections, reference {n}"
    assert ours["scores"].dtype == np.float32 and ours["boxes"].dtype == np.float32
    assert ours["labels"].dtype == np.int64 and ours["boxes"].shape == (n, 4)
    if n == 0:
        return
    rel = np.abs(ours["scores"].astype(np.float64) - ref["scores"]) / np.maximum(ref["scores"], 1e-30)
    print(f"{what}: {n} detections, max relative score diff {rel.max():.3g}")
    np.testing.assert_allclose(ours["scores"], ref["scores"], rtol=SCORE_RTOL, atol=0, err_msg=what)

    all_scores = np.sort(sigmoid(logits).ravel())[::-1]
    k = logits.shape[0]
    start = 0
    while start < n:                                       # runs of reference scores equal within tolerance
        stop = start + 1
        while stop < n and abs(ref["scores"][stop] - ref["scores"][stop - 1]) <= SCORE_RTOL * ref["scores"][stop]:
            stop += 1
        mine = sorted(key(l, b) for l, b in zip(ours["labels"][start:stop], ours["boxes"][start:stop]))
        theirs = sorted(key(l, b) for l, b in zip(ref["labels"][start:stop], ref["boxes"][start:stop]))
        s = ref["scores"][stop - 1]
        cut = stop == k and np.sum(all_scores >= s * (1 - SCORE_RTOL)) > k   # tie group continues past top-k
        if cut:
            # Our pairs at the cut-off must score the same (they are tied candidates torch could have chosen).
            assert np.all(np.abs(ours["scores"][start:stop] - s) <= SCORE_RTOL * s), what
        else:
            assert mine == theirs, f"{what}: ranks {start}..{stop - 1} differ in labels or boxes"
        start = stop


@pytest.mark.parametrize("case", range(len(META["cases"])))
def test_against_transformers(case):
    threshold = META["cases"][case]["threshold"]
    sizes = META["cases"][case]["target_sizes"]
    results = post_process_object_detection(LOGITS, BOXES, target_sizes=sizes, threshold=threshold)
    assert len(results) == LOGITS.shape[0]
    for b, ours in enumerate(results):
        ref = {k: REF[f"case{case}/image{b}/{k}"] for k in ("scores", "labels", "boxes")}
        check_image(ours, ref, LOGITS[b], BOXES[b], f"case {case} (threshold {threshold}, sizes {sizes}) image {b}")


def test_untied_ranking_is_identical():
    # Image 0 has generic float32 logits: no ties, so the whole top-k order is the reference's.
    ours = post_process_object_detection(LOGITS[:1], BOXES[:1], threshold=-1.0)[0]
    assert np.array_equal(ours["labels"], REF["case5/image0/labels"])
    assert np.array_equal(ours["boxes"], REF["case5/image0/boxes"])


def test_tie_order_and_threshold_by_hand():
    # 2 queries x 3 classes. Scores: q0 = [0.5, s(2), s(2)], q1 = [s(2), 1, 0]; flat indices 0..5.
    logits = np.array([[[0.0, 2.0, 2.0], [2.0, np.inf, -np.inf]]], np.float32)       # [1, 2, 3]
    boxes = np.array([[[0.5, 0.5, 1.0, 1.0], [0.25, 0.5, 0.5, 0.2]]], np.float32)    # [1, 2, 4]
    r = post_process_object_detection(logits, boxes, threshold=-1.0, top_k=6)[0]
    s2 = np.float32(1) / (np.float32(1) + np.exp(np.float32(-2)))
    assert r["scores"].tolist() == [1.0, s2, s2, s2, 0.5, 0.0]
    assert r["labels"].tolist() == [1, 1, 2, 0, 0, 2]             # ties by flat index: (q0,c1), (q0,c2), (q1,c0)
    assert r["boxes"][:, 0].tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert r["boxes"][0].tolist() == [0.0, 0.4000000059604645, 0.5, 0.6000000238418579]
    # Default k = Nq = 2, threshold strict: 0.5 is dropped at threshold 0.5.
    r = post_process_object_detection(logits, boxes)[0]
    assert r["labels"].tolist() == [1, 1]
    r = post_process_object_detection(logits, boxes, threshold=0.5, top_k=6)[0]
    assert r["labels"].tolist() == [1, 1, 2, 0]


def test_target_sizes_are_height_width():
    boxes = np.array([[[0.5, 0.5, 0.5, 0.5]]], np.float32)
    r = post_process_object_detection(np.ones((1, 1, 1), np.float32), boxes, target_sizes=[(100, 200)])[0]
    assert r["boxes"].tolist() == [[50.0, 25.0, 150.0, 75.0]]      # x scaled by width 200, y by height 100
    with pytest.raises(RTDetrError, match="2 target sizes for a batch of 1"):
        post_process_object_detection(np.ones((1, 1, 1), np.float32), boxes, target_sizes=[(1, 1), (2, 2)])


def test_coco_label_map():
    assert len(COCO_LABEL_TO_CATEGORY) == 80 and len(set(COCO_LABEL_TO_CATEGORY)) == 80
    missing = sorted(set(range(1, 91)) - set(COCO_LABEL_TO_CATEGORY))
    assert missing == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    assert list(COCO_LABEL_TO_CATEGORY) == sorted(COCO_LABEL_TO_CATEGORY)
    assert (COCO_LABEL_TO_CATEGORY[15], COCO_LABEL_TO_CATEGORY[57], COCO_LABEL_TO_CATEGORY[65]) == (17, 63, 75)
    assert COCO_CATEGORY_TO_LABEL[90] == 79


def test_coco_results():
    det = [{"scores": np.array([0.75, 0.5], np.float32), "labels": np.array([15, 79]),
            "boxes": np.array([[10.5, 20.0, 30.5, 60.0], [0.0, 0.0, 1.0, 2.0]], np.float32)}, 
           {"scores": np.zeros(0, np.float32), "labels": np.zeros(0, np.int64), "boxes": np.zeros((0, 4), np.float32)}]
    records = to_coco_results(det, [39769, 4016])
    assert records == [{"image_id": 39769, "category_id": 17, "bbox": [10.5, 20.0, 20.0, 40.0], "score": 0.75},
                       {"image_id": 39769, "category_id": 90, "bbox": [0.0, 0.0, 1.0, 2.0], "score": 0.5}]
    assert all(type(v) in (int, float, list) for r in records for v in r.values())
    with pytest.raises(RTDetrError, match="label 80 has no COCO category"):
        to_coco_results([{"scores": [0.9], "labels": [80], "boxes": [[0, 0, 1, 1]]}], [1])

"""rtdetrv2_np.matching against transformers' RTDetrHungarianMatcher (tests/fixtures/matching/matcher.json,
recorded by tools/record_matching.py) and against hand-computable boxes and brute force."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close

from rtdetrv2_np.matching import generalized_box_iou, hungarian_match, matching_cost
from rtdetrv2_np.postprocess import center_to_corners

FIXTURE = Path(__file__).parent / "fixtures" / "matching" / "matcher.json"
CASES = json.loads(FIXTURE.read_text())["cases"]
# float32 arithmetic in a different order than torch's (cdist, log, pow): a few ulp of costs of order 10
COST_ATOL = 1e-5
GIOU_ATOL = 1e-6        # a few float32 ulp of values in (-1, 1]


@pytest.mark.parametrize("name", sorted(CASES))
def test_cost_giou_and_indices_match_transformers(name):
    case = CASES[name]
    logits = np.asarray(case["logits"], np.float32)                         # [B, Nq, NC]
    boxes = np.asarray(case["pred_boxes"], np.float32)                      # [B, Nq, 4]
    for b, target in enumerate(case["targets"]):
        labels = np.asarray(target["class_labels"], np.int64)
        tboxes = np.asarray(target["boxes"], np.float32).reshape(-1, 4)
        cost = matching_cost(logits[b], boxes[b], labels, tboxes)
        assert cost.dtype == np.float32
        cost64 = matching_cost(logits[b].astype(np.float64), boxes[b].astype(np.float64), labels,
                               tboxes.astype(np.float64))
        assert cost64.dtype == np.float64
        assert_close(cost64, cost, COST_ATOL, f"{name} float64 cost vs float32 image {b}")
        assert_close(cost, np.asarray(case["cost"][b]).reshape(cost.shape), COST_ATOL, f"{name} cost image {b}")
        giou, _ = generalized_box_iou(center_to_corners(boxes[b]), center_to_corners(tboxes))
        assert_close(giou, np.asarray(case["giou"][b]).reshape(giou.shape), GIOU_ATOL, f"{name} giou image {b}")
        rows, cols = hungarian_match(cost)
        assert_close(rows, case["indices"][b][0], 0, f"{name} matched queries image {b}")
        assert_close(cols, case["indices"][b][1], 0, f"{name} matched objects image {b}")


def test_giou_by_hand():
    a = np.array([[0.0, 0.0, 2.0, 2.0]])
    b = np.array([[1.0, 1.0, 3.0, 3.0],      # overlap 1, union 7, hull 9: IoU 1/7, GIoU 1/7 - 2/9
                  [0.0, 0.0, 2.0, 2.0],      # identical: 1, 1
                  [3.0, 0.0, 5.0, 2.0],      # apart by 1: IoU 0, hull 10, union 8: GIoU -0.2
                  [10.0, 0.0, 12.0, 2.0]])   # far apart: IoU 0, hull 24, union 8: GIoU -2/3
    giou, iou = generalized_box_iou(a, b)
    assert_close(iou, [[1 / 7, 1, 0, 0]], 1e-15, "iou by hand")              # float64 rounding only
    assert_close(giou, [[1 / 7 - 2 / 9, 1, -0.2, -2 / 3]], 1e-15, "giou by hand")


def test_hungarian_match_is_the_best_permutation():
    cost = np.random.default_rng(3).uniform(0, 1, (6, 4))                    # [Nq, G]
    rows, cols = hungarian_match(cost)
    best = min(sum(cost[q, g] for g, q in enumerate(p)) for p in itertools.permutations(range(6), 4))
    assert_close(cost[rows, cols].sum(), best, 1e-12, "total cost vs brute force")   # float64 sums of 4 terms
    assert len(set(rows)) == len(rows) == 4 and sorted(cols) == [0, 1, 2, 3]

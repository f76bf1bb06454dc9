"""Set-prediction matching: the one-to-one Hungarian assignment of queries to objects that trains a DETR.

Not used at inference (the package runs the trained model; nothing here is called by `forward`). It is here because
the matching is what explains the model's output: each object of a training image is assigned to exactly one query,
by minimum total cost, and every other query is trained toward "no object"; so a trained DETR emits one box per
object and needs no non-maximum suppression (walkthrough/07_set_prediction).

References (numbers as in the package docstring, rtdetrv2_np/__init__.py):
    [12] N. Carion et al., "End-to-End Object Detection with Transformers" (DETR), arXiv 2005.12872v3.
         §3.1: the optimal assignment, Eq. (1), found with the Hungarian algorithm; the Hungarian loss, Eq. (2).
    [13] H. Rezatofighi et al., "Generalized Intersection over Union: A Metric and A Loss for Bounding Box
         Regression", arXiv 1902.09630v2. §3, Algorithm 1: GIoU = IoU - |C \\ (A ∪ B)| / |C|, C the smallest box
         enclosing A and B.
    [5]  transformers 5.24.0: loss/loss_rt_detr.py (RTDetrHungarianMatcher, the matcher RTDetrV2ForObjectDetection's
         loss uses: loss/loss_utils.py maps "RTDetrV2ForObjectDetection" to RTDetrForObjectDetectionLoss),
         loss/loss_for_object_detection.py (generalized_box_iou), models/rt_detr_v2/configuration_rt_detr_v2.py
         (the matcher_* defaults below).

The cost of giving object j to query i (RTDetrHungarianMatcher.forward, use_focal_loss=True):
    p        = sigmoid(logit[i, label_j])
    class    = alpha·(1 - p)^gamma·(-log(p + 1e-8)) - (1 - alpha)·p^gamma·(-log(1 - p + 1e-8))
               (the focal loss of p against "is label_j" minus that against "is not": low when p is high)
    bbox     = |box_i - box_j|_1 over (cx, cy, w, h), normalised to [0, 1] (torch.cdist with p=1)
    giou     = -GIoU(corners(box_i), corners(box_j))
    cost     = class_cost·class + bbox_cost·bbox + giou_cost·giou
NaN and infinite entries become the largest float of the dtype; scipy's linear_sum_assignment then picks, for each
object, a distinct query (min(Nq, G) pairs) of minimum total cost.

Shape letters: the package glossary (Nq queries, NC classes) plus G objects (targets) of one image.
"""

import numpy as np

from .postprocess import center_to_corners

# configuration_rt_detr_v2.py defaults (transformers 5.24), also in the demo model's config.json
MATCHER_CLASS_COST = 2.0
MATCHER_BBOX_COST = 5.0
MATCHER_GIOU_COST = 2.0
MATCHER_ALPHA = 0.25
MATCHER_GAMMA = 2.0
LOG_EPS = 1e-8          # RTDetrHungarianMatcher: -(p + 1e-8).log(), keeps log finite at p = 0


def generalized_box_iou(boxes1, boxes2):
    """GIoU [13] of every pair, as transformers' generalized_box_iou. Returns (giou, iou), each [N, M].

    boxes1 [N, 4], boxes2 [M, 4]: corners (x1, y1, x2, y2), x2 >= x1 and y2 >= y1.
    IoU = |A ∩ B| / |A ∪ B|; GIoU = IoU - (|C| - |A ∪ B|) / |C|, C the smallest axis-aligned box enclosing A and B.
    GIoU lies in (-1, 1]; unlike IoU it keeps changing when the boxes do not overlap.
    """
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])           # [N]
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])           # [M]
    lo = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])                        # [N, M, 2]
    hi = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])                        # [N, M, 2]
    wh = np.clip(hi - lo, 0, None)                                                   # [N, M, 2]
    inter = wh[..., 0] * wh[..., 1]                                                  # [N, M]
    union = area1[:, None] + area2[None, :] - inter                                  # [N, M]
    iou = inter / union
    c_wh = np.clip(np.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])
                   - np.minimum(boxes1[:, None, :2], boxes2[None, :, :2]), 0, None)  # [N, M, 2]
    c_area = c_wh[..., 0] * c_wh[..., 1]                                             # [N, M]
    return iou - (c_area - union) / c_area, iou


def focal_class_cost(logits, labels, alpha=MATCHER_ALPHA, gamma=MATCHER_GAMMA):
    """The matcher's class cost: logits [Nq, NC], labels [G] int -> [Nq, G] (see the module docstring)."""
    one = logits.dtype.type(1)
    p = one / (one + np.exp(-logits[:, labels]))                                     # [Nq, G]
    pos = alpha * (one - p) ** gamma * -np.log(p + LOG_EPS)
    neg = (1 - alpha) * p ** gamma * -np.log(one - p + LOG_EPS)
    return (pos - neg).astype(logits.dtype)


def matching_cost(logits, boxes, labels, target_boxes, class_cost=MATCHER_CLASS_COST, bbox_cost=MATCHER_BBOX_COST,
                  giou_cost=MATCHER_GIOU_COST, alpha=MATCHER_ALPHA, gamma=MATCHER_GAMMA):
    """RTDetrHungarianMatcher's cost matrix for one image.

    logits [Nq, NC]; boxes [Nq, 4] and target_boxes [G, 4] normalised (cx, cy, w, h); labels [G] int.
    Returns cost [Nq, G] (same dtype as logits), NaN and infinities replaced by the dtype's largest value.
    """
    l1 = np.abs(boxes[:, None, :] - target_boxes[None, :, :]).sum(axis=-1)          # [Nq, G]
    giou, _ = generalized_box_iou(center_to_corners(boxes), center_to_corners(target_boxes))   # [Nq, G]
    cost = bbox_cost * l1 + class_cost * focal_class_cost(logits, labels, alpha, gamma) + giou_cost * -giou
    big = np.finfo(cost.dtype).max
    return np.nan_to_num(cost, nan=big, posinf=big, neginf=big).astype(logits.dtype)


def hungarian_match(cost):
    """The one-to-one assignment of minimum total cost (DETR [12] §3.1, Eq. (1)).

    cost [Nq, G]. Returns (queries [min(Nq, G)], objects [min(Nq, G)]) int64, sorted by query: query queries[k] is
    given object objects[k]; every other query is matched to nothing ("no object"). scipy's linear_sum_assignment
    (a shortest augmenting path solver), as transformers calls it.
    """
    from scipy.optimize import linear_sum_assignment
    rows, cols = linear_sum_assignment(cost)
    return rows.astype(np.int64), cols.astype(np.int64)

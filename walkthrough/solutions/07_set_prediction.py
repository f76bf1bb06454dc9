"""Solutions to the exercises of walkthrough/07_set_prediction: each function computes the answer, prints it and
asserts a check. Offline; run as `python walkthrough/solutions/07_set_prediction.py` (all of them).

The numbers depend on the shipped demo weights (rtdetrv2_np/demo/models/shapes_bilinear), so the checks assert
properties that hold for any weights (optimality, monotonicity, closed forms), never a weight-dependent value.
"""

import functools

import numpy as np
import PIL.Image
from scipy.optimize import linear_sum_assignment

import rtdetrv2_np
from rtdetrv2_np import evaluate, matching
from rtdetrv2_np.demo.shapes import EVAL_SEED, SIZE, coco_instances, make_scene
from rtdetrv2_np.postprocess import post_process_object_detection
from rtdetrv2_np.preprocess import preprocess

N_SCENES = 50           # as in the notebook: the first 50 scenes of the held-out stream


@functools.lru_cache(maxsize=None)
def demo_outputs():
    """The demo model on the notebook's scenes: (scenes, logits [B, Nq, NC], pred_boxes [B, Nq, 4], sizes)."""
    model = rtdetrv2_np.load_model("demo")
    scenes = [make_scene(EVAL_SEED, i) for i in range(N_SCENES)]
    pixel_values, sizes = preprocess([PIL.Image.fromarray(image) for image, _ in scenes], (SIZE, SIZE))
    outs = [model(pixel_values[b:b + 10]) for b in range(0, N_SCENES, 10)]
    return (scenes, np.concatenate([o.logits for o in outs]), np.concatenate([o.pred_boxes for o in outs]), sizes)


def ground_truth():
    scenes = demo_outputs()[0]
    return coco_instances([(i, objects) for i, (_, objects) in enumerate(scenes)], EVAL_SEED)


def detection_arrays(dets):
    """Detections per image (x1, y1, x2, y2) -> evaluate's arrays; image i is id i + 1, label l is category l + 1."""
    cols = {"image_id": [], "category_id": [], "bbox": [], "score": []}
    for i, d in enumerate(dets):
        x1, y1, x2, y2 = d["boxes"].T
        cols["image_id"].append(np.full(len(x1), i + 1))
        cols["category_id"].append(d["labels"] + 1)
        cols["bbox"].append(np.stack([x1, y1, x2 - x1, y2 - y1], 1).astype(np.float64))
        cols["score"].append(d["scores"].astype(np.float64))
    return {k: np.concatenate(v) for k, v in cols.items()}


def targets(objects):
    """labels [G], boxes [G, 4] normalised (cx, cy, w, h)."""
    labels = np.array([o["label"] for o in objects], np.int64)
    x0, y0, x1, y1 = np.array([o["box"] for o in objects]).T / SIZE
    return labels, np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=1)


def nms(det, iou_max=0.7):
    """Greedy NMS per label: keep a detection unless a kept one of the same label overlaps it with IoU > iou_max."""
    _, iou = matching.generalized_box_iou(det["boxes"].astype(np.float64), det["boxes"].astype(np.float64))
    keep = []
    for i in range(len(det["scores"])):                         # already in decreasing score order
        if not any(det["labels"][k] == det["labels"][i] and iou[i, k] > iou_max for k in keep):
            keep.append(i)
    return {k: v[keep] for k, v in det.items()}


def exercise_1():
    """NMS after post-processing: detections above 0.5 and AP, before and after."""
    scenes, logits, boxes, sizes = demo_outputs()
    gt = ground_truth()
    dets = post_process_object_detection(logits, boxes, sizes, threshold=-np.inf)   # top Nq per image
    after = [nms(d) for d in dets]
    for d in after:                                             # the check: no same-label pair above 0.7 remains
        _, iou = matching.generalized_box_iou(d["boxes"].astype(np.float64), d["boxes"].astype(np.float64))
        same = (d["labels"][:, None] == d["labels"][None, :]) & ~np.eye(len(iou), dtype=bool)
        assert not (same & (iou > 0.7)).any()
    before_ap = evaluate.evaluate_coco(gt, detection_arrays(dets))
    after_ap = evaluate.evaluate_coco(gt, detection_arrays(after))
    n_before = sum(int((d["scores"] > 0.5).sum()) for d in dets)
    n_after = sum(int((d["scores"] > 0.5).sum()) for d in after)
    assert n_after <= n_before
    print(f"exercise 1: detections above 0.5: {n_before} -> {n_after} with NMS; "
          f"AP {before_ap['AP']:.3f} -> {after_ap['AP']:.3f}, AP50 {before_ap['AP50']:.3f} -> {after_ap['AP50']:.3f}")
    print("  NMS removes near-duplicates (false positives that rank high), so it helps a model that still makes them. "
          "For a fully trained DETR it should change little; it hurts when it removes a real neighbour of the same "
          "class, or the better-placed of two boxes (AP at strict IoU thresholds).")
    return n_before, n_after, before_ap["AP"], after_ap["AP"]


def greedy_match(cost):
    """Smallest entry first, remove its row and column, repeat. Returns (rows, cols)."""
    c = np.array(cost, dtype=np.float64)
    rows, cols = [], []
    for _ in range(min(c.shape)):
        r, k = np.unravel_index(np.argmin(c), c.shape)
        rows.append(r)
        cols.append(k)
        c[r, :] = np.inf
        c[:, k] = np.inf
    return np.array(rows), np.array(cols)


def exercise_2():
    """Greedy vs Hungarian: a 2 x 2 counterexample, and scene 0's real cost matrix."""
    toy = np.array([[1.0, 2.0],
                    [2.0, 10.0]])                               # greedy takes 1, is then left with 10: total 11
    g, h = greedy_match(toy), linear_sum_assignment(toy)
    greedy_total, best_total = toy[g].sum(), toy[h].sum()
    assert greedy_total > best_total                            # 11 > 2 + 2
    scenes, logits, boxes, _ = demo_outputs()
    labels, tboxes = targets(scenes[0][1])
    cost = matching.matching_cost(logits[0].astype(np.float64), boxes[0].astype(np.float64), labels, tboxes)
    g_real, h_real = greedy_match(cost), matching.hungarian_match(cost)
    assert cost[g_real].sum() >= cost[h_real].sum() - 1e-12    # the Hungarian total is the minimum
    print(f"exercise 2: toy greedy {greedy_total:g} vs optimal {best_total:g}; scene 0: greedy "
          f"{cost[g_real].sum():.4f} vs Hungarian {cost[h_real].sum():.4f}")
    return greedy_total, best_total


def exercise_3():
    """Detections appended below all others: false positives leave AP unchanged, a true positive can only raise it."""
    scenes, logits, boxes, sizes = demo_outputs()
    gt = ground_truth()
    dt = detection_arrays(post_process_object_detection(logits, boxes, sizes, threshold=-np.inf))
    c = 1                                                       # category 1 (disc)
    low = dt["score"].min() / 2
    # 50 false positives: one 0.5 x 0.5 px box per image in its corner. Its IoU with any object is at most
    # 0.25 px² / (the object's area), far below 0.5 (the smallest objects are several pixels across)
    fp = {"image_id": np.arange(1, N_SCENES + 1), "category_id": np.full(N_SCENES, c),
          "bbox": np.tile([0.0, 0.0, 0.5, 0.5], (N_SCENES, 1)), "score": np.linspace(low, low / 2, N_SCENES)}
    with_fp = {k: np.concatenate([dt[k], fp[k]]) for k in dt}
    base = evaluate.evaluate_coco(gt, dt)["per_category_AP"][c]
    after_fp = evaluate.evaluate_coco(gt, with_fp)["per_category_AP"][c]
    assert abs(after_fp - base) <= 1e-12                        # the envelope at reached recalls cannot change
    # one true positive at the very end: the ground-truth box of the class-c object found least well
    ann = [a for a in gt["annotations"] if a["category_id"] == c]
    best_iou = []
    for a in ann:
        mine = (dt["image_id"] == a["image_id"]) & (dt["category_id"] == c)
        iou = evaluate.box_iou(dt["bbox"][mine], np.array([a["bbox"]], float), np.zeros(1, bool))
        best_iou.append(iou.max() if iou.size else 0.0)
    worst = ann[int(np.argmin(best_iou))]
    tp = {"image_id": [worst["image_id"]], "category_id": [c], "bbox": [worst["bbox"]], "score": [low / 4]}
    with_tp = {k: np.concatenate([with_fp[k], np.asarray(tp[k])]) for k in dt}
    after_tp = evaluate.evaluate_coco(gt, with_tp)["per_category_AP"][c]
    assert after_tp >= after_fp - 1e-12
    print(f"exercise 3: class AP {base:.6f}; + 50 false positives at the end {after_fp:.6f} (unchanged); "
          f"+ 1 true positive at the very end {after_tp:.6f} (best IoU of that object before: {min(best_iou):.2f})")
    return base, after_fp, after_tp


def exercise_4():
    """GIoU of two w x h boxes side by side with a horizontal gap d: -d / (2w + d) -> -1 as d -> infinity."""
    w, h = 3.0, 2.0
    gaps = np.array([0.0, 0.5, 1.0, 5.0, 100.0, 1e6])
    a = np.array([[0.0, 0.0, w, h]])
    b = np.stack([w + gaps, np.zeros_like(gaps), 2 * w + gaps, np.full_like(gaps, h)], axis=1)
    giou, iou = matching.generalized_box_iou(a, b)
    closed = -gaps / (2 * w + gaps)                             # union 2wh, hull (2w + d)h: IoU 0 - (hull-union)/hull
    diff = float(np.abs(giou[0] - closed).max())
    assert diff <= 1e-15 and not iou.any()                      # float64 rounding of one division
    print(f"exercise 4: GIoU for gaps {gaps.tolist()}: {np.round(giou[0], 6).tolist()}; max |closed form - package| "
          f"= {diff:.3g}; limit -1 (height h does not enter)")
    return giou[0]


def exercise_5():
    """Box terms only (class weight 0) vs the full cost: scene 0, then all fifty scenes."""
    scenes, logits, boxes, _ = demo_outputs()
    changed, total = 0, 0
    for i in range(N_SCENES):
        labels, tboxes = targets(scenes[i][1])
        lg, bx = logits[i].astype(np.float64), boxes[i].astype(np.float64)
        full = matching.hungarian_match(matching.matching_cost(lg, bx, labels, tboxes))
        box_cost = matching.matching_cost(lg, bx, labels, tboxes, class_cost=0.0)
        box_only = matching.hungarian_match(box_cost)
        order_full, order_box = np.argsort(full[1]), np.argsort(box_only[1])   # query of each object
        changed += int((full[0][order_full] != box_only[0][order_box]).sum())
        total += len(labels)
        assert box_cost[box_only].sum() <= box_cost[full].sum() + 1e-12   # box-only matching: least box cost
        if i == 0:
            scene0 = int((full[0][order_full] != box_only[0][order_box]).sum()), len(labels)
    print(f"exercise 5: scene 0: {scene0[0]} of {scene0[1]} objects change query without the class term; "
          f"all {N_SCENES} scenes: {changed} of {total}")
    return scene0, changed, total


if __name__ == "__main__":
    for exercise in (exercise_1, exercise_2, exercise_3, exercise_4, exercise_5):
        exercise()

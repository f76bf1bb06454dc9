# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Set prediction: Hungarian matching, COCO AP and GIoU
#
# *Estimated reading time: 35 minutes (running it: well under a minute on 2 CPU cores).*
#
# **Learning goals.** After this notebook you can
# 1. explain why a DETR needs no non-maximum suppression: during training each object is matched to exactly **one**
#    query by a minimum-cost assignment (the Hungarian matching), and every other query is trained toward
#    "no object"; build that cost by hand and solve the assignment with `scipy.optimize.linear_sum_assignment`;
# 2. say what NMS-free does *not* mean: near-duplicate boxes, when a model makes them, are not removed by anything,
#    and count them on a trained model;
# 3. compute COCO's average precision by hand — IoU, greedy matching by score, the precision/recall curve, 101-point
#    interpolation, AP@.50 and AP@[.50:.95], small/medium/large — equal to the package's evaluator, which equals
#    pycocotools; and explain why evaluation ranks all top-k detections instead of thresholding them;
# 4. compute GIoU by hand and see why it is in the loss: unlike IoU it still changes when the boxes do not overlap.
#
# **Paper references.**
# [1] Zhao et al., *DETRs Beat YOLOs on Real-time Object Detection* (RT-DETR), arXiv 2304.08069v3: §1 and §3.1
# (what NMS costs a detector that needs it), §4.3 (uncertainty-minimal query selection: the loss ties a query's
# class score to the IoU of its box; the code does it with a varifocal loss).
# [12] Carion et al., *End-to-End Object Detection with Transformers* (DETR), arXiv 2005.12872v3: **§3.1** (the
# object detection set prediction loss: the optimal assignment, Eq. 1, found with the Hungarian algorithm; the
# Hungarian loss, Eq. 2; the box loss, L1 + generalized IoU).
# [13] Rezatofighi et al., *Generalized Intersection over Union*, arXiv 1902.09630v2: §3, Algorithm 1 (GIoU).
# [14] Lin et al., *Microsoft COCO*, arXiv 1405.0312v3, and the COCO detection evaluation (pycocotools `cocoeval.py`).
#
# The matching cost is the one transformers 5.24 trains RT-DETRv2 with: `loss/loss_rt_detr.py`,
# `RTDetrHungarianMatcher` (class cost weight 2, L1 weight 5, GIoU weight 2, focal α = 0.25, γ = 2: the `matcher_*`
# defaults of `models/rt_detr_v2/configuration_rt_detr_v2.py`, also in the demo model's `config.json`).
#
# Code: `rtdetrv2_np/matching.py` (the cost and the assignment, tested against transformers' matcher),
# `rtdetrv2_np/evaluate.py` (COCO AP, tested against pycocotools), `rtdetrv2_np/demo/shapes.py` (the scenes).
#
# **Scope.** No training and no gradients: we apply the training-time matching to a trained model's outputs, to see
# what the loss would ask of each query. The model is the package's **demo detector** (`load_model("demo")`: four
# shape classes, 256 × 256 input, 3 decoder layers, 100 queries) on generated scenes whose ground truth we know.
# Its weights are a snapshot of a training run and may be replaced by better ones, so every number below is printed
# by the code, not written in the text.

# %% [markdown]
# ## Setup
#
# Fifty scenes of the held-out evaluation stream (`make_scene(EVAL_SEED, i)`, which the model never saw in
# training), pre-processed as the evaluator does (`preprocess`: resize to 256 × 256, /255) and run through the
# model in batches of ten: `logits [B, Nq, NC]`, `pred_boxes [B, Nq, 4]` (cx, cy, w, h, normalised).

# %%
# %matplotlib inline
import time

import matplotlib.pyplot as plt
import numpy as np
import PIL.Image
from scipy.optimize import linear_sum_assignment

import rtdetrv2_np
from rtdetrv2_np import evaluate, matching, plotting
from rtdetrv2_np.demo.shapes import CLASSES, EVAL_SEED, SIZE, coco_instances, make_scene
from rtdetrv2_np.postprocess import post_process_object_detection
from rtdetrv2_np.preprocess import preprocess

T0 = time.time()
model = rtdetrv2_np.load_model("demo")                   # shipped with the package: no download
print(plotting.weights_stamp(model))
print(model.config.num_queries, "queries,", model.config.num_labels, "classes:", ", ".join(CLASSES))


def check(name, mine, package, atol=0.0):
    """The walkthrough's equality check: print the largest difference, fail if it exceeds atol."""
    diff = float(np.abs(np.asarray(mine, np.float64) - np.asarray(package, np.float64)).max(initial=0.0))
    print(f"{'OK' if diff <= atol else 'NOT OK'} {name}: max |by hand - package| = {diff:.3g}")
    assert diff <= atol, name


N_SCENES = 50
scenes = [make_scene(EVAL_SEED, i) for i in range(N_SCENES)]               # (uint8 [S, S, 3], objects)
pixel_values, sizes = preprocess([PIL.Image.fromarray(image) for image, _ in scenes], (SIZE, SIZE))
outs = [model(pixel_values[b:b + 10]) for b in range(0, N_SCENES, 10)]
logits = np.concatenate([o.logits for o in outs])                          # [B, Nq, NC]
pred_boxes = np.concatenate([o.pred_boxes for o in outs])                  # [B, Nq, 4]
print(f"{N_SCENES} scenes, {sum(len(obj) for _, obj in scenes)} objects; logits {logits.shape}, "
      f"boxes {pred_boxes.shape}; {time.time() - T0:.1f} s so far")

# %% [markdown]
# ## 1. Set prediction: one query per object
#
# A DETR answers with a fixed-size **set** of Nq predictions (class scores + box) and no order. Training must decide
# which prediction should answer for which object. DETR [12] §3.1 decides it by a bipartite matching: over all
# ways σ of giving each of the G objects its own query, take the one of least total cost (Eq. 1),
#
# $$\hat\sigma = \arg\min_\sigma \sum_{j=1}^{G} \mathcal{C}(y_j, \hat y_{\sigma(j)}),$$
#
# then train query σ̂(j) toward object j and **every other query toward "no object"** (Eq. 2). Because each object
# is given to one query only, a second query that also covers it is a false positive in the loss: the loss itself
# is what teaches the queries not to duplicate each other. The decoder's self-attention is the channel through which
# they can coordinate (who claims which object), but without the one-to-one matching nothing would ask them to.
# RT-DETR is trained this way and so runs without NMS ([1] §1, §3.1 measure what NMS costs the detectors that need
# it).
#
# ### 1.1 The assignment problem, small
#
# Three queries, two objects, a cost matrix written out. With G objects and Nq ≥ G queries there are
# Nq!/(Nq − G)! assignments; the Hungarian algorithm (here scipy's `linear_sum_assignment`, which transformers
# calls too) finds the best without listing them.

# %%
cost = np.array([[0.9, 0.1],      # query 0: good for object 1
                 [0.2, 0.3],      # query 1: fair for both
                 [0.4, 0.8]])     # query 2: mediocre                                    [Nq, G]
candidates = [(q0, q1) for q0 in range(3) for q1 in range(3) if q0 != q1]   # (query of object 0, query of object 1)
totals = {c: cost[c[0], 0] + cost[c[1], 1] for c in candidates}
for c, t in sorted(totals.items(), key=lambda kv: kv[1]):
    print(f"object 0 <- query {c[0]}, object 1 <- query {c[1]}: total {t:.1f}")
rows, cols = linear_sum_assignment(cost)
print("linear_sum_assignment: queries", rows, "-> objects", cols, "total", cost[rows, cols].sum())
best = min(totals, key=totals.get)
check("best total: brute force vs scipy", totals[best], cost[rows, cols].sum())

# %% [markdown]
# Query 1 is the cheapest for object 0 (0.2) and query 0 for object 1 (0.1): the matching takes both, and query 2
# is left unmatched: it will be trained toward "no object".
#
# ### 1.2 The cost RT-DETRv2 is trained with, by hand
#
# For query i and object j with label c_j and box b_j (normalised cx, cy, w, h), transformers'
# `RTDetrHungarianMatcher` adds three terms:
#
# * **class** (focal-style, since the scores are independent sigmoids): with p = σ(logit_i[c_j]),
#   `α (1−p)^γ · (−log p) − (1−α) p^γ · (−log(1−p))`: the focal loss of "is c_j" minus that of "is not c_j";
#   low when p is high. α = 0.25, γ = 2; weight 2.
# * **L1** between the boxes, `Σ |b_i − b_j|` over the four normalised coordinates; weight 5.
# * **−GIoU** of the boxes as corners (section 3 takes GIoU apart); weight 2.
#
# We build it in float64 for the first scene and compare with `rtdetrv2_np.matching.matching_cost` (itself tested
# against transformers' matcher in `tests/test_matching.py`).

# %%
def targets(objects):
    """Ground truth of one scene as the loss wants it: labels [G], boxes [G, 4] normalised (cx, cy, w, h)."""
    labels = np.array([o["label"] for o in objects], np.int64)               # [G]
    x0, y0, x1, y1 = np.array([o["box"] for o in objects]).T / SIZE          # [G] each, in [0, 1]
    return labels, np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=1)   # [G, 4]


def corners(b):
    """(cx, cy, w, h) -> (x1, y1, x2, y2). [..., 4] -> [..., 4]"""
    return np.concatenate([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], axis=-1)


image0, objects0 = scenes[0]
labels0, boxes0 = targets(objects0)
lg, bx = logits[0].astype(np.float64), pred_boxes[0].astype(np.float64)   # [Nq, NC], [Nq, 4]

p = 1 / (1 + np.exp(-lg[:, labels0]))                                      # [Nq, G]
alpha, gamma = 0.25, 2.0                                                    # matcher_alpha, matcher_gamma
class_cost = alpha * (1 - p) ** gamma * -np.log(p + 1e-8) - (1 - alpha) * p ** gamma * -np.log(1 - p + 1e-8)
l1_cost = np.abs(bx[:, None, :] - boxes0[None, :, :]).sum(-1)              # [Nq, G]
a, b = corners(bx)[:, None, :], corners(boxes0)[None, :, :]                 # [Nq, 1, 4], [1, G, 4]
inter = np.prod(np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None), -1)
union = np.prod(a[..., 2:] - a[..., :2], -1) + np.prod(b[..., 2:] - b[..., :2], -1) - inter
hull = np.prod(np.maximum(a[..., 2:], b[..., 2:]) - np.minimum(a[..., :2], b[..., :2]), -1)
giou = inter / union - (hull - union) / hull                                # [Nq, G]
cost0 = 2.0 * class_cost + 5.0 * l1_cost + 2.0 * -giou                      # matcher_{class,bbox,giou}_cost
check("matching cost [Nq, G]", cost0, matching.matching_cost(lg, bx, labels0, boxes0), atol=1e-12)

queries0, matched0 = linear_sum_assignment(cost0)
score0 = 1 / (1 + np.exp(-lg))                                               # [Nq, NC]
for q, j in zip(queries0, matched0):
    print(f"object {j} ({CLASSES[labels0[j]]}) <- query {q}: score {score0[q, labels0[j]]:.2f}, "
          f"IoU {inter[q, j] / union[q, j]:.2f}, cost {cost0[q, j]:.2f}")
unmatched0 = np.setdiff1d(np.arange(len(lg)), queries0)
print(f"{len(unmatched0)} unmatched queries; their highest class score: {score0[unmatched0].max():.2f}")

# %% [markdown]
# Solid boxes: the query the matching gives each object (dashed: the object's ground truth). Thin grey: the
# unmatched queries whose best score is above 0.2 — what the loss would push further toward "no object".

# %%
fig, ax = plt.subplots(figsize=(5.5, 5.5))
ax.imshow(image0)
colours = plt.get_cmap("tab10")
for q in unmatched0[score0[unmatched0].max(1) > 0.2]:
    x1, y1, x2, y2 = corners(bx[q]) * SIZE
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="0.6", lw=0.8))
for k, (q, j) in enumerate(zip(queries0, matched0)):
    gx1, gy1, gx2, gy2 = corners(boxes0[j]) * SIZE
    ax.add_patch(plt.Rectangle((gx1, gy1), gx2 - gx1, gy2 - gy1, fill=False, ec=colours(k), lw=1.5, ls="--"))
    x1, y1, x2, y2 = corners(bx[q]) * SIZE
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colours(k), lw=2))
    ax.text(x1, y1 - 2, f"q{q} {CLASSES[labels0[j]]} {score0[q, labels0[j]]:.2f}", color="white", fontsize=8,
            bbox=dict(fc=colours(k), ec="none", pad=1))
ax.set_title("scene 0: Hungarian matching (dashed: ground truth)", fontsize=10)
ax.axis("off")
plt.show()

# %% [markdown]
# ### 1.3 Matched and unmatched queries over fifty scenes
#
# The varifocal loss of RT-DETR ([1] §4.3; transformers' `loss_labels_vfl`) sets the target of a matched query's
# class score to the IoU of its box with its object, and the target of every class score of an unmatched query to 0.
# If training has worked, the scores should separate: high for the queries the matching picks, low for the others.
# We match every scene and collect each query's best class score. (In training, transformers'
# `RTDetrForObjectDetectionLoss` runs this matching separately on the last decoder layer's output, on each earlier
# layer's, and on the encoder's top-k proposals; the denoising queries are not matched: each is built from a known
# object and keeps it.)

# %%
matched_scores, unmatched_scores = [], []
for i, (_, objects) in enumerate(scenes):
    labels, boxes = targets(objects)
    q, _ = matching.hungarian_match(matching.matching_cost(logits[i], pred_boxes[i], labels, boxes))
    best_score = 1 / (1 + np.exp(-logits[i].astype(np.float64).max(1)))     # [Nq] best class score per query
    is_matched = np.isin(np.arange(len(best_score)), q)
    matched_scores.append(best_score[is_matched])
    unmatched_scores.append(best_score[~is_matched])
matched_scores, unmatched_scores = np.concatenate(matched_scores), np.concatenate(unmatched_scores)
print(f"matched queries:   {len(matched_scores):5d}, median best score {np.median(matched_scores):.3f}, "
      f"{(matched_scores > 0.5).mean():.0%} above 0.5")
print(f"unmatched queries: {len(unmatched_scores):5d}, median best score {np.median(unmatched_scores):.3f}, "
      f"{(unmatched_scores > 0.5).sum()} above 0.5")

fig, ax = plt.subplots(figsize=(7, 3))
bins = np.linspace(0, 1, 41)
ax.hist(unmatched_scores, bins, alpha=0.6, label="unmatched (trained toward 'no object')", log=True)
ax.hist(matched_scores, bins, alpha=0.6, label="matched to an object", log=True)
ax.axvline(0.5, color="k", lw=0.8, ls=":")
ax.set_xlabel("best class score of a query")
ax.set_ylabel("queries (log scale)")
ax.legend(fontsize=8)
ax.set_title(f"{N_SCENES} scenes, demo model", fontsize=10)
plt.show()

# %% [markdown]
# ### 1.4 NMS-free is not duplicate-free
#
# Nothing in inference removes a second box on the same object: `post_process_object_detection` only ranks and
# thresholds. So if a model does put two confident queries on one object, both are reported. The one-to-one matching
# makes that costly *in training* (one of the two is always a false positive in the loss), and a well-trained DETR
# rarely does it: DETR [12] §4.2 (the ablation of decoder layers, Fig. 4) reports that NMS improves the predictions of
# its first decoder layer and stops helping by the last, the later layers' self-attention letting the queries
# suppress duplicates that the loss penalises. How well a given model has learned it is a measurement, so we
# measure: the detections above 0.5 per scene, and how many are **near-duplicates** — IoU > 0.7 with a higher-scored
# detection of the same class.

# %%
def duplicates(det, iou_min=0.7):
    """Mask [n] of the detections (in score order) with IoU > iou_min with a higher-scored one of the same label."""
    _, iou = matching.generalized_box_iou(det["boxes"].astype(np.float64), det["boxes"].astype(np.float64))
    same = det["labels"][:, None] == det["labels"][None, :]                  # [n, n]
    higher = np.tril(np.ones(iou.shape, bool), k=-1)                         # [n, n]: j scored above i
    return ((iou > iou_min) & same & higher).any(axis=1)


dets_05 = post_process_object_detection(logits, pred_boxes, sizes, threshold=0.5)
n_dets = np.array([len(d["scores"]) for d in dets_05])
n_dups = np.array([duplicates(d).sum() for d in dets_05])
n_objects = np.array([len(obj) for _, obj in scenes])
print(f"per scene: {n_objects.mean():.2f} objects, {n_dets.mean():.2f} detections above 0.5, "
      f"{n_dups.mean():.2f} of them near-duplicates")
print(f"in all: {n_dets.sum()} detections above 0.5, {n_dups.sum()} near-duplicates "
      f"({n_dups.sum() / max(n_dets.sum(), 1):.1%}), in {np.count_nonzero(n_dups)} of {N_SCENES} scenes")

# %% [markdown]
# The scene with the most near-duplicates: detections above 0.5, the near-duplicates in red (dashed: ground truth).

# %%
worst = int(np.argmax(n_dups))
det, dup = dets_05[worst], duplicates(dets_05[worst])
fig, ax = plt.subplots(figsize=(6.5, 6.5))
ax.imshow(scenes[worst][0])
for o in scenes[worst][1]:
    x0, y0, x1, y1 = o["box"]
    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=1, ls="--"))
for (x1, y1, x2, y2), label, score, is_dup in zip(det["boxes"], det["labels"], det["scores"], dup):
    colour = "red" if is_dup else "lime"
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=1.5))
    ax.text(x1, y2 + 8 if is_dup else y1 - 2, f"{CLASSES[label]} {score:.2f}", color="black", fontsize=7,
            bbox=dict(fc=colour, ec="none", pad=0.5, alpha=0.8))
ax.set_title(f"scene {worst}: {len(det['scores'])} detections > 0.5, {int(dup.sum())} near-duplicates (red), "
             f"{len(scenes[worst][1])} objects", fontsize=9)
ax.axis("off")
plt.show()

# %% [markdown]
# Read the printed share of near-duplicates as a measure of how far this model's training has come, not as a
# property of DETRs: of two near-duplicates on one object at most one can be matched to it, and the other is pushed
# toward "no object" at every training step that sees such a scene. NMS would hide them at the price NMS always has
# (a threshold to tune, and real neighbours of the same class suppressed). Exercise 1 measures what NMS would do to
# this model's AP.
#
# ## 2. Average precision, the COCO way
#
# COCO's AP [14] scores a **ranked list** of detections:
#
# 1. **IoU** of every detection with every object of the same image and class.
# 2. **Greedy matching** per image and class at an IoU threshold t: detections in order of decreasing score; each
#    takes the free object of highest IoU ≥ t, if any → true positive; otherwise false positive. An object is taken
#    at most once, so a duplicate is a false positive here too.
# 3. Over all images, sort the class's detections by score; cumulative TP and FP give **precision** = TP / (TP + FP)
#    and **recall** = TP / (number of objects) after each detection.
# 4. Make precision non-increasing from the right (the "envelope": at each point the best precision at this or any
#    higher recall) and read it at the **101 recall levels** 0, 0.01, …, 1 (0 beyond the highest recall reached);
#    their mean is the AP at t.
# 5. AP50 is that at t = 0.5; **AP** is the mean over t = 0.50, 0.55, …, 0.95; both then averaged over classes.
#    AP_S / AP_M / AP_L repeat it with only the objects of area < 32², 32²–96², > 96² counted (the others, and
#    unmatched detections of an area outside the range, are ignored rather than counted). An object's area is the
#    annotation's `area` field — here, as in COCO, its *visible* area, not its box's w·h (`shapes.py`); a
#    detection's is its box's w·h.
#
# ### 2.1 Small first: one image, four detections, three objects

# %%
def iou_xywh(dt, gt):
    """IoU of boxes (x, y, w, h): dt [D, 4], gt [G, 4] -> [D, G]."""
    lo = np.maximum(dt[:, None, :2], gt[None, :, :2])                            # [D, G, 2]
    hi = np.minimum(dt[:, None, :2] + dt[:, None, 2:], gt[None, :, :2] + gt[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), -1)                              # [D, G]
    return inter / (np.prod(dt[:, 2:], -1)[:, None] + np.prod(gt[:, 2:], -1)[None, :] - inter)


toy_gt = np.array([[10, 10, 40, 40], [100, 20, 30, 60], [60, 120, 50, 50]], float)   # [G, 4] (x, y, w, h)
toy_dt = np.array([[12, 8, 40, 42], [14, 12, 36, 36], [105, 25, 30, 50], [0, 150, 20, 20]], float)   # [D, 4]
toy_score = np.array([0.9, 0.8, 0.7, 0.6])                                  # already in decreasing order
iou = iou_xywh(toy_dt, toy_gt)
print("IoU [D, G]:\n", np.round(iou, 3))
taken, tp = np.zeros(3, bool), np.zeros(4, bool)
for d in range(4):                                                          # greedy, by score
    free = np.where(~taken & (iou[d] >= 0.5), iou[d], -1)
    if free.max() >= 0.5:
        taken[free.argmax()] = tp[d] = True
precision = np.cumsum(tp) / np.arange(1, 5)
recall = np.cumsum(tp) / 3
print("TP", tp.astype(int), "precision", np.round(precision, 3), "recall", np.round(recall, 3))
envelope = np.maximum.accumulate(precision[::-1])[::-1]
levels = np.linspace(0, 1, 101)
at = np.searchsorted(recall, levels, side="left")                            # first detection reaching the level
ap50_toy = np.where(at < 4, envelope[np.minimum(at, 3)], 0).mean()
print(f"AP50 by hand: {ap50_toy:.4f}  (precision 1 up to recall 1/3, 2/3 from there to 2/3, 0 beyond)")

toy_coco = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": k + 1, "image_id": 1, "category_id": 1, "bbox": list(g), "area": g[2] * g[3],
                             "iscrowd": 0} for k, g in enumerate(toy_gt)]}
toy_stats = evaluate.evaluate_coco(toy_coco, {"image_id": [1] * 4, "category_id": [1] * 4, "bbox": toy_dt,
                                              "score": toy_score})
check("toy AP50 vs rtdetrv2_np.evaluate", ap50_toy, toy_stats["AP50"], atol=1e-12)

# %% [markdown]
# The second detection lies on the first object, which the first detection has already taken: a duplicate, counted
# as a false positive. Recall 2/3 is reached at the third detection with precision 2/3; the envelope carries that
# precision back over the recall levels between 1/3 and 2/3.
#
# ### 2.2 The demo model on fifty scenes, by hand
#
# Evaluation uses the top Nq (query, class) pairs of each image, **without a threshold** (as the original
# `RTDETRPostProcessor` and `rtdetrv2_np.evaluate` do). We first check that our detections are the ones the package's
# evaluator computes for the same scenes, then write steps 1–5 for every class, IoU threshold and area range.

# %%
gt = coco_instances([(i, objects) for i, (_, objects) in enumerate(scenes)], EVAL_SEED)   # image id = i + 1


def detection_arrays(dets):
    """Detections per image (x1, y1, x2, y2 in pixels) -> evaluate's arrays: image_id, category_id, bbox (x, y, w, h),
    score. Category = label + 1 (coco_instances' numbering)."""
    cols = {"image_id": [], "category_id": [], "bbox": [], "score": []}
    for i, d in enumerate(dets):
        x1, y1, x2, y2 = d["boxes"].T
        cols["image_id"].append(np.full(len(x1), i + 1))
        cols["category_id"].append(d["labels"] + 1)
        cols["bbox"].append(np.stack([x1, y1, x2 - x1, y2 - y1], 1).astype(np.float64))   # [n, 4]
        cols["score"].append(d["scores"].astype(np.float64))
    return {k: np.concatenate(v) for k, v in cols.items()}


dets_all = post_process_object_detection(logits, pred_boxes, sizes, threshold=-np.inf)   # top Nq pairs per image
dt = detection_arrays(dets_all)
stats = evaluate.evaluate_coco(gt, dt)
package_run = evaluate.evaluate_shapes(model, EVAL_SEED, N_SCENES)       # scenes, model and evaluation, all in one
check("our detections' AP vs evaluate_shapes", [stats[k] for k in evaluate.STAT_NAMES],
      [package_run[k] for k in evaluate.STAT_NAMES])


# %%
AREAS = {"all": (0, 1e10), "small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2), "large": (96 ** 2, 1e10)}


def match_class(c, t, area):
    """Greedy matching of class c at IoU threshold t, all images: (scores [N], tp [N], ignored [N], objects counted)."""
    lo, hi = AREAS[area]
    scores, tps, ignored, n_objects = [], [], [], 0
    for i in range(N_SCENES):
        g = [a for a in gt["annotations"] if a["image_id"] == i + 1 and a["category_id"] == c]
        gbox = np.array([a["bbox"] for a in g]).reshape(-1, 4)              # [G, 4]
        g_ignore = np.array([not lo <= a["area"] <= hi for a in g], bool)   # [G] outside the area range
        n_objects += int((~g_ignore).sum())
        d = np.flatnonzero((dt["image_id"] == i + 1) & (dt["category_id"] == c))
        d = d[np.argsort(-dt["score"][d], kind="stable")][:100]             # score order, maxDets 100
        iou = iou_xywh(dt["bbox"][d], gbox)                                 # [D, G]
        taken = np.zeros(len(g), bool)
        for k in range(len(d)):
            ok = ~taken & (iou[k] >= t)
            pool = ok & ~g_ignore if (ok & ~g_ignore).any() else ok          # regular objects first
            # the free object of highest IoU (pycocotools takes the last of exactly equal IoUs; argmax the first:
            # the same here, as no two boxes tie)
            j = int(np.argmax(np.where(pool, iou[k], -1))) if pool.any() else -1
            area_d = dt["bbox"][d[k], 2] * dt["bbox"][d[k], 3]
            if j >= 0:
                taken[j] = True
            tps.append(j >= 0 and not g_ignore[j])
            ignored.append((j >= 0 and g_ignore[j]) or (j < 0 and not lo <= area_d <= hi))
            scores.append(dt["score"][d[k]])
    return np.array(scores), np.array(tps, bool), np.array(ignored, bool), n_objects


def average_precision(scores, tp, ignored, n_objects):
    """101-point interpolated AP of one class at one threshold, and its (recall, precision, envelope) curve."""
    if len(scores) == 0:
        return 0.0, (np.zeros(0), np.zeros(0), np.zeros(0))                # no detection: precision 0 everywhere
    order = np.argsort(-scores, kind="stable")                              # ties keep image order
    tp, fp = tp[order] & ~ignored[order], ~tp[order] & ~ignored[order]
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(fp)
    recall = tp_sum / n_objects
    precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))                  # pycocotools' eps against 0/0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, evaluate.RECALL_LEVELS, side="left")
    ap = np.where(at < len(recall), envelope[np.minimum(at, len(recall) - 1)], 0.0).mean()
    return ap, (recall, precision, envelope)


t_hand = time.time()
thresholds = evaluate.IOU_THRESHOLDS                                         # 0.50:0.05:0.95
ap = {}                                                                      # (class, area) -> [T]
for c in range(1, len(CLASSES) + 1):
    for area in AREAS:
        per_t = [match_class(c, t, area) for t in thresholds]
        ap[c, area] = np.array([average_precision(*m)[0] if m[3] else np.nan for m in per_t])
print(f"by hand: {time.time() - t_hand:.1f} s")
for c in range(1, len(CLASSES) + 1):
    print(f"{CLASSES[c - 1]:>8}: AP50 {ap[c, 'all'][0]:.3f}, AP {ap[c, 'all'].mean():.3f}")
mine = {"AP": np.mean([ap[c, "all"].mean() for c in range(1, 5)]),
        "AP50": np.mean([ap[c, "all"][0] for c in range(1, 5)]),
        "AP75": np.mean([ap[c, "all"][5] for c in range(1, 5)])}
for area, name in (("small", "AP_S"), ("medium", "AP_M"), ("large", "AP_L")):
    mine[name] = np.nanmean([ap[c, area] for c in range(1, 5)])             # classes without such objects: left out
for name, value in mine.items():
    print(f"{name:>5}: by hand {value:.4f}   rtdetrv2_np.evaluate {stats[name]:.4f}")
check("AP, AP50, AP75, AP_S, AP_M, AP_L", list(mine.values()), [stats[k] for k in mine], atol=1e-12)
check("per-class AP", [ap[c, "all"].mean() for c in range(1, 5)], [stats["per_category_AP"][c] for c in range(1, 5)],
      atol=1e-12)

# %% [markdown]
# The precision/recall curve of one class at two IoU thresholds: raw precision after each detection (thin), its
# envelope (thick), and the 101 points whose mean is the AP (dots). A stricter threshold turns loosely placed boxes
# into false positives, so the curve drops and ends at a lower recall.

# %%
c_plot = 1                                                                   # category 1 = CLASSES[0]
fig, ax = plt.subplots(figsize=(6.5, 4))
for t, colour in ((0.5, "C0"), (0.75, "C3")):
    ap_t, (rc, pr, env) = average_precision(*match_class(c_plot, t, "all"))
    ax.plot(rc, pr, color=colour, lw=0.6, alpha=0.6)
    ax.plot(rc, env, color=colour, lw=2, label=f"IoU ≥ {t}: AP = {ap_t:.3f}")
    at = np.searchsorted(rc, evaluate.RECALL_LEVELS, side="left")
    ax.plot(evaluate.RECALL_LEVELS, np.where(at < len(rc), env[np.minimum(at, len(rc) - 1)], 0), ".", ms=3,
            color=colour)
ax.set_xlabel("recall")
ax.set_ylabel("precision")
ax.set_ylim(0, 1.02)
ax.set_title(f"'{CLASSES[c_plot - 1]}', {N_SCENES} scenes, all top-{model.config.num_queries} detections",
             fontsize=10)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ### 2.3 Why evaluation does not threshold
#
# `detect` keeps scores above 0.5 because a person wants a short list. AP wants the whole ranking: the detections
# below any threshold all rank *after* those above it, so adding them only extends the precision/recall curve to
# the right. Precision at the recall levels already reached cannot drop (the envelope takes the best precision at
# that recall *or beyond*), and every object they find adds recall. So AP without a threshold is never lower than
# with one; here is how much it differs for this model:

# %%
stats_05 = evaluate.evaluate_coco(gt, detection_arrays(dets_05))
for k in ("AP", "AP50", "AP_S", "AP_M", "AP_L"):
    print(f"{k:>5}: all top-{model.config.num_queries} {stats[k]:.3f}   only score > 0.5 {stats_05[k]:.3f}")
assert all(stats[k] >= stats_05[k] - 1e-12 for k in ("AP", "AP50", "AP75"))
print(f"detections evaluated: {len(dt['score'])} vs {sum(len(d['scores']) for d in dets_05)}")

# %% [markdown]
# ## 3. GIoU: an overlap measure that still points somewhere when there is no overlap
#
# IoU = |A ∩ B| / |A ∪ B| is 0 for every pair of disjoint boxes, near or far: as a loss, it gives no gradient to a
# predicted box that misses its object. GIoU ([13] §3, Algorithm 1) subtracts the share of the smallest enclosing box
# C that neither box covers:
#
# $$\mathrm{GIoU} = \mathrm{IoU} - \frac{|C \setminus (A \cup B)|}{|C|} = \mathrm{IoU} - \frac{|C| - |A \cup B|}{|C|},$$
#
# in (−1, 1]: equal to IoU when one box lies inside the other (C is then the larger box, so the second term is 0),
# and tending to −1 as disjoint boxes move apart. It is scale-invariant, like IoU; the L1 term of the cost is not.
# The loss uses 1 − GIoU; the matching cost −GIoU.

# %%
def giou_by_hand(a, b):
    """GIoU and IoU of two boxes (x1, y1, x2, y2), one pair, plain arithmetic."""
    iw, ih = max(0, min(a[2], b[2]) - max(a[0], b[0])), max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull, inter / union


A = (0.0, 0.0, 2.0, 2.0)
pairs = {"identical": (0, 0, 2, 2), "half overlap": (1, 0, 3, 2), "corner overlap": (1, 1, 3, 3),
         "inside": (0.5, 0.5, 1.5, 1.5), "touching": (2, 0, 4, 2), "gap 1": (3, 0, 5, 2), "gap 10": (12, 0, 14, 2),
         "diagonal gap": (3, 3, 5, 5)}
hand = np.array([giou_by_hand(A, B) for B in pairs.values()])              # [P, 2] (GIoU, IoU)
for (name, B), (g, i) in zip(pairs.items(), hand):
    print(f"{name:>14} {B}: IoU {i:.3f}  GIoU {g:+.3f}")
pkg_giou, pkg_iou = matching.generalized_box_iou(np.array([A]), np.array(list(pairs.values()), float))
check("GIoU vs rtdetrv2_np.matching", hand[:, 0], pkg_giou[0], atol=1e-15)
check("IoU vs rtdetrv2_np.evaluate.box_iou", hand[:, 1],
      evaluate.box_iou(np.array([[0, 0, 2, 2]], float),
                       np.array([[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in pairs.values()], float),
                       np.zeros(len(pairs), bool))[0], atol=1e-15)
scaled = matching.generalized_box_iou(np.array([A]) * 7, np.array(list(pairs.values()), float) * 7)[0]
check("GIoU is scale-invariant (boxes x 7)", scaled, pkg_giou, atol=1e-15)

# %% [markdown]
# Slide a 2 × 2 box along x past a fixed 2 × 2 target: IoU is flat at 0 whenever they are apart, GIoU keeps
# rising toward the target. Its slope (a central difference, printed) is what a gradient step would follow. (While
# they overlap the two curves coincide: with equal heights and no vertical offset the enclosing box *is* the union.
# The "corner overlap" pair above shows GIoU below IoU for overlapping boxes.)

# %%
target = np.array([[0.0, 0.0, 2.0, 2.0]])
shifts = np.linspace(-6, 6, 241)
moving = np.stack([shifts, np.zeros_like(shifts), shifts + 2, np.full_like(shifts, 2)], 1)   # [S, 4]
g_curve, i_curve = (v[:, 0] for v in matching.generalized_box_iou(moving, target))

fig, ax = plt.subplots(figsize=(6.5, 3))
ax.plot(shifts, i_curve, label="IoU")
ax.plot(shifts, g_curve, label="GIoU")
ax.axvspan(-2, 2, color="0.9", zorder=0, label="boxes overlap")
ax.set_xlabel("x-offset of the moving box")
ax.legend(fontsize=8)
ax.set_title("two 2 × 2 boxes", fontsize=10)
plt.show()

def slope(x, step=1e-6):
    """Central differences d GIoU/dx and d IoU/dx of the moving box at offset x."""
    plus = matching.generalized_box_iou(np.array([[x + step, 0, x + step + 2, 2]]), target)
    minus = matching.generalized_box_iou(np.array([[x - step, 0, x - step + 2, 2]]), target)
    return float(plus[0][0, 0] - minus[0][0, 0]) / (2 * step), float(plus[1][0, 0] - minus[1][0, 0]) / (2 * step)


for x in (-4.0, -2.5, 3.0, 5.0):
    d_giou, d_iou = slope(x)
    print(f"offset {x:+.1f}: d IoU/dx = {d_iou:+.3f}, d GIoU/dx = {d_giou:+.3f} "
          f"(raising GIoU moves the box {'toward' if np.sign(d_giou) == -np.sign(x) else 'away from'} the target)")

# %% [markdown]
# ## Summary
#
# * Training a DETR assigns each object to exactly one query (minimum total cost of focal class term + L1 + GIoU,
#   solved by the Hungarian algorithm) and pushes every other query toward "no object". That one-to-one loss is what
#   removes the need for NMS; the decoder's self-attention is how queries can coordinate, not the reason they do.
# * NMS-free is not duplicate-free: near-duplicates that a model still makes are reported as they are. How many is a
#   property of the trained weights, measured above (section 1.4).
# * COCO AP scores a ranking: greedy matching by score at each IoU threshold, precision made non-increasing, read
#   at 101 recall levels, averaged over 10 thresholds and the classes. Thresholding the list first never raises it.
# * GIoU = IoU − (empty share of the enclosing box): equal to IoU for nested boxes, negative and still informative
#   for disjoint ones, scale-invariant.
#
# ## Exercises
#
# Solutions: `walkthrough/solutions/07_set_prediction.py` (each computes the answer and checks it).
#
# 1. Write a 10-line NMS (same label, IoU > 0.7) and apply it to the top-100 detections of each of the fifty
#    scenes before evaluating. How do the number of detections above 0.5 and the AP change? Which would you expect
#    to change for a fully trained DETR, and why?
# 2. A greedy matcher takes the smallest entry of the cost matrix, removes its row and column, and repeats. Find a
#    2 × 2 cost matrix where it does worse than `linear_sum_assignment`, and show that on scene 0's real cost
#    matrix its total is never below the Hungarian one.
# 3. Append, to one class's detections of the fifty scenes, fifty false positives scored below every existing
#    detection. Show that the class AP does not change at all; then append one true positive at the very end and
#    show that it can only rise.
# 4. For two w × h boxes side by side with a horizontal gap d, derive GIoU in closed form and check it against
#    `matching.generalized_box_iou` for several d. What is its limit as d → ∞?
# 5. Match scene 0 with box terms only (class weight 0) and with the full cost. How many objects change query?
#    Check that the box-only matching has the lower box cost.

# %%
print(f"notebook ran in {time.time() - T0:.1f} s")

"""COCO-style box AP in NumPy: pycocotools' COCOeval ("bbox") written out, and the model run that feeds it.

    python -m rtdetrv2_np.evaluate --model M --coco-annotations instances_val2017.json --images val2017/
    python -m rtdetrv2_np.evaluate --model M --shapes [--seed 2026 --count 500]     # the generated evaluation set
    python -m rtdetrv2_np.evaluate --coco-annotations A --detections results.json  # a results file, no model

    from rtdetrv2_np.evaluate import evaluate_coco
    stats = evaluate_coco(gt, detections)     # gt: a COCO instances dict; detections: [{image_id, category_id,
    stats["AP"], stats["AP50"]                #   bbox [x, y, w, h], score}], the results format

The metric is the COCO detection evaluation (Lin et al., "Microsoft COCO", arXiv 1405.0312; the 12 numbers of
cocodataset.org/#detection-eval), defined by its reference code, pycocotools `cocoeval.py` (cocodataset/cocoapi
PythonAPI, COCOeval with iouType="bbox", Params.setDetParams; read at pycocotools 2.0.11) and
`common/maskApi.c::bbIou`. The steps:

1. IoU of every detection with every object of the same image and category (`box_iou`): boxes (x, y, w, h);
   for an object marked `iscrowd` the denominator is the detection's area alone, not the union (a detection
   inside a crowd region scores IoU 1 with it).
2. Greedy matching per image and category (`match_detections`), at each IoU threshold t in 0.50:0.05:0.95 and
   each area range: detections in order of decreasing score (a stable sort: equal scores keep their input order),
   at most 100 per image and category; each takes, among the objects still free with IoU >= t, the one of highest
   IoU (of equal IoUs the last in file order). Objects that are ignored in this area range — crowds, and objects
   whose `area` field lies outside the range — are taken only when no regular object qualifies; a crowd stays
   free (it can absorb any number of detections). A detection matched to an ignored object is ignored; so is an
   unmatched detection whose own area w·h lies outside the range. Sequential by nature: a loop over the
   detections, each step vectorised over thresholds, area ranges and objects.
3. Accumulation per category, area range and maxDets (1, 10, 100: the first n detections of each image), over all
   images (`accumulate`): the detections of all images sorted by score (stable: ties in image order), cumulative
   true and false positives, recall = TP / (objects not ignored), precision = TP / (TP + FP), precision made
   non-increasing from the right (the interpolated precision of PASCAL VOC [1] §4.2, which reads it at 11 recall
   levels), read at the 101 recall levels 0:0.01:1 (0 past the highest recall reached).
4. The 12 summary numbers (`summarize`): means over IoU thresholds, recall levels and categories of the entries
   that are defined; -1 where none is (e.g. AP_L when no object is large). AP = AP@[.50:.95], AP50, AP75, AP_S/M/L
   (area < 32², 32²..96², > 96², both limits included in both neighbours, as in pycocotools), AR1/10/100 (recall
   with 1, 10, 100 detections per image), AR_S/M/L.

Same numbers as pycocotools, including its quirks, on the cases recorded by tools/record_cocoeval.py
(tests/fixtures/cocoeval/: crowded images, images without objects or without detections, tied scores, crowds,
areas at the range limits). Where this code differs:
- no detections at all: pycocotools' loadRes([]) raises; here every category with objects gets AP 0;
- duplicate annotation ids are refused (pycocotools silently replaces one annotation by the other);
- an annotation without `iscrowd` counts as not crowd (pycocotools raises KeyError);
- non-finite boxes or scores are refused (pycocotools' matching misbehaves on NaN).
Kept, because it is what pycocotools computes: an annotation whose id is 0 can be matched, but the match is stored
as its id, 0, which is also the "unmatched" mark: the detection counts as a false positive (or is ignored when its
own area lies outside the range), and the object stays unfound.

Running a model (`evaluate_model` on a COCO annotations file + image folder, `evaluate_shapes` on the generated
set, `predict` for both): images in id order, in batches, through preprocess (exact resize to the input size, /255),
the model and post_process_object_detection WITHOUT a threshold: the top Nq (query, class) pairs of each image,
Nq = the model's num_queries, as the original evaluates (RTDETRPostProcessor, num_top_queries), boxes in the image's
pixels. Labels become category ids by name, by COCO's 80-class table or by position (`label_mapping`).

The command prints on stdout a header line, the 12 numbers in pycocotools' layout and the AP of each category
(--json: one JSON document instead); progress and the timing line go to stderr. Exit status: 0 evaluated; 1 the
model, the annotations or the detections could not be read (one line "error: <file>: ..."), or an image could not
(it is left out with its objects, the others are evaluated and printed); 2 usage error.

Shape letters: I images, K categories, G objects of one image and category, D detections of one image and category
(in score order), N detections of a category over all images, T = 10 IoU thresholds, R = 101 recall levels,
A = 4 area ranges, M = 3 maxDets.

[1] Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010, §4.2 (interpolated AP).
"""

import json
import os
import sys
import time

import numpy as np

from .errors import RTDetrError

# pycocotools Params.setDetParams, computed the same way, because the doubles matter at the comparisons IoU >= t:
# np.linspace's 9th threshold is 0.8999999999999999, not 0.9 (np.arange would give 0.6000000000000001 for the 3rd).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)                               # [T]
RECALL_LEVELS = np.linspace(0.0, 1.0, 101)                                # [R]
MAX_DETS = (1, 10, 100)                                                   # [M]
AREA_RANGES = ((0.0, 1e5 ** 2), (0.0, 32.0 ** 2), (32.0 ** 2, 96.0 ** 2), (96.0 ** 2, 1e5 ** 2))   # [A] (lo, hi)
AREA_NAMES = ("all", "small", "medium", "large")
# COCOeval.evaluateImg matches at IoU >= min(t, 1 - 1e-10): the cap only matters for a threshold of 1 (not a default).
IOU_CAP = 1 - 1e-10
# The 12 numbers in COCOeval.summarize's order: (name, AP or AR, IoU threshold or None = all, area, maxDets).
STATS = (("AP", True, None, "all", 100), ("AP50", True, 0.5, "all", 100), ("AP75", True, 0.75, "all", 100),
         ("AP_S", True, None, "small", 100), ("AP_M", True, None, "medium", 100), ("AP_L", True, None, "large", 100),
         ("AR1", False, None, "all", 1), ("AR10", False, None, "all", 10), ("AR100", False, None, "all", 100),
         ("AR_S", False, None, "small", 100), ("AR_M", False, None, "medium", 100),
         ("AR_L", False, None, "large", 100))
STAT_NAMES = tuple(s[0] for s in STATS)


# ---------------------------------------------------------------------------------------------------------------
# Inputs: the ground truth and the detections as arrays
# ---------------------------------------------------------------------------------------------------------------

def _number_array(values, what, shape_tail=()):
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise RTDetrError(f"{what}: not all numbers (or boxes not all of 4); give numbers") from None
    if a.shape[1:] != shape_tail:
        raise RTDetrError(f"{what}: expected shape [n{''.join(f', {s}' for s in shape_tail)}], got {list(a.shape)}")
    if not np.isfinite(a).all():
        raise RTDetrError(f"{what}: contains NaN or infinity; every value must be finite")
    return a


def _id_array(values, what):
    try:
        a = np.asarray(values)
        ok = a.ndim == 1 and (a.size == 0 or np.issubdtype(a.dtype, np.integer))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise RTDetrError(f"{what}: every id must be an integer")
    return a.astype(np.int64)


def ground_truth_arrays(gt, source="ground truth"):
    """The parts of a COCO instances dict the evaluation uses, as arrays (checked).

    Returns a dict: image_ids [I] and category_ids [K] (sorted, as COCOeval's params), category names {id: name},
    and per annotation, in file order, of those whose image and category are listed: id, image (index into
    image_ids), category (index into category_ids), bbox [n, 4] (x, y, w, h), area, crowd (bool).
    """
    if not isinstance(gt, dict):
        raise RTDetrError(f"{source}: not a COCO annotations object (a JSON object with images, annotations, "
                          f"categories)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise RTDetrError(f"{source}: no '{key}' list; a COCO instances file has images, annotations and "
                              f"categories")
    try:
        image_ids = _id_array([im["id"] for im in gt["images"]], f"{source}: images")
        category_ids = _id_array([c["id"] for c in gt["categories"]], f"{source}: categories")
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}
        anns = gt["annotations"]
        ann_ids = _id_array([a["id"] for a in anns], f"{source}: annotations")
        ann_images = _id_array([a["image_id"] for a in anns], f"{source}: annotation image_id")
        ann_cats = _id_array([a["category_id"] for a in anns], f"{source}: annotation category_id")
        bbox = _number_array([a["bbox"] for a in anns] or np.zeros((0, 4)), f"{source}: annotation bbox", (4,))
        area = _number_array([a["area"] for a in anns], f"{source}: annotation area")
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    except (KeyError, TypeError) as e:
        raise RTDetrError(f"{source}: an image, category or annotation lacks a field ({e}); each annotation needs "
                          f"id, image_id, category_id, bbox, area") from None
    if len(np.unique(ann_ids)) != len(ann_ids):
        raise RTDetrError(f"{source}: annotation ids are not unique; give every annotation its own id")
    image_ids, category_ids = np.unique(image_ids), np.unique(category_ids)        # sorted, as COCOeval's params
    keep = np.isin(ann_images, image_ids) & np.isin(ann_cats, category_ids)       # COCOeval._prepare's filters
    return {"image_ids": image_ids, "category_ids": category_ids, "names": names,
            "id": ann_ids[keep], "image": np.searchsorted(image_ids, ann_images[keep]),
            "category": np.searchsorted(category_ids, ann_cats[keep]), "bbox": bbox[keep], "area": area[keep],
            "crowd": crowd[keep]}


def detection_arrays(detections, source="detections"):
    """Detections as arrays: a list of COCO result records {image_id, category_id, bbox, score} or a dict of those
    four as arrays ([n], [n], [n, 4], [n]). Returns the dict of arrays (float64 boxes and scores, int64 ids)."""
    if isinstance(detections, dict):
        cols = detections
    elif isinstance(detections, (list, tuple)):
        try:
            cols = {k: [d[k] for d in detections] for k in ("image_id", "category_id", "bbox", "score")}
        except (KeyError, TypeError) as e:
            raise RTDetrError(f"{source}: a detection lacks a field ({e}); each needs image_id, category_id, "
                              f"bbox [x, y, w, h], score") from None
    else:
        raise RTDetrError(f"{source}: not a list of detections")
    out = {"image_id": _id_array(cols["image_id"], f"{source}: image_id"),
           "category_id": _id_array(cols["category_id"], f"{source}: category_id"),
           "bbox": _number_array(cols["bbox"] if len(cols["bbox"]) else np.zeros((0, 4)), f"{source}: bbox", (4,)),
           "score": _number_array(cols["score"], f"{source}: score")}
    if len({len(v) for v in out.values()}) != 1:
        raise RTDetrError(f"{source}: image_id, category_id, bbox and score have different lengths")
    return out


# ---------------------------------------------------------------------------------------------------------------
# One image and category: IoU and greedy matching
# ---------------------------------------------------------------------------------------------------------------

def box_iou(dt, gt, crowd):
    """IoU of each detection with each object, as maskApi.c bbIou computes it.

    dt [D, 4], gt [G, 4] boxes (x, y, w, h) float64; crowd [G] bool. Returns [D, G] float64:
    intersection / union, where the union is the detection's own area w·h when the object is a crowd; 0 when the
    boxes do not overlap (a side of the intersection <= 0).
    """
    dx, dy, dw, dh = (c[:, None] for c in dt.T)                               # [D, 1] each
    gx, gy, gw, gh = (c[None, :] for c in gt.T)                               # [1, G] each
    w = np.fmin(dw + dx, gw + gx) - np.fmax(dx, gx)                           # [D, G] intersection width
    h = np.fmin(dh + dy, gh + gy) - np.fmax(dy, gy)                           # [D, G]
    inter = w * h
    d_area, g_area = dw * dh, gw * gh                                         # [D, 1], [1, G]
    union = np.where(crowd[None, :], d_area, d_area + g_area - inter)         # [D, G]; (da + ga) - i, as in C
    overlap = (w > 0) & (h > 0)
    return np.divide(inter, union, out=np.zeros_like(inter), where=overlap)   # [D, G]


def match_detections(iou, gt_ignore, crowd, thresholds=IOU_THRESHOLDS):
    """Greedy matching of one image and category, at every IoU threshold and area range at once.

    iou [D, G] (detections in score order); gt_ignore [A, G] bool (object ignored in area range a); crowd [G] bool.
    Returns [A, T, D] int64: the index of the object each detection takes, -1 for none.

    COCOeval.evaluateImg walks the objects with the regular ones first and keeps the best IoU >= t seen so far
    (replacing it on an equal IoU), stopping at the first ignored object once it holds a regular one. That is: the
    last object of highest IoU among the free regular ones, else among the free ignored ones — what this computes
    for all (a, t) at once, with the objects in file order (the regular-first sort is stable, so the order within
    each group is the same).
    """
    D, G = iou.shape
    A, T = gt_ignore.shape[0], len(thresholds)
    limit = np.minimum(thresholds, IOU_CAP)[None, :, None]                   # [1, T, 1]
    regular = ~gt_ignore[:, None, :]                                          # [A, 1, G]
    free = np.ones((A, T, G), dtype=bool)                                     # not yet taken (crowds: always)
    match = np.full((A, T, D), -1, dtype=np.int64)
    for d in range(D):                                                        # in score order: greedy
        candidate = free & (iou[d] >= limit)                                  # [A, T, G]
        regular_candidate = candidate & regular                               # [A, T, G]
        pool = np.where(regular_candidate.any(axis=2, keepdims=True), regular_candidate, candidate)
        value = np.where(pool, iou[d], -np.inf)                               # [A, T, G]
        best = G - 1 - np.argmax(value[:, :, ::-1], axis=2)                   # [A, T] last of the equal maxima
        found = pool.any(axis=2)                                              # [A, T]
        match[:, :, d] = np.where(found, best, -1)
        a, t = np.nonzero(found)
        free[a, t, best[a, t]] = crowd[best[a, t]]                            # a crowd is never used up
    return match


def evaluate_image(dt_box, gt_box, gt_area, crowd, gt_id):
    """Match one image's detections and objects of one category; returns what accumulation needs.

    dt_box [D, 4] in score order (at most max(MAX_DETS)); gt_box [G, 4], gt_area [G], crowd [G], gt_id [G].
    Returns (tp [A, T, D] bool, ignored [A, T, D] bool, regular objects per area range [A] int).
    tp: matched to an object whose id is not 0 (COCOeval stores the object's id, 0 meaning unmatched).
    ignored: matched to an ignored object, or (not tp and the detection's area w·h outside the range).
    """
    lo = np.array([r[0] for r in AREA_RANGES])[:, None]                      # [A, 1]
    hi = np.array([r[1] for r in AREA_RANGES])[:, None]
    gt_ignore = crowd[None, :] | (gt_area[None, :] < lo) | (gt_area[None, :] > hi)   # [A, G]
    dt_area = dt_box[:, 2] * dt_box[:, 3]                                    # [D] as loadRes: w * h
    dt_outside = (dt_area[None, :] < lo) | (dt_area[None, :] > hi)           # [A, D]
    A, T, D, G = len(AREA_RANGES), len(IOU_THRESHOLDS), len(dt_box), len(gt_box)
    if D and G:
        match = match_detections(box_iou(dt_box, gt_box, crowd), gt_ignore, crowd)   # [A, T, D]
    else:
        match = np.full((A, T, D), -1, dtype=np.int64)
    matched = match >= 0
    m = np.maximum(match, 0)                                                  # [A, T, D] (safe index)
    if G:
        tp = matched & (gt_id[m] != 0)
        on_ignored = matched & np.take_along_axis(gt_ignore[:, None, :], m, axis=2)
    else:
        tp = on_ignored = np.zeros((A, T, D), dtype=bool)
    ignored = on_ignored | (~tp & dt_outside[:, None, :])                    # [A, T, D]
    return tp, ignored, (~gt_ignore).sum(axis=1)


# ---------------------------------------------------------------------------------------------------------------
# All images: accumulate and summarize
# ---------------------------------------------------------------------------------------------------------------

def accumulate(per_category):
    """Precision [T, R, K, A, M] and recall [T, K, A, M] (COCOeval.accumulate; -1 where a category has no regular
    object in an area range).

    per_category: K dicts with the category's detections over all images, in image order, each image's in score
    order: score [N], rank [N] (position within its image), tp and ignored [A, T, N] bool; and n_regular [A].
    """
    T, R, K, A, M = len(IOU_THRESHOLDS), len(RECALL_LEVELS), len(per_category), len(AREA_RANGES), len(MAX_DETS)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    for k, c in enumerate(per_category):
        for mi, max_det in enumerate(MAX_DETS):
            keep = c["rank"] < max_det                                        # [N] each image's first max_det
            order = np.argsort(-c["score"][keep], kind="mergesort")           # stable: ties stay in image order
            for a in range(A):
                n_regular = int(c["n_regular"][a])
                if n_regular == 0:
                    continue
                tp = c["tp"][a][:, keep][:, order]                            # [T, N']
                ignored = c["ignored"][a][:, keep][:, order]                  # [T, N']
                tp_sum = np.cumsum(tp & ~ignored, axis=1).astype(float)       # [T, N']
                fp_sum = np.cumsum(~tp & ~ignored, axis=1).astype(float)      # [T, N']
                n = tp_sum.shape[1]
                rc = tp_sum / n_regular                                       # [T, N']
                pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))               # [T, N']; as COCOeval, eps = 2^-52
                recall[:, k, a, mi] = rc[:, -1] if n else 0
                if n == 0:
                    precision[:, :, k, a, mi] = 0
                    continue
                envelope = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]   # [T, N'] non-increasing
                for t in range(T):
                    at = np.searchsorted(rc[t], RECALL_LEVELS, side="left")   # [R] first detection reaching it
                    precision[t, :, k, a, mi] = np.where(at < n, envelope[t, np.minimum(at, n - 1)], 0.0)
    return precision, recall


def summarize(precision, recall):
    """The 12 numbers of COCOeval.summarize as {name: float}: the mean over the defined (> -1) entries, -1 if none."""
    out = {}
    for name, is_ap, iou, area, max_det in STATS:
        a, m = [AREA_NAMES.index(area)], [MAX_DETS.index(max_det)]
        s = precision[..., a, m] if is_ap else recall[..., a, m]             # [T, R, K, 1] or [T, K, 1]
        if iou is not None:
            s = s[np.where(iou == IOU_THRESHOLDS)[0]]
        out[name] = float(np.mean(s[s > -1])) if (s > -1).any() else -1.0
    return out


def evaluate_coco(gt, detections, image_ids=None):
    """COCO box AP of detections against a ground truth, the numbers pycocotools' COCOeval("bbox") prints.

    gt: a COCO instances dict (images, annotations, categories). detections: a list of result records
    {"image_id", "category_id", "bbox": [x, y, w, h], "score"} (the format of COCO result files and of
    postprocess.to_coco_results), or a dict of those four as arrays. Detections of a category the ground truth does
    not list are dropped (as COCOeval drops them); an image id the ground truth does not list is an error.
    image_ids: evaluate on these images only (COCOeval's params.imgIds); default all images of gt.
    Returns {"AP": ..., ..., "AR_L": ...} (STAT_NAMES; -1 where undefined) and "per_category_AP" {category id: AP
    at IoU 0.50:0.95, all areas, 100 detections; -1 for a category without objects}.
    """
    g = ground_truth_arrays(gt)
    d = detection_arrays(detections)
    images = g["image_ids"]
    if not np.isin(d["image_id"], images).all():
        bad = d["image_id"][~np.isin(d["image_id"], images)][0]
        raise RTDetrError(f"detections: image id {bad} is not in the ground truth's images; the detections must be "
                          f"of the same image set (pycocotools refuses them too)")
    if image_ids is not None:
        images = np.intersect1d(images, _id_array(list(image_ids), "image_ids"))
    I, K = len(images), len(g["category_ids"])
    if I == 0 or K == 0:
        raise RTDetrError("ground truth: no images or no categories to evaluate")

    # Detections: those of listed images and categories, grouped by (image, category), each group by score.
    use = np.isin(d["image_id"], images) & np.isin(d["category_id"], g["category_ids"])
    d_img = np.searchsorted(images, d["image_id"][use])
    d_cat = np.searchsorted(g["category_ids"], d["category_id"][use])
    d_box, d_score = d["bbox"][use], d["score"][use]
    order = np.lexsort((-d_score, d_img, d_cat))                             # stable: by group, then by score
    d_key = (d_cat * I + d_img)[order]                                       # [n] sorted by (category, image)
    d_start = np.searchsorted(d_key, np.arange(K * I + 1))                   # [K*I + 1] group boundaries
    # Objects of the evaluated images, grouped the same way, in file order.
    g_image_id = g["image_ids"][g["image"]]                                  # [n] each annotation's image id
    g_use = np.isin(g_image_id, images)
    g_img = np.searchsorted(images, g_image_id[g_use])
    g_key = g["category"][g_use] * I + g_img
    g_order = np.argsort(g_key, kind="stable")
    g_start = np.searchsorted(g_key[g_order], np.arange(K * I + 1))
    g_idx = np.flatnonzero(g_use)[g_order]                                   # annotation indices, grouped

    max_det = max(MAX_DETS)
    per_category = []
    for k in range(K):
        parts = []
        n_regular = np.zeros(len(AREA_RANGES), dtype=np.int64)
        for i in range(I):
            key = k * I + i
            dets = order[d_start[key]:d_start[key + 1]][:max_det]            # [D] score order, at most 100
            objs = g_idx[g_start[key]:g_start[key + 1]]                      # [G] file order
            if len(dets) == 0 and len(objs) == 0:
                continue                                                      # COCOeval: no entry for this image
            tp, ignored, regular = evaluate_image(d_box[dets], g["bbox"][objs], g["area"][objs], g["crowd"][objs],
                                                  g["id"][objs])
            n_regular += regular
            parts.append((d_score[dets], np.arange(len(dets)), tp, ignored))
        if parts:
            score, rank, tp, ignored = (np.concatenate(p, axis=-1) for p in zip(*parts))
        else:
            score, rank = np.zeros(0), np.zeros(0, dtype=np.int64)
            tp = ignored = np.zeros((len(AREA_RANGES), len(IOU_THRESHOLDS), 0), dtype=bool)
        per_category.append({"score": score, "rank": rank, "tp": tp, "ignored": ignored, "n_regular": n_regular})

    precision, recall = accumulate(per_category)
    stats = summarize(precision, recall)
    per_class = {}
    for k, category in enumerate(g["category_ids"]):
        p = precision[:, :, k, 0, MAX_DETS.index(100)]                       # [T, R]
        per_class[int(category)] = float(np.mean(p[p > -1])) if (p > -1).any() else -1.0
    stats["per_category_AP"] = per_class
    return stats


# ---------------------------------------------------------------------------------------------------------------
# Running a model over a data set
# ---------------------------------------------------------------------------------------------------------------

DEFAULT_BATCH = 8           # images per forward pass: amortises the per-call overhead, keeps memory modest


def read_json(path, what):
    """A JSON file's content, or an RTDetrError naming the file."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise RTDetrError(f"{path}: no such file; check the path of the {what}") from None
    except IsADirectoryError:
        raise RTDetrError(f"{path}: is a folder; give the {what} file") from None
    except PermissionError:
        raise RTDetrError(f"{path}: permission denied; make the file readable") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RTDetrError(f"{path}: not valid JSON ({e}); give a COCO-format {what} file") from None


def label_mapping(id2label, num_labels, categories):
    """How a model's labels 0..NC-1 become the ground truth's category ids: (list of NC ids, -1 = none; how).

    categories: the ground truth's "categories" list. The first rule that applies:
    1. "by name": every label's name is the name of exactly one category (the shipped demo models on the generated
       set, any model on a data set named as it was trained);
    2. "COCO 80-class table": 80 labels and every category id one of COCO's: postprocess.COCO_LABEL_TO_CATEGORY
       (the original's mscoco_label2category). The hub configs name the labels darknet-style ("sofa", "motorbike"),
       so rule 1 does not find COCO's names ("couch", "motorcycle");
    3. "by position": as many labels as categories: label i is the i-th category in id order (the contiguous-label
       convention of DETR-style training code).
    Otherwise an RTDetrError.
    """
    from .postprocess import COCO_LABEL_TO_CATEGORY
    ids = sorted(int(c["id"]) for c in categories)
    by_name = {}
    for c in categories:
        by_name.setdefault(str(c.get("name")), []).append(int(c["id"]))
    names = [str(id2label.get(i, "")) for i in range(num_labels)]
    if all(len(by_name.get(n, [])) == 1 for n in names):
        return [by_name[n][0] for n in names], "by name"
    if num_labels == 80 and set(ids) <= set(COCO_LABEL_TO_CATEGORY):
        return list(COCO_LABEL_TO_CATEGORY), "COCO 80-class table"
    if num_labels == len(ids):
        return ids, "by position (label i = the i-th category in id order)"
    raise RTDetrError(f"cannot map the model's {num_labels} labels to the {len(ids)} categories of the annotations: "
                      f"their names differ and their numbers differ; evaluate a model trained on these categories, "
                      f"or call evaluate_model(..., label_to_category=[...])")


def predict(model, items, size, batch=DEFAULT_BATCH, label_to_category=None, progress=None, failures=None):
    """Run the model over images and collect its detections in COCO's result form, as arrays.

    items: list of (image_id, name, load), load() giving an RGB PIL image (or raising RTDetrError).
    size: (H, W) model input. Each image: preprocess (exact resize to size, /255), the model, then
    post_process_object_detection without a threshold: the top Nq (query, class) pairs, Nq = the model's
    num_queries, as the original evaluates (RTDETRPostProcessor num_top_queries), boxes in the image's pixels.
    Boxes (x1, y1, x2, y2) -> (x, y, w, h) in float32, then float64, as postprocess.to_coco_results writes them.
    label_to_category: [NC] category ids, -1 to drop a label (default: label i -> category i).
    failures: None: a bad image raises; a list: (name, message) is appended and the image left out.
    progress: callback(images done, total). Returns (detections dict of arrays, ids of the images processed).
    """
    from .postprocess import post_process_object_detection
    from .preprocess import preprocess
    NC = model.config.num_labels
    table = np.asarray(label_to_category if label_to_category is not None else range(NC), dtype=np.int64)
    if table.shape != (NC,):
        raise RTDetrError(f"label_to_category: {len(table)} entries for a model of {NC} labels; give one per label")
    cols = {"image_id": [], "category_id": [], "bbox": [], "score": []}
    done = []
    for start in range(0, len(items), batch):
        loaded = []
        for image_id, name, load in items[start:start + batch]:
            try:
                loaded.append((image_id, load()))
            except RTDetrError as e:
                if failures is None:
                    raise
                failures.append((name, str(e)))
        if loaded:
            pixel_values, sizes = preprocess([image for _, image in loaded], tuple(size))   # [B, 3, H, W]
            out = model(pixel_values)
            dets = post_process_object_detection(out.logits, out.pred_boxes, target_sizes=sizes, threshold=-np.inf)
            for (image_id, _), det in zip(loaded, dets):
                x1, y1, x2, y2 = det["boxes"].T                                # [n] each, float32
                category = table[det["labels"]]                                # [n]
                keep = category >= 0
                cols["image_id"].append(np.full(int(keep.sum()), image_id, dtype=np.int64))
                cols["category_id"].append(category[keep])
                cols["bbox"].append(np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)[keep].astype(np.float64))  # [n, 4]
                cols["score"].append(det["scores"][keep].astype(np.float64))
                done.append(image_id)
        if progress:
            progress(min(start + batch, len(items)), len(items))
    if not done:
        return {"image_id": np.zeros(0, np.int64), "category_id": np.zeros(0, np.int64),
                "bbox": np.zeros((0, 4)), "score": np.zeros(0)}, done
    return {k: np.concatenate(v) for k, v in cols.items()}, done


def _finish(gt, detections, done, failures, how):
    if not done:
        first = f" (the first: {failures[0][1]})" if failures else ""
        raise RTDetrError(f"no image could be read{first}; nothing to evaluate")
    result = evaluate_coco(gt, detections, image_ids=done)
    result.update(images=len(done), detections=int(len(detections["score"])), label_mapping=how,
                  failed=list(failures))
    return result


def evaluate_model(model, annotations, images, size=None, batch=DEFAULT_BATCH, limit=None, label_to_category=None,
                   skip_bad_images=False, progress=None):
    """COCO box AP of a loaded model on a COCO-format data set: what reproduces a checkpoint's published AP.

    annotations: path of a COCO instances file (e.g. instances_val2017.json) or its dict; images: the folder holding
    each image's file_name (e.g. val2017/). size: (H, W) model input, default the model's own input_size (its
    preprocessor_config.json), else (640, 640) (preprocess.DEFAULT_SIZE,
    the published models' training size). limit: only the first `limit` images in id order (the AP is then over
    those images). label_to_category: the category id of each label (default: label_mapping's rules).
    skip_bad_images: False: an unreadable image raises; True: it is left out of the evaluation (with its objects)
    and listed in result["failed"].
    Returns evaluate_coco's dict plus "images" (evaluated), "detections", "label_mapping", "failed".
    """
    from .preprocess import DEFAULT_SIZE, load_image
    source = annotations if isinstance(annotations, (str, os.PathLike)) else "annotations"
    gt = read_json(annotations, "annotations") if isinstance(annotations, (str, os.PathLike)) else annotations
    ground_truth_arrays(gt, str(source))                                     # check it before the long run
    if label_to_category is None:
        label_to_category, how = label_mapping(model.id2label, model.config.num_labels, gt["categories"])
    else:
        how = "given"
    entries = sorted(gt["images"], key=lambda im: im["id"])[:limit]
    items = []
    for im in entries:
        if "file_name" not in im:
            raise RTDetrError(f"{source}: image {im['id']} has no file_name; each image needs one")
        path = os.path.join(os.fspath(images), im["file_name"])
        items.append((im["id"], path, lambda path=path: load_image(path)))
    failures = [] if skip_bad_images else None
    dets, done = predict(model, items, size or getattr(model, "input_size", None) or DEFAULT_SIZE, batch, label_to_category, progress,
                         failures)
    return _finish(gt, dets, done, failures or [], how)


def evaluate_shapes(model, seed=None, count=None, size=None, batch=DEFAULT_BATCH, progress=None):
    """COCO box AP of a model on generated scenes (demo.shapes): make_scene(seed, i) for i < count, drawn in memory.

    Defaults: the held-out evaluation set of the model cards (EVAL_SEED, EVAL_COUNT) and the scenes' own size as
    model input (shapes.SIZE). Label i is category i + 1 (shapes.CLASSES order, as export_coco writes it); labels
    beyond the shape classes are dropped. The same numbers as evaluate_model on export_coco's folder (same pixels).
    Returns evaluate_model's dict.
    """
    import PIL.Image

    from .demo.shapes import CLASSES, EVAL_COUNT, EVAL_SEED, SIZE, coco_instances, make_scene
    seed = EVAL_SEED if seed is None else seed
    count = EVAL_COUNT if count is None else count
    scenes = {}

    def load(i):
        image, objects = make_scene(seed, i)
        scenes[i] = objects
        return PIL.Image.fromarray(image)

    items = [(i + 1, f"scene {i}", lambda i=i: load(i)) for i in range(count)]
    NC = model.config.num_labels
    table = [label + 1 if label < len(CLASSES) else -1 for label in range(NC)]
    dets, done = predict(model, items, size or getattr(model, "input_size", None) or (SIZE, SIZE), batch, table, progress)
    gt = coco_instances(sorted(scenes.items()), seed, SIZE)
    return _finish(gt, dets, done, [], "label i = shape class i (category i + 1)")


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------

PROG = "python -m rtdetrv2_np.evaluate"


def parse_args(argv):
    from .detect import OneLineParser
    p = OneLineParser(prog=PROG,
                      description="COCO-style box AP (pycocotools' COCOeval, in NumPy) of an RT-DETRv2 model "
                                  "on a COCO-format data set or on generated shapes.",
                      epilog="Exit status: 0 evaluated; 1 the model, the annotations or an image failed (bad images "
                             "are left out and the rest is evaluated); 2 usage error.")
    p.add_argument("--model", help="hub id, hub-layout folder, converted .safetensors, official .pth, or a shipped "
                                   "demo model: demo, demo-discrete (anything load_model accepts)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--coco-annotations", metavar="FILE", help="COCO instances file, e.g. instances_val2017.json")
    what.add_argument("--shapes", action="store_true", help="the generated shapes set (rtdetrv2_np.demo.shapes)")
    p.add_argument("--images", metavar="DIR", help="with --coco-annotations: the folder of the images' file_name")
    p.add_argument("--detections", metavar="FILE",
                   help="with --coco-annotations, instead of --model: evaluate a COCO results file (e.g. from "
                        "rtdetrv2_np.detect --threshold 0 --coco-json)")
    p.add_argument("--limit", type=int, metavar="N", help="with --coco-annotations: the first N images (by id) only")
    p.add_argument("--seed", type=int, help="with --shapes: scene stream (default: the evaluation set's, 2026)")
    p.add_argument("--count", type=int, help="with --shapes: number of scenes (default 500)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="model input height and width, multiples of 32 (default: 640 640 for --coco-annotations, "
                        "the scenes' 256 256 for --shapes)")
    p.add_argument("--method", choices=["bilinear", "discrete"], help="deformable-attention sampling (default: the "
                                                                      "checkpoint's)")
    p.add_argument("--revision", default="main", help="branch, tag or commit of a hub id (default: main)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"images per forward pass (default "
                                                                     f"{DEFAULT_BATCH})")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of the table")
    a = p.parse_args(argv)
    if a.shapes:
        if a.images or a.detections or a.limit is not None:
            p.error("--images, --detections and --limit go with --coco-annotations, not --shapes")
    else:
        if a.seed is not None or a.count is not None:
            p.error("--seed and --count go with --shapes")
        if a.detections and (a.model or a.images):
            p.error("--detections evaluates a results file: give it without --model and --images")
        if not a.detections and not a.images:
            p.error("--coco-annotations needs --images DIR (with --model) or --detections FILE")
    if not a.detections and not a.model:
        p.error("--model is required (or --coco-annotations with --detections)")
    if a.detections and (a.size or a.method or a.batch != DEFAULT_BATCH):
        p.error("--size, --method and --batch go with --model")
    for name in ("limit", "count", "batch"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    if a.size and (a.size[0] <= 0 or a.size[1] <= 0 or a.size[0] % 32 or a.size[1] % 32):
        p.error(f"--size {a.size[0]} {a.size[1]}: height and width must be positive multiples of 32 (the coarsest "
                f"feature stride)")
    return a


def summary_lines(result):
    """The 12 numbers in pycocotools' layout (the lines COCOeval.summarize prints), then AP per category."""
    lines = []
    for name, is_ap, iou, area, max_det in STATS:
        title = "Average Precision  (AP)" if is_ap else "Average Recall     (AR)"
        iou_text = "0.50:0.95" if iou is None else f"{iou:0.2f}"
        lines.append(f" {title} @[ IoU={iou_text:<9} | area={area:>6s} | maxDets={max_det:>3d} ] = "
                     f"{result[name]:0.3f}")
    lines.append("AP per category (IoU=0.50:0.95, area=all, maxDets=100):")
    width = max(len(c["name"]) for c in result["per_category"])
    for c in result["per_category"]:
        lines.append(f"  {c['name']:<{width}}  {c['AP']:6.3f}")
    return lines


class _Progress:
    """'[k/N] images' on stderr: rewritten in place on a terminal, else about every tenth of the run."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.last = 0

    def __call__(self, done, total):
        if self.tty:
            print(f"\r[{done}/{total}] images", end="\n" if done == total else "", file=sys.stderr, flush=True)
        elif done == total or done - self.last >= max(1, total // 10):
            print(f"[{done}/{total}] images", file=sys.stderr, flush=True)
            self.last = done


def run(a):
    from .demo.shapes import CLASSES, EVAL_COUNT, EVAL_SEED, SIZE
    from .loading import load_model
    from .preprocess import DEFAULT_SIZE
    t0 = time.perf_counter()
    size = tuple(a.size) if a.size else (SIZE, SIZE) if a.shapes else DEFAULT_SIZE
    seed = EVAL_SEED if a.seed is None else a.seed
    count = EVAL_COUNT if a.count is None else a.count
    model = None
    try:
        if a.coco_annotations:                              # a broken file fails before the (slow) model load
            gt = read_json(a.coco_annotations, "annotations")
            g = ground_truth_arrays(gt, a.coco_annotations)
            names = g["names"]
        else:
            names = {i + 1: n for i, n in enumerate(CLASSES)}
        if a.model:
            model = load_model(a.model, method=a.method, revision=a.revision)
            if not a.size and model.input_size:                     # the checkpoint's own input size
                size = tuple(model.input_size)
        t_load = time.perf_counter() - t0
        if a.detections:
            dets = detection_arrays(read_json(a.detections, "detections"), a.detections)
            unknown = ~np.isin(dets["image_id"], g["image_ids"])
            if unknown.any():
                raise RTDetrError(f"{a.detections}: image id {dets['image_id'][unknown][0]} is not in "
                                  f"{a.coco_annotations}; give the results of this data set's images")
            result = evaluate_coco(gt, dets)
            result.update(images=len(g["image_ids"]), detections=len(dets["score"]), label_mapping=None, failed=[])
            header = f"{a.detections} on {a.coco_annotations}"
        else:
            if a.shapes:
                result = evaluate_shapes(model, seed, count, size, a.batch, _Progress())
                data = f"generated shapes (seed {seed})"
            else:
                result = evaluate_model(model, gt, a.images, size, a.batch, a.limit, skip_bad_images=True,
                                        progress=_Progress())
                data = a.coco_annotations
            header = (f"{a.model} ({model.method} sampling, input {size[0]}x{size[1]}) on {data}, labels mapped "
                      f"{result['label_mapping']}")
    except RTDetrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for _, message in result["failed"]:
        print(f"error: {message}", file=sys.stderr)
    result["per_category"] = [{"id": k, "name": names.get(k, str(k)), "AP": v}
                              for k, v in result.pop("per_category_AP").items()]
    n = result["images"]
    total = time.perf_counter() - t0
    if a.json:
        dataset = ({"shapes": {"seed": seed, "count": count, "size": SIZE}} if a.shapes else
                   {"annotations": a.coco_annotations, "images": a.images, "detections": a.detections,
                    "limit": a.limit})
        doc = {"model": a.model, "method": model.method if model else None, "size": list(size) if model else None,
               "dataset": dataset, "images": n, "detections": result["detections"],
               "label_mapping": result["label_mapping"], "stats": {k: result[k] for k in STAT_NAMES},
               "per_category": result["per_category"],
               "errors": [{"file": f, "error": m} for f, m in result["failed"]], "seconds": round(total, 3)}
        print(json.dumps(doc))
    else:
        print(f"{header}: {n} images, {result['detections']} detections")
        print("\n".join(summary_lines(result)), flush=True)
    per_image = f", {(total - t_load) / n:.2f} s/image" if model is not None else ""
    left_out = f", {len(result['failed'])} left out (unreadable)" if result["failed"] else ""
    print(f"{n} images evaluated in {total:.1f} s (load {t_load:.1f} s{per_image}){left_out}", file=sys.stderr)
    return 1 if result["failed"] else 0


def main(argv=None):
    a = parse_args(argv)
    try:
        return run(a)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:                                 # stdout closed early, e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Record pycocotools' COCO box AP on generated cases, the definition of correct for rtdetrv2_np/evaluate.py.

Run in the reference environment (pycocotools installed; tools/README.md), from the repository root:

    python tools/record_cocoeval.py                      # every case into tests/fixtures/cocoeval/
    python tools/record_cocoeval.py --out /tmp/cocoeval  # somewhere else, e.g. to diff against the committed ones

Each case is a small COCO ground truth (images, categories, annotations) and a detection list, drawn from a
NumPy generator with the case's seed, with coordinates rounded to 1/100 px and scores to 1e-4 so that the JSON
text holds exactly the numbers pycocotools was given. The tool runs

    gt = COCO(); gt.dataset = case["gt"]; gt.createIndex()
    e = COCOeval(gt, gt.loadRes(detections), "bbox"); e.evaluate(); e.accumulate(); e.summarize()

and writes tests/fixtures/cocoeval/<case>.json: the inputs, `stats` (e.stats, the 12 summary numbers),
`per_category_AP` (the mean of e.eval["precision"][:, :, k, area all, maxDets 100] over entries > -1, -1 if none,
as summarize() averages), the versions of pycocotools, NumPy and Python, and this command. pycocotools' loadRes([])
raises, so images without detections are recorded inside non-empty detection lists.

The cases (what each one is there to exercise):
    crowded      many objects per image, 3 categories with objects + 1 without (non-contiguous category ids),
                 jittered true detections (IoU spread over 0.3..1), duplicates, false positives, >100 detections of
                 one category in one image (maxDets 100 truncation), 2 images without objects, 1 without detections
    sparse       mostly images without objects, a few detections, a detection of a category not in the ground
                 truth (dropped, as pycocotools drops it)
    ties         scores from {0.25, 0.5, 0.75}: ties within and across images (stable mergesort order);
                 duplicated ground-truth boxes (equal IoU with two objects) and duplicated detections
    crowd        iscrowd regions (IoU = intersection / detection area, matched many times, ignored), detections
                 inside them, one category whose only objects are crowds (AP -1 for it)
    areas        `area` fields at the exact range limits 32² and 96² (both ranges include their limits), areas that
                 differ from the box's w·h (COCO's area is the segmentation's), detections of w·h at the limits
    id_zero      an annotation with id 0: pycocotools stores "unmatched" as id 0, so a detection matched to it is
                 counted neither as a true positive nor, unless ignored by area, as anything but a false positive
The package never imports this file.
"""

import argparse
import copy
import datetime
import json
import os
import platform
import sys

import numpy as np
import pycocotools
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rtdetrv2_np.fileio import atomic_write  # noqa: E402  (temp file + os.replace)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "tests", "fixtures", "cocoeval")


def r2(x):
    """Round to 1/100 (a Python float, so that JSON holds exactly this number)."""
    return round(float(x), 2)


def box_of_size(rng, W, H, w, h):
    """[x, y, w, h] of size w x h at a random place inside a W x H image."""
    x = rng.uniform(0, max(W - w, 1))
    y = rng.uniform(0, max(H - h, 1))
    return [r2(x), r2(y), r2(w), r2(h)]


def random_size(rng, kind):
    """A box size (w, h) whose area w·h is small (< 32²), medium or large (> 96²)."""
    area = {"small": rng.uniform(30, 1000), "medium": rng.uniform(1100, 9000), "large": rng.uniform(9500, 90000)}[kind]
    aspect = np.exp(rng.uniform(-0.8, 0.8))
    return float(np.sqrt(area * aspect)), float(np.sqrt(area / aspect))


def jitter(rng, box, amount, W, H):
    """A detection near `box`: each side moved by up to amount·(box side); IoU with the box spreads over ~0.3..1."""
    x, y, w, h = box
    dx0, dx1 = rng.uniform(-amount, amount, 2) * w
    dy0, dy1 = rng.uniform(-amount, amount, 2) * h
    x0, y0 = max(0.0, x + dx0), max(0.0, y + dy0)
    x1, y1 = min(float(W), x + w + dx1), min(float(H), y + h + dy1)
    return [r2(x0), r2(y0), r2(max(x1 - x0, 0.5)), r2(max(y1 - y0, 0.5))]


def score(rng, levels=None, lo=0.0, hi=1.0):
    if levels is not None:
        return float(rng.choice(levels))
    return round(float(rng.uniform(lo, hi)), 4)


def generate(rng, n_images, cats_with_gt, all_cats, n_gt, p_detect, n_fp, crowd_p=0.0, levels=None,
             no_gt_images=(), no_det_images=(), duplicate_p=0.0, area_factor=(1.0, 1.0), first_ann_id=1):
    """A generic case: images with objects of `cats_with_gt`, detections near them and false positives."""
    images, anns, dets = [], [], []
    for i in range(n_images):
        image_id = 100 + 7 * i                      # non-contiguous, not starting at 0 or 1
        W, H = int(rng.integers(320, 800)), int(rng.integers(240, 640))
        images.append({"id": image_id, "width": W, "height": H, "file_name": f"{image_id:012d}.jpg"})
        k = 0 if i in no_gt_images else int(rng.integers(n_gt[0], n_gt[1] + 1))
        objects = []                                # (category, box, crowd, area)
        for _ in range(k):
            cat = int(rng.choice(cats_with_gt))
            crowd = bool(rng.uniform() < crowd_p)
            kind = "large" if crowd else str(rng.choice(["small", "medium", "large"], p=[0.4, 0.4, 0.2]))
            w, h = random_size(rng, kind)
            box = box_of_size(rng, W, H, min(w, W - 1), min(h, H - 1))
            area = round(box[2] * box[3] * (0.7 if crowd else rng.uniform(*area_factor)), 2)
            objects.append((cat, box, crowd, area))
            if duplicate_p and rng.uniform() < duplicate_p:        # the same box twice (equal IoU with both)
                objects.append((cat, list(box), crowd, area))
        for cat, box, crowd, area in objects:
            anns.append({"id": first_ann_id + len(anns), "image_id": image_id, "category_id": cat, "bbox": box,
                         "area": area, "iscrowd": int(crowd)})
        if i in no_det_images:
            continue
        for cat, box, crowd, _ in objects:
            n = 3 + int(rng.integers(0, 5)) if crowd else int(rng.uniform() < p_detect) + int(rng.uniform() < 0.3)
            for _ in range(n):
                if crowd:                                           # small detections inside the crowd region
                    w, h = rng.uniform(5, 40, 2)
                    d = [r2(box[0] + rng.uniform(0, box[2] - w)), r2(box[1] + rng.uniform(0, box[3] - h)),
                         r2(w), r2(h)]
                else:
                    d = jitter(rng, box, 0.25, W, H)
                c = cat if rng.uniform() < 0.9 else int(rng.choice(all_cats))
                dets.append({"image_id": image_id, "category_id": c, "bbox": d,
                             "score": score(rng, levels, 0.2, 1.0)})
                if duplicate_p and rng.uniform() < duplicate_p:    # the same detection twice, same score
                    dets.append(copy.deepcopy(dets[-1]))
        for _ in range(int(rng.integers(n_fp[0], n_fp[1] + 1))):
            w, h = random_size(rng, str(rng.choice(["small", "medium", "large"])))
            dets.append({"image_id": image_id, "category_id": int(rng.choice(all_cats)),
                         "bbox": box_of_size(rng, W, H, min(w, W - 1), min(h, H - 1)),
                         "score": score(rng, levels, 0.0, 0.8)})
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in all_cats]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def case_crowded(rng):
    gt, dets = generate(rng, 6, [1, 3, 7], [1, 3, 7, 12], (15, 40), 0.85, (5, 30), no_gt_images=(2, 4),
                        no_det_images=(5,))
    image_id = gt["images"][0]["id"]                 # > 100 detections of category 3 in one image: maxDets 100 cuts
    W, H = gt["images"][0]["width"], gt["images"][0]["height"]
    for _ in range(130):
        w, h = random_size(rng, "medium")
        dets.append({"image_id": image_id, "category_id": 3, "bbox": box_of_size(rng, W, H, w, h),
                     "score": score(rng, None, 0.0, 0.6)})
    return gt, dets, "many objects, >100 detections in one image, 2 images without objects, 1 without detections"


def case_sparse(rng):
    gt, dets = generate(rng, 12, [2, 5], [2, 5, 9], (1, 3), 0.7, (0, 2), no_gt_images=(0, 1, 3, 5, 6, 8, 9))
    dets.append({"image_id": gt["images"][1]["id"], "category_id": 99, "bbox": [10.0, 10.0, 20.0, 20.0],
                 "score": 0.99})                     # category 99 is not in the ground truth: dropped
    return gt, dets, "mostly images without objects; a detection of an unknown category"


def case_ties(rng):
    gt, dets = generate(rng, 5, [1, 2], [1, 2], (4, 12), 0.9, (2, 8), levels=[0.25, 0.5, 0.75],
                        duplicate_p=0.3)
    return gt, dets, "scores from {0.25, 0.5, 0.75}; duplicated objects and detections"


def case_crowd(rng):
    gt, dets = generate(rng, 6, [1, 4], [1, 4], (3, 10), 0.8, (1, 6), crowd_p=0.3)
    image = gt["images"][0]                          # category 6: only a crowd region, with detections in it
    box = [r2(10), r2(10), r2(min(200, image["width"] - 20)), r2(min(150, image["height"] - 20))]
    gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image["id"], "category_id": 6,
                              "bbox": box, "area": r2(box[2] * box[3] * 0.6), "iscrowd": 1})
    gt["categories"].append({"id": 6, "name": "class6", "supercategory": "thing"})
    for _ in range(5):
        dets.append({"image_id": image["id"], "category_id": 6,
                     "bbox": [r2(20 + rng.uniform(0, 100)), r2(20 + rng.uniform(0, 80)), r2(30), r2(25)],
                     "score": score(rng)})
    return gt, dets, "iscrowd regions with detections inside; a category with only a crowd region"


def case_areas(rng):
    gt, dets = generate(rng, 5, [1, 2, 3], [1, 2, 3], (5, 12), 0.9, (2, 6), area_factor=(0.4, 1.0))
    image = gt["images"][0]
    for k, (area, side) in enumerate([(1024, 32.0), (9216, 96.0), (1024, 40.0), (9216, 90.0)]):
        box = [r2(20 + 120 * k), r2(20), side, side]
        gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image["id"], "category_id": 1,
                                  "bbox": box, "area": float(area), "iscrowd": 0})
        dets.append({"image_id": image["id"], "category_id": 1, "bbox": list(box), "score": score(rng)})
    for side in (32.0, 96.0):                        # unmatched detections whose w·h is exactly 32² or 96²
        dets.append({"image_id": image["id"], "category_id": 2, "bbox": [r2(500 - side), r2(300), side, side],
                     "score": score(rng)})
    return gt, dets, "areas at the range limits 32² and 96²; area != w·h"


def case_id_zero(rng):
    gt, dets = generate(rng, 3, [1, 2], [1, 2], (2, 5), 1.0, (0, 2), first_ann_id=0)
    return gt, dets, "annotation ids from 0 (pycocotools' 'unmatched' marker)"


CASES = {"crowded": (1, case_crowded), "sparse": (2, case_sparse), "ties": (3, case_ties), "crowd": (4, case_crowd),
         "areas": (5, case_areas), "id_zero": (6, case_id_zero)}


def run_pycocotools(gt_dict, detections):
    """pycocotools' 12 stats and per-category AP. Works on copies: COCO and loadRes mutate what they are given."""
    gt = COCO()
    gt.dataset = copy.deepcopy(gt_dict)
    gt.createIndex()
    e = COCOeval(gt, gt.loadRes(copy.deepcopy(detections)), "bbox")
    e.evaluate()
    e.accumulate()
    e.summarize()
    precision = e.eval["precision"]                  # [T, R, K, A, M]
    per_category = {}
    for k, cat in enumerate(e.params.catIds):
        p = precision[:, :, k, 0, -1]
        per_category[str(cat)] = float(np.mean(p[p > -1])) if (p > -1).any() else -1.0
    return [float(s) for s in e.stats], per_category


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: tests/fixtures/cocoeval)")
    p.add_argument("--case", action="append", choices=sorted(CASES), help="only this case (repeatable)")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    for name in a.case or CASES:
        seed, make = CASES[name]
        gt, dets, description = make(np.random.default_rng(seed))
        stats, per_category = run_pycocotools(gt, dets)
        doc = {"case": name, "description": description, "seed": seed,
               "stats": stats, "per_category_AP": per_category,
               "versions": {"pycocotools": pycocotools.__version__ if hasattr(pycocotools, "__version__")
                            else _dist_version("pycocotools"), "numpy": np.__version__,
                            "python": platform.python_version()},
               "date": datetime.date.today().isoformat(),
               "command": f"python tools/record_cocoeval.py --case {name}  (reference environment: tools/README.md)",
               "gt": gt, "detections": dets}
        path = os.path.join(a.out, f"{name}.json")
        atomic_write(path, json.dumps(doc, separators=(",", ":")).encode())
        print(f"{path}: {len(gt['images'])} images, {len(gt['annotations'])} objects, {len(dets)} detections; "
              f"AP {stats[0]:.4f}", file=sys.stderr)
    return 0


def _dist_version(name):
    from importlib.metadata import version
    return version(name)


if __name__ == "__main__":
    sys.exit(main())

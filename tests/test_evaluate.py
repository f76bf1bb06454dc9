"""rtdetrv2_np.evaluate: COCO box AP equal to pycocotools' COCOeval, and the command that runs a model for it.

1. The 12 numbers and the per-category AP equal those pycocotools 2.0.11 printed on the recorded cases
   (tests/fixtures/cocoeval/, tools/record_cocoeval.py), and each case really exercises the rule it is named after
   (changing that rule's input changes the numbers).
2. Hand-computable cases: a perfect detection, a detection at IoU 0.62, a crowd region, tied scores.
3. The model side, with a stand-in model that returns the ground truth (AP must be 1) or the wrong classes (AP 0),
   and with a random-weight model against the detect pipeline (post_process_object_detection + to_coco_results).
4. The command, run as a user runs it: table, --json, --detections, exit status and one-line errors.
"""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import assert_close
from safetensors.numpy import save_file

from rtdetrv2_np.demo.shapes import CLASSES, SIZE, export_coco, make_scene
from rtdetrv2_np.errors import RTDetrError
from rtdetrv2_np.evaluate import STAT_NAMES, box_iou, evaluate_coco, evaluate_model, evaluate_shapes, predict
from rtdetrv2_np.loading import load_model
from rtdetrv2_np.model.config import config_from_dict
from rtdetrv2_np.postprocess import post_process_object_detection, to_coco_results
from rtdetrv2_np.preprocess import load_image, preprocess
from rtdetrv2_np.random_weights import random_params
from rtdetrv2_np.weights import expected_shapes

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "cocoeval"
CASES = sorted(p.stem for p in FIXTURES.glob("*.json"))
# The issue asks for 1e-6; the computation is the same float64 operations in the same order as pycocotools', and
# the measured difference is 0.0 on every case.
ATOL = 1e-6
# Hand-computed values hold up to rounding: COCOeval's precision is TP / (TP + FP + 2^-52), so a "1" is 1 - 2^-52.
HAND = 1e-12


def stats_of(result):
    return np.array([result[n] for n in STAT_NAMES])


def load_case(name):
    return json.loads((FIXTURES / f"{name}.json").read_text())


# ---------------------------------------------------------------------------------------------------------------
# 1. Equal to pycocotools
# ---------------------------------------------------------------------------------------------------------------

def test_the_recorded_cases_are_there():
    assert set(CASES) == {"crowded", "sparse", "ties", "crowd", "areas", "id_zero"}


@pytest.mark.parametrize("case", CASES)
def test_equals_pycocotools(case):
    rec = load_case(case)
    result = evaluate_coco(rec["gt"], rec["detections"])
    ours, ref = stats_of(result), np.array(rec["stats"])
    print(f"{case}: max |ours - pycocotools {rec['versions']['pycocotools']}| over the 12 stats = "
          f"{np.abs(ours - ref).max():.3g}")
    assert_close(ours, ref, ATOL, f"{case}: the 12 stats vs pycocotools")
    cats = sorted(rec["per_category_AP"], key=int)
    assert sorted(result["per_category_AP"]) == [int(c) for c in cats]
    assert_close([result["per_category_AP"][int(c)] for c in cats], [rec["per_category_AP"][c] for c in cats],
                 ATOL, f"{case}: per-category AP vs pycocotools")
    assert (ref > 0).sum() >= 6                           # the premise: the case has real, non-trivial numbers


def _changed(gt, detections, rec):
    return np.abs(stats_of(evaluate_coco(gt, detections)) - np.array(rec["stats"])).max()


def test_each_case_depends_on_its_rule():
    """Each recorded case's numbers move when the input of its rule changes, so the equality above tests the rule."""
    rec = load_case("crowd")                              # crowd regions: ignored, IoU over the detection's area
    gt = copy.deepcopy(rec["gt"])
    for a in gt["annotations"]:
        a["iscrowd"] = 0
    assert _changed(gt, rec["detections"], rec) > 0.05

    rec = load_case("id_zero")                            # an annotation id 0 reads as "unmatched"
    gt = copy.deepcopy(rec["gt"])
    for a in gt["annotations"]:
        a["id"] += 1
    assert _changed(gt, rec["detections"], rec) > 0.05

    rec = load_case("ties")                               # tied scores keep their input order
    assert _changed(rec["gt"], rec["detections"][::-1], rec) > 0.01

    rec = load_case("areas")                              # area limits belong to both neighbouring ranges
    gt = copy.deepcopy(rec["gt"])
    for a in gt["annotations"]:
        if a["area"] in (32.0 ** 2, 96.0 ** 2):
            a["area"] += 1e-9
    assert _changed(gt, rec["detections"], rec) > 0.01

    rec = load_case("crowded")                            # > 100 detections of one category in one image; an
    per_image_category = {}                               # image without detections, two without objects
    for d in rec["detections"]:
        key = (d["image_id"], d["category_id"])
        per_image_category[key] = per_image_category.get(key, 0) + 1
    image_ids = {im["id"] for im in rec["gt"]["images"]}
    assert max(per_image_category.values()) > 100
    assert len(image_ids - {d["image_id"] for d in rec["detections"]}) >= 1
    assert len(image_ids - {a["image_id"] for a in rec["gt"]["annotations"]}) >= 2


# ---------------------------------------------------------------------------------------------------------------
# 2. Hand-computable cases
# ---------------------------------------------------------------------------------------------------------------

def coco(boxes, areas=None, crowd=None, image_ids=(1,), categories=(1,)):
    """A ground truth of one category: boxes (x, y, w, h) on image 1."""
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": list(b),
             "area": (areas[i] if areas else b[2] * b[3]), "iscrowd": int(crowd[i]) if crowd else 0}
            for i, b in enumerate(boxes)]
    return {"images": [{"id": i} for i in image_ids], "annotations": anns,
            "categories": [{"id": c, "name": f"c{c}"} for c in categories]}


def det(box, score, image_id=1, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(box), "score": score}


def test_one_perfect_detection():
    """One object of area 100 (small) found exactly: every defined number is 1; medium and large are undefined."""
    r = evaluate_coco(coco([[10, 10, 10, 10]]), [det([10, 10, 10, 10], 0.9)])
    expected = dict(AP=1, AP50=1, AP75=1, AP_S=1, AP_M=-1, AP_L=-1, AR1=1, AR10=1, AR100=1, AR_S=1, AR_M=-1, AR_L=-1)
    assert_close(stats_of(r), [expected[n] for n in STAT_NAMES], HAND, "perfect detection")


def test_one_detection_at_iou_062():
    """IoU 0.62 (a 100x62 box in a 100x100 object) matches at the thresholds 0.50, 0.55, 0.60 and no other: precision
    1 at 3 of the 10 thresholds, 0 at the others, so AP = AR = 3/10; AP50 = 1, AP75 = 0. The object (area 10^4) is
    large; the detection (w·h 6200, medium) is ignored for the large range where it is unmatched."""
    r = evaluate_coco(coco([[0, 0, 100, 100]]), [det([0, 0, 100, 62], 0.8)])
    expected = dict(AP=0.3, AP50=1, AP75=0, AP_S=-1, AP_M=-1, AP_L=0.3, AR1=0.3, AR10=0.3, AR100=0.3, AR_S=-1,
                    AR_M=-1, AR_L=0.3)
    assert_close(stats_of(r), [expected[n] for n in STAT_NAMES], HAND, "IoU 0.62")


def test_crowd_region_absorbs_detections():
    """Three detections inside a crowd region (IoU = intersection / detection area = 1) are ignored, not false
    positives, so the one regular object found gives AP 1. Without the crowd flag the region is a second object,
    never found, and the three rank above the true positive as false positives: precision 1/4 up to recall 1/2, at
    51 of the 101 recall levels (0, 0.01, ..., 0.50), so AP = 0.25 · 51/101."""
    boxes = [[0, 0, 200, 200], [300, 300, 50, 50]]
    dets = [det([10 + 40 * k, 10, 30, 30], 0.9) for k in range(3)] + [det([300, 300, 50, 50], 0.5)]
    assert_close(evaluate_coco(coco(boxes, crowd=[1, 0]), dets)["AP"], 1.0, HAND, "crowd flag")
    assert_close(evaluate_coco(coco(boxes, crowd=[0, 0]), dets)["AP"], 0.25 * 51 / 101, HAND, "no crowd flag")
    iou = box_iou(np.array([[10.0, 10, 30, 30], [190, 10, 20, 20]]), np.array([[0.0, 0, 200, 200]]), np.array([True]))
    assert_close(iou, [[1.0], [0.5]], 0, "crowd IoU = intersection / detection area")


def test_box_iou_by_hand():
    a = np.array([[0.0, 0, 10, 10]])
    b = np.array([[5.0, 0, 10, 10], [10, 0, 5, 5], [0, 0, 10, 10], [2, 2, 4, 4]])
    # 50 / 150; touching edges (width 0) -> 0; identical -> 1; contained 16 / 100
    assert_close(box_iou(a, b, np.zeros(4, bool)), [[1 / 3, 0, 1, 0.16]], 1e-16, "IoU by hand")


def test_tied_scores_keep_input_order():
    """Two detections of equal score, one right, one wrong: the one given first ranks first (pycocotools' stable
    mergesort). Wrong first: precision 1/2 at recall 1, AP 0.5; right first: AP 1."""
    right, wrong = det([0, 0, 10, 10], 0.5), det([50, 50, 10, 10], 0.5)
    gt = coco([[0, 0, 10, 10]])
    assert_close(evaluate_coco(gt, [wrong, right])["AP"], 0.5, HAND, "wrong one first")
    assert_close(evaluate_coco(gt, [right, wrong])["AP"], 1.0, HAND, "right one first")
    assert evaluate_coco(gt, [wrong, right])["AR1"] == 0.0      # maxDets 1 keeps only the first


def test_no_detections_and_categories_without_objects():
    """No detections at all (pycocotools' loadRes([]) raises): AP 0 for the category with objects, -1 for the one
    without; an image without objects or detections changes nothing."""
    gt = coco([[0, 0, 10, 10]], image_ids=(1, 2), categories=(1, 2))
    r = evaluate_coco(gt, [])
    assert r["AP"] == 0.0 and r["per_category_AP"] == {1: 0.0, 2: -1.0}
    r = evaluate_coco(gt, [det([0, 0, 10, 10], 0.9), det([0, 0, 10, 10], 0.9, category_id=2)])
    assert_close(r["AP"], 1.0, HAND, "one category right")
    assert r["per_category_AP"][2] == -1.0                    # the stray category-2 detection: no AP, no harm
    gt["annotations"].append({"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100})
    r = evaluate_coco(gt, [det([0, 0, 10, 10], 0.9)], image_ids=[1])   # image 2 (missed object) left out
    assert_close(r["AP"], 1.0, HAND, "image_ids subset")
    assert_close(evaluate_coco(gt, [det([0, 0, 10, 10], 0.9)])["AR100"], 0.5, HAND, "both images")


@pytest.mark.parametrize("breaks, message", [
    (lambda gt, d: d.append(det([0, 0, 1, 1], 0.1, image_id=9)), "image id 9 is not in the ground truth"),
    (lambda gt, d: gt["annotations"][0].pop("bbox"), "lacks a field"),
    (lambda gt, d: gt["annotations"].append(dict(gt["annotations"][0])), "annotation ids are not unique"),
    (lambda gt, d: d[0].update(bbox=[0, float("nan"), 1, 1]), "NaN or infinity"),
    (lambda gt, d: d[0].update(score="high"), "not all numbers"),
    (lambda gt, d: gt.pop("categories"), "no 'categories' list"),
])
def test_bad_input_is_one_clear_error(breaks, message):
    gt, dets = coco([[0, 0, 10, 10]]), [det([0, 0, 10, 10], 0.9)]
    breaks(gt, dets)
    with pytest.raises(RTDetrError, match=re.escape(message)):
        evaluate_coco(gt, dets)


# ---------------------------------------------------------------------------------------------------------------
# 3. The model side
# ---------------------------------------------------------------------------------------------------------------

class GroundTruthModel:
    """A stand-in model that is shown the scenes of `seed` in order and returns their ground truth: each object's box
    (normalised cx, cy, w, h) with logit +5 for its class (+ shift, modulo 4) and -10 for the others; the remaining
    queries are a tiny box at the centre with all logits -10. With a shift, the true class gets -30, so that the
    top-Nq (query, class) pairs, which are filled up with -10 pairs, never hold it."""

    def __init__(self, seed, shift=0, num_queries=20):
        self.seed, self.shift, self.Nq, self.index = seed, shift, num_queries, 0
        self.config = SimpleNamespace(num_labels=len(CLASSES))
        self.id2label = dict(enumerate(CLASSES))

    def __call__(self, pixel_values):
        B = len(pixel_values)
        logits = np.full((B, self.Nq, 4), -10.0, np.float32)
        boxes = np.tile(np.array([0.5, 0.5, 0.01, 0.01], np.float32), (B, self.Nq, 1))
        for b in range(B):
            _, objects = make_scene(self.seed, self.index)
            self.index += 1
            for q, o in enumerate(objects):
                x0, y0, x1, y1 = np.array(o["box"]) / SIZE
                boxes[b, q] = [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]
                logits[b, q, (o["label"] + self.shift) % 4] = 5.0
                if self.shift:
                    logits[b, q, o["label"]] = -30.0
        return SimpleNamespace(logits=logits, pred_boxes=boxes)


def expected_stats(seed, count, right):
    """The 12 stats of a detector that is always right (or always wrong): 1 (or 0), and -1 for an area range without
    objects in these scenes. Except AR1 and AR10 when right: with n_ik objects of category k in image i, only
    min(n_ik, maxDets) can be found, so the recall of category k is sum_i min(n_ik, m) / sum_i n_ik."""
    scenes = [make_scene(seed, i)[1] for i in range(count)]
    areas = np.array([o["area"] for objects in scenes for o in objects])
    present = {"all": True, "small": (areas <= 32 ** 2).any(),
               "medium": ((areas >= 32 ** 2) & (areas <= 96 ** 2)).any(), "large": (areas >= 96 ** 2).any()}
    area_of = dict(AP_S="small", AP_M="medium", AP_L="large", AR_S="small", AR_M="medium", AR_L="large")
    out = {n: (1.0 if right else 0.0) if present[area_of.get(n, "all")] else -1.0 for n in STAT_NAMES}
    if right:
        n = np.array([[sum(o["label"] == k for o in objects) for k in range(len(CLASSES))] for objects in scenes])
        has = n.sum(axis=0) > 0                                                  # [K] categories with objects
        for name, m in (("AR1", 1), ("AR10", 10)):
            out[name] = float(np.mean(np.minimum(n, m).sum(axis=0)[has] / n.sum(axis=0)[has]))
    return np.array([out[n] for n in STAT_NAMES])


def test_a_detector_that_is_always_right_gets_ap_1(tmp_path):
    """Through the whole model path (batches of 4 over 6 scenes, boxes scaled to pixels, xywh, labels to category
    ids), the ground truth as detections gives 1 wherever defined; the same on the exported COCO folder."""
    seed, count = 5, 6
    r = evaluate_shapes(GroundTruthModel(seed), seed, count, batch=4)
    expected = expected_stats(seed, count, right=True)
    assert (expected == -1).sum() <= 2 and expected[STAT_NAMES.index("AR1")] < 0.9   # premises: most ranges have
    #                                                                     objects, images have several per class
    # boxes pass through float32: IoU 1 - ~1e-6, far above the highest threshold 0.95
    assert_close(stats_of(r), expected, HAND, "ground truth as detections, generated scenes")
    assert r["images"] == count and r["label_mapping"].startswith("label i")
    path = export_coco(tmp_path, seed=seed, count=count)
    r = evaluate_model(GroundTruthModel(seed), path, tmp_path / "images", size=(64, 64), batch=4)
    assert_close(stats_of(r), expected, HAND, "ground truth as detections, COCO folder")
    assert r["label_mapping"] == "by name"
    r = evaluate_model(GroundTruthModel(seed), path, tmp_path / "images", size=(64, 64), limit=3)
    assert r["images"] == 3
    assert_close(stats_of(r), expected_stats(seed, 3, right=True), HAND, "the first 3 images (limit=3)")


def test_a_detector_that_is_always_wrong_gets_ap_0():
    seed, count = 5, 6
    r = evaluate_shapes(GroundTruthModel(seed, shift=1), seed, count, batch=4)
    assert_close(stats_of(r), expected_stats(seed, count, right=False), 0, "every box with the wrong class")


def tiny_model_dir(folder, names):
    """A hub-layout model folder: the tiny_basic architecture (20 queries) with these label names, random weights."""
    d = json.loads((ROOT / "tests" / "fixtures" / "reference" / "tiny_basic" / "config.json").read_text())
    d["id2label"] = {str(i): n for i, n in enumerate(names)}
    d.pop("label2id", None)
    cfg = config_from_dict(d)
    os.makedirs(folder, exist_ok=True)
    (Path(folder) / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
    save_file(random_params(expected_shapes(cfg), 0, cfg.n_points), str(Path(folder) / "model.safetensors"),
              metadata={"format": "pt"})
    return Path(folder)


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny_shapes", CLASSES)


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    export_coco(folder, seed=3, count=4)
    return folder


def test_predict_equals_the_detect_pipeline(shapes_model, shapes_folder):
    """predict's detections (arrays) are exactly the records that preprocess + the model +
    post_process_object_detection(threshold 0) + to_coco_results give: every (query, class) of the top Nq."""
    model = load_model(shapes_model)
    paths = [shapes_folder / "images" / f"{i:06d}.png" for i in range(3)]
    items = [(i + 1, str(p), lambda p=p: load_image(p)) for i, p in enumerate(paths)]
    dets, done = predict(model, items, (64, 64), batch=2, label_to_category=[1, 2, 3, 4])
    pixel_values, sizes = preprocess([str(p) for p in paths], (64, 64))
    out = model(pixel_values)
    records = to_coco_results(post_process_object_detection(out.logits, out.pred_boxes, sizes, threshold=0.0),
                              [1, 2, 3], label_to_category=(1, 2, 3, 4))
    assert done == [1, 2, 3] and len(records) == 3 * model.config.num_queries
    assert dets["image_id"].tolist() == [r["image_id"] for r in records]
    assert dets["category_id"].tolist() == [r["category_id"] for r in records]
    # batches of 2 vs one batch of 3: the model's float32 sums may differ in the last bits with the batch size
    assert_close(dets["bbox"], [r["bbox"] for r in records], 1e-3, "boxes (px)")
    assert_close(dets["score"], [r["score"] for r in records], 1e-5, "scores")


# ---------------------------------------------------------------------------------------------------------------
# 4. The command
# ---------------------------------------------------------------------------------------------------------------

SUMMARY = re.compile(r"^ Average (Precision  \(AP\)|Recall     \(AR\)) @\[ IoU=(0\.50:0\.95|0\.50     |0\.75     ) \| "
                     r"area=( {3}all| small|medium| large) \| maxDets=( {2}1| 10|100) \] = -?\d\.\d{3}$")
TIMING = re.compile(r"^(\d+) images evaluated in \d+\.\d s \(load \d+\.\d s(, \d+\.\d\d s/image)?\)"
                    r"(, \d+ left out \(unreadable\))?$")


def evaluate(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "rtdetrv2_np.evaluate", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, env=env)


def test_cli_table(shapes_model, shapes_folder):
    r = evaluate("--model", shapes_model, "--coco-annotations", shapes_folder / "instances.json",
                 "--images", shapes_folder / "images", "--size", 64, 64)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r".* \(bilinear sampling, input 64x64\) on .*instances\.json, labels mapped by name: "
                        r"4 images, 80 detections", lines[0])          # 20 queries: top 20 (query, class) pairs
    assert all(SUMMARY.match(line) for line in lines[1:13]), "\n".join(lines[1:13])
    assert lines[13] == "AP per category (IoU=0.50:0.95, area=all, maxDets=100):"
    assert [line.split()[0] for line in lines[14:]] == list(CLASSES)
    stderr = r.stderr.splitlines()
    assert stderr[-1].startswith("4 images") and TIMING.match(stderr[-1]) and "[4/4] images" in stderr


def test_cli_json_shapes_equal_the_exported_folder(shapes_model, shapes_folder):
    """--shapes draws the scenes in memory; the exported folder holds the same pixels and annotations: same result."""
    a = evaluate("--model", shapes_model, "--shapes", "--seed", 3, "--count", 4, "--size", 64, 64, "--json")
    b = evaluate("--model", shapes_model, "--coco-annotations", shapes_folder / "instances.json",
                 "--images", shapes_folder / "images", "--size", 64, 64, "--json")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert ja["dataset"] == {"shapes": {"seed": 3, "count": 4, "size": SIZE}} and ja["size"] == [64, 64]
    assert ja["images"] == jb["images"] == 4 and ja["detections"] == jb["detections"] == 80
    assert ja["stats"] == jb["stats"] and ja["per_category"] == jb["per_category"]
    assert set(ja["stats"]) == set(STAT_NAMES) and ja["errors"] == [] and ja["method"] == "bilinear"


def test_cli_detections_file_equals_pycocotools(tmp_path):
    """--detections: a results file evaluated without a model; the recorded pycocotools numbers come out."""
    rec = load_case("crowded")
    (tmp_path / "gt.json").write_text(json.dumps(rec["gt"]))
    (tmp_path / "dets.json").write_text(json.dumps(rec["detections"]))
    r = evaluate("--coco-annotations", tmp_path / "gt.json", "--detections", tmp_path / "dets.json", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert_close([doc["stats"][n] for n in STAT_NAMES], rec["stats"], ATOL, "CLI --detections vs pycocotools")
    assert doc["detections"] == len(rec["detections"]) and doc["model"] is None


def one_error_line(r, status=1):
    assert r.returncode == status, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert r.stdout == ""
    return lines[0]


def test_cli_errors(shapes_model, shapes_folder, tmp_path):
    images = shapes_folder / "images"
    line = one_error_line(evaluate("--model", shapes_model, "--coco-annotations", tmp_path / "nope.json",
                                   "--images", images))
    assert "nope.json: no such file" in line
    (tmp_path / "bad.json").write_text("{not json")
    assert "bad.json: not valid JSON" in one_error_line(evaluate("--model", shapes_model, "--coco-annotations",
                                                                 tmp_path / "bad.json", "--images", images))
    assert "no such file" in one_error_line(evaluate("--model", tmp_path / "missing", "--shapes", "--count", 1))
    eighty = tiny_model_dir(tmp_path / "eighty", [f"thing{i}" for i in range(7)])
    assert "cannot map the model's 7 labels to the 4 categories" in one_error_line(
        evaluate("--model", eighty, "--coco-annotations", shapes_folder / "instances.json", "--images", images))


@pytest.mark.parametrize("args, says", [
    (["--model", "m", "--coco-annotations", "a.json"], "needs --images"),
    (["--model", "m", "--shapes", "--images", "img"], "go with --coco-annotations"),
    (["--model", "m", "--coco-annotations", "a.json", "--images", "img", "--seed", "1"], "go with --shapes"),
    (["--shapes"], "--model is required"),
    (["--model", "m", "--shapes", "--size", "65", "64"], "multiples of 32"),
    (["--model", "m", "--shapes", "--count", "0"], "--count must be at least 1"),
    (["--model", "m", "--coco-annotations", "a.json", "--detections", "d.json"], "without --model"),
    (["--coco-annotations", "a.json", "--detections", "d.json", "--size", "64", "64"], "go with --model"),
    (["--model", "m"], "one of the arguments"),
])
def test_usage_errors(args, says, capsys):
    """Usage errors: one line on stderr, exit status 2, before anything is read (in-process: the parser only)."""
    from rtdetrv2_np.evaluate import main
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and says in err[0], err


def test_cli_unreadable_image_is_left_out(shapes_model, shapes_folder, tmp_path):
    """A broken image: one error line naming it, the other images evaluated and the table printed, exit status 1."""
    folder = tmp_path / "copy"
    (folder / "images").mkdir(parents=True)
    for p in (shapes_folder / "images").iterdir():
        (folder / "images" / p.name).write_bytes(p.read_bytes())
    (folder / "images" / "000001.png").write_bytes(b"not a png")
    r = evaluate("--model", shapes_model, "--coco-annotations", shapes_folder / "instances.json",
                 "--images", folder / "images", "--size", 64, 64)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "000001.png" in errors[0]
    assert ": 3 images, 60 detections" in r.stdout.splitlines()[0]
    assert r.stderr.splitlines()[-1].endswith(", 1 left out (unreadable)")

"""Answers to the exercises of walkthrough/05_postprocess_cli: each function computes its answer, prints it and
checks it against the package. Run `python walkthrough/solutions/05_postprocess_cli.py`;
tests/test_walkthrough_solutions.py calls every exercise_* function. Numbers that depend on the shipped demo
weights are printed, never written here.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image

from rtdetrv2_np import plotting
from rtdetrv2_np.demo.shapes import EVAL_SEED, coco_instances, make_scene
from rtdetrv2_np.detect import box_iou
from rtdetrv2_np.evaluate import evaluate_coco
from rtdetrv2_np.postprocess import center_to_corners, post_process_object_detection
from rtdetrv2_np.preprocess import preprocess


def outputs(index):
    """(model, logits [1, Nq, NC], pred_boxes [1, Nq, 4], target sizes, ground truth) of held-out scene `index`."""
    model, _ = plotting.teaching_model()
    array, objects = make_scene(EVAL_SEED, index)
    x, sizes = preprocess(PIL.Image.fromarray(array), size=model.input_size)
    out = model(x)
    return model, out.logits, out.pred_boxes, sizes, objects


def exercise_1():
    """Softmax over the classes instead of independent sigmoids: which detections change (scene 5)."""
    _, logits, boxes, sizes, _ = outputs(5)
    z = logits[0].astype(np.float64)                                              # [Nq, NC]
    sig = 1 / (1 + np.exp(-z))                                                    # [Nq, NC] independent
    soft = np.exp(z - z.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)                                           # [Nq, NC], rows sum to 1
    pairs = lambda p: {(int(q), int(c)) for q, c in zip(*np.nonzero(p > 0.5))}   # noqa: E731
    s_set, m_set = pairs(sig), pairs(soft)
    print(f"exercise 1: sigmoid keeps {len(s_set)} (query, class) pairs > 0.5, softmax {len(m_set)}; "
          f"only with sigmoid: {len(s_set - m_set)}, only with softmax: {len(m_set - s_set)}. A softmax makes the "
          f"classes of a query compete (one label at most above 0.5) and leaves no way to say 'no object': a query "
          f"whose logits are all low still gets a class with a high share")
    det = post_process_object_detection(logits, boxes, target_sizes=sizes, threshold=0.5)[0]
    assert len(det["scores"]) == min(len(s_set), logits.shape[1])                 # the package ranks sigmoids
    assert len({q for q, _ in m_set}) == len(m_set)                               # softmax: one label per query
    return s_set, m_set


def exercise_2():
    """How many of the top-Nq (query, class) pairs repeat a query already ranked higher."""
    model, logits, boxes, sizes, _ = outputs(5)
    Nq, NC = logits.shape[1:]
    scores = 1 / (1 + np.exp(-logits[0].astype(np.float64).reshape(-1)))         # [Nq*NC]
    top = np.argsort(-scores, kind="stable")[:Nq]
    queries = top // NC
    repeats = len(queries) - len(np.unique(queries))
    above = top[scores[top] > 0.5] // NC
    print(f"exercise 2: of the top {Nq} pairs, {repeats} repeat a higher-ranked query; above 0.5: "
          f"{len(above) - len(np.unique(above))} of {len(above)}")
    det = post_process_object_detection(logits, boxes, target_sizes=sizes, threshold=-1)[0]
    assert len(det["scores"]) == Nq and np.allclose(np.sort(det["scores"])[::-1], scores[top], atol=1e-6)
    return repeats


def nms(det, iou_max=0.7):
    """Greedy NMS per label: keep the best box, drop the same-label boxes overlapping it by IoU > iou_max."""
    boxes, labels = np.asarray(det["boxes"], np.float64), np.asarray(det["labels"])
    order, keep = list(np.argsort(-np.asarray(det["scores"]), kind="stable")), []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if labels[j] != labels[i] or box_iou(boxes[i:i + 1], boxes[j:j + 1])[0, 0] <= iou_max]
    return {k: np.asarray(v)[keep] for k, v in det.items()}


def exercise_3(count=20):
    """A 10-line NMS after post-processing: boxes removed and AP50 with and without it, on held-out scenes."""
    model, _ = plotting.teaching_model()
    scenes, plain, suppressed, removed = [], [], [], 0
    for i in range(count):
        _, logits, boxes, sizes, objects = outputs(i)
        det = post_process_object_detection(logits, boxes, target_sizes=sizes, threshold=0.0)[0]   # all Nq, as AP
        kept = nms(det)
        above = int((det["scores"] > 0.5).sum())
        removed += above - int((kept["scores"] > 0.5).sum())
        scenes.append((i, objects))
        plain.append(det)
        suppressed.append(kept)
    gt = coco_instances(scenes, EVAL_SEED)

    def as_arrays(dets):
        rows = [(i + 1, b, s, int(l) + 1) for i, d in enumerate(dets)
                for b, s, l in zip(d["boxes"], d["scores"], d["labels"])]
        return {"image_id": np.array([r[0] for r in rows]), "score": np.array([r[2] for r in rows], np.float64),
                "category_id": np.array([r[3] for r in rows]),
                "bbox": np.array([[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in (r[1] for r in rows)], np.float64)}
    ids = list(range(1, count + 1))
    ap, ap_nms = (evaluate_coco(gt, as_arrays(d), image_ids=ids)["AP50"] for d in (plain, suppressed))
    print(f"exercise 3: NMS (same label, IoU > 0.7) removes {removed} of the detections above 0.5 on {count} "
          f"held-out scenes; AP50 {ap:.3f} without, {ap_nms:.3f} with NMS")
    assert all(len(k["scores"]) <= len(d["scores"]) for k, d in zip(suppressed, plain))
    from rtdetrv2_np.evaluate import evaluate_shapes
    assert abs(ap - evaluate_shapes(model, count=count)["AP50"]) < 1e-12          # the package's own number
    return removed, ap, ap_nms


def exercise_4():
    """`python -m rtdetrv2_np.detect --json` on a saved scene, read back with json.loads."""
    model, logits, boxes, sizes, _ = outputs(5)
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "scene.png"
        PIL.Image.fromarray(make_scene(EVAL_SEED, 5)[0]).save(png)
        run = subprocess.run([sys.executable, "-m", "rtdetrv2_np.detect", str(png), "--model", "demo", "--json"],
                             capture_output=True, text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    print(f"exercise 4: --json printed {type(result).__name__}: {str(result)[:160]} ...")
    det = post_process_object_detection(logits, boxes, target_sizes=sizes, threshold=0.5)[0]
    image = result["images"][0]
    assert len(image["detections"]) == len(det["scores"]), (image.keys(), len(det["scores"]))
    return result


if __name__ == "__main__":
    for f in (exercise_1, exercise_2, exercise_3, exercise_4):
        f()

"""Record transformers' RT-DETR Hungarian matcher on small random cases: the reference for rtdetrv2_np/matching.py.

Run in the reference environment (torch and transformers 5.24 installed; tools/README.md), from the repository root:

    python tools/record_matching.py                        # writes tests/fixtures/matching/matcher.json
    python tools/record_matching.py --out /tmp/matcher.json

Each case: logits [B, Nq, NC] ~ N(0, 2²) and boxes (cx, cy, w, h) in (0.05, 0.95) drawn with NumPy's generator from
the case's seed and rounded to 1/1024 (so the JSON holds exactly the numbers torch was given, in float32), and B
images of targets (labels and boxes; one image may have none). The tool builds
`transformers.loss.loss_rt_detr.RTDetrHungarianMatcher(RTDetrV2Config())` (the matcher_* defaults: class 2, bbox 5,
giou 2, alpha 0.25, gamma 2), calls it, and stores per image the matched (query, object) index pairs and the cost
matrix handed to scipy's linear_sum_assignment (captured by wrapping that function in the matcher's module), plus
`generalized_box_iou` of the corner boxes (loss/loss_for_object_detection.py). The package never imports this file.
"""

import argparse
import json
import os
import platform
import sys

import numpy as np
import scipy
import torch
import transformers
from transformers import RTDetrV2Config
from transformers.loss import loss_rt_detr
from transformers.loss.loss_for_object_detection import generalized_box_iou

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from rtdetrv2_np.fileio import atomic_write  # noqa: E402  (temp file + os.replace)

DEFAULT_OUT = os.path.join(ROOT, "tests", "fixtures", "matching", "matcher.json")
CASES = {            # name: (seed, Nq, NC, objects per image); Nq < G in "more_objects_than_queries"
    "small": (0, 12, 4, [5, 0, 3]),
    "one_query_per_object": (1, 6, 3, [6]),
    "more_objects_than_queries": (2, 4, 4, [7]),
}


def q(x):
    return np.round(np.asarray(x) * 1024) / 1024


def random_boxes(rng, n):
    cx, cy = rng.uniform(0.1, 0.9, (2, n))
    w, h = rng.uniform(0.05, 0.5, (2, n))
    return q(np.stack([cx, cy, w, h], axis=1))


def record_case(seed, nq, nc, counts):
    rng = np.random.default_rng(seed)
    B = len(counts)
    logits = q(rng.normal(0, 2, (B, nq, nc)))
    boxes = random_boxes(rng, B * nq).reshape(B, nq, 4)
    targets = [{"class_labels": rng.integers(0, nc, n).tolist(), "boxes": random_boxes(rng, n).tolist()}
               for n in counts]
    captured = []
    real = loss_rt_detr.linear_sum_assignment

    def capture(c):
        captured.append(np.asarray(c, dtype=np.float64).tolist())
        return real(c)

    loss_rt_detr.linear_sum_assignment = capture
    try:
        matcher = loss_rt_detr.RTDetrHungarianMatcher(RTDetrV2Config())
        with torch.no_grad():
            indices = matcher({"logits": torch.tensor(logits, dtype=torch.float32),
                               "pred_boxes": torch.tensor(boxes, dtype=torch.float32)},
                              [{"class_labels": torch.tensor(t["class_labels"], dtype=torch.int64),
                                "boxes": torch.tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4)}
                               for t in targets])
    finally:
        loss_rt_detr.linear_sum_assignment = real

    def corners(b):
        b = torch.tensor(b, dtype=torch.float32).reshape(-1, 4)
        return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], dim=1)

    giou = [generalized_box_iou(corners(boxes[i]), corners(t["boxes"])).numpy().astype(np.float64).tolist()
            for i, t in enumerate(targets)]
    return {"seed": seed, "logits": logits.tolist(), "pred_boxes": boxes.tolist(), "targets": targets,
            "cost": captured, "giou": giou,
            "indices": [[i.tolist(), j.tolist()] for i, j in indices]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON file to write (default: the test fixture)")
    a = p.parse_args(argv)
    doc = {"versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                        "scipy": scipy.__version__, "numpy": np.__version__, "python": platform.python_version()},
           "command": "python tools/record_matching.py",
           "cases": {name: record_case(*spec) for name, spec in CASES.items()}}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    atomic_write(a.out, json.dumps(doc).encode())
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

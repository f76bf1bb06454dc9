"""Record transformers' RT-DETR post-processing on random inputs, for tests/test_postprocess.py.

Reference: transformers 5.24 `RTDetrImageProcessorPil.post_process_object_detection(outputs, threshold,
target_sizes, use_focal_loss=True)` (`models/rt_detr/image_processing_pil_rt_detr.py`; the torchvision class's
method is the same code). Inputs are generated here, seeded, and stored with the results:
    image 0   generic float32 logits N(-6.5, 2.5^2), boxes cx, cy, w, h uniform in [0, 1]
    image 1   logits N(-5.5, 2^2) quantised to multiples of 1/4: many exact ties, also across the top-k cut-off
    image 2   special values: logit 0 (score exactly 0.5, the default threshold), +-inf, +-200, +30 (score 1.0),
              repeated identical queries, boxes outside [0, 1] (the reference does not clip)

Run with the reference environment, from the repository root:

    venv-ref/bin/python tools/record_postprocess.py

Writes tests/fixtures/postprocess/reference.npz (temp file + os.replace). The package never imports this file.
"""

import io
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch
import transformers
from transformers.models.rt_detr.image_processing_pil_rt_detr import RTDetrImageProcessorPil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rtdetrv2_np.fileio import atomic_write  # noqa: E402  (temp file + os.replace)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "postprocess")
B, NQ, NC = 3, 30, 80          # batch, queries, classes: NC = 80 as for COCO, NQ small to keep the fixture small

# (threshold, target_sizes) cases; target sizes are (height, width) per image, as the reference takes them.
CASES = [
    (0.5, None),
    (0.5, [(480, 640), (427, 640), (333, 517)]),
    (0.0, [(480, 640), (427, 640), (333, 517)]),
    (0.3, [(640, 480), (1, 1), (1080, 1920)]),
    (0.6, [(640, 640), (640, 640), (640, 640)]),
    (-1.0, None),                                   # keeps all NQ of the top-k: shows the full ranking
]




def make_inputs():
    rng = np.random.default_rng(20240417)
    logits = np.empty((B, NQ, NC), np.float32)                                  # [B, Nq, NC]
    boxes = rng.uniform(0.02, 0.98, (B, NQ, 4)).astype(np.float32)              # [B, Nq, 4]
    logits[0] = rng.normal(-6.5, 2.5, (NQ, NC))
    logits[1] = np.round(rng.normal(-5.5, 2.0, (NQ, NC)) * 4) / 4
    # Mostly score 0 (logit -inf, or -200 where exp overflows): fewer than NQ positive scores, so the top-k ends in
    # a large tie at 0.0 that threshold 0.0 (strict >) removes.
    special = np.where(rng.random((NQ, NC)) < 0.006, np.round(rng.normal(-1.0, 2.0, (NQ, NC)) * 4) / 4,
                       np.where(rng.random((NQ, NC)) < 0.5, -np.inf, -200.0))
    special[0, 0] = special[3, 7] = 0.0                                         # score exactly 0.5
    special[1, :3] = [np.inf, 200.0, 30.0]                                      # scores 1.0, 1.0, 1.0
    special[2, 5] = 30.0
    special[4, :] = -np.inf                                                     # score 0.0
    special[5, :] = -200.0                                                      # score 0.0 (exp overflows)
    special[6] = special[7] = special[8]                                        # identical queries ...
    special[6, 11] = special[7, 11] = special[8, 11] = 1.25
    special[6, 12] = special[7, 12] = special[8, 12] = -0.75
    logits[2] = special
    boxes[2, 6] = boxes[2, 7] = boxes[2, 8]                                     # ... with identical boxes
    boxes[2, 1] = [0.01, 0.99, 0.5, 0.1]                                        # sticks out left
    boxes[2, 2] = [1.1, -0.2, 0.4, 0.3]                                         # centre outside the image
    return logits, boxes


def main():
    os.makedirs(OUT, exist_ok=True)
    logits, boxes = make_inputs()
    proc = RTDetrImageProcessorPil()
    outputs = SimpleNamespace(logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes))
    arrays = {"inputs/logits": logits, "inputs/pred_boxes": boxes}
    for c, (threshold, sizes) in enumerate(CASES):
        # A NumPy sigmoid can differ from torch.sigmoid by a few ulp, so no generic score may sit that close to
        # a threshold (exact ties with it, from logit 0, are wanted and are computed exactly by both).
        scores = torch.sigmoid(outputs.logits).numpy()
        near = np.abs(scores.astype(np.float64) - threshold) <= 1e-6 * max(threshold, 1e-30)
        assert not (near & (scores != np.float32(threshold))).any(), f"a score lies within 1e-6 of {threshold}"
        results = proc.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes,
                                                     use_focal_loss=True)
        for b, r in enumerate(results):
            for key in ("scores", "labels", "boxes"):
                arrays[f"case{c}/image{b}/{key}"] = r[key].numpy()
            print(f"case {c} threshold {threshold:5} sizes {sizes and sizes[b]}: image {b}: {len(r['scores'])} kept")
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "reference": "RTDetrImageProcessorPil.post_process_object_detection(use_focal_loss=True)",
            "cases": [{"threshold": t, "target_sizes": s} for t, s in CASES]}
    arrays["meta_json"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(os.path.join(OUT, "reference.npz"), buf.getvalue())
    print("wrote", os.path.relpath(os.path.join(OUT, "reference.npz"), ROOT))


if __name__ == "__main__":
    main()

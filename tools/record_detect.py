"""Record what transformers detects in the cats image with a recorded random-weight model, for tests/test_detect.py.

Run in the reference environment (torch 2.13 + transformers 5.24; tools/README.md), from the repository root:

    venv-ref/bin/python tools/record_detect.py

Pipeline, as a transformers user runs it (the transformers documentation's object-detection example):
    image = transformers.image_utils.load_image(path)                          # PIL, EXIF-transposed, RGB
    processor = RTDetrImageProcessorPil(size={"height": H, "width": W})       # what RTDetrImageProcessor resolves to
                                                                               # without torchvision (preprocess.py)
    model = RTDetrV2ForObjectDetection.from_pretrained(tests/fixtures/reference/<case>)   # eval, float32
    outputs = model(**processor(images=image, return_tensors="pt"))
    processor.post_process_object_detection(outputs, threshold=T, target_sizes=[(480, 640)])
at the model's recorded input size (meta.json size_hw).

The threshold. A random-weight model finds nothing, and its scores are all close together (the tiny model's top 20
lie within a few hundredths), so an arbitrary threshold would keep pairs whose order, or whose side of the threshold,
could flip under float32 rounding differences between NumPy and PyTorch (~1e-6 here). The tool ranks every
(query, class) pair (threshold 0), then picks the largest n in N_RANGE for which the n best scores differ from each
other by at least MIN_GAP and the n-th is at least 2 * MIN_GAP above the (n+1)-th, and sets the threshold halfway
between those two. Both margins are written to the fixture and the test checks them.

Writes tests/fixtures/detect/<case>_cats.json: labels, scores and boxes (x1, y1, x2, y2 in pixels of the 640x480
image) in transformers' order, the threshold, the margins, versions, and the command. The package never imports
this file.
"""

import datetime
import json
import os
import sys
import tempfile

import numpy as np
import PIL
import torch
import transformers
from transformers import RTDetrImageProcessorPil, RTDetrV2ForObjectDetection
from transformers.image_utils import load_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "tests/data/coco_000000039769.png"
CASE = "tiny_basic"
MIN_GAP = 1e-4                     # >> the ~1e-6 score differences between the NumPy model and PyTorch
N_RANGE = range(8, 2, -1)          # a handful of detections: try 8, 7, ..., 3


def main():
    torch.set_num_threads(2)
    folder = os.path.join(ROOT, "tests", "fixtures", "reference", CASE)
    H, W = json.load(open(os.path.join(folder, "meta.json")))["size_hw"]
    image = load_image(os.path.join(ROOT, IMAGE))
    target_size = (image.height, image.width)
    processor = RTDetrImageProcessorPil(size={"height": H, "width": W})
    model = RTDetrV2ForObjectDetection.from_pretrained(folder).eval()
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt"))

    ranked = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[target_size])[0]
    scores = ranked["scores"].numpy().astype(np.float64)              # descending, top-Nq of Nq * NC pairs
    for n in N_RANGE:
        gaps = -np.diff(scores[: n + 1])                               # [n] gaps between consecutive ranks
        if gaps[:-1].min(initial=np.inf) >= MIN_GAP and gaps[-1] >= 2 * MIN_GAP:
            break
    else:
        sys.exit(f"no n in {list(N_RANGE)} has score gaps >= {MIN_GAP}; the scores are {scores[:10]}")
    threshold = float((scores[n - 1] + scores[n]) / 2)

    kept = processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=[target_size])[0]
    assert len(kept["scores"]) == n, (len(kept["scores"]), n)
    record = {
        "case": CASE, "model": f"tests/fixtures/reference/{CASE}", "image": IMAGE, "size_hw": [H, W],
        "target_size_hw": list(target_size), "threshold": threshold,
        "labels": kept["labels"].tolist(),
        "names": [model.config.id2label[int(i)] for i in kept["labels"]],
        "scores": kept["scores"].tolist(),
        "boxes": kept["boxes"].tolist(),
        "min_gap_between_kept_scores": float(gaps[:-1].min(initial=np.inf)) if n > 1 else None,
        "margin_to_threshold": float(min(scores[n - 1] - threshold, threshold - scores[n])),
        "next_score_below": float(scores[n]),
        "processor": type(processor).__name__,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__, "Pillow": PIL.__version__},
        "date": datetime.date.today().isoformat(),
        "command": "python tools/record_detect.py  (reference environment: tools/README.md)",
    }
    out = os.path.join(ROOT, "tests", "fixtures", "detect", f"{CASE}_cats.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    print(f"{os.path.relpath(out, ROOT)}: {n} detections at threshold {threshold:.6f} (kept scores "
          f"{scores[:n].round(5).tolist()}, next {scores[n]:.5f}; smallest gap {record['min_gap_between_kept_scores']}, "
          f"margin to the threshold {record['margin_to_threshold']:.2e})")


if __name__ == "__main__":
    main()

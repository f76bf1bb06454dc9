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
# # 05 · Post-processing and the command line
#
# *Estimated reading time: 20 minutes (running it: under a minute on 2 CPU cores).*
#
# **Learning goals.** After this notebook you can
# 1. turn the model's 300 × 80 logits and 300 boxes into a ranked list of labelled boxes in image pixels, by hand;
# 2. explain why RT-DETR needs no non-maximum suppression, and why one query can yield several detections;
# 3. run the same pipeline from the command line.
#
# **Paper references.** [1] RT-DETR, arXiv 2304.08069: §4.3 and §5 (classification trained with a focal-style
# loss, so each class gets an independent sigmoid score rather than a softmax over classes; "NMS-free", §1 and
# Fig. 1's latency comparison). The steps reproduce transformers' `post_process_object_detection(...,
# use_focal_loss=True)` and the official `RTDETRPostProcessor`.
#
# Code: `rtdetrv2_np/postprocess.py`; the command line: `rtdetrv2_np/detect.py`.

# %%
# %matplotlib inline
import time
from pathlib import Path

import numpy as np

import rtdetrv2_np
from rtdetrv2_np import plotting
from rtdetrv2_np.postprocess import center_to_corners, post_process_object_detection

T0 = time.time()
DATA = Path(rtdetrv2_np.__file__).resolve().parents[1] / "tests" / "data"
model, IS_REAL = plotting.teaching_model()
NOTE = dict(random_weights=not IS_REAL)
print("weights:", model.source)
rng = np.random.default_rng(0)
f32 = np.float32


def check(name, mine, package, atol=0.0):
    """The walkthrough's equality check: print the largest difference, fail if it exceeds atol."""
    diff = float(np.abs(np.asarray(mine, np.float64) - np.asarray(package, np.float64)).max())
    print(f"{'OK' if diff <= atol else 'NOT OK'} {name}: max |by hand - package| = {diff:.3g}")
    assert diff <= atol, name

# %% [markdown]
# ## 1. The four steps, on a toy output
#
# 1. **boxes**: (cx, cy, w, h) normalised → (x1, y1, x2, y2) = (cx − w/2, cy − h/2, cx + w/2, cy + h/2), times the
#    original image's (width, height, width, height). Not clipped to the image.
# 2. **scores** = sigmoid(logits): one independent probability per (query, class).
# 3. **top-k over all (query, class) pairs**, k = Nq: flatten `[Nq, NC]` to `Nq·NC` scores; flat index i is
#    query `i // NC`, label `i % NC`. One query can appear twice with two labels (a "sofa" that is also a "bed").
# 4. **threshold**: keep score > 0.5 (strictly greater).
#
# There is no NMS: the decoder's self-attention has already taught the queries not to duplicate each other.
# A toy with Nq = 3 queries and NC = 4 classes:

# %%
logits = rng.normal(0, 2, size=(1, 3, 4)).astype(f32)                # [B, Nq, NC]
boxes = np.array([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.3, 0.1, 0.1], [0.7, 0.6, 0.5, 0.3]]], f32)   # [B, Nq, 4]
h, w = 480, 640                                                      # the original image size

xyxy = np.stack([boxes[..., 0] - boxes[..., 2] / 2, boxes[..., 1] - boxes[..., 3] / 2,
                 boxes[..., 0] + boxes[..., 2] / 2, boxes[..., 1] + boxes[..., 3] / 2], -1) * [w, h, w, h]
scores = 1 / (1 + np.exp(-logits.reshape(1, -1)))                    # [B, Nq*NC]
order = np.argsort(-scores[0], kind="stable")[:3]                    # top-k, k = Nq
keep = order[scores[0, order] > 0.5]
for i in keep:
    print(f"flat {i:2d} -> query {i // 4}, label {i % 4}, score {scores[0, i]:.3f}, box {np.round(xyxy[0, i // 4], 1)}")

det = post_process_object_detection(logits, boxes, target_sizes=[(h, w)], threshold=0.5)[0]
check("scores", scores[0, keep], det["scores"], atol=1e-6)
check("labels", keep % 4, det["labels"])
check("boxes", xyxy[0, keep // 4], det["boxes"], atol=1e-3)

# %% [markdown]
# ## 2. On the real image
#
# `preprocess` resized the 640 × 480 photo to 640 × 640 (no letterbox, the aspect ratio is not kept); the boxes
# come out normalised, so scaling them by the *original* size puts them back on the photo.

# %%
from rtdetrv2_np.preprocess import load_image, preprocess

image = load_image(DATA / "coco_000000039769.png")
pixel_values, sizes = preprocess(image)                              # [1, 3, 640, 640], [(480, 640)]
out = model(pixel_values)
threshold = 0.5 if IS_REAL else 0.0                                  # random scores carry no meaning; show the top
detections = post_process_object_detection(out.logits, out.pred_boxes, target_sizes=sizes, threshold=threshold)[0]
for s, l, b in list(zip(detections["scores"], detections["labels"], detections["boxes"]))[:6]:
    print(f"{model.id2label[int(l)]}: {s:.2f} [" + ", ".join(f"{v:.2f}" for v in b) + "]")
check("corners of the best box", center_to_corners(out.pred_boxes[0, :1]) * [640, 480, 640, 480],
      post_process_object_detection(out.logits[:, :1], out.pred_boxes[:, :1], sizes, threshold=-1)[0]["boxes"][:1],
      atol=1e-3)

# %%
plotting.plot_detections(image, detections, model.id2label, max_detections=6, **NOTE)

# %% [markdown]
# With trained weights the list matches the one in transformers' documentation for this image (two cats ≈ 0.97,
# 0.96, two remotes, and the couch twice as "sofa": two queries, same object — a case NMS would have merged, kept
# because their boxes differ slightly).
#
# For COCO evaluation, `to_coco_results` converts detections to COCO's records (category ids, [x, y, w, h]):

# %%
from rtdetrv2_np.postprocess import to_coco_results

print(to_coco_results([detections], image_ids=[39769])[:2])

# %% [markdown]
# ## 3. The command line
#
# The same pipeline — `load_image` → `preprocess` → model → `post_process_object_detection` — as a command:
#
# ```bash
# python -m rtdetrv2_np.detect tests/data/coco_000000039769.png            # PekingU/rtdetr_v2_r18vd from the hub cache
# python -m rtdetrv2_np.detect photos/ --save annotated/ --threshold 0.3   # a folder; draw the boxes
# python -m rtdetrv2_np.detect cats.png --model path/to/model_dir --json   # any model load_model accepts; JSON out
# python -m rtdetrv2_np.detect cats.png --method discrete                  # RT-DETRv2's discrete sampling (notebook 03)
# ```
#
# It prints one header line per image and one line per detection, `label: score [x1, y1, x2, y2]`. Below we run it
# on the model this notebook uses, saved to a temporary folder in the hub layout (config.json + model.safetensors;
# notebook 06 explains the files). If your copy of the package has no `detect` module yet, the cell says so.

# %%
import importlib.util
import os
import subprocess
import sys
import tempfile

from safetensors.numpy import save_file

from rtdetrv2_np.weights import flatten_params

if importlib.util.find_spec("rtdetrv2_np.detect") is None:
    print("rtdetrv2_np.detect is not in this copy of the package; the command above is what it will run")
else:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(__import__("json").dumps(model.config.to_hf_dict()))
        save_file(flatten_params(model.params), str(Path(tmp) / "model.safetensors"))
        cmd = [sys.executable, "-m", "rtdetrv2_np.detect", str(DATA / "coco_000000039769.png"),
               "--model", tmp, "--threshold", str(0.5 if IS_REAL else 0.9)]
        print("$ python -m rtdetrv2_np.detect", " ".join(cmd[3:]).replace(tmp, "<tmp>"))
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, HF_HUB_OFFLINE="1"))
        lines = (run.stdout or run.stderr).splitlines()
        print("\n".join(lines[:8] + (["..."] if len(lines) > 8 else [])))
        print("exit status", run.returncode)

# %% [markdown]
# ## Summary
#
# * Scores are independent sigmoids per class (focal-loss training); ranking runs over all (query, class) pairs.
# * Boxes go from normalised (cx, cy, w, h) to pixel corners of the *original* image; they are not clipped.
# * No NMS: the set of 300 queries is the answer; the threshold only cuts the ranked list.
#
# ## Exercises
#
# 1. Post-process with a softmax over the 80 classes instead of independent sigmoids. Which detections change?
# 2. Count how many of the top-300 (query, class) pairs come from the same query as a higher-ranked pair.
# 3. Write a 10-line NMS (IoU > 0.7, same label) and apply it after post-processing. How many boxes does it remove
#    with trained weights? What does that say about the decoder's self-attention?
# 4. Run the command with `--json` and load its output with `json.loads`.

# %%
print(f"notebook ran in {time.time() - T0:.1f} s")

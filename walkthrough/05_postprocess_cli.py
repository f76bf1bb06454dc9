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
# 1. turn the model's Nq × NC logits and Nq boxes into a ranked list of labelled boxes in image pixels, by hand;
# 2. explain why RT-DETR needs no non-maximum suppression, why that does not make it duplicate-free, and why one
#    query can yield several detections;
# 3. run the same pipeline from the command line.
#
# **Paper references.** [1] RT-DETR, arXiv 2304.08069v3: §1 and §3 (NMS and its cost), Appendix §1, Table A
# (classification trained with a focal-style loss, so each class gets an independent sigmoid score rather than a
# softmax over classes), Appendix §4, Fig. A–B (RT-DETR's post-processing is a score threshold only). [12] Carion
# et al., DETR, arXiv 2005.12872, §3.1, Eq. 1 (one-to-one Hungarian matching in training: what makes NMS
# unnecessary; notebook 07). The steps reproduce transformers' `post_process_object_detection(...,
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
model, _ = plotting.teaching_model()          # the shipped demo detector (notebook 00): trained, 256x256 shapes
print(plotting.weights_stamp(model))
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
#    query `i // NC`, label `i % NC`. One query can appear twice with two labels (a "square" that is also a "disc").
# 4. **threshold**: keep score > 0.5 (strictly greater).
#
# There is no NMS. What makes that possible is the *training*: each ground-truth object is matched to exactly one
# query (Hungarian matching, [12] §3.1, notebook 07), and every other query that predicts the same object is
# trained towards "no object". The decoder's self-attention is the channel through which the queries can learn
# to leave an object to one of them. A toy with Nq = 3 queries and NC = 4 classes:

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
# ## 2. On a real output
#
# A held-out generated scene (notebook 00), at the demo model's input size. `preprocess` resizes any image to that
# size without a letterbox (the aspect ratio is not kept); the boxes come out normalised, so scaling them by the
# *original* size puts them back on the image (here both are 256 × 256).

# %%
import PIL.Image

from rtdetrv2_np.demo.shapes import EVAL_SEED, make_scene
from rtdetrv2_np.preprocess import preprocess

array, objects = make_scene(EVAL_SEED, 5)
image = PIL.Image.fromarray(array)
pixel_values, sizes = preprocess(image, size=model.input_size)       # [1, 3, 256, 256], [(256, 256)]
out = model(pixel_values)
detections = post_process_object_detection(out.logits, out.pred_boxes, target_sizes=sizes, threshold=0.5)[0]
for s, l, b in zip(detections["scores"], detections["labels"], detections["boxes"]):
    print(f"{model.id2label[int(l)]:8s} {s:.2f} [" + ", ".join(f"{v:6.1f}" for v in b) + "]")
H, W = sizes[0]
check("corners of query 0's box", center_to_corners(out.pred_boxes[0, :1]) * [W, H, W, H],
      post_process_object_detection(out.logits[:, :1], out.pred_boxes[:, :1], sizes, threshold=-1)[0]["boxes"][:1],
      atol=1e-3)

# %% [markdown]
# No NMS ran, so nothing removed near-duplicates. Are there any? Two detections are counted as a **duplicate
# pair** when they have the same label and their boxes overlap with IoU > 0.7 (the usual NMS threshold); the
# ground truth says which detections found an object (IoU ≥ 0.5, notebook 00):

# %%
from rtdetrv2_np.detect import box_iou, match_to_truth

b, lab = np.asarray(detections["boxes"], np.float64), np.asarray(detections["labels"])
iou = box_iou(b, b)                                                  # [n, n]
pairs = [(i, j) for i in range(len(b)) for j in range(i + 1, len(b)) if lab[i] == lab[j] and iou[i, j] > 0.7]
matched, extra = match_to_truth(objects, detections)
n_found = sum(d is not None for d, _ in matched)
print(f"{len(detections['scores'])} detections > 0.5, {len(objects)} objects: {n_found} found, "
      f"{len(extra)} detections match no object; {len(pairs)} duplicate pairs (same label, IoU > 0.7): {pairs}")

# %%
plotting.plot_detections(image, detections, model.id2label, ground_truth=objects, panel=5.0,
                         title=f"held-out scene {EVAL_SEED}/5: {n_found} of {len(objects)} found, "
                               f"{len(extra)} extra, {len(pairs)} duplicate pairs")

# %% [markdown]
# The cells above print what this model does on this scene. Any duplicate pair is kept because **there is no
# NMS**, not because its boxes differ: NMS-free *training* (one-to-one matching) pushes the extra queries down,
# but a model is only as duplicate-free as its training made it (the model card of the demo model says how far
# its training went). Exercise 3 measures, over many scenes, what a 10-line NMS would change.
#
# For COCO evaluation, `to_coco_results` converts detections to COCO's records (category ids, [x, y, w, h]):

# %%
from rtdetrv2_np.postprocess import to_coco_results

print(to_coco_results([detections], image_ids=[5])[:2])

# %% [markdown]
# ## 3. The command line
#
# The same pipeline — `load_image` → `preprocess` → model → `post_process_object_detection` — as a command:
#
# ```bash
# python -m rtdetrv2_np.detect --demo                                      # a generated scene, the demo model, vs truth
# python -m rtdetrv2_np.detect scene.png --model demo                      # any image, the shipped demo model
# python -m rtdetrv2_np.detect photos/ --save annotated/ --threshold 0.3   # a folder; draw the boxes
# python -m rtdetrv2_np.detect cats.png --model path/to/model_dir --json   # any model load_model accepts; JSON out
# python -m rtdetrv2_np.detect cats.png --method discrete                  # RT-DETRv2's discrete sampling (notebook 03)
# ```
#
# (Without `--model`, the command uses `PekingU/rtdetr_v2_r18vd`, from the Hugging Face cache or downloaded.)
# It prints one header line per image and one line per detection, `label: score [x1, y1, x2, y2]`. Below we save
# this notebook's scene as a PNG in a temporary folder and run the command on it with the demo model:

# %%
import os
import subprocess
import sys
import tempfile

with tempfile.TemporaryDirectory() as tmp:
    scene_png = Path(tmp) / "scene.png"
    image.save(scene_png)
    cmd = [sys.executable, "-m", "rtdetrv2_np.detect", str(scene_png), "--model", "demo", "--threshold", "0.5"]
    print("$ python -m rtdetrv2_np.detect", " ".join(cmd[3:]).replace(tmp, "<tmp>"))
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    lines = (run.stdout or run.stderr).replace(tmp, "<tmp>").splitlines()
    print("\n".join(lines[:8] + (["..."] if len(lines) > 8 else [])))
    print("exit status", run.returncode)

# %% [markdown]
# ## Summary
#
# * Scores are independent sigmoids per class (focal-loss training); ranking runs over all (query, class) pairs.
# * Boxes go from normalised (cx, cy, w, h) to pixel corners of the *original* image; they are not clipped.
# * No NMS: the set of Nq queries is the answer; the threshold only cuts the ranked list. One-to-one matching in
#   training is what discourages duplicates; whether a given model still emits some is measured, not assumed.
#
# ## Exercises
#
# Answers: `walkthrough/solutions/05_postprocess_cli.py`.
#
# 1. Post-process with a softmax over the NC classes instead of independent sigmoids. Which detections change?
# 2. Count how many of the top-Nq (query, class) pairs come from the same query as a higher-ranked pair.
# 3. Write a 10-line NMS (IoU > 0.7, same label) and apply it after post-processing on 20 held-out scenes. How many
#    boxes does it remove, and does it raise or lower AP50 (`rtdetrv2_np.evaluate.evaluate_coco`)? What does that
#    say about how far one-to-one training went for this model?
# 4. Run the command with `--json` and load its output with `json.loads`.

# %%
print(f"notebook ran in {time.time() - T0:.1f} s")

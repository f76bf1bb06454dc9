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
# # 00 · A tour of RT-DETRv2 in NumPy
#
# *Estimated reading time: 15 minutes (running it: under a minute on 2 CPU cores).*
#
# **Learning goals.** After this notebook you can
# 1. detect objects in an image with `rtdetrv2_np` in ten lines (pre-process → model → post-process), and measure
#    how many of the true objects the detector found;
# 2. name the four stages of the detector and the shape of what each one hands to the next;
# 3. find every intermediate of a forward pass by name with `model.trace`, which the later notebooks take apart.
#
# **Paper references.**
# [1] Zhao et al., *DETRs Beat YOLOs on Real-time Object Detection* (RT-DETR), arXiv 2304.08069v3: §4 and
# **Fig. 4** (the overview this notebook follows).
# [2] Zhu et al., *Deformable DETR*, arXiv 2010.04159v4: Eq. 2–3 (the decoder's cross-attention).
# [3] Lv et al., *RT-DETRv2: Improved Baseline with Bag-of-Freebies*, arXiv 2407.17140v1: §2.1 (what v2 changes in
# the decoder), §3.4 (its ablations).
#
# **Scope.** Inference only, as in the package: no training, no losses, no denoising queries.
#
# | notebook | stage | paper |
# | --- | --- | --- |
# | 00 (this one) | the whole detector | [1] Fig. 4 |
# | 01 | ResNet-vd backbone | [1] §4.1 |
# | 02 | hybrid encoder: AIFI + CCFF | [1] §4.2, Eq. 1, Fig. 5, Table 3 |
# | 03 | multi-scale deformable attention | [2] Eq. 2–3, [3] §2.1 |
# | 04 | query selection and the decoder | [1] §4.1, §4.3; [2] App. A.4 |
# | 05 | post-processing and the command line | [1] App. Table A (focal-loss scores); DETR §3.1 |
# | 06 | weights: hub and official checkpoints → arrays | — |
# | 07 | set prediction: Hungarian matching, why no NMS | [1] §4; DETR (arXiv 2005.12872) §3.1 |

# %% [markdown]
# ## Setup
#
# Every notebook starts the same way. `teaching_model()` is `load_model("demo")`: a small RT-DETRv2 **trained** on
# a generated dataset of shapes and shipped inside the package (`rtdetrv2_np/demo/models/shapes_bilinear/`, its
# MODEL_CARD.md says how it was trained and how well it does). It knows four classes — disc, square, triangle,
# star — at 256×256 pixels; it is the published RT-DETRv2 architecture made narrow (fewer channels, heads and
# queries), so every stage of the later notebooks is there, and it works offline. The first line printed names the
# weights file and its SHA-256, so you can tell which weights made the outputs you are reading.
#
# The images come from `rtdetrv2_np.demo.shapes.make_scene(seed, index)`: a pure function that draws a scene and
# returns its **ground truth** (one box and one label per object). The model was trained on seed 0; we look at the
# held-out stream `EVAL_SEED`, which it never saw.

# %%
# %matplotlib inline
import time
from pathlib import Path

import numpy as np

import rtdetrv2_np
from rtdetrv2_np import plotting

from rtdetrv2_np.demo.shapes import EVAL_SEED, make_scene

T0 = time.time()
model, _ = plotting.teaching_model()          # the shipped demo detector: 4 shape classes, 256x256
print(plotting.weights_stamp(model))
print("classes:", model.id2label, "| input size:", model.input_size)

# %% [markdown]
# ## Detect in ten lines
#
# Three functions, in the order of the paper's pipeline:
# `preprocess` resizes to the model's input size and scales pixels to [0, 1]; the model returns Nq candidate
# objects, each with NC class logits and a box; `post_process_object_detection` turns those into scored, labelled
# boxes in the original image's pixels.

# %%
import PIL.Image

from rtdetrv2_np.postprocess import post_process_object_detection
from rtdetrv2_np.preprocess import preprocess

array, objects = make_scene(EVAL_SEED, 3)                        # uint8 [256, 256, 3] and its ground truth
image = PIL.Image.fromarray(array)
pixel_values, sizes = preprocess(image, size=model.input_size)   # [1, 3, 256, 256] float32, [(256, 256)]
out = model(pixel_values)                                        # logits [1, Nq, NC], pred_boxes [1, Nq, 4]
detections = post_process_object_detection(out.logits, out.pred_boxes, target_sizes=sizes, threshold=0.5)[0]
for score, label, box in zip(detections["scores"], detections["labels"], detections["boxes"]):
    print(f"{model.id2label[int(label)]:8s} {score:.2f} [" + ", ".join(f"{v:6.1f}" for v in box) + "]")
print(len(detections["scores"]), "detections with score > 0.5;", len(objects), "objects in the ground truth")

# %% [markdown]
# How good is that? A detection **finds** an object when it has the object's label and their boxes overlap with
# intersection-over-union (IoU) ≥ 0.5, COCO's loosest criterion. Each object can be found once; the
# highest-scoring detections claim objects first:

# %%
from rtdetrv2_np.detect import match_to_truth      # the rule `python -m rtdetrv2_np.detect --demo` prints with

matched, extra = match_to_truth(objects, detections)   # [(detection index or None, IoU) per object], [unmatched]
for o, (d, iou) in zip(objects, matched):
    print(f"{o['name']:8s} box {[round(v) for v in o['box']]}: " + (f"found by detection {d} (IoU {iou:.2f})"
                                                                      if d is not None else "missed"))
n_found, n_extra = sum(d is not None for d, _ in matched), len(extra)
print(f"found {n_found} of {len(objects)} objects; {n_extra} of {len(detections['scores'])} detections match no object")

# %%
plotting.plot_detections(image, detections, model.id2label, ground_truth=objects, panel=5.0,
                         title=f"held-out scene {EVAL_SEED}/3: {n_found} of {len(objects)} objects found "
                               f"(IoU >= 0.5), {n_extra} extra detections")

# %% [markdown]
# The cell above prints what the model found on this one scene. One scene is an anecdote; the model card reports
# COCO's box AP over 500 held-out scenes. Here is the same measurement on the first 20 (a few seconds):
# AP averages precision over recall and over IoU thresholds 0.5 to 0.95, AP50 only at IoU 0.5.

# %%
from rtdetrv2_np.evaluate import evaluate_shapes

result = evaluate_shapes(model, count=20)
print(", ".join(f"{k} {result[k]:.3f}" for k in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")),
      f"on {result['images']} held-out scenes")

# %% [markdown]
# ## The architecture map ([1] Fig. 4)
#
# ```
#  image [B, 3, H, W]
#    │  backbone: ResNet-vd (notebook 01)                     strides 8, 16, 32
#    ▼
#  S3 [B, C3, H/8, W/8]   S4 [B, C4, H/16, W/16]   S5 [B, C5, H/32, W/32]
#    │  hybrid encoder (notebook 02): 1x1 projections to C channels,
#    │  AIFI = one transformer layer on S5 only, then CCFF = top-down + bottom-up CNN fusion
#    ▼
#  O3 [B, C, H/8, W/8]   O4 [B, C, H/16, W/16]   O5 [B, C, H/32, W/32]
#    │  flatten + concatenate: memory [B, Nv, C], Nv = Σ H_l·W_l
#    │  query selection (notebook 04): score all Nv positions, keep the top Nq
#    ▼
#  target [B, Nq, C] and reference boxes [B, Nq, 4]
#    │  decoder (notebooks 03–04): layers of self-attention + deformable cross-attention into the memory + FFN,
#    │  each layer refining the boxes
#    ▼
#  logits [B, Nq, NC], pred_boxes [B, Nq, 4]  →  post-processing (notebook 05)
# ```
#
# Shape letters (the glossary in the package docstring, `rtdetrv2_np/__init__.py`): B batch, C channels,
# H_l × W_l the size of level l, L levels, M heads, D head dim (C/M), K_l sampling points on level l,
# Nq queries, Nv value tokens (Σ H_l·W_l), NC classes. The demo model's values, read from its config (the
# published r18vd has C = 256, M = 8, Nq = 300, NC = 80 at 640×640):
#
# %%
cfg = model.config
print(f"C = {cfg.d_model}, M = {cfg.decoder_attention_heads}, D = {cfg.d_model // cfg.decoder_attention_heads}, "
      f"K_l = {cfg.decoder_n_points} per level, L = {cfg.num_feature_levels}, Nq = {cfg.num_queries}, "
      f"NC = {cfg.num_labels}, decoder layers = {cfg.decoder_layers}, input {model.input_size}")

# %% [markdown]
# `model.trace` runs the same forward pass and keeps every intermediate by name:

# %%
stages = model.trace(pixel_values)
for name, value in stages.items():
    print(f"{name:34s} {value.dtype!s:8s} {list(value.shape)}")

# %% [markdown]
# ## The forward pass, composed by hand
#
# `rtdetrv2_np/model/detector.py::forward` is one short function that calls the four stages in the order of Fig. 4. Here it
# is again, written out from the stage functions. Between the encoder and the query selection sits one step the
# figure leaves implicit: each encoder map goes through a 1×1 convolution + BatchNorm (`decoder_input_proj`) and is
# flattened row-major; the three levels are concatenated fine to coarse into the **memory**, the sequence that query
# selection scores and that the decoder's cross-attention reads.

# %%
from rtdetrv2_np.model.backbone import backbone
from rtdetrv2_np.model.decoder import decoder
from rtdetrv2_np.model.hybrid_encoder import hybrid_encoder
from rtdetrv2_np.model.nn import conv_bn
from rtdetrv2_np.model.query_selection import select_queries

cfg, m = model.config, model.params["model"]
feats = backbone(pixel_values, m["backbone"]["model"], cfg)                       # [B, C_l, H_l, W_l] x 3
enc = hybrid_encoder(feats, m["encoder_input_proj"], m["encoder"], cfg)           # [B, C, H_l, W_l] x 3
levels = [conv_bn(x, p[0]["weight"], p[1]) for x, p in zip(enc, m["decoder_input_proj"])]   # 1x1 conv + BN
memory = np.concatenate([y.reshape(*y.shape[:2], -1).transpose(0, 2, 1) for y in levels], axis=1)  # [B, Nv, C]
spatial_shapes = [y.shape[2:] for y in enc]                                       # [(H_l, W_l)] x 3
target, ref, _ = select_queries(memory, spatial_shapes, m, cfg.num_queries, cfg.layer_norm_eps)  # [B, Nq, C], [B, Nq, 4]
logits, boxes = decoder(target, ref, memory, spatial_shapes, m["decoder"], cfg)   # [B, Nq, NC], [B, Nq, 4]

for name, mine, theirs in [("logits", logits, out.logits), ("pred_boxes", boxes, out.pred_boxes)]:
    diff = float(np.abs(mine - theirs).max())
    print(f"{name}: max |by hand - model| = {diff:.3g}")
    assert diff <= 1e-4, name

# %% [markdown]
# The same numbers: the model *is* these seven lines. (Called in the same order, the same functions give the same
# bits; we allow 1e-4 so that this check survives harmless rewrites of `forward` that only change float32
# rounding, such as folding a BatchNorm into the convolution before it — notebook 01.) The rest of the
# walkthrough opens each line.
#
# ## Where the work goes
#
# Parameters per component (the names are the Hugging Face checkpoint's, kept so that you can grep transformers'
# `modeling_rt_detr_v2.py` with the same strings):

# %%
def count(tree):
    if isinstance(tree, dict):
        return sum(count(v) for v in tree.values())
    if isinstance(tree, list):
        return sum(count(v) for v in tree if v is not None)
    return tree.size

parts = {"backbone (ResNet-vd)": m["backbone"],
         "encoder input projections": m["encoder_input_proj"],
         "hybrid encoder (AIFI + CCFF)": m["encoder"],
         "decoder input projections": m["decoder_input_proj"],
         "query selection heads": [m["enc_output"], m["enc_score_head"], m["enc_bbox_head"]],
         f"decoder ({cfg.decoder_layers} layers + heads)": m["decoder"]}
total = count(m)
for name, tree in parts.items():
    print(f"{name:30s} {count(tree) / 1e6:6.2f} M  ({100 * count(tree) / total:4.1f} %)")
print(f"{'total':30s} {total / 1e6:6.2f} M   (the denoising embedding, training only, is the remainder)")

# %% [markdown]
# ## Summary
#
# * RT-DETRv2 is four stages: a CNN backbone, a hybrid encoder, query selection, and a transformer decoder whose
#   cross-attention is *deformable*: each query reads only M heads × Σ K_l points of the Nv-token memory.
# * There is no non-maximum suppression: the Nq queries are a set, and post-processing only ranks their scores
#   (notebook 07 shows the training rule that makes this work, and notebook 05 what is left of duplicates).
# * `model.trace(x)` returns every named intermediate; the figures in `rtdetrv2_np.plotting` take that dict.
#
# ## Exercises
#
# Answers: `walkthrough/solutions/00_tour.py` (run it, or read it after trying).
#
# 1. Run the detector on held-out scene `make_scene(EVAL_SEED, 1)`. How many detections pass the 0.5 threshold,
#    how many objects does the scene have, and how many of them does the model find at IoU ≥ 0.5?
# 2. `preprocess(image, size=(192, 256))` gives a non-square input. Which entries of `stages` change shape, and
#    which do not? (Hint: Nq does not depend on the input size; Nv does.)
# 3. Which stage holds most of the parameters? Which do you expect to take most of the time? Time `backbone` and
#    `decoder` separately to check.
# 4. Load the model with `plotting.teaching_model(method="discrete")` (the same weights, read with RT-DETRv2's
#    discrete sampling) and compare `pred_boxes` and AP50 on 20 held-out scenes with the bilinear model. Notebook 03
#    explains the difference; the model card shows the full table.

# %%
print(f"notebook ran in {time.time() - T0:.1f} s")

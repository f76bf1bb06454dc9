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
# 1. detect objects in an image with `rtdetrv2_np` in ten lines (pre-process → model → post-process);
# 2. name the four stages of the detector and the shape of what each one hands to the next;
# 3. find every intermediate of a forward pass by name with `model.trace`, which the later notebooks take apart.
#
# **Paper references.**
# [1] Zhao et al., *DETRs Beat YOLOs on Real-time Object Detection* (RT-DETR), arXiv 2304.08069: §4 and **Fig. 2**
# (the overview this notebook follows).
# [2] Zhu et al., *Deformable DETR*, arXiv 2010.04159: Eq. 2–3 (the decoder's cross-attention).
# [3] Lv et al., *RT-DETRv2: Improved Baseline with Bag-of-Freebies*, arXiv 2407.17140: §3 (what v2 changes).
#
# **Scope.** Inference only, as in the package: no training, no losses, no denoising queries.
#
# | notebook | stage | paper |
# | --- | --- | --- |
# | 00 (this one) | the whole detector | [1] Fig. 2 |
# | 01 | ResNet-vd backbone | [1] §4.1 |
# | 02 | hybrid encoder: AIFI + CCFM | [1] §4.2, Eq. 1, Fig. 3–4 |
# | 03 | multi-scale deformable attention | [2] Eq. 2–3, [3] §3 |
# | 04 | query selection and the decoder | [1] §4.1, §4.3; [2] App. A.4 |
# | 05 | post-processing and the command line | [1] §4.3 (focal-loss scores) |
# | 06 | weights: hub and official checkpoints → arrays | — |

# %% [markdown]
# ## Setup
#
# Every notebook starts the same way. `teaching_model()` looks for the trained r18vd checkpoint
# (`PekingU/rtdetr_v2_r18vd`) in your Hugging Face cache **without touching the network**. If it is there you get
# the real detector; if not, you get a deterministic random-weight model of the same architecture. The random model
# computes exactly what the trained one computes — same layers, same shapes, same code path — but it has learned
# nothing, so its boxes and scores mean nothing. Every figure whose meaning depends on the weights says so in red at
# its top.
#
# The images live in the repository's `tests/data/` (COCO val2017, see its README for provenance and licence); we
# find them relative to the installed package, so the notebook does not depend on the working directory.

# %%
# %matplotlib inline
import time
from pathlib import Path

import numpy as np

import rtdetrv2_np
from rtdetrv2_np import plotting

T0 = time.time()
DATA = Path(rtdetrv2_np.__file__).resolve().parents[1] / "tests" / "data"
model, IS_REAL = plotting.teaching_model()
NOTE = dict(random_weights=not IS_REAL)   # passed to every figure whose meaning depends on the weights
print("weights:", model.source)
print("real weights" if IS_REAL else "RANDOM weights: the detections below mean nothing (random weights don't find cats)")

# %% [markdown]
# ## Detect in ten lines
#
# Three functions, in the order of the paper's pipeline:
# `preprocess` resizes to 640×640 and scales pixels to [0, 1]; the model returns 300 candidate objects, each with
# 80 class logits and a box; `post_process_object_detection` turns those into scored, labelled boxes in the
# original image's pixels.

# %%
from rtdetrv2_np.postprocess import post_process_object_detection
from rtdetrv2_np.preprocess import load_image, preprocess

image = load_image(DATA / "coco_000000039769.png")               # two cats on a couch (640x480)
pixel_values, sizes = preprocess(image)                          # [1, 3, 640, 640] float32, [(480, 640)]
out = model(pixel_values)                                        # logits [1, 300, 80], pred_boxes [1, 300, 4]
detections = post_process_object_detection(out.logits, out.pred_boxes, target_sizes=sizes, threshold=0.5)[0]
if not IS_REAL:                                                  # random scores hover around 0.5: show the top few
    detections = post_process_object_detection(out.logits, out.pred_boxes, target_sizes=sizes, threshold=0.0)[0]
for score, label, box in list(zip(detections["scores"], detections["labels"], detections["boxes"]))[:6]:
    print(f"{model.id2label[int(label)]}: {score:.2f} [" + ", ".join(f"{v:.2f}" for v in box) + "]")

# %%
plotting.plot_detections(image, detections, model.id2label, max_detections=6, **NOTE)

# %% [markdown]
# With the trained weights you should see two cats (≈0.97), two remotes and the couch ("sofa"), the values the
# Hugging Face documentation prints for this image (`tests/data/README.md` lists them).

# %% [markdown]
# ## The architecture map ([1] Fig. 2)
#
# ```
#  image [B, 3, 640, 640]
#    │  backbone: ResNet-vd (notebook 01)                     strides 8, 16, 32
#    ▼
#  S3 [B, 128, 80, 80]   S4 [B, 256, 40, 40]   S5 [B, 512, 20, 20]          (r18vd channel counts)
#    │  hybrid encoder (notebook 02): 1x1 projections to C = 256,
#    │  AIFI = one transformer layer on S5 only, then CCFM = top-down + bottom-up CNN fusion
#    ▼
#  O3 [B, 256, 80, 80]   O4 [B, 256, 40, 40]   O5 [B, 256, 20, 20]
#    │  flatten + concatenate: memory [B, Nv, 256], Nv = 6400 + 1600 + 400 = 8400
#    │  query selection (notebook 04): score all 8400 positions, keep the top 300
#    ▼
#  target [B, 300, 256] and reference boxes [B, 300, 4]
#    │  decoder (notebooks 03–04): 3 layers of self-attention + deformable cross-attention into the memory + FFN,
#    │  each layer refining the boxes
#    ▼
#  logits [B, 300, 80], pred_boxes [B, 300, 4]  →  post-processing (notebook 05)
# ```
#
# Shape letters (the glossary in the package docstring, `rtdetrv2_np/__init__.py`): B batch, C channels,
# H_l × W_l the size of level l, L levels (3), M heads (8), D head dim (C/M = 32), K_l sampling points on level l,
# Nq queries (300), Nv value tokens (Σ H_l·W_l), NC classes (80).
#
# `model.trace` runs the same forward pass and keeps every intermediate by name:

# %%
stages = model.trace(pixel_values)
for name, value in stages.items():
    print(f"{name:34s} {value.dtype!s:8s} {list(value.shape)}")

# %% [markdown]
# ## The forward pass, composed by hand
#
# `rtdetrv2_np/model/detector.py::forward` is one short function that calls the four stages in the order of Fig. 2. Here it
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
spatial_shapes = [y.shape[2:] for y in enc]                                       # [(80, 80), (40, 40), (20, 20)]
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

parts = {"backbone (ResNet-18-vd)": m["backbone"],
         "encoder input projections": m["encoder_input_proj"],
         "hybrid encoder (AIFI + CCFM)": m["encoder"],
         "decoder input projections": m["decoder_input_proj"],
         "query selection heads": [m["enc_output"], m["enc_score_head"], m["enc_bbox_head"]],
         "decoder (3 layers + heads)": m["decoder"]}
total = count(m)
for name, tree in parts.items():
    print(f"{name:30s} {count(tree) / 1e6:6.2f} M  ({100 * count(tree) / total:4.1f} %)")
print(f"{'total':30s} {total / 1e6:6.2f} M   (the denoising embedding, training only, is the remainder)")

# %% [markdown]
# ## Summary
#
# * RT-DETRv2 is four stages: a CNN backbone, a hybrid encoder, query selection, and a transformer decoder whose
#   cross-attention is *deformable*: each query reads only 8 heads × 12 points of the 8400-token memory.
# * There is no non-maximum suppression: the 300 queries are a set, and post-processing only ranks their scores.
# * `model.trace(x)` returns every named intermediate; the figures in `rtdetrv2_np.plotting` take that dict.
#
# ## Exercises
#
# 1. Run the detector on `tests/data/coco_000000004016.png`. How many detections pass the 0.5 threshold?
# 2. `preprocess(image, size=(480, 640))` keeps the cats' aspect ratio. Which entries of `stages` change shape,
#    and which do not? (Hint: Nq does not depend on the input size; Nv does.)
# 3. Which stage holds most of the parameters? Which do you expect to take most of the time? Time `backbone` and
#    `decoder` separately to check.
# 4. Load the model with `method="discrete"` (`rtdetrv2_np.random_weights.random_model("r18vd", method="discrete")`
#    or `load_model(..., method="discrete")`) and compare `pred_boxes` with the bilinear model. Notebook 03
#    explains the difference.

# %%
print(f"notebook ran in {time.time() - T0:.1f} s")

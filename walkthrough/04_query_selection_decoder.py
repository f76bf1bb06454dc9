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
# # 04 · Query selection and the decoder
#
# *Estimated reading time: 35 minutes (running it: under a minute on 2 CPU cores).*
#
# **Learning goals.** After this notebook you can
# 1. generate the anchor boxes of every encoder position and say which are invalid and why;
# 2. select the top-300 positions of the memory as the decoder's initial queries and boxes (inference path of
#    "uncertainty-minimal query selection");
# 3. run a decoder layer by hand — self-attention, deformable cross-attention, FFN — and refine the boxes;
# 4. follow the boxes through the layers and match the model's final logits and boxes.
#
# **Paper references.** [1] RT-DETR, arXiv 2304.08069: **§4.3** (uncertainty-minimal query selection: the
# top-K encoder features by classification score initialise the object queries; the uncertainty term only shapes
# training), **§4.1** (decoder with auxiliary heads), **Fig. 2**. [2] Deformable DETR, arXiv 2010.04159:
# **App. A.4** (two-stage: every encoder position is a proposal relative to an anchor of size 0.05·2^l; iterative
# bounding-box refinement `b_d = σ(Δ_d + σ⁻¹(b_{d−1}))`).
#
# Code: `rtdetrv2_np/model/query_selection.py`, `rtdetrv2_np/model/decoder.py`.

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
NOTE = dict(random_weights=not IS_REAL)
print("weights:", model.source)
f32 = np.float32


def check(name, mine, package, atol=0.0):
    """The walkthrough's equality check: print the largest difference, fail if it exceeds atol."""
    diff = float(np.abs(np.asarray(mine, np.float64) - np.asarray(package, np.float64)).max())
    print(f"{'OK' if diff <= atol else 'NOT OK'} {name}: max |by hand - package| = {diff:.3g}")
    assert diff <= atol, name

# %% [markdown]
# ## 1. Anchors: one box per encoder position
#
# Every position of every level is a proposal. Its anchor is a box centred on the position, `cx = (x + 0.5)/W_l`,
# `cy = (y + 0.5)/H_l`, with side `0.05 · 2^l` (5 % of the image on the finest level, 10 %, 20 %). The model
# predicts boxes as corrections *in logit space*, so the anchors are stored as `logit(a) = log(a / (1 − a))`.
# A position is **invalid** if any coordinate of its anchor is outside (0.01, 0.99): at 640 × 640 that is the
# outermost ring of the 80 × 80 level (0.5/80 < 0.01). Invalid positions get a huge logit (sigmoid → a
# (1, 1, 1, 1) box) and see zeroed memory. By hand on a small set of levels (all valid; the invalid ones follow):

# %%
from rtdetrv2_np.model.query_selection import generate_anchors

shapes = [(4, 4), (2, 2), (1, 1)]
boxes, valid = [], []
for l, (h, w) in enumerate(shapes):
    for y in range(h):
        for x in range(w):                                            # row-major, levels fine to coarse
            a = np.array([(x + 0.5) / w, (y + 0.5) / h, 0.05 * 2 ** l, 0.05 * 2 ** l], f32)
            boxes.append(a)
            valid.append(bool(np.all((a > 0.01) & (a < 0.99))))
boxes, valid = np.array(boxes), np.array(valid)
anchors = np.where(valid[:, None], np.log(boxes / (1 - boxes)), np.finfo(f32).max)
pkg_anchors, pkg_valid = generate_anchors(shapes)
print("valid:", valid.astype(int))
check("anchors (logit space)", anchors, pkg_anchors, atol=1e-6)
assert (valid == pkg_valid).all()

# %% [markdown]
# At 640 × 640 the levels are 80 × 80, 40 × 40, 20 × 20: Nv = 8400 anchors. The invalid ones:

# %%
anchors, valid = generate_anchors([(80, 80), (40, 40), (20, 20)])
print(f"{(~valid).sum()} of {valid.size} positions invalid:",
      [int((~valid[a:b]).sum()) for a, b in [(0, 6400), (6400, 8000), (8000, 8400)]], "per level")

# %% [markdown]
# ## 2. Query selection ([1] §4.3)
#
# ```
# out      = LayerNorm(Linear(valid · memory))      "enc_output"; invalid positions see 0
# scores   = enc_score_head(out)                    [B, Nv, NC] class logits of every position
# box      = enc_bbox_head(out) + anchors           [B, Nv, 4]  box logits, a correction of the anchor
# index    = top-300 of max_c scores                one number per position: its best class logit
# target   = out[index]                             the decoder's initial query content
# ref      = sigmoid(box[index])                    the decoder's initial reference boxes
# ```
#
# RT-DETR's point is that the queries are *chosen from the image*, not learned constants as in DETR: the
# positions the encoder is most confident about become the 300 object queries. We take the memory from one
# forward pass and redo the selection:

# %%
from rtdetrv2_np.model.nn import layer_norm, linear, mlp, sigmoid
from rtdetrv2_np.preprocess import load_image, preprocess

image = load_image(DATA / "coco_000000039769.png")
pixel_values, sizes = preprocess(image)
stages = model.trace(pixel_values)
cfg, m = model.config, model.params["model"]
memory = stages["memory"]                                             # [B, Nv, C]

masked = memory * valid[None, :, None]                                # [B, Nv, C]
out = layer_norm(linear(masked, m["enc_output"][0]), m["enc_output"][1])          # [B, Nv, C]
scores = linear(out, m["enc_score_head"])                             # [B, Nv, NC]
box_logits = mlp(out, m["enc_bbox_head"]["layers"]) + anchors         # [B, Nv, 4]
index = np.argsort(-scores.max(-1), axis=1, kind="stable")[:, :cfg.num_queries]   # [B, Nq] descending, ties: lower first
target = np.take_along_axis(out, index[:, :, None], axis=1)           # [B, Nq, C]
ref = sigmoid(np.take_along_axis(box_logits, index[:, :, None], axis=1))          # [B, Nq, 4]

check("enc_logits", scores, stages["enc_logits"], atol=1e-4)
print("same 300 positions selected:", set(index[0]) == set(stages["topk_index"][0]))
check("reference_boxes", ref, stages["reference_boxes"], atol=1e-5)
check("target", target, stages["target"], atol=1e-4)

# %% [markdown]
# The selection as a picture: the best class logit of every position, on each level, with the 300 winners marked
# (hatched: invalid positions).

# %%
spatial_shapes = [tuple(stages[f"encoder.output.{l}"].shape[2:]) for l in range(3)]
plotting.plot_query_selection(stages, spatial_shapes, image=pixel_values, **NOTE)

# %% [markdown]
# With trained weights the winners gather on the cats, the remotes and the couch, and small objects win on the
# fine level while large ones win on the coarse levels.
#
# ## 3. A decoder layer by hand
#
# Each of the 3 layers (r18vd) is post-norm, with `pos = query_pos_head(b)`, an MLP 4 → 512 → 256 of the current
# box (the query's position embedding is recomputed from its box at every layer):
#
# ```
# x  = LN1(x + SelfAttn(q = k = x + pos, v = x))                       queries talk to each other
# x  = LN2(x + MSDeformAttn(query = x + pos, reference = b, value = memory))    notebook 03
# x  = LN3(x + fc2(ReLU(fc1(x))))
# b' = sigmoid(bbox_embed(x) + inverse_sigmoid(b))                      iterative refinement ([2] App. A.4)
# logits = class_embed(x)
# ```
#
# The self-attention is what replaces NMS: queries on the same object see each other and learn that only one of
# them should claim it.

# %%
from rtdetrv2_np.model.deformable_attention import multiscale_deformable_attention
from rtdetrv2_np.model.nn import inverse_sigmoid, multi_head_attention, relu

dec = m["decoder"]
x, b = stages["target"], stages["reference_boxes"]                    # [B, Nq, C], [B, Nq, 4]
for i in range(cfg.num_decoder_layers_used):
    p = dec["layers"][i]
    pos = mlp(b, dec["query_pos_head"]["layers"])                     # [B, Nq, C]
    x = layer_norm(x + multi_head_attention(x + pos, x, p["self_attn"], cfg.decoder_attention_heads),
                   p["self_attn_layer_norm"])
    attn, _, _ = multiscale_deformable_attention(p["encoder_attn"], x + pos, b, memory, spatial_shapes,
                                                 cfg.decoder_attention_heads, cfg.n_points,
                                                 cfg.decoder_offset_scale, cfg.method)
    x = layer_norm(x + attn, p["encoder_attn_layer_norm"])
    x = layer_norm(x + linear(relu(linear(x, p["fc1"])), p["fc2"]), p["final_layer_norm"])   # [B, Nq, C]
    b_new = sigmoid(mlp(x, dec["bbox_embed"][i]["layers"]) + inverse_sigmoid(b))            # [B, Nq, 4]
    logits = linear(x, dec["class_embed"][i])                                               # [B, Nq, NC]
    moved = np.abs(b_new - b).mean() * 640
    print(f"layer {i}: boxes moved by {moved:.1f} px on average (640 px input)")
    check(f"decoder.{i}.boxes", b_new, stages[f"decoder.{i}.boxes"], atol=1e-5)
    b = b_new

check("logits (final)", logits, stages["logits"], atol=1e-4)
check("pred_boxes (final)", b, stages["pred_boxes"], atol=1e-5)

# %% [markdown]
# `inverse_sigmoid` clamps its input to [1e-5, 1 − 1e-5] before the logarithm (the reference code's eps), so a
# box at exactly 0 or 1 maps to ±11.5 instead of ±∞.
#
# **eval_idx.** The official r50vd_m model stops after layer 2 of its 6 (`decoder_eval_idx`); transformers always
# runs every layer. `cfg.num_decoder_layers_used` is that choice; for r18vd it is all 3 layers.
#
# ## 4. Boxes through the layers
#
# The four highest-scoring queries: the dashed orange box is query selection's, then each layer's output from
# light to dark blue.

# %%
top = np.argsort(-stages["logits"][0].max(-1), kind="stable")[:4]
plotting.plot_box_refinement(pixel_values, stages, top, id2label=model.id2label, ncols=4, **NOTE)

# %% [markdown]
# ## Summary
#
# * Every encoder position is a proposal with an anchor (size 0.05·2^l); positions near the border are invalid.
# * The top-300 positions by best class logit become the queries: their encoder features are the content, their
#   predicted boxes the references.
# * Each decoder layer: self-attention among queries, deformable cross-attention into the memory around the
#   current box, FFN; then a box correction in logit space and class logits.
#
# ## Exercises
#
# 1. How many of the 300 queries come from each level? Compare the cats image with `coco_000000004016.png`.
# 2. Replace the top-300 selection by 300 random valid positions. How do the final scores change (trained
#    weights)? This is the ablation behind [1] §4.3.
# 3. Skip the self-attention in every layer (x unchanged) and count how many near-duplicate boxes (IoU > 0.7,
#    same label) pass a 0.5 score threshold.
# 4. Plot `decoder.{i}.logits` for one query as a bar chart per layer: when does the class decision happen?

# %%
print(f"notebook ran in {time.time() - T0:.1f} s")

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
# *Estimated reading time: 45 minutes (running it: under a minute on 2 CPU cores).*
#
# **Learning goals.** After this notebook you can
# 1. generate the anchor boxes of every encoder position, draw them at their true size, and say which are invalid
#    and why;
# 2. select the top-Nq positions of the memory as the decoder's initial queries and boxes, and say what RT-DETR's
#    *uncertainty-minimal* (IoU-aware) selection adds to choosing queries from the image;
# 3. run a decoder layer by hand — self-attention, deformable cross-attention, FFN — and refine the boxes;
# 4. measure how much each decoder layer improves the boxes, and trade layers for speed at inference.
#
# **Paper references.** [1] Lv et al., *RT-DETR* (DETRs Beat YOLOs on Real-time Object Detection), arXiv
# 2304.08069v3: **Fig. 4** (overview), **§4.1** (decoder with auxiliary prediction heads), **§4.3**
# (uncertainty-minimal query selection, Eq. 2–3, the score/IoU scatter **Fig. 6**), **§5.3, Table 4** (its
# ablation), and the flexible speed tuning by dropping decoder layers (abstract; ablation **§5.4, Table 5**).
# Paper versions and sections: `walkthrough/paper_pointers.md`.
# [2] Zhu et al., *Deformable DETR*, arXiv 2010.04159v4: **App. A.4**
# (two-stage: every encoder position is a proposal relative to an anchor of size 0.05·2^l; iterative bounding-box
# refinement `b_d = σ(Δ_d + σ⁻¹(b_{d−1}))`).
#
# **The model.** Every weight-dependent figure and number comes from the demo detector shipped with the package,
# `rtdetrv2_np.load_model("demo")` (256 × 256 input, 3 levels of 32², 16², 8² positions, 100 queries, 3 decoder
# layers, 4 shape classes), run on held-out scenes of `rtdetrv2_np/demo/shapes.py`, whose ground-truth boxes we
# know. The numbers are measured below, never typed into the text: they change whenever the weights do.
#
# Code: `rtdetrv2_np/model/query_selection.py`, `rtdetrv2_np/model/decoder.py`.

# %%
# %matplotlib inline
import time

import numpy as np
import PIL.Image

from rtdetrv2_np import plotting
from rtdetrv2_np.demo.shapes import EVAL_SEED, make_scene
from rtdetrv2_np.detect import box_iou
from rtdetrv2_np.postprocess import center_to_corners
from rtdetrv2_np.preprocess import preprocess

T0 = time.time()
model, _ = plotting.teaching_model()           # load_model("demo"): the shipped demo detector, no download
print(plotting.weights_stamp(model))
cfg, m = model.config, model.params["model"]
S = model.input_size[0]                                  # 256
print("input", model.input_size, "| queries", cfg.num_queries, "| decoder layers", cfg.decoder_layers,
      "| labels", model.id2label)
f32 = np.float32


def check(name, mine, package, atol=0.0):
    """The walkthrough's equality check: print the largest difference, fail if it exceeds atol."""
    diff = float(np.abs(np.asarray(mine, np.float64) - np.asarray(package, np.float64)).max())
    print(f"{'OK' if diff <= atol else 'NOT OK'} {name}: max |by hand - package| = {diff:.3g}")
    assert diff <= atol, name


def scene(index):
    """Held-out scene `index`: image, pixel values [1, 3, S, S], ground-truth boxes [G, 4] (x0, y0, x1, y1) px,
    areas [G] (visible area in px, COCO's small/medium/large measure)."""
    image, objects = make_scene(EVAL_SEED, index)
    pixel_values, _ = preprocess(PIL.Image.fromarray(image), size=model.input_size)
    return (image, pixel_values, np.array([o["box"] for o in objects], np.float64).reshape(-1, 4),
            np.array([o["area"] for o in objects], np.float64))

# %% [markdown]
# ## 1. Anchors: one box per encoder position
#
# Every position of every level is a proposal ([2] App. A.4). Its anchor is a box centred on the position,
# `cx = (x + 0.5)/W_l`, `cy = (y + 0.5)/H_l`, with side `0.05 · 2^l` (5 % of the image on the finest level, 10 %,
# 20 %). The model predicts boxes as corrections *in logit space*, so the anchors are stored as
# `logit(a) = log(a / (1 − a))`, and a predicted box is `sigmoid(Δ + logit(a))`: Δ = 0 gives the anchor itself,
# and no Δ can push a coordinate out of (0, 1). A position is **invalid** if any coordinate of its anchor is
# outside (0.01, 0.99) (transformers' and the official code's margin). By hand on a small set of levels:

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
check("sigmoid(logit(anchor)) = anchor", 1 / (1 + np.exp(-pkg_anchors)), boxes, atol=1e-6)
delta = np.array([0.5, -0.5, 1.0, 0.0], f32)                          # a correction, as enc_bbox_head predicts
print("anchor", boxes[5], "+ delta", delta, "-> box", 1 / (1 + np.exp(-(pkg_anchors[5] + delta))))

# %% [markdown]
# The demo model's levels at 256 × 256, each level's anchors drawn at their true size (a sparse lattice, so that
# they do not overlap) on a held-out scene. Which positions are invalid is computed, not assumed:

# %%
image0, pv0, gt0, area0 = scene(0)
stages = model.trace(pv0)
spatial_shapes = [tuple(stages[f"encoder.output.{l}"].shape[2:]) for l in range(3)]
anchors, valid = generate_anchors(spatial_shapes)
print(f"demo at {S}x{S}: levels {spatial_shapes}, {(~valid).sum()} of {valid.size} positions invalid")
plotting.plot_anchors(spatial_shapes, image=image0)

# %% [markdown]
# At 256 × 256 the finest level has 32 positions per side, so its outermost centre sits at 0.5/32 ≈ 0.016 of
# the image, inside the 0.01 margin. At 640 × 640 (the COCO models: 80², 40², 20² positions) the finest level's
# outer ring sits at 0.5/80 = 0.00625 and is invalid (hatched):

# %%
grid640 = [(80, 80), (40, 40), (20, 20)]
anchors640, valid640 = generate_anchors(grid640)
starts = np.cumsum([0] + [h * w for h, w in grid640])
print(f"640x640: {(~valid640).sum()} of {valid640.size} positions invalid:",
      [int((~valid640[a:b]).sum()) for a, b in zip(starts[:-1], starts[1:])], "per level")
plotting.plot_anchors(grid640, image=PIL.Image.fromarray(image0).resize((640, 640)))

# %% [markdown]
# Invalid positions get the largest float32 as their anchor logit (sigmoid → a (1, 1, 1, 1) box), and query
# selection zeroes their memory before scoring them, so they all get one and the same score, that of a zero
# feature (whether it reaches the top-Nq depends on the weights). The decoder's
# cross-attention, however, reads the **unmasked** memory: the zeroing is local to query selection.
#
# ## 2. Query selection ([1] §4.3)
#
# ```
# out      = LayerNorm(Linear(valid · memory))      "enc_output"; invalid positions see 0
# scores   = enc_score_head(out)                    [B, Nv, NC] class logits of every position
# box      = enc_bbox_head(out) + anchors           [B, Nv, 4]  box logits, a correction of the anchor
# index    = top-Nq of max_c scores                 one number per position: its best class logit
# target   = out[index]                             the decoder's initial query content
# ref      = sigmoid(box[index])                    the decoder's initial reference boxes
# ```
#
# We take the memory of one forward pass and redo the selection:

# %%
from rtdetrv2_np.model.nn import layer_norm, linear, mlp, sigmoid

memory = stages["memory"]                                             # [B, Nv, C]
masked = memory * valid[None, :, None]                                # [B, Nv, C]
out = layer_norm(linear(masked, m["enc_output"][0]), m["enc_output"][1])          # [B, Nv, C]
scores = linear(out, m["enc_score_head"])                             # [B, Nv, NC]
box_logits = mlp(out, m["enc_bbox_head"]["layers"]) + anchors         # [B, Nv, 4]
index = np.argsort(-scores.max(-1), axis=1, kind="stable")[:, :cfg.num_queries]   # [B, Nq] descending; ties: lower
target = np.take_along_axis(out, index[:, :, None], axis=1)           # [B, Nq, C]
ref = sigmoid(np.take_along_axis(box_logits, index[:, :, None], axis=1))          # [B, Nq, 4]

check("enc_logits", scores, stages["enc_logits"], atol=1e-4)
print(f"same {cfg.num_queries} positions selected:", set(index[0]) == set(stages["topk_index"][0]))
check("reference_boxes", ref, stages["reference_boxes"], atol=1e-5)
check("target", target, stages["target"], atol=1e-4)

# %% [markdown]
# The selection as a picture: the best class logit of every position, on each level, with the winners marked
# (per-figure colour scale, bar on the right):

# %%
plotting.plot_query_selection(stages, spatial_shapes, image=pv0)

# %% [markdown]
# **Which level wins, for which object?** Over 16 held-out scenes, assign each selected query to the ground-truth
# object its selected box overlaps best (IoU ≥ 0.5), and count the winners per level by the object's size (COCO's
# visible-area bins: small < 32², medium < 96², large):

# %%
from collections import Counter

SCENES = range(16)
runs = []                                                             # (stages, gt boxes, gt areas) per scene
for i in SCENES:
    _, pv_i, gt_i, area_i = scene(i)
    runs.append((model.trace(pv_i), gt_i, area_i))

level_starts = np.cumsum([0] + [h * w for h, w in spatial_shapes])
win = {b: Counter() for b in ("small", "medium", "large")}
for st, gt_i, area_i in runs:
    level = np.searchsorted(level_starts, st["topk_index"][0], side="right") - 1          # [Nq]
    iou = box_iou(center_to_corners(st["reference_boxes"][0]) * S, gt_i)                  # [Nq, G]
    for qq in range(cfg.num_queries):
        g = int(iou[qq].argmax()) if iou.shape[1] else -1
        if g >= 0 and iou[qq, g] >= 0.5:
            size = "small" if area_i[g] < 32 ** 2 else "medium" if area_i[g] < 96 ** 2 else "large"
            win[size][int(level[qq])] += 1
print("selected queries with IoU >= 0.5, by object size and the level they came from:")
for size, c in win.items():
    total = sum(c.values())
    print(f"  {size:<7} {total:4d} queries: " +
          " ".join(f"L{l} {c[l] / max(total, 1):.0%}" for l in range(len(spatial_shapes))))

# %% [markdown]
# ## 3. What RT-DETR adds: uncertainty-minimal (IoU-aware) query selection
#
# Choosing the decoder's initial queries from the encoder's top-K positions is older than RT-DETR: two-stage
# Deformable DETR [2], Efficient DETR and DINO all do it ([1] §4.3 says so). RT-DETR's point is *what the score
# means*. A class score trained only for classification can be high for a position whose box is poor; top-K then
# hands the decoder confident but badly placed queries. [1] §4.3 names the gap between the predicted localisation
# P and classification C the uncertainty U = ‖P − C‖ (Eq. 2) and adds it to the training loss (Eq. 3); in the
# code this is the varifocal loss, whose target for a matched query's class is the IoU of its box with the ground
# truth. A score
# trained to predict the IoU ranks positions by how well their box fits, so top-K by class score at inference
# (the code above, nothing more) picks well-localised features too. [1] Fig. 6 shows this as a scatter of
# classification score against IoU for the selected encoder features of vanilla and uncertainty-minimal
# selection; §5.3, Table 4 gives the AP difference.
#
# The same scatter for the demo model (trained with the varifocal loss), over the 16 scenes: each selected query's
# score sigmoid(max class logit) against the IoU of its selected box with its best ground-truth box:

# %%
sc, io, lv = [], [], []
for st, gt_i, _ in runs:
    sc.append(sigmoid(st["enc_logits"][0][st["topk_index"][0]].max(-1)))                  # [Nq]
    iou = box_iou(center_to_corners(st["reference_boxes"][0]) * S, gt_i)                  # [Nq, G]
    io.append(iou.max(-1) if iou.shape[1] else np.zeros(cfg.num_queries))
    lv.append(np.searchsorted(level_starts, st["topk_index"][0], side="right") - 1)
sc, io, lv = np.concatenate(sc), np.concatenate(io), np.concatenate(lv)
r = np.corrcoef(sc, io)[0, 1]
top = sc >= np.quantile(sc, 0.9)
print(f"{len(sc)} selected queries: Pearson r(score, IoU) = {r:.2f}; mean IoU of the top 10 % by score "
      f"{io[top].mean():.2f}, of the rest {io[~top].mean():.2f}")
plotting.plot_score_vs_iou(sc, io, lv, [f"level {l}" for l in range(3)])

# %% [markdown]
# What this can and cannot show: a positive correlation says the demo's scores carry localisation quality; without
# a second model trained with a plain classification loss we cannot show the *difference* the loss makes, which
# is the paper's comparison.
#
# ## 4. A decoder layer by hand
#
# Each of the 3 layers is post-norm, with `pos = query_pos_head(b)`, an MLP 4 → 2C → C of the current box (the
# query's position embedding is recomputed from its box at every layer):
#
# ```
# x  = LN1(x + SelfAttn(q = k = x + pos, v = x))                       queries see each other
# x  = LN2(x + MSDeformAttn(query = x + pos, reference = b, value = memory))    notebook 03
# x  = LN3(x + fc2(ReLU(fc1(x))))
# b' = sigmoid(bbox_embed(x) + inverse_sigmoid(b))                      iterative refinement ([2] App. A.4)
# logits = class_embed(x)
# ```
#
# Why there is no NMS: training matches predictions to objects **one-to-one** (Hungarian matching), so a second
# query on an already-claimed object is trained towards "no object". Self-attention is the channel through which
# queries can learn that; the matching loss is what asks for it. (The demo model's card notes that it still
# emits near-duplicates: one-to-one training makes duplicates costly, not impossible.)

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
    check(f"decoder.{i}.boxes", b_new, stages[f"decoder.{i}.boxes"], atol=1e-5)
    b = b_new

check("logits (final)", logits, stages["logits"], atol=1e-4)
check("pred_boxes (final)", b, stages["pred_boxes"], atol=1e-5)

# %% [markdown]
# `inverse_sigmoid` clamps its input to [1e-5, 1 − 1e-5] before the logarithm (the reference code's eps), so a
# box at exactly 0 or 1 maps to ±11.5 instead of ±∞.
#
# **eval_idx.** The official r50vd_m model stops after its third layer (index 2) of 6 (`decoder_eval_idx`);
# transformers always runs every layer. `cfg.num_decoder_layers_used` is that choice; the demo model and r18vd run
# all 3 layers.
#
# ## 5. How much does each layer help?
#
# Against the ground truth, over the 16 scenes: for each object, the query whose final box fits it best (IoU ≥ 0.5);
# then that query's box after query selection and after each layer: its IoU with the object and the mean absolute
# error of its corners in pixels.

# %%
names = ["reference_boxes"] + [f"decoder.{i}.boxes" for i in range(cfg.num_decoder_layers_used)]
iou_per, err_per = {n: [] for n in names}, {n: [] for n in names}
for st, gt_i, _ in runs:
    final_iou = box_iou(center_to_corners(st["pred_boxes"][0]) * S, gt_i)                 # [Nq, G]
    for g in range(len(gt_i)):
        qq = int(final_iou[:, g].argmax())
        if final_iou[qq, g] < 0.5:
            continue
        for n in names:
            bx = center_to_corners(st[n][0, qq]) * S                                      # [4] pixels
            iou_per[n].append(box_iou(bx[None], gt_i[g:g + 1])[0, 0])
            err_per[n].append(np.abs(bx - gt_i[g]).mean())
print(f"{len(iou_per[names[0]])} objects found")
for n in names:
    print(f"  {n:<18} mean IoU {np.mean(iou_per[n]):.3f}   mean |corner error| {np.mean(err_per[n]):5.2f} px")

# %% [markdown]
# The four highest-scoring queries of scene 0: the dashed orange box is query selection's, then each layer's output
# from light to dark blue.

# %%
top4 = np.argsort(-stages["logits"][0].max(-1), kind="stable")[:4]
plotting.plot_box_refinement(pv0, stages, top4, id2label=model.id2label, ncols=4)

# %% [markdown]
# ## 6. Speed tuning: fewer decoder layers at inference
#
# Every decoder layer has its own box and class heads, trained with auxiliary losses ([1] §4.1), so the output of
# layer d is a usable detection by itself: RT-DETR runs fewer layers at inference to go faster, without retraining
# ([1] abstract; ablation §5.4, Table 5). In the package this is `decoder_eval_idx`. First the check: a model cut after
# layer d gives exactly the trace's layer-d outputs:

# %%
from dataclasses import replace

from rtdetrv2_np.evaluate import evaluate_shapes


def cut(n_layers):
    """The demo model running only its first n_layers decoder layers."""
    return replace(model, config=replace(cfg, decoder_eval_idx=n_layers - 1))


for d in range(cfg.decoder_layers):
    o = cut(d + 1)(pv0)
    check(f"{d + 1} layer(s) = decoder.{d} of the full trace", o.logits, stages[f"decoder.{d}.logits"], atol=1e-5)

# %% [markdown]
# Then COCO AP with the package's evaluator on the first 24 held-out scenes (a subset, to stay quick: its AP is
# noisier than the model card's 500-scene figure), and the time of the model alone on a batch of 8 scenes:

# %%
from rtdetrv2_np.model.decoder import decoder

N_EVAL = 24                     # scenes: keeps this cell within about 20 s on 2 busy cores
batch = np.concatenate([scene(i)[1] for i in range(4)])               # [4, 3, S, S]
st4 = model.trace(batch)                                              # the decoder's inputs for the 4 scenes


def best_of_3(f):
    """The shortest of 3 wall-clock timings of f() (the machine is shared: the minimum is the least disturbed)."""
    times = []
    for _ in range(3):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


t_model = best_of_3(lambda: model(batch))
t_dec = {d: best_of_3(lambda: decoder(st4["target"], st4["reference_boxes"], st4["memory"], spatial_shapes,
                                      dec, cut(d).config)) for d in range(1, cfg.decoder_layers + 1)}
print(f"whole model, {cfg.decoder_layers} layers, 4 scenes: {t_model:.3f} s, of which the decoder {t_dec[3]:.3f} s")
t_section = time.perf_counter()
for d in range(1, cfg.decoder_layers + 1):
    res = evaluate_shapes(cut(d), count=N_EVAL)
    est = t_model - t_dec[cfg.decoder_layers] + t_dec[d]
    print(f"{d} decoder layer(s): AP {res['AP']:.3f}  AP50 {res['AP50']:.3f}  | decoder {t_dec[d]:.3f} s "
          f"({t_dec[d] / t_dec[cfg.decoder_layers]:.2f}x), whole model about {est / t_model:.2f}x")
print(f"(the three evaluations took {time.perf_counter() - t_section:.1f} s)")

# %% [markdown]
# The decoder's time shrinks with its layers; how much of the whole model that is depends on the model (here the
# backbone and encoder take most of the time, and timings on a shared machine are noisy). The accuracy column is
# the other half of the trade: read both before choosing.
#
# ## Summary
#
# * Every encoder position is a proposal with an anchor (size 0.05·2^l, stored in logit space); positions within
#   1 % of the border are invalid — none at 256 × 256, the outer ring of the finest level at 640 × 640.
# * The top-Nq positions by best class logit become the queries: their encoder features are the content, their
#   predicted boxes the references. RT-DETR's addition is the IoU-aware training of that score.
# * Each decoder layer: self-attention among queries, deformable cross-attention into the memory around the
#   current box, FFN; then a box correction in logit space and class logits. One-to-one matching in training is
#   what removes the need for NMS.
# * Each layer's heads give a usable output: fewer layers at inference trade accuracy for time.
#
# ## Exercises
#
# Solutions: `walkthrough/solutions/04_query_selection_decoder.py` (each computes the answer and checks it against
# the package).
#
# 1. How many of the Nq selected queries come from each level, for held-out scenes 0 and 1? Which scene has more
#    small objects, and does its level-0 count reflect it?
# 2. Replace the top-Nq selection by Nq random valid positions (seed 0) on scenes 0-7 and run the decoder. How many
#    ground-truth objects does some final box find with IoU ≥ 0.5, compared with the real selection? (This tests
#    selection from the image at all, not the IoU-aware score: [1] §5.3 compares the two kinds of score.)
# 3. Skip the self-attention in every decoder layer (x unchanged) on scenes 0-7 and count the near-duplicate pairs
#    (IoU > 0.7, same label, both scores > 0.3) among the final detections, against the intact model.
# 4. For the best query of scene 0, print the class probabilities of every decoder layer: from which layer on is
#    the final class the top class?
# 5. At 640 × 640, how many positions are invalid on each level, and why does none of levels 1 and 2 fall out?

# %%
print(f"notebook ran in {time.time() - T0:.1f} s")

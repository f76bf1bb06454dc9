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
# # 03 · Multi-scale deformable attention
#
# *Estimated reading time: 45 minutes (running it: under a minute on 2 CPU cores).*
#
# **Learning goals.** After this notebook you can
# 1. read a feature map at a continuous point by bilinear interpolation, by hand, with grid_sample's pixel-centre
#    convention and zero padding;
# 2. compute deformable attention for one query, one head, one level: sampling locations from a reference box,
#    a softmax over the points, a weighted sum ([2] Eq. 2);
# 3. extend it to several levels and heads — the multi-scale sum of Deformable DETR ([2] **Eq. 3**) — and match the
#    package's vectorized `deformable_attention_core` and its loop oracle;
# 4. name the three things RT-DETRv2 changes: points per level, the offset scale, and the discrete sampling
#    operator ([3] **§3**);
# 5. reproduce the decoder's real sampling locations and attention weights from the trace.
#
# **Paper references.**
# [2] Zhu et al., *Deformable DETR*, arXiv 2010.04159: §3, **Eq. 2** (deformable attention) and **Eq. 3**
# (multi-scale deformable attention), App. A.3 (box references).
# [3] Lv et al., *RT-DETRv2*, arXiv 2407.17140: **§3** "distinct number of sampling points for different scales"
# and "discrete sampling operator", ablations in §4 (Tables 1–2).
# [1] RT-DETR, arXiv 2304.08069: §4.1 (the decoder uses deformable cross-attention).
# PyTorch `grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False)`, the operator the bilinear path
# reproduces.
#
# Code: `rtdetrv2_np/model/deformable_attention.py` — `sample_bilinear`, `sample_discrete`, `sampling_locations`,
# `deformable_attention_core` (vectorized), `deformable_attention_core_loop` (the scalar definition),
# `multiscale_deformable_attention` (the module).

# %%
# %matplotlib inline
import time
from pathlib import Path

import numpy as np

import rtdetrv2_np
from rtdetrv2_np import plotting
from rtdetrv2_np.model.deformable_attention import (deformable_attention_core, deformable_attention_core_loop,
                                              multiscale_deformable_attention, sample_bilinear, sample_discrete,
                                              sampling_locations)

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
# ## Why deformable attention
#
# In DETR every object query attends to every token of the encoder memory: 300 queries × 8400 tokens × 8 heads
# for RT-DETR at 640×640, and slow to train because each query starts out looking everywhere. Deformable attention
# ([2] §3) lets each query look at a **handful of points** it chooses itself, around a **reference box**: the query
# predicts where (offsets) and how much each point counts (attention weights), and the feature at each point is
# read off the map by interpolation. RT-DETRv2's decoder uses 8 heads × 3 levels × 4 points = 96 samples per query,
# instead of 8 × 8400.
#
# ## 1. Reading a map at a continuous point: bilinear sampling, by hand
#
# Coordinates are **normalised**: x = 0 is the left edge of the map and x = 1 the right edge (y likewise, downward).
# Texel (pixel) i of a row of W texels covers [i/W, (i+1)/W], so its **centre** sits at (i + 0.5)/W. This is
# `grid_sample`'s `align_corners=False` convention. In texel units u = x·W the centres are at 0.5, 1.5, …, so the
# interpolation coordinate is `ix = u − 0.5`: the two neighbours are `floor(ix)` and `floor(ix) + 1`, weighted by
# how close the point is to each.
#
# A 4 × 5 map and one point:

# %%
value = (np.arange(20, dtype=f32).reshape(4, 5) % 7)                 # [H, W] one channel of one level
H, W = value.shape
x, y = f32(0.33), f32(0.4)                                          # normalised location
ix, iy = x * W - 0.5, y * H - 0.5                                    # texel coordinates of the point: 1.15, 1.1
x0, y0 = int(np.floor(ix)), int(np.floor(iy))                       # the top-left neighbour (1, 1)
fx, fy = ix - x0, iy - y0                                            # how far past it: 0.15, 0.1
taps = {(x0, y0): (1 - fx) * (1 - fy), (x0 + 1, y0): fx * (1 - fy),  # the four bilinear weights (they sum to 1)
        (x0, y0 + 1): (1 - fx) * fy, (x0 + 1, y0 + 1): fx * fy}
for (c, r), w_ in taps.items():
    print(f"texel (col {c}, row {r}) value {value[r, c]:.0f}  weight {w_:.4f}")
by_hand = sum(w_ * value[r, c] for (c, r), w_ in taps.items())
print(f"interpolated value {by_hand:.4f}")

package = sample_bilinear(value[None, :, :, None], np.array([[[x, y]]], f32))     # [N=1, P=1, D=1]
check("one bilinear sample", by_hand, package[0, 0, 0], atol=1e-6)

# %% [markdown]
# **At the border** some neighbours fall outside the map. `padding_mode='zeros'` counts them as 0 and does *not*
# renormalise the remaining weights. The cleanest hand-computable case (the scenic test of [2]'s JAX port uses
# it): a 1 × 1 map of value v. At its centre (0.5, 0.5) we read v; on its left edge (0, 0.5) we are half a texel
# from the centre, half the weight falls outside, and we read v/2; at the corner (0, 0), v/4.

# %%
v = np.full((1, 1, 1, 1), 8.0, f32)                                  # a 1x1 map, value 8
pts = np.array([[[0.5, 0.5], [0.0, 0.5], [0.0, 0.0], [1.0, 1.0], [-0.5, 0.5]]], f32)   # [1, P, 2]
print("bilinear  :", sample_bilinear(v, pts)[0, :, 0], "  (by hand: 8, 4, 2, 2, 0)")
check("1x1 map, border cases", sample_bilinear(v, pts)[0, :, 0], [8, 4, 2, 2, 0])

# %% [markdown]
# The figure shows three points on the 4 × 5 map, read both ways: on the left bilinear (the four neighbours with
# their weights, hollow where zero padding applies); on the right the **discrete** operator of RT-DETRv2, which §4
# below explains. Note p2, exactly on a texel centre: bilinear reads that texel, discrete picks the next one.

# %%
plotting.plot_bilinear_vs_discrete(value, [[0.33, 0.4], [0.97, 0.1], [0.5, 0.875]])

# %% [markdown]
# ## 2. One query, one head, one level ([2] Eq. 2)
#
# Deformable attention for query q with content z_q and reference point p_q, on one map x:
#
# $$\mathrm{DeformAttn}(z_q, p_q, x) = \sum_{m=1}^{M} W_m \Big[ \sum_{k=1}^{K} A_{mqk} \cdot W'_m\, x(p_q + \Delta p_{mqk}) \Big]$$
#
# For one head, drop the sum over m and the two projections W_m, W'_m (the value and output projections, linear
# layers applied before and after). What remains: K offsets Δp and K logits, both predicted from z_q by linear
# layers; a softmax over the K logits gives A; sample at p + Δp; weighted sum.
#
# RT-DETR's references are **boxes** b = (cx, cy, w, h), not points, and the offsets are measured in units of the
# box ([2] App. A.3): `loc = b_xy + Δ · (1/K) · b_wh · 0.5`. A raw offset of ±K reaches the box's edge.

# %%
D, K = 2, 3                                                          # head dim, points
value_l = rng.normal(size=(4, 5, D)).astype(f32)                     # [H, W, D] the value map of this head
box = np.array([0.5, 0.5, 0.4, 0.5], f32)                            # (cx, cy, w, h) the reference box
offsets = rng.normal(size=(K, 2)).astype(f32)                        # [K, 2] raw offsets (x, y), from the query
logits = rng.normal(size=K).astype(f32)                              # [K] attention logits, from the query

loc = box[:2] + offsets * f32(1 / K) * box[2:] * f32(0.5)            # [K, 2] normalised sampling locations
A = np.exp(logits - logits.max())
A /= A.sum()                                                         # [K] softmax: the weights sum to 1


def bilinear(value_l, x, y):
    """Bilinear read of value_l [H, W, D] at normalised (x, y), zero padding: section 1 as a function."""
    H, W, _ = value_l.shape
    ix, iy = x * W - 0.5, y * H - 0.5
    x0, y0 = int(np.floor(ix)), int(np.floor(iy))
    out = np.zeros(value_l.shape[-1], np.float64)
    for c, r in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        if 0 <= c < W and 0 <= r < H:                                # outside: zero padding
            out += (1 - abs(ix - c)) * (1 - abs(iy - r)) * value_l[r, c]
    return out


one = sum(A[k] * bilinear(value_l, *loc[k]) for k in range(K))       # [D]
print("sampling locations:\n", loc, "\nweights:", A, "\noutput:", one)

# %% [markdown]
# The package's functions take batched tensors: value `[B, Nv, M, D]` (levels flattened and concatenated),
# locations `[B, Nq, M, K, 2]`, weights `[B, Nq, M, K]`. With B = Nq = M = 1 and one level:

# %%
loc_pkg = sampling_locations(box[None, None], offsets[None, None, None], n_points=[K])   # [1, 1, 1, K, 2]
check("sampling_locations", loc, loc_pkg[0, 0, 0])
core = deformable_attention_core(value_l.reshape(1, -1, 1, D), [(4, 5)], loc_pkg, A[None, None, None], [K])
check("one query, head, level", one, core[0, 0], atol=1e-6)

# %% [markdown]
# ## 3. Many levels and heads: the multi-scale sum ([2] Eq. 3)
#
# $$\mathrm{MSDeformAttn}(z_q, \hat p_q, \{x^l\}) = \sum_{m=1}^{M} W_m \Big[ \sum_{l=1}^{L} \sum_{k=1}^{K_l} A_{mlqk} \cdot W'_m\, x^l(\phi_l(\hat p_q) + \Delta p_{mlqk}) \Big]$$
#
# * Each head samples K_l points on **every** level l, and **one softmax** runs over all Σ_l K_l (level, point)
#   slots of the head — the levels compete for the head's attention.
# * Normalised coordinates make the levels line up: the same (x, y) names the same place in the image on the
#   80×80, 40×40 and 20×20 maps (φ_l in [2] is that rescaling).
# * The value tokens of all levels sit in one sequence `[B, Nv, M, D]`, each level flattened row-major, fine to
#   coarse; level l starts at token Σ_{l'<l} H_l'·W_l'.
# * Points are stored **level-major**: the K slots of a head are level 0's K_0 points, then level 1's, …
#   The output channel is `head·D + d`.
#
# A toy with irregular level shapes and — RT-DETRv2 allows it — a different number of points per level:

# %%
shapes = [(6, 7), (3, 4), (2, 2)]                                    # (H_l, W_l)
n_points = [2, 3, 1]                                                 # K_l per level; K = 6
B, Nq, M, D = 1, 2, 2, 3
Nv, K = sum(h * w for h, w in shapes), sum(n_points)
value = rng.normal(size=(B, Nv, M, D)).astype(f32)                   # [B, Nv, M, D]
loc = rng.uniform(-0.1, 1.1, size=(B, Nq, M, K, 2)).astype(f32)      # [B, Nq, M, K, 2] some points fall outside
A = rng.random((B, Nq, M, K)).astype(f32)
A /= A.sum(-1, keepdims=True)                                        # [B, Nq, M, K] one softmax per head

out = np.zeros((B, Nq, M * D))                                       # [B, Nq, M*D]
starts = np.cumsum([0] + [h * w for h, w in shapes])                 # first token of each level
for b in range(B):
    for q in range(Nq):
        for m in range(M):
            k = 0                                                    # running point index, level-major
            for l, ((h, w), K_l) in enumerate(zip(shapes, n_points)):
                value_l = value[b, starts[l]:starts[l + 1], m].reshape(h, w, D)   # [H_l, W_l, D]
                for _ in range(K_l):
                    out[b, q, m * D:(m + 1) * D] += A[b, q, m, k] * bilinear(value_l, *loc[b, q, m, k])
                    k += 1

check("Eq. 3 by hand vs deformable_attention_core", out,
      deformable_attention_core(value, shapes, loc, A, n_points), atol=1e-6)
check("Eq. 3 by hand vs deformable_attention_core_loop", out,
      deformable_attention_core_loop(value, shapes, loc, A, n_points), atol=1e-6)

# %% [markdown]
# The package computes the same sum level by level, with all queries, heads and points of a level sampled in one
# gather (`sample_bilinear` takes `[N, H, W, D]` maps and `[N, P, 2]` points). The loop oracle is that same
# arithmetic as scalar float32 loops, and the two agree bit for bit:

# %%
check("vectorized vs loop oracle (float32)", deformable_attention_core(value, shapes, loc, A, n_points),
      deformable_attention_core_loop(value, shapes, loc, A, n_points))

# %% [markdown]
# ## 4. What RT-DETRv2 changes ([3] §3)
#
# **(a) A distinct number of points per level.** Deformable DETR uses the same K on every level. RT-DETRv2 lets
# K_l differ (the toy above used 2, 3, 1), so a model can spend its samples where they help; the offset of a point
# on level l is divided by its own K_l. The checkpoint stores the 1/K_l factors as a buffer `n_points_scale`,
# level-major. The released models use 4 points on each of the 3 levels:

# %%
cfg = model.config
print("n_points per level:", cfg.n_points, "| heads:", cfg.decoder_attention_heads,
      "| n_points_scale:", model.params["model"]["decoder"]["layers"][0]["encoder_attn"]["n_points_scale"])

# %% [markdown]
# **(b) The offset scale.** `loc = b_xy + Δ · (1/K_l) · b_wh · offset_scale` with offset_scale = 0.5 a
# configurable parameter (`decoder_offset_scale`; Deformable DETR hard-codes the 0.5). With 0.5, a raw offset of
# ±K_l moves a point from the box centre to the box edge:

# %%
box = np.array([[[0.5, 0.5, 0.2, 0.4]]], f32)                        # [B, Nq, 4] (cx, cy, w, h)
raw = np.array([[[[[4, 0], [0, 4], [-4, -4], [2, 0]]]]], f32)        # [B, Nq, M=1, K=4, 2], one level, K_l = 4
print(sampling_locations(box, raw, n_points=[4])[0, 0, 0])           # right edge, bottom edge, top-left corner, halfway

# %% [markdown]
# **(c) The discrete sampling operator.** `grid_sample` is awkward to export to some deployment runtimes. RT-DETRv2
# offers `method="discrete"` (the `*_dsp` models): instead of mixing four texels, take **one**,
# `trunc(u + 0.5)` with u = x·W, clamped into the map. Two consequences, both visible in the figure of §1:
#
# * rounding u = x·W to the nearest integer means texel i is picked for u ∈ [i − 0.5, i + 0.5): the operator
#   places texel i at u = i, **half a texel** left of (and above) bilinear's centre i + 0.5. A point exactly on a
#   texel centre picks the next texel.
# * there is no zero padding: a point outside the map reads the nearest border texel at full weight.
#
# By hand, on the same 4 × 5 map as in §1:

# %%
value = (np.arange(20, dtype=f32).reshape(4, 5) % 7)
pts = np.array([[0.33, 0.4], [0.97, 0.1], [0.5, 0.875], [-0.3, 1.4]], f32)   # the last one is outside the map
by_hand = []
for x, y in pts:
    col = min(max(int(x * 5 + f32(0.5)), 0), 4)                      # int() truncates toward zero, like torch's cast
    row = min(max(int(y * 4 + f32(0.5)), 0), 3)
    by_hand.append(value[row, col])
    print(f"({x:+.3f}, {y:+.3f}) -> u = {x * 5:+.2f}, v = {y * 4:+.2f} -> texel (col {col}, row {row}) = {value[row, col]:.0f}")
check("discrete sampling", by_hand, sample_discrete(value[None, :, :, None], pts[None])[0, :, 0])
print("bilinear at the same points:", sample_bilinear(value[None, :, :, None], pts[None])[0, :, 0])

# %% [markdown]
# Why truncation and not floor: `(u + 0.5).to(int64)` truncates toward zero, so any u + 0.5 in (−1, 0) becomes 0
# too; after the clamp the result is the same as a floor would give. (The official code clamps x to H − 1 rather
# than W − 1 — "FIX ME? for rectangle input"; the package follows transformers, which clamps each axis by its own
# size. They agree on square maps, i.e. at 640 × 640.)
#
# [3] §4 reports that discrete sampling costs little accuracy once the model is fine-tuned with it; a model trained
# for bilinear sampling and run with discrete sampling gives different boxes. Swap the operator in the *same*
# decoder and see how far the outputs move:

# %%
from dataclasses import replace

from rtdetrv2_np.model.decoder import decoder
from rtdetrv2_np.preprocess import load_image, preprocess

image = load_image(DATA / "coco_000000039769.png")
pixel_values, sizes = preprocess(image)
stages = model.trace(pixel_values)                                   # one forward pass (bilinear)
spatial_shapes = [tuple(stages[f"encoder.output.{l}"].shape[2:]) for l in range(3)]
m = model.params["model"]
_, boxes_discrete = decoder(stages["target"], stages["reference_boxes"], stages["memory"], spatial_shapes,
                            m["decoder"], replace(cfg, decoder_method="discrete"))
shift = np.abs(boxes_discrete - stages["pred_boxes"]).max(axis=-1)[0] * 640   # [Nq] in pixels of the 640 input
print(f"bilinear -> discrete: box corners move by a median {np.median(shift):.1f} px, max {shift.max():.1f} px")

# %% [markdown]
# **RT-DETR v1, for comparison.** The v1 checkpoints (`PekingU/rtdetr_r*vd`, `model_type: "rt_detr"`) run on the
# same code: v1 and v2 share the backbone, hybrid encoder, query selection and decoder, and differ only in this
# module. v1 samples the same n points on every level, places them at `b_xy + Δ / n · b_wh · 0.5`
# (`sampling_locations_v1`: Deformable DETR's literal 0.5), has no `n_points_scale` buffer, and samples bilinearly
# only. (a), (b) and (c) above are what v2 adds; with equal counts and an offset scale of 0.5, v1 and v2 compute the
# same sum.

# %% [markdown]
# ## 5. The module on the real decoder
#
# `multiscale_deformable_attention` wraps the core in the four linear layers of the module: `value_proj` (W'_m,
# applied once to all Nv memory tokens), `sampling_offsets` (query → M·K·2 raw offsets), `attention_weights`
# (query → M·K logits, softmax per head), and `output_proj` (W_m, on the concatenated heads).
#
# In decoder layer 0 its query is the decoder state after self-attention plus the position embedding of the
# reference box; its reference boxes are query selection's. We rebuild that input from the trace and recompute the
# sampling locations and attention weights the model recorded (`decoder.0.sampling_locations`,
# `decoder.0.attention_weights`).

# %%
from rtdetrv2_np.model.nn import layer_norm, linear, mlp, multi_head_attention, softmax

dec = m["decoder"]
layer = dec["layers"][0]
target, ref = stages["target"], stages["reference_boxes"]            # [B, Nq, C], [B, Nq, 4]
pos = mlp(ref, dec["query_pos_head"]["layers"])                      # [B, Nq, C] position embedding of the box
x = layer_norm(target + multi_head_attention(target + pos, target, layer["self_attn"], cfg.decoder_attention_heads),
               layer["self_attn_layer_norm"])                        # [B, Nq, C] after self-attention
query = x + pos
B, Nq, C = query.shape
M, K = cfg.decoder_attention_heads, sum(cfg.n_points)
ea = layer["encoder_attn"]
offsets = linear(query, ea["sampling_offsets"]).reshape(B, Nq, M, K, 2)         # [B, Nq, M, K, 2]
A = softmax(linear(query, ea["attention_weights"]).reshape(B, Nq, M, K), -1)    # [B, Nq, M, K]
loc = ref[:, :, None, None, :2] + offsets * ea["n_points_scale"][:, None] * ref[:, :, None, None, 2:] * f32(0.5)
check("decoder.0.sampling_locations", loc, stages["decoder.0.sampling_locations"], atol=1e-5)
check("decoder.0.attention_weights", A, stages["decoder.0.attention_weights"], atol=1e-5)

out, loc_pkg, A_pkg = multiscale_deformable_attention(ea, query, ref, stages["memory"], spatial_shapes, M,
                                                      cfg.n_points, cfg.decoder_offset_scale, cfg.method)
value = linear(stages["memory"], ea["value_proj"]).reshape(B, -1, M, C // M)    # [B, Nv, M, D]
mine = linear(deformable_attention_core(value, spatial_shapes, loc, A, cfg.n_points), ea["output_proj"])
check("multiscale_deformable_attention output", mine, out, atol=1e-4)

# %% [markdown]
# Where the best-scoring query of the final layer samples in layer 0 and in the last layer. Each panel is one head;
# marker shape is the level, colour and size the attention weight; the dashed box is the reference box the layer
# received. With trained weights the heads spread over the object and its edges, and different heads prefer
# different levels.

# %%
best = int(stages["logits"][0].max(-1).argmax())
plotting.plot_sampling_locations(pixel_values, stages, layer=0, query=best, **NOTE)

# %%
last = cfg.num_decoder_layers_used - 1
plotting.plot_sampling_locations(pixel_values, stages, layer=last, query=best, **NOTE)

# %% [markdown]
# ## The cost
#
# Per query and head, deformable attention reads K = 12 points instead of Nv = 8400 tokens: the sum costs
# O(Nq·M·K·D) instead of O(Nq·Nv·C), and no Nq × Nv attention matrix exists.

# %%
Nv = stages["memory"].shape[1]
print(f"full cross-attention: {Nq} x {Nv} x {C} = {Nq * Nv * C / 1e6:.0f} M multiply-adds for the weighted sum")
print(f"deformable:           {Nq} x {M} x {K} x {C // M} x 4 taps = {Nq * M * K * (C // M) * 4 / 1e6:.1f} M")

# %% [markdown]
# ## Summary
#
# * Bilinear sampling (grid_sample, align_corners=False): texel centres at (i + 0.5)/W, four neighbours, zero
#   padding without renormalisation.
# * Eq. 3: per head, one softmax over all (level, point) slots; points in normalised coordinates shared by all
#   levels; locations = box centre + offset · (1/K_l) · box size · 0.5.
# * RT-DETRv2 adds per-level point counts (level-major, `n_points_scale`), a configurable offset scale, and the
#   discrete operator: one texel, trunc(x·W + 0.5) clamped — half a texel shifted from bilinear, no padding.
#
# ## Exercises
#
# 1. In the toy of §3, move one point exactly onto a texel centre of level 1. Which term of the sum changes when you
#    switch to `method="discrete"`?
# 2. Show that the bilinear weights of §1 always sum to 1 inside the map, and find the region of the map where
#    they sum to less than 1.
# 3. Set `n_points = [4, 4, 4]` and compare the share of attention each level gets (`plot_sampling_locations`
#    prints it per head) for a small and a large object in the trained model.
# 4. Write `sample_discrete` so that it matches bilinear's convention (`floor(u)` instead of `trunc(u + 0.5)`).
#    How much do the decoder's boxes move compared with the half-texel version?
# 5. Run `multiscale_deformable_attention` with offset_scale 1.0 instead of 0.5. What happens to the sampling
#    locations relative to the reference box?

# %%
print(f"notebook ran in {time.time() - T0:.1f} s")

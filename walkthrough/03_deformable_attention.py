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
# *Estimated reading time: 60 minutes (running it: under a minute on 2 CPU cores).*
#
# **Learning goals.** After this notebook you can
# 1. read a feature map at a continuous point by bilinear interpolation, by hand, with grid_sample's pixel-centre
#    convention and zero padding, and translate the package's normalised locations into grid_sample's grid;
# 2. compute deformable attention for one query, one head, one level: sampling locations from a reference box,
#    a softmax over the points, a weighted sum ([2] Eq. 2);
# 3. extend it to several levels and heads — the multi-scale sum of Deformable DETR ([2] **Eq. 3**) — and match the
#    package's vectorized `deformable_attention_core` and its loop oracle;
# 4. name the two decoder changes of RT-DETRv2 — a distinct number of points per level and the discrete sampling
#    operator ([3] **§2.1**) — and explain why a discrete model is fine-tuned rather than trained through rounding;
# 5. compare where a trained model samples with where training starts (the sampling-offset initialisation);
# 6. count the cost of one deformable-attention layer, value projection included.
#
# **Paper references.**
# [2] Zhu et al., *Deformable DETR*, arXiv 2010.04159v4: §3, **Eq. 2** (deformable attention) and **Eq. 3**
# (multi-scale deformable attention); **App. A.4** (offsets scaled by the reference box's size; initialisation).
# [3] Lv et al., *RT-DETRv2*, arXiv 2407.17140v1: **§2.1** (framework: a distinct number of sampling points per
# scale, the discrete sampling operator), §2.2 (training), ablations in **§3.4, Table 3** (points) and **Table 4**
# (discrete sampling). The report has no figures. Versions and sections of every paper cited:
# `walkthrough/paper_pointers.md`.
# [1] Lv et al., *RT-DETR* (DETRs Beat YOLOs on Real-time Object Detection), arXiv 2304.08069v3: §4.1 (the decoder
# uses deformable cross-attention).
# PyTorch `grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False)`, the operator the bilinear path
# reproduces.
#
# **The model.** Every weight-dependent figure uses the demo detector shipped with the package,
# `rtdetrv2_np.load_model("demo")`: a small RT-DETRv2 (4 heads, 3 levels × 4 points, 3 decoder layers, 100 queries)
# trained on the generated 256 × 256 shapes scenes of `rtdetrv2_np/demo/shapes.py` (disc, square, triangle, star),
# whose ground truth we can draw for any scene. Numbers about the trained model are measured in the cells below,
# never typed into the text: they change whenever the shipped weights do.
#
# Code: `rtdetrv2_np/model/deformable_attention.py` — `sample_bilinear`, `sample_discrete`, `sampling_locations`,
# `deformable_attention_core` (vectorized), `deformable_attention_core_loop` (the scalar definition),
# `multiscale_deformable_attention` (the module).

# %%
# %matplotlib inline
import json
import time
from pathlib import Path

import numpy as np

import rtdetrv2_np
from rtdetrv2_np import plotting
from rtdetrv2_np.demo.shapes import EVAL_SEED, make_scene
from rtdetrv2_np.model.deformable_attention import (bilinear_taps, deformable_attention_core,
                                                    deformable_attention_core_loop, discrete_texel,
                                                    multiscale_deformable_attention, sample_bilinear,
                                                    sample_discrete, sampling_locations)
from rtdetrv2_np.preprocess import preprocess

T0 = time.time()
model, _ = plotting.teaching_model()           # load_model("demo"): the shipped demo detector, no download
print(plotting.weights_stamp(model))
cfg = model.config
S = model.input_size[0]                                  # 256: the demo model's input side
print("input", model.input_size, "| labels", model.id2label)
rng = np.random.default_rng(0)
f32 = np.float32


def check(name, mine, package, atol=0.0):
    """The walkthrough's equality check: print the largest difference, fail if it exceeds atol."""
    diff = float(np.abs(np.asarray(mine, np.float64) - np.asarray(package, np.float64)).max())
    print(f"{'OK' if diff <= atol else 'NOT OK'} {name}: max |by hand - package| = {diff:.3g}")
    assert diff <= atol, name


def scene(index):
    """Held-out scene `index` (never seen in training): the image, pixel values [1, 3, S, S], ground-truth boxes
    [G, 4] (x0, y0, x1, y1) in pixels and labels [G]."""
    image, objects = make_scene(EVAL_SEED, index)
    import PIL.Image
    pixel_values, _ = preprocess(PIL.Image.fromarray(image), size=model.input_size)
    return (image, pixel_values, np.array([o["box"] for o in objects], np.float64).reshape(-1, 4),
            np.array([o["label"] for o in objects]))

# %% [markdown]
# ## Why deformable attention
#
# In DETR every object query attends to every token of the encoder memory: 300 queries × 8400 tokens × 8 heads
# for RT-DETR r18vd at 640×640 (100 × 1344 × 4 for the demo model at 256×256), and slow to train because each
# query starts out looking everywhere. Deformable attention ([2] §3) lets each query look at a **handful of
# points** it chooses itself, around a **reference box**: the query predicts where (offsets) and how much each
# point counts (attention weights), and the feature at each point is read off the map by interpolation.
# RT-DETRv2 r18vd's decoder uses 8 heads × 3 levels × 4 points = 96 samples per query, instead of 8 × 8400 (the
# demo model: 4 heads × 3 levels × 4 points = 48, instead of 4 × 1344).
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
# **The bridge to PyTorch.** `grid_sample` does not take locations in [0, 1]: it takes a *grid* in [−1, 1], −1 the
# left edge of the left texel and +1 the right edge of the right texel (`align_corners=False`). The official code
# and transformers pass `grid = 2·loc − 1`, and grid_sample turns it back into texel coordinates with
# `ix = ((g + 1)·W − 1) / 2`, which is `loc·W − 0.5`, the `ix` we used above. In PyTorch, for one level
# (value `[N, D, H, W]`, locations `[N, Q, P, 2]`):
#
# ```python
# out = F.grid_sample(value, 2 * loc - 1, mode="bilinear", padding_mode="zeros", align_corners=False)
# ```
#
# The package's `bilinear_taps` follows that road literally (grid, then ix); check it against our `ix`:

# %%
g = 2 * np.array([x, y], np.float64) - 1                            # grid_sample's grid in [-1, 1]
ix_torch = ((g[0] + 1) * W - 1) / 2                                  # what grid_sample computes from it
iy_torch = ((g[1] + 1) * H - 1) / 2
print(f"grid {g}, ix = {ix_torch:.4f}, iy = {iy_torch:.4f}")
check("grid_sample's ix, iy = loc * size - 0.5", [ix_torch, iy_torch], [x * W - 0.5, y * H - 0.5], atol=1e-6)
taps_pkg = bilinear_taps(np.float64(x), np.float64(y), H, W)         # [(column, row, weight)] nw, ne, sw, se
check("bilinear_taps weights", [w_ for _, _, w_ in taps_pkg], list(taps.values()), atol=1e-6)

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
# box ([2] App. A.4): `loc = b_xy + Δ · (1/K) · b_wh · 0.5`. A raw offset of ±K reaches the box's edge.

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
# ## 4. What RT-DETRv2 changes ([3] §2.1)
#
# The report lists two changes to the decoder (and two to training, §2.2: dynamic data augmentation and
# scale-adaptive hyperparameters, which are not part of an inference implementation).
#
# **(a) A distinct number of points per level.** Deformable DETR uses the same K on every level. RT-DETRv2 lets
# K_l differ (the toy above used 2, 3, 1), so a model can spend its samples where they help ([3] §3.4, Table 3 is
# the ablation); the offset of a point on level l is divided by its own K_l. The checkpoint stores the 1/K_l
# factors as a buffer `n_points_scale`, level-major. The demo model, like the released ones, uses 4 points on
# each of the 3 levels:

# %%
ea0 = model.params["model"]["decoder"]["layers"][0]["encoder_attn"]
print("n_points per level:", cfg.n_points, "| heads:", cfg.decoder_attention_heads,
      "| n_points_scale:", ea0["n_points_scale"])

# %% [markdown]
# **Not a change: the offset scale.** `loc = b_xy + Δ · (1/K_l) · b_wh · offset_scale`. Deformable DETR's code
# hard-codes the 0.5 ([2] App. A.4); v2's code makes it a configurable constant (`decoder_offset_scale`, 0.5 in
# every released model). The report does not list it as a change. With 0.5, a raw offset of ±K_l moves a point
# from the box centre to the box edge:

# %%
box = np.array([[[0.5, 0.5, 0.2, 0.4]]], f32)                        # [B, Nq, 4] (cx, cy, w, h)
raw = np.array([[[[[4, 0], [0, 4], [-4, -4], [2, 0]]]]], f32)        # [B, Nq, M=1, K=4, 2], one level, K_l = 4
print(sampling_locations(box, raw, n_points=[4])[0, 0, 0])           # right edge, bottom edge, top-left corner, halfway

# %% [markdown]
# **(b) The discrete sampling operator.** `grid_sample` is awkward to export to some deployment runtimes. RT-DETRv2
# offers `method="discrete"` (the `*_dsp` models): instead of mixing four texels, take **one**, texel
# `trunc(u + 0.5)` with u = x·W, clamped into the map. Two consequences, both visible in the figure of §1:
#
# * texel i is picked for u ∈ [i − 0.5, i + 0.5): the operator places texel i at u = i, **half a texel** left of
#   (and above) bilinear's centre i + 0.5. It is *not* "the nearest texel": the nearest texel centre to u is
#   floor(u). A point exactly on a texel centre picks the next texel.
# * there is no zero padding: a point outside the map reads the nearest border texel at full weight.
#
# By hand, on the same 4 × 5 map as in §1 (the package's `discrete_texel` is this rule for one point):

# %%
value = (np.arange(20, dtype=f32).reshape(4, 5) % 7)
pts = np.array([[0.33, 0.4], [0.97, 0.1], [0.5, 0.875], [-0.3, 1.4]], f32)   # the last one is outside the map
by_hand = []
for x, y in pts:
    col = min(max(int(x * 5 + f32(0.5)), 0), 4)                      # int() truncates toward zero, like torch's cast
    row = min(max(int(y * 4 + f32(0.5)), 0), 3)
    assert (col, row) == discrete_texel(x, y, 4, 5)
    by_hand.append(value[row, col])
    print(f"({x:+.3f}, {y:+.3f}) -> u = {x * 5:+.2f}, v = {y * 4:+.2f} -> texel (col {col}, row {row}) = "
          f"{value[row, col]:.0f}   (nearest centre: col {min(max(int(np.floor(x * 5)), 0), 4)})")
check("discrete sampling", by_hand, sample_discrete(value[None, :, :, None], pts[None])[0, :, 0])
print("bilinear at the same points:", sample_bilinear(value[None, :, :, None], pts[None])[0, :, 0])

# %% [markdown]
# **A 1-D sweep.** Read a ramp of 6 texels (texel i holds i + 1) at every u. Bilinear gives a straight line through
# the texel centres (fading to 0 outside the map: zero padding); discrete gives a staircase whose treads are centred
# on whole u, half a texel left of the centres, so it runs on average half a texel "ahead" of the line:

# %%
plotting.plot_sampling_ramp(width=6)

# %% [markdown]
# The same sweep by hand: inside the map, bilinear = u + 0.5 and discrete = trunc(u + 0.5) + 1, so
# discrete(u) − bilinear(u) = trunc(u + 0.5) − u + 0.5 lies in (0, 1] with mean 0.5:

# %%
Wr = 6
u = np.linspace(0.5, Wr - 0.5, 501)                                  # between the first and the last centre
ramp = np.arange(1, Wr + 1, dtype=np.float64).reshape(1, 1, Wr, 1)   # [1, H=1, W, 1]
loc_r = np.stack([u / Wr, np.full_like(u, 0.5)], -1)[None]           # [1, P, 2]
check("bilinear on the ramp = u + 0.5", u + 0.5, sample_bilinear(ramp, loc_r)[0, :, 0], atol=1e-12)
check("discrete on the ramp = trunc(u + 0.5) + 1", np.minimum(np.trunc(u + 0.5), Wr - 1) + 1,
      sample_discrete(ramp, loc_r)[0, :, 0])
gap = sample_discrete(ramp, loc_r)[0, :, 0] - sample_bilinear(ramp, loc_r)[0, :, 0]
print(f"discrete - bilinear: min {gap.min():.3f}, max {gap.max():.3f}, mean {gap.mean():.3f} (texel values)")

# %% [markdown]
# Why truncation and not floor: `(u + 0.5).to(int64)` truncates toward zero, so any u + 0.5 in (−1, 0) becomes 0
# too; after the clamp the result is the same as a floor would give. (The official code clamps x to H − 1 rather
# than W − 1 — "FIX ME? for rectangle input"; the package follows transformers, which clamps each axis by its own
# size. They agree on square maps.)
#
# **Training through rounding.** The sampled value is a step function of the location: moving a point by less than
# a texel changes nothing, and at a step it jumps. So the derivative of the output with respect to the sampling
# location — and through it to the `sampling_offsets` weights — is 0 almost everywhere (and undefined at the steps).
# Bilinear sampling has a non-zero derivative everywhere between centres; that is what trains the offsets. A finite
# difference on the ramp shows it:

# %%
eps = 1e-3
for u0 in (1.2, 2.7, 3.9):
    l0, l1 = np.array([[[u0 / Wr, 0.5]]]), np.array([[[(u0 + eps) / Wr, 0.5]]])
    d_bil = (sample_bilinear(ramp, l1) - sample_bilinear(ramp, l0))[0, 0, 0] / eps
    d_dis = (sample_discrete(ramp, l1) - sample_discrete(ramp, l0))[0, 0, 0] / eps
    print(f"u = {u0}: d(value)/du bilinear {d_bil:.3f}, discrete {d_dis:.3f}")

# %% [markdown]
# Hence RT-DETRv2's recipe ([3] §2.1; §3.1: 6× schedule with grid_sample, then 1× with discrete sampling): train
# with grid_sample, then fine-tune with discrete sampling while the gradient of `sampling_offsets` is switched
# off — the official decoder's `MSDeformableAttention` sets
# `requires_grad = False` on that layer when its method is "discrete". Where each point looks stays as bilinear
# training left it (up to the half-texel shift the operator itself adds). What the fine-tune can adapt is
# everything else: the attention weights that mix the points, the value and output projections, and every layer
# before and after (backbone, encoder, query selection, FFNs, heads).
#
# The shipped AP table (`rtdetrv2_np/demo/models/metrics.json`, written when the weights were shipped; COCO box AP
# on the held-out scenes) shows what each model gives with each operator — [3] §3.4 Table 4 in miniature. A
# fine-tuned `demo-discrete` row appears once that model is shipped:

# %%
METRICS = Path(rtdetrv2_np.__file__).parent / "demo" / "models" / "metrics.json"
metrics = json.loads(METRICS.read_text())
print(f"{'model':<16}{'sampled with':<14}{'AP':>7}{'AP50':>7}{'AP75':>7}   (eval set: {metrics['eval_count']} "
      f"scenes, seed {metrics['eval_seed']})")
for name, entry in metrics.items():
    if isinstance(entry, dict) and "ap" in entry:
        for method, r in entry["ap"].items():
            full = r.get("full") or r["subset"]                   # the whole eval set where it was measured
            print(f"{name:<16}{method:<14}{full['AP']:7.3f}{full['AP50']:7.3f}{full['AP75']:7.3f}")

# %% [markdown]
# Swapping the operator in the *same* (bilinear-trained) decoder, on one held-out scene: how far do the final boxes
# move? (Corners (x0, y0, x1, y1) in pixels of the 256 × 256 input, for the 10 highest-scoring queries.)

# %%
from dataclasses import replace

from rtdetrv2_np.model.decoder import decoder
from rtdetrv2_np.postprocess import center_to_corners

image, pixel_values, gt_boxes, gt_labels = scene(0)
stages = model.trace(pixel_values)                                   # one forward pass (bilinear)
spatial_shapes = [tuple(stages[f"encoder.output.{l}"].shape[2:]) for l in range(3)]
m = model.params["model"]
_, boxes_discrete = decoder(stages["target"], stages["reference_boxes"], stages["memory"], spatial_shapes,
                            m["decoder"], replace(cfg, decoder_method="discrete"))
top10 = np.argsort(-stages["logits"][0].max(-1))[:10]
corner_shift = np.abs(center_to_corners(boxes_discrete[0, top10]) - center_to_corners(stages["pred_boxes"][0, top10]))
print(f"bilinear -> discrete, top-10 queries: corners move by a median {np.median(corner_shift) * S:.1f} px, "
      f"max {corner_shift.max() * S:.1f} px")

# %% [markdown]
# **RT-DETR v1, for comparison.** The v1 checkpoints (`PekingU/rtdetr_r*vd`, `model_type: "rt_detr"`) run on the
# same code: v1 and v2 share the backbone, hybrid encoder, query selection and decoder, and differ only in this
# module. v1 samples the same n points on every level, places them at `b_xy + Δ / n · b_wh · 0.5`
# (`sampling_locations_v1`: Deformable DETR's literal 0.5), has no `n_points_scale` buffer, and samples bilinearly
# only. With equal counts per level, v1 and v2 compute the same sum.

# %% [markdown]
# ## 5. The module on the real decoder
#
# `multiscale_deformable_attention` wraps the core in the four linear layers of the module: `value_proj` (W'_m,
# applied once to all Nv memory tokens), `sampling_offsets` (query → M·K·2 raw offsets), `attention_weights`
# (query → M·K logits, softmax per head), and `output_proj` (W_m, on the concatenated heads).
#
# In decoder layer 0 its query is the decoder state after self-attention plus the position embedding of the
# reference box; its reference boxes are query selection's. We rebuild that input from the trace of the scene
# above and recompute the sampling locations and attention weights the model recorded
# (`decoder.0.sampling_locations`, `decoder.0.attention_weights`).

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
# ## 6. Where training starts, and where it ends
#
# **The initialisation** ([2] App. A.4; transformers 5.24 `RTDetrV2PreTrainedModel._init_weights`; the official
# v2 decoder's `MSDeformableAttention._reset_parameters`, which counts k = 1 … K_l on each level separately; the
# two agree when every level has the same K_l): the `sampling_offsets` layer starts with zero weights, so every query
# gets the same raw offsets, its bias. Head m points in direction θ_m = 2πm/M, the direction is scaled so that its
# larger coordinate is ±1 (a square, not a circle), and point k of each level (k = 1 … K_l) sits at k times that
# direction. With the 1/K_l · wh · 0.5 scaling of §4, point K_l of every head lands on the edge of the reference
# box: each head is a ray of points from the centre to the box edge. The attention weights start at zero weight and
# bias, so all points weigh the same. Our NumPy version of that bias:

# %%
def sampling_offsets_init(M, n_points):
    """The initial sampling_offsets bias [M, sum(n_points), 2], level-major: head m's unit direction
    (cos, sin)(2*pi*m/M) divided by its larger |coordinate|, times k = 1..K_l for the K_l points of each level."""
    theta = np.arange(M) * (2 * np.pi / M)                                       # [M]
    direction = np.stack([np.cos(theta), np.sin(theta)], -1)                     # [M, 2]
    direction /= np.abs(direction).max(-1, keepdims=True)                        # [M, 2] on the unit square
    k = np.concatenate([np.arange(1, K_l + 1) for K_l in n_points])              # [K] 1..K_l per level
    return (direction[:, None, :] * k[None, :, None]).astype(f32)                # [M, K, 2]


bias0 = sampling_offsets_init(M, cfg.n_points)
ref_box = stages["decoder.1.boxes"][0, top10[0]]                    # the reference box layer 2 receives
loc_init = sampling_locations(ref_box[None, None], bias0[None, None], n_points=cfg.n_points)[0, 0]   # [M, K, 2]
# check: the last point of every head and level lies on the box edge (|offset| = half the box in one coordinate)
last = np.cumsum(cfg.n_points) - 1
reach = np.abs(loc_init[:, last] - ref_box[:2]) / (ref_box[2:] / 2)            # [M, L, 2] in half-box units
check("last initial point of each ray on the box edge", reach.max(-1), np.ones_like(reach.max(-1)), atol=1e-5)

# the same through the package's module: zero weights, our bias -> the module's sampling locations
ea_init = dict(ea, sampling_offsets=dict(weight=np.zeros_like(ea["sampling_offsets"]["weight"]),
                                         bias=bias0.reshape(-1)),
               attention_weights=dict(weight=np.zeros_like(ea["attention_weights"]["weight"]),
                                      bias=np.zeros_like(ea["attention_weights"]["bias"])))
_, loc_mod, A_mod = multiscale_deformable_attention(ea_init, query[:, :1], ref_box[None, None], stages["memory"],
                                                    spatial_shapes, M, cfg.n_points, cfg.decoder_offset_scale)
check("initial pattern through multiscale_deformable_attention", loc_init, loc_mod[0, 0], atol=1e-6)
check("initial attention weights = 1 / (L*K_l) per head", A_mod[0, 0], np.full((M, K), 1 / K), atol=1e-7)

# %% [markdown]
# The same reference box (thick, black and yellow) with the initial pattern and with what the trained model does
# for the highest-scoring query of this scene in its last layer (marker area = attention weight; dotted: the
# image's border). In the initial pattern the three levels' points coincide (the same normalised location on
# each map), so each marker hides two others:

# %%
last_layer = cfg.num_decoder_layers_used - 1
q = int(top10[0])
plotting.plot_sampling_patterns(
    image, ref_box, [("initialisation: a ray per head, equal weights", loc_init, None),
                     (f"trained demo model, layer {last_layer}, query {q}",
                      stages[f"decoder.{last_layer}.sampling_locations"][0, q],
                      stages[f"decoder.{last_layer}.attention_weights"][0, q])],
    cfg.n_points, title="sampling points of one query: where training starts and where it ended")

# %% [markdown]
# The full panel view per head, with colour = attention weight and the level share of each head in its title:

# %%
plotting.plot_sampling_locations(pixel_values, stages, layer=last_layer, query=q)

# %% [markdown]
# **What does the trained model look at?** One picture proves little. Over 16 held-out scenes, for every object
# that some query finds (final box IoU ≥ 0.5), take that query's last-layer sampling points and measure each point's
# distance to the *ground-truth* box's outline (its four edges). Compare the strongest points (the top 8 of 48 by
# attention weight) with all 48 and with the initial pattern placed on the same reference box:

# %%
from rtdetrv2_np.detect import box_iou


def outline_distance(points, box):
    """Distance in pixels from points [P, 2] to the outline of box (x0, y0, x1, y1) (inside or outside)."""
    x0, y0, x1, y1 = box
    dx = np.maximum(np.maximum(x0 - points[:, 0], points[:, 0] - x1), 0)
    dy = np.maximum(np.maximum(y0 - points[:, 1], points[:, 1] - y1), 0)
    outside = np.hypot(dx, dy)
    inside = np.minimum.reduce([points[:, 0] - x0, x1 - points[:, 0], points[:, 1] - y0, y1 - points[:, 1]])
    return np.where((dx > 0) | (dy > 0), outside, np.abs(inside))


TOL = 4.0                  # px: half a texel of the finest level (stride 8 at 256 x 256)
near = {"trained, top 8 by weight": [], "trained, all 48": [], "initialisation, all 48": []}
n_found = 0
for i in range(16):
    img_i, pv_i, gt_i, _ = scene(i)
    st = model.trace(pv_i)
    final = center_to_corners(st["pred_boxes"][0]) * S                 # [Nq, 4] pixels
    iou = box_iou(final, gt_i)                                         # [Nq, G]
    for g in range(len(gt_i)):
        qq = int(iou[:, g].argmax())
        if iou[qq, g] < 0.5:
            continue
        n_found += 1
        pts = st[f"decoder.{last_layer}.sampling_locations"][0, qq].reshape(-1, 2) * S     # [M*K, 2]
        w_ = st[f"decoder.{last_layer}.attention_weights"][0, qq].reshape(-1)              # [M*K]
        rb = st[f"decoder.{last_layer - 1}.boxes"][0, qq]
        init = sampling_locations(rb[None, None], bias0[None, None], n_points=cfg.n_points)[0, 0].reshape(-1, 2) * S
        d = outline_distance(pts, gt_i[g])
        near["trained, top 8 by weight"] += list(d[np.argsort(-w_)[:8]] <= TOL)
        near["trained, all 48"] += list(d <= TOL)
        near["initialisation, all 48"] += list(outline_distance(init, gt_i[g]) <= TOL)
print(f"{n_found} objects found; share of sampling points within {TOL:.0f} px of the object's outline:")
for k_, v_ in near.items():
    print(f"  {k_:<26} {np.mean(v_):.2f}")

# %% [markdown]
# Read the numbers, not a hope: if the trained share is higher than the initial one, training moved the strongest
# points toward the object's outline, which is where a box's coordinates are decided; if it is not, this model
# found another way. The ray pattern puts only its last point on the reference box's edge, so its share depends
# mostly on how close the reference box already is to the object.
#
# ## 7. The cost of one layer
#
# Per query and head, deformable attention reads K = Σ K_l points instead of all Nv tokens: the weighted sum costs
# Nq·M·K·D multiply-adds per tap (4 taps for bilinear, 1 for discrete) instead of Nq·Nv·C, and no Nq × Nv matrix
# exists. But the module is more than the sum. Counted in multiply-adds (MACs) from the config alone:
#
# | part | MACs |
# |---|---|
# | `value_proj` on every memory token | Nv · C · C |
# | `sampling_offsets`, `attention_weights` | Nq · C · M·K·2, Nq · C · M·K |
# | sampling + weighted sum (bilinear) | Nq · M · K · D · 4 (D = C / M) |
# | `output_proj` | Nq · C · C |

# %%
def msda_macs(Nv, Nq, C, M, K, taps=4):
    """Multiply-adds of one multi-scale deformable-attention module (biases, softmax and index arithmetic left out)."""
    return {"value_proj": Nv * C * C, "sampling_offsets": Nq * C * M * K * 2, "attention_weights": Nq * C * M * K,
            "sampling + sum": Nq * M * K * (C // M) * taps, "output_proj": Nq * C * C}


from rtdetrv2_np.model.config import variant_config

r18 = variant_config("r18vd")
rows = {"demo 256x256": (sum(h * w for h, w in spatial_shapes), cfg.num_queries, cfg.d_model,
                         cfg.decoder_attention_heads, sum(cfg.n_points)),
        "r18vd 640x640": (sum((640 // s) ** 2 for s in (8, 16, 32)), r18.num_queries, r18.d_model,
                          r18.decoder_attention_heads, sum(r18.n_points))}
for name, (Nv_, Nq_, C_, M_, K_) in rows.items():
    macs = msda_macs(Nv_, Nq_, C_, M_, K_)
    total = sum(macs.values())
    print(f"{name}: Nv={Nv_}, Nq={Nq_}, C={C_}, M={M_}, K={K_}: {total / 1e6:.2f} M MACs per layer; " +
          ", ".join(f"{k_} {v_ / total:.0%}" for k_, v_ in macs.items()))
    print(f"   dense cross-attention would add Nq*Nv*C twice (scores, weighted sum): "
          f"{2 * Nq_ * Nv_ * C_ / 1e6:.1f} M on top of the same value projection")

# %% [markdown]
# Check the linear-layer terms against the matrix products the module really runs: wrap the `linear` it calls,
# record every product's shape (rows × out × in), and run it on the demo model's layer 0:

# %%
import rtdetrv2_np.model.deformable_attention as da

products = []
_linear = da.linear
da.linear = lambda x_, p_: (products.append((int(np.prod(x_.shape[:-1])), *p_["weight"].shape)), _linear(x_, p_))[1]
try:
    multiscale_deformable_attention(ea, query, ref, stages["memory"], spatial_shapes, M, cfg.n_points)
finally:
    da.linear = _linear
for r_, o_, i_ in products:
    print(f"  [{r_} x {i_}] @ [{i_} x {o_}]  ->  {r_ * o_ * i_ / 1e6:.3f} M MACs")
counted = msda_macs(*rows["demo 256x256"])
check("MACs of the recorded products = the formula's linear terms", sum(r_ * o_ * i_ for r_, o_, i_ in products),
      sum(v_ for k_, v_ in counted.items() if k_ != "sampling + sum"))

# %% [markdown]
# `value_proj` dominates: it runs over all Nv tokens, while everything else runs over the Nq queries. It is also a
# cost dense cross-attention pays (as its value projection), so the saving of deformable attention is the Nq × Nv
# score and sum terms, not the whole layer. (The value projection depends only on the memory, so an implementation
# may compute it once per layer and image; it cannot be shared between layers, which have their own weights.)
#
# ## Summary
#
# * Bilinear sampling (grid_sample, align_corners=False, `grid = 2·loc − 1`): texel centres at (i + 0.5)/W, four
#   neighbours, zero padding without renormalisation.
# * Eq. 3: per head, one softmax over all (level, point) slots; points in normalised coordinates shared by all
#   levels; locations = box centre + offset · (1/K_l) · box size · 0.5.
# * RT-DETRv2 adds per-level point counts (level-major, `n_points_scale`) and the discrete operator: one texel,
#   trunc(x·W + 0.5) clamped — half a texel shifted from bilinear, no padding, no gradient for the offsets, hence a
#   fine-tune with frozen offsets.
# * Training starts from one ray of points per head, reaching the reference box's edge; the cells above measure
#   where the trained demo model's strongest points ended up.
# * Cost: value_proj over all Nv tokens dominates the module.
#
# ## Exercises
#
# Solutions: `walkthrough/solutions/03_deformable_attention.py` (each computes the answer and checks it against
# the package).
#
# 1. In the toy of §3, put one point of level 1 exactly on a texel centre and switch to `method="discrete"`. Which
#    texel does it read, and does the output of that head change? (Compare with a point a quarter texel to the left.)
# 2. Show that the bilinear weights of §1 always sum to 1 when all four neighbours are inside the map, and find the
#    region of normalised (x, y) where they sum to less than 1 on a 4 × 5 map.
# 3. For the demo model, measure each level's share of the attention in the last decoder layer, for found objects
#    smaller and larger than 32 px (the square root of the box area), over the first 16 held-out scenes.
# 4. Write a discrete sampler with bilinear's convention (texel floor(u), the nearest centre) and run the demo
#    decoder with it on scene 0. How far do the top-10 boxes move compared with the half-texel version?
# 5. Run `multiscale_deformable_attention` with offset_scale 1.0 instead of 0.5. How do the sampling locations move
#    relative to the reference box?
# 6. Count the MACs of one deformable-attention layer for r50vd at 640 × 640 (`variant_config("r50vd")`) and the
#    share of value_proj.

# %%
print(f"notebook ran in {time.time() - T0:.1f} s")

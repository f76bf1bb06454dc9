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
# # 01 · The ResNet-vd backbone
#
# *Estimated reading time: 25 minutes (running it: under a minute on 2 CPU cores).*
#
# **Learning goals.** After this notebook you can
# 1. compute a convolution as one matrix product (im2col) and check it against a loop over output pixels;
# 2. fold an eval-mode BatchNorm into a per-channel scale and shift;
# 3. say what the three "vd" tweaks change in a ResNet (deep stem, average-pool shortcut, stride on the 3×3);
# 4. run the backbone block by block and get exactly the package's three feature maps, strides 8, 16, 32.
#
# **Paper references.**
# [1] RT-DETR, arXiv 2304.08069v3, **§4.1** (backbone: ResNet, the last three stages S3, S4, S5 feed the encoder)
# and **Fig. 4** (the overview).
# [6] He et al., *Deep Residual Learning*, arXiv 1512.03385v1, §3.2, Eq. 1–2 (y = F(x) + x; a 1×1 projection W_s x
# where the shape changes).
# [7] He et al., *Bag of Tricks for Image Classification*, arXiv 1812.01187v2, **§4.2 and Fig. 2** ("ResNet-B, -C,
# -D": the tweaks RT-DETR calls "vd").
#
# Code: `rtdetrv2_np/model/backbone.py` (all of it: 88 lines), primitives in `rtdetrv2_np/model/nn.py`.

# %%
# %matplotlib inline
import time

import numpy as np

import rtdetrv2_np
from rtdetrv2_np import plotting

T0 = time.time()
model, _ = plotting.teaching_model()          # the shipped demo detector (notebook 00): trained, 256x256 shapes
print(plotting.weights_stamp(model))
rng = np.random.default_rng(0)


def check(name, mine, package, rtol=0.0):
    """The walkthrough's equality check: print the largest difference, absolute and relative to the largest value
    of the package's result (float32 rounding grows with the size of the activations), fail if the relative one
    exceeds rtol."""
    mine, package = np.asarray(mine, np.float64), np.asarray(package, np.float64)
    diff = float(np.abs(mine - package).max())
    rel = diff / max(float(np.abs(package).max()), 1e-30)
    print(f"{'OK' if rel <= rtol else 'NOT OK'} {name}: max |by hand - package| = {diff:.3g} ({rel:.2g} of max |package|)")
    assert rel <= rtol, name

# %% [markdown]
# ## 1. A convolution is a matrix product
#
# `torch.nn.functional.conv2d` with weight `[C_out, C_in, KH, KW]` computes, for every output pixel,
# the dot product of the weight with the `C_in × KH × KW` input patch under it. Written as the definition, on a
# tiny input:

# %%
x = rng.normal(size=(1, 2, 5, 5)).astype(np.float32)           # [B, C_in, H, W]
w = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)           # [C_out, C_in, KH, KW]
stride, pad = 2, 1
xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))        # zero padding
Ho = (5 + 2 * pad - 3) // stride + 1
loop = np.zeros((1, 3, Ho, Ho), np.float32)                     # [B, C_out, Ho, Wo]
for co in range(3):
    for i in range(Ho):
        for j in range(Ho):
            patch = xp[0, :, i * stride:i * stride + 3, j * stride:j * stride + 3]   # [C_in, KH, KW]
            loop[0, co, i, j] = (patch * w[co]).sum()

# %% [markdown]
# The loop is far too slow for real images (millions of output values, each a Python-level dot product).
# **im2col** lays every patch out as one column of a matrix `cols [C_in·KH·KW, Ho·Wo]`; then the whole
# convolution is one BLAS call, `W[C_out, C_in·KH·KW] @ cols`.
# Row `(c, kh, kw)` of `cols` holds the input pixel that kernel tap `(kh, kw)` of channel `c` sees, at every output
# position — a strided slice of the padded input:

# %%
cols = np.stack([xp[0, :, kh:kh + stride * (Ho - 1) + 1:stride, kw:kw + stride * (Ho - 1) + 1:stride]
                 for kh in range(3) for kw in range(3)], axis=1)            # [C_in, KH*KW, Ho, Wo]
im2col = (w.reshape(3, -1) @ cols.reshape(2 * 9, Ho * Ho)).reshape(1, 3, Ho, Ho)

from rtdetrv2_np.model.nn import batch_norm, conv2d, max_pool2d, relu, avg_pool2d_ceil

check("im2col vs loop", im2col, loop, rtol=1e-6)
check("im2col vs nn.conv2d", im2col, conv2d(x, w, stride=2, padding=1), rtol=1e-6)

# %% [markdown]
# (The two differ in the order of the float32 additions, so we allow a relative 1e-6, a few float32 ulps (2^-23 ≈
# 1.2e-7); `nn.conv2d` builds the columns in blocks of output rows to reuse one buffer, otherwise it is this cell.
# Every check in the walkthrough is relative to the size of the result: a wrong formula is off by a share of order
# 1, float32 rounding by a share of order 1e-7.)
#
# ## 2. BatchNorm at inference is a scale and a shift
#
# Every convolution in the backbone has no bias and is followed by BatchNorm with frozen statistics:
# `y = (x − mean) / sqrt(var + eps) · γ + β`. At inference that is `x · scale + shift` per channel, with
# `scale = γ / sqrt(var + 1e-5)` and `shift = β − mean · scale` (eps 1e-5 is PyTorch's default, and the order of
# operations is `FrozenBatchNorm2d`'s).

# %%
bb = model.params["model"]["backbone"]["model"]
stem0 = bb["embedder"]["embedder"][0]                       # the first stem conv: 3 -> C_stem/2 channels, stride 2
bn = stem0["normalization"]
print({k: v.shape for k, v in bn.items()})
y = conv2d(rng.random((1, 3, 8, 8), dtype=np.float32), stem0["convolution"]["weight"], stride=2, padding=1)
scale = bn["weight"] / np.sqrt(bn["running_var"] + np.float32(1e-5))     # [C]
shift = bn["bias"] - bn["running_mean"] * scale                          # [C]
check("BN as scale and shift", y * scale[:, None, None] + shift[:, None, None], batch_norm(y, bn), rtol=1e-6)

# %% [markdown]
# (1 ulp apart: the package multiplies by `1 / sqrt(...)` as `FrozenBatchNorm2d` does; we divided.)
#
# Since both steps are linear per output channel, the package goes one step further and **folds** the BatchNorm
# into the convolution (`nn.conv_bn`, "BN folding"): `BN(conv(x, W)) = conv(x, W · scale) + shift`. One pass over
# the output instead of three; the float32 rounding differs in the last bits.

# %%
from rtdetrv2_np.model.nn import conv_bn

w0 = stem0["convolution"]["weight"]                                      # [C_out, C_in, KH, KW]
x8 = rng.random((1, 3, 8, 8), dtype=np.float32)
s = bn["weight"] * (np.float32(1) / np.sqrt(bn["running_var"] + np.float32(1e-5)))   # [C] FrozenBatchNorm2d's order
folded = conv2d(x8, w0 * s[:, None, None, None], bias=bn["bias"] - bn["running_mean"] * s, stride=2, padding=1)
check("BN folded into the conv", folded, batch_norm(conv2d(x8, w0, stride=2, padding=1), bn), rtol=1e-6)
check("... which is nn.conv_bn", folded, conv_bn(x8, w0, bn, stride=2, padding=1))

# %% [markdown]
# ## 3. What "vd" changes ([7] §4.2, Fig. 2)
#
# A plain ResNet-18 starts with one 7×7 stride-2 convolution, and its down-sampling shortcut is a 1×1 convolution
# with stride 2 — which simply ignores three of every four input pixels. The "vd" variant changes both:
#
# * **deep stem (ResNet-C):** three 3×3 convolutions, the first with stride 2 (r18vd: 3 → 32 → 32 → 64 channels;
#   the demo model is narrower: the cell below prints its widths); then a 3×3 max-pool with stride 2. Output
#   stride 4.
# * **average-pool shortcut (ResNet-D):** where a block halves the resolution, the shortcut first averages 2×2
#   blocks (`AvgPool2d(2, 2, ceil_mode=True)`), then applies a 1×1 convolution with stride 1. No pixel is skipped.
# * **stride on the 3×3 (ResNet-B):** in bottleneck blocks (r50, r101) the stride sits on the 3×3 convolution,
#   not on the first 1×1. (r18 and r34 use *basic* blocks: two 3×3 convolutions.)
#
# Let us run the stem by hand on a small input (64×64, so every step is quick), using the package's primitives and
# the demo model's trained weights:

# %%
x = rng.random((1, 3, 64, 64), dtype=np.float32)                     # [B, 3, H, W], a stand-in image


def conv_bn(x, p, stride=1, act=True):
    """conv (padding k//2, no bias) -> BatchNorm -> ReLU: RTDetrResNetConvLayer."""
    k = p["convolution"]["weight"].shape[-1]
    y = batch_norm(conv2d(x, p["convolution"]["weight"], stride=stride, padding=k // 2), p["normalization"])
    return relu(y) if act else y


h = x
for i, layer in enumerate(bb["embedder"]["embedder"]):               # deep stem: 3x3 s2, 3x3, 3x3
    h = conv_bn(h, layer, stride=2 if i == 0 else 1)
    print(f"stem conv {i}: {list(h.shape)}")                         # [B, C_stem, H/2, W/2]
h = max_pool2d(h, kernel=3, stride=2, padding=1)                     # [B, 64, H/4, W/4]
print(f"max-pool:    {list(h.shape)}")

# %% [markdown]
# Now the residual blocks. r18vd has four stages of two *basic* blocks, widths 64, 128, 256, 512; the demo model
# has the same layout, narrower (printed below). Stage 0 keeps stride 4; the first block of every later stage
# halves the resolution, and its shortcut is the average pool + 1×1 conv (weights under `shortcut.1`: index 0 of
# the reference's `Sequential` is the parameter-free pool).
# A basic block is `y = ReLU(BN(conv3x3(ReLU(BN(conv3x3_stride(x))))) + shortcut(x))` ([6] §3.2, Eq. 1–2).

# %%
def basic_block(x, p, stride):
    y = conv_bn(x, p["layer"][0], stride=stride)                     # [B, C_out, H/s, W/s]
    y = conv_bn(y, p["layer"][1], act=False)                         # [B, C_out, H/s, W/s]
    if "shortcut" not in p:                                          # identity shortcut
        s = x
    elif stride == 2:                                                # vd: average 2x2, then 1x1 conv stride 1
        s = conv_bn(avg_pool2d_ceil(x), p["shortcut"][1], act=False)
    else:                                                            # stage 0, block 0: 1x1 conv, stride 1
        s = conv_bn(x, p["shortcut"], act=False)
    return relu(y + s)


cfg = model.config
print("layer_type", cfg.layer_type, "depths", cfg.depths, "widths", cfg.hidden_sizes, "out_indices", cfg.out_indices)
mine = []
for s, stage in enumerate(bb["encoder"]["stages"]):
    for b, block in enumerate(stage["layers"]):
        h = basic_block(h, block, stride=2 if (s > 0 and b == 0) else 1)
    print(f"stage {s}: {list(h.shape)}  stride {64 // h.shape[-1]}")
    if s + 1 in cfg.out_indices:                                     # stages 1, 2, 3 -> S3, S4, S5
        mine.append(h)

# %% [markdown]
# Why `out_indices` (2, 3, 4) for stages 1, 2, 3? transformers counts the stem as stage 0 of its ResNet, so its
# indices are ours + 1. The three outputs are S3, S4, S5 of [1] Fig. 4: strides 8, 16 and 32 (the S-number is
# log2 of the stride). Stage 0's stride-4 map is not used by RT-DETR. Our hand-written blocks against the
# package's `backbone`:

# %%
from rtdetrv2_np.model.backbone import backbone

theirs = backbone(x, bb, cfg)
for l, (a, b) in enumerate(zip(mine, theirs)):
    check(f"backbone.{l} {list(b.shape)}", a, b, rtol=1e-5)

# %% [markdown]
# Equal up to float32 rounding: our blocks run conv, then BatchNorm; the package runs the folded `conv_bn`, and
# the rounding differences add up over the blocks (hence 1e-5 relative here; a wrong formula would be off by a
# share of order 1). Only the shortcut choice in our
# `basic_block` is simplified
# (the package's `shortcut_layout` also covers the bottleneck variants, where stage 0's first block widens
# 64 → 256 channels).
#
# ## 4. On a real input
#
# One forward pass on a held-out generated scene (notebook 00) gives the maps the encoder will read. Each row: the
# mean over channels, then the three channels with the largest spatial variation (after a ReLU many channels are
# zero almost everywhere). Every panel has its own colour scale (its colourbar): compare shapes within a panel,
# not brightness across panels.

# %%
import PIL.Image

from rtdetrv2_np.demo.shapes import EVAL_SEED, make_scene
from rtdetrv2_np.preprocess import preprocess

array, objects = make_scene(EVAL_SEED, 3)
pixel_values, sizes = preprocess(PIL.Image.fromarray(array), size=model.input_size)   # [1, 3, 256, 256]
stages = model.trace(pixel_values)
plotting.plot_feature_maps(stages, ["backbone.0", "backbone.1", "backbone.2"],
                           title="backbone outputs S3, S4, S5 (strides 8, 16, 32) of the demo model")

# %% [markdown]
# Does the trained backbone respond to the objects more than to the textured background? A measurement rather
# than an impression: for each level, the mean activation (over channels) on the positions inside some
# ground-truth box, against the positions outside every box. The cell prints the ratio; above 1 means the
# backbone's activations concentrate on the objects.

# %%
def inside_boxes(objects, h, w, size):
    """[h, w] bool: the cells of an h x w map whose centre lies inside some ground-truth box (pixels of size)."""
    ys, xs = (np.arange(h) + 0.5) * size[0] / h, (np.arange(w) + 0.5) * size[1] / w
    mask = np.zeros((h, w), bool)
    for o in objects:
        x0, y0, x1, y1 = o["box"]
        mask |= ((ys[:, None] >= y0) & (ys[:, None] <= y1)) & ((xs[None, :] >= x0) & (xs[None, :] <= x1))
    return mask


for l in range(3):
    fmap = stages[f"backbone.{l}"][0].mean(axis=0)                      # [H_l, W_l]
    mask = inside_boxes(objects, *fmap.shape, array.shape[:2])
    print(f"backbone.{l} {list(fmap.shape)}: mean activation inside boxes {fmap[mask].mean():.3f}, outside "
          f"{fmap[~mask].mean():.3f}, ratio {fmap[mask].mean() / fmap[~mask].mean():.2f} "
          f"({mask.mean():.0%} of positions inside)")

# %% [markdown]
# Read the printed ratios together with the figure: a channel mean is a crude summary (some channels fire on the
# background texture, others on edges), and boxes include background corners. Notice also the border of each map:
# zero padding makes the outermost positions different, and the effect grows with depth.
#
# ## Summary
#
# * A convolution is `W @ im2col(x)`; BatchNorm at inference is a per-channel scale and shift.
# * ResNet-vd = ResNet + deep 3×3 stem + average-pool shortcut (+ stride on the 3×3 in bottlenecks) ([7] §4.2).
# * The backbone hands the encoder three maps, `backbone.0/1/2` = S3, S4, S5, at strides 8, 16, 32
#   (r18vd: 128, 256, 512 channels; r50vd: 512, 1024, 2048).
#
# ## Exercises
#
# 1. Replace `avg_pool2d_ceil` in the shortcut by taking every other pixel (`x[:, :, ::2, ::2]`, the plain ResNet
#    shortcut). How large is the difference at S5? What information does the plain shortcut throw away?
# 2. Count the parameters of the stem and compare with a single 7×7 convolution 3 → 64.
# 3. The receptive field: perturb one input pixel of the 64×64 stand-in and find which S5 positions change.
# 4. Write `bottleneck_block` (1×1 → 3×3 with the stride → 1×1, width C_out/4) and check it against
#    `rtdetrv2_np.model.backbone.residual_block` on `random_model("r50vd")` weights. (No trained r50vd ships with
#    the package; the check is about the wiring, which any weights exercise.)
#
# Answers: `walkthrough/solutions/01_backbone.py`.

# %%
print(f"notebook ran in {time.time() - T0:.1f} s")

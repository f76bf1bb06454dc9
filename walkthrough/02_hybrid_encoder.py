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
# # 02 · The efficient hybrid encoder: AIFI and CCFF
#
# *Estimated reading time: 30 minutes (running it: under a minute on 2 CPU cores).*
#
# **Learning goals.** After this notebook you can
# 1. build the 2-D sine-cosine position embedding and explain its channel layout;
# 2. run AIFI — one post-norm transformer encoder layer — on the stride-32 map by hand, and say why RT-DETR
#    applies self-attention to S5 only;
# 3. trace CCFF's top-down and bottom-up fusion, down to the RepVGG and CSP blocks;
# 4. reproduce the package's encoder outputs exactly.
#
# **Paper references.** [1] RT-DETR, arXiv 2304.08069v3: **§4.2** "Efficient Hybrid Encoder", **Eq. 1**
# (`Q = K = V = Flatten(S5); F5 = Reshape(AIFI(Q, K, V)); O = CCFF({S3, S4, F5})`), **Fig. 3** (the encoder
# variants of the ablation), **Table 3** (§5.2: variant D_S5, intra-scale interaction on S5 only, is faster *and*
# better than D) and **Fig. 5** (the fusion block in CCFF). v3 calls the module **CCFF** (CNN-based Cross-scale
# Feature Fusion); the earlier arXiv versions, the official code and transformers call it CCFM, so the code's
# names say `ccfm`. [8] Vaswani et al., arXiv 1706.03762, §3.1 (encoder layer), §3.5 (sinusoidal positions).
# [9] Ding et al., *RepVGG*, arXiv 2101.03697: §3.2 (training-time branches), §3.3, Eq. 3 and Fig. 4 (merging
# them into one 3×3 convolution).
#
# Code: `rtdetrv2_np/model/hybrid_encoder.py`.

# %%
# %matplotlib inline
import time

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import rtdetrv2_np
from rtdetrv2_np import plotting

T0 = time.time()
model, _ = plotting.teaching_model()          # the shipped demo detector (notebook 00): trained, 256x256 shapes
print(plotting.weights_stamp(model))
rng = np.random.default_rng(0)
f32 = np.float32


def check(name, mine, package, rtol=0.0):
    """The walkthrough's equality check (notebook 01): the largest difference, absolute and relative to the largest
    value of the package's result; fails if the relative one exceeds rtol."""
    mine, package = np.asarray(mine, np.float64), np.asarray(package, np.float64)
    diff = float(np.abs(mine - package).max())
    rel = diff / max(float(np.abs(package).max()), 1e-30)
    print(f"{'OK' if rel <= rtol else 'NOT OK'} {name}: max |by hand - package| = {diff:.3g} ({rel:.2g} of max |package|)")
    assert rel <= rtol, name


import PIL.Image

from rtdetrv2_np.demo.shapes import EVAL_SEED, make_scene
from rtdetrv2_np.preprocess import preprocess

array, objects = make_scene(EVAL_SEED, 3)        # a held-out scene and its ground truth (notebook 00)
pixel_values, sizes = preprocess(PIL.Image.fromarray(array), size=model.input_size)
stages = model.trace(pixel_values)               # we take the encoder's inputs from here and recompute its outputs
cfg, m = model.config, model.params["model"]
enc = m["encoder"]

# %% [markdown]
# ## 1. Input projections
#
# The backbone maps have C3, C4, C5 channels (r18vd: 128, 256, 512). A 1×1 convolution + BatchNorm per level
# brings each to the encoder width C (r18vd: 256; the demo model: printed below) (`encoder_input_proj.{l}`): P3,
# P4, P5. These are `encoder.input_proj.{l}` in the trace.

# %%
from rtdetrv2_np.model.nn import batch_norm, conv2d

for l in range(3):
    p = m["encoder_input_proj"][l]
    P = batch_norm(conv2d(stages[f"backbone.{l}"], p[0]["weight"]), p[1])          # [B, C, H_l, W_l]
    check(f"encoder.input_proj.{l} {list(P.shape)}", P, stages[f"encoder.input_proj.{l}"], rtol=1e-5)

# %% [markdown]
# Why a tolerance? We ran the convolution and then BatchNorm; the package folds the BatchNorm into the convolution
# (`nn.conv_bn`, notebook 01), which rounds differently in the last float32 bits: a relative difference of order
# 1e-7 to 1e-6. A mistake in the formula shows up as a relative difference of order 1. The same holds for the
# RepVGG and CSP checks below.

# %% [markdown]
# ## 2. The 2-D sine-cosine position embedding
#
# Attention is blind to order, so AIFI adds a position code to the queries and keys. Each axis gets the
# transformer's sinusoids ([8] §3.5) on C/4 frequencies `ω_i = 1 / 10000^(i / (C/4))`, and the four blocks are
# concatenated: channels `[sin(y·ω) | cos(y·ω) | sin(x·ω) | cos(x·ω)]`, tokens row-major (y is the row). By hand,
# on a tiny 2 × 3 map with C = 8:

# %%
from rtdetrv2_np.model.hybrid_encoder import sincos_position_embedding

H, W, C = 2, 3, 8
omega = 1.0 / 10000 ** (np.arange(C // 4) / (C // 4))               # [C/4]: 1, 0.01
rows = []
for y in range(H):
    for x in range(W):                                                # token y*W + x (row-major)
        rows.append(np.concatenate([np.sin(y * omega), np.cos(y * omega), np.sin(x * omega), np.cos(x * omega)]))
pos_small = np.array(rows, dtype=f32)                                 # [H*W, C]
print(np.round(pos_small, 3))
check("sin-cos embedding 2x3x8", pos_small, sincos_position_embedding(H, W, C))

# %% [markdown]
# Why this works as a position code: the dot product of two embeddings depends only on their offset,
# `Σ_i cos((y − y')ω_i) + cos((x − x')ω_i)`. Here is that similarity between one token and all others of a 20 × 20
# map (the r18vd's S5 at 640×640, C = 256): it peaks at the token itself and falls off with distance along each
# axis (the cross pattern is the separable row + column sum).

# %%
pos = sincos_position_embedding(20, 20, 256)                          # [400, C]
sim = (pos @ pos[7 * 20 + 12]).reshape(20, 20)                        # token at row 7, column 12
fig = Figure(figsize=(4.2, 3.6), layout="constrained")
ax = fig.subplots()
im = ax.imshow(sim, cmap="viridis")
ax.plot(12, 7, "r+", ms=12, mew=2)
ax.set_title("pos · pos[row 7, col 12] on a 20x20 map, C = 256", fontsize=9)
fig.colorbar(im, ax=ax, label="dot product")
fig

# %% [markdown]
# ## 3. AIFI: attention-based intra-scale feature interaction ([1] Eq. 1)
#
# The H/32 × W/32 tokens of P5 (r18vd at 640×640: 400; the demo at 256×256: 64) go through one standard post-norm
# transformer encoder layer ([8] §3.1):
#
# ```
# x = LN1(x + MHA(q = k = x + pos, v = x))       # the position code goes into queries and keys, not values
# x = LN2(x + fc2(GELU(fc1(x))))                 # exact erf GELU, FFN width cfg.encoder_ffn_dim
# ```
#
# Only P5: [1] §4.2 argues that the high-level map carries the semantics worth relating across the image, and
# attention over the 16× more tokens of S3 would cost 256× more (attention is quadratic in tokens). The ablation
# is [1] §5.2, Table 3, variant D (intra-scale attention on all levels) against D_S5 (on S5 only): D_S5 is faster
# and slightly more accurate. By hand, with the model's M heads of D = C/M channels:

# %%
from rtdetrv2_np.model.nn import gelu, layer_norm, linear, softmax

p = enc["encoder"][0]["layers"][0]                                    # the one AIFI layer
P5 = stages["encoder.input_proj.2"]                                   # [B, C, H, W]
B, C, H, W = P5.shape
M, D = cfg.encoder_attention_heads, C // cfg.encoder_attention_heads
print(f"P5 {list(P5.shape)}: N = {H * W} tokens, M = {M} heads of D = {D}, FFN width {cfg.encoder_ffn_dim}")
x = P5.reshape(B, C, H * W).transpose(0, 2, 1)                        # [B, N, C]   N = H*W tokens
pos = sincos_position_embedding(H, W, C)                              # [N, C]

a = p["self_attn"]
q = linear(x + pos, a["q_proj"]).reshape(B, -1, M, D).transpose(0, 2, 1, 3)   # [B, M, N, D]
k = linear(x + pos, a["k_proj"]).reshape(B, -1, M, D).transpose(0, 2, 1, 3)   # [B, M, N, D]
v = linear(x, a["v_proj"]).reshape(B, -1, M, D).transpose(0, 2, 1, 3)         # [B, M, N, D]
attn = softmax(q @ k.transpose(0, 1, 3, 2) * f32(D ** -0.5), axis=-1)         # [B, M, N, N]
heads = (attn @ v).transpose(0, 2, 1, 3).reshape(B, -1, C)                      # [B, N, C] heads concatenated
x = layer_norm(x + linear(heads, a["out_proj"]), p["self_attn_layer_norm"])    # [B, N, C]
x = layer_norm(x + linear(gelu(linear(x, p["fc1"])), p["fc2"]), p["final_layer_norm"])   # [B, N, C]
F5 = x.transpose(0, 2, 1).reshape(B, C, H, W)                                   # [B, C, H, W]
check("encoder.aifi", F5, stages["encoder.aifi"], rtol=1e-5)

# %% [markdown]
# Where does one token look? We take the token under the centre of the scene's largest object and draw its
# attention (averaged over the heads) on the H/32 × W/32 grid, the object's box in white. Uniform attention would
# give every token 1/N. The cell after the figure measures, rather than guesses, how much of the token's attention
# stays on its own object: the share of its attention that falls on tokens inside the object's box, against the
# share of tokens that lie there (what uniform attention would give).

# %%
big = max(objects, key=lambda o: o["area"])                           # the largest object of the scene
x0, y0, x1, y1 = big["box"]
S = array.shape[0]                                                    # scene side in pixels
row, col = int((y0 + y1) / 2 * H / S), int((x0 + x1) / 2 * W / S)     # its centre's token on the H x W grid
a_tok = attn[0, :, row * W + col].mean(axis=0).reshape(H, W)          # [H, W] mean over heads
ys, xs = (np.arange(H) + 0.5) * S / H, (np.arange(W) + 0.5) * S / W
in_box = (ys[:, None] >= y0) & (ys[:, None] <= y1) & (xs[None, :] >= x0) & (xs[None, :] <= x1)   # [H, W]

fig = Figure(figsize=(4.6, 4.4), layout="constrained")
ax = fig.subplots()
ax.imshow(pixel_values[0].transpose(1, 2, 0), extent=(0, W, H, 0))
im = ax.imshow(a_tok, cmap="magma", alpha=0.7, extent=(0, W, H, 0))
ax.add_patch(Rectangle((x0 * W / S, y0 * H / S), (x1 - x0) * W / S, (y1 - y0) * H / S, fill=False,
                       edgecolor="white", lw=2))
ax.plot(col + 0.5, row + 0.5, "c+", ms=14, mew=2.5)
ax.set_title(f"AIFI attention of token ({row}, {col}), mean over heads\n(white: the {big['name']}'s box)",
             fontsize=9)
fig.colorbar(im, ax=ax, label="attention weight (uniform = 1/N)")
fig

# %%
print(f"attention on the {big['name']}'s box: {a_tok[in_box].sum():.2f} of the total; tokens in the box: "
      f"{in_box.mean():.2f} of all; max weight {a_tok.max():.3f} vs uniform 1/N = {1 / (H * W):.3f}")
per_head = attn[0, :, row * W + col].reshape(M, H, W)[:, in_box].sum(axis=1)        # [M]
print("per head, share on the box:", np.round(per_head, 2))

# %% [markdown]
# How to read the two shares: if the attention on the box is about the share of tokens in the box, the token
# spreads its attention almost evenly (look also at the colourbar's range against 1/N); a share well above it
# means the token gathers context mostly from its own object. Which of the two the printed numbers show is a
# property of these trained weights, not of the architecture: a narrow model trained briefly on shapes may lean on
# the convolutions (CCFF) more than on AIFI. Exercise 1 measures what AIFI's position code contributes to the
# detections.

# %% [markdown]
# ## 4. CCFF: cross-scale fusion with convolutions ([1] Fig. 5)
#
# The fusion block of Fig. 5 is a CSP layer ("CSPRepLayer"): two 1×1 branches from the concatenated input, one of
# them through three RepVGG blocks, summed (and a last 1×1 when the inner width C' = 0.5·C differs from C). A
# RepVGG block here is `SiLU(BN(conv3x3(x)) + BN(conv1x1(x)))` — two branches at training time that can be merged
# into one 3×3 convolution for deployment ([9] §3.3; we keep the two branches; the merge only changes rounding).
# Unlike the original RepVGG block ([9] §3.2: `y = x + g(x) + f(x)`), RT-DETR's has **no identity branch**: only
# the 3×3 and the 1×1. By hand on a small input:

# %%
from rtdetrv2_np.model.hybrid_encoder import conv_norm, csp_rep_layer, rep_vgg_block
from rtdetrv2_np.model.nn import silu

blk = enc["fpn_blocks"][0]
print("hidden_expansion", cfg.hidden_expansion, "| C' =", blk["conv1"]["conv"]["weight"].shape[0],
      "| conv3 present:", "conv3" in blk)
xs = rng.normal(size=(1, 2 * C, 6, 6)).astype(f32)                   # [B, 2C, H, W] a small concatenated input


def bn_conv(x, p, act=None):
    """conv (no bias, 'same' padding) -> BN -> optional SiLU: RTDetrV2ConvNormLayer."""
    k = p["conv"]["weight"].shape[-1]
    y = batch_norm(conv2d(x, p["conv"]["weight"], padding=(k - 1) // 2), p["norm"])
    return silu(y) if act else y


r = blk["bottlenecks"][0]
h = bn_conv(xs, blk["conv1"], act=True)                              # [B, C', H, W]
check("RepVGG block", silu(bn_conv(h, r["conv1"]) + bn_conv(h, r["conv2"])), rep_vgg_block(h, r, "silu"), rtol=1e-5)

a_ = bn_conv(xs, blk["conv1"], act=True)                             # branch a: 1x1, then 3 RepVGG blocks
for r in blk["bottlenecks"]:
    a_ = silu(bn_conv(a_, r["conv1"]) + bn_conv(a_, r["conv2"]))
b_ = bn_conv(xs, blk["conv2"], act=True)                             # branch b: 1x1 only
check("CSP layer", bn_conv(a_ + b_, blk["conv3"], act=True), csp_rep_layer(xs, blk, "silu"), rtol=1e-5)

# %% [markdown]
# The whole CCFF, as in `RTDetrV2HybridEncoder.forward`:
#
# * **top-down** (FPN): starting from F5, a 1×1 *lateral* conv, nearest 2× upsampling, concatenation with the
#   next finer map, fusion block. F5 → (P4) → I4, then I4 → (P3) → O3. The lateral output replaces the coarse map:
#   the bottom-up path reads it.
# * **bottom-up** (PAN): a 3×3 stride-2 conv takes O3 down to stride 16, concatenated with the lateral map of that
#   level, fusion block → O4; the same again → O5.

# %%
from rtdetrv2_np.model.nn import upsample_nearest2x

act = cfg.activation_function                                          # "silu"
P3, P4 = stages["encoder.input_proj.0"], stages["encoder.input_proj.1"]
L5 = conv_norm(F5, enc["lateral_convs"][0], act=act)                   # [B, C, H/32, W/32]
I4 = csp_rep_layer(np.concatenate([upsample_nearest2x(L5), P4], axis=1), enc["fpn_blocks"][0], act)   # [B, C, H/16, W/16]
L4 = conv_norm(I4, enc["lateral_convs"][1], act=act)                   # [B, C, H/16, W/16]
O3 = csp_rep_layer(np.concatenate([upsample_nearest2x(L4), P3], axis=1), enc["fpn_blocks"][1], act)   # [B, C, H/8, W/8]
down = conv_norm(O3, enc["downsample_convs"][0], stride=2, act=act)    # [B, C, H/16, W/16]
O4 = csp_rep_layer(np.concatenate([down, L4], axis=1), enc["pan_blocks"][0], act)                     # [B, C, H/16, W/16]
down = conv_norm(O4, enc["downsample_convs"][1], stride=2, act=act)    # [B, C, H/32, W/32]
O5 = csp_rep_layer(np.concatenate([down, L5], axis=1), enc["pan_blocks"][1], act)                     # [B, C, H/32, W/32]
for l, O in enumerate([O3, O4, O5]):
    check(f"encoder.output.{l} {list(O.shape)}", O, stages[f"encoder.output.{l}"], rtol=1e-5)

# %% [markdown]
# (Here we called the package's own `conv_norm` and `csp_rep_layer`, so the outputs are the same up to the
# last-bit differences of our F5 carried through CCFF.)
#
# What the encoder did to the maps: AIFI's output at stride 32, and the fused maps at every stride.

# %%
plotting.plot_feature_maps(stages, ["encoder.input_proj.2", "encoder.aifi", "encoder.output.2", "encoder.output.0"],
                           title="hybrid encoder of the demo model: P5, AIFI(P5), and the fused O5, O3")

# %% [markdown]
# ## Summary
#
# * The encoder is `O3, O4, O5 = CCFF(P3, P4, AIFI(P5))` ([1] Eq. 1): attention only where it is cheap (the
#   fewest tokens) and useful (semantics), convolutions for the cross-scale fusion.
# * AIFI is a post-norm transformer layer with a 2-D sin-cos position code added to queries and keys.
# * CCFF = FPN top-down + PAN bottom-up; its fusion block is a CSP layer of RepVGG blocks (without RepVGG's
#   identity branch).
#
# ## Exercises
#
# Answers: `walkthrough/solutions/02_hybrid_encoder.py`.
#
# 1. Run AIFI without the position embedding (`pos = 0`). How much does `encoder.aifi` change, and how much
#    `encoder.output.0` and the detections (AP50 on 20 held-out scenes, `evaluate_shapes`)? Hint: patch
#    `rtdetrv2_np.model.hybrid_encoder.sincos_position_embedding` for the duration of one call.
# 2. Merge a RepVGG block's two branches into one 3×3 conv + bias (fold each BN into its conv, pad the 1×1 kernel
#    to 3×3 and add, [9] §3.3) and check it against `rep_vgg_block`.
# 3. Count the multiply-adds of AIFI on S5 and of the same layer on S3, for the demo model at 256×256 and for
#    r18vd at 640×640 (C = 256, FFN 1024). Compare with [1] Table 3 (D against D_S5).
# 4. transformers ≤ 4.x and the official code lay the position embedding out with rows and columns swapped on
#    non-square maps (see the module docstring). Find an input size where that matters.

# %%
print(f"notebook ran in {time.time() - T0:.1f} s")

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
# # 02 · The efficient hybrid encoder: AIFI and CCFM
#
# *Estimated reading time: 30 minutes (running it: under a minute on 2 CPU cores).*
#
# **Learning goals.** After this notebook you can
# 1. build the 2-D sine-cosine position embedding and explain its channel layout;
# 2. run AIFI — one post-norm transformer encoder layer — on the stride-32 map by hand, and say why RT-DETR
#    applies self-attention to S5 only;
# 3. trace CCFM's top-down and bottom-up fusion, down to the RepVGG and CSP blocks;
# 4. reproduce the package's encoder outputs exactly.
#
# **Paper references.** [1] RT-DETR, arXiv 2304.08069: **§4.2** "Efficient Hybrid Encoder", **Eq. 1**
# (`Q = K = V = Flatten(S5); F5 = Reshape(AIFI(Q, K, V)); O = CCFM({S3, S4, F5})`), **Fig. 3** (the encoder
# variants A–E of the ablation: intra-scale interaction on S5 only is cheaper *and* better) and **Fig. 4** (the
# fusion block). [7] Vaswani et al., arXiv 1706.03762, §3.1 (encoder layer), §3.5 (sinusoidal positions).
# [8] Ding et al., *RepVGG*, arXiv 2101.03697.
#
# Code: `rtdetrv2_np/model/hybrid_encoder.py`.

# %%
# %matplotlib inline
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import rtdetrv2_np
from rtdetrv2_np import plotting

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


from rtdetrv2_np.preprocess import load_image, preprocess

image = load_image(DATA / "coco_000000039769.png")
pixel_values, sizes = preprocess(image)
stages = model.trace(pixel_values)               # we take the encoder's inputs from here and recompute its outputs
cfg, m = model.config, model.params["model"]
enc = m["encoder"]

# %% [markdown]
# ## 1. Input projections
#
# The backbone maps have 128, 256, 512 channels (r18vd). A 1×1 convolution + BatchNorm per level brings each to the
# encoder width C = 256 (`encoder_input_proj.{l}`): P3, P4, P5. These are `encoder.input_proj.{l}` in the trace.

# %%
from rtdetrv2_np.model.nn import batch_norm, conv2d

for l in range(3):
    p = m["encoder_input_proj"][l]
    P = batch_norm(conv2d(stages[f"backbone.{l}"], p[0]["weight"]), p[1])          # [B, C, H_l, W_l]
    check(f"encoder.input_proj.{l} {list(P.shape)}", P, stages[f"encoder.input_proj.{l}"], atol=1e-5)

# %% [markdown]
# Why a tolerance? We ran the convolution and then BatchNorm; the package folds the BatchNorm into the convolution
# (`nn.conv_bn`, notebook 01), which rounds differently in the last float32 bits. Differences of ~1e-6 on values of
# size ~1 are that; a mistake in the formula shows up as differences of size ~1. The same holds for the RepVGG and
# CSP checks below.

# %% [markdown]
# ## 2. The 2-D sine-cosine position embedding
#
# Attention is blind to order, so AIFI adds a position code to the queries and keys. Each axis gets the
# transformer's sinusoids ([7] §3.5) on C/4 frequencies `ω_i = 1 / 10000^(i / (C/4))`, and the four blocks are
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
# `Σ_i cos((y − y')ω_i) + cos((x − x')ω_i)`. Here is that similarity between one token and all others of the
# 20 × 20 map AIFI sees (C = 256): it peaks at the token itself and falls off with distance along each axis
# (the cross pattern is the separable row + column sum).

# %%
pos = sincos_position_embedding(20, 20, 256)                          # [400, C]
sim = (pos @ pos[7 * 20 + 12]).reshape(20, 20)                        # token at row 7, column 12
fig = Figure(figsize=(4.2, 3.6), layout="constrained")
ax = fig.subplots()
im = ax.imshow(sim, cmap="viridis")
ax.plot(12, 7, "r+", ms=12, mew=2)
ax.set_title("pos · pos[row 7, col 12] on the 20x20 map", fontsize=9)
fig.colorbar(im, ax=ax)
fig

# %% [markdown]
# ## 3. AIFI: attention-based intra-scale feature interaction ([1] Eq. 1)
#
# The 20 × 20 = 400 tokens of P5 go through one standard post-norm transformer encoder layer ([7] §3.1):
#
# ```
# x = LN1(x + MHA(q = k = x + pos, v = x))       # the position code goes into queries and keys, not values
# x = LN2(x + fc2(GELU(fc1(x))))                 # exact erf GELU, FFN width 1024
# ```
#
# Only P5: [1] §4.2 argues that the high-level map carries the semantics worth relating across the image, and
# attention over the 6400 tokens of S3 would cost 256× more (attention is quadratic in tokens) for no gain
# (Fig. 3, variant D vs E). By hand, with 8 heads of D = 32:

# %%
from rtdetrv2_np.model.nn import gelu, layer_norm, linear, softmax

p = enc["encoder"][0]["layers"][0]                                    # the one AIFI layer
P5 = stages["encoder.input_proj.2"]                                   # [B, C, H, W]
B, C, H, W = P5.shape
M, D = cfg.encoder_attention_heads, C // cfg.encoder_attention_heads
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
check("encoder.aifi", F5, stages["encoder.aifi"], atol=1e-5)

# %% [markdown]
# Where does one token look? The attention of the token at row 7, column 12 (averaged over the 8 heads), drawn on
# the 20 × 20 grid. With trained weights tokens on a cat attend to the rest of the cat; with random weights the
# weights are almost uniform (≈ 1/400 each): a random projection has nothing to prefer.

# %%
fig = Figure(figsize=(4.6, 4.2), layout="constrained")
ax = fig.subplots()
ax.imshow(pixel_values[0].transpose(1, 2, 0), extent=(0, 20, 20, 0))
im = ax.imshow(attn[0, :, 7 * 20 + 12].mean(axis=0).reshape(20, 20), cmap="magma", alpha=0.7, extent=(0, 20, 20, 0))
ax.plot(12.5, 7.5, "c+", ms=12, mew=2)
ax.set_title("AIFI attention of token (7, 12), mean over heads", fontsize=9)
if not IS_REAL:
    fig.suptitle("RANDOM WEIGHTS: this pattern means nothing", color=plotting.NOTE_COLOR, fontsize=9,
                 fontweight="bold")
fig.colorbar(im, ax=ax)
fig

# %% [markdown]
# ## 4. CCFM: cross-scale fusion with convolutions ([1] Fig. 4)
#
# The fusion block of Fig. 4 is a CSP layer ("CSPRepLayer"): two 1×1 branches from the concatenated input, one of
# them through three RepVGG blocks, summed (and a last 1×1 when the inner width C' = 0.5·C differs from C). A
# RepVGG block [8] is `SiLU(BN(conv3x3(x)) + BN(conv1x1(x)))` — two branches at training time that can be merged
# into one 3×3 convolution for deployment (we keep the two branches; the merge only changes rounding). By hand on
# a small input:

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
check("RepVGG block", silu(bn_conv(h, r["conv1"]) + bn_conv(h, r["conv2"])), rep_vgg_block(h, r, "silu"), atol=1e-5)

a_ = bn_conv(xs, blk["conv1"], act=True)                             # branch a: 1x1, then 3 RepVGG blocks
for r in blk["bottlenecks"]:
    a_ = silu(bn_conv(a_, r["conv1"]) + bn_conv(a_, r["conv2"]))
b_ = bn_conv(xs, blk["conv2"], act=True)                             # branch b: 1x1 only
check("CSP layer", bn_conv(a_ + b_, blk["conv3"], act=True), csp_rep_layer(xs, blk, "silu"), atol=1e-5)

# %% [markdown]
# The whole CCFM, as in `RTDetrV2HybridEncoder.forward`:
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
L5 = conv_norm(F5, enc["lateral_convs"][0], act=act)                   # [B, C, 20, 20]
I4 = csp_rep_layer(np.concatenate([upsample_nearest2x(L5), P4], axis=1), enc["fpn_blocks"][0], act)   # [B, C, 40, 40]
L4 = conv_norm(I4, enc["lateral_convs"][1], act=act)                   # [B, C, 40, 40]
O3 = csp_rep_layer(np.concatenate([upsample_nearest2x(L4), P3], axis=1), enc["fpn_blocks"][1], act)   # [B, C, 80, 80]
down = conv_norm(O3, enc["downsample_convs"][0], stride=2, act=act)    # [B, C, 40, 40]
O4 = csp_rep_layer(np.concatenate([down, L4], axis=1), enc["pan_blocks"][0], act)                     # [B, C, 40, 40]
down = conv_norm(O4, enc["downsample_convs"][1], stride=2, act=act)    # [B, C, 20, 20]
O5 = csp_rep_layer(np.concatenate([down, L5], axis=1), enc["pan_blocks"][1], act)                     # [B, C, 20, 20]
for l, O in enumerate([O3, O4, O5]):
    check(f"encoder.output.{l} {list(O.shape)}", O, stages[f"encoder.output.{l}"], atol=1e-4)

# %% [markdown]
# (Here we called the package's own `conv_norm` and `csp_rep_layer`, so the outputs are identical; the atol of 1e-4
# on activations of size ~1 only allows for last-bit differences in our F5 being carried through CCFM.)
#
# What the encoder did to the maps: AIFI's output at stride 32, and the fused maps at every stride.

# %%
plotting.plot_feature_maps(stages, ["encoder.input_proj.2", "encoder.aifi", "encoder.output.2", "encoder.output.0"],
                           title="hybrid encoder: P5, AIFI(P5), and the fused O5, O3", **NOTE)

# %% [markdown]
# ## Summary
#
# * The encoder is `O3, O4, O5 = CCFM(P3, P4, AIFI(P5))` ([1] Eq. 1): attention only where it is cheap (400
#   tokens) and useful (semantics), convolutions for the cross-scale fusion.
# * AIFI is a post-norm transformer layer with a 2-D sin-cos position code added to queries and keys.
# * CCFM = FPN top-down + PAN bottom-up; its fusion block is a CSP layer of RepVGG blocks.
#
# ## Exercises
#
# 1. Run AIFI without the position embedding (`pos = 0`). How much does `encoder.aifi` change? Which output would
#    you expect to change most with trained weights?
# 2. Merge a RepVGG block's two branches into one 3×3 conv + bias (fold each BN into its conv, pad the 1×1 kernel
#    to 3×3 and add) and check it against `rep_vgg_block` (to ~1e-6).
# 3. Count the multiply-adds of AIFI on S5 (400 tokens) and of the same layer on S3 (6400 tokens). Compare with
#    [1] Fig. 3's latency argument.
# 4. transformers ≤ 4.x and the official code lay the position embedding out with rows and columns swapped on
#    non-square maps (see the module docstring). Find an input size where that matters.

# %%
print(f"notebook ran in {time.time() - T0:.1f} s")

"""Answers to the exercises of walkthrough/01_backbone: each function computes its answer, prints it and checks it
against the package. Run `python walkthrough/solutions/01_backbone.py`; tests/test_walkthrough_solutions.py calls
every exercise_* function. Numbers that depend on the shipped demo weights are printed, never written here.
"""

import numpy as np

from rtdetrv2_np import plotting
from rtdetrv2_np.model.backbone import backbone, residual_block, shortcut_layout
from rtdetrv2_np.model.nn import avg_pool2d_ceil, batch_norm, conv2d, relu


def conv_bn_act(x, p, stride=1, act=True):
    """conv (padding k//2, no bias) -> BatchNorm -> optional ReLU, as in the notebook."""
    k = p["convolution"]["weight"].shape[-1]
    y = batch_norm(conv2d(x, p["convolution"]["weight"], stride=stride, padding=k // 2), p["normalization"])
    return relu(y) if act else y


def run_backbone(x, bb, cfg, plain_shortcut=False):
    """The notebook's backbone by hand; plain_shortcut takes every other pixel instead of the 2x2 average."""
    from rtdetrv2_np.model.nn import max_pool2d
    h = x
    for i, layer in enumerate(bb["embedder"]["embedder"]):
        h = conv_bn_act(h, layer, stride=2 if i == 0 else 1)
    h = max_pool2d(h, kernel=3, stride=2, padding=1)
    outs = []
    for s, stage in enumerate(bb["encoder"]["stages"]):
        for b, p in enumerate(stage["layers"]):
            stride = 2 if (s > 0 and b == 0) else 1
            y = conv_bn_act(conv_bn_act(h, p["layer"][0], stride=stride), p["layer"][1], act=False)
            if "shortcut" not in p:
                sc = h
            elif stride == 2:
                pooled = h[:, :, ::2, ::2] if plain_shortcut else avg_pool2d_ceil(h)
                sc = conv_bn_act(pooled, p["shortcut"][1], act=False)
            else:
                sc = conv_bn_act(h, p["shortcut"], act=False)
            h = relu(y + sc)
        if s + 1 in cfg.out_indices:
            outs.append(h)
    return outs


def exercise_1():
    """The plain shortcut (every other pixel) against vd's 2x2 average: how much S5 changes."""
    model, _ = plotting.teaching_model()
    bb, cfg = model.params["model"]["backbone"]["model"], model.config
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    vd, plain = run_backbone(x, bb, cfg), run_backbone(x, bb, cfg, plain_shortcut=True)
    package = backbone(x, bb, cfg)
    err = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(vd, package))
    change = float(np.abs(plain[2] - vd[2]).max() / np.abs(vd[2]).max())
    print(f"exercise 1: the plain shortcut changes S5 by up to {change:.1%} of its largest value "
          f"(vd by hand vs package: {err:.1e}); it drops 3 of every 4 input pixels of each down-sampling shortcut")
    assert err < 1e-5 and change > 100 * err
    return change


def exercise_2():
    """Parameters of the 3-conv stem against one 7x7 convolution from 3 channels to the same width."""
    model, _ = plotting.teaching_model()
    stem = model.params["model"]["backbone"]["model"]["embedder"]["embedder"]
    n_stem = sum(layer["convolution"]["weight"].size for layer in stem)                 # conv weights only
    c_out = stem[-1]["convolution"]["weight"].shape[0]
    n_7x7 = c_out * 3 * 7 * 7
    # r18vd's stem, from the shapes alone: 3 -> 32 -> 32 -> 64
    r18 = 32 * 3 * 9 + 32 * 32 * 9 + 64 * 32 * 9
    print(f"exercise 2: demo stem {n_stem} conv weights vs one 7x7 conv 3 -> {c_out}: {n_7x7}; "
          f"r18vd: {r18} vs {64 * 3 * 49}")
    c = [layer["convolution"]["weight"].shape for layer in stem]
    assert n_stem == sum(int(np.prod(s)) for s in c) and c[0][1] == 3 and all(s[2:] == (3, 3) for s in c)
    return n_stem, n_7x7


def exercise_3():
    """Receptive field: perturb one input pixel and see which S5 positions change (at 256x256: S5 is 8x8)."""
    model, _ = plotting.teaching_model()
    bb, cfg = model.params["model"]["backbone"]["model"], model.config
    x = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    base = backbone(x, bb, cfg)[2]                                   # [B, C5, 8, 8]
    seen = {}
    for (i, j) in ((0, 0), (128, 128)):                              # a corner pixel, a centre pixel
        y = x.copy()
        y[0, :, i, j] += 1.0
        seen[(i, j)] = np.abs(backbone(y, bb, cfg)[2] - base).max(axis=(0, 1)) > 0     # [8, 8]
        print(f"exercise 3: S5 positions changed by input pixel {(i, j)} "
              f"({int(seen[(i, j)].sum())} of {seen[(i, j)].size}):\n{seen[(i, j)].astype(int)}")
    assert seen[(0, 0)][0, 0] and seen[(128, 128)][4, 4] and not seen[(0, 0)][-1, -1]
    return seen


def bottleneck_block(x, p, stride, shortcut):
    """1x1 -> 3x3 (stride) -> 1x1, width C_out/4 inside, plus the vd shortcut."""
    y = conv_bn_act(x, p["layer"][0])
    y = conv_bn_act(y, p["layer"][1], stride=stride)
    y = conv_bn_act(y, p["layer"][2], act=False)
    pool, key = shortcut
    s = avg_pool2d_ceil(x) if pool else x
    if key is not None:
        s = conv_bn_act(s, p["shortcut"][1] if key == "shortcut.1" else p["shortcut"], act=False)
    return relu(y + s)


def exercise_4():
    """bottleneck_block against residual_block on r50vd weights (random: no trained r50vd ships; wiring only)."""
    from rtdetrv2_np.random_weights import random_model
    model = random_model("r50vd", seed=0)
    stages = model.params["model"]["backbone"]["model"]["encoder"]["stages"]
    rng = np.random.default_rng(1)
    worst = 0.0
    c_in = 64                                                         # the stem's width in r50vd
    for s, stage in enumerate(stages[:2]):
        p = stage["layers"][0]
        c_out = p["layer"][2]["convolution"]["weight"].shape[0]
        stride = 2 if s > 0 else 1
        layout = shortcut_layout("bottleneck", s, c_in, c_out)
        x = rng.random((1, c_in, 16, 16), dtype=np.float32)
        mine, theirs = bottleneck_block(x, p, stride, layout), residual_block(x, p, "bottleneck", stride, layout)
        worst = max(worst, float(np.abs(mine - theirs).max() / np.abs(theirs).max()))
        c_in = c_out
    print(f"exercise 4: bottleneck by hand vs residual_block, first block of stages 0 and 1: {worst:.1e} relative")
    assert worst < 1e-5
    return worst


if __name__ == "__main__":
    for f in (exercise_1, exercise_2, exercise_3, exercise_4):
        f()

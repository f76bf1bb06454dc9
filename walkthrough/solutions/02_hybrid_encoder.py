"""Answers to the exercises of walkthrough/02_hybrid_encoder: each function computes its answer, prints it and
checks it against the package. Run `python walkthrough/solutions/02_hybrid_encoder.py`;
tests/test_walkthrough_solutions.py calls every exercise_* function. Numbers that depend on the shipped demo
weights are printed, never written here.
"""

from contextlib import contextmanager

import numpy as np
import PIL.Image

import rtdetrv2_np.model.hybrid_encoder as he
from rtdetrv2_np import plotting
from rtdetrv2_np.demo.shapes import EVAL_SEED, make_scene
from rtdetrv2_np.model.nn import batch_norm, conv2d, silu
from rtdetrv2_np.preprocess import preprocess


@contextmanager
def no_position_embedding():
    """Within the block, AIFI's position embedding is all zeros (the module function is patched, then restored)."""
    original = he.sincos_position_embedding
    he.sincos_position_embedding = lambda h, w, dim, temperature=10000.0, dtype=np.float32: \
        np.zeros((h * w, dim), dtype)                                                  # [H*W, C]
    try:
        yield
    finally:
        he.sincos_position_embedding = original


def exercise_1():
    """AIFI with pos = 0: the relative change of encoder.aifi, encoder.output.0, and AP50 on 20 held-out scenes."""
    from rtdetrv2_np.evaluate import evaluate_shapes
    model, _ = plotting.teaching_model()
    array, _ = make_scene(EVAL_SEED, 3)
    x, _ = preprocess(PIL.Image.fromarray(array), size=model.input_size)
    a = model.trace(x)
    ap = evaluate_shapes(model, count=20)["AP50"]
    with no_position_embedding():
        b = model.trace(x)
        ap0 = evaluate_shapes(model, count=20)["AP50"]
    rel = {k: float(np.abs(a[k] - b[k]).max() / np.abs(a[k]).max()) for k in
           ("encoder.input_proj.2", "encoder.aifi", "encoder.output.2", "encoder.output.0", "pred_boxes")}
    print("exercise 1: relative change without the position code: " +
          ", ".join(f"{k} {v:.3f}" for k, v in rel.items()) + f"; AP50 on 20 scenes {ap:.3f} -> {ap0:.3f}")
    assert rel["encoder.input_proj.2"] == 0 and rel["encoder.aifi"] > 0          # only AIFI and after change
    assert he.sincos_position_embedding(2, 2, 4).any()                           # restored
    return rel, ap, ap0


def fold(conv_w, bn, eps=1e-5):
    """BN(conv(x, W)) as conv(x, W') + b' ([8] §3.3, Eq. 3)."""
    scale = bn["weight"] / np.sqrt(bn["running_var"] + np.float32(eps))                 # [C_out]
    return conv_w * scale[:, None, None, None], bn["bias"] - bn["running_mean"] * scale


def exercise_2():
    """A RepVGG block's two branches merged into one 3x3 convolution + bias, against rep_vgg_block."""
    model, _ = plotting.teaching_model()
    r = model.params["model"]["encoder"]["fpn_blocks"][0]["bottlenecks"][0]
    w3, b3 = fold(r["conv1"]["conv"]["weight"], r["conv1"]["norm"])                     # [C, C, 3, 3]
    w1, b1 = fold(r["conv2"]["conv"]["weight"], r["conv2"]["norm"])                     # [C, C, 1, 1]
    w = w3 + np.pad(w1, ((0, 0), (0, 0), (1, 1), (1, 1)))                               # 1x1 onto the 3x3 centre
    x = np.random.default_rng(0).normal(size=(1, w.shape[1], 6, 6)).astype(np.float32)
    merged = silu(conv2d(x, w, bias=b3 + b1, padding=1))
    package = he.rep_vgg_block(x, r, "silu")
    rel = float(np.abs(merged - package).max() / np.abs(package).max())
    print(f"exercise 2: merged RepVGG block vs rep_vgg_block: {rel:.1e} of the largest value")
    assert rel < 1e-5
    unmerged = silu(batch_norm(conv2d(x, r["conv1"]["conv"]["weight"], padding=1), r["conv1"]["norm"]) +
                    batch_norm(conv2d(x, r["conv2"]["conv"]["weight"]), r["conv2"]["norm"]))
    assert np.abs(unmerged - package).max() / np.abs(package).max() < 1e-5
    return rel


def aifi_macs(n, c, ffn):
    """Multiply-adds of one AIFI layer on n tokens of width c: q, k, v and output projections, QK^T and AV, FFN."""
    return 4 * n * c * c + 2 * n * n * c + 2 * n * c * ffn


def exercise_3():
    """AIFI's multiply-adds on S5 against S3, for the demo model at 256x256 and r18vd at 640x640."""
    model, _ = plotting.teaching_model()
    cfg = model.config
    h, w = model.input_size
    rows = {}
    for name, (H, W), C, F in (("demo", (h, w), cfg.encoder_hidden_dim, cfg.encoder_ffn_dim),
                               ("r18vd", (640, 640), 256, 1024)):
        s5, s3 = aifi_macs(H * W // 32 ** 2, C, F), aifi_macs(H * W // 8 ** 2, C, F)
        rows[name] = (s5, s3)
        print(f"exercise 3: {name}: AIFI on S5 {s5 / 1e6:.1f} M MACs, on S3 {s3 / 1e6:.1f} M MACs "
              f"({s3 / s5:.0f}x; the N^2 attention terms alone grow 256x)")
    # check the count against the shapes the model really computes: q/k/v/out weights are C x C, fc1 C -> FFN
    p = model.params["model"]["encoder"]["encoder"][0]["layers"][0]
    assert p["fc1"]["weight"].shape == (cfg.encoder_ffn_dim, cfg.encoder_hidden_dim)
    assert p["self_attn"]["q_proj"]["weight"].shape == (cfg.encoder_hidden_dim,) * 2
    return rows


def legacy_position_embedding(h, w, dim, temperature=10000.0):
    """The official / transformers 4.x layout: token k gets (k // h, k % h) in place of (y, x) = (k // w, k % w)."""
    k = np.arange(h * w, dtype=np.float64)
    omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4))                     # [C/4]
    ey, ex = (k // h)[:, None] * omega, (k % h)[:, None] * omega                         # [H*W, C/4]
    return np.concatenate([np.sin(ey), np.cos(ey), np.sin(ex), np.cos(ex)], axis=1).astype(np.float32)


def exercise_4():
    """The legacy layout agrees on square maps and differs on non-square ones (e.g. input 192 x 256: S5 6 x 8)."""
    model, _ = plotting.teaching_model()
    C = model.config.encoder_hidden_dim
    square = float(np.abs(legacy_position_embedding(8, 8, C) - he.sincos_position_embedding(8, 8, C)).max())
    h5, w5 = 192 // 32, 256 // 32
    other = float(np.abs(legacy_position_embedding(h5, w5, C) - he.sincos_position_embedding(h5, w5, C)).max())
    print(f"exercise 4: 8x8 S5 (256x256 input): layouts differ by {square:.1e}; {h5}x{w5} S5 (192x256 input): "
          f"by {other:.2f}. Any input whose H/32 != W/32 (non-square S5) is affected.")
    assert square < 1e-6 and other > 0.1
    return other


if __name__ == "__main__":
    for f in (exercise_1, exercise_2, exercise_3, exercise_4):
        f()

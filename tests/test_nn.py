"""The primitives of rtdetrv2_np.model.nn against their definitions, written out plainly, and hand-computed values.

The comparison with PyTorch itself happens through every stage in test_model.py; these tests pin each op's
semantics (padding, stride, ceil mode, eps, the erf GELU, sigmoid at infinity) on inputs small enough to check by
hand or with a direct loop.
"""

import math

import numpy as np
import pytest
from helpers import assert_close

from rtdetrv2_np.model import nn

f32 = np.float32
rng = np.random.default_rng(0)


def direct_conv2d(x, w, b, stride, padding):
    """Convolution straight from its definition (cross-correlation, zero padding), in float64."""
    B, C, H, W = x.shape
    O, _, KH, KW = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho, Wo = (H + 2 * padding - KH) // stride + 1, (W + 2 * padding - KW) // stride + 1
    out = np.zeros((B, O, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            patch = xp[:, :, i * stride:i * stride + KH, j * stride:j * stride + KW]    # [B, C, KH, KW]
            out[:, :, i, j] = np.einsum("bckl,ockl->bo", patch, w.astype(np.float64))
    return out + (0 if b is None else b[None, :, None, None])


@pytest.mark.parametrize("k,stride,padding,H,W", [(3, 1, 1, 7, 5), (3, 2, 1, 7, 6), (1, 1, 0, 4, 3), (1, 2, 0, 5, 5),
                                                  (3, 2, 1, 1, 1)])
def test_conv2d_equals_direct_definition(k, stride, padding, H, W, monkeypatch):
    x = rng.standard_normal((2, 3, H, W)).astype(f32)
    w = rng.standard_normal((4, 3, k, k)).astype(f32)
    b = rng.standard_normal(4).astype(f32)
    monkeypatch.setattr(nn, "IM2COL_BLOCK", 7)              # force several row blocks of one output row each
    out = nn.conv2d(x, w, b, stride, padding)
    assert out.dtype == f32
    # float32 sums of <= 27 products: each rounding errs by <= 2^-24 relative, the sum by ~27 * 6e-8 = 1.6e-6 of
    # the output's scale at worst (measured <= 2.3e-7 of max|output|); 2e-6 of it
    assert_close(out, direct_conv2d(x, w, b, stride, padding), 0, f"conv2d k{k} s{stride} p{padding}", rtol=2e-6)


def test_conv_bn_is_conv_then_batch_norm():
    x = rng.standard_normal((1, 5, 6, 6)).astype(f32)
    w = rng.standard_normal((4, 5, 3, 3)).astype(f32)
    bn = {"weight": rng.uniform(0.5, 1.5, 4).astype(f32), "bias": rng.standard_normal(4).astype(f32),
          "running_mean": rng.standard_normal(4).astype(f32), "running_var": rng.uniform(0.5, 2, 4).astype(f32)}
    plain = nn.batch_norm(nn.conv2d(x, w, stride=1, padding=1), bn)
    # folding moves the BN scale into the weights: another float32 rounding of the same 45-term sums, ~1e-7 of the
    # output's scale (measured <= 1.9e-7 of max|output|); 2e-6 of it, as for conv2d
    assert_close(nn.conv_bn(x, w, bn, 1, 1), plain, 0, "conv_bn vs conv2d + batch_norm", rtol=2e-6)
    assert_close(nn.conv_bn(x, w, bn, 1, 1, act="relu"), np.maximum(plain, 0), 0, "conv_bn + relu", rtol=2e-6)
    assert_close(nn.conv_bn(x, w, bn, 1, 1, act="silu"), plain / (1 + np.exp(-plain)), 0, "conv_bn + silu",
                 rtol=2e-6)


def test_batch_norm_by_hand():
    x = np.full((1, 1, 1, 1), 3.0, f32)
    bn = {"weight": np.array([2.0], f32), "bias": np.array([0.5], f32), "running_mean": np.array([1.0], f32),
          "running_var": np.array([4.0 - 1e-5], f32)}
    # (3 - 1) / sqrt(4) * 2 + 0.5 = 2.5; eps 1e-5 is part of the variance here
    assert_close(nn.batch_norm(x, bn), np.full((1, 1, 1, 1), 2.5), 1e-6, "batch_norm")


def test_max_pool_pads_with_minus_infinity():
    x = -np.arange(1, 17, dtype=f32).reshape(1, 1, 4, 4)             # all negative: zero padding would win
    out = nn.max_pool2d(x, 3, 2, 1)
    expected = np.array([[-1, -2], [-5, -6]], f32)     # max of the 3x3 window centred at (2i, 2j); zero padding: 0
    assert_close(out[0, 0], expected, 0, "max_pool2d")


def test_avg_pool_ceil_mode_divides_by_in_bounds_pixels():
    x = np.arange(15, dtype=f32).reshape(1, 1, 3, 5)
    out = nn.avg_pool2d_ceil(x)
    expected = np.array([[(0 + 1 + 5 + 6) / 4, (2 + 3 + 7 + 8) / 4, (4 + 9) / 2],
                         [(10 + 11) / 2, (12 + 13) / 2, 14 / 1]], f32)
    assert_close(out[0, 0], expected, 1e-6, "avg_pool2d ceil_mode")


def test_upsample_nearest():
    x = np.array([[[[1, 2], [3, 4]]]], f32)
    expected = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], f32)
    assert_close(nn.upsample_nearest2x(x)[0, 0], expected, 0, "upsample_nearest2x")


def test_activations():
    x = np.array([-np.inf, -3.0, -0.5, 0.0, 0.5, 3.0, np.inf], f32)
    s = nn.sigmoid(x)
    assert s[0] == 0.0 and s[-1] == 1.0 and s[3] == 0.5              # exact at +-inf, no NaN
    exact = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x[1:-1].astype(float)]
    # scipy's float32 erf is accurate to a few ulp; the tanh approximation would be off by up to ~5e-4
    assert_close(nn.gelu(x[1:-1]), np.array(exact), 1e-6, "gelu (erf form)")
    assert nn.gelu(x[1:-1]).dtype == f32 and nn.silu(x[1:-1]).dtype == f32


def test_inverse_sigmoid_clamps():
    x = np.array([0.0, 1e-7, 0.25, 0.5, 1.0, 1.5], f32)
    out = nn.inverse_sigmoid(x)
    lim = math.log(1 / 1e-5)                                           # eps 1e-5 bounds the result to +-11.513
    expected = [-lim, math.log(1e-5 / (1 - 1e-7)), math.log(1 / 3), 0.0, lim, lim]
    assert_close(out, np.array(expected), 1e-5, "inverse_sigmoid")


def test_layer_norm_and_softmax():
    x = np.array([[1.0, 2.0, 3.0, 6.0]], f32)
    p = {"weight": np.array([1, 2, 1, 1], f32), "bias": np.array([0, 0, 1, 0], f32)}
    mu, var = 3.0, ((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + 9) / 4      # biased variance, as torch
    expected = (x[0] - mu) / math.sqrt(var + 1e-5) * p["weight"] + p["bias"]
    assert_close(nn.layer_norm(x, p)[0], expected, 1e-6, "layer_norm")
    sm = nn.softmax(np.array([0.0, math.log(3.0)], f32))
    assert_close(sm, np.array([0.25, 0.75]), 1e-7, "softmax")


def test_multi_head_attention_single_head_by_hand():
    eye = {"weight": np.eye(2, dtype=f32), "bias": np.zeros(2, f32)}
    p = {"q_proj": eye, "k_proj": eye, "v_proj": eye, "out_proj": eye}
    x = np.array([[[1.0, 0.0], [0.0, 1.0]]], f32)                   # two tokens, identity projections
    out = nn.multi_head_attention(x, x, p, num_heads=1)
    a = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1)   # softmax of (1, 0) / sqrt(2)
    assert_close(out[0], np.array([[a, 1 - a], [1 - a, a]]), 1e-6, "attention")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_primitives_keep_the_dtype(dtype):
    # Constants are Python numbers, cast to the data's dtype (NumPy >= 2, NEP 50): float32 stays float32, and float64
    # is never rounded to float32 on the way.
    r = np.random.default_rng(1)
    x = r.standard_normal((1, 3, 5, 5)).astype(dtype)
    w = r.standard_normal((4, 3, 3, 3)).astype(dtype)
    bn = {k: r.uniform(0.5, 1.5, 4).astype(dtype) for k in ("weight", "bias", "running_mean", "running_var")}
    t = r.standard_normal((2, 6, 4)).astype(dtype)
    lin = {"weight": r.standard_normal((4, 4)).astype(dtype), "bias": r.standard_normal(4).astype(dtype)}
    norm = {"weight": np.ones(4, dtype), "bias": np.zeros(4, dtype)}
    attn = {"q_proj": lin, "k_proj": lin, "v_proj": lin, "out_proj": lin}
    results = {
        "conv2d": nn.conv2d(x, w, None, 2, 1), "batch_norm": nn.batch_norm(x[:, :1].repeat(4, 1), bn),
        "max_pool2d": nn.max_pool2d(x), "avg_pool2d_ceil": nn.avg_pool2d_ceil(x), "upsample": nn.upsample_nearest2x(x),
        "linear": nn.linear(t, lin), "layer_norm": nn.layer_norm(t, norm), "softmax": nn.softmax(t),
        "mlp": nn.mlp(t, [lin, lin]), "attention": nn.multi_head_attention(t, t, attn, 2),
        "sigmoid": nn.sigmoid(t), "inverse_sigmoid": nn.inverse_sigmoid(nn.sigmoid(t)),
    }
    for act in ("relu", "silu", "gelu", None):
        results[f"conv_bn {act}"] = nn.conv_bn(x, w, bn, 1, 1, act)
        results[f"activation_ {act}"] = nn.activation_(t.copy(), act)
    for name, out in results.items():
        assert out.dtype == dtype, f"{name} returned {out.dtype}"
    with pytest.raises(ValueError, match="unknown activation"):
        nn.activation_(t.copy(), "tanh")


def test_topk_is_stable_and_ranks_nan_first():
    scores = np.array([[0.5, 0.9, np.nan, 0.9, 0.1, 0.5]], np.float32)
    # descending; equal scores keep index order (1 before 3, 0 before 5); NaN first, as torch.topk ranks it
    assert nn.topk(scores, 6).tolist() == [[2, 1, 3, 0, 5, 4]]
    assert nn.topk(scores, 2).tolist() == [[2, 1]]

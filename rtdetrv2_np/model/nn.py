"""Primitives: the handful of PyTorch ops RT-DETRv2 inference needs, as NumPy functions.

Each function names the PyTorch op it reproduces ([11] in the package's reference list). Every function keeps the
dtype of its inputs: float32 data gives float32 results (as PyTorch computes them), float64 data float64. Constants
are Python numbers, which NumPy >= 2 casts to the dtype of the array they meet (NEP 50), so none promotes float32
to float64. Layout is PyTorch's: images are [B, C, H, W] (NCHW), token sequences are [B, N, C].

Shape letters: the glossary in the package docstring (rtdetrv2_np/__init__.py).
"""

import math

import numpy as np
import scipy.special


# ----------------------------------------------------------------------------------------------------------------
# Convolution, pooling, resampling (NCHW)
# ----------------------------------------------------------------------------------------------------------------

IM2COL_BLOCK = 1 << 19   # floats per im2col block (2 MB): big enough for efficient BLAS calls, small enough to
                         # reuse one buffer instead of touching fresh pages for a whole [C*KH*KW, Ho*Wo] matrix


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """torch.nn.functional.conv2d (groups=1, dilation=1) as im2col + BLAS matmul.

    x [B, C_in, H, W], weight [C_out, C_in, KH, KW], bias [C_out] or None -> [B, C_out, Ho, Wo].
    Zero padding on all four sides, Ho = (H + 2*padding - KH) // stride + 1.

    im2col: row (c, kh, kw) of the column matrix holds the input pixel that kernel tap (kh, kw) of channel c sees
    at each output pixel, so the convolution is one matrix product W[C_out, C_in*KH*KW] @ cols. The columns are
    built for a band of output rows at a time (IM2COL_BLOCK) into one reused buffer.
    """
    B, C, H, W = x.shape
    C_out, C_in, KH, KW = weight.shape
    if C != C_in:
        raise ValueError(f"conv2d: input has {C} channels, weight expects {C_in}")
    Ho = (H + 2 * padding - KH) // stride + 1
    Wo = (W + 2 * padding - KW) // stride + 1
    w2 = weight.reshape(C_out, C_in * KH * KW)                                    # [C_out, C_in*KH*KW]
    if KH == 1 and KW == 1 and padding == 0:
        if stride != 1:
            x = x[:, :, ::stride, ::stride]                                       # [B, C_in, Ho, Wo]
        out = np.matmul(w2, x.reshape(B, C, Ho * Wo)).reshape(B, C_out, Ho, Wo)   # [B, C_out, Ho, Wo]
    else:
        if padding:
            x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))  # [B, C_in, H+2p, W+2p]
        out = np.empty((B, C_out, Ho, Wo), dtype=x.dtype)                        # [B, C_out, Ho, Wo]
        rows = max(1, min(Ho, IM2COL_BLOCK // (C * KH * KW * Wo)))              # output rows per block
        buf = np.empty((C, KH, KW, rows, Wo), dtype=x.dtype)                     # [C_in, KH, KW, rows, Wo]
        for b in range(B):
            for y0 in range(0, Ho, rows):
                n = min(rows, Ho - y0)
                cols = buf[:, :, :, :n]                                          # [C_in, KH, KW, n, Wo]
                for kh in range(KH):
                    for kw in range(KW):
                        top = kh + stride * y0
                        cols[:, kh, kw] = x[b, :, top:top + stride * (n - 1) + 1:stride,
                                            kw:kw + stride * (Wo - 1) + 1:stride]
                out[b, :, y0:y0 + n] = (w2 @ cols.reshape(C * KH * KW, n * Wo)).reshape(C_out, n, Wo)
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def bn_scale_shift(p, eps=1e-5):
    """Eval-mode BatchNorm2d as a per-channel affine map: (scale, shift), each [C].

    p holds weight, bias, running_mean, running_var [C]. scale = w / sqrt(var + eps), shift = b - mean * scale, in
    the order transformers' RTDetrV2FrozenBatchNorm2d uses ([5]). eps 1e-5: PyTorch's BatchNorm2d default, also
    hard-coded in that class.
    """
    scale = p["weight"] * (1 / np.sqrt(p["running_var"] + eps))                   # [C]
    shift = p["bias"] - p["running_mean"] * scale                                # [C]
    return scale, shift


def batch_norm(x, p, eps=1e-5):
    """Eval-mode torch.nn.BatchNorm2d / FrozenBatchNorm2d: y = x * scale + shift per channel. x [B, C, H, W]."""
    scale, shift = bn_scale_shift(p, eps)                                        # [C], [C]
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def conv_bn(x, weight, bn, stride=1, padding=0, act=None, eps=1e-5):
    """Conv2d without bias, then eval-mode BatchNorm2d, then an activation, computed as one convolution.

    x [B, C_in, H, W], weight [C_out, C_in, KH, KW], bn holds weight, bias, running_mean, running_var [C_out]
    -> [B, C_out, Ho, Wo]. Eval-mode BN is a fixed affine map per output channel, so it folds into the
    convolution ("BN folding"):
        BN(conv(x, W)) = conv(x, W * s) + (b - mean * s),   s = w / sqrt(var + eps)
    which saves two passes over the output. Equal to batch_norm(conv2d(x, W)) up to float32 rounding (~1e-7
    relative; tests/test_nn.py checks it). The activation (see `activation_`) is applied in place.
    """
    scale, shift = bn_scale_shift(bn, eps)                                       # [C_out], [C_out]
    out = conv2d(x, weight * scale[:, None, None, None], shift, stride, padding)  # [B, C_out, Ho, Wo]
    return activation_(out, act)


def conv_norm(x, p, stride=1, act=None, eps=1e-5):
    """A ConvNormLayer of the checkpoint: conv (no bias, padding (k-1)//2) -> BatchNorm -> activation.

    p holds the convolution and its BatchNorm under the checkpoint's names: "conv" / "norm" in the hybrid encoder
    ([5] RTDetrV2ConvNormLayer), "convolution" / "normalization" in the backbone ([5] RTDetrResNetConvLayer).
    x [B, C_in, H, W] -> [B, C_out, Ho, Wo]; act as in `activation_`.
    """
    conv, norm = ("conv", "norm") if "conv" in p else ("convolution", "normalization")
    w = p[conv]["weight"]                                                        # [C_out, C_in, k, k]
    return conv_bn(x, w, p[norm], stride, (w.shape[-1] - 1) // 2, act, eps)      # [B, C_out, Ho, Wo]


def max_pool2d(x, kernel=3, stride=2, padding=1):
    """torch.nn.functional.max_pool2d with -inf padding. x [B, C, H, W] -> [B, C, Ho, Wo]."""
    B, C, H, W = x.shape
    Ho = (H + 2 * padding - kernel) // stride + 1
    Wo = (W + 2 * padding - kernel) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)),
                constant_values=-np.inf)                                         # [B, C, H+2p, W+2p]
    out = np.full((B, C, Ho, Wo), -np.inf, dtype=x.dtype)                        # [B, C, Ho, Wo]
    for kh in range(kernel):
        for kw in range(kernel):
            np.maximum(out, xp[:, :, kh:kh + stride * (Ho - 1) + 1:stride, kw:kw + stride * (Wo - 1) + 1:stride],
                       out=out)
    return out


def avg_pool2d_ceil(x):
    """torch.nn.AvgPool2d(2, 2, padding=0, ceil_mode=True). x [B, C, H, W] -> [B, C, ceil(H/2), ceil(W/2)].

    With ceil_mode an odd edge gets a last, partial window; PyTorch divides it by the number of in-bounds pixels
    (padding is 0, so count_include_pad has nothing to count). Sums run in the same order as PyTorch's kernel.
    """
    B, C, H, W = x.shape
    Ho, Wo = -(-H // 2), -(-W // 2)
    xp = np.pad(x, ((0, 0), (0, 0), (0, 2 * Ho - H), (0, 2 * Wo - W)))           # [B, C, 2*Ho, 2*Wo]
    s = xp[:, :, 0::2, 0::2] + xp[:, :, 0::2, 1::2] + xp[:, :, 1::2, 0::2] + xp[:, :, 1::2, 1::2]  # [B, C, Ho, Wo]
    count = np.full((Ho, Wo), 4, dtype=np.int64)                                 # [Ho, Wo]
    if H % 2:
        count[-1, :] //= 2
    if W % 2:
        count[:, -1] //= 2
    return s / count.astype(x.dtype)


def upsample_nearest2x(x):
    """F.interpolate(scale_factor=2.0, mode='nearest'): out[y, x] = in[y // 2, x // 2]. [B, C, H, W] -> [B, C, 2H, 2W]."""
    return x.repeat(2, axis=2).repeat(2, axis=3)


# ----------------------------------------------------------------------------------------------------------------
# Activations. Each takes out=: out=x computes in place, on an array this package has just made.
# ----------------------------------------------------------------------------------------------------------------

def relu(x, out=None):
    """torch.nn.functional.relu: max(x, 0)."""
    return np.maximum(x, 0, out=out)


def sigmoid(x):
    """torch.sigmoid, written 1 / (1 + exp(-x)) so that +inf -> 1 and -inf -> 0 exactly (no inf/inf = NaN)."""
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


def silu(x, out=None):
    """torch.nn.functional.silu: x * sigmoid(x), computed as x / (1 + exp(-x)) (one division, one temporary)."""
    t = np.negative(x)
    with np.errstate(over="ignore"):
        np.exp(t, out=t)
    t += 1
    return np.divide(x, t, out=out)


def erf(x):
    """Error function in the dtype of x (scipy.special.erf; NumPy has none)."""
    return scipy.special.erf(x).astype(x.dtype, copy=False)


def gelu(x, out=None):
    """torch.nn.GELU() (the exact erf form, not the tanh approximation): 0.5 * x * (1 + erf(x / sqrt(2))).

    Computed as x * (0.5 * (1 + erf(x / sqrt(2)))): scaling by 0.5 is exact, so this equals the formula's order.
    """
    t = erf(x * (1 / math.sqrt(2)))
    t += 1
    t *= 0.5
    return np.multiply(x, t, out=out)


def activation_(x, act):
    """Apply the activation named `act` ("relu", "silu", "gelu" or None: the config's names) to x in place.

    x must be an array this package has just made (a convolution's or linear layer's output). Returns x.
    """
    if act is None:
        return x
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[act](x, out=x)


ACTIVATIONS = {"relu": relu, "silu": silu, "gelu": gelu}


# ----------------------------------------------------------------------------------------------------------------
# Token ops ([B, N, C])
# ----------------------------------------------------------------------------------------------------------------

def linear(x, p):
    """torch.nn.Linear: x @ W^T + b. x [..., C_in], p["weight"] [C_out, C_in], p["bias"] [C_out] -> [..., C_out]."""
    y = np.matmul(x, p["weight"].T)                                              # [..., C_out]
    if p.get("bias") is not None:
        y += p["bias"]
    return y


def layer_norm(x, p, eps=1e-5):
    """torch.nn.LayerNorm over the last axis (biased variance). eps 1e-5: config.layer_norm_eps of every checkpoint."""
    mean = x.mean(axis=-1, keepdims=True)                                        # [..., 1]
    xc = x - mean
    var = np.mean(xc * xc, axis=-1, keepdims=True)                               # [..., 1]
    return xc / np.sqrt(var + eps) * p["weight"] + p["bias"]


def softmax(x, axis=-1):
    """torch.softmax: exp(x - max) / sum."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def mlp(x, layers):
    """RTDetrV2MLPPredictionHead: Linear layers with ReLU between them (not after the last). x [..., C_in]."""
    for i, p in enumerate(layers):
        x = linear(x, p)
        if i < len(layers) - 1:
            x = relu(x, out=x)
    return x


def inverse_sigmoid(x, eps=1e-5):
    """inverse_sigmoid of the reference code: clip to [0, 1], then log(max(x, eps) / max(1 - x, eps)).

    eps 1e-5 is the reference default; it bounds the result to about +-11.513 for boxes at 0 or 1.
    """
    x = np.clip(x, 0, 1)
    return np.log(np.maximum(x, eps) / np.maximum(1 - x, eps))


def multi_head_attention(x_qk, x_v, p, num_heads):
    """RTDetrV2SelfAttention (eager path): softmax(Q K^T / sqrt(D)) V with separate q/k/v projections.

    x_qk [B, N, C] is the input of queries and keys (features + position embedding); x_v [B, N, C] the value input.
    p holds q_proj, k_proj, v_proj, out_proj. Attention is over all N tokens (no mask at inference).
    """
    B, N, C = x_qk.shape
    D = C // num_heads
    q = linear(x_qk, p["q_proj"]).reshape(B, N, num_heads, D).transpose(0, 2, 1, 3)   # [B, M, N, D]
    k = linear(x_qk, p["k_proj"]).reshape(B, N, num_heads, D).transpose(0, 2, 1, 3)   # [B, M, N, D]
    v = linear(x_v, p["v_proj"]).reshape(B, N, num_heads, D).transpose(0, 2, 1, 3)    # [B, M, N, D]
    scores = np.matmul(q, k.transpose(0, 1, 3, 2)) * D ** -0.5                   # [B, M, N, N]
    attn = softmax(scores, axis=-1)                                              # [B, M, N, N]
    out = np.matmul(attn, v)                                                     # [B, M, N, D]
    out = out.transpose(0, 2, 1, 3).reshape(B, N, C)                             # [B, N, C]
    return linear(out, p["out_proj"])


# ----------------------------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------------------------

def topk(scores, k):
    """Indices of torch.topk(scores, k, dim=-1, largest=True, sorted=True), ties broken by the lower index.

    scores [..., N] -> [..., k] (int). A stable descending sort: equal scores keep index order (torch.topk leaves
    their order unspecified, so on exact ties the two may differ). NaN ranks first, as in torch.topk (here tied
    with +inf).
    """
    key = np.where(np.isnan(scores), -np.inf, -scores)                           # [..., N] ascending = descending
    return np.argsort(key, axis=-1, kind="stable")[..., :k]                      # [..., k]

"""Fast attention kernels: multi-head self-attention and the multi-scale deformable attention sum.

References
    [2] Zhu et al., Deformable DETR, arXiv 2010.04159, §4.1 Eq. (3): the multi-scale deformable attention sum.
    [3] Lv et al., RT-DETRv2, arXiv 2407.17140, §2.1: per-level point counts, the discrete sampling operator.
    [8] Vaswani et al., Attention Is All You Need, arXiv 1706.03762, §3.2.2: multi-head attention.
    [11] torch.nn.functional.grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False).

What each replaces, and how it differs:
    self_attention         model/nn.multi_head_attention: q and k from one stacked GEMM, heads made contiguous
                           once so that Q K^T and A V are batched BLAS products, softmax's exponentials in place
                           and its division applied to A V's rows (N D values instead of N N). Same formulas.
    bilinear_taps_flat     model/deformable_attention.sample_bilinear (index part): the same float operations
                           for the texel coordinates and weights, for all L levels at once (per-slot level sizes),
                           as flat row indices into the value tensor [B*Nv*M, D] instead of one gather per level.
    discrete_texels        model/deformable_attention.sample_discrete (index part), all levels at once.
    deformable_core        model/deformable_attention.deformable_attention_core: one gather of every tap of
                           every slot, then out = sum over (slot, tap) of (A * tap weight) * texel as one batched
                           matrix product per (image, query, head). The reference sums the 4 taps, multiplies by A
                           and sums the K slots in order; here the products A * w are formed first and BLAS sums
                           the 4K terms in its own order: a few float32 ulps apart (tests/test_fast.py).
"""

import numpy as np

from .ops import EPILOGUE_BLOCK, activation_, chunks, layer_norm_, parallel


def linear(x, p):
    """torch.nn.Linear with a prepared {"w": [C_out, C_in], "b": [C_out]}: x @ W^T + b, bias added in place."""
    y = np.matmul(x, p["w"].T)                                                       # [..., C_out]
    y += p["b"]
    return y


def _exp_shifted_rows_(x, out=None):
    """exp(x - max over the last axis) in place, in chunks of rows of at most EPILOGUE_BLOCK values (the steps of
    model/nn.softmax before its division); yields each chunk while it is in cache, for the caller's last step, with
    the same rows of out ([..., k], x's shape but the last axis; None if not given). Rows: x as [N, L] when
    contiguous, else x[None] (one piece); out is cut the same way."""
    def as_rows(a):
        return a.reshape(-1, a.shape[-1]) if x.flags.c_contiguous else a[None]       # [N, L] (a view)
    rows = as_rows(x)
    out_rows = None if out is None else as_rows(out)
    for r0, r1 in chunks(0, rows.shape[0], rows[0].size, EPILOGUE_BLOCK):
        xc = rows[r0:r1]
        xc -= xc.max(axis=-1, keepdims=True)
        np.exp(xc, out=xc)
        yield xc, None if out_rows is None else out_rows[r0:r1]


def softmax_(x):
    """model/nn.softmax over the last axis, in place on x (the same operations in the same order), in chunks of
    rows of at most EPILOGUE_BLOCK values: the four passes of a chunk stay in cache. Measured on [8, 300, 300]
    decoder attention scores: NumPy's float32 exp took 1.4 ns per value on 64 K values and 2.5-4.6 ns on 1 M."""
    for xc, _ in _exp_shifted_rows_(x):
        xc /= xc.sum(axis=-1, keepdims=True)
    return x


def exp_rows_(x):
    """The numerator of model/nn.softmax over the last axis, in place: exp(x - max) (the same operations, in chunks
    of rows as softmax_); returns the row sums [..., 1], by BLAS (x @ ones, 6x faster than NumPy's `sum` over rows of
    300). softmax(x) = x / sums afterwards -- self_attention divides its product with V instead (N D values, not
    N N): 5.6 -> 5.3 ms per r18vd decoder layer, 9.2 -> 8.6 ms in AIFI."""
    ones = np.ones((x.shape[-1], 1), x.dtype)                                        # [L, 1]
    sums = np.empty(x.shape[:-1] + (1,), x.dtype)                                    # [..., 1]
    for xc, sc in _exp_shifted_rows_(x, sums):
        np.matmul(xc, ones, out=sc)
    return sums


def self_attention(x_qk, x_v, p):
    """model/nn.multi_head_attention: softmax(Q K^T / sqrt(D)) V, out_proj. x_qk, x_v [B, N, C] -> [B, N, C].

    p from prepare.attention_spec: "qk" ([2C, C] stacked q_proj, k_proj), "v", "out", "heads".
    """
    B, N, C = x_qk.shape
    M = p["heads"]
    D = C // M
    qk = linear(x_qk, p["qk"]).reshape(B, N, 2, M, D).transpose(2, 0, 3, 1, 4)       # [2, B, M, N, D] view
    qk = np.ascontiguousarray(qk)                                                    # heads contiguous for BLAS
    v = np.ascontiguousarray(linear(x_v, p["v"]).reshape(B, N, M, D).transpose(0, 2, 1, 3))   # [B, M, N, D]
    scores = np.matmul(qk[0], qk[1].transpose(0, 1, 3, 2))                           # [B, M, N, N]
    scores *= D ** -0.5
    sums = exp_rows_(scores)                                                         # [B, M, N, 1]
    out = np.matmul(scores, v)                                                       # [B, M, N, D]
    out /= sums                                                                      # softmax(scores) V
    return linear(out.transpose(0, 2, 1, 3).reshape(B, N, C), p["out"])              # [B, N, C]


# ----------------------------------------------------------------------------------------------------------------
# Multi-scale deformable attention, all levels at once
# ----------------------------------------------------------------------------------------------------------------

def slot_levels(spatial_shapes, n_points, dtype):
    """Per sampling slot (level-major, K = sum K_l): its level's W, H (as `dtype` and as int) and first token.

    Returns (W_f [K], H_f [K], W_i [K], H_i [K], start [K]); start = sum of H*W over the levels before.
    """
    level = np.repeat(np.arange(len(spatial_shapes)), n_points)                     # [K]
    H = np.array([h for h, _ in spatial_shapes], np.int64)[level]                    # [K]
    W = np.array([w for _, w in spatial_shapes], np.int64)[level]                    # [K]
    starts = np.concatenate([[0], np.cumsum([h * w for h, w in spatial_shapes])[:-1]]).astype(np.int64)
    return W.astype(dtype), H.astype(dtype), W, H, starts[level]


def bilinear_taps_flat(loc, spatial_shapes, n_points, Nv, M):
    """Texel rows and weights of bilinear sampling [11] for every slot of every level at once.

    loc [B, Nq, M, K, 2] normalised (x, y). Returns (rows [B, Nq, M, K, 4] int64, weights [B, Nq, M, K, 4]):
    rows index value.reshape(B*Nv*M, D) (row (b*Nv + token)*M + m), taps in the order nw, ne, sw, se; a tap
    outside its map has weight 0 and a clipped (in-map) row. The coordinates and weights are computed by the
    operations of model/deformable_attention.sample_bilinear, in its order, so they are the same numbers.
    """
    B, Nq, _, K, _ = loc.shape
    Wf, Hf, Wi, Hi, start = slot_levels(spatial_shapes, n_points, loc.dtype)
    g = 2 * loc - 1                                                                  # [B, Nq, M, K, 2]
    ix = ((g[..., 0] + 1) * Wf - 1) / 2                                              # [B, Nq, M, K]
    iy = ((g[..., 1] + 1) * Hf - 1) / 2
    x0, y0 = np.floor(ix), np.floor(iy)
    x1, y1 = x0 + 1, y0 + 1
    wx = (x1 - ix, ix - x0)                                                          # [B, Nq, M, K] x 2
    wy = (y1 - iy, iy - y0)
    Wm, Hm = Wi - 1, Hi - 1                                                          # [K]
    # per axis: is the tap's column (row) inside the map, and its clipped index (as int64)
    cin = ((x0 >= 0) & (x0 <= Wm), (x1 >= 0) & (x1 <= Wm))                           # [B, Nq, M, K] x 2
    rin = ((y0 >= 0) & (y0 <= Hm), (y1 >= 0) & (y1 <= Hm))
    col = (np.clip(x0, 0, Wm).astype(np.int64), np.clip(x1, 0, Wm).astype(np.int64))
    row = (np.clip(y0, 0, Hm).astype(np.int64), np.clip(y1, 0, Hm).astype(np.int64))
    base = (np.arange(B, dtype=np.int64)[:, None, None, None] * Nv * M + start * M
            + np.arange(M, dtype=np.int64)[None, None, :, None])                    # [B, 1, M, K]
    rows = np.empty((B, Nq, M, K, 4), np.int64)                                      # [B, Nq, M, K, 4]
    w = np.zeros((B, Nq, M, K, 4), loc.dtype)
    for t, (a, b) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):                    # nw, ne, sw, se
        np.multiply(wx[a], wy[b], out=w[..., t], where=cin[a] & rin[b])              # stays 0 outside the map
        rows[..., t] = base + (row[b] * Wi + col[a]) * M
    return rows, w


def discrete_texels(loc, spatial_shapes, n_points):
    """(column, row) [B, Nq, M, K] int64 of the texel discrete sampling [3] §2.1 reads, every level at once.

    The operations of model/deformable_attention.sample_discrete: trunc(loc * size + 0.5), then clamped.
    """
    Wf, Hf, Wi, Hi, _ = slot_levels(spatial_shapes, n_points, loc.dtype)
    size = np.stack([Wf, Hf], axis=-1)                                               # [K, 2]
    coord = np.clip(loc * size + 0.5, -1, size).astype(np.int64)                     # [B, Nq, M, K, 2]
    return np.clip(coord[..., 0], 0, Wi - 1), np.clip(coord[..., 1], 0, Hi - 1)


def discrete_rows(loc, spatial_shapes, n_points, Nv, M):
    """Texel rows [B, Nq, M, K, 1] of discrete sampling into value.reshape(B*Nv*M, D) (see bilinear_taps_flat)."""
    B = loc.shape[0]
    col, row = discrete_texels(loc, spatial_shapes, n_points)
    _, _, Wi, _, start = slot_levels(spatial_shapes, n_points, loc.dtype)
    token = start + row * Wi + col                                                   # [B, Nq, M, K]
    image = np.arange(B, dtype=np.int64)[:, None, None, None] * Nv
    head = np.arange(M, dtype=np.int64)[None, None, :, None]
    return ((image + token) * M + head)[..., None]


GATHER_BLOCK = 1 << 19   # floats gathered at a time (2 MB): the texels stay in cache for the product that reads
                         # them, and batch 4 does not hold a 60 MB gather


def deformable_core(value, spatial_shapes, loc, attention_weights, n_points, method="bilinear"):
    """model/deformable_attention.deformable_attention_core, fast: same arguments, same result up to rounding.

    value [B, Nv, M, D], loc [B, Nq, M, K, 2], attention_weights [B, Nq, M, K] -> [B, Nq, M*D].
    One gather of all taps: T = 4 (bilinear) or 1 (discrete) rows per slot, then for each (image, query, head)
    out = (A * tap weights)[1, K*T] @ texels[K*T, D], a batched matrix product. Split over threads by query.
    """
    B, Nv, M, D = value.shape
    Nq, K = loc.shape[1], loc.shape[3]
    texels = value.reshape(B * Nv * M, D)                                            # [B*Nv*M, D]
    if method == "bilinear":
        rows, w = bilinear_taps_flat(loc, spatial_shapes, n_points, Nv, M)           # [B, Nq, M, K, 4] x 2
        w *= attention_weights[..., None]
    elif method == "discrete":
        rows = discrete_rows(loc, spatial_shapes, n_points, Nv, M)                   # [B, Nq, M, K, 1]
        w = attention_weights[..., None]
    else:
        raise ValueError(f"method must be 'bilinear' or 'discrete', got {method!r}")
    T = rows.shape[-1]
    rows = rows.reshape(B * Nq, M, K * T)
    w = np.ascontiguousarray(w).reshape(B * Nq, M, 1, K * T)
    out = np.empty((B * Nq, M, 1, D), value.dtype)                                   # [B*Nq, M, 1, D]
    step = max(1, GATHER_BLOCK // (M * K * T * D))                                   # queries per gather

    def part(lo, hi):
        for q0 in range(lo, hi, step):
            q1 = min(hi, q0 + step)
            v = np.take(texels, rows[q0:q1], axis=0)                                 # [n, M, K*T, D]
            np.matmul(w[q0:q1], v, out=out[q0:q1])
    parallel(part, B * Nq, B * Nq * M * K * T * D)
    return out.reshape(B, Nq, M * D)                                                 # [B, Nq, M*D]


def sampling_locations(reference_boxes, offsets, n_points_scale, offset_scale):
    """model/deformable_attention.sampling_locations (the same operations, so the same bits): b_xy + Delta *
    (1/K_l) * b_wh * offset_scale, on the (K, 2) axes flattened to one of 2K values, with the per-slot scale and
    the box's (w, h) and (x, y) repeated along it: broadcasting over an inner axis of 2 made NumPy run its inner
    loop 2 values at a time (0.83 -> 0.15 ms per r18vd decoder layer)."""
    B, Nq, M, K, _ = offsets.shape
    scale = np.repeat(n_points_scale, 2)                                             # [2K] (x, y per slot)
    b_wh = np.tile(reference_boxes[:, :, 2:], K)[:, :, None]                        # [B, Nq, 1, 2K]
    b_xy = np.tile(reference_boxes[:, :, :2], K)[:, :, None]                        # [B, Nq, 1, 2K]
    loc = offsets.reshape(B, Nq, M, 2 * K) * scale                                   # [B, Nq, M, 2K]
    loc *= b_wh
    loc *= offset_scale
    loc += b_xy                                                                      # b_xy + offset (commutes)
    return loc.reshape(B, Nq, M, K, 2)                                               # [B, Nq, M, K, 2]


def deformable_attention(p, query, reference_boxes, value, spatial_shapes, M, n_points, offset_scale, method):
    """model/deformable_attention.multiscale_deformable_attention with a precomputed value tensor.

    p: a prepared decoder layer ("offsets_weights" stacked GEMM, "n_points_scale", "out"); value [B, Nv, M, D]
    is value_proj(memory), computed by the caller. Returns (out [B, Nq, C], loc, attention weights).
    """
    B, Nq, C = query.shape
    K = sum(n_points)
    ow = linear(query, p["offsets_weights"])                                         # [B, Nq, M*K*3]
    offsets = ow[..., :M * K * 2].reshape(B, Nq, M, K, 2)                            # [B, Nq, M, K, 2]
    weights = softmax_(np.ascontiguousarray(ow[..., M * K * 2:]).reshape(B, Nq, M, K))   # [B, Nq, M, K]
    loc = sampling_locations(reference_boxes, offsets, p["n_points_scale"], offset_scale)
    out = deformable_core(value, spatial_shapes, loc, weights, n_points, method)     # [B, Nq, M*D]
    return linear(out, p["out"]), loc, weights


def encoder_layer(x, pos, p, act, eps):
    """model/hybrid_encoder.encoder_layer (post-norm) with the fast attention and activation (ops.gelu for GELU).
    x [B, N, C], pos [N, C] or None."""
    qk = x if pos is None else x + pos
    x = layer_norm_(x + self_attention(qk, x, p["attn"]), p["ln1"], eps)
    h = activation_(linear(x, p["fc1"]), act)                                        # [B, N, F]
    return layer_norm_(x + linear(h, p["fc2"]), p["ln2"], eps)                        # [B, N, C]

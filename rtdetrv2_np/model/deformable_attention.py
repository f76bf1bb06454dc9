"""Multi-scale deformable attention, RT-DETRv2 version: the decoder's cross-attention into the encoder memory.

Each object query looks at only K = sum_l K_l points of the multi-scale feature maps instead of all Nv tokens. The
query itself predicts where those points are (offsets around its reference box) and how much each one counts
(attention weights); the feature at each point is read off the map by interpolation.

References
    [1] Zhao et al., RT-DETR, arXiv 2304.08069, §4.1 (the decoder uses deformable cross-attention).
    [2] Zhu et al., Deformable DETR, arXiv 2010.04159, §3 Eq. (2) (deformable attention) and Eq. (3) (multi-scale).
    [3] Lv et al., RT-DETRv2, arXiv 2407.17140, §3 (a distinct number of sampling points per level; the optional
        discrete sampling operator that replaces grid_sample), with their ablations in §4.
    [4] lyuwenyu/RT-DETR at 068dfde (architecture of b8957b3), rtdetrv2_pytorch/src/zoo/rtdetr/:
        rtdetrv2_decoder.py `MSDeformableAttention` (the module) and utils.py `deformable_attention_core_func_v2`
        (the sampling and weighted sum). This file is their counterpart.
    [5] fundamentalvision/Deformable-DETR at 11169a6, models/ops/modules/ms_deform_attn.py `MSDeformAttn` (box
        references: `offsets / n_points * ref_wh * 0.5`) and models/ops/functions/ms_deform_attn_func.py
        `ms_deform_attn_core_pytorch` (the pure-PyTorch reference of the same sum).
    [6] PyTorch torch.nn.functional.grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False).
    [hf] transformers 5.24 models/rt_detr_v2/modeling_rt_detr_v2.py: `RTDetrV2MultiscaleDeformableAttention` and
        `multi_scale_deformable_attention_v2`, whose parameter names (sampling_offsets, attention_weights,
        value_proj, output_proj, n_points_scale) the params tree keeps.

The equation. [2] Eq. (3), for one query q with content z_q (query + position embedding) and reference p_q:

    MSDeformAttn(z_q, p_q, {x^l}) = sum_m W_m [ sum_l sum_k A_mlqk * W'_m x^l(p_mlqk) ],   m < M, l < L, k < K_l

    W'_m   value_proj, its D output features of head m    (applied once to all Nv memory tokens)
    A_mlqk softmax over the K = sum_l K_l (level, point) slots of head m; they sum to 1   (attention_weights)
    p_mlqk sampling location on level l, normalised to [0, 1] (x right, y down)          (sampling_offsets)
    x^l(p) the level-l map read at p: bilinear (grid_sample [6]) or discrete (nearest-texel gather [3])
    W_m    output_proj, applied to the M heads concatenated (channel = m*D + d)

[2] Eq. (2) is the single-level case (L = 1). With 4-number reference boxes b = (cx, cy, w, h) the offsets are
scaled by the box ([5], and [4] for RT-DETRv2):

    p_mlqk = b_xy + Delta_mlqk * (1 / K_l) * b_wh * offset_scale,    offset_scale = 0.5

so a raw offset of +-K_l reaches the box edge. RT-DETRv2 [3] changes three things against Deformable DETR:
    1. K_l may differ per level. The K points of a head are stored level-major: point p belongs to level l for
       sum(K_<l) <= p < sum(K_<=l), and 1 / K_l is the per-point buffer n_points_scale. The softmax still runs
       over all K slots of a head. The released configs of [4] use one count on all 3 levels: 4 (K = 12), or
       1, 2, 3 in the r18vd_sp1/sp2/sp3 models; unequal counts are allowed by the code and tested here.
    2. offset_scale is a parameter ([4] `offset_scale=0.5`, [hf] config.decoder_offset_scale = 0.5); in [5] it
       is the literal 0.5.
    3. method "discrete" ([4] `method='discrete'`, the *_dsp models) replaces bilinear interpolation by a gather of
       one texel, so the model exports without grid_sample.

Layout: points are level-major, the offsets' last axis is (x, y), value tokens are the levels flattened row-major
and concatenated fine to coarse, the output channel is head*D + d -- all as in [4] and [hf].

Featured: the whole module at inference, both sampling methods, any number of points per level, any (H_l, W_l).
Left out: the 2-number reference points branch (`ref_xy + offsets / [W_l, H_l]`, used by Deformable DETR, never
by RT-DETRv2's decoder), the value padding mask (None at inference), the parameter initialisation (training only).

Deviations.
    * Discrete sampling clamps x to [0, W_l - 1] and y to [0, H_l - 1], as [hf] does. The official code [4] clamps
      both to H_l - 1 (marked "FIX ME? for rectangle input"); the two agree on square maps, i.e. at 640 x 640.
    * Bilinear: we evaluate grid_sample's formula ix = ((g + 1) * W - 1) / 2 with separate float32 roundings, as
      PyTorch's generic and CUDA kernels write it. PyTorch's x86 CPU kernel, as built in torch 2.13 (AVX-512),
      fuses multiply-adds: its results equal, bit for bit, those of ix = fma(g + 1, W / 2, -0.5) and an fma chain
      over the four corners (tools/check_msda_against_torch.py shows both). NumPy has no fused multiply-add, so
      our ix can be 1 ulp away from PyTorch-on-CPU's (4e-6 pixel near ix = 60), and a sample then differs by that
      times the feature's slope: measured up to ~3e-6 on unit-size features with 60-80 pixel wide maps, < 1e-6
      on small maps. Discrete sampling has no such step; there only the order of the final sum differs (~1 ulp).
"""

import numpy as np

from .nn import linear, softmax

f32 = np.float32

# [4] MSDeformableAttention(offset_scale=0.5), [hf] config.decoder_offset_scale = 0.5; [5] hard-codes the 0.5.
# With it, a raw offset of +-K_l moves a point from the box centre to the box edge.
OFFSET_SCALE = 0.5


def points_scale(n_points):
    """The buffer n_points_scale of [4] / [hf]: 1 / K_l repeated K_l times, level-major. -> [K] float32.

    Computed as [4] does: the Python float 1 / K_l, then rounded to float32 (exact for K_l = 1, 2, 4, 8).
    """
    return np.array([1 / k for k in n_points for _ in range(k)], dtype=np.float32)   # [K]


def sampling_locations(reference_boxes, offsets, n_points, offset_scale=OFFSET_SCALE, n_points_scale=None):
    """Where each head of each query samples: p = b_xy + Delta * (1/K_l) * b_wh * offset_scale ([4], [5]).

    reference_boxes [B, Nq, 4] (cx, cy, w, h in [0, 1]); offsets [B, Nq, M, K, 2], the raw sampling_offsets
    output, last axis (x, y); n_points: K_l per level, points level-major. n_points_scale: the checkpoint's [K]
    buffer of 1/K_l, used instead of points_scale(n_points) when given.
    Returns loc [B, Nq, M, K, 2], normalised (x, y); points may lie outside [0, 1] (offsets are unbounded).

    The product runs left to right in float32 in the reference's order: ((offsets * 1/K_l) * wh) * offset_scale.
    """
    scale = points_scale(n_points) if n_points_scale is None else n_points_scale     # [K]
    ref_xy = reference_boxes[:, :, None, None, :2]                                   # [B, Nq, 1, 1, 2]
    ref_wh = reference_boxes[:, :, None, None, 2:]                                   # [B, Nq, 1, 1, 2]
    offset = offsets * scale[:, None] * ref_wh * f32(offset_scale)                   # [B, Nq, M, K, 2]
    return ref_xy + offset                                                           # [B, Nq, M, K, 2]


# ----------------------------------------------------------------------------------------------------------------
# Reading a feature map at a normalised location: x^l(p) of Eq. (3), two ways.
#
# Normalised coordinates: loc = (0, 0) is the top-left corner of the map, (1, 1) the bottom-right corner, and the
# centre of pixel (i, j) (column i, row j) sits at ((i + 0.5) / W, (j + 0.5) / H) -- grid_sample's
# align_corners=False convention [6].
#
#   bilinear   at a pixel centre: exactly that pixel. Between centres: the bilinear mix of the 4 nearest pixels.
#              Within half a pixel outside the centres of the border pixels, part of the weight falls on pixels
#              outside the map, which count as 0 (zero padding, no renormalisation): on the map's edge, loc = 0
#              or 1, a border pixel contributes only half (a quarter at a corner). Half a pixel or more outside
#              the map: 0.
#   discrete   round loc * W to the nearest integer (halves up) and clamp into the map: at a pixel centre,
#              loc * W = i + 0.5, it picks pixel i + 1 -- the operator places pixel i at loc * W = i, half a pixel
#              from bilinear's convention. At the edge it clamps, so any point outside reads the border pixel at
#              full weight; it never returns 0.
# ----------------------------------------------------------------------------------------------------------------

def sample_bilinear(value_l, loc_l):
    """x^l(p) by bilinear interpolation: grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False) [6].

    value_l [N, H, W, D] (N = B*M; one map per batch item and head), loc_l [N, P, 2] normalised (x, y) -> [N, P, D].

    In pixel units, with grid g = 2 * loc - 1 in [-1, 1] as [4] passes it to grid_sample:
        ix = ((g_x + 1) * W - 1) / 2,  iy = ((g_y + 1) * H - 1) / 2        (= loc * W - 0.5, up to rounding)
    The four neighbours are x0 = floor(ix), x1 = x0 + 1 and y0 = floor(iy), y1 = y0 + 1, weighted
        nw = (x1 - ix)(y1 - iy)   ne = (ix - x0)(y1 - iy)   sw = (x1 - ix)(iy - y0)   se = (ix - x0)(iy - y0)
    A neighbour outside [0, W-1] x [0, H-1] contributes 0; the four terms are added in the order nw, ne, sw, se.
    """
    N, H, W, D = value_l.shape
    g = f32(2) * loc_l - f32(1)                                                       # [N, P, 2]
    ix = ((g[..., 0] + f32(1)) * f32(W) - f32(1)) / f32(2)                            # [N, P]
    iy = ((g[..., 1] + f32(1)) * f32(H) - f32(1)) / f32(2)                            # [N, P]
    x0, y0 = np.floor(ix), np.floor(iy)                                               # [N, P]
    x1, y1 = x0 + f32(1), y0 + f32(1)                                                 # [N, P]
    # The four neighbours on a leading axis, in the order nw, ne, sw, se.
    xs = np.stack([x0, x1, x0, x1])                                                   # [4, N, P]
    ys = np.stack([y0, y0, y1, y1])                                                   # [4, N, P]
    ws = np.stack([(x1 - ix) * (y1 - iy), (ix - x0) * (y1 - iy),
                   (x1 - ix) * (iy - y0), (ix - x0) * (iy - y0)])                     # [4, N, P]
    # Zero padding: a neighbour outside the map gets weight 0 and reads an in-map stand-in texel (its index
    # clipped into the map). For finite features that equals grid_sample's reading 0 there.
    inside = (xs >= 0) & (xs <= W - 1) & (ys >= 0) & (ys <= H - 1)                   # [4, N, P]
    ws = np.where(inside, ws, f32(0))                                                 # [4, N, P]
    xi = np.clip(xs, 0, W - 1).astype(np.intp)                                        # [4, N, P]
    yi = np.clip(ys, 0, H - 1).astype(np.intp)                                        # [4, N, P]
    rows = value_l.reshape(N * H * W, D)                     # [N*H*W, D] one row per texel (a copy unless contiguous)
    v = np.take(rows, np.arange(N)[:, None] * (H * W) + yi * W + xi, axis=0)          # [4, N, P, D]
    v *= ws[..., None]                                                                # [4, N, P, D]
    return v[0] + v[1] + v[2] + v[3]                                                  # [N, P, D]


def sample_discrete(value_l, loc_l):
    """x^l(p) by RT-DETRv2's discrete sampling [3] §3: the texel at trunc(loc * [W, H] + 0.5), clamped into the map.

    value_l [N, H, W, D], loc_l [N, P, 2] normalised (x, y) -> [N, P, D].

    coord = loc * [W, H] + 0.5 in float32, then cast to int64, which truncates toward zero (torch .to(int64) in
    [4]): round-half-up for coord >= 0, and any value in (-1, 0) becomes 0. Then x is clamped to [0, W-1] and y
    to [0, H-1] separately, as [hf] does; the official [4] clamps both to H-1 (identical on square maps). There is
    no interpolation and no zero padding.
    """
    N, H, W, D = value_l.shape
    size = np.array([W, H], dtype=np.float32)                                         # [2]
    coord = loc_l * size + f32(0.5)                                                   # [N, P, 2]
    # Clipping to [-1, size] first leaves the clamped result unchanged and keeps the int cast defined for
    # far-away points; astype then truncates toward zero like torch's cast.
    coord = np.clip(coord, f32(-1), size).astype(np.intp)                             # [N, P, 2]
    x = np.clip(coord[..., 0], 0, W - 1)                                              # [N, P]
    y = np.clip(coord[..., 1], 0, H - 1)                                              # [N, P]
    rows = value_l.reshape(N * H * W, D)                     # [N*H*W, D] one row per texel (a copy unless contiguous)
    return np.take(rows, np.arange(N)[:, None] * (H * W) + y * W + x, axis=0)         # [N, P, D]


SAMPLERS = {"bilinear": sample_bilinear, "discrete": sample_discrete}


# ----------------------------------------------------------------------------------------------------------------
# The weighted sum of Eq. (3): vectorized, and as a plain loop (the definition, and the test oracle).
# ----------------------------------------------------------------------------------------------------------------

def _check_levels(value, spatial_shapes, loc, n_points, method):
    if method not in SAMPLERS:
        raise ValueError(f"method must be 'bilinear' or 'discrete', got {method!r}")
    if len(spatial_shapes) != len(n_points):
        raise ValueError(f"{len(spatial_shapes)} spatial shapes but {len(n_points)} point counts")
    if sum(h * w for h, w in spatial_shapes) != value.shape[1]:
        raise ValueError(f"spatial shapes {spatial_shapes} hold {sum(h * w for h, w in spatial_shapes)} tokens, "
                         f"value has {value.shape[1]}")
    if sum(n_points) != loc.shape[3]:
        raise ValueError(f"n_points {n_points} sum to {sum(n_points)}, loc has {loc.shape[3]} points")


def deformable_attention_core(value, spatial_shapes, loc, attention_weights, n_points, method="bilinear"):
    """sum_l sum_k A_mlqk * x^l_m(p_mlqk) for every batch item, query and head: Eq. (3) without W_m and W'_m.

    value [B, Nv, M, D] (value_proj output; levels flattened row-major, concatenated fine to coarse),
    spatial_shapes [(H_l, W_l)] per level, loc [B, Nq, M, K, 2] normalised (x, y), attention_weights [B, Nq, M, K]
    (softmaxed over K), n_points [K_l] per level, method "bilinear" or "discrete".
    Returns [B, Nq, M*D], channel = head*D + d. Counterpart of [4] `deformable_attention_core_func_v2`.

    One loop over levels; all queries, heads and points of a level are sampled at once. The sum over the K
    points runs in point order, level-major: numpy adds the [.., D] slices one after another (for D > 1; with
    D = 1 it would sum K >= 8 terms pairwise).
    """
    _check_levels(value, spatial_shapes, loc, n_points, method)
    B, Nv, M, D = value.shape
    Nq = loc.shape[1]
    sample = SAMPLERS[method]
    value = value.transpose(0, 2, 1, 3).reshape(B * M, Nv, D)                         # [B*M, Nv, D]
    loc = loc.transpose(0, 2, 1, 3, 4)                                                # [B, M, Nq, K, 2]
    start, p0, sampled = 0, 0, []
    for (H, W), K_l in zip(spatial_shapes, n_points):
        value_l = np.ascontiguousarray(value[:, start:start + H * W])   # [B*M, H_l*W_l, D] a copy, rows flat
        value_l = value_l.reshape(B * M, H, W, D)                                     # [B*M, H_l, W_l, D]
        loc_l = loc[:, :, :, p0:p0 + K_l].reshape(B * M, Nq * K_l, 2)                 # [B*M, Nq*K_l, 2]
        sampled.append(sample(value_l, loc_l).reshape(B * M, Nq, K_l, D))             # [B*M, Nq, K_l, D]
        start, p0 = start + H * W, p0 + K_l
    sampled = np.concatenate(sampled, axis=2)                                         # [B*M, Nq, K, D]
    weights = attention_weights.transpose(0, 2, 1, 3).reshape(B * M, Nq, -1, 1)       # [B*M, Nq, K, 1]
    sampled *= weights                                                                # [B*M, Nq, K, D]
    out = sampled.sum(axis=2)                                                         # [B*M, Nq, D]
    return out.reshape(B, M, Nq, D).transpose(0, 2, 1, 3).reshape(B, Nq, M * D)       # [B, Nq, M*D]


def deformable_attention_core_loop(value, spatial_shapes, loc, attention_weights, n_points, method="bilinear"):
    """deformable_attention_core written out as scalar loops: the readable definition, and the tests' oracle.

    Same arguments and result. Every number is a float32 scalar, and each operation is the one the vectorized
    path does, in the same order, so the two agree bit for bit (for D > 1, see deformable_attention_core). Far
    too slow for inference.
    """
    _check_levels(value, spatial_shapes, loc, n_points, method)
    B, Nv, M, D = value.shape
    Nq = loc.shape[1]
    one, two, half, zero = f32(1), f32(2), f32(0.5), f32(0)
    out = np.zeros((B, Nq, M * D), dtype=np.float32)
    for b in range(B):
        for q in range(Nq):
            for m in range(M):
                acc = [zero] * D                    # sum over (level, point) of A * x^l(p), one per channel d
                start, p = 0, 0                     # first token of level l; running point index (level-major)
                for (H, W), K_l in zip(spatial_shapes, n_points):
                    for _ in range(K_l):
                        x, y = loc[b, q, m, p]      # float32 scalars
                        if method == "bilinear":
                            gx, gy = two * x - one, two * y - one
                            ix = ((gx + one) * f32(W) - one) / two
                            iy = ((gy + one) * f32(H) - one) / two
                            x0, y0 = np.floor(ix), np.floor(iy)
                            x1, y1 = x0 + one, y0 + one
                            taps = [(x0, y0, (x1 - ix) * (y1 - iy)),        # (column, row, weight): nw, ne, sw, se
                                    (x1, y0, (ix - x0) * (y1 - iy)),
                                    (x0, y1, (x1 - ix) * (iy - y0)),
                                    (x1, y1, (ix - x0) * (iy - y0))]
                        else:
                            cx = int(x * f32(W) + half)         # int() truncates toward zero
                            cy = int(y * f32(H) + half)
                            taps = [(min(max(cx, 0), W - 1), min(max(cy, 0), H - 1), one)]
                        for d in range(D):
                            s = zero
                            for cx, cy, w in taps:
                                if 0 <= cx <= W - 1 and 0 <= cy <= H - 1:      # outside the map: reads 0
                                    s += value[b, start + int(cy) * W + int(cx), m, d] * w
                            acc[d] += attention_weights[b, q, m, p] * s
                        p += 1
                    start += H * W
                out[b, q, m * D:(m + 1) * D] = acc
    return out


# ----------------------------------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------------------------------

def multiscale_deformable_attention(p, query, reference_boxes, value_input, spatial_shapes, num_heads, n_points,
                                    offset_scale=OFFSET_SCALE, method="bilinear"):
    """RTDetrV2MultiscaleDeformableAttention [hf] / MSDeformableAttention [4] at inference: all of Eq. (3).

    p: params with sampling_offsets, attention_weights, value_proj, output_proj (each weight, bias) and optionally
    n_points_scale [K] (the checkpoint's buffer of 1/K_l; computed from n_points when absent).
    query [B, Nq, C]: decoder hidden state + position embedding (added by the caller).
    reference_boxes [B, Nq, 4]: (cx, cy, w, h) in [0, 1].
    value_input [B, Nv, C]: the encoder memory, levels concatenated, no position embedding.
    spatial_shapes [(H_l, W_l)]; num_heads M; n_points [K_l]; offset_scale 0.5; method "bilinear" or "discrete".

    Returns (out [B, Nq, C], loc [B, Nq, M, K, 2], attention_weights [B, Nq, M, K]); the last two are returned
    for tests and for plotting where each head looks.
    """
    B, Nq, C = query.shape
    Nv = value_input.shape[1]
    M, K = num_heads, sum(n_points)
    if C % M:
        raise ValueError(f"{C} channels do not split into {M} heads")
    D = C // M
    value = linear(value_input, p["value_proj"]).reshape(B, Nv, M, D)                 # [B, Nv, M, D]
    offsets = linear(query, p["sampling_offsets"]).reshape(B, Nq, M, K, 2)            # [B, Nq, M, K, 2]
    logits = linear(query, p["attention_weights"]).reshape(B, Nq, M, K)               # [B, Nq, M, K]
    weights = softmax(logits, axis=-1)                   # one softmax over all levels x points of a head
    loc = sampling_locations(reference_boxes, offsets, n_points, offset_scale,
                             p.get("n_points_scale"))                                 # [B, Nq, M, K, 2]
    out = deformable_attention_core(value, spatial_shapes, loc, weights, n_points, method)   # [B, Nq, M*D]
    return linear(out, p["output_proj"]), loc, weights                                # [B, Nq, C]

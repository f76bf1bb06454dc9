"""Multi-scale deformable attention, RT-DETRv2 version: the decoder's cross-attention into the encoder memory.

Each object query looks at only K = sum_l K_l points of the L feature maps instead of all Nv tokens. The query
itself predicts where those points are (offsets around its reference box) and how much each one counts
(attention weights); the feature at each point is read off the map by interpolation.

Sources (numbered as in the package docstring, rtdetrv2_np/__init__.py, which also defines the shape letters):
    [2] Deformable DETR, §4.1: Eq. (2) (deformable attention) and Eq. (3) (its multi-scale form), computed here.
    [3] RT-DETRv2, §2.1: a distinct number of sampling points per level; the discrete sampling operator.
    [4] rtdetrv2_pytorch/src/zoo/rtdetr/rtdetrv2_decoder.py `MSDeformableAttention` (the module) and utils.py
        `deformable_attention_core_func_v2` (the sampling and the weighted sum): this file's counterpart.
    [5] models/rt_detr_v2/modeling_rt_detr_v2.py `RTDetrV2MultiscaleDeformableAttention` and
        `multi_scale_deformable_attention_v2`, whose parameter names (sampling_offsets, attention_weights,
        value_proj, output_proj, n_points_scale) the params tree keeps.
    [10] models/ops/modules/ms_deform_attn.py `MSDeformAttn` (box references: `offsets / n_points * ref_wh * 0.5`)
        and models/ops/functions/ms_deform_attn_func.py `ms_deform_attn_core_pytorch` (the same sum in plain
        PyTorch).
    [11] torch.nn.functional.grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False).

The equation. [2] Eq. (3), for one query q with content feature z_q (decoder state + query position embedding)
and reference point p_q (normalised to [0, 1]):

    MSDeformAttn(z_q, p_q, {x_l}) = sum_m W_m [ sum_l sum_k A_mlqk * W'_m x_l( phi_l(p_q) + Delta_mlqk ) ]
                                    m < M heads, l < L levels, k < K_l points

    W'_m        value_proj: the D output features of head m (applied once to all Nv memory tokens)
    A_mlqk      attention_weights, then one softmax over the K = sum_l K_l (level, point) slots of head m
    Delta_mlqk  sampling_offsets: where point k of head m on level l sits, relative to the reference
    phi_l       maps the normalised reference onto level l; in normalised coordinates it is the identity
    x_l(loc)    the level-l map read at the normalised location loc: bilinear or discrete sampling (below)
    W_m         output_proj, applied to the M heads concatenated (channel m*D + c of head m's channel c)

[2] Eq. (2) is the single-level case (L = 1). With 4-number reference boxes b = (cx, cy, w, h), as in RT-DETRv2,
the offset is scaled by the box ([10], and [4] for RT-DETRv2), so the sampling location is

    loc_mlqk = b_xy + Delta_mlqk * (1 / K_l) * b_wh * offset_scale,    offset_scale = 0.5

and a raw offset of +-K_l reaches the box edge. RT-DETRv2 [3] changes three things against Deformable DETR:
    1. K_l may differ per level. The K points of a head are stored level-major: slot j belongs to level l for
       sum(K_<l) <= j < sum(K_<=l), and 1 / K_l is the per-slot buffer n_points_scale. The softmax still runs
       over all K slots of a head. The released configs of [4] use one count on all 3 levels: 4 (K = 12), or
       1, 2, 3 in the r18vd_sp1/sp2/sp3 models; unequal counts are allowed by the code and tested here.
    2. offset_scale is a parameter ([4] `offset_scale=0.5`, [5] config.decoder_offset_scale = 0.5); in [10] it
       is the literal 0.5.
    3. method "discrete" ([4] `method='discrete'`, the *_dsp models) replaces bilinear interpolation by a gather of
       one texel, so the model exports without grid_sample.

RT-DETR v1 [1] has the module as Deformable DETR [10] wrote it: one point count K_l = n on every level, the
literal 0.5 and no buffer, loc = b_xy + Delta / n * b_wh * 0.5 (sampling_locations_v1), and bilinear sampling only
([4] v1 folder rtdetr_pytorch/src/zoo/rtdetr/rtdetr_decoder.py `MSDeformableAttention`; [5]
models/rt_detr/modeling_rt_detr.py `RTDetrMultiscaleDeformableAttention`). With equal counts and offset_scale 0.5
the v2 formula is the same sum; the two differ only in rounding when n is not a power of two (v1 divides by n, v2
multiplies by the float 1/n). `multiscale_deformable_attention(..., version=1)` computes v1.

Layout: slots are level-major, the offsets' last axis is (x, y), value tokens are the levels flattened row-major
and concatenated fine to coarse, the output channel is m*D + c -- all as in [4] and [5].

Featured: the whole module at inference, both sampling methods, any number of points per level, any (H_l, W_l),
float32 or float64 data (every constant takes the dtype of the data it meets). Left out: the 2-number reference
points branch (`ref_xy + offsets / [W_l, H_l]`, used by Deformable DETR, never by RT-DETRv2's decoder), the value
padding mask (None at inference), the parameter initialisation (training only).

Deviation. Discrete sampling clamps x to [0, W_l - 1] and y to [0, H_l - 1], as [5] does. The official code [4]
clamps both to H_l - 1 (marked "FIX ME? for rectangle input"); the two agree on square maps, i.e. at 640 x 640.

Numerics. For bilinear sampling we evaluate grid_sample's formula ix = ((g + 1) * W - 1) / 2 with separate
roundings, as PyTorch's generic and CUDA kernels write it. PyTorch's x86 CPU kernel, as built in torch 2.13
(AVX-512), fuses multiply-adds: its results equal, bit for bit, those of ix = fma(g + 1, W / 2, -0.5) and an fma
chain over the four corners (tools/check_msda_against_torch.py shows both). NumPy has no fused multiply-add, so
in float32 our ix can be 1 ulp away from PyTorch-on-CPU's (4e-6 pixel near ix = 60), and a sample then differs by
that times the feature's slope: measured up to ~3e-6 on unit-size features with 60-80 pixel wide maps, < 1e-6 on
small maps. Discrete sampling has no such step; there only the order of the final sum differs (~1 ulp).
"""

import numpy as np

from .nn import linear, softmax

# [4] MSDeformableAttention(offset_scale=0.5), [5] config.decoder_offset_scale = 0.5; [10] hard-codes the 0.5.
# With it, a raw offset of +-K_l moves a point from the box centre to the box edge.
OFFSET_SCALE = 0.5


def points_scale(n_points, dtype=np.float32):
    """The buffer n_points_scale of [4] / [5]: 1 / K_l repeated K_l times, level-major. -> [K] of `dtype`.

    Computed as [4] does: the Python float 1 / K_l, rounded to `dtype` (exact for K_l = 1, 2, 4, 8).
    """
    return np.array([1 / k for k in n_points for _ in range(k)], dtype=dtype)        # [K]


def sampling_locations(reference_boxes, offsets, n_points, offset_scale=OFFSET_SCALE, n_points_scale=None):
    """Where each head of each query samples: loc = b_xy + Delta * (1/K_l) * b_wh * offset_scale ([4], [10]).

    reference_boxes [B, Nq, 4] (cx, cy, w, h in [0, 1]); offsets [B, Nq, M, K, 2], the raw sampling_offsets
    output, last axis (x, y); n_points: K_l per level, slots level-major. n_points_scale: the checkpoint's [K]
    buffer of 1/K_l, used instead of points_scale(n_points) when given.
    Returns loc [B, Nq, M, K, 2], normalised (x, y); points may lie outside [0, 1] (offsets are unbounded).

    The product runs left to right in the reference's order: ((offsets * 1/K_l) * wh) * offset_scale.
    """
    scale = points_scale(n_points, offsets.dtype) if n_points_scale is None else n_points_scale   # [K]
    b_xy = reference_boxes[:, :, None, None, :2]                                     # [B, Nq, 1, 1, 2]
    b_wh = reference_boxes[:, :, None, None, 2:]                                     # [B, Nq, 1, 1, 2]
    offset = offsets * scale[:, None] * b_wh * offset_scale                          # [B, Nq, M, K, 2]
    return b_xy + offset                                                             # [B, Nq, M, K, 2]


def sampling_locations_v1(reference_boxes, offsets, n_points):
    """RT-DETR v1's sampling locations: loc = b_xy + Delta / n * b_wh * 0.5 ([4] v1, [5] v1, [10]).

    Same arguments and result as sampling_locations, but every level has the same count n = n_points[l], the
    offsets are divided by it (no n_points_scale buffer: v1 checkpoints have none) and the scale is the literal
    0.5. The product runs left to right in the reference's order: ((offsets / n) * wh) * 0.5.
    """
    if len(set(n_points)) != 1:
        raise ValueError(f"RT-DETR v1 has one point count for every level, got {n_points}")
    b_xy = reference_boxes[:, :, None, None, :2]                                     # [B, Nq, 1, 1, 2]
    b_wh = reference_boxes[:, :, None, None, 2:]                                     # [B, Nq, 1, 1, 2]
    return b_xy + offsets / n_points[0] * b_wh * OFFSET_SCALE                        # [B, Nq, M, K, 2]


# ----------------------------------------------------------------------------------------------------------------
# Reading a feature map at a normalised location: x_l(loc) of Eq. (3), two ways.
#
# Normalised coordinates: loc = (0, 0) is the top-left corner of the map, (1, 1) the bottom-right corner, and the
# centre of the texel in column i, row j sits at ((i + 0.5) / W, (j + 0.5) / H) -- grid_sample's
# align_corners=False convention [11].
#
#   bilinear   at a texel centre: exactly that texel. Between centres: the bilinear mix of the 4 nearest texels.
#              Within half a texel outside the centres of the border texels, part of the weight falls on texels
#              outside the map, which count as 0 (zero padding, no renormalisation): on the map's edge, loc = 0
#              or 1, a border texel contributes only half (a quarter at a corner). Half a texel or more outside
#              the map: 0.
#   discrete   round loc * W to the nearest integer (halves up) and clamp into the map: at a texel centre,
#              loc * W = i + 0.5, it picks texel i + 1 -- the operator places texel i at loc * W = i, half a texel
#              from bilinear's convention. At the edge it clamps, so any point outside reads the border texel at
#              full weight; it never returns 0.
#
# Each method is written twice: for one location (bilinear_taps + bilinear_at, discrete_texel + discrete_at: the
# definition, used by the loop oracle and the figures) and for many locations at once (sample_bilinear,
# sample_discrete: what the model runs, the same operations in the same order on whole arrays).
# ----------------------------------------------------------------------------------------------------------------

def bilinear_taps(x, y, H, W):
    """The four texels bilinear sampling mixes at one location: [(column, row, weight)] in the order nw, ne, sw, se.

    x, y: the normalised location, scalars of the data's dtype; H, W: the map's size. Columns and rows are
    whole numbers in the data's dtype and may lie outside the map (such a texel reads 0: zero padding).
    In texel units, with grid g = 2 * loc - 1 in [-1, 1] as [4] passes it to grid_sample [11]:
        ix = ((g_x + 1) * W - 1) / 2,  iy = ((g_y + 1) * H - 1) / 2        (= loc * W - 0.5, up to rounding)
    The neighbours are columns x0 = floor(ix), x1 = x0 + 1 and rows y0 = floor(iy), y1 = y0 + 1, weighted
        nw = (x1 - ix)(y1 - iy)   ne = (ix - x0)(y1 - iy)   sw = (x1 - ix)(iy - y0)   se = (ix - x0)(iy - y0)
    """
    gx, gy = 2 * x - 1, 2 * y - 1
    ix, iy = ((gx + 1) * W - 1) / 2, ((gy + 1) * H - 1) / 2
    x0, y0 = np.floor(ix), np.floor(iy)
    x1, y1 = x0 + 1, y0 + 1
    return [(x0, y0, (x1 - ix) * (y1 - iy)), (x1, y0, (ix - x0) * (y1 - iy)),
            (x0, y1, (x1 - ix) * (iy - y0)), (x1, y1, (ix - x0) * (iy - y0))]


def bilinear_at(value_l, x, y):
    """x_l(loc) at one location by bilinear interpolation, as grid_sample(align_corners=False, zeros) [11].

    value_l [H_l, W_l, D] (one head's map); x, y: the normalised location, scalars of the data's dtype -> [D].
    The sum of texel * weight over bilinear_taps, in the order nw, ne, sw, se; a texel outside the map reads 0.
    """
    H, W, D = value_l.shape
    out = np.zeros(D, dtype=value_l.dtype)                                           # [D]
    for col, row, weight in bilinear_taps(x, y, H, W):
        if 0 <= col <= W - 1 and 0 <= row <= H - 1:                                  # zero padding outside
            out += value_l[int(row), int(col)] * weight                              # [D]
    return out


def discrete_texel(x, y, H, W):
    """(column, row) of the one texel discrete sampling [3] §2.1 reads at the normalised location (x, y).

    column = trunc(x * W + 0.5), row = trunc(y * H + 0.5): int() truncates toward zero like torch's .to(int64) in
    [4], so this rounds halves up for coordinates >= 0, and any value in (-1, 0) becomes 0. Then the column is
    clamped to [0, W-1] and the row to [0, H-1] separately, as [5] does (the official [4] clamps both to H-1;
    identical on square maps). There is no zero padding.
    """
    col = int(x * W + 0.5)
    row = int(y * H + 0.5)
    return min(max(col, 0), W - 1), min(max(row, 0), H - 1)


def discrete_at(value_l, x, y):
    """x_l(loc) at one location by RT-DETRv2's discrete sampling [3] §2.1: the texel of discrete_texel, as is.

    value_l [H_l, W_l, D]; x, y: the normalised location, scalars of the data's dtype -> [D].
    """
    H, W, D = value_l.shape
    col, row = discrete_texel(x, y, H, W)
    return value_l[row, col]                                                         # [D]


def sample_bilinear(value_l, loc_l):
    """bilinear_at for many maps and locations at once. value_l [N, H, W, D], loc_l [N, P, 2] -> [N, P, D].

    N = B*M: one map per batch item and head; P locations per map, normalised (x, y). The same operations as
    bilinear_taps and bilinear_at, in the same order, on whole arrays.
    """
    N, H, W, D = value_l.shape
    g = 2 * loc_l - 1                                                                 # [N, P, 2]
    ix = ((g[..., 0] + 1) * W - 1) / 2                                                # [N, P]
    iy = ((g[..., 1] + 1) * H - 1) / 2                                                # [N, P]
    x0, y0 = np.floor(ix), np.floor(iy)                                               # [N, P]
    x1, y1 = x0 + 1, y0 + 1                                                           # [N, P]
    # The four neighbours on a leading axis, in the order nw, ne, sw, se.
    cols = np.stack([x0, x1, x0, x1])                                                 # [4, N, P]
    rows = np.stack([y0, y0, y1, y1])                                                 # [4, N, P]
    weights = np.stack([(x1 - ix) * (y1 - iy), (ix - x0) * (y1 - iy),
                        (x1 - ix) * (iy - y0), (ix - x0) * (iy - y0)])                # [4, N, P]
    # Zero padding: a neighbour outside the map gets weight 0 and reads an in-map stand-in texel (its index
    # clipped into the map). For finite features that equals grid_sample's reading 0 there.
    inside = (cols >= 0) & (cols <= W - 1) & (rows >= 0) & (rows <= H - 1)           # [4, N, P]
    weights = np.where(inside, weights, 0)                                            # [4, N, P]
    col = np.clip(cols, 0, W - 1).astype(np.intp)                                     # [4, N, P]
    row = np.clip(rows, 0, H - 1).astype(np.intp)                                     # [4, N, P]
    texels = value_l.reshape(N * H * W, D)          # [N*H*W, D] one row per texel (a copy unless contiguous)
    v = np.take(texels, np.arange(N)[:, None] * (H * W) + row * W + col, axis=0)      # [4, N, P, D]
    v *= weights[..., None]                                                           # [4, N, P, D]
    return v[0] + v[1] + v[2] + v[3]                                                  # [N, P, D]


def sample_discrete(value_l, loc_l):
    """discrete_at for many maps and locations at once. value_l [N, H, W, D], loc_l [N, P, 2] -> [N, P, D].

    The same texel as discrete_texel; the cast truncates toward zero like its int().
    """
    N, H, W, D = value_l.shape
    size = np.array([W, H], dtype=loc_l.dtype)                                        # [2]
    coord = loc_l * size + 0.5                                                        # [N, P, 2]
    # Clipping to [-1, size] first leaves the clamped result unchanged and keeps the int cast defined for
    # far-away points; astype then truncates toward zero like torch's cast.
    coord = np.clip(coord, -1, size).astype(np.intp)                                  # [N, P, 2]
    col = np.clip(coord[..., 0], 0, W - 1)                                            # [N, P]
    row = np.clip(coord[..., 1], 0, H - 1)                                            # [N, P]
    texels = value_l.reshape(N * H * W, D)          # [N*H*W, D] one row per texel (a copy unless contiguous)
    return np.take(texels, np.arange(N)[:, None] * (H * W) + row * W + col, axis=0)   # [N, P, D]


SAMPLERS = {"bilinear": sample_bilinear, "discrete": sample_discrete}


# ----------------------------------------------------------------------------------------------------------------
# The sums of Eq. (3): as loops (the definition, and the test oracle), and vectorized (what the model runs).
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


def deformable_attention_core_loop(value, spatial_shapes, loc, attention_weights, n_points, method="bilinear"):
    """sum_l sum_k A_mlqk * x_l(loc_mlqk) for every query and head, as loops: Eq. (3) without W_m and W'_m.

    Same arguments and result as deformable_attention_core. The loops over heads m, levels l and points k are the
    sums of Eq. (3); each sample is one call of bilinear_at or discrete_at. Every operation is the one the
    vectorized path does, in the same order, so the two agree bit for bit (for D > 1, see
    deformable_attention_core). The tests' oracle; far too slow for inference.
    """
    _check_levels(value, spatial_shapes, loc, n_points, method)
    B, Nv, M, D = value.shape
    Nq = loc.shape[1]
    sample_at = bilinear_at if method == "bilinear" else discrete_at
    maps, start = [], 0                             # x_l of every batch item and head: L arrays [B, H_l, W_l, M, D]
    for H, W in spatial_shapes:
        maps.append(value[:, start:start + H * W].reshape(B, H, W, M, D))
        start += H * W
    first = [sum(n_points[:l]) for l in range(len(n_points))]   # slot of level l's point 0 among a head's K slots
    out = np.zeros((B, Nq, M * D), dtype=value.dtype)
    for b in range(B):
        for q in range(Nq):
            for m in range(M):                                   # heads: W_m follows in output_proj
                head = np.zeros(D, dtype=value.dtype)            # [D] sum_l sum_k A_mlqk * x_l(loc_mlqk)
                for l, x_l in enumerate(maps):                   # levels
                    for k in range(n_points[l]):                 # points of level l
                        j = first[l] + k                         # its slot among the head's K
                        x, y = loc[b, q, m, j]
                        head += attention_weights[b, q, m, j] * sample_at(x_l[b, :, :, m], x, y)
                out[b, q, m * D:(m + 1) * D] = head
    return out


def deformable_attention_core(value, spatial_shapes, loc, attention_weights, n_points, method="bilinear"):
    """sum_l sum_k A_mlqk * x_l(loc_mlqk) for every batch item, query and head: Eq. (3) without W_m and W'_m.

    value [B, Nv, M, D] (value_proj output; levels flattened row-major, concatenated fine to coarse),
    spatial_shapes [(H_l, W_l)] per level, loc [B, Nq, M, K, 2] normalised (x, y), attention_weights [B, Nq, M, K]
    (softmaxed over K), n_points [K_l] per level, method "bilinear" or "discrete".
    Returns [B, Nq, M*D], channel m*D + c. Counterpart of [4] `deformable_attention_core_func_v2`.

    One loop over levels; all queries, heads and points of a level are sampled at once. The sum over the K
    slots runs in slot order, level-major: numpy adds the [.., D] slices one after another (for D > 1; with
    D = 1 it would sum K >= 8 terms pairwise).
    """
    _check_levels(value, spatial_shapes, loc, n_points, method)
    B, Nv, M, D = value.shape
    Nq = loc.shape[1]
    sample = SAMPLERS[method]
    value = value.transpose(0, 2, 1, 3).reshape(B * M, Nv, D)                         # [B*M, Nv, D]
    loc = loc.transpose(0, 2, 1, 3, 4)                                                # [B, M, Nq, K, 2]
    start, first, sampled = 0, 0, []
    for (H, W), K_l in zip(spatial_shapes, n_points):
        value_l = np.ascontiguousarray(value[:, start:start + H * W])   # [B*M, H_l*W_l, D] a copy, rows flat
        value_l = value_l.reshape(B * M, H, W, D)                                     # [B*M, H_l, W_l, D]
        loc_l = loc[:, :, :, first:first + K_l].reshape(B * M, Nq * K_l, 2)           # [B*M, Nq*K_l, 2]
        sampled.append(sample(value_l, loc_l).reshape(B * M, Nq, K_l, D))             # [B*M, Nq, K_l, D]
        start, first = start + H * W, first + K_l
    sampled = np.concatenate(sampled, axis=2)                                         # [B*M, Nq, K, D]
    weights = attention_weights.transpose(0, 2, 1, 3).reshape(B * M, Nq, -1, 1)       # [B*M, Nq, K, 1]
    sampled *= weights                                                                # [B*M, Nq, K, D]
    out = sampled.sum(axis=2)                                                         # [B*M, Nq, D]
    return out.reshape(B, M, Nq, D).transpose(0, 2, 1, 3).reshape(B, Nq, M * D)       # [B, Nq, M*D]


# ----------------------------------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------------------------------

def multiscale_deformable_attention(params, query, reference_boxes, value_input, spatial_shapes, num_heads,
                                    n_points, offset_scale=OFFSET_SCALE, method="bilinear", version=2):
    """RTDetrV2MultiscaleDeformableAttention [5] / MSDeformableAttention [4] at inference: all of Eq. (3).

    params: sampling_offsets, attention_weights, value_proj, output_proj (each weight, bias) and optionally
    n_points_scale [K] (the checkpoint's buffer of 1/K_l; computed from n_points when absent).
    query [B, Nq, d]: decoder hidden state + position embedding (added by the caller), z_q of Eq. (3).
    reference_boxes [B, Nq, 4]: (cx, cy, w, h) in [0, 1].
    value_input [B, Nv, d]: the encoder memory, levels concatenated, no position embedding.
    spatial_shapes [(H_l, W_l)]; num_heads M; n_points [K_l]; offset_scale 0.5; method "bilinear" or "discrete".
    version 1: RT-DETR v1's module instead (module docstring): sampling_locations_v1, bilinear only; offset_scale
    and n_points_scale are not used.

    Returns (out [B, Nq, d], loc [B, Nq, M, K, 2], attention_weights [B, Nq, M, K]); the last two are returned
    for tests and for plotting where each head looks.
    """
    B, Nq, C = query.shape
    Nv = value_input.shape[1]
    M, K = num_heads, sum(n_points)
    if C % M:
        raise ValueError(f"{C} channels do not split into {M} heads")
    D = C // M
    value = linear(value_input, params["value_proj"]).reshape(B, Nv, M, D)            # [B, Nv, M, D]  W'_m x
    offsets = linear(query, params["sampling_offsets"]).reshape(B, Nq, M, K, 2)       # [B, Nq, M, K, 2]
    logits = linear(query, params["attention_weights"]).reshape(B, Nq, M, K)          # [B, Nq, M, K]
    weights = softmax(logits, axis=-1)                   # A_mlqk: one softmax over all levels x points of a head
    if version == 1:                                     # RT-DETR v1: one K_l for all levels, the literal 0.5
        if method != "bilinear":
            raise ValueError("RT-DETR v1 samples bilinearly only; discrete sampling is RT-DETRv2's ([3] §2.1)")
        loc = sampling_locations_v1(reference_boxes, offsets, n_points)               # [B, Nq, M, K, 2]
    else:
        loc = sampling_locations(reference_boxes, offsets, n_points, offset_scale,
                                 params.get("n_points_scale"))                        # [B, Nq, M, K, 2]
    out = deformable_attention_core(value, spatial_shapes, loc, weights, n_points, method)   # [B, Nq, M*D]
    return linear(out, params["output_proj"]), loc, weights                           # [B, Nq, d]  W_m

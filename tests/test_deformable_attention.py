"""Tests of rtdetrv2_np.model.deformable_attention: the vectorized sum against the loop oracle, hand-computable samples
that pin grid_sample's and the discrete operator's conventions, sampling locations, parameter layout and dtypes.

The comparison with PyTorch itself (which needs torch) is tools/check_msda_against_torch.py, not a test.
"""

import numpy as np
import pytest

from helpers import assert_close
from rtdetrv2_np.model.deformable_attention import (deformable_attention_core, deformable_attention_core_loop,
                                              multiscale_deformable_attention, points_scale, sample_bilinear,
                                              sample_discrete, sampling_locations)
from rtdetrv2_np.model.nn import linear, softmax

f32 = np.float32
METHODS = ["bilinear", "discrete"]

# Irregular levels: non-square, a 1-row level, and a different number of points on each level.
SHAPES = [(6, 4), (3, 2), (1, 5)]
N_POINTS = [3, 1, 2]


def random_inputs(seed=0, B=2, Nq=5, M=2, D=3, shapes=SHAPES, n_points=N_POINTS):
    """value [B, Nv, M, D], loc [B, Nq, M, K, 2], attention weights [B, Nq, M, K], with awkward locations mixed in:
    pixel centres, map edges, exact discrete rounding halves, small negatives, far outside."""
    rng = np.random.default_rng(seed)
    Nv, K = sum(h * w for h, w in shapes), sum(n_points)
    value = rng.standard_normal((B, Nv, M, D)).astype(f32)
    loc = rng.uniform(-0.6, 1.6, (B, Nq, M, K, 2)).astype(f32)
    level_of_point = np.repeat(np.arange(len(shapes)), n_points)                       # [K]
    for p, l in enumerate(level_of_point):
        H, W = shapes[l]
        special = np.array([(0.5 / W, 0.5 / H),                     # centre of the top-left pixel
                            ((W - 0.5) / W, (H - 0.5) / H),         # centre of the bottom-right pixel
                            (0.0, 1.0),                             # map corners
                            (1.5 / W, 0.5),                         # loc * W = 1.5: a centre, and a discrete half
                            (-0.01, -0.7 / H),                      # small negatives: discrete truncation case
                            (-3.0, 4.0)], dtype=f32)                # far outside
        for i, xy in enumerate(special):
            loc[i % B, i % Nq, (i + p) % M, p] = xy
    weights = softmax(rng.standard_normal((B, Nq, M, K)).astype(f32), axis=-1)
    return value, loc, weights


# ----------------------------------------------------------------------------------------------------------------
# 1. Vectorized == loop oracle
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_core_matches_loop_oracle(method, seed):
    value, loc, weights = random_inputs(seed)
    ours = deformable_attention_core(value, SHAPES, loc, weights, N_POINTS, method)
    oracle = deformable_attention_core_loop(value, SHAPES, loc, weights, N_POINTS, method)
    # atol 0: both do the same float32 operations in the same order (the oracle's docstring promises this).
    assert_close(ours, oracle, 0.0, f"core vs loop oracle ({method})")


@pytest.mark.parametrize("method", METHODS)
def test_core_matches_loop_oracle_single_level_and_batch(method):
    # One level, one batch item, several heads and channels: the M/D channel interleave (head*D + d) matters here.
    value, loc, weights = random_inputs(3, B=1, Nq=4, M=3, D=5, shapes=[(5, 7)], n_points=[4])
    ours = deformable_attention_core(value, [(5, 7)], loc, weights, [4], method)
    oracle = deformable_attention_core_loop(value, [(5, 7)], loc, weights, [4], method)
    assert_close(ours, oracle, 0.0, f"core vs loop oracle, one level ({method})")      # same ops, same order


def test_core_rejects_inconsistent_levels():
    value, loc, weights = random_inputs()
    with pytest.raises(ValueError, match="tokens"):
        deformable_attention_core(value, [(6, 4), (3, 2)], loc, weights, [3, 3])
    with pytest.raises(ValueError, match="points"):
        deformable_attention_core(value, SHAPES, loc, weights, [1, 1, 1])
    with pytest.raises(ValueError, match="method"):
        deformable_attention_core(value, SHAPES, loc, weights, N_POINTS, "nearest")


# ----------------------------------------------------------------------------------------------------------------
# Hand-computable samples, each checked three ways: the sampler itself, the vectorized core and the loop oracle
# (one level, one head, one point per query, attention weight 1).
# ----------------------------------------------------------------------------------------------------------------

def sample_three_ways(image, locs, method):
    """image [H, W, D], locs [P, 2] -> the three results [P, D] (sampler, core, loop oracle)."""
    H, W, D = image.shape
    P = len(locs)
    value_l = image[None]                                                              # [1, H, W, D]
    loc_l = np.asarray(locs, dtype=f32)[None]                                          # [1, P, 2]
    direct = {"bilinear": sample_bilinear, "discrete": sample_discrete}[method](value_l, loc_l)[0]
    value = image.reshape(1, H * W, 1, D)                                              # [B, Nv, M, D]
    loc = loc_l.reshape(1, P, 1, 1, 2)                                                 # [B, Nq, M, K, 2]
    ones = np.ones((1, P, 1, 1), dtype=f32)                                            # [B, Nq, M, K]
    core = deformable_attention_core(value, [(H, W)], loc, ones, [1], method)[0]
    loop = deformable_attention_core_loop(value, [(H, W)], loc, ones, [1], method)[0]
    return direct, core, loop


def check_samples(image, locs, expected, method, what):
    # atol 0: every case below uses small integers and weights that are powers of two, all exact in float32.
    expected = np.asarray(expected, dtype=f32)
    for name, got in zip(["sampler", "core", "loop oracle"], sample_three_ways(image, locs, method)):
        assert_close(got, expected, 0.0, f"{what} ({name})")


PIXELS_2X2 = np.array([[[1, 10], [2, 20]],
                       [[4, 40], [8, 80]]], dtype=f32)                                # [H=2, W=2, D=2]


def test_bilinear_one_pixel_image():
    v = np.array([4.0, -8.0], dtype=f32)
    image = v.reshape(1, 1, 2)                                                         # [1, 1, D]
    locs = [(0.5, 0.5),   # the pixel centre: the full value
            (0.0, 0.5),   # left edge: ix = -0.5, half the weight on the pixel, half on the zero padding
            (1.0, 0.5),   # right edge: the same, mirrored
            (0.5, 0.0),   # top edge
            (0.0, 0.0),   # a corner: a quarter
            (1.0, 1.0)]
    check_samples(image, locs, [v, v / 2, v / 2, v / 2, v / 4, v / 4], "bilinear", "1x1 image")


def test_bilinear_pixel_centres_return_the_pixel():
    locs = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]                   # (x, y) of the 4 centres
    expected = [PIXELS_2X2[0, 0], PIXELS_2X2[0, 1], PIXELS_2X2[1, 0], PIXELS_2X2[1, 1]]
    check_samples(PIXELS_2X2, locs, expected, "bilinear", "2x2 pixel centres")


def test_bilinear_between_pixels_is_the_mean():
    locs = [(0.5, 0.25),      # between the two top pixels
            (0.25, 0.5),      # between the two left pixels
            (0.5, 0.5)]       # the middle of the map: all four
    expected = [(PIXELS_2X2[0, 0] + PIXELS_2X2[0, 1]) / 2,
                (PIXELS_2X2[0, 0] + PIXELS_2X2[1, 0]) / 2,
                PIXELS_2X2.mean(axis=(0, 1))]
    check_samples(PIXELS_2X2, locs, expected, "bilinear", "2x2 midpoints")


def test_bilinear_outside_the_map():
    locs = [(5.0, 0.25), (-3.0, 0.25), (0.25, -2.0), (7.0, 7.0),   # far outside: all four neighbours are padding
            (-0.25, 0.25),    # half a pixel left of the map: ix = -1, the whole weight on the padding column
            (-0.125, 0.25),   # a quarter pixel outside: ix = -0.75, a quarter of the weight on pixel (0, 0)
            (1.125, 0.75)]    # a quarter pixel right of the map, on the centre row of the bottom pixels
    zero = np.zeros(2, dtype=f32)
    expected = [zero, zero, zero, zero, zero, PIXELS_2X2[0, 0] / 4, PIXELS_2X2[1, 1] / 4]
    check_samples(PIXELS_2X2, locs, expected, "bilinear", "outside the 2x2 map")


ROW = np.array([10, 20, 30, 40], dtype=f32).reshape(1, 4, 1)                         # [H=1, W=4, D=1]
IMAGE_2X4 = np.arange(8, dtype=f32).reshape(2, 4, 1)                                   # pixel (row, col) = 4*row + col


def test_discrete_rounds_half_up():
    just_below = np.nextafter(f32(0.375), f32(0))   # loc * 4 + 0.5 = 2 - 2^-23, the largest float32 below 2
    locs = [(0.125, 0.5),            # centre of pixel 0: loc * W + 0.5 = 1.0 -> pixel 1 (the half rounds up)
            (0.375, 0.5),            # centre of pixel 1: 2.0 -> pixel 2
            (just_below, 0.5),       # just below that half -> pixel 1
            (0.12109375, 0.5),       # 0.984375 -> pixel 0
            (0.0, 0.5),              # the left edge: 0.5 -> pixel 0, at full weight (no zero padding)
            (0.5, 0.5)]              # loc * W an integer: 2.5 -> pixel 2
    check_samples(ROW, locs, ROW[0, [1, 2, 1, 0, 0, 2]], "discrete", "discrete rounding")


def test_discrete_truncates_toward_zero_and_clamps():
    locs = [(-0.05, 0.5),            # 0.3 -> 0
            (-0.25, 0.5),            # -0.5, truncated toward zero -> 0 (a floor would give -1; the clamp hides it)
            (-3.0, 0.5),             # far left: clamped to 0
            (1.0, 0.5),              # the right edge: 4.5 -> 4, clamped to W - 1 = 3
            (9.0, 0.5),              # far right: clamped to 3
            (0.5, -4.0),             # far above: row -3.5 -> -3, clamped to 0 (column 2.5 -> 2)
            (0.5, 6.0)]              # far below: row 6.5 -> 6, clamped to H - 1 = 0
    check_samples(ROW, locs, ROW[0, [0, 0, 0, 3, 3, 2, 2]], "discrete", "discrete truncation and clamping")


def test_discrete_clamps_x_and_y_separately_on_a_non_square_map():
    # H = 2, W = 4. The official code clamps x to H - 1 = 1 as well; we clamp x to W - 1 = 3, as transformers does.
    locs = [(0.9375, 0.9375),        # x: 3.75 + 0.5 -> 4 -> 3;   y: 1.875 + 0.5 -> 2 -> 1
            (0.75, 0.125),           # x: 3 + 0.5 -> 3;           y: 0.25 + 0.5 -> 0
            (0.375, 0.375)]          # x: 1.5 + 0.5 -> 2;         y: 0.75 + 0.5 -> 1
    check_samples(IMAGE_2X4, locs, IMAGE_2X4[[1, 0, 1], [3, 3, 2]], "discrete", "discrete on a 2x4 map")


def test_bilinear_on_a_non_square_map():
    locs = [(0.875, 0.75),           # centre of pixel (1, 3)
            (0.25, 0.25),            # between pixels (0, 0) and (0, 1)
            (0.125, 0.5)]            # between pixels (0, 0) and (1, 0)
    check_samples(IMAGE_2X4, locs, [[7.0], [0.5], [2.0]], "bilinear", "bilinear on a 2x4 map")


# ----------------------------------------------------------------------------------------------------------------
# 4. Sampling locations
# ----------------------------------------------------------------------------------------------------------------

def test_points_scale():
    assert_close(points_scale([4, 2]), [0.25] * 4 + [0.5] * 2, 0.0, "points_scale [4, 2]")   # exact powers of 2
    # 1/3 is rounded to float32 as the reference's torch.tensor(..., dtype=float32) does.
    assert_close(points_scale([3, 1]), np.array([1 / 3] * 3 + [1], dtype=f32), 0.0, "points_scale [3, 1]")


def test_sampling_locations_by_hand():
    # n_points [4, 2]: points 0-3 on level 0 (scale 1/4), points 4-5 on level 1 (scale 1/2); offset_scale 0.5.
    box = np.array([[[0.5, 0.25, 0.5, 0.25]]], dtype=f32)                              # [B, Nq, 4] cx, cy, w, h
    off = np.zeros((1, 1, 1, 6, 2), dtype=f32)                                         # [B, Nq, M, K, 2]
    off[0, 0, 0, 0] = (4, 4)       # +K_0 on level 0: the box's bottom-right corner
    off[0, 0, 0, 1] = (-4, 0)      # -K_0 in x: the left edge
    off[0, 0, 0, 2] = (1, -2)      # (0.5 + 1 * 1/4 * 0.5 * 0.5, 0.25 - 2 * 1/4 * 0.25 * 0.5)
    off[0, 0, 0, 4] = (2, 2)       # +K_1 on level 1: the bottom-right corner again
    off[0, 0, 0, 5] = (1, -2)      # (0.5 + 1 * 1/2 * 0.5 * 0.5, 0.25 - 2 * 1/2 * 0.25 * 0.5)
    expected = np.array([(0.75, 0.375), (0.25, 0.25), (0.5625, 0.1875), (0.5, 0.25),
                         (0.75, 0.375), (0.625, 0.125)], dtype=f32)
    loc = sampling_locations(box, off, [4, 2], 0.5)
    assert loc.shape == (1, 1, 1, 6, 2)
    assert_close(loc[0, 0, 0], expected, 0.0, "sampling locations by hand")             # all dyadic: exact


def test_sampling_locations_order_and_buffer():
    rng = np.random.default_rng(0)
    box = rng.uniform(0, 1, (2, 3, 4)).astype(f32)
    off = rng.standard_normal((2, 3, 2, 6, 2)).astype(f32)
    scale = points_scale([4, 2])
    # The reference's order, left to right in float32; atol 0 because it must be the same operations.
    expected = box[:, :, None, None, :2] + off * scale[:, None] * box[:, :, None, None, 2:] * f32(0.5)
    assert_close(sampling_locations(box, off, [4, 2]), expected, 0.0, "sampling locations, reference order")
    # A stored n_points_scale buffer is used instead of the computed one (here deliberately different).
    buffer = np.full(6, 0.125, dtype=f32)
    expected = box[:, :, None, None, :2] + off * buffer[:, None] * box[:, :, None, None, 2:] * f32(0.5)
    assert_close(sampling_locations(box, off, [4, 2], 0.5, buffer), expected, 0.0, "with n_points_scale")


# ----------------------------------------------------------------------------------------------------------------
# The module: parameter layout and composition
# ----------------------------------------------------------------------------------------------------------------

def random_params(rng, C, M, K):
    def lin(c_out, c_in):
        return {"weight": (rng.standard_normal((c_out, c_in)) / np.sqrt(c_in)).astype(f32),
                "bias": rng.standard_normal(c_out).astype(f32) * f32(0.1)}
    return {"sampling_offsets": lin(M * K * 2, C), "attention_weights": lin(M * K, C),
            "value_proj": lin(C, C), "output_proj": lin(C, C)}


@pytest.mark.parametrize("method", METHODS)
def test_module_is_the_composition(method):
    rng = np.random.default_rng(0)
    B, Nq, C, M = 2, 4, 6, 2
    K, Nv = sum(N_POINTS), sum(h * w for h, w in SHAPES)
    p = random_params(rng, C, M, K)
    query = rng.standard_normal((B, Nq, C)).astype(f32)
    boxes = np.concatenate([rng.uniform(0.2, 0.8, (B, Nq, 2)), rng.uniform(0.1, 0.5, (B, Nq, 2))], -1).astype(f32)
    memory = rng.standard_normal((B, Nv, C)).astype(f32)
    out, loc, weights = multiscale_deformable_attention(p, query, boxes, memory, SHAPES, M, N_POINTS, 0.5, method)

    value = linear(memory, p["value_proj"]).reshape(B, Nv, M, C // M)
    offsets = linear(query, p["sampling_offsets"]).reshape(B, Nq, M, K, 2)
    expected_weights = softmax(linear(query, p["attention_weights"]).reshape(B, Nq, M, K), axis=-1)
    expected_loc = sampling_locations(boxes, offsets, N_POINTS, 0.5)
    summed = deformable_attention_core_loop(value, SHAPES, expected_loc, expected_weights, N_POINTS, method)
    # atol 0: the same calls on the same shapes, and the core equals the loop oracle bit for bit.
    assert_close(loc, expected_loc, 0.0, "loc")
    assert_close(weights, expected_weights, 0.0, "attention weights")
    assert_close(out, linear(summed, p["output_proj"]), 0.0, f"module output ({method})")
    assert_close(weights.sum(-1), np.ones((B, Nq, M)), 1e-6, "weights sum to 1 over K")  # float32 sum of K terms


def test_module_parameter_layout():
    # sampling_offsets output feature m*K*2 + p*2 + c is head m, point p, coordinate c (0 = x, 1 = y); one softmax
    # over the K (level, point) slots of a head; n_points_scale from the params is used.
    rng = np.random.default_rng(1)
    B, Nq, C, M, n_points = 1, 2, 4, 2, [2, 1]
    K = sum(n_points)
    p = random_params(rng, C, M, K)
    p["sampling_offsets"]["weight"][:] = 0
    p["sampling_offsets"]["bias"][:] = 0
    p["sampling_offsets"]["bias"][1 * K * 2 + 2 * 2 + 1] = 1.0          # head 1, point 2 (level 1), y
    p["attention_weights"]["weight"][:] = 0
    p["attention_weights"]["bias"][:] = 0
    p["attention_weights"]["bias"][0 * K + 1] = np.log(2.0)              # head 0, point 1: twice the others
    p["n_points_scale"] = np.array([0.5, 0.5, 0.25], dtype=f32)         # not 1/K_l, to see that it is read
    boxes = np.tile(np.array([0.5, 0.5, 0.5, 0.5], dtype=f32), (B, Nq, 1))
    query = rng.standard_normal((B, Nq, C)).astype(f32)
    memory = rng.standard_normal((B, 4 * 4 + 2 * 2, C)).astype(f32)
    _, loc, weights = multiscale_deformable_attention(p, query, boxes, memory, [(4, 4), (2, 2)], M, n_points)
    expected_loc = np.full((B, Nq, M, K, 2), 0.5, dtype=f32)
    expected_loc[:, :, 1, 2, 1] = 0.5 + 1.0 * 0.25 * 0.5 * 0.5
    assert_close(loc, expected_loc, 0.0, "offset layout")                                # dyadic: exact
    expected_weights = np.full((B, Nq, M, K), 1 / 3, dtype=f32)
    expected_weights[:, :, 0] = [0.25, 0.5, 0.25]
    assert_close(weights, expected_weights, 1e-7, "softmax layout")     # exp/log(2) round-off, < 1 float32 ulp of 0.5


# ----------------------------------------------------------------------------------------------------------------
# 5. dtype: float32 in, float32 out; float64 in, float64 out (constants take the data's dtype, NumPy >= 2)
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", METHODS)
def test_dtype_is_kept(method, dtype):
    value, loc, weights = (a.astype(dtype) for a in random_inputs())
    value_l = value[:, :24, 0].reshape(2, 6, 4, 3)                                     # [N, H, W, D]
    loc_l = loc[:, :, 0, :3].reshape(2, 15, 2)                                         # [N, P, 2]
    box = np.array([[[0.5, 0.5, 0.2, 0.3]] * 5] * 2, dtype=dtype)                      # [B, Nq, 4]
    results = {
        "points_scale": points_scale(N_POINTS, dtype),
        "sampling_locations": sampling_locations(box, loc, N_POINTS),
        "sample": {"bilinear": sample_bilinear, "discrete": sample_discrete}[method](value_l, loc_l),
        "core": deformable_attention_core(value, SHAPES, loc, weights, N_POINTS, method),
        "loop": deformable_attention_core_loop(value, SHAPES, loc, weights, N_POINTS, method),
    }
    rng = np.random.default_rng(0)
    p = {k: {n: a.astype(dtype) for n, a in lin.items()} for k, lin in random_params(rng, 6, 2, sum(N_POINTS)).items()}
    query = rng.standard_normal((2, 5, 6)).astype(dtype)
    memory = rng.standard_normal((2, sum(h * w for h, w in SHAPES), 6)).astype(dtype)
    out, loc_out, w_out = multiscale_deformable_attention(p, query, box, memory, SHAPES, 2, N_POINTS, 0.5, method)
    results.update({"module out": out, "module loc": loc_out, "module weights": w_out})
    for name, r in results.items():
        assert r.dtype == dtype, f"{name} returned {r.dtype}"
    # the oracle's promise holds in float64 too: the same operations in the same order
    assert_close(results["core"], results["loop"], 0.0, f"core vs loop oracle in {np.dtype(dtype).name} ({method})")

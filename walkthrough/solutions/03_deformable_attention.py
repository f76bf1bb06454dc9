"""Solutions to the exercises of walkthrough/03_deformable_attention.py.

Each exercise_N() computes its answer, checks it against the package (an assert), prints it and returns it.
Run them all: python walkthrough/solutions/03_deformable_attention.py (offline, a few seconds). The answers about
the trained demo model are measured, so they follow whatever weights are shipped.
"""

from dataclasses import replace

import numpy as np
import PIL.Image

import rtdetrv2_np
import rtdetrv2_np.model.deformable_attention as da
from rtdetrv2_np.demo.shapes import EVAL_SEED, make_scene
from rtdetrv2_np.detect import box_iou
from rtdetrv2_np.model.config import variant_config
from rtdetrv2_np.model.decoder import decoder
from rtdetrv2_np.postprocess import center_to_corners
from rtdetrv2_np.preprocess import preprocess
from rtdetrv2_np.weights import expected_shapes

f32 = np.float32


def _scene(model, index):
    image, objects = make_scene(EVAL_SEED, index)
    pixel_values, _ = preprocess(PIL.Image.fromarray(image), size=model.input_size)
    return pixel_values, np.array([o["box"] for o in objects], np.float64).reshape(-1, 4)


def exercise_1():
    """A point exactly on the centre of texel (1, 1) of level 1 (a 3 x 4 map): bilinear reads that texel, discrete
    reads texel (2, 2) -- trunc(u + 0.5) with u = 1.5 gives 2. A quarter texel to the left (u = 1.25) discrete reads
    column 1 again. So the head's output changes by A * (x(2, 2) - x(1, 1)) for that point's slot."""
    H, W = 3, 4
    rng = np.random.default_rng(0)
    level1 = rng.normal(size=(1, H, W, 2)).astype(f32)                         # [N=1, H, W, D]
    centre = np.array([[[1.5 / W, 1.5 / H]]], f32)                             # [1, P=1, 2] on texel (1, 1)'s centre
    left = np.array([[[1.25 / W, 1.5 / H]]], f32)
    assert da.discrete_texel(centre[0, 0, 0], centre[0, 0, 1], H, W) == (2, 2)
    assert da.discrete_texel(left[0, 0, 0], left[0, 0, 1], H, W) == (1, 2)
    assert np.allclose(da.sample_bilinear(level1, centre)[0, 0], level1[0, 1, 1], atol=1e-6)
    assert np.array_equal(da.sample_discrete(level1, centre)[0, 0], level1[0, 2, 2])
    print("ex 1: on texel (1, 1)'s centre bilinear reads texel (1, 1), discrete reads texel (2, 2); "
          "a quarter texel left, discrete reads column 1 (row 2)")
    return (2, 2)


def exercise_2():
    """Inside the map the four weights (1-fx)(1-fy) + fx(1-fy) + (1-fx)fy + fx fy = 1 exactly. They sum to less than
    1 where a neighbour falls outside: ix = x*W - 0.5 < 0 or > W - 1, i.e. x < 0.5/W or x > 1 - 0.5/W (likewise y).
    On a 4 x 5 map: x < 0.1 or x > 0.9 or y < 0.125 or y > 0.875."""
    H, W = 4, 5
    xs = np.linspace(0.0, 1.0, 201)
    X, Y = np.meshgrid(xs, xs)
    loc = np.stack([X.ravel(), Y.ravel()], -1)[None]                           # [1, P, 2]
    ones = np.ones((1, H, W, 1))
    total = da.sample_bilinear(ones, loc)[0, :, 0]                             # the weight sum at each point
    predicted = (X.ravel() < 0.5 / W) | (X.ravel() > 1 - 0.5 / W) | (Y.ravel() < 0.5 / H) | (Y.ravel() > 1 - 0.5 / H)
    assert np.array_equal(total < 1 - 1e-12, predicted)
    assert np.allclose(total[~predicted], 1.0, atol=1e-12)
    print(f"ex 2: weights sum to < 1 exactly for x < {0.5 / W} or x > {1 - 0.5 / W} or y < {0.5 / H} or "
          f"y > {1 - 0.5 / H} ({predicted.mean():.0%} of a 201 x 201 grid)")
    return 0.5 / W, 0.5 / H


def exercise_3(n_scenes=16):
    """Share of the last layer's attention per level, for found objects smaller / larger than 32 px (sqrt of the
    box area). Measured on the demo model; the shares of each query sum to 1 (one softmax per head)."""
    model = rtdetrv2_np.load_model("demo")
    cfg = model.config
    S, L, last = model.input_size[0], len(cfg.n_points), cfg.num_decoder_layers_used - 1
    level_of = np.repeat(np.arange(L), cfg.n_points)                           # [K]
    shares = {"small (< 32 px)": [], "large (>= 32 px)": []}
    for i in range(n_scenes):
        pv, gt = _scene(model, i)
        st = model.trace(pv)
        iou = box_iou(center_to_corners(st["pred_boxes"][0]) * S, gt)          # [Nq, G]
        for g in range(len(gt)):
            q = int(iou[:, g].argmax())
            if iou[q, g] < 0.5:
                continue
            A = st[f"decoder.{last}.attention_weights"][0, q]                  # [M, K]
            share = np.array([A[:, level_of == l].sum() for l in range(L)]) / A.shape[0]   # [L]
            assert abs(share.sum() - 1) < 1e-5                                  # one softmax per head
            side = np.sqrt(np.prod(gt[g, 2:] - gt[g, :2]))
            shares["small (< 32 px)" if side < 32 else "large (>= 32 px)"].append(share)
    result = {k: np.mean(v, axis=0) for k, v in shares.items() if v}
    for k, v in result.items():
        print(f"ex 3: {k:<17} ({len(shares[k])} objects): " + " / ".join(f"L{l} {s:.2f}" for l, s in enumerate(v)))
    return result


def sample_floor(value_l, loc_l):
    """Discrete sampling with bilinear's convention: texel floor(u) (the texel whose cell holds u), clamped.
    value_l [N, H, W, D], loc_l [N, P, 2] -> [N, P, D]."""
    N, H, W, D = value_l.shape
    size = np.array([W, H], dtype=loc_l.dtype)
    coord = np.floor(np.clip(loc_l * size, -1, size)).astype(np.intp)           # [N, P, 2]
    col = np.clip(coord[..., 0], 0, W - 1)
    row = np.clip(coord[..., 1], 0, H - 1)
    return np.take(value_l.reshape(N * H * W, D), np.arange(N)[:, None] * (H * W) + row * W + col, axis=0)


def exercise_4():
    """floor(u) picks the same texel as the package's trunc(u + 0.5) at a location half a texel to the left; run the
    demo decoder with it (in place of "discrete") on scene 0 and compare the top-10 boxes with the half-texel one."""
    rng = np.random.default_rng(1)
    value = rng.normal(size=(2, 5, 7, 3)).astype(f32)
    loc = rng.uniform(-0.2, 1.2, size=(2, 50, 2)).astype(f32)
    half = np.array([0.5 / 7, 0.5 / 5], f32)
    assert np.array_equal(sample_floor(value, loc), da.sample_discrete(value, loc - half))
    model = rtdetrv2_np.load_model("demo")
    S = model.input_size[0]
    pv, _ = _scene(model, 0)
    st = model.trace(pv)
    shapes = [tuple(st[f"encoder.output.{l}"].shape[2:]) for l in range(3)]
    dcfg = replace(model.config, decoder_method="discrete")
    args = (st["target"], st["reference_boxes"], st["memory"], shapes, model.params["model"]["decoder"], dcfg)
    _, boxes_half = decoder(*args)
    original = da.SAMPLERS["discrete"]
    da.SAMPLERS["discrete"] = sample_floor
    try:
        _, boxes_floor = decoder(*args)
    finally:
        da.SAMPLERS["discrete"] = original
    top10 = np.argsort(-st["logits"][0].max(-1))[:10]
    shift = np.abs(center_to_corners(boxes_floor[0, top10]) - center_to_corners(boxes_half[0, top10])) * S
    print(f"ex 4: floor vs trunc(u + 0.5) discrete sampling, top-10 boxes of scene 0: corners move by a median "
          f"{np.median(shift):.2f} px, max {shift.max():.2f} px")
    return float(np.median(shift))


def exercise_5():
    """offset_scale 1.0 doubles every point's displacement from the box centre: raw offset +-K_l now reaches a whole
    box width/height from the centre, i.e. half a box beyond the edge."""
    rng = np.random.default_rng(2)
    box = rng.uniform(0.2, 0.6, size=(1, 3, 4)).astype(f32)                    # [B, Nq, 4]
    raw = rng.normal(size=(1, 3, 2, 12, 2)).astype(f32)                        # [B, Nq, M, K, 2]
    half = da.sampling_locations(box, raw, [4, 4, 4], offset_scale=0.5) - box[:, :, None, None, :2]
    full = da.sampling_locations(box, raw, [4, 4, 4], offset_scale=1.0) - box[:, :, None, None, :2]
    assert np.allclose(full, 2 * half, atol=1e-6)
    edge = da.sampling_locations(box[:, :1], np.array([[[[[4, 0]]]]], f32), [1], offset_scale=1.0)[0, 0, 0, 0]
    b = box[0, 0]
    assert np.isclose(edge[0], b[0] + 4 * b[2], atol=1e-6)                     # K_l = 1 here: 4 * w from the centre
    print("ex 5: offset_scale 1.0 doubles every displacement from the centre (checked on random offsets)")
    return 2.0


def exercise_6():
    """MACs of one deformable-attention layer of r50vd at 640 x 640, from the config, checked against the weight
    shapes the package expects for that model (expected_shapes)."""
    cfg = variant_config("r50vd")
    Nv, Nq, C, M, K = sum((640 // s) ** 2 for s in (8, 16, 32)), cfg.num_queries, cfg.d_model, \
        cfg.decoder_attention_heads, sum(cfg.n_points)
    macs = {"value_proj": Nv * C * C, "sampling_offsets": Nq * C * M * K * 2, "attention_weights": Nq * C * M * K,
            "sampling + sum": Nq * M * K * (C // M) * 4, "output_proj": Nq * C * C}
    shapes = expected_shapes(cfg)
    rows = {"value_proj": Nv, "sampling_offsets": Nq, "attention_weights": Nq, "output_proj": Nq}
    for name, n in rows.items():
        out_, in_ = shapes[f"model.decoder.layers.0.encoder_attn.{name}.weight"]
        assert n * out_ * in_ == macs[name], name
    total = sum(macs.values())
    print(f"ex 6: r50vd 640x640: {total / 1e6:.1f} M MACs per deformable-attention layer, value_proj "
          f"{macs['value_proj'] / total:.0%}")
    return macs


if __name__ == "__main__":
    for f in (exercise_1, exercise_2, exercise_3, exercise_4, exercise_5, exercise_6):
        f()

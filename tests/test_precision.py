"""Rounding error, measured against float64: each NumPy float32 path beside PyTorch float32 (issue: "a float64 mode of
the reference path ... report each float32 path's distance to float64 next to PyTorch-float32's distance").

tests/fixtures/float64/ holds, per case, PyTorch's float64 outputs and how far PyTorch's own float32 forward is
from them, stage by stage (tools/record_float64.py; same weights, images and size as the recorded case). Here:
  1. the NumPy float64 path (`model.astype(np.float64)`) equals PyTorch float64: then it is the exact result to
     ~1e-12, and the float32 paths can be measured against it without torch;
  2. the reference float32 path and the fast path are each within 2x PyTorch float32's rms distance to float64, at
     every shared stage, on the bilinear cases (the issue's bound);
  3. with discrete sampling a float32 run is a step function of its sampling locations, so distances of the later
     stages mean little; what counts is how many sampling coordinates pick another texel than in float64. PyTorch
     float32 flips about 1 in 57,600 on r18vd; each NumPy path must flip at most FLIP_BOUND.
Every run prints the table (pytest -s shows it).
"""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close
from test_model import case_model, load_case, pixel_values, query_permutation, reorder

from rtdetrv2_np.fast import fast_model
from rtdetrv2_np.fast.attention import discrete_texels

FLOAT64 = Path(__file__).resolve().parent / "fixtures" / "float64"
CASES = ["tiny_basic", "tiny_basic_discrete", "r18vd_640", "r18vd_640_discrete"]
F64_RTOL = 1e-9         # two float64 computations of the same network in other summation orders: ~1e-13 measured
                        # (the float64 rounding, 1.1e-16, grown by the depth of the network); 1e-9 still catches
                        # any float32 step (>= 6e-8) or real mistake
RMS_FACTOR = 2.0        # the issue's bound: within 2x PyTorch float32's distance to float64
FLIP_BOUND = 10         # texel flips per case: a flip needs u = loc * size + 0.5 within a float32 rounding of an
                        # integer; with u <= 80 that is |u - k| < ~1e-5, expected about one coordinate in 57,600


def texels(loc, spatial, n_points):
    """(column, row) of the texel discrete sampling reads at each location, computed as the sampling computes it (in
    the locations' own dtype): fast.attention.discrete_texels."""
    return np.stack(discrete_texels(loc, spatial, n_points))                      # [2, B, Nq, M, K]


@pytest.fixture(scope="module")
def report():
    rows = []
    yield rows
    print("\nrms distance to float64 (PyTorch float32 | NumPy reference float32 | NumPy fast):")
    for r in rows:
        print("  " + r)


@pytest.mark.parametrize("name", CASES)
def test_float32_paths_against_float64(name, report):
    meta, ref = load_case(name)
    torch64 = dict(np.load(FLOAT64 / f"{name}.npz"))
    info = json.loads((FLOAT64 / f"{name}.json").read_text())
    assert info["seed"] == meta["seed"] and info["size_hw"] == meta["size_hw"], "fixtures of other cases"
    model = case_model(name, meta)
    x = pixel_values(meta, ref)
    s64 = model.astype(np.float64).trace(x.astype(np.float64))
    cfg = model.config

    # 1. NumPy float64 = PyTorch float64
    perm = query_permutation(s64["topk_index"], torch64["topk_index"], s64["enc_logits"].max(-1))
    for key in ("pred_boxes", "logits"):
        ours = reorder(s64[key], perm)[:, :torch64[key].shape[1]]
        assert_close(ours, torch64[key], 0, f"NumPy float64 vs PyTorch float64: {key}", rtol=F64_RTOL)

    # 2. distances of the float32 paths, stage by stage
    paths = {"reference": model.trace(x), "fast": fast_model(model).trace(x)}
    for path, s32 in paths.items():      # the same queries; near-tied ones may come in another order: put in 64's
        perm32 = query_permutation(s32["topk_index"], s64["topk_index"], s64["enc_logits"].max(-1))
        for key in s32:
            if key in ("reference_boxes", "logits", "pred_boxes") or key.startswith("decoder."):
                s32[key] = reorder(s32[key], perm32)
    discrete = cfg.method == "discrete"
    for key, torch_d in info["torch_f32_vs_f64"].items():
        d = {path: float(np.sqrt(np.mean((s32[key].astype(np.float64) - s64[key]) ** 2)))
             for path, s32 in paths.items()}
        report.append(f"{name:20s} {key:18s} {torch_d['rms']:9.3g} | {d['reference']:9.3g} | {d['fast']:9.3g}")
        if not discrete:
            for path, rms in d.items():
                # the ulp floor: a stage whose PyTorch rms is below one float32 rounding of its scale
                assert_close(rms, 0.0, RMS_FACTOR * torch_d["rms"] + 2 ** -24 * torch_d["scale"],
                             f"{path} float32 rms distance to float64 vs 2x PyTorch's: {key}")

    # 3. discrete sampling: texel flips against the float64 run
    if discrete:
        spatial = [tuple(hw) for hw in meta["spatial_shapes"]]
        for path, s32 in paths.items():
            flips = [int((texels(s32[f"decoder.{i}.sampling_locations"], spatial, cfg.n_points)
                          != texels(s64[f"decoder.{i}.sampling_locations"], spatial, cfg.n_points)).sum())
                     for i in range(cfg.decoder_layers)]
            report.append(f"{name:20s} texel flips per layer: PyTorch {info['texel_flips']}, {path} {flips} "
                          f"of {info['sampling_coordinates']}")
            assert sum(flips) <= FLIP_BOUND, f"{path}: {flips} texel flips against float64 (bound {FLIP_BOUND})"

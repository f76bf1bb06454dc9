"""Compare rtdetrv2_np.model.deformable_attention with transformers' RT-DETRv2 deformable attention on random inputs.

Run with the reference environment (torch + transformers), from anywhere:
    venv-ref/bin/python tools/check_msda_against_torch.py

Not a test: the test suite never needs torch. Prints one line per case with the max abs difference and OK / NOT OK.
Checked:
  1. the core, `multi_scale_deformable_attention_v2` (both methods; irregular, square and non-square levels; a
     different number of points per level; locations inside, on and beyond the map edges);
  2. the whole module, `RTDetrV2MultiscaleDeformableAttention`, with random weights (both methods);
  3. grid_sample alone, to show where the bilinear difference comes from: PyTorch's x86 CPU kernel fuses
     multiply-adds; emulating that (in float64, here only) reproduces it bit for bit.
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from transformers import RTDetrV2Config
from transformers.models.rt_detr_v2 import modeling_rt_detr_v2 as hf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rtdetrv2_np.model.config import Config  # noqa: E402
from rtdetrv2_np.model.deformable_attention import (deformable_attention_core, multiscale_deformable_attention,  # noqa: E402
                                              sample_bilinear)

f32 = np.float32
TOL = 1e-5     # float32 features of size ~1 summed over K points: rounding differences stay near 1e-7
HF_METHOD = {m: Config().with_method(m).decoder_method for m in ("bilinear", "discrete")}   # "default", "discrete"
worst = 0.0


def report(what, ours, ref, tol=TOL):
    global worst
    diff = float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max())
    exact = float((ours == ref).mean())
    ok = diff <= tol
    worst = max(worst, diff / tol if tol else float(not ok))
    print(f"{'OK    ' if ok else 'NOT OK'} {what:<52} max abs diff {diff:8.3g}  (max |ref| {np.abs(ref).max():5.2f}), "
          f"bit-equal {100 * exact:5.1f} %")


def random_case(rng, B, Nq, M, D, shapes, n_points):
    Nv, K = sum(h * w for h, w in shapes), sum(n_points)
    value = rng.standard_normal((B, Nv, M, D)).astype(f32)
    loc = rng.uniform(-0.2, 1.2, (B, Nq, M, K, 2)).astype(f32)       # some points beyond the map edges
    loc[0, 0, 0, :] = 0.0                                               # on the top-left corner
    loc[0, 1, 0, :] = 1.0                                               # on the bottom-right corner
    weights = torch.softmax(torch.from_numpy(rng.standard_normal((B, Nq, M, K)).astype(f32)), -1).numpy()
    return value, loc, weights


def check_core(rng):
    cases = [("irregular", [(6, 4), (3, 2), (1, 5)], [3, 1, 2]),
             ("square, RT-DETRv2 at 640", [(80, 80), (40, 40), (20, 20)], [4, 4, 4]),
             ("non-square, 480x640 input", [(60, 80), (30, 40), (15, 20)], [4, 4, 4]),
             ("non-square, tall", [(9, 3), (5, 2), (3, 1)], [2, 3, 4])]
    for name, shapes, n_points in cases:
        value, loc, weights = random_case(rng, 2, 50, 8, 32, shapes, n_points)
        for method in ["bilinear", "discrete"]:
            ref = hf.multi_scale_deformable_attention_v2(torch.from_numpy(value), shapes, torch.from_numpy(loc),
                                                         torch.from_numpy(weights), n_points, HF_METHOD[method])
            ours = deformable_attention_core(value, shapes, loc, weights, n_points, method)
            report(f"core {method:<9} {name}", ours, ref.numpy())


def check_module(rng):
    shapes = [(20, 20), (10, 10), (5, 5)]
    for method in ["bilinear", "discrete"]:
        config = RTDetrV2Config(d_model=64, decoder_attention_heads=4, decoder_n_levels=3, decoder_n_points=4,
                                decoder_offset_scale=0.5, decoder_method=HF_METHOD[method])
        module = hf.RTDetrV2MultiscaleDeformableAttention(config).eval()
        with torch.no_grad():
            for prm in module.parameters():
                prm.copy_(torch.from_numpy(rng.standard_normal(tuple(prm.shape)).astype(f32) * f32(0.2)))
        p = {name: {"weight": getattr(module, name).weight.detach().numpy(),
                    "bias": getattr(module, name).bias.detach().numpy()}
             for name in ["sampling_offsets", "attention_weights", "value_proj", "output_proj"]}
        p["n_points_scale"] = module.n_points_scale.numpy()
        B, Nq, Nv = 2, 30, sum(h * w for h, w in shapes)
        query = rng.standard_normal((B, Nq, 64)).astype(f32)
        boxes = np.concatenate([rng.uniform(0.05, 0.95, (B, Nq, 2)), rng.uniform(0.05, 0.6, (B, Nq, 2))],
                               -1).astype(f32)
        memory = rng.standard_normal((B, Nv, 64)).astype(f32)
        with torch.no_grad():
            ref_out, ref_weights = module(torch.from_numpy(query), encoder_hidden_states=torch.from_numpy(memory),
                                          reference_points=torch.from_numpy(boxes)[:, :, None, :],
                                          spatial_shapes=torch.tensor(shapes), spatial_shapes_list=shapes)
        out, loc, weights = multiscale_deformable_attention(p, query, boxes, memory, shapes, 4, [4, 4, 4], 0.5,
                                                            method)
        report(f"module {method:<9} attention weights", weights, ref_weights.numpy())
        report(f"module {method:<9} output", out, ref_out.numpy())


def check_grid_sample(rng):
    N, H, W, D, P = 8, 40, 30, 32, 2000
    value_l = rng.standard_normal((N, H, W, D)).astype(f32)
    loc_l = rng.uniform(-0.1, 1.1, (N, P, 2)).astype(f32)
    ref = F.grid_sample(torch.from_numpy(value_l).permute(0, 3, 1, 2), torch.from_numpy(2 * loc_l - 1)[:, :, None],
                        mode="bilinear", padding_mode="zeros", align_corners=False)[..., 0].permute(0, 2, 1).numpy()
    report("grid_sample alone", sample_bilinear(value_l, loc_l), ref)

    def fma(a, b, c):                       # a * b + c with one rounding (float64 holds a * b exactly)
        return (a.astype(np.float64) * b + c).astype(f32)

    g = f32(2) * loc_l - f32(1)
    ix = fma(g[..., 0] + f32(1), f32(W / 2), f32(-0.5))
    iy = fma(g[..., 1] + f32(1), f32(H / 2), f32(-0.5))
    x0, y0 = np.floor(ix), np.floor(iy)
    x1, y1 = x0 + f32(1), y0 + f32(1)
    n = np.arange(N)[:, None]
    out = None
    for x, y, w in [(x0, y0, (x1 - ix) * (y1 - iy)), (x1, y0, (ix - x0) * (y1 - iy)),
                    (x0, y1, (x1 - ix) * (iy - y0)), (x1, y1, (ix - x0) * (iy - y0))]:
        inside = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)
        v = value_l[n, np.clip(y, 0, H - 1).astype(int), np.clip(x, 0, W - 1).astype(int)]
        v = np.where(inside[..., None], v, f32(0))
        out = v * w[..., None] if out is None else fma(v, w[..., None], out)
    report("grid_sample alone, FMA emulated (not the package)", out, ref, tol=0.0)


if __name__ == "__main__":
    print(f"torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}), "
          f"transformers {__import__('transformers').__version__}, numpy {np.__version__}")
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    check_core(rng)
    check_module(rng)
    check_grid_sample(rng)
    print("ALL OK" if worst <= 1 else "SOME NOT OK")
    sys.exit(0 if worst <= 1 else 1)

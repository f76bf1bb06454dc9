"""Record how far PyTorch's own float32 forward is from its float64 forward, for the recorded cases: the yardstick
for the NumPy float32 paths' rounding error (issue: "each float32 path's distance to float64 next to PyTorch-float32's
distance to float64").

For each case it rebuilds the recorded case exactly as tools/record_reference.py does (same config, weight seed,
images and size), runs transformers' model once in float32 and once after `.double()` with the pixels widened
exactly, and writes tests/fixtures/float64/<case>.npz + <case>.json:

    <case>.npz   pred_boxes  float64 [B, Nq, 4]          PyTorch float64 (all queries)
                 logits      float64 [B, Nq_keep, NC]    PyTorch float64, the first Nq_keep queries (size)
                 topk_index  int64   [B, Nq]             the float64 run's query selection
    <case>.json  torch_f32_vs_f64: {stage: {"rms", "max", "scale"}} for the final outputs and the stages that
                 every path shares; for discrete sampling, "texel_flips": per decoder layer, how many sampling
                 coordinates pick another texel in float32 than in float64 (discrete_texels: trunc(loc * size + 0.5), clamped), with
                 the float32 run's own sampling locations (each layer's locations depend on the earlier layers).

tests/test_precision.py computes the same distances for the NumPy reference float32 path and the fast path against
the NumPy float64 path (which it first checks against these PyTorch float64 outputs) and holds them to 2x PyTorch's.

Usage (reference environment: torch 2.13.0+cpu, transformers 5.24.0):
    python tools/record_float64.py                    # the default cases
    python tools/record_float64.py --case tiny_basic
"""

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))
import record_reference as rr  # noqa: E402
from rtdetrv2_np.fast.attention import discrete_texels  # noqa: E402

OUT = REPO / "tests" / "fixtures" / "float64"
CASES = ["tiny_basic", "tiny_basic_discrete", "r18vd_640", "r18vd_640_discrete"]
NQ_KEEP = 64            # logits of the first 64 queries: enough to compare, small enough to commit (~40 KB a case)


def distance(a32, a64):
    d = np.asarray(a32, np.float64) - a64
    return {"rms": float(np.sqrt(np.mean(d ** 2))), "max": float(np.abs(d).max()),
            "scale": float(np.abs(a64).max())}


def texel_flips(loc32, loc64, spatial, n_points):
    """Coordinates whose chosen texel differs: rtdetrv2_np.fast.attention.discrete_texels (trunc(loc * size + 0.5),
    clamped, in each run's own dtype, as transformers computes it), column and row counted apart."""
    return int((np.stack(discrete_texels(loc32, spatial, n_points))
                != np.stack(discrete_texels(loc64, spatial, n_points))).sum())


def shared_stages(rec, cfg):
    keys = [f"backbone.{l}" for l in range(len(cfg.encoder_in_channels))]
    keys += [f"encoder.output.{l}" for l in range(cfg.num_feature_levels)]
    keys += ["reference_boxes"] + [f"decoder.{i}.boxes" for i in range(cfg.decoder_layers)]
    return [k for k in keys + ["logits", "pred_boxes"] if k in rec]


def record(name):
    meta = json.loads((rr.FIXTURES / name / "meta.json").read_text())
    variant, _, image_keys, size, _ = rr.CASES[name]
    cfg = rr.case_config(name)
    pixels = rr.load_pixels(image_keys, size)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        rr.write_model_dir(model_dir, cfg, meta["seed"], rr.case_hf_extra(name))
        model, _ = rr.load_checked(model_dir)
        rec32, spatial = rr.run_recorded(model, pixels, cfg)
        model = model.double()
        rec64, _ = rr.run_recorded(model, pixels.astype(np.float64), cfg)
    assert rec64["logits"].dtype == np.float64
    same = bool(np.array_equal(rec32["topk_index"], rec64["topk_index"]))
    out = {"case": name, "seed": meta["seed"], "size_hw": list(size), "method": cfg.decoder_method,
           "topk_same_in_float32": same,
           "torch_f32_vs_f64": {k: distance(rec32[k], rec64[k]) for k in shared_stages(rec64, cfg)} if same else {},
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "numpy": np.__version__},
           "torch_threads": torch.get_num_threads(),
           "date": datetime.date.today().isoformat(),
           "command": f"python tools/record_float64.py --case {name}"}
    if cfg.decoder_method == "discrete":
        out["texel_flips"] = [texel_flips(rec32[f"decoder.{i}.sampling_locations"],
                                          rec64[f"decoder.{i}.sampling_locations"], spatial, cfg.n_points)
                              for i in range(cfg.decoder_layers)]
        out["sampling_coordinates"] = int(rec64["decoder.0.sampling_locations"].size)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / f"{name}.npz", pred_boxes=rec64["pred_boxes"],
                        logits=rec64["logits"][:, :NQ_KEEP], topk_index=rec64["topk_index"])
    (OUT / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
    d = out["torch_f32_vs_f64"]
    print(f"[{name}] selection same in float32: {same}; logits rms {d['logits']['rms']:.3g} max "
          f"{d['logits']['max']:.3g}; boxes rms {d['pred_boxes']['rms']:.3g}"
          + (f"; texel flips {out['texel_flips']} of {out['sampling_coordinates']}" if "texel_flips" in out else ""),
          flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", action="append", choices=CASES, help="record this case (repeatable; default all)")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    for name in a.case or CASES:
        record(name)


if __name__ == "__main__":
    main()

"""Record PyTorch's outputs of the shipped demo models, stage by stage, on generated scenes.

The same recording as tools/record_reference.py (its `run_recorded` hooks, its summaries and meta.json format), but
the weights are the shipped ones (rtdetrv2_np/demo/models/<folder>: config.json + model.safetensors, loaded by
transformers' from_pretrained exactly as a hub folder) and the input is a batch of two scenes of the evaluation
stream (rtdetrv2_np.demo.shapes.make_scene(EVAL_SEED, 0 and 1), 256×256, x / 255). The fixture records the SHA-256
of the model file it was made from: the tests refuse to compare against a recording of other weights (re-run this
tool after shipping new weights).

    python tools/record_demo.py                 # both models -> tests/fixtures/reference/demo_{bilinear,discrete}/
"""

import argparse
import datetime
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL
import torch
import transformers

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))
import record_reference as rr  # noqa: E402
from rtdetrv2_np.demo import DEMO_MODELS, demo_model_dir  # noqa: E402
from rtdetrv2_np.demo.shapes import EVAL_SEED, make_scene  # noqa: E402
from rtdetrv2_np.weights import read_config  # noqa: E402

CASES = {"demo_bilinear": "demo", "demo_discrete": "demo-discrete"}
SCENES = (0, 1)


def scene_pixels(indices):
    """pixel_values float32 [B, 3, 256, 256]: generated scenes, x / 255 (the detector's preprocessing at its own
    input size: no resize)."""
    xs = [make_scene(EVAL_SEED, i)[0].astype(np.float32) / np.float32(255) for i in indices]   # [256, 256, 3]
    return np.ascontiguousarray(np.stack(xs).transpose(0, 3, 1, 2))                               # [B, 3, H, W]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def record(case, out_root):
    name = CASES[case]
    folder = demo_model_dir(name)
    cfg = read_config(os.path.join(folder, "config.json"))
    model, load_check = rr.load_checked(folder)
    pixel_values = scene_pixels(SCENES)
    rec, spatial = rr.run_recorded(model, pixel_values, cfg)
    sel = rr.selection_margins(rec, cfg.num_queries)
    stage_stats = {k: rr.stats(v) for k, v in rec.items() if v.dtype.kind == "f"}
    whole_logits = {f"decoder.{cfg.decoder_layers - 1}.logits"}
    arrays = rr.select_arrays(rec, "stages", whole_logits)
    arrays["topk_boundary_gap"] = sel["topk_boundary_gap"].astype(np.float32)
    arrays["topk_boundary_scores"] = sel["topk_boundary_scores"].astype(np.float32)
    case_dir = Path(out_root) / case
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    np.savez_compressed(case_dir / "outputs.npz", **arrays)
    meta = {
        "case": case,
        "description": "a shipped demo model; every stage (big maps as @idx/@val/@mean summaries); the weights are "
                       "the package's own (rtdetrv2_np/demo/models), identified by their SHA-256",
        "store": "stages",
        "demo_model": name,
        "model_sha256": sha256(os.path.join(folder, "model.safetensors")),
        "config": cfg.to_hf_dict(),
        "scenes": {"seed": EVAL_SEED, "indices": list(SCENES)},
        "size_hw": [int(pixel_values.shape[2]), int(pixel_values.shape[3])],
        "method": cfg.method,
        "decoder_layers_run": cfg.decoder_layers,
        "decoder_eval_idx": cfg.decoder_eval_idx,
        "spatial_shapes": [list(hw) for hw in spatial],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__, "Pillow": PIL.__version__, "python": sys.version.split()[0]},
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "command": "python tools/record_demo.py  (reference environment: tools/README.md)",
        "load_check": load_check,
        "topk_boundary_gap": sel["topk_boundary_gap"].tolist(),
        "invalid_anchor_count": sel["invalid_anchor_count"],
        "invalid_anchor_margin": None if sel["invalid_anchor_margin"] is None
        else sel["invalid_anchor_margin"].tolist(),
        "discrete_margins": rr.discrete_margins(rec, spatial, cfg) if cfg.method == "discrete" else None,
        "activation_stats": stage_stats,
        "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in sorted(arrays.items())},
    }
    with open(case_dir / "meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    size_kb = sum(p.stat().st_size for p in case_dir.iterdir()) / 1024
    print(f"[{case}] wrote {case_dir} ({size_kb:.0f} kB); top-k boundary gaps {meta['topk_boundary_gap']}", flush=True)
    if meta["discrete_margins"]:
        for d in meta["discrete_margins"]:
            print(f"[{case}] discrete layer {d['layer']}: min distance to a texel flip {d['min']:.2e}, "
                  f"within 1e-4: {d['n_within_1e-4']} of {d['n_coordinates']}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", action="append", choices=list(CASES), help="default: both")
    ap.add_argument("--out", default=str(rr.FIXTURES))
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for case in a.case or list(CASES):
        if not os.path.exists(demo_model_dir(CASES[case])):
            raise SystemExit(f"{demo_model_dir(CASES[case])}: not shipped yet (tools/ship_demo.py)")
        record(case, a.out)


if __name__ == "__main__":
    assert set(CASES.values()) == set(DEMO_MODELS)
    main()

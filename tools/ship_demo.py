"""Ship trained demo models into the package: weights, input size, label names, measured AP and a model card.

    python tools/ship_demo.py --bilinear-run runs/demo --discrete-run runs/demo_discrete

For each run folder (written by tools/train_demo.py) it copies export/ (config.json + model.safetensors, the EMA
weights) into rtdetrv2_np/demo/models/<folder>/ (rtdetrv2_np.demo.DEMO_MODELS), adds preprocessor_config.json (the
input size, as the hub's image processor reads it), evaluates every shipped model with both sampling methods on the
held-out generated set (rtdetrv2_np.evaluate.evaluate_shapes: make_scene(EVAL_SEED, i), i < EVAL_COUNT) with the
package's own NumPy model and evaluator, and writes demo/models/metrics.json (what the tests recompute) and each
folder's MODEL_CARD.md
(architecture, parameter count, the training commands, seed, steps, wall time and hardware, the 2×2 AP table).
Runs in the reference environment (it reads the run's state with torch) or in the package's own (then training
facts come from log.jsonl only).
"""

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from rtdetrv2_np import load_model  # noqa: E402
from rtdetrv2_np.demo import DEMO_MODELS, demo_model_dir  # noqa: E402
from rtdetrv2_np.demo.shapes import CLASSES, EVAL_COUNT, EVAL_SEED, SIZE  # noqa: E402
from rtdetrv2_np.evaluate import evaluate_shapes  # noqa: E402
from rtdetrv2_np.weights import read_safetensors  # noqa: E402

STATS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")
SUBSET = 100        # the tests recompute the AP on the first SUBSET scenes (the whole set takes minutes)
PREPROCESSOR = {"do_resize": True, "size": {"height": SIZE, "width": SIZE}, "resample": 2, "do_rescale": True,
                "rescale_factor": 1 / 255, "do_normalize": False, "do_pad": False, "format": "coco_detection",
                "image_processor_type": "RTDetrImageProcessor"}


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def training_facts(run, all_runs=()):
    log = [json.loads(s) for s in open(run / "log.jsonl")]
    evals = [json.loads(s) for s in open(run / "eval.jsonl")] if (run / "eval.jsonl").exists() else []
    last = log[-1]
    # the commands as a user would type them: every run folder (this one, and the one a fine-tune's --init names)
    # as runs/<name>, not this machine's path
    commands = [s.strip() for s in open(run / "command.txt") if s.strip()]
    for r in sorted({run, *all_runs}, key=lambda r: -len(str(r.resolve()))):
        commands = [c.replace(str(r.resolve()), f"runs/{r.name}").replace(str(r), f"runs/{r.name}") for c in commands]
    steps, seconds = last["step"], last["seconds"]
    try:                                        # the saved state is exact (the log is written every 20 steps)
        import torch
        state = torch.load(run / "state.pt", weights_only=True)
        steps, seconds = state["step"], state["seconds"]
    except ImportError:
        pass
    return {"steps": steps, "train_seconds": seconds, "commands": commands,
            "final_loss": last["loss"], "last_training_eval": evals[-1] if evals else None}


def copy_export(run, name):
    dst = Path(demo_model_dir(name))
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copyfile(run / "export" / f, tmp / f)
        os.chmod(tmp / f, 0o644)
    (tmp / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2) + "\n")
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return dst


def measure(name, count, progress):
    out = {}
    for method in ("bilinear", "discrete"):
        model = load_model(name, method=method)
        t0 = time.time()
        full = evaluate_shapes(model, count=count, progress=progress)
        seconds = time.time() - t0
        sub = evaluate_shapes(model, count=SUBSET)
        out[method] = {"full": {k: full[k] for k in STATS}, "subset": {k: sub[k] for k in STATS},
                       "eval_seconds": round(seconds, 1)}
        print(f"{name} with {method} sampling: " + ", ".join(f"{k} {full[k]:.4f}" for k in STATS), flush=True)
    return out


def table(metrics, key, names):
    rows = ["| model | sampled with | " + " | ".join(STATS) + " |", "|---|---|" + "---|" * len(STATS)]
    for name in names:
        for method in ("bilinear", "discrete"):
            m = metrics[name]["ap"][method][key]
            rows.append(f"| `{name}` | {method} | " + " | ".join(f"{m[k]:.3f}" for k in STATS) + " |")
    return "\n".join(rows)


def card(name, metrics, names):
    me = metrics[name]
    cfg = json.loads((Path(demo_model_dir(name)) / "config.json").read_text())
    bb = cfg["backbone_config"]
    tr = me["training"]
    method = "discrete" if cfg.get("decoder_method") == "discrete" else "bilinear"
    lines = [
        f"# Model card: `{name}` — a small RT-DETRv2 trained on generated shapes",
        "",
        f"**It knows only the four generated shape classes ({', '.join(CLASSES)}) of `rtdetrv2_np/demo/shapes.py`.** "
        "It is a teaching and testing model that makes the package work offline; on photographs it finds nothing "
        "meaningful.",
        "",
        "## Use",
        "",
        "```bash",
        f"python -m rtdetrv2_np.detect --demo{'' if name == 'demo' else ' --model ' + name}   # a generated scene, "
        "detections beside the ground truth",
        f"python -m rtdetrv2_np.detect image.png --model {name}",
        f"python -m rtdetrv2_np.evaluate --model {name} --shapes                  # the table below",
        "```",
        "",
        f"Input: {SIZE}×{SIZE} RGB, x / 255 (`preprocessor_config.json`); labels: `config.json` `id2label` "
        f"({', '.join(f'{i} {n}' for i, n in enumerate(CLASSES))}); sampling: {method} (`decoder_method` "
        f"\"{cfg.get('decoder_method')}\").",
        "",
        "## Architecture",
        "",
        f"transformers' `RTDetrV2ForObjectDetection` with a narrow ResNet-vd ({bb['layer_type']} blocks, depths "
        f"{bb['depths']}, widths {bb['hidden_sizes']}, stem {bb['embedding_size']}), hybrid encoder width "
        f"{cfg['encoder_hidden_dim']} (AIFI: {cfg['encoder_attention_heads']} heads, FFN {cfg['encoder_ffn_dim']}; "
        f"CCFF expansion {cfg['hidden_expansion']}), d_model {cfg['d_model']}, {cfg['decoder_layers']} decoder layers "
        f"with {cfg['decoder_attention_heads']} heads and {cfg['decoder_n_points']} points per level, "
        f"{cfg['num_queries']} queries, {len(CLASSES)} classes: **{me['parameters']:,} parameters** "
        f"({me['file_bytes'] / 2**20:.1f} MiB float32).",
        "",
        "## Training",
        "",
        "From scratch (no pretrained backbone) with transformers 5.24's own losses (varifocal, L1, GIoU, auxiliary "
        "and denoising losses) on an endless stream of generated scenes, `tools/train_demo.py` (its docstring gives "
        "the recipe and where each setting comes from). The commands, in order (a run interrupted and resumed "
        "shows each command that trained it):",
        "",
        "```bash",
        *tr["commands"],
        "```",
        "",
        f"- seed 0 (weights and scene stream: scene i of step s is `make_scene(0, s·batch + i)`); "
        f"{tr['steps']:,} steps of batch 8 ({tr['steps'] * 8:,} scenes, none of the evaluation set);",
        f"- {tr['train_seconds'] / 3600:.1f} h of training on {metrics['hardware']}, 2 cores (CPU only, 1-2 threads, while "
        "other work shared the machine: the time is an upper bound);",
        "- shipped weights: the exponential moving average of the weights (decay 0.9995, or the `--ema-decay` of a "
        "command above from its start on), as the official recipe ships its EMA.",
        "",
        "## Evaluation",
        "",
        f"COCO box AP (IoU .50:.05:.95, 101-point interpolation, 100 detections per image; small / medium / large "
        f"by visible area < 32², < 96², ≥ 96²) on the held-out generated set `make_scene({EVAL_SEED}, i)`, "
        f"i < {metrics['eval_count']} ({SIZE}×{SIZE}), computed with the package's NumPy model and evaluator "
        f"(`rtdetrv2_np.evaluate`, equal to pycocotools on recorded cases). Each model evaluated with both "
        "sampling methods — RT-DETRv2's discrete-sampling ablation (arXiv 2407.17140v1 §3.4, Table 4, where the "
        "model is first fine-tuned with discrete sampling) in miniature:",
        "",
        table(metrics, "full", names),
        "",
        f"The test suite (tests/test_demo.py) recomputes the figures on the first {SUBSET} scenes; on that subset "
        "they are:",
        "",
        table(metrics, "subset", names),
        "",
        f"Measured with `python tools/ship_demo.py` ({metrics['date']}; numpy {metrics['numpy']}).",
        "",
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bilinear-run", type=Path, required=True, help="run folder of the bilinear model ('demo')")
    ap.add_argument("--discrete-run", type=Path, help="run folder of the discrete fine-tune ('demo-discrete')")
    ap.add_argument("--count", type=int, default=EVAL_COUNT, help=f"evaluation scenes (default {EVAL_COUNT})")
    a = ap.parse_args()
    runs = {"demo": a.bilinear_run}
    if a.discrete_run:
        runs["demo-discrete"] = a.discrete_run
    metrics = {"eval_seed": EVAL_SEED, "eval_count": a.count, "subset": SUBSET, "hardware": f"{cpu_name()}",
               "date": time.strftime("%Y-%m-%d"), "numpy": np.__version__}

    def progress(done, total):
        if done % 100 == 0 or done == total:
            print(f"  {done}/{total}", file=sys.stderr, flush=True)
    for name, run in runs.items():
        dst = copy_export(run, name)
        tensors, _ = read_safetensors(str(dst / "model.safetensors"))
        metrics[name] = {"run": str(run.name), "training": training_facts(run, runs.values()),
                         "parameters": int(sum(t.size for k, t in tensors.items() if t.dtype.kind == "f" and not
                                               k.endswith(("running_mean", "running_var", "n_points_scale")))),
                         "file_bytes": (dst / "model.safetensors").stat().st_size,
                         "ap": measure(name, a.count, progress)}
    names = list(runs)
    (Path(demo_model_dir("demo")).parent / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    for name in names:
        (Path(demo_model_dir(name)) / "MODEL_CARD.md").write_text(card(name, metrics, names))
    total = sum((Path(demo_model_dir(n)) / "model.safetensors").stat().st_size for n in names)
    print(f"shipped {names}: {total / 1e6:.2f} MB of weights")


if __name__ == "__main__":
    assert set(DEMO_MODELS) == {"demo", "demo-discrete"}
    main()

"""Train the shipped demo detector: transformers' RTDetrV2ForObjectDetection from scratch on generated shapes.

The model is a small RT-DETRv2 (DEMO_ARCH below: a narrow ResNet-vd with basic blocks, d_model 80, 3 decoder
layers, 100 queries, 4 classes, 256×256 input) trained with transformers' own losses (varifocal loss, L1, GIoU,
the auxiliary losses of every decoder layer and of the encoder's query selection, and contrastive denoising) on an
endless stream of scenes from rtdetrv2_np.demo.shapes (seed 0, scene index = step · batch + i, so a resumed run sees
exactly the scenes an uninterrupted one would). Everything is seeded: the same command gives the same weights on the
same machine and library versions (PyTorch's CPU kernels are not bit-reproducible across machines).

Run in the reference environment (pip install -e ".[reference]": torch 2.13.0 CPU, transformers 5.24.0, scipy for
transformers' Hungarian matcher, pycocotools for the periodic AP):

    python tools/train_demo.py --run runs/demo --steps 20000                      # bilinear sampling, from scratch
    python tools/train_demo.py --run runs/demo --steps 30000 --resume             # go on after an interruption
    python tools/train_demo.py --run runs/demo_discrete --init runs/demo/export --method discrete \\
        --steps 3000 --lr 5e-5 --warmup 100                                       # discrete-sampling fine-tune

A run folder holds: state.pt (model, EMA, optimizer, step: what --resume reads), log.jsonl (one line per logged
step: losses, learning rate, seconds), eval.jsonl (periodic COCO AP of the EMA weights on the first --eval-count
scenes of the evaluation stream, seed EVAL_SEED), export/ (the EMA weights as a hub-layout folder: config.json +
model.safetensors, what rtdetrv2_np.load_model reads) and command.txt (every command that trained it).

Choices, with their sources:
- freeze_backbone_batch_norms=False: transformers' default (True) replaces the backbone's BatchNorm with frozen
  identity statistics, right for fine-tuning a pretrained backbone and wrong from scratch.
- AdamW, weight decay 1e-4, gradient-norm clipping 0.1 and an EMA of the weights: the official recipe
  (rtdetrv2_pytorch configs/rtdetrv2/include/optimizer.yml: AdamW lr 1e-4 at batch 16, weight_decay 1e-4,
  clip_max_norm 0.1, ema decay 0.9999 with 2000 warm-up updates). Here the batch is 8 and the run short, so the
  learning rate is 3e-4 (faster from scratch; measured stable) and the EMA decay 0.9995 (a ~2000-step horizon).
- Linear learning-rate warm-up (official: 2000 steps of linear warm-up; here --warmup, 300 by default).
"""

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import RTDetrV2Config, RTDetrV2ForObjectDetection

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from rtdetrv2_np.model.config import config_from_dict  # noqa: E402
from rtdetrv2_np.demo.shapes import CLASSES, EVAL_SEED, SIZE, make_scene  # noqa: E402

# The demo architecture, as config.json fields (RTDetrV2Config names). Parameter count: printed at start.
DEMO_ARCH = dict(
    backbone_config=dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[32, 64, 96, 128],
                         embedding_size=32),
    encoder_in_channels=[64, 96, 128], encoder_hidden_dim=80, encoder_ffn_dim=320, encoder_attention_heads=4,
    hidden_expansion=0.5,
    d_model=80, decoder_in_channels=[80, 80, 80], decoder_ffn_dim=320, decoder_layers=3, decoder_attention_heads=4,
    num_queries=100, decoder_n_points=4,
    id2label={i: name for i, name in enumerate(CLASSES)},
)
TRAINING_FIELDS = dict(freeze_backbone_batch_norms=False, num_denoising=100)
EMA_DECAY, EMA_WARMUP = 0.9995, 1000     # decay · (1 − exp(−updates / warm-up)), the official ModelEMA's form


def hf_config(method):
    cfg = config_from_dict(dict(DEMO_ARCH, decoder_method=method))
    d = cfg.to_hf_dict()
    d.update(TRAINING_FIELDS)
    d["anchor_image_size"] = None
    return RTDetrV2Config(**{k: v for k, v in d.items() if k not in ("architectures", "model_type")})


# ---------------------------------------------------------------------------------------------------------------
# Data: an endless, resumable stream of generated scenes
# ---------------------------------------------------------------------------------------------------------------

def to_tensors(image, objects):
    """pixel_values [3, S, S] float32 in [0, 1] (x / 255, as the detector's preprocessing), and the target dict
    transformers' loss wants: class_labels [N] int64, boxes [N, 4] normalised (cx, cy, w, h)."""
    S = image.shape[0]
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
    boxes = np.array([o["box"] for o in objects], np.float32).reshape(-1, 4) / S
    cxcywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], axis=1)
    return x, {"class_labels": torch.tensor([o["label"] for o in objects], dtype=torch.int64),
               "boxes": torch.from_numpy(cxcywh)}


class SceneStream(torch.utils.data.IterableDataset):
    """Batches of scenes (seed, step · batch + i), from `start_step` on."""

    def __init__(self, seed, batch, start_step):
        self.seed, self.batch, self.start_step = seed, batch, start_step

    def __iter__(self):
        step = self.start_step
        while True:
            items = [to_tensors(*make_scene(self.seed, step * self.batch + i)) for i in range(self.batch)]
            yield step, torch.stack([x for x, _ in items]), [t for _, t in items]
            step += 1


# ---------------------------------------------------------------------------------------------------------------
# Evaluation (pycocotools on the EMA weights)
# ---------------------------------------------------------------------------------------------------------------

def evaluate(model, count, batch=16):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    model.eval()
    images, anns, dets = [], [], []
    with torch.no_grad():
        for start in range(0, count, batch):
            items = [(i, *make_scene(EVAL_SEED, i)) for i in range(start, min(count, start + batch))]
            x = torch.stack([to_tensors(img, objs)[0] for _, img, objs in items])
            out = model(pixel_values=x)
            prob = out.logits.sigmoid()                                        # [B, Nq, NC]
            B, Nq, NC = prob.shape
            scores, idx = prob.reshape(B, -1).topk(min(100, Nq * NC), dim=1)   # top-100 over queries × classes
            for b, (i, img, objs) in enumerate(items):
                images.append({"id": i + 1, "width": SIZE, "height": SIZE})
                for o in objs:
                    x0, y0, x1, y1 = o["box"]
                    anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": o["label"] + 1,
                                 "bbox": [x0, y0, x1 - x0, y1 - y0], "area": o["area"], "iscrowd": 0})
                q, c = idx[b] // NC, idx[b] % NC
                cx, cy, w, h = (out.pred_boxes[b, q] * SIZE).unbind(-1)
                for s, cc, bx in zip(scores[b].tolist(), c.tolist(),
                                     torch.stack([cx - w / 2, cy - h / 2, w, h], -1).tolist()):
                    dets.append({"image_id": i + 1, "category_id": cc + 1, "bbox": bx, "score": s})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    gt.createIndex()
    e = COCOeval(gt, gt.loadRes(dets), "bbox")
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        e.evaluate()
        e.accumulate()
        e.summarize()
    names = ["AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR1", "AR10", "AR100", "AR_S", "AR_M", "AR_L"]
    return dict(zip(names, (float(v) for v in e.stats)))


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------

def save_atomic(obj, path):
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export(ema, run, method):
    """The EMA weights as a hub-layout folder run/export (config.json + model.safetensors), atomically."""
    out, tmp = run / "export", run / "export.tmp"
    if tmp.exists():
        import shutil
        shutil.rmtree(tmp)
    ema.save_pretrained(tmp, safe_serialization=True)
    # the config.json as rtdetrv2_np and transformers read it for inference: the sampling method of the weights
    cfg = json.loads((tmp / "config.json").read_text())
    cfg["decoder_method"] = method
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if out.exists():
        import shutil
        shutil.rmtree(out)
    os.replace(tmp, out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, type=Path, help="run folder (created)")
    p.add_argument("--steps", type=int, required=True, help="train until this many steps in all")
    p.add_argument("--resume", action="store_true", help="continue from run/state.pt")
    p.add_argument("--init", type=Path, help="start from these weights (a hub-layout folder), e.g. for the "
                                             "discrete fine-tune")
    p.add_argument("--method", choices=["default", "discrete"], default="default",
                   help="decoder_method: bilinear ('default') or discrete sampling")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--lr-drop-at", type=int, default=None, help="multiply the learning rate by 0.1 from this step")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--ema-decay", type=float, default=EMA_DECAY,
                   help="EMA decay (a shorter average, e.g. 0.998, lets the EMA follow a learning-rate drop)")
    p.add_argument("--seed", type=int, default=0, help="training scene stream and weight initialisation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-count", type=int, default=64)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    a.run.mkdir(parents=True, exist_ok=True)
    with open(a.run / "command.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  python {' '.join(sys.argv)}\n")

    config = hf_config(a.method)
    if a.init:
        model = RTDetrV2ForObjectDetection.from_pretrained(a.init, config=config)
    else:
        model = RTDetrV2ForObjectDetection(config)
    ema = RTDetrV2ForObjectDetection(config)
    ema.load_state_dict(model.state_dict())
    ema.eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    step, seconds = 0, 0.0
    if a.resume:
        state = torch.load(a.run / "state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, seconds = state["step"], state["seconds"]
        torch.set_rng_state(state["torch_rng"])
    n_params = sum(t.numel() for t in model.parameters())
    print(f"{n_params:,} parameters; step {step} -> {a.steps}; batch {a.batch}; method {a.method}", flush=True)

    def lr_at(s):
        lr = a.lr * min(1.0, (s + 1) / a.warmup)
        return lr * (0.1 if a.lr_drop_at is not None and s >= a.lr_drop_at else 1.0)

    loader = torch.utils.data.DataLoader(SceneStream(a.seed, a.batch, step), batch_size=None, num_workers=1,
                                         prefetch_factor=4)
    model.train()
    t_last = time.time()
    acc = {}
    # SIGTERM / SIGINT, or a file run/STOP: finish the step, save, export and exit (a run can be interrupted at any
    # time). The file is the dependable way: a signal sent while the data-loader worker starts can be lost.
    stop = []

    def request_stop(signum, _frame):
        stop.append(signum)
        print(f"signal {signum}: stopping after this step", file=sys.stderr, flush=True)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    stop_file = a.run / "STOP"
    stop_file.unlink(missing_ok=True)
    for s, pixels, targets in loader:
        if s >= a.steps or stop:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(s)
        out = model(pixel_values=pixels, labels=targets)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        with torch.no_grad():
            d = a.ema_decay * (1 - math.exp(-(s + 1) / EMA_WARMUP))
            for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
                if e.dtype.is_floating_point:
                    e.mul_(d).add_(m.detach(), alpha=1 - d)
                else:
                    e.copy_(m)
        acc.setdefault("loss", []).append(out.loss.item())
        for k in ("loss_vfl", "loss_bbox", "loss_giou"):
            if k in out.loss_dict:
                acc.setdefault(k, []).append(float(out.loss_dict[k].detach()))
        acc.setdefault("gnorm", []).append(float(gnorm))
        step = s + 1
        if stop_file.exists():
            stop.append("file")
        now = time.time()
        seconds += now - t_last
        t_last = now
        if step % a.log_every == 0:
            rec = {"step": step, "lr": lr_at(s), "seconds": round(seconds, 1),
                   **{k: round(float(np.mean(v)), 5) for k, v in acc.items()}}
            acc = {}
            with open(a.run / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
        if step % a.ckpt_every == 0 or step == a.steps or stop:
            save_atomic({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                         "step": step, "seconds": seconds, "torch_rng": torch.get_rng_state(),
                         "args": vars(a) | {"run": str(a.run), "init": str(a.init)}}, a.run / "state.pt")
            export(ema, a.run, a.method)
        if step % a.eval_every == 0 or step == a.steps:
            t0 = time.time()
            res = evaluate(ema, a.eval_count)
            rec = {"step": step, "seconds": round(seconds, 1), "eval_count": a.eval_count,
                   **{k: round(v, 4) for k, v in res.items()}}
            with open(a.run / "eval.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            print("eval", json.dumps(rec), flush=True)
            t_last += time.time() - t0      # evaluation time is not training time
    print(f"done: step {step}, {seconds / 3600:.2f} h of training", flush=True)


if __name__ == "__main__":
    main()

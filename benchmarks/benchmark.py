"""Benchmark: rtdetrv2_np's reference and fast paths against PyTorch eager (transformers) and ONNX Runtime, in one run.

    python benchmarks/benchmark.py                  # r18vd and r50vd, 640x640, batch 1 and 4: the full table
    python benchmarks/benchmark.py --quick          # a tiny model at 64x64: checks that the script works
    python benchmarks/benchmark.py --kernels        # per 3x3 conv shape: im2col, row taps, Winograd (prepare.py rule)
    python benchmarks/benchmark.py --layers         # per conv layer shape: fast path vs PyTorch, where time goes
    python benchmarks/benchmark.py --bands          # Winograd band sizes (fast/conv.py WINOGRAD_TILES, ...)
    python benchmarks/benchmark.py --ops            # NumPy element-wise costs behind fast/ops.py's choices
    python benchmarks/benchmark.py --variants r18vd --batch 1 --rounds 5 --json results.json
    python benchmarks/benchmark.py --table results.json   # the table of a saved run, again

What it does. For each variant a random-weight checkpoint (rtdetrv2_np.random_weights, seed 0: the same weights for
every runtime) is written once in hub layout to a temporary folder; for ONNX Runtime the same weights, loaded in
transformers, are exported with torch.onnx (opset 17, one file per batch size). Then, round after round, every
runtime runs in its own fresh subprocess (so its peak RSS is its own): load, one first forward pass (reported apart:
it carries one-off work such as the fast path's weight preparation), then --repeat timed passes on the same input
(the cats image of tests/data, resized). Runtimes alternate within each round, so a machine whose speed drifts
(shared VMs, other jobs) slows all of them alike; per runtime the round with the lowest median is kept.

Reported (one table, Markdown): load time, first pass, median and best forward pass, the ratio of the median to
PyTorch's, the paired ratio (in each round the runtime's median over PyTorch's median of the same round; the
median over rounds, with its range: on a drifting machine the steadier of the two figures), achieved GFLOP/s (the
model's multiply-adds x 2, counted once on the reference path, divided by the median: the same count for every
runtime, although Winograd performs fewer multiplications), peak RSS, and the per-stage breakdown of the best
pass: backbone, encoder (input projections, AIFI, CCFM), query selection (decoder input projections, anchors,
top-k), decoder, post-processing (sigmoid, top-k, boxes to pixels). ONNX Runtime runs the whole graph at once: no
breakdown.

Threads: --threads (default: the cores this process may use) for every runtime: OPENBLAS_NUM_THREADS for NumPy,
torch.set_num_threads, ONNX Runtime's intra_op_num_threads. The fast path runs as installed (element-wise work in
one thread, fast/ops.py); the row "fast, element-wise split" is the fast path with RTDETRV2_NP_THREADS=--threads:
it measures the lever of splitting NumPy's element-wise work over the cores, which only a quiet machine can judge.

Requirements: the package's own (numpy, ...) for the NumPy paths; torch + transformers for PyTorch (pip install -e
".[reference]" in a separate environment); onnx + onnxruntime for ONNX Runtime. A runtime that is not importable is
left out and said so. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE may be set on the machine for old OpenBLAS builds and slow
a current NumPy; to benchmark without them: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/...
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.path.join(ROOT, "tests", "data", "coco_000000039769.png")
STAGES = ("backbone", "encoder", "query", "decoder", "post")
RUNTIMES = ("reference", "fast", "fastsplit", "torch", "onnx")
LABELS = {"reference": "rtdetrv2_np reference", "fast": "rtdetrv2_np fast", "fastsplit": "fast, element-wise split",
          "torch": "PyTorch eager", "onnx": "ONNX Runtime"}

# --quick: a tiny basic-block architecture (the shape of tests/fixtures/reference/tiny_basic) at 64x64
QUICK_CONFIG = dict(
    backbone_config=dict(model_type="rt_detr_resnet", layer_type="basic", depths=[1, 1, 1, 1], embedding_size=8,
                         hidden_sizes=[8, 16, 32, 64]),
    encoder_in_channels=[16, 32, 64], encoder_hidden_dim=16, encoder_ffn_dim=32, encoder_attention_heads=2,
    hidden_expansion=0.5, d_model=16, decoder_in_channels=[16, 16, 16], decoder_ffn_dim=32, decoder_layers=2,
    decoder_attention_heads=2, num_queries=20, id2label={str(i): f"class_{i}" for i in range(5)})


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def pixel_values(size, batch):
    import numpy as np
    from PIL import Image
    img = Image.open(IMAGE).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    x = (np.asarray(img, np.float32) / np.float32(255)).transpose(2, 0, 1)       # [3, H, W]
    return np.ascontiguousarray(np.repeat(x[None], batch, axis=0))                # [B, 3, H, W]


def variant_cfg(variant):
    sys.path.insert(0, ROOT)
    from rtdetrv2_np.model.config import config_from_dict, variant_config
    if variant == "tiny":
        return config_from_dict(dict(QUICK_CONFIG))
    return variant_config(variant, id2label={i: f"class_{i}" for i in range(80)})


def write_checkpoint(variant, directory):
    from safetensors.numpy import save_file
    sys.path.insert(0, ROOT)
    from rtdetrv2_np.random_weights import random_params
    from rtdetrv2_np.weights import expected_shapes
    cfg = variant_cfg(variant)
    hf = cfg.to_hf_dict()
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf, f)
    save_file(random_params(expected_shapes(cfg), 0, cfg.n_points), os.path.join(directory, "model.safetensors"))


def count_flops(directory, size, batch):
    """The model's FLOPs (2 x multiply-adds) for one forward pass, counted on the reference path: every convolution
    (model/nn.conv2d), linear layer (model/nn.linear) and attention product (model/nn.multi_head_attention)."""
    sys.path.insert(0, ROOT)
    import numpy as np
    from rtdetrv2_np import load_model
    from rtdetrv2_np.model import nn
    macs = [0]
    real_conv, real_linear, real_mha = nn.conv2d, nn.linear, nn.multi_head_attention

    def conv2d(x, w, b=None, stride=1, padding=0):
        out = real_conv(x, w, b, stride, padding)
        macs[0] += out.size * w[0].size                             # per output: C_in * KH * KW
        return out

    def linear(x, p):
        out = real_linear(x, p)
        macs[0] += out.size * p["weight"].shape[1]
        return out

    def mha(x_qk, x_v, p, heads):
        B, N, C = x_qk.shape
        macs[0] += 2 * B * N * N * C                                # Q K^T and A V
        return real_mha(x_qk, x_v, p, heads)

    import rtdetrv2_np.model.backbone as mb
    import rtdetrv2_np.model.decoder as md
    import rtdetrv2_np.model.deformable_attention as mda
    import rtdetrv2_np.model.detector as mdet
    import rtdetrv2_np.model.hybrid_encoder as mh
    import rtdetrv2_np.model.query_selection as mq
    patched = [(nn, "conv2d", conv2d), (nn, "linear", linear), (nn, "multi_head_attention", mha)]
    for mod in (mb, md, mda, mdet, mh, mq):
        for name, fn in (("linear", linear), ("multi_head_attention", mha)):
            if hasattr(mod, name):
                patched.append((mod, name, fn))
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patched]
    for mod, name, fn in patched:
        setattr(mod, name, fn)
    try:
        model = load_model(directory)
        model(pixel_values(size, batch))
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
    del np
    return 2 * macs[0]


def export_onnx(directory, size, batch, path):
    """The checkpoint loaded in transformers, exported with torch.onnx (TorchScript exporter, opset 17: the first
    with every op RT-DETRv2 needs, GridSample being opset 16); returns seconds taken."""
    import torch
    from transformers import RTDetrV2ForObjectDetection
    t = time.perf_counter()
    model = RTDetrV2ForObjectDetection.from_pretrained(directory, attn_implementation="eager").eval()

    class Outputs(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            out = self.m(pixel_values=x)
            return out.logits, out.pred_boxes

    x = torch.from_numpy(pixel_values(size, batch))
    with torch.no_grad():
        torch.onnx.export(Outputs(model), (x,), path, opset_version=17, input_names=["pixel_values"],
                          output_names=["logits", "pred_boxes"], dynamo=False)
    return time.perf_counter() - t


# ----------------------------------------------------------------------------------------------------------------
# One runtime, in its own subprocess
# ----------------------------------------------------------------------------------------------------------------

class StageClock:
    """Seconds per stage of the current forward pass, from wrapped stage functions."""

    def __init__(self):
        self.t = {}

    def wrap(self, mod, name, stage):
        real = getattr(mod, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                self.t[stage] = self.t.get(stage, 0.0) + time.perf_counter() - t
        setattr(mod, name, timed)


def numpy_runtime(impl, directory, x, clock):
    sys.path.insert(0, ROOT)
    import numpy as np
    from rtdetrv2_np import load_model
    from rtdetrv2_np.postprocess import post_process_object_detection
    if impl == "reference":
        import rtdetrv2_np.model.detector as det
    else:
        import rtdetrv2_np.fast.detector as det
    for name, stage in (("backbone", "backbone"), ("hybrid_encoder", "encoder"), ("decoder", "decoder")):
        clock.wrap(det, name, stage)
    t = time.perf_counter()
    model = load_model(directory, fast=impl != "reference")
    load = time.perf_counter() - t
    sizes = [x.shape[2:]] * x.shape[0]

    def run():
        t = time.perf_counter()
        out = model(x)
        total = time.perf_counter() - t
        # as for PyTorch: everything between the encoder and the decoder (decoder input projections included)
        clock.t["query"] = total - sum(clock.t.get(s, 0.0) for s in ("backbone", "encoder", "decoder"))
        t = time.perf_counter()
        post_process_object_detection(out.logits, out.pred_boxes, target_sizes=sizes, threshold=0.5)
        clock.t["post"] = time.perf_counter() - t
    try:                                                     # optional, only for the report
        import threadpoolctl
        info = ", ".join(f"{i['internal_api']} {i.get('architecture', '')} {i['num_threads']} threads"
                         for i in threadpoolctl.threadpool_info())
    except ImportError:
        blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
        info = f"{blas.get('name', 'BLAS')} {blas.get('version', '')} (threadpoolctl shows threads)"
    return load, run, f"numpy {np.__version__}, {info}"


def torch_runtime(directory, x, clock, threads):
    import torch
    from transformers import RTDetrImageProcessor, RTDetrV2ForObjectDetection
    torch.set_num_threads(threads)
    t = time.perf_counter()
    model = RTDetrV2ForObjectDetection.from_pretrained(directory, attn_implementation="eager").eval()
    load = time.perf_counter() - t
    processor = RTDetrImageProcessor()
    m = model.model
    spans = {}

    def hook(stage):
        def pre(module, args, kwargs=None):
            spans.setdefault(stage, []).append(-time.perf_counter())

        def post(module, args, out, kwargs=None):
            spans[stage][-1] += time.perf_counter()
        return pre, post
    groups = {"backbone": [m.backbone], "encoder": list(m.encoder_input_proj) + [m.encoder],
              "decoder": [m.decoder]}
    for stage, modules in groups.items():
        pre, post = hook(stage)
        for mod in modules:
            mod.register_forward_pre_hook(pre)
            mod.register_forward_hook(post)
    xt = torch.from_numpy(x)
    sizes = [tuple(x.shape[2:])] * x.shape[0]

    def run():
        spans.clear()
        t = time.perf_counter()
        with torch.no_grad():
            out = model(pixel_values=xt)
        total = time.perf_counter() - t
        for stage in groups:
            clock.t[stage] = sum(spans.get(stage, []))
        clock.t["query"] = total - sum(clock.t[s] for s in groups)   # enc_output, heads, top-k, decoder input proj
        t = time.perf_counter()
        processor.post_process_object_detection(out, threshold=0.5, target_sizes=sizes)
        clock.t["post"] = time.perf_counter() - t
    return load, run, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def onnx_runtime(onnx_path, x, clock, threads):
    import onnxruntime as ort
    sys.path.insert(0, ROOT)
    from rtdetrv2_np.postprocess import post_process_object_detection
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    t = time.perf_counter()
    session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - t
    sizes = [x.shape[2:]] * x.shape[0]

    def run():
        logits, boxes = session.run(None, {"pixel_values": x})
        t = time.perf_counter()
        post_process_object_detection(logits, boxes, target_sizes=sizes, threshold=0.5)
        clock.t["post"] = time.perf_counter() - t
    return load, run, f"onnxruntime {ort.__version__}, {threads} threads"


def run_one(a):
    """Subprocess body: load, one first pass, a.repeat timed passes; prints one JSON line."""
    x = pixel_values(a.size, a.batch)
    clock = StageClock()
    if a._impl in ("reference", "fast", "fastsplit"):
        load, run, info = numpy_runtime(a._impl, a._dir, x, clock)
    elif a._impl == "torch":
        load, run, info = torch_runtime(a._dir, x, clock, a.threads)
    else:
        load, run, info = onnx_runtime(a._onnx, x, clock, a.threads)
    t = time.perf_counter()
    run()
    first = time.perf_counter() - t
    times, stages = [], []
    for _ in range(a.repeat):
        clock.t.clear()
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
        stages.append(dict(clock.t))
    best = min(range(len(times)), key=times.__getitem__)
    print(json.dumps({"load_s": load, "first_s": first, "forward_s": statistics.median(times), "best_s": times[best],
                      "stages": stages[best], "peak_mib": peak_rss_mib(), "info": info}))


def peak_rss_mib():
    """This process's peak resident memory: VmHWM (Linux; exec starts it afresh), else ru_maxrss, which on Linux
    keeps the high-water mark of the parent it was forked from."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------------------------
# --kernels: the per-layer convolution choice of fast/prepare.py, measured
# ----------------------------------------------------------------------------------------------------------------

def conv3x3_shapes(variant, size):
    """The distinct 3x3 stride-1 convolutions of a variant at an input size: [(C_in, C_out, H, W)], largest maps
    first (found by running the reference model once with nn.conv2d wrapped)."""
    import rtdetrv2_np.model.nn as nn
    from rtdetrv2_np import build_model
    from rtdetrv2_np.random_weights import random_params
    from rtdetrv2_np.weights import expected_shapes
    cfg = variant_cfg(variant)
    model = build_model(cfg, random_params(expected_shapes(cfg), 0, cfg.n_points))
    seen = []
    real_conv = nn.conv2d

    def conv2d(x, w, b=None, stride=1, padding=0):
        if w.shape[-1] == 3 and stride == 1:
            seen.append((w.shape[1], w.shape[0], x.shape[2], x.shape[3]))
        return real_conv(x, w, b, stride, padding)
    nn.conv2d = conv2d
    try:
        model(pixel_values(size, 1))
    finally:
        nn.conv2d = real_conv
    return sorted(set(seen), key=lambda s: (-s[2], s[0]))


def random_conv3x3(rng, c_in, c_out, B, H, W):
    """Input [C_in, B, H, W] and weights [C_out, C_in, 3, 3] for the sweeps (unit-variance outputs)."""
    import numpy as np
    x = rng.standard_normal((c_in, B, H, W)).astype(np.float32)
    w = (rng.standard_normal((c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)
    return x, w


def kernel_sweep(a):
    """Every distinct 3x3 stride-1 convolution of the variants at the given size and batch: im2col, row taps and
    Winograd F(2,3) (and F(4,3)), alternating, best of --repeat; prints the speed-ups over im2col and the rule's
    current choice."""
    sys.path.insert(0, ROOT)
    import numpy as np
    import rtdetrv2_np.fast.conv as fc
    from rtdetrv2_np.fast.prepare import ROW_TAPS_MIN_CHANNELS, WINOGRAD_MIN_CHANNELS, conv_kernel
    for variant in a.variants:
        shapes = conv3x3_shapes(variant, a.size)
        print(f"{variant} at {a.size[0]}x{a.size[1]}, batch {a.batch[0]}: speed-up over im2col (best of {a.repeat}); "
              f"rule: Winograd from {WINOGRAD_MIN_CHANNELS} channels, row taps from {ROW_TAPS_MIN_CHANNELS}")
        rng = np.random.default_rng(0)
        for c_in, c_out, H, W in shapes:
            x, w = random_conv3x3(rng, c_in, c_out, a.batch[0], H, W)
            b = np.zeros(c_out, np.float32)
            U2, U4, WR = fc.winograd_filter(w, 2), fc.winograd_filter(w, 4), fc.row_taps_filter(w)
            algs = {"im2col": lambda: fc.conv_im2col(x, w, b, 1, 1, "relu"),
                    "row taps": lambda: fc.conv_row_taps(x, WR, b, "relu"),
                    "F(2,3)": lambda: fc.conv_winograd(x, U2, b, 2, "relu"),
                    "F(4,3)": lambda: fc.conv_winograd(x, U4, b, 4, "relu")}
            best = {k: float("inf") for k in algs}
            for _ in range(a.repeat):
                for k, f in algs.items():
                    t = time.perf_counter()
                    f()
                    best[k] = min(best[k], time.perf_counter() - t)
            print(f"  {c_in:4d} -> {c_out:4d} @ {H}x{W}: im2col {best['im2col'] * 1e3:7.2f} ms, "
                  f"row taps x{best['im2col'] / best['row taps']:.2f}, "
                  f"F(2,3) x{best['im2col'] / best['F(2,3)']:.2f}, F(4,3) x{best['im2col'] / best['F(4,3)']:.2f}"
                  f"   (rule: {conv_kernel(c_out, c_in, 3, 1)})")


# Band settings that --bands compares: (WINOGRAD_TILES, TRANSFORM_BLOCK) of fast/conv.py
BAND_SETTINGS = [(512, 1 << 17), (512, 1 << 21), (1024, 1 << 21), (2048, 1 << 21), (2048, 1 << 22), (4096, 1 << 22)]


def band_sweep(a):
    """conv_winograd (F(2,3), ReLU) on every 3x3 stride-1 shape of the variants from WINOGRAD_MIN_CHANNELS up, under
    each band setting of BAND_SETTINGS (tiles per band, transform floats per channel chunk), the settings
    alternating, best of --repeat; milliseconds per shape and their sum."""
    sys.path.insert(0, ROOT)
    import numpy as np
    import rtdetrv2_np.fast.conv as fc
    from rtdetrv2_np.fast.prepare import WINOGRAD_MIN_CHANNELS
    rng = np.random.default_rng(0)
    cases = {}
    for variant in a.variants:
        for c_in, c_out, H, W in conv3x3_shapes(variant, a.size):
            if min(c_in, c_out) >= WINOGRAD_MIN_CHANNELS and (c_in, c_out, H, W) not in cases:
                x, w = random_conv3x3(rng, c_in, c_out, a.batch[0], H, W)
                cases[(c_in, c_out, H, W)] = (x, fc.winograd_filter(w, 2), np.zeros(c_out, np.float32))
    saved = fc.WINOGRAD_TILES, fc.TRANSFORM_BLOCK
    best = {}
    try:
        for _ in range(a.repeat):
            for setting in BAND_SETTINGS:
                fc.WINOGRAD_TILES, fc.TRANSFORM_BLOCK = setting
                for shape, (x, U, b) in cases.items():
                    t = time.perf_counter()
                    fc.conv_winograd(x, U, b, 2, "relu")
                    best[setting, shape] = min(best.get((setting, shape), float("inf")), time.perf_counter() - t)
    finally:
        fc.WINOGRAD_TILES, fc.TRANSFORM_BLOCK = saved
    print(f"conv_winograd F(2,3) at {a.size[0]}x{a.size[1]}, batch {a.batch[0]}, ms (best of {a.repeat}); "
          f"current: tiles {saved[0]}, transform block {saved[1]}")
    print("| tiles | transform block | " + " | ".join(f"{ci}->{co} @ {H}x{W}" for ci, co, H, W in cases) + " | sum |")
    print("|---" * (len(cases) + 3) + "|")
    for setting in BAND_SETTINGS:
        ms = [best[setting, shape] * 1e3 for shape in cases]
        print(f"| {setting[0]} | {setting[1]} | " + " | ".join(f"{v:.1f}" for v in ms) + f" | {sum(ms):.1f} |")


def ops_sweep(a):
    """NumPy float32 element-wise operations the fast path's epilogue uses, on a cache-sized block
    (EPILOGUE_BLOCK values), best of 50: nanoseconds per value. Shows which forms hit NumPy's SIMD loops."""
    sys.path.insert(0, ROOT)
    import numpy as np
    from rtdetrv2_np.fast.ops import EPILOGUE_BLOCK
    rng = np.random.default_rng(0)
    x = rng.standard_normal(EPILOGUE_BLOCK).astype(np.float32)
    y, out, zeros = x.copy(), np.empty_like(x), np.zeros_like(x)
    rows = x.reshape(256, -1)
    bias = rng.standard_normal((256, 1)).astype(np.float32)
    ops = {"maximum(x, 0) (scalar 0: model/nn.relu)": lambda: np.maximum(x, 0, out=out),
           "maximum(x, zeros) (array: fast/ops.relu)": lambda: np.maximum(x, zeros, out=out),
           "x + y": lambda: np.add(x, y, out=out),
           "x + bias[:, None] (256 rows)": lambda: np.add(rows, bias, out=out.reshape(rows.shape)),
           "exp(x)": lambda: np.exp(x, out=out),
           "x / y": lambda: np.divide(x, y, out=out)}
    print(f"float32, {x.size} values, ns per value (best of 50):")
    for name, f in ops.items():
        best = float("inf")
        for _ in range(50):
            t = time.perf_counter()
            f()
            best = min(best, time.perf_counter() - t)
        print(f"  {name:45s} {best / x.size * 1e9:6.3f}")


# ----------------------------------------------------------------------------------------------------------------
# --layers: where the fast path's convolution time goes, layer shape by layer shape, against PyTorch's
# ----------------------------------------------------------------------------------------------------------------

def layer_profile(a):
    """Every convolution of the backbone and encoder, timed in the fast path and in PyTorch eager, summed per shape
    (kernel size, stride, channels, input size), in one process with the passes alternating; per shape the pass
    with the lowest total is kept. Fast path: each call of fast/detector.conv and conv1x1 (the convolution with its
    folded BatchNorm, activation and residual). PyTorch: each module with a Conv2d child (conv + BatchNorm +
    activation; a RepVGG block is its two such modules, 3x3 and 1x1, where the fast path runs one merged 3x3).
    Python-level timers around every call cost a few microseconds each: compare rows, not the sum with the table."""
    sys.path.insert(0, ROOT)
    import torch
    from transformers import RTDetrV2ForObjectDetection
    import rtdetrv2_np.fast.detector as fd
    from rtdetrv2_np import load_model
    torch.set_num_threads(a.threads)
    for variant in a.variants:
        with tempfile.TemporaryDirectory() as tmp:
            write_checkpoint(variant, tmp)
            fast = load_model(tmp, fast=True)
            tm = RTDetrV2ForObjectDetection.from_pretrained(tmp, attn_implementation="eager").eval()
        x = pixel_values(a.size, a.batch[0])
        cur = {}                                  # side -> key -> [seconds in the current pass, calls]
        rows = {"fast": {}, "torch": {}}          # side -> shape -> [seconds, calls, kernel] of the best pass

        def record(side, key, seconds):
            t = cur.setdefault(side, {}).setdefault(key, [0.0, 0])
            t[0] += seconds
            t[1] += 1

        real_conv, real_1x1 = fd.conv, fd.conv1x1

        def conv(x_, spec, *args, **kw):
            t = time.perf_counter()
            out = real_conv(x_, spec, *args, **kw)
            if spec["kernel"] == "1x1":           # fd.conv ran the conv1x1 below, which recorded it
                return out
            c_out, c_in, k, _ = spec["shape"]
            record("fast", (k, spec["stride"], c_in, c_out, x_.shape[2], x_.shape[3], spec["kernel"]),
                   time.perf_counter() - t)
            return out

        def conv1x1(x_, w, *args, **kw):
            t = time.perf_counter()
            out = real_1x1(x_, w, *args, **kw)
            record("fast", (1, 1, w.shape[1], w.shape[0], x_.shape[2], x_.shape[3], "1x1"), time.perf_counter() - t)
            return out

        for mod in tm.model.modules():
            convs = [c for c in mod.children() if isinstance(c, torch.nn.Conv2d)]
            if not convs:
                continue
            c = convs[0]

            def pre(module, args):
                module._t0 = time.perf_counter()

            def post(module, args, out, c=c):
                h, w = args[0].shape[2:]
                record("torch", (c.kernel_size[0], c.stride[0], c.in_channels, c.out_channels, h, w, "torch"),
                       time.perf_counter() - module._t0)
            mod.register_forward_pre_hook(pre)
            mod.register_forward_hook(post)
        fd.conv, fd.conv1x1 = conv, conv1x1
        try:
            xt = torch.from_numpy(x)
            for it in range(a.repeat + 1):         # pass 0 of each side is a warm-up (the fast path prepares)
                for side in ("fast", "torch"):
                    cur.clear()
                    if side == "fast":
                        fast(x)
                    else:
                        with torch.no_grad():
                            tm(pixel_values=xt)
                    for key, (secs, calls) in cur.get(side, {}).items():
                        best = rows[side].get(key[:6])
                        if it and (best is None or secs < best[0]):
                            rows[side][key[:6]] = [secs, calls, key[6]]
        finally:
            fd.conv, fd.conv1x1 = real_conv, real_1x1
        print(f"{variant} at {a.size[0]}x{a.size[1]}, batch {a.batch[0]}, {a.threads} threads: convolution "
              f"milliseconds per shape (sum over its calls, best of {a.repeat} passes)")
        print("| k | stride | C_in -> C_out | input | fast kernel | calls | fast ms | PyTorch ms | fast / PyTorch |")
        print("|---|---|---|---|---|---|---|---|---|")
        keys = sorted(set(rows["fast"]) | set(rows["torch"]), key=lambda k: (-k[4] * k[5], k[2], k[0]))
        tot = {"fast": 0.0, "torch": 0.0}
        for k in keys:
            f, t = rows["fast"].get(k), rows["torch"].get(k)
            tot["fast"] += f[0] if f else 0
            tot["torch"] += t[0] if t else 0
            ratio = f"{f[0] / t[0]:.2f}" if f and t else "-"
            fms = f"{f[0] * 1e3:.1f}" if f else "-"
            tms = f"{t[0] * 1e3:.1f}" if t else "-"
            print(f"| {k[0]} | {k[1]} | {k[2]} -> {k[3]} | {k[4]}x{k[5]} | {f[2] if f else '-'} | {(f or t)[1]} | "
                  f"{fms} | {tms} | {ratio} |")
        print(f"| all | | | | | | {tot['fast'] * 1e3:.1f} | {tot['torch'] * 1e3:.1f} | "
              f"{tot['fast'] / tot['torch']:.2f} |")


# ----------------------------------------------------------------------------------------------------------------
# The parent: checkpoints, rounds, the table
# ----------------------------------------------------------------------------------------------------------------

def available():
    impls = ["reference", "fast", "fastsplit"]
    missing = []
    for impl, mods in (("torch", ("torch", "transformers")), ("onnx", ("torch", "transformers", "onnx",
                                                                      "onnxruntime"))):
        try:
            for mod in mods:
                __import__(mod)
            impls.append(impl)
        except ImportError as e:
            missing.append(f"{LABELS[impl]} ({e.name} not importable)")
    return impls, missing


def summarise(rounds):
    """Per (variant, batch) and runtime: its least disturbed round (lowest median), its best single pass, and the
    paired ratios -- in each round, its median over PyTorch's median of the same round -- as (median, min, max)."""
    results = {}
    for x in rounds:
        results.setdefault((x["variant"], x["batch"]), {}).setdefault(x["runtime"], []).append(x)
    for by_impl in results.values():
        torch_by_round = {x["round"]: x["forward_s"] for x in by_impl.get("torch", [])}
        for impl, rs in by_impl.items():
            best = min(rs, key=lambda x: x["forward_s"])
            paired = [x["forward_s"] / torch_by_round[x["round"]] for x in rs if x["round"] in torch_by_round]
            by_impl[impl] = dict(best, best_s=min(x["best_s"] for x in rs), load_s=min(x["load_s"] for x in rs),
                                 first_s=min(x["first_s"] for x in rs), peak_mib=max(x["peak_mib"] for x in rs),
                                 paired=(statistics.median(paired), min(paired), max(paired)) if paired else None)
    return results


def table(results, flops):
    """The Markdown table: forward = median of the runtime's least disturbed round; ratio = that over PyTorch's;
    paired = the median over rounds of the round-by-round ratio (min-max); stages: seconds in the best pass."""
    head = ("| variant | batch | runtime | load s | first pass s | forward s (median) | best s | ratio to PyTorch | "
            "paired ratio (min-max) | GFLOP/s | peak RSS MiB | backbone | encoder | query sel. | decoder | post |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (variant, batch), rs in results.items():
        base = rs.get("torch", {}).get("forward_s")
        for impl in RUNTIMES:
            if impl not in rs:
                continue
            r = rs[impl]
            ratio = f"{r['forward_s'] / base:.2f}" if base else "-"
            paired = "{:.2f} ({:.2f}-{:.2f})".format(*r["paired"]) if r["paired"] else "-"
            st = [f"{r['stages'][s]:.3f}" if s in r["stages"] else "-" for s in STAGES]
            lines.append(f"| {variant} | {batch} | {LABELS[impl]} | {r['load_s']:.3f} | {r['first_s']:.3f} | "
                         f"{r['forward_s']:.3f} | {r['best_s']:.3f} | {ratio} | {paired} | "
                         f"{flops[(variant, batch)] / r['forward_s'] / 1e9:.1f} | {r['peak_mib']:.0f} | " +
                         " | ".join(st) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=["r18vd", "r50vd"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--size", type=int, nargs=2, default=[640, 640], metavar=("H", "W"))
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds, alternating the runtimes, so all see the same machine (shared VMs drift)")
    ap.add_argument("--repeat", type=int, default=5, help="timed forward passes per round (after the first)")
    ap.add_argument("--threads", type=int, default=cores(), help="threads for every runtime (default: all cores)")
    ap.add_argument("--runtimes", nargs="+", choices=RUNTIMES, help="a subset (default: all that are importable)")
    ap.add_argument("--quick", action="store_true", help="a tiny model at 64x64, batch 1 and 2, one round")
    ap.add_argument("--kernels", action="store_true", help="per-layer convolution sweep (see kernel_sweep)")
    ap.add_argument("--bands", action="store_true", help="Winograd band-size sweep (see band_sweep)")
    ap.add_argument("--ops", action="store_true", help="element-wise operation costs (see ops_sweep)")
    ap.add_argument("--layers", action="store_true",
                    help="convolution time per layer shape, fast path vs PyTorch (see layer_profile)")
    ap.add_argument("--json", help="also write every round's measurements to this file")
    ap.add_argument("--table", metavar="JSON", help="print the table of a --json file again, and nothing else")
    for hidden in ("--_impl", "--_dir", "--_onnx"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.variants, a.size, a.batch, a.rounds, a.repeat = ["tiny"], [64, 64], [1, 2], 1, 2
    if a._impl:
        a.batch = a.batch[0]
        return run_one(a)
    if a.table:
        with open(a.table) as f:
            saved = json.load(f)
        flops = {tuple(int(v) if v.isdigit() else v for v in k.split()): n for k, n in saved["flops"].items()}
        return print(table(summarise(saved["rounds"]), flops))
    if a.kernels:
        return kernel_sweep(a)
    if a.bands:
        return band_sweep(a)
    if a.ops:
        return ops_sweep(a)
    if a.layers:
        return layer_profile(a)
    impls, missing = available()
    if a.runtimes:
        impls = [i for i in impls if i in a.runtimes]
    for m in missing:
        print(f"left out: {m}", file=sys.stderr)
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    env.pop("RTDETRV2_NP_THREADS", None)          # the fast path as installed; "fastsplit" sets it
    configs = [(v, b) for v in a.variants for b in a.batch]
    rounds, flops, exports = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for v in a.variants:
            dirs[v] = os.path.join(tmp, v)
            os.makedirs(dirs[v])
            write_checkpoint(v, dirs[v])
        for v, b in configs:
            flops[(v, b)] = count_flops(dirs[v], a.size, b)
            if "onnx" in impls:
                path = os.path.join(tmp, f"{v}_b{b}.onnx")
                exports[(v, b)] = (path, export_onnx(dirs[v], a.size, b, path))
        for r in range(a.rounds):
            for v, b in configs:
                for impl in impls:
                    cmd = [sys.executable, os.path.abspath(__file__), "--_impl", impl, "--_dir", dirs[v],
                           "--size", *map(str, a.size), "--batch", str(b), "--repeat", str(a.repeat),
                           "--threads", str(a.threads)]
                    if impl == "onnx":
                        cmd += ["--_onnx", exports[(v, b)][0]]
                    run_env = dict(env, RTDETRV2_NP_THREADS=str(a.threads)) if impl == "fastsplit" else env
                    out = subprocess.run(cmd, capture_output=True, text=True, env=run_env)
                    if out.returncode:
                        raise SystemExit(f"{impl} on {v} batch {b} failed:\n{out.stderr[-3000:]}")
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    rounds.append(dict(res, variant=v, batch=b, runtime=impl, round=r))
                    print(f"round {r + 1}/{a.rounds} {v} batch {b} {impl}: {res['forward_s']:.3f} s", file=sys.stderr)
    print(f"{platform.processor() or platform.machine()}, {cores()} cores, {a.threads} threads per runtime; "
          f"{a.size[0]}x{a.size[1]}; {a.rounds} rounds x {a.repeat} passes")
    print(table(summarise(rounds), flops))
    infos = {x["runtime"]: x["info"] for x in rounds}
    for impl, info in infos.items():
        print(f"  {LABELS[impl]}: {info}")
    for (v, b), (_, secs) in exports.items():
        print(f"  ONNX export {v} batch {b}: {secs:.1f} s (torch.onnx, opset 17)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rounds": rounds, "flops": {f"{v} {b}": n for (v, b), n in flops.items()}}, f, indent=1)


if __name__ == "__main__":
    main()

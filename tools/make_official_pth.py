"""Write official-layout RT-DETRv2 and RT-DETR v1 checkpoints (torch.save, lyuwenyu/RT-DETR tensor names) for
tests/test_convert.py and tests/test_v1.py.

Run in the reference environment (torch; tools/README.md), from the repository root:

    venv-ref/bin/python tools/make_official_pth.py [--official-src PATH/TO/RT-DETR/rtdetrv2_pytorch]
                                                   [--official-v1-src PATH/TO/RT-DETR/rtdetr_pytorch]

What it writes into tests/fixtures/official/ (each file to a temp file, then os.replace):
    tiny_basic/tiny_basic.pth, tiny_bottleneck/tiny_bottleneck.pth
        The recorded tiny reference models (tests/fixtures/reference/<case>/model.safetensors, the hub names
        transformers loaded) renamed to the official names by HF_TO_OFFICIAL below, which is written here from
        transformers' convert_rt_detr_v2_weights_to_hf.py (the official -> hub renaming that made the PekingU hub
        files, read right to left) independently of rtdetrv2_np/official.py, so that converting these files back is a
        real test of the converter and not a round trip through one table. Saved as the official training code
        saves (src/solver/_solver.py::state_dict): {"date", "last_epoch", "ema": {"module": SD, "updates": 1}}.
        SD also has what an official state dict has and the hub files do not: int64 `num_batches_tracked` of every
        non-frozen BatchNorm (the backbone's only in the basic-block model, as r18vd/r34vd use freeze_norm False),
        the fused `in_proj_weight`/`in_proj_bias`, and the `decoder.anchors` / `decoder.valid_mask` buffers for the
        recorded input size (official `_generate_anchors` at eval_spatial_size = [H, W], +inf where invalid).
        In tiny_bottleneck the anchors are put through the official EMA update (src/optim/ema.py ModelEMA.update,
        decay 0.9999 with the 2000-step warm-up) for EMA_STEPS steps against their own constant value, as happens
        to every float buffer during training (ModelEMA.update blends every floating-point entry of the state
        dict, buffers included; configs/rtdetrv2/include/optimizer.yml sets use_ema: True), so they drift by
        float32 rounding and
        the converter's anchor report has a difference to show.
    v1_tiny_basic/v1_tiny_basic.pth
        The same for the recorded RT-DETR v1 tiny model (tests/fixtures/reference/v1_tiny_basic, recorded with
        transformers' RTDetrForObjectDetection), renamed by HF_TO_OFFICIAL with the v1 rows of HF_TO_OFFICIAL_V1
        first (the official v1 code, rtdetr_pytorch/src at the same commit, builds `encoder.input_proj.{i}` and
        `decoder.enc_output` as unnamed nn.Sequential: indices 0 and 1 instead of conv/norm and proj/norm). As the
        v1 code keeps them: no `num_points_scale` buffers, and no `decoder.anchors` / `decoder.valid_mask` in the
        state dict (plain attributes in v1's RTDETRTransformer). Saved as v1's solver saves
        (rtdetr_pytorch/src/solver/solver.py::state_dict, src/optim/ema.py ModelEMA.state_dict):
        {"date", "last_epoch", "ema": {"module": SD, "updates": 1, "warmups": 2000}}.
    tiny_basic/config.json, tiny_bottleneck/config.json, v1_tiny_basic/config.json
        Copies of the reference config.json: the tiny architectures are not published ones, so their shape cannot
        be inferred; load_model and convert read a config.json beside a .pth.
    official_keys.json.gz (only with --official-src)
        {variant: [[official name, shape, dtype], ...]} of the state dicts of the five published architectures,
        taken from the official model classes themselves (PResNet, HybridEncoder, RTDETRTransformerv2 built as
        configs/rtdetrv2/*.yml build them); before writing, the tool checks that HF_TO_OFFICIAL applied to
        rtdetrv2_np.weights.expected_shapes(variant) plus the official-only entries gives exactly these names,
        shapes and dtypes. With --official-v1-src also "v1_<variant>": the same for the v1 model classes
        (rtdetr_pytorch's PResNet, HybridEncoder, RTDETRTransformer as configs/rtdetr/*.yml build them), checked
        against HF_TO_OFFICIAL_V1 + HF_TO_OFFICIAL applied to expected_shapes of the v1 config. The entries of the
        other source already in the file are kept.
With --official-src it also runs the official r18vd model (eval mode, anchors from eval_spatial_size) with the
random weights of the r18vd_640 recording (random_params, seed from its meta.json), renamed by HF_TO_OFFICIAL, on
the cats image, and prints the largest difference of its logits and boxes from what transformers computed
(tests/fixtures/reference/r18vd_640/outputs.npz): the renaming preserves the computation, not only the names.
With --official-v1-src likewise the official v1 r18vd against transformers' RTDetrForObjectDetection on the weights
of the v1_r18vd_640 recording. Both compare query by query after putting the official model's selected queries in
the recording's order (the same set is required; the order of near-tied scores may differ).

The package and the tests never import this file.
"""

import argparse
import datetime
import gzip
import importlib
import json
import math
import os
import re
import sys
import tempfile
import types
from collections import OrderedDict

import numpy as np
import torch
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rtdetrv2_np.fileio import atomic_write  # noqa: E402  (temp file + os.replace)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(ROOT, "tests", "fixtures", "reference")
OUT = os.path.join(ROOT, "tests", "fixtures", "official")
CASES = {"tiny_basic": {"ema_drift": False, "version": 2}, "tiny_bottleneck": {"ema_drift": True, "version": 2},
         "v1_tiny_basic": {"ema_drift": False, "version": 1}}                      # input size: meta.json
EMA_STEPS = 100_000          # about 14 epochs of COCO at batch 16; the released models ran 120 epochs or more

# hub name (transformers 4.x, as in PekingU/rtdetr_v2_*) -> official name, one regex per renaming of transformers'
# convert_rt_detr_v2_weights_to_hf.py (read right to left). "{qkv}" rows are the q/k/v projections the official code
# fuses into one in_proj ([q; k; v] by rows). The first matching row wins.
B = r"model\.backbone\.model\."
HF_TO_OFFICIAL = [
    (B + r"embedder\.embedder\.(\d)\.convolution\.weight", "backbone.conv1.conv1_{k}.conv.weight"),
    (B + r"embedder\.embedder\.(\d)\.normalization\.(\w+)", "backbone.conv1.conv1_{k}.norm.\\2"),
    (B + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.convolution\.weight",
     "backbone.res_layers.\\1.blocks.\\2.branch2{abc}.conv.weight"),
    (B + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.normalization\.(\w+)",
     "backbone.res_layers.\\1.blocks.\\2.branch2{abc}.norm.\\4"),
    (B + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.1\.convolution\.weight",
     "backbone.res_layers.\\1.blocks.\\2.short.conv.conv.weight"),
    (B + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.1\.normalization\.(\w+)",
     "backbone.res_layers.\\1.blocks.\\2.short.conv.norm.\\3"),
    (B + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight",
     "backbone.res_layers.\\1.blocks.\\2.short.conv.weight"),
    (B + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.(\w+)",
     "backbone.res_layers.\\1.blocks.\\2.short.norm.\\3"),
    (r"model\.encoder_input_proj\.(\d+)\.0\.weight", "encoder.input_proj.\\1.conv.weight"),
    (r"model\.encoder_input_proj\.(\d+)\.1\.(\w+)", "encoder.input_proj.\\1.norm.\\2"),
    (r"model\.encoder\.encoder\.(\d+)\.layers\.(\d+)\.self_attn\.[qkv]_proj\.(\w+)",
     "encoder.encoder.\\1.layers.\\2.self_attn.in_proj_\\3{qkv}"),
    (r"model\.encoder\.encoder\.(\d+)\.layers\.(\d+)\.self_attn\.out_proj\.(\w+)",
     "encoder.encoder.\\1.layers.\\2.self_attn.out_proj.\\3"),
    (r"model\.encoder\.encoder\.(\d+)\.layers\.(\d+)\.fc1\.(\w+)", "encoder.encoder.\\1.layers.\\2.linear1.\\3"),
    (r"model\.encoder\.encoder\.(\d+)\.layers\.(\d+)\.fc2\.(\w+)", "encoder.encoder.\\1.layers.\\2.linear2.\\3"),
    (r"model\.encoder\.encoder\.(\d+)\.layers\.(\d+)\.self_attn_layer_norm\.(\w+)",
     "encoder.encoder.\\1.layers.\\2.norm1.\\3"),
    (r"model\.encoder\.encoder\.(\d+)\.layers\.(\d+)\.final_layer_norm\.(\w+)",
     "encoder.encoder.\\1.layers.\\2.norm2.\\3"),
    (r"model\.encoder\.(.+)", "encoder.\\1"),                                   # lateral/downsample convs, CSP
    (r"model\.decoder_input_proj\.(\d+)\.0\.weight", "decoder.input_proj.\\1.conv.weight"),
    (r"model\.decoder_input_proj\.(\d+)\.1\.(\w+)", "decoder.input_proj.\\1.norm.\\2"),
    (r"model\.decoder\.layers\.(\d+)\.self_attn\.[qkv]_proj\.(\w+)",
     "decoder.decoder.layers.\\1.self_attn.in_proj_\\2{qkv}"),
    (r"model\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.(\w+)", "decoder.decoder.layers.\\1.self_attn.out_proj.\\2"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn\.n_points_scale",
     "decoder.decoder.layers.\\1.cross_attn.num_points_scale"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn\.(\w+)\.(\w+)", "decoder.decoder.layers.\\1.cross_attn.\\2.\\3"),
    (r"model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.(\w+)", "decoder.decoder.layers.\\1.norm1.\\2"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.(\w+)", "decoder.decoder.layers.\\1.norm2.\\2"),
    (r"model\.decoder\.layers\.(\d+)\.final_layer_norm\.(\w+)", "decoder.decoder.layers.\\1.norm3.\\2"),
    (r"model\.decoder\.layers\.(\d+)\.fc1\.(\w+)", "decoder.decoder.layers.\\1.linear1.\\2"),
    (r"model\.decoder\.layers\.(\d+)\.fc2\.(\w+)", "decoder.decoder.layers.\\1.linear2.\\2"),
    (r"model\.decoder\.class_embed\.(\d+)\.(\w+)", "decoder.dec_score_head.\\1.\\2"),
    (r"model\.decoder\.bbox_embed\.(\d+)\.layers\.(\d+)\.(\w+)", "decoder.dec_bbox_head.\\1.layers.\\2.\\3"),
    (r"model\.decoder\.query_pos_head\.layers\.(\d+)\.(\w+)", "decoder.query_pos_head.layers.\\1.\\2"),
    (r"model\.enc_output\.0\.(\w+)", "decoder.enc_output.proj.\\1"),
    (r"model\.enc_output\.1\.(\w+)", "decoder.enc_output.norm.\\1"),
    (r"model\.enc_score_head\.(\w+)", "decoder.enc_score_head.\\1"),
    (r"model\.enc_bbox_head\.layers\.(\d+)\.(\w+)", "decoder.enc_bbox_head.layers.\\1.\\2"),
    (r"model\.denoising_class_embed\.weight", "decoder.denoising_class_embed.weight"),
]


# RT-DETR v1: the rows where the official v1 names differ (read in lyuwenyu/RT-DETR rtdetr_pytorch/src/zoo/rtdetr/
# hybrid_encoder.py `input_proj` = Sequential(Conv2d, BatchNorm2d) and rtdetr_decoder.py `enc_output` =
# Sequential(Linear, LayerNorm); transformers' convert_rt_detr_original_pytorch_checkpoint_to_hf.py renames the same
# names). Tried before HF_TO_OFFICIAL; every other v1 name is the v2 name.
HF_TO_OFFICIAL_V1 = [
    (r"model\.encoder_input_proj\.(\d+)\.0\.weight", "encoder.input_proj.\\1.0.weight"),
    (r"model\.encoder_input_proj\.(\d+)\.1\.(\w+)", "encoder.input_proj.\\1.1.\\2"),
    (r"model\.enc_output\.0\.(\w+)", "decoder.enc_output.0.\\1"),
    (r"model\.enc_output\.1\.(\w+)", "decoder.enc_output.1.\\1"),
]


def official_name(hf, version=2):
    """(official name, part) for a hub name; part is 0/1/2 for q/k/v rows of a fused in_proj, else None."""
    for pattern, template in (HF_TO_OFFICIAL_V1 if version == 1 else []) + HF_TO_OFFICIAL:
        m = re.fullmatch(pattern, hf)
        if m is None:
            continue
        part = None
        if "{qkv}" in template:
            part = "qkv".index(re.search(r"\.([qkv])_proj\.", hf).group(1))
            template = template.replace("{qkv}", "")
        name = m.expand(template)
        if "{k}" in name:                                      # embedder.{0,1,2} -> conv1_{1,2,3}
            name = name.replace("{k}", str(int(m.group(1)) + 1))
        if "{abc}" in name:                                    # layer.{0,1,2} -> branch2{a,b,c}
            name = name.replace("{abc}", "abc"[int(m.group(3))])
        return name, part
    raise SystemExit(f"no HF_TO_OFFICIAL row for {hf}")


def hf_to_official(tensors, backbone_bn_counters, version=2):
    """{hub name: np array} -> OrderedDict {official name: torch tensor}, q/k/v fused, BN counters added."""
    out, fused = OrderedDict(), {}
    for hf, array in tensors.items():
        name, part = official_name(hf, version)
        if part is None:
            out[name] = torch.from_numpy(np.array(array))
        else:
            fused.setdefault(name, [None, None, None])[part] = np.array(array)
    for name, parts in fused.items():
        out[name] = torch.from_numpy(np.concatenate(parts, axis=0))   # [3d, ...] rows q; k; v
    for name in list(out):
        if name.endswith(".running_var") and (backbone_bn_counters or not name.startswith("backbone.")):
            out[name[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(1, dtype=torch.int64)
    return out


def official_anchors(size_hw, strides=(8, 16, 32), grid_size=0.05, eps=1e-2):
    """rtdetrv2_decoder.py RTDETRTransformerv2._generate_anchors at eval_spatial_size, in torch as written there."""
    eval_h, eval_w = size_hw
    anchors = []
    for lvl, s in enumerate(strides):
        h, w = int(eval_h / s), int(eval_w / s)
        grid_y, grid_x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        grid_xy = torch.stack([grid_x, grid_y], dim=-1)
        grid_xy = (grid_xy.unsqueeze(0) + 0.5) / torch.tensor([w, h], dtype=torch.float32)
        wh = torch.ones_like(grid_xy) * grid_size * (2.0 ** lvl)
        anchors.append(torch.concat([grid_xy, wh], dim=-1).reshape(-1, h * w, 4))
    anchors = torch.concat(anchors, dim=1)
    valid_mask = ((anchors > eps) * (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = torch.log(anchors / (1 - anchors))
    return torch.where(valid_mask, anchors, torch.inf), valid_mask


def ema_drift(v, steps, decay=0.9999, warmups=2000):
    """src/optim/ema.py ModelEMA.update on one constant buffer: v_ema = v_ema * d + (1 - d) * v, in place."""
    model = v.clone()
    ema = v.clone()
    for updates in range(1, steps + 1):
        d = decay * (1 - math.exp(-updates / warmups))
        ema *= d
        ema += (1 - d) * model
    return ema




def saved_bytes(obj, stem):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, stem + ".pth")
        torch.save(obj, path)
        return open(path, "rb").read()


def write_tiny(case, spec):
    cfg = json.load(open(os.path.join(REF, case, "config.json")))
    tensors = load_file(os.path.join(REF, case, "model.safetensors"))
    basic = cfg["backbone_config"]["layer_type"] == "basic"
    assert (cfg["model_type"] == "rt_detr") == (spec["version"] == 1), case
    sd = hf_to_official(tensors, backbone_bn_counters=basic, version=spec["version"])
    if spec["version"] == 1:                   # no anchors in a v1 state dict; v1's ModelEMA.state_dict
        assert not any(k.endswith("num_points_scale") for k in sd)
        checkpoint = {"date": datetime.datetime(2023, 7, 1).isoformat(), "last_epoch": 0,
                      "ema": {"module": sd, "updates": 1, "warmups": 2000}}
        return save_tiny(case, sd, checkpoint, len(tensors))
    anchors, valid = official_anchors(json.load(open(os.path.join(REF, case, "meta.json")))["size_hw"])
    if spec["ema_drift"]:
        drifted = ema_drift(anchors, EMA_STEPS)
        finite = torch.isfinite(anchors)
        rel = ((drifted - anchors).abs() / anchors.abs().clamp_min(1e-3))[finite].max().item()
        print(f"{case}: anchors after {EMA_STEPS} EMA steps: max abs drift "
              f"{(drifted - anchors)[finite].abs().max().item():.3g}, relative {rel:.3g}")
        anchors = drifted
    sd["decoder.anchors"] = anchors
    sd["decoder.valid_mask"] = valid
    checkpoint = {"date": datetime.datetime(2024, 7, 27).isoformat(), "last_epoch": 0,
                  "ema": {"module": sd, "updates": 1}}
    save_tiny(case, sd, checkpoint, len(tensors))


def save_tiny(case, sd, checkpoint, n_hub):
    os.makedirs(os.path.join(OUT, case), exist_ok=True)
    atomic_write(os.path.join(OUT, case, f"{case}.pth"), saved_bytes(checkpoint, case))
    atomic_write(os.path.join(OUT, case, "config.json"), open(os.path.join(REF, case, "config.json"), "rb").read())
    print(f"{case}: {len(sd)} official tensors ({n_hub} hub tensors) -> "
          f"{os.path.relpath(os.path.join(OUT, case), ROOT)}")


# -- checks against the official model code -----------------------------------------------------------------------

def import_official(src, decoder=("rtdetrv2_decoder", "RTDETRTransformerv2")):
    """PResNet, HybridEncoder, RTDETRTransformerv2, RTDETR from an official rtdetrv2_pytorch checkout, importing only
    their files (src/__init__.py would import the whole training stack: tensorboard, torchvision, datasets).
    decoder=("rtdetr_decoder", "RTDETRTransformer") with an rtdetr_pytorch checkout gives the v1 classes. Both
    folders call their package `src`, so this forgets any `src` imported before."""
    for name in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
        del sys.modules[name]

    def package(name, path=None):
        module = types.ModuleType(name)
        module.__path__ = [path] if path else []
        sys.modules[name] = module
        return module
    package("src", os.path.join(src, "src"))
    core = package("src.core")
    core.register = lambda *a, **k: (a[0] if a and callable(a[0]) else (lambda cls: cls))   # workspace registry
    for sub in ("nn", "nn/backbone", "zoo", "zoo/rtdetr"):
        package("src." + sub.replace("/", "."), os.path.join(src, "src", sub))
    if "torchvision" not in sys.modules:                       # box_ops imports box_area (training only)
        package("torchvision")
        package("torchvision.ops")
        sys.modules["torchvision.ops.boxes"] = types.SimpleNamespace(box_area=None)
    return (importlib.import_module("src.nn.backbone.presnet").PResNet,
            importlib.import_module("src.zoo.rtdetr.hybrid_encoder").HybridEncoder,
            getattr(importlib.import_module("src.zoo.rtdetr." + decoder[0]), decoder[1]),
            importlib.import_module("src.zoo.rtdetr.rtdetr").RTDETR)


# configs/rtdetrv2/include/rtdetrv2_r50vd.yml overridden by each rtdetrv2_<variant>_*.yml; the v1 configs
# (rtdetr_pytorch/configs/rtdetr/include/rtdetr_r50vd.yml and rtdetr_<variant>_6x_coco.yml) set the same values
OFFICIAL_ARGS = {
    "r18vd": dict(depth=18, freeze_norm=False, in_channels=[128, 256, 512], expansion=0.5, num_layers=3),
    "r34vd": dict(depth=34, freeze_norm=False, in_channels=[128, 256, 512], expansion=0.5, num_layers=4),
    "r50vd_m": dict(depth=50, freeze_norm=True, in_channels=[512, 1024, 2048], expansion=0.5, num_layers=6,
                    eval_idx=2),
    "r50vd": dict(depth=50, freeze_norm=True, in_channels=[512, 1024, 2048], expansion=1.0, num_layers=6),
    "r101vd": dict(depth=101, freeze_norm=True, in_channels=[512, 1024, 2048], expansion=1.0, num_layers=6,
                   hidden_dim=384, dim_feedforward=2048, feat_channels=[384, 384, 384]),
}
V1_DECODER = ("rtdetr_decoder", "RTDETRTransformer")      # rtdetr_pytorch/src/zoo/rtdetr/rtdetr_decoder.py


def build_official(classes, variant, version=2):
    PResNet, HybridEncoder, Decoder, RTDETR = classes
    a = OFFICIAL_ARGS[variant]
    backbone = PResNet(depth=a["depth"], variant="d", return_idx=[1, 2, 3], num_stages=4, freeze_at=-1,
                       freeze_norm=a["freeze_norm"], pretrained=False)
    encoder_args = dict(in_channels=a["in_channels"], feat_strides=[8, 16, 32], hidden_dim=a.get("hidden_dim", 256),
                        use_encoder_idx=[2], num_encoder_layers=1, nhead=8,
                        dim_feedforward=a.get("dim_feedforward", 1024), dropout=0.0, enc_act="gelu",
                        expansion=a["expansion"], depth_mult=1, act="silu", eval_spatial_size=[640, 640])
    feat_channels = a.get("feat_channels", [256, 256, 256])
    if version == 1:                           # rtdetr_pytorch: no version argument, v1 decoder arguments
        encoder = HybridEncoder(**encoder_args, pe_temperature=10000)
        decoder = Decoder(num_classes=80, hidden_dim=256, num_queries=300, feat_channels=feat_channels,
                          feat_strides=[8, 16, 32], num_levels=3, num_decoder_points=4, nhead=8,
                          num_decoder_layers=a["num_layers"], dim_feedforward=1024, dropout=0.0, num_denoising=100,
                          eval_spatial_size=[640, 640], eval_idx=a.get("eval_idx", -1))
        return RTDETR(backbone, encoder, decoder).eval()
    encoder = HybridEncoder(**encoder_args, version="v2")
    decoder = Decoder(num_classes=80, hidden_dim=256, num_queries=300,
                      feat_channels=feat_channels, feat_strides=[8, 16, 32], num_levels=3,
                      num_points=[4, 4, 4], nhead=8, num_layers=a["num_layers"], dim_feedforward=1024, dropout=0.0,
                      num_denoising=100, eval_spatial_size=[640, 640], eval_idx=a.get("eval_idx", -1),
                      cross_attn_method="default", query_select_method="default")
    return RTDETR(backbone, encoder, decoder).eval()


def check_official(src, version=2):
    """{listing key: [[name, shape, dtype], ...]} of the five official models of `version` (keys: the variant for
    v2, "v1_<variant>" for v1), each checked against HF_TO_OFFICIAL; then the official r18vd's forward pass against
    transformers' recording (r18vd_640, or v1_r18vd_640) on the same weights."""
    from rtdetrv2_np.model.config import MODEL_TYPES, variant_config
    from rtdetrv2_np.random_weights import random_params
    from rtdetrv2_np.weights import expected_shapes
    classes = import_official(src) if version == 2 else import_official(src, V1_DECODER)
    prefix = "" if version == 2 else "v1_"
    listing = {}
    for variant in OFFICIAL_ARGS:
        model = build_official(classes, variant, version)
        theirs = {k: (list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()}
        cfg = variant_config(variant, model_type=MODEL_TYPES[version])
        ours = hf_to_official({k: np.zeros(s, np.float32) for k, s in expected_shapes(cfg).items()},
                              backbone_bn_counters=not OFFICIAL_ARGS[variant]["freeze_norm"], version=version)
        ours = {k: (list(v.shape), "int64" if k.endswith("num_batches_tracked") else "float32")
                for k, v in ours.items()}
        if version == 2:                       # persistent buffers in v2 only
            ours["decoder.anchors"] = ([1, 8400, 4], "float32")
            ours["decoder.valid_mask"] = ([1, 8400, 1], "bool")
        if ours != theirs:
            missing = sorted(set(theirs) - set(ours))[:5]
            extra = sorted(set(ours) - set(theirs))[:5]
            shape = [k for k in theirs if k in ours and ours[k] != theirs[k]][:5]
            raise SystemExit(f"{prefix}{variant}: HF_TO_OFFICIAL disagrees with the official model: missing {missing}, "
                             f"extra {extra}, different {shape}")
        listing[prefix + variant] = [[k, *theirs[k]] for k in model.state_dict()]
        print(f"{prefix}{variant}: {len(theirs)} official tensors; names, shapes and dtypes equal HF_TO_OFFICIAL's")

    # The official r18vd computes what transformers computed on the same weights (renamed by HF_TO_OFFICIAL).
    case = prefix + "r18vd_640"
    meta = json.load(open(os.path.join(REF, case, "meta.json")))
    cfg = variant_config("r18vd", model_type=MODEL_TYPES[version])
    assert meta["config"]["decoder_layers"] == cfg.decoder_layers and meta["config"]["model_type"] == cfg.to_hf_dict()[
        "model_type"]
    tensors = random_params(expected_shapes(cfg), meta["seed"], cfg.n_points)
    sd = hf_to_official(tensors, backbone_bn_counters=True, version=version)
    model = build_official(classes, "r18vd", version)
    if version == 2:
        sd["decoder.anchors"], sd["decoder.valid_mask"] = official_anchors((640, 640))
    model.load_state_dict(sd, strict=True)
    from PIL import Image
    image = Image.open(os.path.join(ROOT, meta["images"][0])).convert("RGB").resize((640, 640), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, np.float32) / np.float32(255)).permute(2, 0, 1)[None]
    torch.set_num_threads(2)
    selected, topk = [], torch.topk            # the official query selection's indices, to align the queries

    def recording_topk(*args, **kwargs):
        result = topk(*args, **kwargs)
        selected.append(result[1][0].numpy().copy())
        return result
    torch.topk = recording_topk
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        torch.topk = topk
    ref = np.load(os.path.join(REF, case, "outputs.npz"))
    # The same 300 queries must be selected; their order may differ between near-tied scores (the decoder does not
    # care), so the official rows are put in the recording's query order before comparing.
    (ours,), theirs = selected, ref["topk_index"][0]
    if sorted(ours) != sorted(theirs):
        raise SystemExit(f"the official model selects other queries than transformers ({len(set(ours) ^ set(theirs))} "
                         f"differ)")
    row = {int(q): i for i, q in enumerate(ours)}
    perm = [row[int(q)] for q in theirs]
    last = cfg.decoder_layers - 1                  # logits / pred_boxes are stored as the last layer's
    dl = np.abs(out["pred_logits"].numpy()[0, perm] - ref[f"decoder.{last}.logits"][0]).max()
    db = np.abs(out["pred_boxes"].numpy()[0, perm] - ref[f"decoder.{last}.boxes"][0]).max()
    print(f"official {prefix}r18vd vs transformers on the same weights (cats, 640x640): max |logits diff| {dl:.3g}, "
          f"max |boxes diff| {db:.3g}")
    if not (dl < 1e-3 and db < 1e-4):
        raise SystemExit("the official model and transformers disagree: HF_TO_OFFICIAL maps a tensor wrongly")
    return listing


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-src", help="an official lyuwenyu/RT-DETR rtdetrv2_pytorch folder: also write "
                                               "official_keys.json.gz and check against the official model code")
    parser.add_argument("--official-v1-src", help="an official lyuwenyu/RT-DETR rtdetr_pytorch folder (v1): the "
                                                  "same for the v1 model code (keys v1_<variant>)")
    parser.add_argument("--case", action="append", choices=list(CASES),
                        help="write only this fixture (repeatable; default: all)")
    args = parser.parse_args()
    torch.manual_seed(0)
    for case in args.case or CASES:
        write_tiny(case, CASES[case])
    keys_file = os.path.join(OUT, "official_keys.json.gz")
    listing = {}
    for version, src in ((2, args.official_src), (1, args.official_v1_src)):
        if src:
            listing.update(check_official(os.path.abspath(src), version))
    if listing:
        if os.path.exists(keys_file):          # keep the other version's entries
            old = json.loads(gzip.decompress(open(keys_file, "rb").read()))
            listing = {**{k: v for k, v in old.items() if k not in listing}, **listing}
        data = gzip.compress(json.dumps(listing, separators=(",", ":")).encode(), mtime=0)
        atomic_write(keys_file, data)
        print(f"wrote {os.path.relpath(keys_file, ROOT)}: {', '.join(listing)}")
    print(f"torch {torch.__version__}; total size of {os.path.relpath(OUT, ROOT)}: "
          f"{sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()

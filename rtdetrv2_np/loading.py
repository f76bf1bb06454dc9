"""load_model: from a checkpoint on disk to a callable Model, with no PyTorch.

Accepted sources:
    - "demo" or "demo-discrete": the small models shipped inside the package (rtdetrv2_np/demo), for the generated
      shapes only;
    - a Hugging Face hub id such as "PekingU/rtdetr_v2_r18vd" (config.json + model.safetensors downloaded into, or
      found in, the cache transformers uses; see hub.py), optionally at a revision;
    - a model directory laid out as on the Hugging Face hub: config.json + model.safetensors (tensor names as in
      those of the published PekingU/rtdetr_v2_* files, or of the RT-DETR v1 files PekingU/rtdetr_*, whose
      config.json says model_type "rt_detr"); the architecture is read from config.json, the input size
      from preprocessor_config.json when there is one (as the hub's image processor reads it);
    - a converted, self-describing .safetensors file whose metadata holds the config.json text under "config"
      (written by `python -m rtdetrv2_np.convert`);
    - an official lyuwenyu/RT-DETR .pth checkpoint, converted in memory (official.load_official: read without torch,
      names mapped to the hub's; the architecture from a config.json beside it, else inferred from the tensors).
Every tensor is checked against the architecture: a missing, unexpected or mis-shaped tensor is an RTDetrError
that names it.
"""

import json
import os
import re
from dataclasses import replace

import numpy as np

from .errors import RTDetrError
from .model import Model
from .weights import CONFIG_METADATA_KEY, check_and_clean, params_tree, parse_config, read_config, read_safetensors

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def load_model(source, method=None, revision="main", progress=None, fast=False, offline=None, dtype=np.float32):
    """A Model from a hub id, a hub-layout directory, a converted .safetensors or an official .pth file (see the
    module docstring).

    method: "bilinear" or "discrete" overrides the sampling method of the checkpoint's config; None keeps it.
    revision: branch, tag or commit of a hub id. progress: a callback(done_bytes, total_bytes) for downloads.
    fast: True returns a rtdetrv2_np.fast.FastModel instead: the same interface and outputs (up to float32
    rounding) from fast kernels; its weights are prepared on the first call.
    offline: True looks a hub id up in the cache only (as HF_HUB_OFFLINE=1, without touching the environment);
    None follows HF_HUB_OFFLINE.
    dtype: np.float64 computes the reference path in float64 (the weights widened once), to measure the float32
    paths' rounding error; the fast path is float32 only.
    """
    if np.dtype(dtype) not in (np.float32, np.float64):      # before any download (Model.astype checks again)
        raise ValueError(f"dtype must be np.float32 or np.float64, not {dtype!r}")
    if fast and np.dtype(dtype) != np.float32:
        raise ValueError("the fast path computes in float32 only; use fast=False for float64")
    model = _load_model(source, method, revision, progress, offline)
    if np.dtype(dtype) == np.float64:
        model = model.astype(np.float64)
    if fast:
        from .fast import fast_model
        return fast_model(model)
    return model


def _load_model(source, method=None, revision="main", progress=None, offline=None):
    source = os.fspath(source)
    from .demo import DEMO_MODELS, demo_model_dir
    if source in DEMO_MODELS and not os.path.exists(source):
        source = demo_model_dir(source, check=True)
    if not os.path.exists(source) and HUB_ID.match(source) and not source.endswith((".safetensors", ".pth")):
        from .hub import snapshot_model
        return load_model(snapshot_model(source, revision=revision, progress=progress, offline=offline), method)
    if os.path.isdir(source):
        cfg = read_config(os.path.join(source, "config.json"))
        weights = os.path.join(source, "model.safetensors")
        if not os.path.exists(weights):
            raise RTDetrError(f"{source}: no model.safetensors in this directory")
        tensors, _ = read_safetensors(weights)
        model = build_model(cfg, tensors, method, weights)
        size = read_input_size(os.path.join(source, "preprocessor_config.json"))
        return replace(model, input_size=size) if size else model
    if source.endswith(".safetensors"):
        tensors, meta = read_safetensors(source)
        if CONFIG_METADATA_KEY in meta:
            try:
                d = json.loads(meta[CONFIG_METADATA_KEY])
            except json.JSONDecodeError as e:
                raise RTDetrError(f"{source}: the config in its metadata is not valid JSON ({e})") from None
            cfg = parse_config(d, source)
        else:
            cfg = read_config(os.path.join(os.path.dirname(source) or ".", "config.json"))
        return build_model(cfg, tensors, method, source)
    if source.endswith(".pth"):
        from .official import load_official
        cfg, tensors, _ = load_official(source, method=method)
        return build_model(cfg, tensors, method, source)
    if not os.path.exists(source):
        raise RTDetrError(f"{source}: no such file or directory")
    raise RTDetrError(f"{source}: not a model directory, a .safetensors file or an official .pth file")


def build_model(cfg, tensors, method=None, source="<memory>"):
    """A Model from a Config and a flat {hub name: array}; checks every tensor (see weights.check_and_clean).

    method: "bilinear" or "discrete" overrides the config's decoder_method; None keeps it.
    """
    try:
        cfg = cfg.with_method(method)          # an RT-DETR v1 config refuses "discrete" (model.config.V1_DISCRETE)
    except ValueError as e:
        raise RTDetrError(f"{source}: {e}") from None
    return Model(cfg, params_tree(check_and_clean(tensors, cfg, source)), source)


def read_input_size(path):
    """(H, W) from a hub preprocessor_config.json ({"size": {"height": H, "width": W}}, transformers'
    RTDetrImageProcessor), or None when there is no such file. RTDetrError if it is there but unusable."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            size = json.load(f).get("size", {})
        H, W = int(size["height"]), int(size["width"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise RTDetrError(f"{path}: no usable size {{'height': H, 'width': W}} ({type(e).__name__}: {e}); fix or "
                          "remove the file") from None
    if not (32 <= H <= 4096 and 32 <= W <= 4096 and H % 32 == 0 and W % 32 == 0):
        raise RTDetrError(f"{path}: size {H}x{W} is not a multiple of 32 between 32 and 4096")
    return H, W

"""load_model: from a checkpoint on disk to a callable Model, with no PyTorch.

Accepted sources:
    - a Hugging Face hub id such as "PekingU/rtdetr_v2_r18vd" (config.json + model.safetensors downloaded into, or
      found in, the cache transformers uses; see hub.py), optionally at a revision;
    - a model directory laid out as on the Hugging Face hub: config.json + model.safetensors (tensor names as in
      ../shared/reference/hf_keys_r18vd.txt); the architecture is read from config.json;
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

from .errors import RTDetrError
from .model import Model
from .weights import CONFIG_METADATA_KEY, check_and_clean, params_tree, parse_config, read_config, read_safetensors

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def load_model(source, method=None, revision="main", progress=None):
    """A Model from a hub id, a hub-layout directory, a converted .safetensors or an official .pth file (see the
    module docstring).

    method: "bilinear" or "discrete" overrides the sampling method of the checkpoint's config; None keeps it.
    revision: branch, tag or commit of a hub id. progress: a callback(done_bytes, total_bytes) for downloads.
    """
    source = os.fspath(source)
    if not os.path.exists(source) and HUB_ID.match(source) and not source.endswith((".safetensors", ".pth")):
        from .hub import snapshot_model
        return load_model(snapshot_model(source, revision=revision, progress=progress), method)
    if os.path.isdir(source):
        cfg = read_config(os.path.join(source, "config.json"))
        weights = os.path.join(source, "model.safetensors")
        if not os.path.exists(weights):
            raise RTDetrError(f"{source}: no model.safetensors in this directory")
        tensors, _ = read_safetensors(weights)
        return build_model(cfg, tensors, method, weights)
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
    if method is not None:
        if method not in ("bilinear", "discrete"):
            raise RTDetrError(f"method must be 'bilinear' or 'discrete', got {method!r}")
        cfg = replace(cfg, decoder_method="discrete" if method == "discrete" else "default")
    return Model(cfg, params_tree(check_and_clean(tensors, cfg, source)), source)

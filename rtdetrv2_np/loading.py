"""load_model: from a checkpoint on disk to a callable Model, with no PyTorch.

Accepted sources:
    - a Hugging Face hub id such as "PekingU/rtdetr_v2_r18vd" (config.json + model.safetensors downloaded into, or
      found in, the cache transformers uses; see hub.py), optionally at a revision;
    - a model directory laid out as on the Hugging Face hub: config.json + model.safetensors (tensor names as in
      ../shared/reference/hf_keys_r18vd.txt); the architecture is read from config.json;
    - a converted, self-describing .safetensors file whose metadata holds the config.json text under "config"
      (written by `python -m rtdetrv2_np.convert`);
    - an official lyuwenyu/RT-DETR .pth checkpoint, converted in memory (convert.load_official: read without torch,
      names mapped to the hub's; the architecture from a config.json beside it, else inferred from the tensors).
Every tensor is checked against the architecture: a missing, unexpected or mis-shaped tensor is an RTDetrError
that names it.
"""

import json
import os
import re

from .config import config_from_dict
from .errors import RTDetrError
from .model import build_model

CONFIG_METADATA_KEY = "config"   # safetensors metadata key holding the config.json text of a converted file


def read_safetensors(path):
    """({name: np.ndarray}, metadata dict) from a .safetensors file; RTDetrError if it is not a valid one."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise RTDetrError(f"{path}: no such file") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise RTDetrError(f"{path}: not a readable .safetensors file ({str(e).splitlines()[0]}); the file may be "
                          "truncated or of another format: download or convert it again") from None
    return tensors, meta


def read_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise RTDetrError(f"{path}: no such file; a model directory needs config.json next to model.safetensors") \
            from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RTDetrError(f"{path}: not valid JSON ({e})") from None
    return parse_config(d, path)


def parse_config(d, source):
    if not isinstance(d, dict) or d.get("model_type") not in (None, "rt_detr_v2", "rt_detr"):
        kind = d.get("model_type") if isinstance(d, dict) else type(d).__name__
        raise RTDetrError(f"{source}: model_type {kind!r} is not an RT-DETRv2 config")
    try:
        return config_from_dict(d)
    except (TypeError, ValueError) as e:
        raise RTDetrError(f"{source}: unsupported config ({e})") from None


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
        from .convert import load_official
        cfg, tensors, _ = load_official(source, method=method)
        return build_model(cfg, tensors, method, source)
    if not os.path.exists(source):
        raise RTDetrError(f"{source}: no such file or directory")
    raise RTDetrError(f"{source}: not a model directory, a .safetensors file or an official .pth file")

"""Weights: the tensor names a checkpoint must hold, and turning a flat {name: array} into the params tree.

Names are those of the Hugging Face hub files (`model.safetensors` of PekingU/rtdetr_v2_*), as transformers'
convert_rt_detr_v2_weights_to_hf.py [5] wrote them with transformers 4.x names: the official names renamed, the
fused attention in_proj split into q/k/v_proj, the anchors and num_batches_tracked counters dropped; transformers
adds back a counter for each BatchNorm outside the frozen backbone (the r18vd file holds 529 tensors, 46 counters).
A reader can grep transformers' modeling_rt_detr_v2.py with the same strings. transformers 5.x renames some of them
while loading ([5] conversion_mapping.py: out_proj -> o_proj, fc1 -> mlp.fc1, encoder.encoder -> encoder.aifi);
files keep the 4.x names, and so do we. References [n]: the package docstring.

The params tree mirrors the names: "model.decoder.layers.0.fc1.weight" becomes
params["model"]["decoder"]["layers"][0]["fc1"]["weight"] (numbered parts become list items).
"""

import json
import math
import os
import reprlib

import numpy as np

from .errors import RTDetrError
from .model.backbone import shortcut_layout
from .model.config import config_from_dict
from .model.nn import IM2COL_BLOCK


def expected_shapes(cfg):
    """{hub tensor name: shape} of every float tensor inference reads (no num_batches_tracked, no training-only
    tensors except the ones the hub files carry: denoising_class_embed, n_points_scale).

    RT-DETR v1 (cfg.version 1, PekingU/rtdetr_*) has the same names less the n_points_scale buffers ([5]
    models/rt_detr/modeling_rt_detr.py `RTDetrMultiscaleDeformableAttention` registers none)."""
    s = {}

    def bn(prefix, c):
        for k in ("weight", "bias", "running_mean", "running_var"):
            s[f"{prefix}.{k}"] = (c,)

    def lin(prefix, c_out, c_in):
        s[f"{prefix}.weight"] = (c_out, c_in)
        s[f"{prefix}.bias"] = (c_out,)

    def conv_bn_shapes(prefix, c_out, c_in, k, conv="conv", norm="norm"):   # a conv (no bias) + its BatchNorm
        s[f"{prefix}.{conv}.weight"] = (c_out, c_in, k, k)
        bn(f"{prefix}.{norm}", c_out)

    # Backbone: ResNet-vd ([5] models/rt_detr/modeling_rt_detr_resnet.py)
    bb = "model.backbone.model"
    e = cfg.embedding_size
    for i, (c_out, c_in) in enumerate([(e // 2, 3), (e // 2, e // 2), (e, e // 2)]):
        conv_bn_shapes(f"{bb}.embedder.embedder.{i}", c_out, c_in, 3, "convolution", "normalization")
    c_in = e
    for si, (c_out, depth) in enumerate(zip(cfg.hidden_sizes, cfg.depths)):
        for li in range(depth):
            p = f"{bb}.encoder.stages.{si}.layers.{li}"
            cin_l = c_in if li == 0 else c_out
            if cfg.layer_type == "basic":
                convs = [(c_out, cin_l, 3), (c_out, c_out, 3)]
            else:
                w = c_out // 4                                    # bottleneck reduction 4 (RTDetrResNetBottleNeckLayer)
                convs = [(w, cin_l, 1), (w, w, 3), (c_out, w, 1)]
            for j, (co, ci, k) in enumerate(convs):
                conv_bn_shapes(f"{p}.layer.{j}", co, ci, k, "convolution", "normalization")
            if li == 0:
                _, key = shortcut_layout(cfg.layer_type, si, cin_l, c_out)
                if key is not None:
                    conv_bn_shapes(f"{p}.{key}", c_out, cin_l, 1, "convolution", "normalization")
        c_in = c_out
    # Hybrid encoder
    C = cfg.encoder_hidden_dim
    for i, ci in enumerate(cfg.encoder_in_channels):
        s[f"model.encoder_input_proj.{i}.0.weight"] = (C, ci, 1, 1)
        bn(f"model.encoder_input_proj.{i}.1", C)
    for i in range(len(cfg.encode_proj_layers)):
        for j in range(cfg.encoder_layers):
            p = f"model.encoder.encoder.{i}.layers.{j}"
            for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
                lin(f"{p}.self_attn.{n}", C, C)
            lin(f"{p}.fc1", cfg.encoder_ffn_dim, C)
            lin(f"{p}.fc2", C, cfg.encoder_ffn_dim)
            for n in ("self_attn_layer_norm", "final_layer_norm"):
                s[f"{p}.{n}.weight"] = s[f"{p}.{n}.bias"] = (C,)
    hidden = int(C * cfg.hidden_expansion)
    for i in range(len(cfg.encoder_in_channels) - 1):
        conv_bn_shapes(f"model.encoder.lateral_convs.{i}", C, C, 1)
        conv_bn_shapes(f"model.encoder.downsample_convs.{i}", C, C, 3)
        for blocks in ("fpn_blocks", "pan_blocks"):
            p = f"model.encoder.{blocks}.{i}"
            conv_bn_shapes(f"{p}.conv1", hidden, 2 * C, 1)
            conv_bn_shapes(f"{p}.conv2", hidden, 2 * C, 1)
            for j in range(3):                                    # num_blocks = 3 (RTDetrV2CSPRepLayer)
                conv_bn_shapes(f"{p}.bottlenecks.{j}.conv1", hidden, hidden, 3)
                conv_bn_shapes(f"{p}.bottlenecks.{j}.conv2", hidden, hidden, 1)
            if hidden != C:
                conv_bn_shapes(f"{p}.conv3", C, hidden, 1)
    # Query selection and decoder
    d, NC, K = cfg.d_model, cfg.num_labels, sum(cfg.n_points)
    for i, ci in enumerate(cfg.decoder_in_channels):
        s[f"model.decoder_input_proj.{i}.0.weight"] = (d, ci, 1, 1)
        bn(f"model.decoder_input_proj.{i}.1", d)
    if cfg.num_denoising > 0:
        s["model.denoising_class_embed.weight"] = (NC + 1, d)
    if cfg.learn_initial_query:
        s["model.weight_embedding.weight"] = (cfg.num_queries, d)
    lin("model.enc_output.0", d, d)
    s["model.enc_output.1.weight"] = s["model.enc_output.1.bias"] = (d,)
    lin("model.enc_score_head", NC, d)
    for j, (co, ci) in enumerate([(d, d), (d, d), (4, d)]):
        lin(f"model.enc_bbox_head.layers.{j}", co, ci)
    lin("model.decoder.query_pos_head.layers.0", 2 * d, 4)
    lin("model.decoder.query_pos_head.layers.1", d, 2 * d)
    M = cfg.decoder_attention_heads
    for i in range(cfg.decoder_layers):
        p = f"model.decoder.layers.{i}"
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            lin(f"{p}.self_attn.{n}", d, d)
        lin(f"{p}.encoder_attn.sampling_offsets", M * K * 2, d)
        lin(f"{p}.encoder_attn.attention_weights", M * K, d)
        lin(f"{p}.encoder_attn.value_proj", d, d)
        lin(f"{p}.encoder_attn.output_proj", d, d)
        if cfg.version == 2:                                      # RT-DETR v1 has no such buffer
            s[f"{p}.encoder_attn.n_points_scale"] = (K,)
        lin(f"{p}.fc1", cfg.decoder_ffn_dim, d)
        lin(f"{p}.fc2", d, cfg.decoder_ffn_dim)
        for n in ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"):
            s[f"{p}.{n}.weight"] = s[f"{p}.{n}.bias"] = (d,)
        lin(f"model.decoder.class_embed.{i}", NC, d)
        for j, (co, ci) in enumerate([(d, d), (d, d), (4, d)]):
            lin(f"model.decoder.bbox_embed.{i}.layers.{j}", co, ci)
    return s


def check_and_clean(tensors, cfg, source):
    """Validate a flat {name: array} against the architecture; return float32 arrays under hub names.

    Accepted and dropped: num_batches_tracked (int64 counters), the top-level class_embed/bbox_embed copies that
    transformers ties to model.decoder.* ([5] RTDetrV2ForObjectDetection._tied_weights_keys; the v1 converter
    wrote such copies too). Anything missing, unexpected or mis-shaped raises RTDetrError naming the tensor and the
    file; n_points_scale buffers present in a v1 or absent from a v2 checkpoint name the version mismatch.
    """
    want = expected_shapes(cfg)
    out = {}
    unexpected = []
    for name, arr in tensors.items():
        if name.endswith("num_batches_tracked"):
            continue
        if name.startswith(("class_embed.", "bbox_embed.")):
            name_dec = "model.decoder." + name
            if name_dec in want and name_dec not in tensors:
                name = name_dec
            else:
                continue
        if name not in want:
            unexpected.append(name)
            continue
        arr = np.asarray(arr)
        if tuple(arr.shape) != tuple(want[name]):
            raise RTDetrError(f"{source}: tensor {name} has shape {list(arr.shape)}, the architecture in its config "
                              f"needs {list(want[name])}; the weights and config.json do not belong together")
        out[name] = np.ascontiguousarray(arr, dtype=np.float32)
    versions = _version_hint(tensors, cfg, source)
    if versions:
        raise RTDetrError(versions)
    if unexpected:
        raise RTDetrError(f"{source}: unexpected tensor {unexpected[0]}" +
                          (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "") +
                          "; the file is not an RT-DETRv2 checkpoint of the architecture in its config.json")
    missing = [n for n in want if n not in out]
    if missing:
        raise RTDetrError(f"{source}: missing tensor {missing[0]}" +
                          (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") +
                          "; the checkpoint is incomplete or of another architecture")
    return out


def _version_hint(tensors, cfg, source):
    """A message when the n_points_scale buffers say RT-DETR v1 / v2 and the config the other (else None): the one
    difference of the two checkpoint layouts."""
    has = any(name.endswith("encoder_attn.n_points_scale") for name in tensors)
    if cfg.version == 2 and not has and "model.decoder.layers.0.encoder_attn.value_proj.weight" in tensors:
        return (f"{source}: the checkpoint has no n_points_scale buffers: it is RT-DETR v1, but its config says "
                f"RT-DETRv2; a v1 config.json has model_type 'rt_detr'")
    if cfg.version == 1 and has:
        return (f"{source}: the checkpoint has n_points_scale buffers: it is RT-DETRv2, but its config says RT-DETR "
                f"v1 (model_type 'rt_detr'); a v2 config.json has model_type 'rt_detr_v2'")
    return None


def params_tree(flat):
    """{"a.0.b": x} -> {"a": [{"b": x}]}: nested dicts, numbered parts as lists (in index order)."""
    root = {}
    for name, arr in flat.items():
        node = root
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = arr
    return _listify(root)


def _listify(node):
    if not isinstance(node, dict):
        return node
    out = {k: _listify(v) for k, v in node.items()}
    if out and all(k.isdigit() for k in out):
        items = [None] * (max(int(k) for k in out) + 1)    # "shortcut.1" keeps index 1 (0 is the AvgPool)
        for k, v in out.items():
            items[int(k)] = v
        return items
    return out


def flatten_params(tree, prefix=""):
    """The inverse of weights.params_tree: nested dicts and lists -> {"a.0.b": array} (None list slots skipped)."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    out = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            out.update(flatten_params(value, name + "."))
        elif value is not None:
            out[name] = value
    return out


# ---------------------------------------------------------------------------------------------------------------
# Reading checkpoint files
# ---------------------------------------------------------------------------------------------------------------

CONFIG_METADATA_KEY = "config"   # safetensors metadata key holding the config.json text of a converted file


# safetensors dtype -> NumPy dtype (the format is little-endian; safetensors/src/tensor.rs `Dtype`). BF16 is read as
# its 16-bit patterns and widened to float32 exactly: a bfloat16 number is the top half of the float32 with the same
# value. safetensors' NumPy backend cannot read BF16 (NumPy has no bfloat16), so files holding it are read here.
SAFETENSORS_DTYPES = {"BOOL": "?", "U8": "u1", "I8": "i1", "I16": "<i2", "U16": "<u2", "F16": "<f2", "BF16": "<u2",
                      "I32": "<i4", "U32": "<u4", "F32": "<f4", "I64": "<i8", "U64": "<u8", "F64": "<f8"}
SAFETENSORS_MAX_HEADER = 100_000_000   # bytes; safetensors' own MAX_HEADER_SIZE (safetensors/src/tensor.rs)


def _not_safetensors(path, why):
    return RTDetrError(f"{path}: not a readable .safetensors file ({why}); the file may be truncated or of another "
                       "format: download or convert it again")


def _safetensors_header(f, path, file_size):
    """(header dict, offset of the data buffer): the 8-byte little-endian header length, then the JSON header."""
    head = f.read(8)
    if len(head) < 8:
        raise _not_safetensors(path, f"{file_size} bytes, shorter than the 8-byte header length")
    n = int.from_bytes(head, "little")
    if n > SAFETENSORS_MAX_HEADER or 8 + n > file_size:
        raise _not_safetensors(path, f"header length {n} does not fit the file of {file_size} bytes")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _not_safetensors(path, "the header is not JSON") from None
    if not isinstance(header, dict):
        raise _not_safetensors(path, "the header is not a JSON object")
    return header, 8 + n


def _read_safetensors_here(f, path, header, start, file_size):
    """Every tensor of a file safetensors' NumPy backend cannot read (BF16), checked as safetensors checks them:
    known dtypes, non-negative shapes, data_offsets [begin, end) back to back from 0 to the end of the file, each
    exactly numel * itemsize bytes."""
    entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                     key=lambda kv: kv[1].get("data_offsets", [0])[0] if isinstance(kv[1], dict) else 0)
    end = 0
    tensors = {}
    for name, entry in entries:
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if isinstance(entry, dict) else (None, None)
        if not (isinstance(shape, list) and len(shape) <= 64 and all(type(d) is int and d >= 0 for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise _not_safetensors(path, f"tensor {name[:80]!r} has no valid shape and data_offsets")
        dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]])
        numel = int(np.prod(shape, dtype=object)) if shape else 1
        if offsets[0] != end or offsets[1] - offsets[0] != numel * dtype.itemsize:
            raise _not_safetensors(path, f"tensor {name[:80]!r}: data_offsets {offsets} do not follow the previous "
                                         f"tensor or do not hold {numel} {entry['dtype']} elements")
        end = offsets[1]
        if start + end > file_size:
            break                                                  # reported below, before reading
        f.seek(start + offsets[0])
        raw = f.read(offsets[1] - offsets[0])
        bits = np.frombuffer(raw, dtype=dtype).reshape(shape)      # [*shape]
        if entry["dtype"] == "BF16":
            wide = bits.astype(np.uint32)                          # (an array even when 0-d, unlike `<< 16`)
            wide <<= 16
            tensors[name] = wide.view(np.float32)                  # exact widening, [*shape] float32
        else:
            tensors[name] = bits.astype(dtype.newbyteorder("="))               # an owned, writable copy
    if start + end != file_size:
        raise _not_safetensors(path, f"the tensors cover {end} bytes of data, the file has {file_size - start}")
    return {name: tensors[name] for name in sorted(tensors)}


def read_safetensors(path):
    """({name: np.ndarray}, metadata dict) from a .safetensors file; RTDetrError if it is not a valid one.

    BF16 tensors come back as float32 (exactly); other dtypes as themselves. Dtypes NumPy has no equivalent for
    (F8_E4M3, F8_E5M2, ...) are refused by name.
    """
    from safetensors import SafetensorError, safe_open
    from .fileio import open_regular
    path = os.fspath(path)
    with open_regular(path, "a .safetensors file") as f:
        file_size = os.fstat(f.fileno()).st_size
        header, start = _safetensors_header(f, path, file_size)
        meta = header.get("__metadata__") or {}
        if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
            raise _not_safetensors(path, "__metadata__ is not a map of strings")
        dtypes = {k: v.get("dtype") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
        for name, dtype in dtypes.items():
            if dtype not in SAFETENSORS_DTYPES:
                raise RTDetrError(f"{path}: tensor {name[:80]!r} has dtype {str(dtype)[:20]!r}, which this reader does "
                                  f"not support (float32, float16, bfloat16, float64 and integer types); convert the "
                                  f"weights to float32")
        if "BF16" in dtypes.values():
            return _read_safetensors_here(f, path, header, start, file_size), meta
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise RTDetrError(f"{path}: no such file") from None
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise _not_safetensors(path, (str(e).splitlines() or [type(e).__name__])[0][:200]) from None
    return tensors, meta


MAX_CONFIG_BYTES = 4 << 20     # 4 MiB: published config.json files are ~5 KB; more is not a config


def read_config(path):
    """The Config of a config.json file (a regular file of at most MAX_CONFIG_BYTES, JSON nested at most
    a few hundred levels): RTDetrError naming the file and what is wrong otherwise."""
    from .fileio import open_regular
    if not os.path.lexists(path):
        raise RTDetrError(f"{path}: no such file; a model directory needs config.json next to model.safetensors")
    with open_regular(path, "a config.json file") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise RTDetrError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB, which no config.json is; check the file")
    try:
        d = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RTDetrError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise RTDetrError(f"{path}: JSON nested too deeply to be a config.json; check the file") from None
    return parse_config(d, path)


def parse_config(d, source):
    """The Config of a config.json dict, every field checked (model.config: used, inert, refused) and its memory
    estimated before anything is allocated; RTDetrError naming the field and what is allowed, or the estimate."""
    if not isinstance(d, dict) or d.get("model_type") not in (None, "rt_detr_v2", "rt_detr"):
        kind = d.get("model_type") if isinstance(d, dict) else type(d).__name__
        raise RTDetrError(f"{source}: model_type {reprlib.repr(kind)} is not an RT-DETRv2 config (nor an RT-DETR v1 "
                          f"one, 'rt_detr')")
    try:
        cfg = config_from_dict(d)
    except (TypeError, ValueError) as e:
        raise RTDetrError(f"{source}: unsupported config: {e}") from None
    n, param_bytes, act_bytes = estimate_memory(cfg)
    if param_bytes + act_bytes > MAX_MODEL_BYTES:
        raise RTDetrError(f"{source}: the config describes a model of {n:,} parameters ({param_bytes / 2**30:.1f} "
                          f"GiB) needing about {act_bytes / 2**30:.1f} GiB of activations for a 640x640 image, more "
                          f"than the {MAX_MODEL_BYTES / 2**30:.0f} GiB this package accepts (the largest published "
                          f"model, r101vd, needs 0.65 GiB): check its sizes")
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# What a config costs, estimated from its sizes alone (nothing allocated)
# ---------------------------------------------------------------------------------------------------------------

MAX_MODEL_BYTES = 8 << 30   # parameters + activations for one 640x640 image; r101vd needs 0.65 GiB, so 8 GiB only
                            # refuses absurd configs (issue: a 1 KB config.json must not exhaust the machine)


def estimate_memory(cfg, height=640, width=640, batch=1):
    """(parameters, their float32 bytes, activation bytes) of cfg for a batch of height x width images.

    Parameters: exact, from expected_shapes (bounded: config_from_dict caps every count). Activations: the sum of
    the sizes of the main float32 intermediates of one forward pass, as if all were alive at once (an
    over-estimate, meant only to refuse absurd configs; 3-4x the tracemalloc peak of r18vd / r50vd): backbone maps
    (x3 for a block's input, branch and shortcut) and the convolutions' im2col buffer, encoder maps (x6:
    projections, lateral, concatenations, CSP branches), AIFI's M x N x N attention, query selection's
    Nv x (4 d + NC + 4), the decoder's M x Nq x Nq self-attention, FFN and sampled values.
    """
    n_params = sum(math.prod(shape) for shape in expected_shapes(cfg).values())
    levels = [(height // s, width // s) for s in (8, 16, 32)]                    # (H_l, W_l)
    Nv = sum(h * w for h, w in levels)
    hw = height * width
    backbone = 3 * cfg.embedding_size * hw // 4 + sum(3 * c * hw // 4 ** (i + 2)
                                                       for i, c in enumerate(cfg.hidden_sizes)) + IM2COL_BLOCK
    C, F, M = cfg.encoder_hidden_dim, cfg.encoder_ffn_dim, cfg.encoder_attention_heads
    aifi = sum(2 * M * n * n + F * n + 4 * C * n for n in (levels[l][0] * levels[l][1]
                                                           for l in cfg.encode_proj_layers))
    encoder = 6 * C * Nv + (aifi if cfg.encoder_layers else 0)
    d, Nq, K = cfg.d_model, cfg.num_queries, sum(cfg.n_points)
    selection = Nv * (4 * d + cfg.num_labels + 4)
    decoder = 2 * cfg.decoder_attention_heads * Nq * Nq + cfg.decoder_ffn_dim * Nq + 4 * Nq * K * d + 8 * Nq * d \
        + Nv * d
    return n_params, 4 * n_params, 4 * batch * (backbone + encoder + selection + decoder)

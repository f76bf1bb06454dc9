"""Load-time work of the fast path: every weight the fast forward reads, derived once from the params tree.

References
    [RV] Ding et al., RepVGG: Making VGG-style ConvNets Great Again, arXiv 2101.03697, §3.3 "Re-param for
         Plain Inference-time Model", Eq. (3) and Fig. 4: a BN-folded 3x3 branch plus a BN-folded 1x1 branch is
         one 3x3 convolution whose kernel is the sum, the 1x1 kernel placed at the centre. The official RT-DETR
         code does the same in its deploy mode ([4] hybrid_encoder.py `RepVggBlock.convert_to_deploy`).
    [IS] Ioffe & Szegedy, Batch Normalization, arXiv 1502.03167, §3.1 (at inference BN is a fixed affine map) and
         §3.2 (one per channel of a convolution), so it folds into the preceding linear layer.
    [LG] Lavin & Gray, arXiv 1509.09308 (Winograd filter transform G g G^T, computed here once per kernel).

What is derived (each item names the reference computation it replaces):
    conv + BatchNorm -> folded weight and bias       model/nn.conv_bn folds on every call; here once ([IS])
    RepVGG block (3x3 + 1x1, both BN) -> one 3x3    model/hybrid_encoder.rep_vgg_block ([RV] §3.3)
    CSP conv1 and conv2 (two 1x1 on one input)      model/hybrid_encoder.csp_rep_layer: stacked into one GEMM;
      -> one [2C', 2C] matrix, split by input part    the FPN half that sees the upsampled map is applied before
                                                      the 2x upsampling (a 1x1 convolution commutes with it)
    q_proj + k_proj -> one [2C, C] matrix            model/nn.multi_head_attention (q and k share their input)
    decoder_input_proj -> folded into enc_output     model/detector.forward's memory, read only by enc_output and
      and every value_proj                            the decoder's value_proj: each computed from the encoder maps
                                                      directly (memory_projections_spec)
    sampling_offsets + attention_weights -> one      model/deformable_attention (both read the same query)
    3x3 stride-1 kernels -> Winograd U = G g G^T     model/nn.conv2d (conv_winograd, per conv_kernel)
      or -> stacked row-tap matrix                    model/nn.conv2d (conv_row_taps, per conv_kernel)

Per-layer kernel choice (`conv_kernel`): a 1x1 stride-1 convolution is a plain GEMM; a 3x3 stride-1 one uses
Winograd F(2x2, 3x3) when both its channel counts are >= WINOGRAD_MIN_CHANNELS, and row taps (conv_row_taps: a
K-times smaller im2col plus row shifts) below that; strided convolutions use im2col. Below 256 channels the
Winograd transforms (element-wise NumPy passes over 4x the map) cost more than the multiplications they save, and
row taps beat both there (measured ratios: rtdetrv2_np/fast/__init__.py; re-measure with
benchmarks/benchmark.py --kernels).
"""

import numpy as np

from ..model.backbone import shortcut_layout
from ..model.deformable_attention import points_scale
from ..model.nn import bn_scale_shift
from .conv import row_taps_filter, winograd_filter

# Winograd for 3x3 stride-1 convolutions with min(C_in, C_out) >= this; below it, row taps from
# ROW_TAPS_MIN_CHANNELS (so: always); im2col for the rest (see the module docstring).
WINOGRAD_MIN_CHANNELS = 256
ROW_TAPS_MIN_CHANNELS = 1
# Output tile size m of F(m x m, 3 x 3): 2 (as accurate as the direct sum) or 4 (fewer multiplications, ~8x the
# rounding error and 2.25x the filter memory of the original kernel; measured in tests/test_fast.py).
WINOGRAD_TILE = 2


def conv_kernel(c_out, c_in, k, stride):
    """Which kernel runs a convolution: "1x1", "winograd", "rowtaps" or "im2col" (module docstring)."""
    if k == 1 and stride == 1:
        return "1x1"
    if k == 3 and stride == 1 and min(c_in, c_out) >= WINOGRAD_MIN_CHANNELS:
        return "winograd"
    if stride == 1 and min(c_in, c_out) >= ROW_TAPS_MIN_CHANNELS:
        return "rowtaps"
    return "im2col"


def conv_spec(w, b, stride=1, act=None):
    """A prepared convolution: {"kernel", "w" (or "U" and "m"), "b", "stride", "padding", "act"}.

    w [C_out, C_in, K, K] float32, already folded; b [C_out]. Padding (K - 1) // 2, as every convolution here.
    """
    c_out, c_in, k, _ = w.shape
    spec = {"kernel": conv_kernel(c_out, c_in, k, stride), "b": np.ascontiguousarray(b), "stride": stride,
            "padding": (k - 1) // 2, "act": act, "shape": (c_out, c_in, k, k)}
    if spec["kernel"] == "1x1":
        spec["w"] = np.ascontiguousarray(w.reshape(c_out, c_in))                  # [C_out, C_in]
    elif spec["kernel"] == "winograd":
        spec["U"] = winograd_filter(w, WINOGRAD_TILE)                             # [a*a, C_out, C_in]
        spec["m"] = WINOGRAD_TILE
    elif spec["kernel"] == "rowtaps":
        spec["w"] = row_taps_filter(w)                                            # [K*C_out, C_in*K]
    else:
        spec["w"] = np.ascontiguousarray(w)                                       # [C_out, C_in, K, K]
    return spec


def fold(weight, bn, eps):
    """conv weight [C_out, C_in, K, K] and its BatchNorm -> (W * s, b - mean * s), exactly as model/nn.conv_bn
    computes them on every call (same float32 operations, so the same bits)."""
    scale, shift = bn_scale_shift(bn, eps)                                        # [C_out], [C_out]
    return weight * scale[:, None, None, None], shift


def conv_norm_spec(p, stride=1, act=None, eps=1e-5):
    """model/nn.conv_norm's layer (a conv without bias + BatchNorm + activation), prepared."""
    conv, norm = ("conv", "norm") if "conv" in p else ("convolution", "normalization")
    w, b = fold(p[conv]["weight"], p[norm], eps)
    return conv_spec(w, b, stride, act)


def rep_vgg_spec(p, act, eps):
    """model/hybrid_encoder.rep_vgg_block as ONE 3x3 convolution ([RV] §3.3): W3 + pad(W1), b3 + b1."""
    w3, b3 = fold(p["conv1"]["conv"]["weight"], p["conv1"]["norm"], eps)          # [C', C', 3, 3]
    w1, b1 = fold(p["conv2"]["conv"]["weight"], p["conv2"]["norm"], eps)          # [C', C', 1, 1]
    w = w3.copy()
    w[:, :, 1:2, 1:2] += w1                                                       # the 1x1 tap is the centre
    return conv_spec(w, b3 + b1, 1, act)


def csp_spec(p, act, eps, c_first=None):
    """model/hybrid_encoder.csp_rep_layer, prepared.

    conv1 and conv2 (1x1, BN, act, both on the same input) become one [2C', 2C] matrix "w". With c_first (the
    channels of the first part of the concatenated input) its columns are split instead: "w_a" for the first part,
    "w_b" for the second, so the caller needs no concatenation.
    """
    w1, b1 = fold(p["conv1"]["conv"]["weight"], p["conv1"]["norm"], eps)          # [C', 2C, 1, 1]
    w2, b2 = fold(p["conv2"]["conv"]["weight"], p["conv2"]["norm"], eps)
    hidden = w1.shape[0]
    w = np.concatenate([w1, w2])[:, :, 0, 0]                                      # [2C', 2C]
    split = {"w": np.ascontiguousarray(w)} if c_first is None else \
        {"w_a": np.ascontiguousarray(w[:, :c_first]), "w_b": np.ascontiguousarray(w[:, c_first:])}
    return {**split, "b": np.concatenate([b1, b2]), "hidden": hidden, "act": act,
            "blocks": [rep_vgg_spec(bp, act, eps) for bp in p["bottlenecks"]],
            "conv3": conv_norm_spec(p["conv3"], 1, act, eps) if "conv3" in p else None}


def linear_spec(*ps):
    """One or more torch Linear layers on the same input, stacked: {"w": [sum C_out, C_in], "b": [sum C_out]}.
    A single layer keeps its own arrays (no copy)."""
    if len(ps) == 1:
        return {"w": ps[0]["weight"], "b": ps[0]["bias"]}
    return {"w": np.concatenate([p["weight"] for p in ps]), "b": np.concatenate([p["bias"] for p in ps])}


def attention_spec(p, heads):
    """model/nn.multi_head_attention's parameters with q_proj and k_proj stacked into one GEMM."""
    return {"qk": linear_spec(p["q_proj"], p["k_proj"]), "v": linear_spec(p["v_proj"]),
            "out": linear_spec(p["out_proj"]), "heads": heads}


def backbone_spec(p, cfg):
    stem = [conv_norm_spec(layer, 2 if i == 0 else 1, "relu") for i, layer in enumerate(p["embedder"]["embedder"])]
    stages, c_in = [], cfg.embedding_size
    for s, stage in enumerate(p["encoder"]["stages"]):
        c_out, blocks = cfg.hidden_sizes[s], []
        for b, block in enumerate(stage["layers"]):
            stride = 2 if (s > 0 and b == 0) else 1
            pool, key = shortcut_layout(cfg.layer_type, s, c_in, c_out) if b == 0 else (False, None)
            convs = block["layer"]
            # the last convolution's ReLU runs after the residual sum (model/backbone.residual_block)
            if cfg.layer_type == "basic":
                spec = [conv_norm_spec(convs[0], stride, "relu"), conv_norm_spec(convs[1], 1, "relu")]
            else:
                spec = [conv_norm_spec(convs[0], 1, "relu"), conv_norm_spec(convs[1], stride, "relu"),
                        conv_norm_spec(convs[2], 1, "relu")]
            short = None
            if key is not None:
                short = conv_norm_spec(block["shortcut"][1] if key == "shortcut.1" else block["shortcut"])
            blocks.append({"convs": spec, "pool": pool, "shortcut": short})
        stages.append(blocks)
        c_in = c_out
    return {"stem": stem, "stages": stages}


def prepare(params, cfg):
    """The fast path's weights ("plan") from a params tree and its Config. Reads params; never modifies it."""
    m = params["model"]
    eps = cfg.batch_norm_eps
    C = cfg.encoder_hidden_dim
    enc = m["encoder"]
    plan = {
        "backbone": backbone_spec(m["backbone"]["model"], cfg),
        # eps 1e-5 here, config.batch_norm_eps in the CCFM and decoder_input_proj: as the reference (its comments)
        "input_proj": [dict(zip(("w", "b"), fold(proj[0]["weight"], proj[1], 1e-5)))
                       for proj in m["encoder_input_proj"]],
        "aifi": [[{"attn": attention_spec(layer["self_attn"], cfg.encoder_attention_heads),
                   "ln1": layer["self_attn_layer_norm"], "fc1": linear_spec(layer["fc1"]),
                   "fc2": linear_spec(layer["fc2"]), "ln2": layer["final_layer_norm"]}
                  for layer in enc["encoder"][i]["layers"]]
                 for i in range(len(cfg.encode_proj_layers))] if cfg.encoder_layers > 0 else [],
        "lateral": [conv_norm_spec(p, 1, cfg.activation_function, eps) for p in enc["lateral_convs"]],
        "fpn": [csp_spec(p, cfg.activation_function, eps, C) for p in enc["fpn_blocks"]],
        "down": [conv_norm_spec(p, 2, cfg.activation_function, eps) for p in enc["downsample_convs"]],
        "pan": [csp_spec(p, cfg.activation_function, eps) for p in enc["pan_blocks"]],
        "decoder_input_proj": [dict(zip(("w", "b"), fold(proj[0]["weight"], proj[1], eps)))
                               for proj in m["decoder_input_proj"]],
        "enc_output": linear_spec(m["enc_output"][0]), "enc_output_ln": m["enc_output"][1],
        "enc_score_head": linear_spec(m["enc_score_head"]),
        "enc_bbox_head": [linear_spec(p) for p in m["enc_bbox_head"]["layers"]],
    }
    for proj in plan["input_proj"] + plan["decoder_input_proj"]:
        proj["w"] = np.ascontiguousarray(proj["w"][:, :, 0, 0])                       # [C_out, C_in]
    if cfg.learn_initial_query:
        plan["weight_embedding"] = m["weight_embedding"]["weight"]
    d = m["decoder"]
    M, K = cfg.decoder_attention_heads, sum(cfg.n_points)
    layers = []
    for i in range(cfg.num_decoder_layers_used):
        p = d["layers"][i]
        ea = p["encoder_attn"]
        scale = ea.get("n_points_scale")
        layers.append({
            "self_attn": attention_spec(p["self_attn"], M), "ln1": p["self_attn_layer_norm"],
            # offsets [M*K*2] then attention logits [M*K] from one GEMM on the query
            "offsets_weights": linear_spec(ea["sampling_offsets"], ea["attention_weights"]),
            "value": linear_spec(ea["value_proj"]), "out": linear_spec(ea["output_proj"]),
            "n_points_scale": points_scale(cfg.n_points) if scale is None else scale,
            "ln2": p["encoder_attn_layer_norm"], "fc1": linear_spec(p["fc1"]), "fc2": linear_spec(p["fc2"]),
            "ln3": p["final_layer_norm"],
            "bbox_embed": [linear_spec(q) for q in d["bbox_embed"][i]["layers"]],
            "class_embed": linear_spec(d["class_embed"][i])})
    plan["decoder"] = {"layers": layers, "query_pos_head": [linear_spec(q) for q in d["query_pos_head"]["layers"]],
                       "n_split": M * K * 2}
    plan["memory_proj"] = memory_projections_spec(plan)
    return plan


def memory_projections_spec(plan):
    """decoder_input_proj folded into everything that reads its output, the memory, level by level.

    The memory (model/detector.forward: decoder_input_proj of each encoder level, flattened) is read only through
    linear maps: enc_output (model/query_selection.select_queries) and every decoder layer's value_proj
    (model/decoder.decoder). Each is a linear map of a linear map, so the memory GEMM disappears: consumer j of
    the memory, (W_j, b_j), is x @ (W_j P_l)^T + (W_j p_l + b_j) on the level's map x, for the level's projection
    P_l [d, C_l], p_l [d] (folded BatchNorm). Composed in float64, rounded once to float32.
    Returns one entry per consumer (enc_output first, then each decoder layer run): a list over levels of
    {"w": [d, C_l], "b": [d]}, the layout of decoder_input_proj's own levels (detector.memory_projection).
    """
    consumers = [plan["enc_output"]] + [layer["value"] for layer in plan["decoder"]["layers"]]
    out = []
    for c in consumers:
        Wc, bc = c["w"].astype(np.float64), c["b"].astype(np.float64)              # [d, d], [d]
        levels = []
        for proj in plan["decoder_input_proj"]:
            P, pb = proj["w"].astype(np.float64), proj["b"].astype(np.float64)    # [d, C_l], [d]
            levels.append({"w": (Wc @ P).astype(proj["w"].dtype),                  # [d, C_l]
                           "b": (Wc @ pb + bc).astype(proj["w"].dtype)})          # [d]
        out.append(levels)
    return out


def plan_bytes(plan):
    """Bytes held by the arrays of a plan (for reports: the fast path's weight memory)."""
    if isinstance(plan, np.ndarray):
        return plan.nbytes
    if isinstance(plan, dict):
        return sum(plan_bytes(v) for v in plan.values())
    if isinstance(plan, (list, tuple)):
        return sum(plan_bytes(v) for v in plan)
    return 0

"""Official lyuwenyu/RT-DETR [4] checkpoints (RT-DETRv2, and RT-DETR v1) to the Hugging Face hub's tensor names [5],
without torch.

An official `.pth` (read by pth.load_pth: `ema.module`, else `model`) holds the tensors of the official model
([4] rtdetrv2_pytorch/src/nn/backbone/presnet.py, src/zoo/rtdetr/hybrid_encoder.py, rtdetrv2_decoder.py) under
its own names. The explicit rule table RULES maps each onto the hub name transformers uses (the same renaming as
transformers' convert_rt_detr_v2_weights_to_hf.py [5]); `infer_config` reads the architecture off the tensors' shapes
when no config.json is given; `load_official` does both and checks the result (weights.check_and_clean).

RT-DETR v1 (the official folder rtdetr_pytorch/ at the same commit, or rtdetrv2_pytorch/'s v1 classes: configs
rtdetr/*.yml; files *_from_paddle.pth; on the hub PekingU/rtdetr_*) names every tensor as v2 does except two
unnamed nn.Sequential (`encoder.input_proj.{i}.0/.1`, `decoder.enc_output.0/.1`), and has no `num_points_scale`
buffers and no anchors in its state dict (v1 keeps them as plain attributes). RULES has a rule for each v1 name; the
version is read off the buffers (present: v2, absent: v1), and v1 gets bilinear sampling only.

Decisions, and where the official model and transformers differ:
    * decoder.anchors / decoder.valid_mask: the official model loads them from the checkpoint (persistent
      buffers, [4] rtdetrv2_decoder.py `_generate_anchors` at eval_spatial_size); transformers and this package
      recompute them from the input size. All released configs train with `use_ema: True` ([4]
      configs/rtdetrv2/include/optimizer.yml), and [4] src/optim/ema.py `ModelEMA.update` blends every
      floating-point entry of the state dict, buffers included (v = d * v + (1 - d) * v_model, in float32), so
      such constants drift by float32 rounding (powers of two such as 1/K_l = 0.25 stay exact). We RECOMPUTE, so
      that a converted model computes what transformers computes, and the converter prints how far the
      checkpoint's anchors are from the recomputed ones (`compare_anchors`) for information. (RT-DETR v1
      checkpoints hold no anchors.)
    * r50vd_m: the official config stops the decoder after layer 2 of 6 (eval_idx 2); the converted config keeps
      that as decoder_eval_idx = 2 (transformers has no such field and would run all six; see decoder.py).
    * *_dsp checkpoints hold the same tensors as the grid-sampling ones; only the config says "discrete". A .pth
      has no config, so the method is --method (default bilinear), stored as the config's decoder_method.
    * Labels: 80 classes get the hub configs' names (postprocess.COCO_NAMES), other counts LABEL_0, LABEL_1, ...
    * num_batches_tracked counters are dropped (eval-mode BatchNorm does not use them).
"""

import os
import re

import numpy as np

from .errors import RTDetrError
from .model.config import MAX_CLASSES, MAX_POINTS, MODEL_TYPES, VARIANTS, variant_config
from .model.query_selection import generate_anchors
from .postprocess import COCO_NAMES
from .weights import check_and_clean, read_config

# ---------------------------------------------------------------------------------------------------------------
# The official -> hub name rules
# ---------------------------------------------------------------------------------------------------------------
# Each rule: (regular expression matched against the whole official name, hub name template with \1, \2 ... for
# the groups, action). Actions: RENAME (one tensor), SPLIT_QKV (the fused nn.MultiheadAttention in_proj [3d, ...]
# split by rows into q_proj, k_proj, v_proj: rows [0:d], [d:2d], [2d:3d]; the template holds "{qkv}"), DROP (not
# needed for inference), ASIDE (decoder.anchors / valid_mask: compared, not kept). The first matching rule wins.
# Sources: [4] lyuwenyu/RT-DETR rtdetrv2_pytorch/src (presnet.py, hybrid_encoder.py, rtdetrv2_decoder.py);
# hub names: transformers 4.x RTDetrV2ForObjectDetection as saved in PekingU/rtdetr_v2_* (weights.expected_shapes).
# RT-DETR v1: every name read in [4] rtdetr_pytorch/src at 068dfde, none derived: presnet.py is v2's (same module
# names), hybrid_encoder.py differs only in input_proj, rtdetr_decoder.py only in enc_output and in having no
# num_points_scale buffer (its MSDeformableAttention divides by num_points); anchors / valid_mask are plain
# attributes there, not in the state dict. transformers' convert_rt_detr_original_pytorch_checkpoint_to_hf.py [5]
# renames the same v1 names onto the same hub names (PekingU/rtdetr_*).
RENAME, SPLIT_QKV, DROP, ASIDE = "rename", "split_qkv", "drop", "aside"
BB = "model.backbone.model"
RULES = [
    # BatchNorm step counters (nn.BatchNorm2d of r18/r34's backbone and of the encoder/decoder projections).
    (r"(.+)\.num_batches_tracked", None, DROP),
    # Anchors and their validity mask, persistent buffers of the official decoder; recomputed here (module doc).
    (r"decoder\.(anchors|valid_mask)", None, ASIDE),

    # --- Backbone: PResNet variant d ([4] presnet.py) -> RTDetrResNetBackbone. ConvNormLayer(conv, norm) becomes
    # RTDetrResNetConvLayer(convolution, normalization) throughout.
    # Deep stem conv1_1, conv1_2, conv1_3 -> embedder.0, 1, 2.
    (r"backbone\.conv1\.conv1_1\.conv\.weight", BB + r".embedder.embedder.0.convolution.weight", RENAME),
    (r"backbone\.conv1\.conv1_1\.norm\.(\w+)", BB + r".embedder.embedder.0.normalization.\1", RENAME),
    (r"backbone\.conv1\.conv1_2\.conv\.weight", BB + r".embedder.embedder.1.convolution.weight", RENAME),
    (r"backbone\.conv1\.conv1_2\.norm\.(\w+)", BB + r".embedder.embedder.1.normalization.\1", RENAME),
    (r"backbone\.conv1\.conv1_3\.conv\.weight", BB + r".embedder.embedder.2.convolution.weight", RENAME),
    (r"backbone\.conv1\.conv1_3\.norm\.(\w+)", BB + r".embedder.embedder.2.normalization.\1", RENAME),
    # Residual branch convs branch2a, branch2b (, branch2c for bottlenecks) -> layer.0, 1 (, 2).
    (r"backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.branch2a\.conv\.weight",
     BB + r".encoder.stages.\1.layers.\2.layer.0.convolution.weight", RENAME),
    (r"backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.branch2a\.norm\.(\w+)",
     BB + r".encoder.stages.\1.layers.\2.layer.0.normalization.\3", RENAME),
    (r"backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.branch2b\.conv\.weight",
     BB + r".encoder.stages.\1.layers.\2.layer.1.convolution.weight", RENAME),
    (r"backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.branch2b\.norm\.(\w+)",
     BB + r".encoder.stages.\1.layers.\2.layer.1.normalization.\3", RENAME),
    (r"backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.branch2c\.conv\.weight",
     BB + r".encoder.stages.\1.layers.\2.layer.2.convolution.weight", RENAME),
    (r"backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.branch2c\.norm\.(\w+)",
     BB + r".encoder.stages.\1.layers.\2.layer.2.normalization.\3", RENAME),
    # Stride-2 shortcut Sequential(pool=AvgPool2d, conv=ConvNormLayer): "short.conv.conv" -> "shortcut.1" (index 0
    # of transformers' Sequential is the parameter-free AvgPool2d). Must come before the stride-1 rule below.
    (r"backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.short\.conv\.conv\.weight",
     BB + r".encoder.stages.\1.layers.\2.shortcut.1.convolution.weight", RENAME),
    (r"backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.short\.conv\.norm\.(\w+)",
     BB + r".encoder.stages.\1.layers.\2.shortcut.1.normalization.\3", RENAME),
    # Stride-1 shortcut (block 0 of stage 0): a plain ConvNormLayer "short" -> "shortcut".
    (r"backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.short\.conv\.weight",
     BB + r".encoder.stages.\1.layers.\2.shortcut.convolution.weight", RENAME),
    (r"backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.short\.norm\.(\w+)",
     BB + r".encoder.stages.\1.layers.\2.shortcut.normalization.\3", RENAME),

    # --- Hybrid encoder ([4] hybrid_encoder.py) -> RTDetrV2HybridEncoder.
    # Input projections Sequential(conv, norm) -> model.encoder_input_proj.{i}.{0, 1} (moved out of the encoder).
    (r"encoder\.input_proj\.(\d+)\.conv\.weight", r"model.encoder_input_proj.\1.0.weight", RENAME),
    (r"encoder\.input_proj\.(\d+)\.norm\.(\w+)", r"model.encoder_input_proj.\1.1.\2", RENAME),
    # RT-DETR v1: the same projections as an unnamed Sequential(Conv2d, BatchNorm2d), indices 0 and 1 (read in [4]
    # rtdetr_pytorch/src/zoo/rtdetr/hybrid_encoder.py `HybridEncoder.input_proj`; rtdetrv2_pytorch's HybridEncoder
    # builds it with version='v1').
    (r"encoder\.input_proj\.(\d+)\.0\.weight", r"model.encoder_input_proj.\1.0.weight", RENAME),
    (r"encoder\.input_proj\.(\d+)\.1\.(\w+)", r"model.encoder_input_proj.\1.1.\2", RENAME),
    # AIFI: nn.MultiheadAttention's fused in_proj -> q/k/v projections; out_proj keeps its name.
    (r"encoder\.encoder\.(\d+)\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)",
     r"model.encoder.encoder.\1.layers.\2.self_attn.{qkv}_proj.\3", SPLIT_QKV),
    (r"encoder\.encoder\.(\d+)\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)",
     r"model.encoder.encoder.\1.layers.\2.self_attn.out_proj.\3", RENAME),
    # AIFI feed-forward linear1/linear2 -> fc1/fc2; post-norms norm1 (after attention), norm2 (after the FFN).
    (r"encoder\.encoder\.(\d+)\.layers\.(\d+)\.linear1\.(weight|bias)", r"model.encoder.encoder.\1.layers.\2.fc1.\3",
     RENAME),
    (r"encoder\.encoder\.(\d+)\.layers\.(\d+)\.linear2\.(weight|bias)", r"model.encoder.encoder.\1.layers.\2.fc2.\3",
     RENAME),
    (r"encoder\.encoder\.(\d+)\.layers\.(\d+)\.norm1\.(weight|bias)",
     r"model.encoder.encoder.\1.layers.\2.self_attn_layer_norm.\3", RENAME),
    (r"encoder\.encoder\.(\d+)\.layers\.(\d+)\.norm2\.(weight|bias)",
     r"model.encoder.encoder.\1.layers.\2.final_layer_norm.\3", RENAME),
    # CCFM: lateral/downsample ConvNormLayers and the CSPRepLayers keep every sub-name (conv, norm, conv1..3,
    # bottlenecks.{j}.conv1/conv2).
    (r"encoder\.((?:lateral_convs|downsample_convs|fpn_blocks|pan_blocks)\.[\w.]+)", r"model.encoder.\1", RENAME),

    # --- Decoder ([4] rtdetrv2_decoder.py RTDETRTransformerv2) -> RTDetrV2Model / RTDetrV2Decoder.
    # Input projections Sequential(conv, norm) -> model.decoder_input_proj.{i}.{0, 1}.
    (r"decoder\.input_proj\.(\d+)\.conv\.weight", r"model.decoder_input_proj.\1.0.weight", RENAME),
    (r"decoder\.input_proj\.(\d+)\.norm\.(\w+)", r"model.decoder_input_proj.\1.1.\2", RENAME),
    # Query selection heads: enc_output Sequential(proj, norm) -> enc_output.{0, 1}; score and box heads move up.
    (r"decoder\.enc_output\.proj\.(weight|bias)", r"model.enc_output.0.\1", RENAME),
    (r"decoder\.enc_output\.norm\.(weight|bias)", r"model.enc_output.1.\1", RENAME),
    # RT-DETR v1: enc_output is an unnamed Sequential(Linear, LayerNorm) (read in [4] rtdetr_pytorch/src/zoo/rtdetr/
    # rtdetr_decoder.py `RTDETRTransformer.enc_output`; rtdetrv2_pytorch's rtdetr_decoder.py with version='v1').
    (r"decoder\.enc_output\.0\.(weight|bias)", r"model.enc_output.0.\1", RENAME),
    (r"decoder\.enc_output\.1\.(weight|bias)", r"model.enc_output.1.\1", RENAME),
    (r"decoder\.enc_score_head\.(weight|bias)", r"model.enc_score_head.\1", RENAME),
    (r"decoder\.enc_bbox_head\.layers\.(\d+)\.(weight|bias)", r"model.enc_bbox_head.layers.\1.\2", RENAME),
    # Learned content queries (learn_query_content=True; no published model uses them).
    (r"decoder\.tgt_embed\.weight", r"model.weight_embedding.weight", RENAME),
    # Denoising label embedding: training only, but the hub files carry it.
    (r"decoder\.denoising_class_embed\.weight", r"model.denoising_class_embed.weight", RENAME),
    # Query position MLP 4 -> 2d -> d.
    (r"decoder\.query_pos_head\.layers\.(\d+)\.(weight|bias)", r"model.decoder.query_pos_head.layers.\1.\2",
     RENAME),
    # Per-layer heads: dec_score_head -> class_embed, dec_bbox_head -> bbox_embed.
    (r"decoder\.dec_score_head\.(\d+)\.(weight|bias)", r"model.decoder.class_embed.\1.\2", RENAME),
    (r"decoder\.dec_bbox_head\.(\d+)\.layers\.(\d+)\.(weight|bias)", r"model.decoder.bbox_embed.\1.layers.\2.\3",
     RENAME),
    # Decoder layers: self-attention in_proj split as in AIFI; out_proj keeps its name.
    (r"decoder\.decoder\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)",
     r"model.decoder.layers.\1.self_attn.{qkv}_proj.\2", SPLIT_QKV),
    (r"decoder\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)",
     r"model.decoder.layers.\1.self_attn.out_proj.\2", RENAME),
    # Deformable cross-attention cross_attn -> encoder_attn (same four linears); its per-point 1/K_l buffer
    # num_points_scale -> n_points_scale.
    (r"decoder\.decoder\.layers\.(\d+)\.cross_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)"
     r"\.(weight|bias)", r"model.decoder.layers.\1.encoder_attn.\2.\3", RENAME),
    (r"decoder\.decoder\.layers\.(\d+)\.cross_attn\.num_points_scale",
     r"model.decoder.layers.\1.encoder_attn.n_points_scale", RENAME),
    # Post-norms: norm1 after self-attention, norm2 after cross-attention, norm3 after the FFN.
    (r"decoder\.decoder\.layers\.(\d+)\.norm1\.(weight|bias)", r"model.decoder.layers.\1.self_attn_layer_norm.\2",
     RENAME),
    (r"decoder\.decoder\.layers\.(\d+)\.norm2\.(weight|bias)", r"model.decoder.layers.\1.encoder_attn_layer_norm.\2",
     RENAME),
    (r"decoder\.decoder\.layers\.(\d+)\.norm3\.(weight|bias)", r"model.decoder.layers.\1.final_layer_norm.\2",
     RENAME),
    # Feed-forward linear1/linear2 -> fc1/fc2.
    (r"decoder\.decoder\.layers\.(\d+)\.linear1\.(weight|bias)", r"model.decoder.layers.\1.fc1.\2", RENAME),
    (r"decoder\.decoder\.layers\.(\d+)\.linear2\.(weight|bias)", r"model.decoder.layers.\1.fc2.\2", RENAME),
]
_COMPILED = [(re.compile(pattern), template, action) for pattern, template, action in RULES]


def rename_official(state_dict, source="<state dict>"):
    """Apply RULES: official {name: array} -> ({hub name: array}, {official name: array} set aside).

    No shape checks here (see official_to_hf). An official name no rule covers is an RTDetrError naming it.
    """
    out, aside = {}, {}
    for name, array in state_dict.items():
        for pattern, template, action in _COMPILED:
            m = pattern.fullmatch(name)
            if m is None:
                continue
            if action == ASIDE:
                aside[name] = array
            elif action == RENAME:
                out[m.expand(template)] = array
            elif action == SPLIT_QKV:
                d, rem = divmod(array.shape[0], 3)
                if rem:
                    raise RTDetrError(f"{source}: {name} has {array.shape[0]} rows, not 3 x d (q, k, v); the "
                                      f"checkpoint is damaged or not RT-DETRv2")
                for i, part in enumerate("qkv"):
                    out[m.expand(template.replace("{qkv}", part))] = array[i * d:(i + 1) * d]   # [d, ...]
            break                                                       # DROP: nothing to keep
        else:
            raise RTDetrError(f"{source}: no conversion rule for the tensor {name!r}; this is not an official "
                              f"RT-DETRv2 or RT-DETR ResNet-vd checkpoint (lyuwenyu/RT-DETR rtdetrv2_pytorch or "
                              f"rtdetr_pytorch), or a newer one this converter does not know")
    return out, aside


def official_to_hf(state_dict, cfg=None, source="<state dict>"):
    """Official lyuwenyu/RT-DETR names -> hub names: {hub name: array}, without decoder.anchors / valid_mask.

    state_dict: {official name: np.ndarray}, e.g. pth.load_pth(path). cfg: if given, the result is checked against
    that architecture (every expected tensor present with its shape, nothing extra; weights.check_and_clean) and
    returned as float32.
    """
    tensors, _ = rename_official(state_dict, source)
    return tensors if cfg is None else check_and_clean(tensors, cfg, source)


# ---------------------------------------------------------------------------------------------------------------
# The architecture from the tensors
# ---------------------------------------------------------------------------------------------------------------

def _shape(tensors, name, source):
    if name not in tensors:
        raise RTDetrError(f"{source}: no tensor {name} (after renaming); cannot tell the architecture: pass "
                          f"--variant, or a config.json describing it")
    return tuple(tensors[name].shape)


def _dim(tensors, name, axis, source):
    """Size `axis` of a tensor; an RTDetrError if the tensor lacks it (a damaged or foreign checkpoint)."""
    shape = _shape(tensors, name, source)
    if len(shape) <= axis:
        raise RTDetrError(f"{source}: tensor {name} has shape {list(shape)}, not the {axis + 1} or more dimensions "
                          f"of an RT-DETR checkpoint; the checkpoint is damaged or of another model")
    return shape[axis]


def _count(tensors, pattern):
    """How many distinct values the single group of `pattern` takes over the names."""
    rx = re.compile(pattern)
    return len({m.group(1) for m in map(rx.match, tensors) if m})


# RT-DETR v1 checkpoints have no 1/K_l buffer, and sampling_offsets has M * L * K_l * 2 rows: the shapes do not
# separate the heads M from the points K_l. Every official v1 config keeps the decoder's defaults ([4]
# rtdetr_pytorch/src/zoo/rtdetr/rtdetr_decoder.py `RTDETRTransformer(nhead=8, num_decoder_points=4)`; no
# configs/rtdetr/*.yml sets them), so M = 8 is taken and K_l read from the rows; a config.json beside the file
# overrides both.
V1_HEADS = 8


def describe(tensors, source="<state dict>"):
    """What the hub-named tensors say about the architecture: a dict of config fields (shapes only).

    Also "version": 2 if the tensors hold the n_points_scale buffers of RT-DETRv2, 1 (RT-DETR) if not.
    """
    n_stages = _count(tensors, re.escape(f"{BB}.encoder.stages.") + r"(\d+)\.")
    stages = [f"{BB}.encoder.stages.{s}" for s in range(n_stages)]
    bottleneck = f"{stages[0]}.layers.0.layer.2.convolution.weight" in tensors if stages else False
    last = 2 if bottleneck else 1
    enc = "model.encoder.encoder.0.layers.0"
    levels = _count(tensors, r"model\.encoder_input_proj\.(\d+)\.")
    d = dict(
        layer_type="bottleneck" if bottleneck else "basic",
        depths=[_count(tensors, re.escape(f"{s}.layers.") + r"(\d+)\.") for s in stages],
        hidden_sizes=[_dim(tensors, f"{s}.layers.0.layer.{last}.convolution.weight", 0, source) for s in stages],
        encoder_in_channels=[_dim(tensors, f"model.encoder_input_proj.{i}.0.weight", 1, source)
                             for i in range(levels)],
        encoder_hidden_dim=_dim(tensors, "model.encoder_input_proj.0.0.weight", 0, source),
        encoder_ffn_dim=_dim(tensors, f"{enc}.fc1.weight", 0, source),
        decoder_layers=_count(tensors, r"model\.decoder\.class_embed\.(\d+)\."),
        d_model=_dim(tensors, "model.decoder_input_proj.0.0.weight", 0, source),
        decoder_in_channels=[_dim(tensors, f"model.decoder_input_proj.{i}.0.weight", 1, source)
                             for i in range(levels)],
        decoder_ffn_dim=_dim(tensors, "model.decoder.layers.0.fc1.weight", 0, source),
    )
    d["hidden_expansion"] = _dim(tensors, "model.encoder.fpn_blocks.0.conv1.conv.weight", 0, source) \
        / max(d["encoder_hidden_dim"], 1)
    offsets_rows = _dim(tensors, "model.decoder.layers.0.encoder_attn.sampling_offsets.weight", 0, source)
    scale_name = "model.decoder.layers.0.encoder_attn.n_points_scale"
    d["version"] = 2 if scale_name in tensors else 1
    if d["version"] == 2:
        # Points per level from the 1/K_l buffer ([4] MSDeformableAttention.num_points_scale): K_l entries of 1/K_l.
        scale = np.asarray(tensors[scale_name], dtype=np.float64).reshape(-1)
        n_points, i = [], 0
        while i < len(scale) and np.isfinite(scale[i]) and 1 / (MAX_POINTS + 0.5) < scale[i] <= 1:
            n_points.append(int(round(1 / scale[i])))               # 1..MAX_POINTS: every pass moves i on
            i += n_points[-1]
        if i != len(scale) or len(n_points) != levels:
            raise RTDetrError(f"{source}: the num_points_scale buffer {scale[:12].round(4).tolist()} is not K_l "
                              f"entries of 1/K_l for each of {levels} levels; the checkpoint is damaged or not "
                              f"RT-DETRv2")
        d["decoder_n_points"] = n_points[0] if len(set(n_points)) == 1 else n_points
        d["decoder_attention_heads"] = offsets_rows // (2 * sum(n_points))
    else:
        # RT-DETR v1: one count for every level, from sampling_offsets' M * L * K_l * 2 rows with M = V1_HEADS.
        per_level, rem = divmod(offsets_rows, 2 * V1_HEADS * max(levels, 1))
        if rem or per_level < 1:
            raise RTDetrError(f"{source}: sampling_offsets has {offsets_rows} rows, not 8 heads x {levels} levels x "
                              f"K points x 2 of an RT-DETR v1 decoder with the official 8 heads; put a config.json "
                              f"describing it beside the file or pass --config")
        d["decoder_n_points"] = per_level
        d["decoder_attention_heads"] = V1_HEADS
    d["num_labels"] = _dim(tensors, "model.decoder.class_embed.0.weight", 0, source)
    # Learned content queries ([4] learnt_init_query / learn_query_content; transformers learn_initial_query): the
    # embedding's rows are the queries.
    if "model.weight_embedding.weight" in tensors:
        d["learn_initial_query"] = True
        d["num_queries"] = _dim(tensors, "model.weight_embedding.weight", 0, source)
    # Denoising label embedding: there only when training used denoising queries (num_denoising > 0).
    d["num_denoising"] = 100 if "model.denoising_class_embed.weight" in tensors else 0
    return d


STRUCTURE = ("layer_type", "depths", "hidden_sizes", "encoder_in_channels", "encoder_hidden_dim", "encoder_ffn_dim",
             "hidden_expansion", "decoder_layers", "d_model", "decoder_in_channels", "decoder_ffn_dim")


def _structure_of(cfg):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(cfg, k)) for k in STRUCTURE)}


def infer_config(tensors, variant=None, method=None, source="<state dict>"):
    """The Config of hub-named tensors from an official checkpoint: (cfg, variant name, how it was decided).

    variant: one of config.VARIANTS to force; None to find the published variant whose structure (block type and
    counts, widths, encoder and decoder sizes, decoder layer count) the tensors have. The version (RT-DETR v1 or
    v2: describe), points per level, decoder heads, the number of classes, learned initial queries and the
    denoising embedding are read from the tensors (so the r18vd sp1-sp3 ablation checkpoints work too).
    method: "bilinear" (default) or "discrete" (v2 only). Whatever the tensors say, the result is checked as a
    config.json is: a value this package refuses is an RTDetrError naming it.
    """
    found = describe(tensors, source)
    if variant is None:
        matches = [v for v in VARIANTS if _structure_of(variant_config(v)) == {k: found[k] for k in STRUCTURE}]
        if not matches:
            summary = (f"{found['layer_type']} blocks {found['depths']}, widths {found['hidden_sizes']}, encoder "
                       f"{found['encoder_hidden_dim']} (FFN {found['encoder_ffn_dim']}, CSP expansion "
                       f"{found['hidden_expansion']:g}), {found['decoder_layers']} decoder layers")
            raise RTDetrError(f"{source}: the tensors ({summary}) are not one of the published architectures "
                              f"{', '.join(VARIANTS)}; put a config.json describing it beside the file or pass "
                              f"--config")
        variant, how = matches[0], "inferred from the tensor shapes"
    elif variant not in VARIANTS:
        raise RTDetrError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    else:
        how = "given with --variant"
    if found["version"] == 1:
        how += " (RT-DETR v1: no num_points_scale buffers; 8 decoder heads assumed, as in every official v1 config)"
    n = found["num_labels"]
    id2label = dict(enumerate(COCO_NAMES)) if n == len(COCO_NAMES) else \
        {i: f"LABEL_{i}" for i in range(n)} if 1 <= n <= MAX_CLASSES else {}    # else refused below, by num_labels
    read = {k: found[k] for k in ("decoder_n_points", "decoder_attention_heads", "num_denoising",
                                  "learn_initial_query", "num_queries") if k in found}
    try:
        cfg = variant_config(variant, id2label=id2label, num_labels=n, model_type=MODEL_TYPES[found["version"]],
                             **read)
        cfg = cfg.with_method(method)
    except ValueError as e:                          # ConfigError: a value read off the shapes is refused
        raise RTDetrError(f"{source}: {e}") from None
    return cfg, variant, how


# ---------------------------------------------------------------------------------------------------------------
# Anchors: the checkpoint's versus recomputed
# ---------------------------------------------------------------------------------------------------------------

def compare_anchors(aside):
    """Compare the checkpoint's decoder.anchors with generate_anchors at the size they were made for.

    aside: the {official name: array} rename_official set aside. Returns None if there are no anchors, else a dict
    size_hw (the input size whose anchors fit best, found from the anchor count: Nv = 21 * (H/32) * (W/32)),
    mask_equal (valid_mask and the finite entries agree with ours), max_abs, max_rel (over valid entries; the
    official code writes +inf where invalid, transformers and we write float32 max).
    """
    if "decoder.anchors" not in aside:
        return None
    theirs = np.asarray(aside["decoder.anchors"], dtype=np.float32).reshape(-1, 4)      # [Nv, 4]
    nv = len(theirs)
    best = None
    for a in range(1, nv // 21 + 1):                 # (H/32, W/32) = (a, b) with a * b = Nv / 21
        if nv % (21 * a):
            continue
        b = nv // (21 * a)
        ours, valid = generate_anchors([(4 * a, 4 * b), (2 * a, 2 * b), (a, b)])          # [Nv, 4], [Nv]
        their_valid = np.isfinite(theirs).all(axis=1)
        if "decoder.valid_mask" in aside:
            their_valid &= np.asarray(aside["decoder.valid_mask"]).reshape(-1).astype(bool)
        both = valid & their_valid
        diff = np.abs(theirs[both].astype(np.float64) - ours[both])
        rel = diff / np.maximum(np.abs(ours[both]), 1e-3)
        entry = dict(size_hw=(32 * a, 32 * b), mask_equal=bool((valid == their_valid).all()),
                     max_abs=float(diff.max()) if diff.size else 0.0, max_rel=float(rel.max()) if rel.size else 0.0)
        if best is None or (entry["mask_equal"], -entry["max_abs"]) > (best["mask_equal"], -best["max_abs"]):
            best = entry
    return best


# ---------------------------------------------------------------------------------------------------------------
# Reading sources, writing the converted file
# ---------------------------------------------------------------------------------------------------------------

def load_official(path, variant=None, method=None, config=None):
    """Read an official .pth and map it: (cfg, {hub name: float32 array}, report dict).

    The architecture comes from `config` (a config.json path) if given, else from a config.json beside the file,
    else from `variant`, else from the tensors (infer_config). report: "architecture" (how it was decided),
    "variant", "tensors_in" (official tensor count), "anchors" (compare_anchors or None).
    """
    from .pth import load_pth
    path = os.fspath(path)
    state_dict = load_pth(path)
    tensors, aside = rename_official(state_dict, path)
    beside = os.path.join(os.path.dirname(path) or ".", "config.json")
    if config is None and variant is None and os.path.exists(beside):
        config = beside
    try:
        if config is not None:
            cfg = read_config(config).with_method(method)
            name, how = None, f"from {config}"
        else:
            cfg, name, how = infer_config(tensors, variant, method, path)
    except ValueError as e:                          # Config.with_method: not a sampling method
        raise RTDetrError(f"{path}: {e}") from None
    report = dict(architecture=how, variant=name, tensors_in=len(state_dict), anchors=compare_anchors(aside))
    try:
        tensors = check_and_clean(tensors, cfg, path)
    except RTDetrError as e:
        if config != beside:
            raise
        raise RTDetrError(f"{e} (the architecture was read from {beside}, found beside the file; move it away to "
                          f"have the architecture inferred from the tensors)") from None
    return cfg, tensors, report

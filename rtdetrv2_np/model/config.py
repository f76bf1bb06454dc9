"""The architecture description: which RT-DETRv2 (or RT-DETR v1) a checkpoint is, read and checked from its
config.json.

A `Config` is read from the Hugging Face `config.json` of a checkpoint (`RTDetrV2Config` in [5]
models/rt_detr_v2/configuration_rt_detr_v2.py, its `backbone_config` an `RTDetrResNetConfig`,
models/rt_detr/configuration_rt_detr_resnet.py), keeping only the fields inference needs. Defaults are
transformers' defaults, so a hub `config.json` (which may omit fields equal to their default) reads as transformers
reads it.

Every field of those two classes is one of three kinds (the tables USED_FIELDS, INERT_FIELDS, REFUSED_FIELDS and
their BACKBONE_* counterparts below; tests/test_config.py checks that every field transformers 5.24 has is in one):
    used     read by the forward pass or by the weight check; its type, range and consistency with the other fields
             are checked by `config_from_dict`, and a test compares it, at a value other than the default, with
             transformers;
    inert    has no effect at inference (training, initialisation, bookkeeping): type-checked, then dropped;
    refused  a feature this package does not implement: accepted only at the one value every published checkpoint
             has, anything else is an error naming the field and that value.
A key that neither transformers nor this package knows is ignored, as transformers ignores it.

RT-DETR v1 ([1]; transformers `RTDetrConfig`, models/rt_detr/configuration_rt_detr.py, `model_type: "rt_detr"`,
`RTDetrForObjectDetection`) is read by the same function: its config has the fields of RTDetrV2Config less four
(V2_ONLY_FIELDS) plus one inert one (V1_INERT_FIELDS), and its model differs only in the decoder's cross-attention
(deformable_attention.py: one point count for every level, the literal 0.5 offset scale, no n_points_scale buffer,
bilinear sampling only). `Config.version` (1 or 2) is read from `model_type`. A v1 config that sets a v2-only field
to anything but the value v1 computes with (decoder_method "discrete", decoder_offset_scale other than 0.5, a list
of point counts) is refused: transformers' v1 would ignore the field silently.

Three fields are ours, not transformers':
- `version`: 1 for RT-DETR (model_type "rt_detr"), 2 for RT-DETRv2 (model_type "rt_detr_v2", or none given);
  config.json says it by its model_type, which `to_hf_dict` writes back.
- `decoder_n_points` may be a list (one point count per level), as in the official code's `num_points`; transformers
  only has one count for all levels.
- `decoder_eval_idx`: the official model [4] stops the decoder after layer `eval_idx` (r50vd_m: 2 of 6 layers,
  configs/rtdetrv2/rtdetrv2_r50vd_m_7x_coco.yml; v1 alike, rtdetr_pytorch/configs/rtdetr/rtdetr_r50vd_m_6x_coco.yml).
  transformers has no such field and always runs every layer, so a hub config, which lacks it, gives -1 (all
  layers), as transformers does.

Where we accept what transformers 5.24 would not build (each harmless, none changes an output transformers gives):
a `backbone_config` without `model_type` or without `out_indices`/`out_features` (transformers: KeyError, or only
stage 4 and then a failure) reads as the RT-DETRv2 default stages 2, 3, 4; an `eval_size` given as [h, w]
(transformers 4.x wrote that form, 5.24 wants an int; only "set or not" matters); a config without `id2label` and
`num_labels` gets 80 classes (transformers: 2), which the weight check then holds against the checkpoint.
"""

import math
import reprlib
from dataclasses import dataclass, field, fields, replace


@dataclass(frozen=True)
class Config:
    version: int = 2                                     # ours: 1 = RT-DETR [1] ("rt_detr"), 2 = RT-DETRv2 [3]
    # backbone: ResNet-vd (RTDetrResNetConfig defaults)
    layer_type: str = "bottleneck"                       # "basic" (r18, r34) or "bottleneck" (r50, r101)
    depths: tuple = (3, 4, 6, 3)                         # blocks per stage
    hidden_sizes: tuple = (256, 512, 1024, 2048)         # stage output channels
    embedding_size: int = 64                             # stem output channels
    out_indices: tuple = (2, 3, 4)                       # stages 2..4 = strides 8, 16, 32 (stage 0 is the stem)
    # hybrid encoder
    encoder_in_channels: tuple = (512, 1024, 2048)
    encoder_hidden_dim: int = 256
    encoder_layers: int = 1
    encoder_ffn_dim: int = 1024
    encoder_attention_heads: int = 8
    encode_proj_layers: tuple = (2,)                     # AIFI runs on the stride-32 level only
    positional_encoding_temperature: int = 10000
    hidden_expansion: float = 1.0
    activation_function: str = "silu"                    # CCFM convolutions
    encoder_activation_function: str = "gelu"            # AIFI feed-forward (exact erf GELU)
    eval_size: object = None                             # transformers drops AIFI's position embedding if set
    # decoder
    d_model: int = 256
    num_queries: int = 300
    decoder_in_channels: tuple = (256, 256, 256)
    decoder_ffn_dim: int = 1024
    num_feature_levels: int = 3
    decoder_n_points: object = 4                         # int, or a list with one count per level
    decoder_layers: int = 6
    decoder_attention_heads: int = 8
    decoder_activation_function: str = "relu"           # decoder feed-forward
    decoder_offset_scale: float = 0.5
    decoder_method: str = "default"                      # "default" (bilinear) or "discrete"
    decoder_eval_idx: int = -1                           # ours: last decoder layer evaluated (-1: all)
    learn_initial_query: bool = False                    # decoder's initial queries: learned embedding, not gathered
    num_denoising: int = 100                             # training only; decides if denoising_class_embed exists
    anchor_image_size: object = None                     # (H, W): anchors fixed at this input size (transformers)
    # norms, labels
    layer_norm_eps: float = 1e-5                         # every LayerNorm (AIFI, enc_output, decoder layers)
    batch_norm_eps: float = 1e-5                         # CCFM and decoder_input_proj BatchNorms (not backbone,
                                                         # not encoder_input_proj: those use 1e-5 in transformers)
    id2label: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def num_labels(self):
        return len(self.id2label) if self.id2label else 80

    @property
    def label_names(self):
        """{label index: name}: id2label, or the indices as names when the config has none."""
        return self.id2label or {i: str(i) for i in range(self.num_labels)}

    @property
    def n_points(self):
        """Sampling points per level, a list of L ints."""
        n = self.decoder_n_points
        return list(n) if isinstance(n, (list, tuple)) else [int(n)] * self.num_feature_levels

    @property
    def method(self):
        """The sampling method by its name in this package: "bilinear" or "discrete"."""
        return "discrete" if self.decoder_method == "discrete" else "bilinear"

    def with_method(self, method):
        """This Config with the sampling method `method` ("bilinear" or "discrete"; None keeps this one's).

        The one place that maps our names onto config.json's decoder_method ("default" = bilinear, "discrete").
        """
        if method is None:
            return self
        if method not in ("bilinear", "discrete"):
            raise ValueError(f"method must be 'bilinear' or 'discrete', got {method!r}")
        if method == "discrete" and self.version == 1:
            raise ValueError(V1_DISCRETE)
        return replace(self, decoder_method="discrete" if method == "discrete" else "default")

    @property
    def num_decoder_layers_used(self):
        return self.decoder_layers if self.decoder_eval_idx < 0 else self.decoder_eval_idx + 1

    def to_hf_dict(self):
        """The config.json dict transformers reads (RTDetrV2Config + RTDetrResNetConfig backbone_config)."""
        d = {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)
             if f.name not in BACKBONE_FIELDS and f.name not in ("id2label", "version")}
        d["id2label"] = {str(k): v for k, v in self.id2label.items()} or {str(i): f"LABEL_{i}" for i in range(80)}
        d["label2id"] = {v: int(k) for k, v in d["id2label"].items()}
        if self.version == 1:                            # RTDetrConfig: without the fields only v2 has
            for name in V2_ONLY_FIELDS:
                d.pop(name, None)
        d["model_type"] = MODEL_TYPES[self.version]
        d["architectures"] = [ARCHITECTURES[self.version]]
        bb = {name: _jsonable(getattr(self, name)) for name in BACKBONE_FIELDS}
        bb["out_features"] = [f"stage{i}" for i in self.out_indices]
        bb["model_type"] = "rt_detr_resnet"
        d["backbone_config"] = bb
        if d["decoder_eval_idx"] == -1:
            del d["decoder_eval_idx"]
        return d


BACKBONE_FIELDS = ("layer_type", "depths", "hidden_sizes", "embedding_size", "out_indices")
MODEL_TYPES = {1: "rt_detr", 2: "rt_detr_v2"}                                   # config.json's model_type
ARCHITECTURES = {1: "RTDetrForObjectDetection", 2: "RTDetrV2ForObjectDetection"}
V1_DISCRETE = ("method 'discrete' is not available for an RT-DETR v1 checkpoint (model_type 'rt_detr'): v1 samples "
               "bilinearly only; discrete sampling is an RT-DETRv2 operator ([3] §2.1)")


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


# ---------------------------------------------------------------------------------------------------------------
# Every field, by kind. Ranges hold every published checkpoint, the demo models (basic blocks 32..128 wide, d_model
# 80, 4 heads, 100 queries, 4 classes) and plausible fine-tunes (365 or 13,204 classes, 900 queries, ResNet-152
# depths), with headroom; a config beyond them is refused before anything is allocated.
# ---------------------------------------------------------------------------------------------------------------

MAX_WIDTH = 16384        # channels, d_model, FFN widths: the widest published tensor dimension is 2048 (r101vd)
MAX_STAGE_DEPTH = 64     # blocks per backbone stage: r101vd has 23, ResNet-152 36, ResNet-200 36
MAX_LAYERS = 32          # encoder / decoder layers: published 1 / 3-6
MAX_HEADS = 256          # attention heads: published 8
MAX_QUERIES = 5000       # published 300; DINO-style fine-tunes 900
MAX_CLASSES = 100000     # COCO 80, Objects365 365, LVIS 1203, V3Det 13204
MAX_POINTS = 64          # sampling points per level and head: published 4 (ablations 2..8)
MAX_IMAGE_SIDE = 16384   # eval_size / anchor_image_size sides, pixels
LEVELS = 3               # feature levels: every RT-DETRv2 has strides 8, 16, 32 (backbone stages 2, 3, 4)
FEAT_STRIDES = (8, 16, 32)
ACTIVATIONS = {          # names transformers' ACT2CLS / ACT2FN accept that we implement (nn.activation_), per field
    "activation_function": ("relu", "silu", "swish", "gelu"),             # CCFM convolutions
    "encoder_activation_function": ("relu", "silu", "swish", "gelu"),     # AIFI FFN
    "decoder_activation_function": ("relu", "silu", "swish", "gelu"),     # decoder FFN
}                        # "swish" is ACT2CLS's other name for SiLU and is stored as "silu"; "gelu" is the exact erf
                         # form. ACT2CLS's other names (gelu_new, gelu_fast, quick_gelu, relu6, leaky_relu, mish,
                         # tanh, ...) are refused

# Config's own fields plus the ones that feed it (backbone_config, id2label / num_labels). num_denoising: inert,
# kept for the weight check (INERT_FIELDS); version: ours, read from model_type (INERT_FIELDS, checked by _version).
USED_FIELDS = tuple(f.name for f in fields(Config) if f.name not in BACKBONE_FIELDS + ("num_denoising", "version")) + (
    "backbone_config", "num_labels", "feat_strides", "decoder_n_levels")

# field: (type check, why it has no effect at inference)
INERT_FIELDS = {
    "initializer_range": ("number", "weight initialisation"),
    "initializer_bias_prior_prob": ("number?", "weight initialisation"),
    "freeze_backbone_batch_norms": ("bool", "frozen and eval-mode BatchNorm compute the same affine map (eps 1e-5 "
                                            "both); it only decides what training updates"),
    "dropout": ("number", "dropout is the identity at inference"),
    "activation_dropout": ("number", "dropout is the identity at inference"),
    "attention_dropout": ("number", "dropout is the identity at inference"),
    "num_denoising": ("count", "denoising queries exist only in training; > 0 only says the checkpoint holds "
                               "model.denoising_class_embed (required by the weight check, never read)"),
    "label_noise_ratio": ("number", "denoising (training)"),
    "box_noise_scale": ("number", "denoising (training)"),
    "with_box_refine": ("bool", "transformers 5.24 never reads it; every layer refines boxes, as in the official "
                                "code"),
    "is_encoder_decoder": ("bool", "generation utilities only"),
    "matcher_alpha": ("number", "Hungarian matcher (training)"),
    "matcher_gamma": ("number", "Hungarian matcher (training)"),
    "matcher_class_cost": ("number", "Hungarian matcher (training)"),
    "matcher_bbox_cost": ("number", "Hungarian matcher (training)"),
    "matcher_giou_cost": ("number", "Hungarian matcher (training)"),
    "use_focal_loss": ("bool", "loss (training)"),
    "auxiliary_loss": ("bool", "loss (training)"),
    "focal_loss_alpha": ("number", "loss (training)"),
    "focal_loss_gamma": ("number", "loss (training)"),
    "weight_loss_vfl": ("number", "loss (training)"),
    "weight_loss_bbox": ("number", "loss (training)"),
    "weight_loss_giou": ("number", "loss (training)"),
    "eos_coefficient": ("number", "loss (training)"),
    "tie_word_embeddings": ("bool", "ties the top-level class_embed/bbox_embed copies to model.decoder.*, which "
                                    "is what the forward pass reads"),
    # PreTrainedConfig's own fields and what save_pretrained adds: bookkeeping
    "transformers_version": ("any", "bookkeeping"), "architectures": ("any", "bookkeeping"),
    "model_type": ("any", "says which detector: 'rt_detr' (v1) or 'rt_detr_v2' (read as Config.version; any other "
                          "value is refused)"), "_name_or_path": ("any", "bookkeeping"),
    "dtype": ("any", "weights are read in their stored dtype and computed in float32"),
    "torch_dtype": ("any", "transformers 4.x name of dtype"),
    "output_hidden_states": ("any", "what transformers returns, not what it computes"),
    "output_attentions": ("any", "what transformers returns, not what it computes"),
    "return_dict": ("any", "what transformers returns, not what it computes"),
    "chunk_size_feed_forward": ("any", "not used by RT-DETRv2"), "problem_type": ("any", "not used by RT-DETRv2"),
    "label2id": ("any", "the inverse of id2label, which is the one read"),
    "use_pretrained_backbone": ("bool", "transformers 4.x: pretrained backbone weights, replaced by the "
                                        "checkpoint's"),
}

# RT-DETR v1 (RTDetrConfig, [5] models/rt_detr/configuration_rt_detr.py) against RTDetrV2Config: the fields only v2
# has, and the one field only v1 has (type-checked when the config is v1, as the inert fields are).
V2_ONLY_FIELDS = ("decoder_n_levels", "decoder_offset_scale", "decoder_method", "tie_word_embeddings")
V1_INERT_FIELDS = {
    "disable_custom_kernels": ("bool", "chooses transformers' compiled kernel for the deformable attention, which "
                                       "computes the same sum; this package has one implementation"),
}

# Early revisions of the PekingU/rtdetr_* (v1) hub checkpoints named a timm ResNet-vd backbone instead of
# backbone_config (transformers 4.x fields use_timm_backbone / backbone); their tensors are laid out another way.
TIMM_HUB = ("timm backbones are not implemented (transformers 4.x field; early revisions of the PekingU/rtdetr_* "
            "hub checkpoints used one): only revisions with the ResNet-vd of RTDetrResNet (backbone_config."
            "model_type 'rt_detr_resnet', e.g. the current main) are supported")

# field: (the one value accepted, why other values are refused)
REFUSED_FIELDS = {
    "normalize_before": (False, "pre-norm AIFI is not implemented (no published checkpoint; transformers also "
                                "takes the FFN residual after the norm, unlike the official code)"),
    "use_timm_backbone": (False, TIMM_HUB),
    "backbone": (None, TIMM_HUB),
    "backbone_kwargs": (None, "named (timm / hub) backbones are not implemented (transformers 4.x field)"),
}

BACKBONE_USED_FIELDS = BACKBONE_FIELDS + ("out_features",)
BACKBONE_INERT_FIELDS = {
    "stage_names": ("any", "derived from depths"),
    "model_type": ("any", "checked: rt_detr_resnet"),
    **{k: INERT_FIELDS[k] for k in ("transformers_version", "architectures", "_name_or_path", "dtype",
                                    "torch_dtype", "output_hidden_states", "output_attentions", "return_dict",
                                    "chunk_size_feed_forward", "problem_type", "is_encoder_decoder")},
    "id2label": ("any", "the backbone has no classifier"), "label2id": ("any", "the backbone has no classifier"),
}
BACKBONE_REFUSED_FIELDS = {
    "num_channels": (3, "the input is an RGB image"),
    "hidden_act": ("relu", "only ReLU blocks are implemented (every published checkpoint)"),
    "downsample_in_first_stage": (False, "a stride-2 first stage is not implemented (ResNet-vd keeps stride 4)"),
    "downsample_in_bottleneck": (False, "the ResNet-B stride on the 3x3 convolution is implemented, not on the "
                                        "first 1x1"),
}


class ConfigError(ValueError):
    """A config.json field this package refuses. The message names the field and what is allowed."""


def _show(v):
    """A short repr of a value from a file (bounded, whatever its size)."""
    return reprlib.repr(v)


def _int(d, name, lo, hi, default):
    v = d.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name} must be an integer in {lo}..{hi}, got {_show(v)}")
    if not lo <= v <= hi:
        raise ConfigError(f"{name} = {_show(v)} is outside the allowed range {lo}..{hi}")
    return v


def _number(d, name, lo, hi, default, lo_open=False):
    v = d.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}], "
                          f"got {_show(v)}")
    if not (lo < v if lo_open else lo <= v) or v > hi:
        raise ConfigError(f"{name} = {v!r} is outside the allowed range {'(' if lo_open else '['}{lo:g}, {hi:g}]")
    return v


def _int_list(d, name, n, lo, hi, default):
    v = d.get(name, default)
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise ConfigError(f"{name} must be a list of {n} integers in {lo}..{hi}, got {_show(v)}")
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
            raise ConfigError(f"{name} = {_show(v)}: each entry must be an integer in {lo}..{hi}")
    return tuple(v)


def _choice(d, name, allowed, default):
    v = d.get(name, default)
    if not isinstance(v, str) or v not in allowed:
        raise ConfigError(f"{name} = {_show(v)} is not supported; allowed: {', '.join(map(repr, allowed))}")
    return v


def _check_type(name, v, kind):
    ok = {"any": True, "bool": isinstance(v, bool),
          "number": not isinstance(v, bool) and isinstance(v, (int, float)),
          "number?": v is None or (not isinstance(v, bool) and isinstance(v, (int, float))),
          "count": not isinstance(v, bool) and isinstance(v, int) and 0 <= v <= 10 ** 6}[kind]
    if not ok:
        want = {"bool": "true or false", "number": "a number", "number?": "a number or null",
                "count": "an integer in 0..1000000"}[kind]
        raise ConfigError(f"{name} must be {want}, got {_show(v)}")


def _check_refused(d, table, where=""):
    for name, (allowed, why) in table.items():
        v = d.get(name, allowed)
        if name == "backbone_kwargs" and v == {}:
            continue
        if v != allowed or type(v) is not type(allowed):
            raise ConfigError(f"{where}{name} = {_show(v)} is not supported, only {_show(allowed)}: {why}")


def _size_pair(d, name, int_ok):
    """None, or [h, w] (or one int when int_ok), each side 1..MAX_IMAGE_SIDE."""
    v = d.get(name)
    if v is None:
        return None
    if int_ok and not isinstance(v, bool) and isinstance(v, int) and 1 <= v <= MAX_IMAGE_SIDE:
        return v
    if (isinstance(v, (list, tuple)) and len(v) == 2
            and all(not isinstance(x, bool) and isinstance(x, int) and 32 <= x <= MAX_IMAGE_SIDE for x in v)):
        return tuple(v)
    sides = "an integer or " if int_ok else ""
    raise ConfigError(f"{name} must be null, {sides}[height, width] with sides in 32..{MAX_IMAGE_SIDE}, "
                      f"got {_show(v)}")


def _labels(d):
    """id2label {int: str} with keys exactly 0..N-1, from id2label and / or num_labels."""
    n = d.get("num_labels")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CLASSES):
        raise ConfigError(f"num_labels must be an integer in 1..{MAX_CLASSES}, got {_show(n)}")
    raw = d.get("id2label")
    if raw is None:
        return {i: f"LABEL_{i}" for i in range(n)} if n else {}
    if not isinstance(raw, dict) or not 1 <= len(raw) <= MAX_CLASSES:
        raise ConfigError(f"id2label must be a mapping of 1..{MAX_CLASSES} class indices to names, got {_show(raw)}")
    out = {}
    for k, v in raw.items():
        try:
            i = int(k)
        except (TypeError, ValueError):
            raise ConfigError(f"id2label key {_show(k)} is not a class index") from None
        if not isinstance(v, str):
            raise ConfigError(f"id2label[{_show(k)}] must be a name (a string), got {_show(v)}")
        out[i] = v
    if sorted(out) != list(range(len(out))):
        raise ConfigError(f"id2label keys must be the class indices 0..{len(out) - 1}, got {_show(sorted(out))}")
    if n is not None and n != len(out):
        raise ConfigError(f"num_labels = {n} disagrees with id2label, which names {len(out)} classes")
    return out


def _backbone(bb):
    """The backbone_config fields we keep, checked. bb is the backbone_config dict (RTDetrResNetConfig)."""
    if not isinstance(bb, dict):
        raise ConfigError(f"backbone_config must be a mapping (an RTDetrResNetConfig), got {_show(bb)}")
    if bb.get("model_type", "rt_detr_resnet") != "rt_detr_resnet":
        raise ConfigError(f"backbone_config.model_type = {_show(bb.get('model_type'))} is not supported, only "
                          "'rt_detr_resnet' (the ResNet-vd of every published RT-DETR and RT-DETRv2; early "
                          "revisions of the PekingU/rtdetr_* hub checkpoints used a timm backbone)")
    _check_refused(bb, BACKBONE_REFUSED_FIELDS, "backbone_config.")
    for name, (kind, _) in BACKBONE_INERT_FIELDS.items():
        if name in bb:
            _check_type("backbone_config." + name, bb[name], kind)
    kw = {"layer_type": _choice(bb, "layer_type", ("basic", "bottleneck"), "bottleneck")}
    kw["depths"] = _int_list(bb, "depths", 4, 1, MAX_STAGE_DEPTH, Config.depths)
    lo = 4 if kw["layer_type"] == "bottleneck" else 1          # a bottleneck is c_out / 4 wide inside
    kw["hidden_sizes"] = _int_list(bb, "hidden_sizes", 4, lo, MAX_WIDTH, Config.hidden_sizes)
    kw["embedding_size"] = _int(bb, "embedding_size", 2, MAX_WIDTH, Config.embedding_size)  # the stem halves it
    stages = [2, 3, 4]                                      # strides 8, 16, 32: the three levels of RT-DETRv2
    for name, want in (("out_indices", stages), ("out_features", [f"stage{i}" for i in stages])):
        v = bb.get(name)                                    # absent or null: transformers' RT-DETRv2 default
        if v is not None and (not isinstance(v, (list, tuple)) or list(v) != want):
            raise ConfigError(f"backbone_config.{name} = {_show(v)} is not supported, only {want} (strides 8, 16, "
                              "32: the three feature levels of every RT-DETRv2)")
    kw["out_indices"] = tuple(stages)
    return kw


def config_from_dict(d):
    """A Config from a transformers config.json dict, every field checked (module docstring: used, inert,
    refused). Raises ConfigError (a ValueError) naming the first field that is wrong and what is allowed."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of field names to values, got {_show(d)}")
    version = _version(d)
    _check_refused(d, REFUSED_FIELDS)
    for name, (kind, _) in INERT_FIELDS.items():
        if name in d:
            _check_type(name, d[name], kind)
    bb = d.get("backbone_config")
    kw = _backbone({} if bb is None else bb)
    W = MAX_WIDTH
    # hybrid encoder
    kw["encoder_hidden_dim"] = _int(d, "encoder_hidden_dim", 1, W, Config.encoder_hidden_dim)
    kw["encoder_in_channels"] = _int_list(d, "encoder_in_channels", LEVELS, 1, W, Config.encoder_in_channels)
    kw["encoder_layers"] = _int(d, "encoder_layers", 0, MAX_LAYERS, Config.encoder_layers)
    kw["encoder_ffn_dim"] = _int(d, "encoder_ffn_dim", 1, W, Config.encoder_ffn_dim)
    kw["encoder_attention_heads"] = _int(d, "encoder_attention_heads", 1, MAX_HEADS, Config.encoder_attention_heads)
    epl = d.get("encode_proj_layers", list(Config.encode_proj_layers))
    if (not isinstance(epl, (list, tuple)) or len(set(epl)) != len(epl)
            or not all(not isinstance(i, bool) and isinstance(i, int) and 0 <= i < LEVELS for i in epl)):
        raise ConfigError(f"encode_proj_layers must be a list of distinct level indices in 0..{LEVELS - 1} (the "
                          f"levels AIFI runs on; published: [2]), got {_show(epl)}")
    kw["encode_proj_layers"] = tuple(epl)
    kw["positional_encoding_temperature"] = _number(d, "positional_encoding_temperature", 1, 1e9,
                                                    Config.positional_encoding_temperature)
    kw["hidden_expansion"] = _number(d, "hidden_expansion", 0, 16, Config.hidden_expansion, lo_open=True)
    for name in ACTIVATIONS:
        act = _choice(d, name, ACTIVATIONS[name], getattr(Config, name))
        kw[name] = "silu" if act == "swish" else act
    kw["eval_size"] = _size_pair(d, "eval_size", int_ok=True)
    # decoder
    kw["d_model"] = _int(d, "d_model", 1, W, Config.d_model)
    kw["num_queries"] = _int(d, "num_queries", 1, MAX_QUERIES, Config.num_queries)
    kw["decoder_in_channels"] = _int_list(d, "decoder_in_channels", LEVELS, 1, W, Config.decoder_in_channels)
    kw["decoder_ffn_dim"] = _int(d, "decoder_ffn_dim", 1, W, Config.decoder_ffn_dim)
    for name, want in (("num_feature_levels", LEVELS), ("decoder_n_levels", LEVELS),
                       ("feat_strides", list(FEAT_STRIDES))):
        v = d.get(name, want)
        if (list(v) if isinstance(v, (list, tuple)) else v) != want or isinstance(v, bool):
            raise ConfigError(f"{name} = {_show(v)} is not supported, only {want} (the three levels of strides 8, "
                              "16, 32 that every RT-DETRv2 decodes; extra downsampled levels are not implemented)")
    kw["num_feature_levels"] = LEVELS
    npts = d.get("decoder_n_points", Config.decoder_n_points)
    if isinstance(npts, (list, tuple)):
        kw["decoder_n_points"] = list(_int_list(d, "decoder_n_points", LEVELS, 1, MAX_POINTS, None))
    else:
        kw["decoder_n_points"] = _int(d, "decoder_n_points", 1, MAX_POINTS, Config.decoder_n_points)
    n_layers = kw["decoder_layers"] = _int(d, "decoder_layers", 1, MAX_LAYERS, Config.decoder_layers)
    kw["decoder_attention_heads"] = _int(d, "decoder_attention_heads", 1, MAX_HEADS, Config.decoder_attention_heads)
    kw["decoder_offset_scale"] = _number(d, "decoder_offset_scale", 0, 16, Config.decoder_offset_scale, lo_open=True)
    kw["decoder_method"] = _choice(d, "decoder_method", ("default", "discrete"), Config.decoder_method)
    kw["decoder_eval_idx"] = _int(d, "decoder_eval_idx", -1, n_layers - 1, Config.decoder_eval_idx)
    lq = d.get("learn_initial_query", False)
    if not isinstance(lq, bool):
        raise ConfigError(f"learn_initial_query must be true or false, got {_show(lq)}")
    kw["learn_initial_query"] = lq
    kw["num_denoising"] = d.get("num_denoising", Config.num_denoising)          # type-checked as inert above
    kw["anchor_image_size"] = _size_pair(d, "anchor_image_size", int_ok=False)
    kw["layer_norm_eps"] = _number(d, "layer_norm_eps", 0, 1, Config.layer_norm_eps, lo_open=True)
    kw["batch_norm_eps"] = _number(d, "batch_norm_eps", 0, 1, Config.batch_norm_eps, lo_open=True)
    kw["id2label"] = _labels(d)
    kw["version"] = version
    if version == 1:
        _check_v1(d, kw)
    _check_consistent(kw)
    return Config(**kw)


def _version(d):
    """1 or 2 from config.json's model_type ("rt_detr" or "rt_detr_v2"; absent: 2, as before v1 was read)."""
    mt = d.get("model_type", MODEL_TYPES[2])
    for version, name in MODEL_TYPES.items():
        if mt == name:
            return version
    raise ConfigError(f"model_type = {_show(mt)} is not supported, only 'rt_detr' (RT-DETR v1) or 'rt_detr_v2'")


def _check_v1(d, kw):
    """RT-DETR v1 ([5] RTDetrConfig) has no decoder_method, decoder_offset_scale or per-level point counts: its
    decoder samples bilinearly, scales offsets by the literal 0.5 and uses one point count on every level. A v1
    config that sets one of them otherwise is refused (transformers would ignore it without a word)."""
    for name, (kind, _) in V1_INERT_FIELDS.items():
        if name in d:
            _check_type(name, d[name], kind)
    why = {"decoder_method": (Config.decoder_method, "bilinear sampling only"),
           "decoder_offset_scale": (Config.decoder_offset_scale, "the fixed offset scale 0.5")}
    for name, (v1_value, what) in why.items():
        if kw[name] != v1_value:
            raise ConfigError(f"{name} = {_show(d[name])} is an RT-DETRv2 field; this config is RT-DETR v1 "
                              f"(model_type 'rt_detr'), whose decoder has {what}: remove the field, or set "
                              f"model_type 'rt_detr_v2' if the checkpoint is v2")
    if isinstance(kw["decoder_n_points"], list):
        raise ConfigError(f"decoder_n_points = {_show(d['decoder_n_points'])}: RT-DETR v1 (model_type 'rt_detr') "
                          "has one point count for every level, an integer")


def _check_consistent(kw):
    """Relations between fields that transformers' module shapes impose (it would fail to build or to run)."""
    C, dm = kw["encoder_hidden_dim"], kw["d_model"]
    backbone_out = tuple(kw["hidden_sizes"][i - 1] for i in kw["out_indices"])
    if kw["encoder_in_channels"] != backbone_out:
        raise ConfigError(f"encoder_in_channels = {list(kw['encoder_in_channels'])} must equal the backbone's output "
                          f"widths {list(backbone_out)} (backbone_config.hidden_sizes of stages 2, 3, 4)")
    if kw["decoder_in_channels"] != (C,) * LEVELS:
        raise ConfigError(f"decoder_in_channels = {list(kw['decoder_in_channels'])} must be encoder_hidden_dim "
                          f"{C} for each level (the encoder's outputs feed the decoder's input projections)")
    if C % kw["encoder_attention_heads"]:
        raise ConfigError(f"encoder_attention_heads = {kw['encoder_attention_heads']} must divide "
                          f"encoder_hidden_dim = {C}")
    if dm % kw["decoder_attention_heads"]:
        raise ConfigError(f"decoder_attention_heads = {kw['decoder_attention_heads']} must divide d_model = {dm}")
    aifi = kw["encoder_layers"] > 0 and kw["encode_proj_layers"]
    if aifi and kw["eval_size"] is None and C % 4:
        raise ConfigError(f"encoder_hidden_dim = {C} must be a multiple of 4 (the 2-D sin-cos position embedding "
                          "has four quarters: sin y, cos y, sin x, cos x)")
    if int(C * kw["hidden_expansion"]) < 1:
        raise ConfigError(f"hidden_expansion = {kw['hidden_expansion']!r} leaves int(encoder_hidden_dim * "
                          "hidden_expansion) = 0 channels in the CSP blocks")


# The five published architectures ([4] configs/rtdetrv2/*.yml; [5] convert_rt_detr_v2_weights_to_hf.py
# get_rt_detr_v2_config), as config dicts.
_R18 = dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
            encoder_in_channels=[128, 256, 512], hidden_expansion=0.5, decoder_layers=3)
VARIANTS = {
    "r18vd": _R18,
    "r34vd": dict(_R18, depths=[3, 4, 6, 3], decoder_layers=4),
    "r50vd_m": dict(hidden_expansion=0.5, decoder_layers=6, decoder_eval_idx=2),
    "r50vd": dict(),
    "r101vd": dict(depths=[3, 4, 23, 3], encoder_ffn_dim=2048, encoder_hidden_dim=384,
                   decoder_in_channels=[384, 384, 384]),
}


def variant_config(name, **overrides):
    """The Config of a published variant ("r18vd", "r34vd", "r50vd_m", "r50vd", "r101vd"), with overrides.

    The same five architectures were released as RT-DETR v1 ([4] rtdetr_pytorch/configs/rtdetr/*.yml, and
    PekingU/rtdetr_* on the hub): variant_config(name, model_type="rt_detr") gives those.
    """
    d = dict(VARIANTS[name])
    bb = {k: d.pop(k) for k in BACKBONE_FIELDS if k in d}
    d.update(overrides)
    d["backbone_config"] = bb
    return config_from_dict(d)

"""The architecture description: which of the five published RT-DETRv2 models a checkpoint is.

A `Config` is read from the Hugging Face `config.json` of a checkpoint (`RTDetrV2Config` in transformers
[hf5] models/rt_detr_v2/configuration_rt_detr_v2.py, its `backbone_config` an `RTDetrResNetConfig`), keeping only
the fields inference needs. Defaults are transformers' defaults, so a hub `config.json` (which omits fields equal
to their default) reads as transformers reads it.

Two fields are ours, not transformers':
- `decoder_n_points` may be a list (one point count per level), as in the official code's `num_points`; transformers
  only has one count for all levels.
- `decoder_eval_idx`: the official model stops the decoder after layer `eval_idx` (r50vd_m: 2 of 6 layers,
  configs/rtdetrv2/rtdetrv2_r50vd_m_7x_coco.yml). transformers has no such field and always runs every layer, so a
  hub config, which lacks it, gives -1 (all layers), as transformers does.
"""

from dataclasses import dataclass, field, fields, replace


@dataclass(frozen=True)
class Config:
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
    learn_initial_query: bool = False
    num_denoising: int = 100                             # training only; decides if denoising_class_embed exists
    anchor_image_size: object = None
    # norms, labels
    layer_norm_eps: float = 1e-5
    batch_norm_eps: float = 1e-5
    id2label: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def num_labels(self):
        return len(self.id2label) if self.id2label else 80

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
        return replace(self, decoder_method="discrete" if method == "discrete" else "default")

    @property
    def num_decoder_layers_used(self):
        return self.decoder_layers if self.decoder_eval_idx < 0 else self.decoder_eval_idx + 1

    def to_hf_dict(self):
        """The config.json dict transformers reads (RTDetrV2Config + RTDetrResNetConfig backbone_config)."""
        d = {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)
             if f.name not in BACKBONE_FIELDS and f.name not in ("id2label",)}
        d["id2label"] = {str(k): v for k, v in self.id2label.items()} or {str(i): f"LABEL_{i}" for i in range(80)}
        d["label2id"] = {v: int(k) for k, v in d["id2label"].items()}
        d["model_type"] = "rt_detr_v2"
        d["architectures"] = ["RTDetrV2ForObjectDetection"]
        bb = {name: _jsonable(getattr(self, name)) for name in BACKBONE_FIELDS}
        bb["out_features"] = [f"stage{i}" for i in self.out_indices]
        bb["model_type"] = "rt_detr_resnet"
        d["backbone_config"] = bb
        if d["decoder_eval_idx"] == -1:
            del d["decoder_eval_idx"]
        return d


BACKBONE_FIELDS = ("layer_type", "depths", "hidden_sizes", "embedding_size", "out_indices")


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def config_from_dict(d):
    """A Config from a transformers config.json dict. Unknown fields (training settings, losses) are ignored."""
    names = {f.name for f in fields(Config)}
    kw = {k: (tuple(v) if isinstance(v, list) and k != "decoder_n_points" else v)
          for k, v in d.items() if k in names and k not in BACKBONE_FIELDS}
    bb = d.get("backbone_config") or {}
    for k in BACKBONE_FIELDS:
        if k in bb:
            kw[k] = tuple(bb[k]) if isinstance(bb[k], list) else bb[k]
    if "out_indices" not in bb and "out_features" in bb:
        kw["out_indices"] = tuple(int(s.replace("stage", "")) for s in bb["out_features"])
    if "id2label" in d:
        kw["id2label"] = {int(k): v for k, v in d["id2label"].items()}
    cfg = Config(**kw)
    if cfg.method not in ("bilinear", "discrete") or cfg.decoder_method not in ("default", "discrete"):
        raise ValueError(f"decoder_method {cfg.decoder_method!r} is not 'default' or 'discrete'")
    if cfg.num_feature_levels != len(cfg.decoder_in_channels):
        raise ValueError("num_feature_levels != len(decoder_in_channels): extra downsampled levels are not "
                         "supported (no published RT-DETRv2 checkpoint uses them)")
    return cfg


# The five published architectures ([orig] configs/rtdetrv2/*.yml; [conv] get_rt_detr_v2_config), as config dicts.
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
    """The Config of a published variant ("r18vd", "r34vd", "r50vd_m", "r50vd", "r101vd"), with overrides."""
    d = dict(VARIANTS[name])
    bb = {k: d.pop(k) for k in BACKBONE_FIELDS if k in d}
    d.update(overrides)
    d["backbone_config"] = bb
    return config_from_dict(d)

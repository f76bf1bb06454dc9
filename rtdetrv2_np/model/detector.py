"""RT-DETRv2 end to end, as in [1] §4.1 and its overview figure (Fig. 4): backbone -> hybrid encoder -> query
selection -> decoder.

Sources (numbered as in the package docstring, rtdetrv2_np/__init__.py, which also defines the shape letters):
    [1] §4 "The Real-time DETR"; [3] the v2 decoder's sampling.
    [4] rtdetrv2_pytorch/src/zoo/rtdetr/rtdetr.py (`RTDETR`: backbone, encoder, decoder): the official counterpart.
    [5] models/rt_detr_v2/modeling_rt_detr_v2.py `RTDetrV2ForObjectDetection.forward`, `RTDetrV2Model.forward`.

Scope: inference only. Featured: the five published ResNet-vd configurations (r18vd, r34vd, r50vd_m, r50vd, r101vd),
bilinear and discrete sampling, any input size that is a multiple of 32, batches. Left out: training, losses,
denoising queries, the RepVGG re-parameterisation of the deploy/ONNX export (equal up to rounding).

    model = load_model("path/to/model_dir")          # config.json + model.safetensors, as on the hub
    out = model(pixel_values)                        # float32 [B, 3, H, W] in [0, 1] (float64 works too)
    out.logits, out.pred_boxes                       # [B, Nq, NC], [B, Nq, 4] (cx, cy, w, h, normalised)
    stages = model.trace(pixel_values)               # every intermediate, by name (see `forward`)
"""

from dataclasses import dataclass, replace

import numpy as np

from .backbone import backbone
from .config import Config
from .decoder import decoder
from .hybrid_encoder import hybrid_encoder
from .nn import conv_bn
from .query_selection import select_queries


def forward(params, cfg, pixel_values, trace=None):
    """The whole detector. pixel_values float32 [B, 3, H, W] -> (logits [B, Nq, NC], boxes [B, Nq, 4]).

    params: the params tree (rtdetrv2_np.weights.params_tree of the hub-named tensors). If `trace` is a dict, every stage's
    output is stored in it by name:
        backbone.{l}                [B, C_l, H_l, W_l]   ResNet-vd maps, strides 8, 16, 32
        encoder.input_proj.{l}      [B, C, H_l, W_l]     1x1 projections
        encoder.aifi                [B, C, H_2, W_2]     AIFI output
        encoder.output.{l}          [B, C, H_l, W_l]     CCFM output
        memory                      [B, Nv, C]           decoder input projections, flattened, levels concatenated
        anchors, valid_mask         [Nv, 4], [Nv]        see query_selection
        enc_logits, enc_coord_logits, topk_index, reference_boxes, target
        decoder.{i}.hidden / .boxes / .logits / .sampling_locations / .attention_weights
        logits, pred_boxes
    """
    B, _, H, W = pixel_values.shape
    if H % 32 or W % 32:
        raise ValueError(f"input height and width must be multiples of 32 (the coarsest stride), got {H}x{W}")
    m = params["model"]
    feats = backbone(pixel_values, m["backbone"]["model"], cfg)                     # [B, C_l, H_l, W_l] x L
    enc = hybrid_encoder(feats, m["encoder_input_proj"], m["encoder"], cfg, trace)  # [B, C, H_l, W_l] x L
    levels = []
    for x, proj in zip(enc, m["decoder_input_proj"]):
        y = conv_bn(x, proj[0]["weight"], proj[1], eps=cfg.batch_norm_eps)         # [B, d, H_l, W_l]
        levels.append(y.reshape(B, y.shape[1], -1).transpose(0, 2, 1))             # [B, H_l*W_l, d]
    spatial_shapes = [tuple(x.shape[2:]) for x in enc]
    memory = np.concatenate(levels, axis=1)                                         # [B, Nv, d]
    target, ref, _ = select_queries(memory, spatial_shapes, m, cfg.num_queries, cfg.layer_norm_eps, trace,
                                    cfg.anchor_image_size, cfg.learn_initial_query)
    logits, boxes = decoder(target, ref, memory, spatial_shapes, m["decoder"], cfg, trace)
    if trace is not None:
        trace.update({f"backbone.{l}": f for l, f in enumerate(feats)})
        trace.update({f"encoder.output.{l}": e for l, e in enumerate(enc)})
        trace.update({"memory": memory, "logits": logits, "pred_boxes": boxes})
    return logits, boxes


@dataclass(frozen=True)
class DetectionOutput:
    logits: np.ndarray          # [B, Nq, NC] class logits (sigmoid gives the scores)
    pred_boxes: np.ndarray      # [B, Nq, 4] (cx, cy, w, h), normalised to [0, 1] by the input's width and height


@dataclass(frozen=True)
class Model:
    """A loaded detector: its Config, its params tree and the sampling method. Call it on pixel values."""
    config: Config
    params: dict
    source: str = ""
    input_size: tuple = None    # (H, W) the checkpoint was trained at (its preprocessor_config.json); None: not said

    def __call__(self, pixel_values):
        logits, boxes = forward(self.params, self.config, _check_pixels(pixel_values))
        return DetectionOutput(logits, boxes)

    def trace(self, pixel_values):
        """Every intermediate of one forward pass, by name (the list is in `forward`'s docstring)."""
        stages = {}
        forward(self.params, self.config, _check_pixels(pixel_values), trace=stages)
        return stages

    def astype(self, dtype):
        """The same model computing in dtype: np.float32 (as the checkpoints) or np.float64 (to measure rounding error:
        every stage then runs in float64, since every primitive keeps the dtype it is given)."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"a Model computes in float32 or float64, not {dtype}")
        return replace(self, params=params_astype(self.params, dtype))

    @property
    def method(self):
        return self.config.method

    @property
    def id2label(self):
        return self.config.label_names


def params_astype(tree, dtype):
    """The params tree with every floating-point array cast to dtype (other leaves and None kept)."""
    if isinstance(tree, dict):
        return {k: params_astype(v, dtype) for k, v in tree.items()}
    if isinstance(tree, list):
        return [params_astype(v, dtype) for v in tree]
    return tree if tree is None or tree.dtype.kind != "f" else tree.astype(dtype)


def _check_pixels(x):
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"pixel_values must be [B, 3, H, W], got shape {list(x.shape)}")
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"pixel_values must be float32 (as the reference) or float64, got {x.dtype}")
    return x

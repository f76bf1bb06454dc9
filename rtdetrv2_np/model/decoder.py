"""The RT-DETRv2 decoder: 3-6 layers of self-attention, multi-scale deformable cross-attention and FFN, each layer
refining the boxes of the previous one.

Sources (numbered as in the package docstring, rtdetrv2_np/__init__.py, which also defines the shape letters):
    [1] §4.1: the Transformer decoder with auxiliary prediction heads.
    [2] §4.1 Eq. (3): the deformable cross-attention (deformable_attention.py); §4.2 and App. A.4, iterative
        bounding box refinement: b_i = sigmoid(Delta_i + sigmoid^-1(b_{i-1})).
    [3] §2.1: distinct points per level, discrete sampling.
    [4] rtdetrv2_pytorch/src/zoo/rtdetr/rtdetrv2_decoder.py (`TransformerDecoderLayer`, `TransformerDecoder`,
        `RTDETRTransformerv2`): the official counterpart.
    [5] models/rt_detr_v2/modeling_rt_detr_v2.py (`RTDetrV2DecoderLayer`, `RTDetrV2Decoder`), whose parameter
        names we keep.

One layer (post-norm, [5] RTDetrV2DecoderLayer.forward), with pos = query_pos_head(b) (MLP 4 -> 2d -> d):
    x = LN1(x + SelfAttn(q = k = x + pos, v = x))
    x = LN2(x + MSDeformAttn(query = x + pos, reference = b, value = memory))
    x = LN3(x + fc2(ReLU(fc1(x))))
    b' = sigmoid(bbox_embed(x) + inverse_sigmoid(b));  logits = class_embed(x)

RT-DETR v1 [1] has the same decoder ([5] v2 reuses models/rt_detr/modeling_rt_detr.py's `RTDetrDecoderLayer` and
swaps only `encoder_attn`); cfg.version = 1 selects v1's cross-attention (deformable_attention.py).

eval_idx: the official r50vd_m evaluates only layers 0..2 of its 6 ([4] `eval_idx`, config decoder_eval_idx = 2)
and reports layer 2's boxes and logits. transformers has no eval_idx: it runs every layer and reports the last
one, so a transformers r50vd_m gives another answer than the official one. decoder_eval_idx = -1 (the default and
what a hub config.json gives) runs every layer, as transformers does.
"""


from .deformable_attention import multiscale_deformable_attention
from .nn import activation_, inverse_sigmoid, layer_norm, linear, mlp, multi_head_attention, sigmoid


def decoder_layer(x, pos, boxes, memory, spatial_shapes, p, cfg):
    """One decoder layer. x [B, Nq, d], pos [B, Nq, d], boxes [B, Nq, 4], memory [B, Nv, d] -> (x, loc, weights).

    loc [B, Nq, M, K, 2] and weights [B, Nq, M, K] are the deformable attention's sampling locations and attention
    weights, returned for inspection.
    """
    eps = cfg.layer_norm_eps
    q = x + pos
    x = layer_norm(x + multi_head_attention(q, x, p["self_attn"], cfg.decoder_attention_heads),
                   p["self_attn_layer_norm"], eps)                                  # [B, Nq, d]
    attn, loc, weights = multiscale_deformable_attention(
        p["encoder_attn"], x + pos, boxes, memory, spatial_shapes, cfg.decoder_attention_heads, cfg.n_points,
        cfg.decoder_offset_scale, cfg.method, cfg.version)                          # [B, Nq, d]
    x = layer_norm(x + attn, p["encoder_attn_layer_norm"], eps)
    h = activation_(linear(x, p["fc1"]), cfg.decoder_activation_function)          # [B, Nq, F]
    x = layer_norm(x + linear(h, p["fc2"]), p["final_layer_norm"], eps)            # [B, Nq, d]
    return x, loc, weights


def decoder(target, reference_boxes, memory, spatial_shapes, p, cfg, trace=None):
    """Run the decoder layers 0..eval_idx. target [B, Nq, d], reference_boxes [B, Nq, 4], memory [B, Nv, d].

    p is params["model"]["decoder"]. Returns (logits [B, Nq, NC], boxes [B, Nq, 4]) of the last layer run.
    If `trace` is a dict, layer i stores "decoder.{i}.hidden", ".boxes", ".logits", ".sampling_locations",
    ".attention_weights" in it.
    """
    x, boxes = target, reference_boxes
    for i in range(cfg.num_decoder_layers_used):
        pos = mlp(boxes, p["query_pos_head"]["layers"])                             # [B, Nq, d]
        x, loc, weights = decoder_layer(x, pos, boxes, memory, spatial_shapes, p["layers"][i], cfg)
        # iterative box refinement ([2] App. A.4): a residual in logit space on the previous boxes
        boxes = sigmoid(mlp(x, p["bbox_embed"][i]["layers"]) + inverse_sigmoid(boxes))  # [B, Nq, 4]
        logits = linear(x, p["class_embed"][i])                                     # [B, Nq, NC]
        if trace is not None:
            trace.update({f"decoder.{i}.hidden": x, f"decoder.{i}.boxes": boxes, f"decoder.{i}.logits": logits,
                          f"decoder.{i}.sampling_locations": loc, f"decoder.{i}.attention_weights": weights})
    return logits, boxes

"""Uncertainty-minimal query selection's inference path: pick the 300 best encoder positions as decoder queries.

Sources (numbered as in the package docstring, rtdetrv2_np/__init__.py, which also defines the shape letters):
    [1] §4.3 "Uncertainty-minimal Query Selection": at inference the top-Nq encoder features by classification
        score initialise the object queries.
    [2] §4.2 and App. A.4, "two-stage Deformable DETR": every encoder position is a proposal whose box is
        predicted relative to an anchor of size 0.05 * 2^l on level l.
    [4] rtdetrv2_pytorch/src/zoo/rtdetr/rtdetrv2_decoder.py (`_generate_anchors`, `_get_decoder_input`,
        `_select_topk`): the official counterpart.
    [5] models/rt_detr_v2/modeling_rt_detr_v2.py (`RTDetrV2Model.generate_anchors`, `RTDetrV2Model.forward`),
        whose parameter names we keep.

Steps (per image; Nv = sum of H_l * W_l over the L levels):
    anchors, valid = generate_anchors(shapes)            [Nv, 4] logits of (cx, cy, w, h), [Nv] bool
    out = LayerNorm(Linear(valid * memory))               the "enc_output" projection; invalid positions see 0
    enc_logits = enc_score_head(out)                      [B, Nv, NC] class logits
    enc_coord_logits = enc_bbox_head(out) + anchors       [B, Nv, 4]  box logits, refined from the anchor
    index = top-Nq of max_c enc_logits                    ranked by the raw max class logit, descending
    target = out[index]                                   initial query content (config.learn_initial_query:
                                                          a learned embedding instead, model.weight_embedding)
    reference_boxes = sigmoid(enc_coord_logits[index])    initial reference boxes
Only this local copy of memory is masked; the decoder's cross-attention reads the unmasked memory.
"""

import numpy as np

from .nn import layer_norm, linear, mlp, sigmoid, topk

ANCHOR_SIZE = 0.05        # grid_size: anchor w = h = 0.05 * 2^l on level l ([2] App. A.4; [5] generate_anchors)
VALID_EPS = 0.01          # anchors with any coordinate outside (0.01, 0.99) are invalid ([4] _generate_anchors eps)


def generate_anchors(spatial_shapes, dtype=np.float32):
    """Anchor boxes in logit space for every position of every level, and their validity.

    spatial_shapes: list of (H_l, W_l). Returns anchors [Nv, 4] of `dtype` = logit(cx, cy, w, h) with
    cx = (x + 0.5) / W_l, cy = (y + 0.5) / H_l, w = h = 0.05 * 2^l (row-major per level, levels fine to coarse),
    and the dtype's largest finite number where not valid (transformers' fill, torch.finfo(dtype).max; the
    official code uses +inf; either way sigmoid gives exactly 1, a (1, 1, 1, 1) box); valid [Nv] bool. All
    arithmetic in `dtype` (float32, as the reference) in transformers' order.
    """
    boxes = []
    for l, (H, W) in enumerate(spatial_shapes):
        y, x = np.meshgrid(np.arange(H, dtype=dtype), np.arange(W, dtype=dtype), indexing="ij")   # [H_l, W_l]
        cx = (x + 0.5) / W
        cy = (y + 0.5) / H
        wh = np.full_like(cx, ANCHOR_SIZE * 2 ** l)
        boxes.append(np.stack([cx, cy, wh, wh], axis=-1).reshape(H * W, 4))       # [H_l*W_l, 4]
    a = np.concatenate(boxes, axis=0)                                             # [Nv, 4]
    valid = np.all((a > VALID_EPS) & (a < 1 - VALID_EPS), axis=-1)               # [Nv]
    logits = np.log(a / (1 - a))                                                  # [Nv, 4]
    return np.where(valid[:, None], logits, np.finfo(dtype).max), valid


def anchor_grid(anchor_image_size, strides=(8, 16, 32)):
    """The level shapes whose anchors transformers fixes when config.anchor_image_size = (H, W) is set.

    [5] RTDetrV2Model.__init__ precomputes anchors once for (int(H / s), int(W / s)) at each of
    config.feat_strides (8, 16, 32), and forward uses them for every input instead of the input's own grid (the
    official code does the same with eval_spatial_size, [4] `_generate_anchors` / `_get_decoder_input`).
    """
    H, W = anchor_image_size
    return [(int(H / s), int(W / s)) for s in strides]


def select_queries(memory, spatial_shapes, p, num_queries, eps=1e-5, trace=None, anchor_image_size=None,
                   learn_initial_query=False):
    """Query selection. memory [B, Nv, C] -> (target [B, Nq, C], reference_boxes [B, Nq, 4], index [B, Nq]).

    p is params["model"] (enc_output, enc_score_head, enc_bbox_head; weight_embedding if learn_initial_query).
    anchor_image_size: config.anchor_image_size; when set, the anchors are those of that input size (anchor_grid),
    as in transformers: an input with as many positions Nv but another grid gets them too, one with another Nv is
    refused (transformers fails to broadcast). learn_initial_query: the initial target is the learned
    weight_embedding [Nq, C], the same for every image ([4] `tgt_embed.weight.unsqueeze(0).tile([B, 1, 1])`;
    [5] means the same but calls `.tile` on the Embedding module, an AttributeError in transformers 5.24).
    If `trace` is a dict the intermediates go in it under "anchors", "valid_mask", "enc_logits",
    "enc_coord_logits", "topk_index", "reference_boxes", "target".
    """
    B, Nv, C = memory.shape
    grid = spatial_shapes if anchor_image_size is None else anchor_grid(anchor_image_size)
    if sum(h * w for h, w in grid) != Nv:
        raise ValueError(f"config.anchor_image_size {list(anchor_image_size)} fixes the anchors to "
                         f"{sum(h * w for h, w in grid)} positions, this input has {Nv}: give an input of "
                         f"{anchor_image_size[0]}x{anchor_image_size[1]} pixels")
    if num_queries > Nv:
        raise ValueError(f"the model selects {num_queries} queries (config.num_queries) from {Nv} encoder "
                         f"positions: the input is too small for it")
    anchors, valid = generate_anchors(grid, memory.dtype)                         # [Nv, 4], [Nv]
    masked = memory * valid[None, :, None].astype(memory.dtype)                   # [B, Nv, C]
    out = layer_norm(linear(masked, p["enc_output"][0]), p["enc_output"][1], eps)  # [B, Nv, C]
    enc_logits = linear(out, p["enc_score_head"])                                 # [B, Nv, NC]
    enc_coord_logits = mlp(out, p["enc_bbox_head"]["layers"]) + anchors           # [B, Nv, 4]
    # ranked by a stable sort: equal scores keep index order, where torch.topk's order is unspecified; the
    # decoder treats its queries as a set (it is permutation-equivariant), so only the set matters
    index = topk(enc_logits.max(axis=-1), num_queries)                            # [B, Nq]
    if learn_initial_query:
        w = p["weight_embedding"]["weight"].astype(memory.dtype, copy=False)      # [Nq, C]
        target = np.repeat(w[None], B, axis=0)                                    # [B, Nq, C]
    else:
        target = np.take_along_axis(out, index[:, :, None], axis=1)               # [B, Nq, C]
    reference_boxes = sigmoid(np.take_along_axis(enc_coord_logits, index[:, :, None], axis=1))  # [B, Nq, 4]
    if trace is not None:
        trace.update({"anchors": anchors, "valid_mask": valid, "enc_logits": enc_logits,
                      "enc_coord_logits": enc_coord_logits, "topk_index": index,
                      "reference_boxes": reference_boxes, "target": target})
    return target, reference_boxes, index

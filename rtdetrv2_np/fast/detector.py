"""The fast forward pass: the reference's stages (model/detector.forward) on prepared weights and fast kernels.

Every function here mirrors one reference function (named in its docstring) and computes the same thing up to
float32 rounding; the differences are in how: maps are channel-major [C, B, H, W] (fast/conv.py), weights come
folded from fast/prepare.py, and a few steps are reordered where the algebra allows it (each is stated where it
happens). Shape letters: the package glossary (rtdetrv2_np/__init__.py).
"""

import threading
from dataclasses import dataclass, field

import numpy as np

from ..model.config import Config
from ..model.detector import DetectionOutput, _check_pixels
from ..model.hybrid_encoder import sincos_position_embedding
from ..model.nn import avg_pool2d_ceil, inverse_sigmoid, sigmoid, topk
from ..model.query_selection import anchor_grid, generate_anchors
from .attention import deformable_attention, encoder_layer, linear, self_attention
from .conv import conv1x1, conv_im2col, conv_row_taps, conv_winograd
from .ops import activation_, arena, chunks, epilogue_parallel, layer_norm_
from .prepare import prepare


def conv(x, spec, residual=None, after=None):
    """One prepared convolution (prepare.conv_spec) on x [C_in, B, H, W], with the kernel chosen at load."""
    if spec["kernel"] == "1x1":
        return conv1x1(x, spec["w"], spec["b"], spec["act"], residual, after)
    if spec["kernel"] == "winograd":
        return conv_winograd(x, spec["U"], spec["b"], spec["m"], spec["act"], residual, after, spec["padding"])
    if spec["kernel"] == "rowtaps":
        return conv_row_taps(x, spec["w"], spec["b"], spec["act"], residual, after)
    return conv_im2col(x, spec["w"], spec["b"], spec["stride"], spec["padding"], spec["act"], residual, after)


POOL_BLOCK = 1 << 17     # input values per channel chunk of max_pool_3x3_s2 (512 KB): its row maxima stay in cache
                         # (measured on the r18vd stem's 64 x 320 x 320 output: 21.6 ms in one piece, 10.9-11.2 ms
                         # in chunks of 64-128 K values, 15.8 ms in 1 M)


def max_pool_3x3_s2(x):
    """model/nn.max_pool2d(kernel 3, stride 2, padding 1), separably, unpadded.

    The max of a 3x3 window is the max over its 3 columns of the max over its 3 rows (max is associative): 2 + 2
    np.maximum calls instead of 8. Output row i covers input rows 2i-1, 2i, 2i+1; the padding rows (-1 and, for
    odd H, H) are left out, which is what padding with -inf does: every window holds at least one in-map pixel. In
    chunks of channels (POOL_BLOCK), so the row maxima of a chunk are still in cache when its column maxima read
    them. x [C, B, H, W] -> [C, B, Ho, Wo], Ho = ceil(H / 2).
    """
    C, B, H, W = x.shape
    Ho, Wo = (H + 1) // 2, (W + 1) // 2
    out = np.empty((C, B, Ho, Wo), x.dtype)                                           # [C, B, Ho, Wo]
    for c0, c1 in chunks(0, C, B * H * W, POOL_BLOCK):                               # chunks of channels
        xc = x[c0:c1]
        r = xc[:, :, 0::2].copy()                                                     # rows 2i      [c, B, Ho, W]
        np.maximum(r[:, :, :H // 2], xc[:, :, 1::2], out=r[:, :, :H // 2])            # rows 2i + 1
        np.maximum(r[:, :, 1:], xc[:, :, 1:2 * Ho - 2:2], out=r[:, :, 1:])            # rows 2i - 1
        o = out[c0:c1]
        o[...] = r[..., 0::2]                                                         # columns 2j  [c, B, Ho, Wo]
        np.maximum(o[..., :W // 2], r[..., 1::2], out=o[..., :W // 2])                # columns 2j + 1
        np.maximum(o[..., 1:], r[..., 1:2 * Wo - 2:2], out=o[..., 1:])                # columns 2j - 1
    return out


def avg_pool_2x2(x):
    """model/nn.avg_pool2d_ceil (AvgPool2d(2, 2, ceil_mode=True)) on x [C, B, H, W] -> [C, B, ceil(H/2), ceil(W/2)].

    For even H and W every window is whole: the two rows of each window are added first (whole contiguous rows,
    NumPy's fast loop), then the two columns of that sum, then / 4 -- no padded copy, in chunks of channels as
    max_pool_3x3_s2. The reference adds the four pixels in PyTorch's order ((a + b) + c) + d; here it is
    (a + c) + (b + d), so results may differ in the last bit (tests/test_fast.py). Measured on r50vd's shortcut
    pools (256 x 160 x 160, 512 x 80 x 80, 1024 x 40 x 40): 6.6, 4.5, 1.8 ms against the reference's 21.8, 11.4,
    5.0. Odd sizes go to the reference function.
    """
    C, B, H, W = x.shape
    if H % 2 or W % 2:
        return avg_pool2d_ceil(x)
    out = np.empty((C, B, H // 2, W // 2), x.dtype)                                  # [C, B, H/2, W/2]
    for c0, c1 in chunks(0, C, B * H * W, POOL_BLOCK):                               # (as max_pool_3x3_s2)
        xc = x[c0:c1]
        r = np.add(xc[:, :, 0::2], xc[:, :, 1::2])                                    # [c, B, H/2, W]
        o = np.add(r[..., 0::2], r[..., 1::2], out=out[c0:c1])                        # [c, B, H/2, W/2]
        o /= x.dtype.type(4)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Backbone (model/backbone.py)
# ----------------------------------------------------------------------------------------------------------------

def backbone(x, plan, out_indices):
    """model/backbone.backbone: x [3, B, H, W] -> maps [C_l, B, H_l, W_l] of the stages in out_indices.

    The stem's last convolution is pooled before its bias and ReLU, which then run on a 4x smaller map:
    max_i(relu(v_i + b)) = relu(max_i(v_i) + b) exactly, since v -> relu(v + b) is non-decreasing in float32 too
    (rounding is monotone) and so commutes with max.
    """
    *convs, last = plan["stem"]
    for spec in convs:
        x = conv(x, spec)                                                             # [C, B, H/2, W/2]
    x = conv(x, dict(last, b=None, act=None))                                        # [C_stem, B, H/2, W/2]
    x = max_pool_3x3_s2(x)                                                            # [C_stem, B, H/4, W/4]
    epilogue_parallel(x, last["b"], last["act"])
    features = []
    for s, blocks in enumerate(plan["stages"]):
        for block in blocks:
            x = residual_block(x, block)                                              # [C_s, B, H_s, W_s]
        if s + 1 in out_indices:
            features.append(x)
    return features


def residual_block(x, block):
    """model/backbone.residual_block: ReLU(F(x) + shortcut(x)); the sum and the ReLU run in the last conv's
    epilogue, on each band as it is computed."""
    s = avg_pool_2x2(x) if block["pool"] else x                                      # [C_in, B, H/s, W/s]
    if block["shortcut"] is not None:
        s = conv(s, block["shortcut"])                                               # [C_out, B, H/s, W/s]
    y = x
    for spec in block["convs"][:-1]:
        y = conv(y, spec)
    return conv(y, block["convs"][-1], residual=s)                                   # [C_out, B, H/s, W/s]


# ----------------------------------------------------------------------------------------------------------------
# Hybrid encoder (model/hybrid_encoder.py)
# ----------------------------------------------------------------------------------------------------------------

def tokens_1x1(x, p, out=None):
    """A 1x1 convolution + folded BN computed token-major: x [C_in, B, H, W] -> [B, H*W, C_out] (into out, a
    view whose rows per image are contiguous, if given).

    (W @ X)^T = X^T @ W^T: BLAS reads X transposed, so the result comes out as tokens with no transpose pass
    (model/detector.forward transposes the decoder input projections, model/hybrid_encoder.aifi its input).
    """
    C_in, B, H, W = x.shape
    if out is None:
        out = np.empty((B, H * W, p["w"].shape[0]), x.dtype)                          # [B, H*W, C_out]
    for b in range(B):
        np.matmul(x[:, b].reshape(C_in, H * W).T, p["w"].T, out=out[b])
    out += p["b"]
    return out


def csp(parts, p, upsampled_first=False):
    """model/hybrid_encoder.csp_rep_layer on the concatenation of parts = [first, second] ([C, B, h, w] each).

    conv1 and conv2 run as one GEMM (prepare.csp_spec). upsampled_first: the first part is to be upsampled 2x
    (nearest) before the concatenation, as in the top-down path; then its half of the GEMM runs on the small map
    and its result is added to every pixel of its 2x2 block (nearest upsampling commutes with a 1x1
    convolution), which saves 3/4 of that half's multiplications and the upsampled copy.
    """
    first, second = parts
    C2 = p["b"].shape[0]                                                              # 2 C'
    if upsampled_first:
        _, B, H, W = second.shape
        y = np.matmul(p["w_b"], second.reshape(second.shape[0], -1))                  # [2C', B*H*W]
        small = np.matmul(p["w_a"], first.reshape(first.shape[0], -1))               # [2C', B*H*W/4]
        y4 = y.reshape(C2 * B * (H // 2), 2, W // 2, 2)                              # [C2*B*h, 2, w, 2] view
        s3 = small.reshape(C2 * B * (H // 2), 1, W // 2)                              # [C2*B*h, 1, w]
        y4[..., 0] += s3                  # even columns, both rows of each block; then the odd ones. One 6-D
        y4[..., 1] += s3                  # broadcast add (inner axis of 2) took 4x longer on 256 x 80 x 80
        y = y.reshape(C2, B, H, W)
    else:
        x = np.concatenate([first, second], axis=0)                                   # [2C, B, h, w]
        y = np.matmul(p["w"], x.reshape(x.shape[0], -1)).reshape((C2,) + x.shape[1:])  # [2C', B, h, w]
    epilogue_parallel(y, p["b"], p["act"])
    a, a2 = y[:p["hidden"]], y[p["hidden"]:]                                          # [C', B, h, w] x 2 (views)
    for spec in p["blocks"][:-1]:
        a = conv(a, spec)                                                             # merged RepVGG blocks
    a = conv(a, p["blocks"][-1], after=a2) if p["blocks"] else a + a2                # ... + conv2 branch
    return conv(a, p["conv3"]) if p["conv3"] is not None else a                       # [C, B, h, w]


def hybrid_encoder(features, plan, cfg, cache, trace=None):
    """model/hybrid_encoder.hybrid_encoder: [S3, S4, S5] -> [O3, O4, O5], each [C, B, H_l, W_l]."""
    maps = []
    aifi_levels = cfg.encode_proj_layers if cfg.encoder_layers > 0 else ()
    for l, (x, proj) in enumerate(zip(features, plan["input_proj"])):
        if l in aifi_levels:                                                          # AIFI wants tokens
            y = tokens_1x1(x, proj)                                                   # [B, H*W, C]
            _, B, H, W = x.shape
            if trace is not None:
                trace[f"encoder.input_proj.{l}"] = y.transpose(0, 2, 1).reshape(B, -1, H, W)
        else:
            y = conv1x1(x, proj["w"], proj["b"])                                      # [C, B, H_l, W_l]
            if trace is not None:
                trace[f"encoder.input_proj.{l}"] = y.transpose(1, 0, 2, 3)
        maps.append(y)
    for i, level in enumerate(aifi_levels):
        _, B, H, W = features[level].shape
        tokens = maps[level]                                                          # [B, H*W, C]
        C = tokens.shape[2]
        pos = None
        if cfg.eval_size is None:                                                     # as model/hybrid_encoder.aifi
            key = ("pos", H, W, C)
            if key not in cache:
                cache[key] = sincos_position_embedding(H, W, C, cfg.positional_encoding_temperature, tokens.dtype)
            pos = cache[key]                                                          # [H*W, C]
        for layer in plan["aifi"][i]:
            tokens = encoder_layer(tokens, pos, layer, cfg.encoder_activation_function, cfg.layer_norm_eps)
        maps[level] = np.ascontiguousarray(tokens.transpose(2, 0, 1)).reshape(C, B, H, W)   # [C, B, H, W]
        if trace is not None:
            trace["encoder.aifi"] = maps[level].transpose(1, 0, 2, 3)
    # CCFM (CCFF in [1] v3: §4.2, Fig. 5), as model/hybrid_encoder.ccfm
    n = len(maps)
    inner = [maps[-1]]
    for i in range(n - 1):
        lateral = conv(inner[-1], plan["lateral"][i])                                 # [C, B, H_l+1, W_l+1]
        inner[-1] = lateral
        inner.append(csp([lateral, maps[n - 2 - i]], plan["fpn"][i], upsampled_first=True))   # [C, B, H_l, W_l]
    inner.reverse()
    outs = [inner[0]]
    for i in range(n - 1):
        down = conv(outs[-1], plan["down"][i])                                        # [C, B, H_l+1, W_l+1]
        outs.append(csp([down, inner[i + 1]], plan["pan"][i]))
    return outs


# ----------------------------------------------------------------------------------------------------------------
# Query selection (model/query_selection.py) and decoder (model/decoder.py)
# ----------------------------------------------------------------------------------------------------------------

def mlp(x, layers):
    """model/nn.mlp with prepared layers: Linear, ReLU between (in place), Linear."""
    for i, p in enumerate(layers):
        x = linear(x, p)
        if i < len(layers) - 1:
            np.maximum(x, 0, out=x)
    return x


def select_queries(projected, spatial_shapes, plan, cfg, cache, trace=None):
    """model/query_selection.select_queries -> (target [B, Nq, C], reference_boxes [B, Nq, 4]), from
    projected [B, Nv, C] = enc_output's linear layer applied to the memory (memory_projection).

    Two shortcuts, both exact: the reference zeroes the memory rows of invalid anchors before enc_output, whose
    output there is then exactly its bias (0 * w sums to 0); here enc_output runs on the memory as it is and those
    rows are set to the bias. And the box head (a 3-layer MLP) runs on the Nq selected rows only, not on all Nv:
    each row's result depends on that row alone. (Its output for every row is computed only for `trace`.)
    """
    B, Nv, C = projected.shape
    grid = spatial_shapes if cfg.anchor_image_size is None else anchor_grid(cfg.anchor_image_size)
    if sum(h * w for h, w in grid) != Nv:
        raise ValueError(f"config.anchor_image_size {list(cfg.anchor_image_size)} fixes the anchors to "
                         f"{sum(h * w for h, w in grid)} positions, this input has {Nv}: give an input of "
                         f"{cfg.anchor_image_size[0]}x{cfg.anchor_image_size[1]} pixels")
    if cfg.num_queries > Nv:
        raise ValueError(f"the model selects {cfg.num_queries} queries (config.num_queries) from {Nv} encoder "
                         f"positions: the input is too small for it")
    key = ("anchors", tuple(map(tuple, grid)), projected.dtype.str)
    if key not in cache:
        cache[key] = generate_anchors(grid, projected.dtype)
    anchors, valid = cache[key]                                                       # [Nv, 4], [Nv]
    out = projected                                                                   # [B, Nv, C]
    out[:, ~valid] = plan["enc_output"]["b"]
    out = layer_norm_(out, plan["enc_output_ln"], cfg.layer_norm_eps)                  # [B, Nv, C]
    enc_logits = linear(out, plan["enc_score_head"])                                  # [B, Nv, NC]
    index = topk(enc_logits.max(axis=-1), cfg.num_queries)                           # [B, Nq]
    picked = np.take_along_axis(out, index[:, :, None], axis=1)                       # [B, Nq, C]
    coord = mlp(picked, plan["enc_bbox_head"]) + anchors[index]                       # [B, Nq, 4]
    if cfg.learn_initial_query:
        w = plan["weight_embedding"].astype(projected.dtype, copy=False)              # [Nq, C]
        target = np.repeat(w[None], B, axis=0)                                        # [B, Nq, C]
    else:
        target = picked
    reference_boxes = sigmoid(coord)                                                  # [B, Nq, 4]
    if trace is not None:
        trace.update({"anchors": anchors, "valid_mask": valid, "enc_logits": enc_logits,
                      "enc_coord_logits": mlp(out, plan["enc_bbox_head"]) + anchors, "topk_index": index,
                      "reference_boxes": reference_boxes, "target": target})
    return target, reference_boxes


def decoder(target, reference_boxes, value_of, spatial_shapes, plan, cfg, trace=None):
    """model/decoder.decoder (layers 0..eval_idx) -> (logits [B, Nq, NC], boxes [B, Nq, 4]).

    value_of(i): value_proj(memory) of layer i, [B, Nv, C] (memory_projection). The class head runs only where its
    output is used: after the last layer run (and every layer for `trace`).
    """
    M = cfg.decoder_attention_heads
    eps = cfg.layer_norm_eps
    x, boxes = target, reference_boxes
    layers = plan["layers"]
    for i, p in enumerate(layers):
        pos = mlp(boxes, plan["query_pos_head"])                                      # [B, Nq, C]
        q = x + pos
        x = layer_norm_(x + self_attention(q, x, p["self_attn"]), p["ln1"], eps)       # [B, Nq, C]
        value = value_of(i)                                                           # [B, Nv, C]
        B, Nv, C = value.shape
        value = value.reshape(B, Nv, M, C // M)                                       # [B, Nv, M, D]
        attn, loc, weights = deformable_attention(p, x + pos, boxes, value, spatial_shapes, M, cfg.n_points,
                                                  cfg.decoder_offset_scale, cfg.method)
        x = layer_norm_(x + attn, p["ln2"], eps)
        h = activation_(linear(x, p["fc1"]), cfg.decoder_activation_function)       # [B, Nq, F]
        x = layer_norm_(x + linear(h, p["fc2"]), p["ln3"], eps)                        # [B, Nq, C]
        boxes = sigmoid(mlp(x, p["bbox_embed"]) + inverse_sigmoid(boxes))             # [B, Nq, 4]
        if trace is not None or i == len(layers) - 1:
            logits = linear(x, p["class_embed"])                                      # [B, Nq, NC]
        if trace is not None:
            trace.update({f"decoder.{i}.hidden": x, f"decoder.{i}.boxes": boxes, f"decoder.{i}.logits": logits,
                          f"decoder.{i}.sampling_locations": loc, f"decoder.{i}.attention_weights": weights})
    return logits, boxes


# ----------------------------------------------------------------------------------------------------------------
# The whole detector (model/detector.forward)
# ----------------------------------------------------------------------------------------------------------------

def forward(plan, cfg, pixel_values, cache, trace=None):
    """model/detector.forward on a prepared plan. pixel_values float32 [B, 3, H, W] -> (logits, boxes).

    cache: a dict for tables that depend only on the input size (anchors, position embedding). `trace`: as in
    model/detector.forward, the same names, shapes and layouts ([B, C, H, W] maps).
    """
    B, _, H, W = pixel_values.shape
    if H % 32 or W % 32:
        raise ValueError(f"input height and width must be multiples of 32 (the coarsest stride), got {H}x{W}")
    x = np.ascontiguousarray(pixel_values.transpose(1, 0, 2, 3))                       # [3, B, H, W]
    feats = backbone(x, plan["backbone"], cfg.out_indices)                            # [C_l, B, H_l, W_l] x L
    enc = hybrid_encoder(feats, plan, cfg, cache, trace)                              # [C, B, H_l, W_l] x L
    spatial_shapes = [tuple(e.shape[2:]) for e in enc]
    projected = memory_projection(enc, plan["memory_proj"][0])                        # [B, Nv, d]
    target, ref = select_queries(projected, spatial_shapes, plan, cfg, cache, trace)
    del projected                                                                     # freed before the values

    def value_of(i):                                                                  # decoder layer i's value
        return memory_projection(enc, plan["memory_proj"][1 + i])                     # [B, Nv, d]
    logits, boxes = decoder(target, ref, value_of, spatial_shapes, plan["decoder"], cfg, trace)
    if trace is not None:
        trace.update({f"backbone.{l}": f.transpose(1, 0, 2, 3) for l, f in enumerate(feats)})
        trace.update({f"encoder.output.{l}": e.transpose(1, 0, 2, 3) for l, e in enumerate(enc)})
        memory = memory_projection(enc, plan["decoder_input_proj"])                   # [B, Nv, d], for the trace
        trace.update({"memory": memory, "logits": logits, "pred_boxes": boxes})
    return logits, boxes


def memory_projection(enc, levels):
    """A linear map of the memory from the encoder maps: tokens_1x1 of every level into one [B, Nv, d] array. With
    levels = plan["decoder_input_proj"] that is the memory itself (model/detector.forward); with an entry of
    plan["memory_proj"] it is enc_output's input or a decoder layer's value, decoder_input_proj folded in
    (prepare.memory_projections_spec), and the memory is never formed. enc [C_l, B, H_l, W_l] per level. Each is
    computed where it is used, so only one is held at a time.
    """
    B = enc[0].shape[1]
    Nv = sum(e.shape[2] * e.shape[3] for e in enc)
    out = np.empty((B, Nv, levels[0]["w"].shape[0]), enc[0].dtype)                   # [B, Nv, d]
    start = 0
    for e, p in zip(enc, levels):
        n = e.shape[2] * e.shape[3]
        tokens_1x1(e, p, out[:, start:start + n])                                     # [B, H_l*W_l, d]
        start += n
    return out


@dataclass(frozen=True)
class FastModel:
    """A detector on the fast path, with the reference Model's interface (__call__, trace, config, method,
    id2label, input_size, source). Make one with fast_model(model) or load_model(..., fast=True).

    Its weights are prepared (fast/prepare.py) on the first call, not at load: loading stays as quick as the
    reference's, and the first forward pass carries the one-off cost (~0.1-0.3 s for r18vd). Then the params tree
    is released and only the prepared plan is kept. `state` holds the params (until then), the plan, tables that
    depend only on the input size, the kernels' work buffers (per thread, kept between calls: ops.arena) and a
    lock; copies made with dataclasses.replace share it. float32 only: pixel values of another float dtype are
    computed in float32 (the weights are float32).
    """
    config: Config
    state: dict = field(repr=False, compare=False)
    source: str = ""
    input_size: tuple = None

    @property
    def plan(self):
        """The prepared weights (fast/prepare.prepare), made on first use."""
        with self.state["lock"]:
            if self.state["plan"] is None:
                self.state["plan"] = prepare(self.state["params"], self.config)
                del self.state["params"]
            return self.state["plan"]

    def __call__(self, pixel_values):
        with arena(self.state["scratch"]):
            logits, boxes = forward(self.plan, self.config, _pixels(pixel_values), self.state["cache"])
        return DetectionOutput(logits, boxes)

    def trace(self, pixel_values):
        """Every intermediate of one forward pass, by the names and layouts of the reference Model.trace."""
        stages = {}
        with arena(self.state["scratch"]):
            forward(self.plan, self.config, _pixels(pixel_values), self.state["cache"], trace=stages)
        return stages

    @property
    def method(self):
        return self.config.method

    @property
    def id2label(self):
        return self.config.label_names


def fast_model(model):
    """The FastModel of a reference Model: same config, weights, source and input size (prepared on first use)."""
    state = {"params": model.params, "plan": None, "cache": {}, "lock": threading.Lock(),
             "scratch": threading.local()}
    return FastModel(model.config, state, model.source, model.input_size)


def _pixels(x):
    x = _check_pixels(x)
    return x if x.dtype == np.float32 else x.astype(np.float32)

"""The efficient hybrid encoder of RT-DETR ([1] §4.2): AIFI on the stride-32 map, then CCFF fusion.

Sources (numbered as in the package docstring, rtdetrv2_np/__init__.py, which also defines the shape letters):
    [1] §4.2 "Efficient Hybrid Encoder": Eq. (1) (AIFI, then CCFF), Fig. 5 the fusion block. [1] v3 calls the
        fusion CCFF, v1 and v2 CCFM, the name this file keeps (ccfm); the code of [4] and [5] has no name for it
        (lateral/fpn/downsample/pan layers).
    [4] rtdetrv2_pytorch/src/zoo/rtdetr/hybrid_encoder.py (`HybridEncoder`, `CSPRepLayer`, `RepVggBlock`,
        `TransformerEncoderLayer`, `build_2d_sincos_position_embedding`): the official counterpart.
    [5] models/rt_detr_v2/modeling_rt_detr_v2.py (`RTDetrV2HybridEncoder`, `RTDetrV2AIFILayer`,
        `RTDetrV2CSPRepLayer`, `build_2d_sinusoidal_position_embedding`), whose parameter names we keep.
    [8] the encoder layer (§3.1) and the sinusoidal position encoding (§3.5).
    [9] RepVGG §3.2: a 3x3 and a 1x1 branch, summed (the identity branch of RepVGG is not used here).

Data flow ([1] Eq. (1)):
    P3, P4, P5 = input_proj(S3, S4, S5)               1x1 conv + BN each, to C channels
    F5 = Reshape(AIFI(Flatten(P5)))                    one post-norm transformer layer on the coarsest map only
    O3, O4, O5 = CCFF(P3, P4, F5)                      top-down (FPN) then bottom-up (PAN) fusion

Deviation noted: the position embedding follows transformers 5.24 ([5] build_2d_sinusoidal_position_embedding),
which lays it out row-major for any H, W: token y * W + x gets [sin(y w) | cos(y w) | sin(x w) | cos(x w)]. The
official code ([4] build_2d_sincos_position_embedding, and transformers 4.x, which copies it) builds
meshgrid(arange(W), arange(H), indexing='ij') and flattens it, so token k gets (k // H, k % H) in place of (y, x):
the two agree on square maps such as 640x640's 20x20 and differ on any other.
"""

import numpy as np

from .nn import activation_, conv_bn, conv_norm, layer_norm, linear, multi_head_attention, upsample_nearest2x


# ----------------------------------------------------------------------------------------------------------------
# AIFI: attention-based intra-scale feature interaction ([1] §4.2)
# ----------------------------------------------------------------------------------------------------------------

def sincos_position_embedding(height, width, dim, temperature=10000.0, dtype=np.float32):
    """2-D sin-cos position embedding [H*W, C], row-major tokens, channels [sin(y w) | cos(y w) | sin(x w) | cos(x w)].

    w_i = 1 / temperature^(i / (C/4)), i = 0..C/4-1 ([8] §3.5 applied to each axis; temperature 10000 from
    config.positional_encoding_temperature). Computed in float64 then rounded to `dtype` (the data's), as
    transformers 5.24 does for float32 (build_2d_sinusoidal_position_embedding); a constant table, not on the
    data path.
    """
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (np.arange(pos_dim, dtype=np.float64) / pos_dim)  # [C/4]
    y, x = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    ey = y.reshape(-1, 1) * omega                                                 # [H*W, C/4]
    ex = x.reshape(-1, 1) * omega                                                 # [H*W, C/4]
    return np.concatenate([np.sin(ey), np.cos(ey), np.sin(ex), np.cos(ex)], axis=1).astype(dtype)  # [H*W, C]


def encoder_layer(x, pos, p, num_heads, act="gelu", eps=1e-5):
    """Post-norm transformer encoder layer ([8] §3.1), as RTDetrV2EncoderLayer with normalize_before=False.

    x [B, N, C], pos [N, C] or None (added to queries and keys, not values). GELU is the exact erf form.
        x = LN1(x + MHA(q = k = x + pos, v = x))
        x = LN2(x + fc2(act(fc1(x))))
    """
    qk = x if pos is None else x + pos
    x = layer_norm(x + multi_head_attention(qk, x, p["self_attn"], num_heads), p["self_attn_layer_norm"], eps)
    h = activation_(linear(x, p["fc1"]), act)                                     # [B, N, F]
    return layer_norm(x + linear(h, p["fc2"]), p["final_layer_norm"], eps)        # [B, N, C]


def aifi(x, p, cfg):
    """AIFI ([1] Eq. (1)): flatten the map to tokens, run the encoder layer(s), reshape back. [B, C, H, W] -> same."""
    B, C, H, W = x.shape
    tokens = x.reshape(B, C, H * W).transpose(0, 2, 1)                            # [B, H*W, C]
    # config.eval_size set: transformers drops the embedding at inference (RTDetrV2AIFILayer.forward: pos_embed =
    # None unless training), and so do we. The official code instead adds an embedding precomputed for the map
    # size eval_spatial_size // stride ([4] hybrid_encoder.py HybridEncoder.__init__ / forward, buffer
    # pos_embed{idx}), whatever the input size; no hub config sets eval_size.
    pos = None if cfg.eval_size is not None else \
        sincos_position_embedding(H, W, C, cfg.positional_encoding_temperature, x.dtype)   # [H*W, C]
    for layer in p["layers"]:
        tokens = encoder_layer(tokens, pos, layer, cfg.encoder_attention_heads, cfg.encoder_activation_function,
                               cfg.layer_norm_eps)
    return tokens.transpose(0, 2, 1).reshape(B, C, H, W)                          # [B, C, H, W]


# ----------------------------------------------------------------------------------------------------------------
# CCFF (CCFM in [1] v1-v2): CNN-based cross-scale feature fusion ([1] §4.2; Fig. 5 the fusion block)
# ----------------------------------------------------------------------------------------------------------------

def rep_vgg_block(x, p, act, eps=1e-5):
    """RepVGG block [9] without identity branch: act(BN(conv3x3(x)) + BN(conv1x1(x))). [B, C', H, W] -> same."""
    y = conv_norm(x, p["conv1"], eps=eps)                                         # [B, C', H, W]
    y += conv_norm(x, p["conv2"], eps=eps)
    return activation_(y, act)


def csp_rep_layer(x, p, act, eps=1e-5):
    """CSPRepLayer, the fusion block of [1] §4.2: two 1x1 branches, one through 3 RepVGG blocks, summed.

    x [B, 2C, H, W] -> [B, C, H, W]. Width inside C' = C * hidden_expansion (0.5 for r18/r34/r50vd_m); when
    C' != C a last 1x1 conv3 restores C, else conv3 is the identity (r50vd, r101vd have no conv3 weights).
    """
    a = conv_norm(x, p["conv1"], act=act, eps=eps)                                # [B, C', H, W]
    for block in p["bottlenecks"]:
        a = rep_vgg_block(a, block, act, eps)
    a += conv_norm(x, p["conv2"], act=act, eps=eps)                               # [B, C', H, W]
    return conv_norm(a, p["conv3"], act=act, eps=eps) if "conv3" in p else a      # [B, C, H, W]


def ccfm(maps, p, act="silu", eps=1e-5):
    """Top-down then bottom-up fusion ([1] §4.2; [5] RTDetrV2HybridEncoder.forward). maps = [P3, P4, F5].

    Top-down, for the coarse-to-fine pairs (F5, P4), then (I4, P3):
        L = lateral_conv(coarse)                        1x1 conv + BN + SiLU; L replaces the coarse map
        I = fpn_block(concat[upsample2x(L), fine])      the upsampled map comes first in the concat
    Bottom-up, from O3 = I3:
        O = pan_block(concat[downsample_conv(O_finer), L_same_level])   3x3 stride-2 conv; uses L, not I
    Returns [O3, O4, O5], each [B, C, H_l, W_l]. eps: config.batch_norm_eps, which transformers gives every
    BatchNorm here (RTDetrV2ConvNormLayer).
    """
    n = len(maps)
    inner = [maps[-1]]                                                           # coarsest first
    for i in range(n - 1):
        lateral = conv_norm(inner[-1], p["lateral_convs"][i], act=act, eps=eps)  # [B, C, H_{l+1}, W_{l+1}]
        inner[-1] = lateral
        fused = np.concatenate([upsample_nearest2x(lateral), maps[n - 2 - i]], axis=1)  # [B, 2C, H_l, W_l]
        inner.append(csp_rep_layer(fused, p["fpn_blocks"][i], act, eps))         # [B, C, H_l, W_l]
    inner.reverse()                                                              # [I3, L4, L5]
    outs = [inner[0]]
    for i in range(n - 1):
        down = conv_norm(outs[-1], p["downsample_convs"][i], 2, act, eps)        # [B, C, H_{l+1}, W_{l+1}]
        fused = np.concatenate([down, inner[i + 1]], axis=1)                     # [B, 2C, H_{l+1}, W_{l+1}]
        outs.append(csp_rep_layer(fused, p["pan_blocks"][i], act, eps))          # [B, C, H_{l+1}, W_{l+1}]
    return outs


def hybrid_encoder(features, p_input_proj, p_encoder, cfg, trace=None):
    """Backbone maps [S3, S4, S5] -> encoder maps [O3, O4, O5], each [B, C, H_l, W_l] (C = encoder_hidden_dim).

    p_input_proj is params["model"]["encoder_input_proj"], p_encoder params["model"]["encoder"]. If `trace` is a
    dict, the intermediates are stored in it under "encoder.input_proj.{l}" and "encoder.aifi".
    """
    maps = []
    for l, (x, proj) in enumerate(zip(features, p_input_proj)):
        # eps 1e-5, not config.batch_norm_eps: transformers builds these BatchNorm2d with PyTorch's default
        y = conv_bn(x, proj[0]["weight"], proj[1])                               # [B, C, H_l, W_l]
        maps.append(y)
        if trace is not None:
            trace[f"encoder.input_proj.{l}"] = y
    for i, level in enumerate(cfg.encode_proj_layers):
        if cfg.encoder_layers > 0:
            maps[level] = aifi(maps[level], p_encoder["encoder"][i], cfg)         # [B, C, H_2, W_2]
            if trace is not None:
                trace["encoder.aifi"] = maps[level]
    return ccfm(maps, p_encoder, act=cfg.activation_function, eps=cfg.batch_norm_eps)

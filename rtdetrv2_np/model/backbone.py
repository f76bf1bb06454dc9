"""ResNet-vd backbone: RT-DETR [1] §4.1 uses ResNet [6] with the "vd" tweaks of [7].

Sources (numbered as in the package docstring, rtdetrv2_np/__init__.py, which also defines the shape letters):
    [4] rtdetrv2_pytorch/src/nn/backbone/presnet.py (`PResNet`, variant "d"): the official counterpart.
    [5] models/rt_detr/modeling_rt_detr_resnet.py (`RTDetrResNetBackbone`, `RTDetrResNetConvLayer`,
        `RTDetrResNetBasicLayer`, `RTDetrResNetBottleNeckLayer`), whose parameter names the params tree keeps.
    [6] the residual block, y = F(x) + shortcut(x) (Eq. (1)-(2)).
    [7] §4.2 and Fig. 2, the tweaks ResNet-B, -C, -D.

The "vd" changes to a plain ResNet ([7] Fig. 2):
    - the stem is three 3x3 convolutions (3 -> C/2 -> C/2 -> C, the first with stride 2) instead of one 7x7
      ("ResNet-C");
    - a down-sampling shortcut averages 2x2 blocks first (AvgPool2d(2, 2, ceil_mode=True)) and then applies a
      1x1 convolution with stride 1, instead of a 1x1 convolution with stride 2 that skips 3 of 4 pixels
      ("ResNet-D");
    - in the bottleneck the stride sits on the 3x3 convolution, not on the first 1x1 ("ResNet-B").

Every convolution has no bias and is followed by eval-mode BatchNorm (frozen statistics). The backbone returns
the outputs of the last three stages, strides 8, 16 and 32 (config.out_indices = [2, 3, 4]; stage 1 is not used).
"""

from .nn import activation_, avg_pool2d_ceil, conv_norm, max_pool2d


def shortcut_layout(layer_type, stage, c_in, c_out):
    """How block 0 of a stage reaches the residual sum: (has_avg_pool, param key or None for identity).

    Follows [5] RTDetrResNetBasicLayer / RTDetrResNetBottleNeckLayer: a 2x2 average pool then a 1x1 conv
    ("shortcut.1", index 1 of Sequential(AvgPool2d, ShortCut)) where the block changes width or stride (stages >= 1),
    a plain 1x1 conv ("shortcut") in stage 0 (the official code's `short` with stride 1). Later blocks: identity.
    """
    if layer_type == "basic":
        return (True, "shortcut.1") if c_in != c_out else (False, "shortcut")
    if stage > 0:                                           # stride 2
        return True, "shortcut.1"
    return (False, "shortcut") if c_in != c_out else (False, None)


def residual_block(x, p, layer_type, stride, shortcut):
    """One residual block, y = ReLU(F(x) + shortcut(x)) ([6] Eq. (1)-(2)).

    basic (r18, r34):       F = BN(conv3x3(ReLU(BN(conv3x3_stride(x)))))
    bottleneck (r50, r101): F = BN(conv1x1(ReLU(BN(conv3x3_stride(ReLU(BN(conv1x1(x))))))), width C_out/4 inside
    x [B, C_in, H, W] -> [B, C_out, H/stride, W/stride].
    """
    convs = p["layer"]
    if layer_type == "basic":
        y = conv_norm(x, convs[0], stride, "relu")          # [B, C_out, H/s, W/s]
        y = conv_norm(y, convs[1])
    else:
        y = conv_norm(x, convs[0], 1, "relu")               # [B, C_out/4, H, W]
        y = conv_norm(y, convs[1], stride, "relu")          # [B, C_out/4, H/s, W/s]
        y = conv_norm(y, convs[2])                          # [B, C_out, H/s, W/s]
    pool, key = shortcut
    s = avg_pool2d_ceil(x) if pool else x                   # [B, C_in, H/s, W/s]
    if key is not None:
        s = conv_norm(s, p["shortcut"][1] if key == "shortcut.1" else p["shortcut"])  # [B, C_out, H/s, W/s]
    y += s
    return activation_(y, "relu")


def backbone(pixel_values, p, cfg):
    """ResNet-vd: pixel_values [B, 3, H, W] -> list of feature maps [B, C_l, H/s_l, W/s_l] for strides 8, 16, 32.

    p is params["model"]["backbone"]["model"]. Returns the maps of stages cfg.out_indices.
    """
    x = pixel_values
    for i, layer in enumerate(p["embedder"]["embedder"]):  # deep stem: 3x3 s2, 3x3, 3x3 ([7] "ResNet-C")
        x = conv_norm(x, layer, 2 if i == 0 else 1, "relu")  # [B, C_stem, H/2, W/2]
    x = max_pool2d(x, kernel=3, stride=2, padding=1)        # [B, C_stem, H/4, W/4]
    features = []
    c_in = cfg.embedding_size
    for s, stage in enumerate(p["encoder"]["stages"]):
        c_out = cfg.hidden_sizes[s]
        for b, block in enumerate(stage["layers"]):
            stride = 2 if (s > 0 and b == 0) else 1         # stage 0 keeps the stem's stride 4
            shortcut = shortcut_layout(cfg.layer_type, s, c_in, c_out) if b == 0 else (False, None)
            x = residual_block(x, block, cfg.layer_type, stride, shortcut)  # [B, C_s, H/2^(s+2), W/2^(s+2)]
        c_in = c_out
        if s + 1 in cfg.out_indices:                        # stage s of [5] is "stage{s+1}" (0 is the stem)
            features.append(x)
    return features

"""rtdetrv2_np: the RT-DETRv2 real-time object detector [3] in plain, vectorized NumPy (inference only).

    from rtdetrv2_np import load_model
    model = load_model("path/to/model_dir")     # config.json + model.safetensors, as on the Hugging Face hub
    out = model(pixel_values)                   # float32 [B, 3, H, W] in [0, 1]
    out.logits, out.pred_boxes                  # [B, Nq, NC], [B, Nq, 4] (cx, cy, w, h, normalised)

The model itself is the subpackage `model/`, one module per component of the paper (its docstring maps them); the
other modules load and convert checkpoints, pre- and post-process, and hold the command lines and figures.

References. One list for the whole package: every module cites these numbers.
    [1] Y. Zhao et al., "DETRs Beat YOLOs on Real-time Object Detection" (RT-DETR), arXiv 2304.08069v3 (CVPR 2024).
        §4.1 and Fig. 4 model overview; §4.2, Eq. (1) and Fig. 5 efficient hybrid encoder: AIFI and CCFF (CCFM in
        v1 and v2, and in this package's code); §5.2 and Table 3 its ablation (variant D_S5: AIFI on S5 only);
        §4.3 uncertainty-minimal query selection (IoU-aware query selection in v1 and v2); Appendix Table A the
        focal-style classification loss and matching cost.
    [2] X. Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End Object Detection",
        arXiv 2010.04159v4 (ICLR 2021). §4.1 Eq. (2) deformable attention and Eq. (3) its multi-scale form;
        §4.2 and Appendix A.4: iterative bounding box refinement (offsets scaled by the box size), two-stage
        proposals (anchor size 0.05 * 2^l).
    [3] W. Lv et al., "RT-DETRv2: Improved Baseline with Bag-of-Freebies for Real-Time Detection Transformer",
        arXiv 2407.17140v1 (no figures). §2.1: a distinct number of sampling points per level, the discrete
        sampling operator; §3.4, Tables 3-4: their ablations. The offset scale (0.5) is a parameter of the code
        ([4] offset_scale, [5] decoder_offset_scale), not a change the paper lists.
    [4] The official code: github.com/lyuwenyu/RT-DETR, folder rtdetrv2_pytorch/, at commit 068dfde. Its v2 model
        files compute what they computed at the release commit b8957b3 (the later commits change no number).
        Files: src/nn/backbone/presnet.py, src/zoo/rtdetr/{hybrid_encoder, rtdetrv2_decoder, utils}.py,
        configs/rtdetrv2/*.yml.
    [5] transformers 5.24.0 (github.com/huggingface/transformers): models/rt_detr_v2/modeling_rt_detr_v2.py
        (RTDetrV2ForObjectDetection), configuration_rt_detr_v2.py, models/rt_detr/modeling_rt_detr_resnet.py
        (RTDetrResNetBackbone), image_processing_rt_detr.py, conversion_mapping.py; and, in the repository but not
        in the wheel, models/rt_detr_v2/convert_rt_detr_v2_weights_to_hf.py, the converter that wrote the hub
        checkpoints PekingU/rtdetr_v2_{r18vd, r34vd, r50vd, r101vd} (tensor names as in transformers 4.x).
    [6] K. He et al., "Deep Residual Learning for Image Recognition" (ResNet), arXiv 1512.03385v1.
    [7] T. He et al., "Bag of Tricks for Image Classification with Convolutional Neural Networks",
        arXiv 1812.01187v2. §4.2 and Fig. 2: ResNet-B, -C and -D, the "vd" backbone.
    [8] A. Vaswani et al., "Attention Is All You Need", arXiv 1706.03762v7. §3.2 attention, §3.5 sinusoidal
        position encoding.
    [9] X. Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", arXiv 2101.03697v3. §3.2 the 3x3 + 1x1
        training-time branches; §3.3, Eq. (3) and Fig. 4 their re-parameterisation into one 3x3 convolution.
    [10] github.com/fundamentalvision/Deformable-DETR at commit 11169a6: models/ops/modules/ms_deform_attn.py,
        models/ops/functions/ms_deform_attn_func.py (the pure-PyTorch multi-scale deformable attention).
    [11] PyTorch 2.13 (docs.pytorch.org): the ops the primitives reproduce (conv2d, BatchNorm2d, grid_sample, ...).
    [12] N. Carion et al., "End-to-End Object Detection with Transformers" (DETR), arXiv 2005.12872v3. §3.1,
        Eq. (1)-(2): the one-to-one (Hungarian) assignment and loss that make a DETR need no NMS (matching.py).
    [13] H. Rezatofighi et al., "Generalized Intersection over Union", arXiv 1902.09630v2: GIoU (matching.py).
    [14] T.-Y. Lin et al., "Microsoft COCO: Common Objects in Context", arXiv 1405.0312v3, and its detection
        evaluation (pycocotools cocoeval.py): the AP that evaluate.py computes.

Glossary of shape letters (every shape comment `# [B, Nq, M, K, 2]` in the package uses these):
    B         batch: images in one forward pass
    H, W      input height and width (multiples of 32)
    L         feature levels: 3, at strides 8, 16, 32; l = 0 .. L-1 indexes them fine to coarse
    H_l, W_l  height and width of level l (H / 2^(l+3), W / 2^(l+3)); H_{l+1}, W_{l+1}: the next coarser level
    C         channels of a map or of a token; C_in, C_out of one convolution or linear layer; in the hybrid
              encoder C = encoder_hidden_dim (256; 384 in r101vd); C' = C * hidden_expansion inside a CSP block
    C_l       channels of backbone level l (hidden_sizes)
    d         d_model: the width of the decoder, its queries and the memory it reads (256)
    F         hidden width of a feed-forward network (encoder_ffn_dim, decoder_ffn_dim)
    Ho, Wo    output height and width of a convolution or pooling;  KH, KW: kernel height and width
    N         tokens of a sequence (self-attention)
    M         attention heads;  D = C / M (or d / M): channels per head
    K_l       sampling points per head on level l;  K = sum_l K_l, the (level, point) slots of a head
    Nv        value tokens of the multi-scale memory = sum_l H_l * W_l
    Nq        object queries (num_queries, 300)
    NC        classes (80 for COCO)
    P         locations sampled per map in one call of a sampler (Nq * K_l in the model)
"""

from .errors import RTDetrError
from .loading import build_model, load_model
from .model import Config, DetectionOutput, Model, forward, variant_config

__all__ = ["Config", "DetectionOutput", "Model", "RTDetrError", "build_model", "forward", "load_model",
           "variant_config"]

"""The fast path: the same detector as rtdetrv2_np.model, computed with faster float32 kernels.

    model = load_model("path/to/model_dir", fast=True)   # or rtdetrv2_np.fast.fast_model(reference_model)
    out = model(pixel_values)                             # as the reference Model: logits, pred_boxes
    stages = model.trace(pixel_values)                    # the reference's stage names, shapes and layouts

rtdetrv2_np.model stays the definition (readable, what the walkthrough notebooks teach); this package trades some
of that readability for speed and is checked against it (tests/test_fast.py: every kernel against the reference
function it replaces, on irregular shapes; the whole model against the recorded PyTorch cases). Results agree with
the reference path up to float32 rounding: the kernels sum in other orders, never compute other things.

    conv.py       convolutions on channel-major maps [C, B, H, W]: 1x1 as one GEMM, 3x3 stride 1 by Winograd
                  F(2x2, 3x3) [LG], the rest by im2col [CS]          replaces model/nn.conv2d (+ conv_bn)
    attention.py  self-attention as batched GEMMs; multi-scale deformable attention with one gather of every tap
                  of every level and one batched product           replaces model/nn.multi_head_attention,
                                                                    model/deformable_attention.*
    prepare.py    load-time derivations: BatchNorm folded [IS], RepVGG blocks merged [RV], stacked projections,
                  Winograd filters, the kernel chosen per layer     replaces the per-call folding of model/nn.conv_bn
    detector.py   the forward pass and FastModel                    mirrors model/detector.py and the stage files
    ops.py        the bias / residual / activation epilogue, a small thread pool for element-wise work

The levers, and what each gave in interleaved A/B runs on the development machine (2 cores shared with other jobs,
so ratios only; single-thread CPU time, r18vd 640x640 batch 1, reference = 1):
    BatchNorm folded once                  the reference refolds every call: ~4 % of its forward pass
    Winograd F(2,3), 3x3 stride 1          per layer: 256 and 512 channels 1.3-1.9x, 128 channels 1.0-1.2x,
                                           64 channels 0.6x (the transforms cost more than the multiplications
                                           they save), so only layers with >= 128 channels use it
                                           (prepare.WINOGRAD_MIN_CHANNELS); F(4,3) was never faster than F(2,3)
                                           here and has ~8x its rounding error, so it is not used
    RepVGG merge, CSP conv1+conv2 stacked, the FPN's 1x1 before the 2x upsampling      encoder: part of the 1.5x
    box head on the 300 selected queries only, enc_output masking by rows              query selection 2x
    everything together                    r18vd 0.83, r50vd 0.79 (single thread CPU time)
benchmarks/benchmark.py measures the whole model on a quiet machine (and --kernels re-measures the per-layer choice).

References (besides the package's [1]-[11]):
    [LG] Lavin & Gray, Fast Algorithms for Convolutional Neural Networks, arXiv 1509.09308.
    [CS] Chellapilla, Puri & Simard, High Performance Convolutional Neural Networks for Document Processing, 2006.
    [RV] Ding et al., RepVGG: Making VGG-style ConvNets Great Again, arXiv 2101.03697, §3.4.
    [IS] Ioffe & Szegedy, Batch Normalization, arXiv 1502.03167, §3.2.
"""

from .detector import FastModel, fast_model

__all__ = ["FastModel", "fast_model"]

"""The fast path: the same detector as rtdetrv2_np.model, computed with faster float32 kernels.

    model = load_model("path/to/model_dir", fast=True)   # or rtdetrv2_np.fast.fast_model(reference_model)
    out = model(pixel_values)                             # as the reference Model: logits, pred_boxes
    stages = model.trace(pixel_values)                    # the reference's stage names, shapes and layouts

rtdetrv2_np.model stays the definition (readable, what the walkthrough notebooks teach); this package trades some
of that readability for speed and is checked against it (tests/test_fast.py: every kernel against the reference
function it replaces, on irregular shapes; the whole model against the recorded PyTorch cases). Results agree with
the reference path up to float32 rounding: the kernels sum in other orders, never compute other things.
Everything the reference forward supports is supported (the five variants and any valid config, bilinear and
discrete sampling, batches, non-square inputs, per-level point counts, eval_idx, trace). float32 only: float64
pixel values are computed in float32 (rtdetrv2_np.model is the float64 path).

    conv.py       convolutions on channel-major maps [C, B, H, W]: 1x1 as one GEMM, 3x3 stride 1 by row taps
                  [VAG] or (from 256 channels) Winograd F(2x2, 3x3) [LG], the rest by im2col [CS]
                                                                    replaces model/nn.conv2d (+ conv_bn)
    attention.py  self-attention as batched GEMMs; multi-scale deformable attention with one gather of every tap
                  of every level and one batched product           replaces model/nn.multi_head_attention,
                                                                    model/deformable_attention.*
    prepare.py    load-time derivations: BatchNorm folded [IS], RepVGG blocks merged [RV], stacked projections,
                  Winograd filters, the kernel chosen per layer     replaces the per-call folding of model/nn.conv_bn
    detector.py   the forward pass and FastModel                    mirrors model/detector.py and the stage files
    ops.py        the bias / residual / activation epilogue, GELU with a polynomial erf [AS], a small thread pool
                  for element-wise work, the work buffers each model keeps between calls (arena, scratch)

The levers, and what each gave in interleaved A/B runs on the development machine (2 cores shared with a training
job, so single-thread CPU time and ratios only; r18vd shapes, 640x640, batch 1; > 1 = faster than the reference):
    BatchNorm folded once (prepare)         the reference refolds on every call: ~4 % of its forward pass
    Winograd F(2,3), 3x3 stride 1           per layer, vs im2col: 512 channels 1.5-1.9x, 256: 1.3-1.7x, 128: 1.0-1.2x,
                                            64: 0.6x, 32: 0.5x (the transforms' NumPy passes cost more than the
                                            multiplications saved); F(4,3) was never faster than F(2,3) here
                                            and has ~8x its rounding error: not used (prepare.WINOGRAD_TILE)
      - output transform as one GEMM        2x on that step against 24 element-wise passes
      - bands of 2048 tiles, transforms     1.17x on the r18vd + r50vd Winograd shapes against 512-tile bands
        in 8 MB channel chunks              and 512 KB chunks (fewer NumPy calls; conv.WINOGRAD_TILES,
                                            TRANSFORM_BLOCK; benchmarks/benchmark.py --bands)
    row taps, 3x3 stride 1 (conv_row_taps)  vs im2col, on a quiet machine (benchmarks/benchmark.py --kernels, 2 threads,
                                            r18vd and r50vd shapes at 640x640): 32 channels @ 320x320 1.2-2.1x,
                                            64 @ 160 1.9x, 128 @ 80 1.8-2.0x (Winograd 1.1-1.25x), 128 @ 40 1.5x
                                            (Winograd 1.3x), 256 @ 80/40/20 1.3-1.8x (Winograd 1.3-1.8x: within
                                            10 % of each other), 512 @ 20 1.3-1.5x (Winograd 1.65-1.8x): row taps
                                            below 256 channels, Winograd from 256 (prepare.WINOGRAD_MIN_CHANNELS)
    RepVGG merge, CSP conv1+conv2 stacked, FPN 1x1 before the upsampling    encoder 1.3x (r18vd), 1.45x (r50vd)
    separable, unpadded max pool            3x (0.07 -> 0.02 s); in cache-sized chunks of channels another 2x
                                            (21.6 -> 11 ms on the r18vd stem's output; detector.POOL_BLOCK)
    shortcut average pool, rows first,      2.5-3.3x on r50vd's shortcut pools (detector.avg_pool_2x2)
      in chunks, no padded copy
    ReLU against an array of zeros          2.6x per value (ops.relu; benchmarks/benchmark.py --ops)
    box head on the Nq selected rows only   query selection 2.4x
    deformable attention, one gather        1.75x bilinear, 4x discrete (batch 4: 1.8x, 6x)
    self-attention, stacked q/k GEMM        1.2x
    element-wise work split over 2 threads  lost on a quiet machine: slower in 13 of 18 paired rounds, by a median
                                            10 % (OpenBLAS's spinning worker threads compete with it): off by default
                                            (ops.THREADS; benchmarks/benchmark.py reports the fast path both ways)
    row-tap fill as flat copies             one contiguous copy per channel and tap, the wrapped pixels zeroed
                                            (conv._place_shifted), instead of one copy per row: r18vd's fills
                                            ~60 -> ~44 ms per pass; whole model 0.979 of the time without it
                                            (paired in-process A/B, 10 alternating pairs)
    row-tap halo rows carried, not redone   each band's GEMM skips the K-1 input rows the band before already
                                            multiplied (3-7 % of the row-tap multiplications at 16 MB bands):
                                            r18vd's six row-tap shapes 5-11 % faster in all (two sweeps); whole
                                            model 0.97-1.03, paired, within this VM's noise that day
    row-tap sums and epilogue per chunk     (conv_row_taps, EPILOGUE_BLOCK) -- with the ReLU, the pools and the
      of channels, in cache                 Winograd bands: 0.965 (r18vd) and 0.956 (r50vd) of the time without
                                            them, paired in-process A/B over 14 and 8 alternating passes
    work buffers kept per model and thread  the band buffers of every convolution (row taps, im2col, Winograd) from
      (ops.arena, ops.scratch)              one buffer the model keeps, instead of new arrays per call: glibc had
                                            returned and re-mapped that memory, ~6,800 page faults per r18vd pass
                                            (~16,300 on r50vd), now 0 (~1,500); r18vd 5 % faster (median of the best
                                            pass of 5 alternating processes each: 0.717 -> 0.678 s); peak RSS +20 MiB
    decoder_input_proj folded into          the memory is never formed: enc_output's input and each decoder layer's
      enc_output and every value_proj       value come from the encoder maps by one GEMM per level, each where it is
                                            used (prepare.memory_projections_spec): r18vd query selection + decoder
                                            126 -> 114 ms, r50vd ~13 ms less (best of 6-8 alternating). Stacking all
                                            the values into one GEMM was no faster, and r50vd's 52 MB result was
                                            mapped afresh on every pass
    FPN upsampled sum as two strided adds   the 6-D broadcast add (inner axis of 2) 6.9 -> 1.7 ms on 256 x 80 x 80;
                                            r18vd encoder 196 -> 181 ms (best of 10 alternating)
    bilinear taps tap by tap                four products and one row index per tap instead of stacked arrays and
                                            np.where: 4-9 -> 2-3 ms per decoder layer (r18vd)
    softmax in cache-sized chunks           NumPy's float32 exp: 1.4 ns per value on 64 K values, 2.5-4.6 on 1 M
    im2col bands of >= 1024 pixels          conv.IM2COL_MIN_COLS: r18vd's 256-channel stride-2 layers 10-25 % faster
    stem pooled before its bias and ReLU    relu(max(v) + b) = max(relu(v + b)) exactly: the epilogue on a 4x smaller
                                            map
    GELU with erf by [AS] 7.1.26 (ops.gelu) scipy.special.erf took ~20 ns per float32 value: AIFI's GELU on [400, 1024]
                                            9.8 -> 3.5 ms (median of 40); PyTorch's float32 CPU GELU uses the same
                                            formula, and the fast GELU's error is within 1.4x of PyTorch's
    sampling locations on (K, 2) flattened  broadcasting over an inner axis of 2 ran NumPy's loops 2 values at a
                                            time: 0.83 -> 0.15 ms per r18vd decoder layer, the same bits
    softmax's division after A V            self-attention divides the N x D product by the row sums (by BLAS)
                                            instead of the N x N scores: 5.6 -> 5.3 ms per r18vd decoder layer,
                                            9.2 -> 8.6 ms in AIFI (attention.exp_rows_)
    the whole forward pass                  r18vd 1.44x (0.69 of the reference's time), r50vd 1.47x (0.68), in the
                                            README's benchmark run (paired per round: 1.47x and 1.47x)
Tried and not kept (same A/B method; each within noise or slower): an earlier form of the kept work buffers, one
module-wide array per buffer and thread (page faults rose from ~3,600 to ~6,000 per r18vd pass then: glibc's heap
mapped the layers' outputs afresh; the per-model single buffer above measured 0 faults); Winograd F(2,3) also for
128 channels on maps of >= 80x80 (1.01); the vertical taps in the GEMM's inner dimension and the horizontal ones as
column shifts of its output (equal to row taps); Winograd F(2,3) down the columns only with row taps across (its
input transform doubled the copying: 1.1-1.4x slower below 256 channels); SiLU's exp split over two threads (no
gain: the second core is held by OpenBLAS's spinning worker); the stride-2 im2col fill from phase planes (the image
split once into its 2x2 sub-sampled planes, then each tap one flat copy like a row tap's: the split itself costs ~2
ns per input float, as much as the strided copies it replaces -- 99.8 against 99.3 ms over r18vd's six stride-2
shapes; again on 2026-11-30, 103.3 against 99.1); OpenBLAS held to one thread and each GEMM split over two Python
threads by us, so that the element-wise work could use both cores too (1.12: the split GEMMs ran 15-25 % slower than
OpenBLAS's own threading and the element-wise work gained less than that); im2col with flat per-tap copies for the
3x3 stride-1 layers (row taps still faster: 123.6 against 129.4 ms over r18vd's six row-tap shapes); the three
vertical taps summed inside BLAS by scipy.linalg.blas.sgemm with beta = 1, with no Y buffer and no shifted sums
(38-50 GF/s effective against NumPy's 110-150: its f2py wrapper takes only whole Fortran-ordered arrays, no leading
dimension, so every shifted window of the column matrix was copied first); the vertical taps as three GEMMs of C_out
rows on shifted views of one column matrix, the middle one written straight into the output (10 % slower over the
six shapes: each GEMM packs the column matrix again); the element-wise split again with OpenBLAS's workers told to
sleep at once (OPENBLAS_THREAD_TIMEOUT=4: the split then ran exp 1.7x faster, yet the whole pass was still 8 %
slower paired); im2col with flat per-tap copies for the stem's 32-channel layers (1.1-2.4x slower than row taps,
2026-11-30); row-tap bands of 24, 32 or 64 MB once the buffers were kept (sums within 2 % of 16 MB); the decoder's
memory projections computed in bands of rows with the bias added in cache (no clear difference, 2 runs). Again on
2026-11-30 (second session): row-tap bands of 1, 2, 4 and 8 MB with the kept buffers (58 %, 30 %, 2 % and 2 %
slower than 16 MB over five shapes); layer_norm_'s row sums by BLAS and einsum (median 5.5 against 6.3 ms on
[8400, 256], best 4.75 against 4.61: within noise, so the reference's operations were kept); bilinear_taps_flat on
full-size per-slot tables instead of broadcasts of [K] (4.0 against 3.9 ms: NumPy's small-array calls, not the
broadcasting, are the cost there); a 1x1 convolution in bands of pixels, each band's GEMM into a contiguous buffer
and its SiLU there, in cache (11.2-11.6 against 10.8 ms on 128 -> 256 at 80x80: the SiLU costs the same in cache,
as NumPy's float32 exp itself, 1.6-2.5 ns per value, is ~75 % of it). A float32 exp or sigmoid written as NumPy
passes (range reduction, a degree-5 polynomial, the exponent set through an int32 view) needs ~17 passes of
~0.15-0.2 ns per value, no faster than NumPy's exp: not written. The bias as one more column of the row-tap GEMM
(a row of ones in the column matrix): the GEMM with K + 1 took 0.10-0.15 ms longer per 16 MB band, about what the
bias pass it saves costs in cache: not kept. Again on 2026-11-30 (third session): the row taps' vertical taps summed
inside BLAS -- cblas_sgemm of the OpenBLAS that NumPy's wheel bundles, called through ctypes with beta = 1 on strided
windows of the column matrix, K products added straight into the output band, so no K*C_out-row buffer and no
shifted NumPy sums. Per layer it was within noise of the shifted sums: r18vd's six row-tap shapes summed 406-425 ms
at bands of 2-16 MB, against 434 ms; 32 channels were slower, because three products of C_out rows run at a lower
BLAS rate than one of K*C_out rows. On the whole r18vd pass there was no gain: paired in-process A/B over 60
alternating pairs gave 1.007 and 0.984 at 8 and 4 MB bands. Not kept, so the package still makes no ctypes call.
The same route with no column fill at all was also tried: nine products of K = C_in on shifted windows of one
zero-padded copy of the input. It was slower (590-840 against 544 ms over four row-tap shapes), because BLAS's rate
at K = C_in costs more than the fill it saves.
benchmarks/benchmark.py measures the whole model on a quiet machine against PyTorch and ONNX Runtime, and its
--kernels option re-measures the per-layer row taps / Winograd / im2col choice there.

References (besides the package's [1]-[11]):
    [LG] Lavin & Gray, Fast Algorithms for Convolutional Neural Networks, arXiv 1509.09308.
    [CS] Chellapilla, Puri & Simard, High Performance Convolutional Neural Networks for Document Processing, 2006.
    [VAG] Vasudevan, Anderson & Gregg, Parallel Multi Channel Convolution using General Matrix Multiplication,
         arXiv 1704.04428.
    [RV] Ding et al., RepVGG: Making VGG-style ConvNets Great Again, arXiv 2101.03697, §3.3.
    [IS] Ioffe & Szegedy, Batch Normalization, arXiv 1502.03167, §3.1-3.2.
    [AS] Abramowitz & Stegun, Handbook of Mathematical Functions, NBS Applied Mathematics Series 55 (1964), 7.1.26.
"""

from .detector import FastModel, fast_model

__all__ = ["FastModel", "fast_model"]

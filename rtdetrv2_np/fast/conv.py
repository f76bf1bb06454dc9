"""Fast convolutions on channel-major maps [C, B, H, W]: 1x1 as one GEMM, 3x3 stride 1 by Winograd minimal
filtering, everything else by im2col. Each replaces rtdetrv2_np.model.nn.conv2d followed by the folded BatchNorm
shift and the activation (model/nn.conv_bn); rtdetrv2_np.fast.prepare folds the weights and picks the kernel.

References
    [LG] Lavin & Gray, Fast Algorithms for Convolutional Neural Networks, arXiv 1509.09308: minimal filtering
         F(m, r) nested to 2-D, Y = A^T [(G g G^T) * (B^T d B)] A; the F(2x2, 3x3) and F(4x4, 3x3) matrices.
    [CS] Chellapilla, Puri & Simard, High Performance Convolutional Neural Networks for Document Processing,
         IWFHR 2006: convolution as "unfolding" (im2col) + one matrix product, as model/nn.conv2d computes it.
    [VAG] Vasudevan, Anderson & Gregg, Parallel Multi Channel Convolution using General Matrix Multiplication,
         arXiv 1704.04428: GEMM-based convolutions that copy less than im2col by summing the products of shifted
         inputs; conv_row_taps is one such scheme (a partial im2col over the horizontal taps, shifts for the rest).

Layout. The reference keeps PyTorch's [B, C, H, W]. Here every map is [C, B, H, W] (channel-major): the pixels of
all images form one axis, so a 1x1 convolution of a whole batch is ONE matrix product W[C_out, C_in] @
X[C_in, B*H*W] whose result is already the next layer's input layout -- no transpose and no per-image loop between
layers. For B = 1 the two layouts are the same bytes.

Epilogue. Every kernel ends with fast.ops.epilogue on the rows it has just written, while they are in cache: the
folded bias, an optional residual (added before the activation), the activation, an optional sum after it.
"""

import numpy as np

from .ops import EPILOGUE_BLOCK, chunks, epilogue, epilogue_parallel, parallel, scratch

# ----------------------------------------------------------------------------------------------------------------
# 1x1: a plain GEMM
# ----------------------------------------------------------------------------------------------------------------

def conv1x1(x, w, bias=None, act=None, residual=None, after=None):
    """Replaces model/nn.conv2d for a 1x1 kernel, stride 1, no padding. x [C_in, B, H, W], w [C_out, C_in] (folded
    BatchNorm), bias [C_out] -> [C_out, B, H, W].

    The im2col matrix of a 1x1 kernel is the map itself, so there is nothing to copy: out = W @ X[C_in, B*H*W], one
    BLAS call for the whole batch, then the epilogue.
    """
    C_in, B, H, W = x.shape
    out = np.matmul(w, x.reshape(C_in, B * H * W)).reshape(w.shape[0], B, H, W)   # [C_out, B, H, W]
    return epilogue_parallel(out, bias, act, residual, after)


# ----------------------------------------------------------------------------------------------------------------
# Any kernel, any stride: im2col in bands of output rows [CS]
# ----------------------------------------------------------------------------------------------------------------

IM2COL_BLOCK = 1 << 19   # floats per im2col band (2 MB), model/nn.IM2COL_BLOCK: the band stays in cache and the
                         # GEMM on it is still large enough to run at full BLAS speed ...
IM2COL_MIN_COLS = 1024   # ... unless that leaves it fewer output pixels than this: with 256 input channels and up
                         # (9*C_in = 2304+ rows) a 2 MB band held ~200 pixels, and its thin GEMM was slow. Measured on
                         # r18vd's six stride-2 shapes (640x640, best of 7, two sweeps): 256 -> 512 at 40x40 10.8-12.9
                         # ms with 2 MB bands, 8.8-9.8 with 8 MB; 256 -> 256 at 40x40 6.4-6.9 against 5.3-5.6; the
                         # stem and 64 channels (2 MB already held >= 900 pixels) were no faster with larger bands


def _valid(n_out, n_in, k, stride, padding):
    """[lo, hi): the output positions o whose tap k reads inside the input, 0 <= o*stride + k - padding < n_in."""
    lo = max(0, -((k - padding) // stride))                                      # ceil((padding - k) / stride)
    hi = min(n_out, (n_in - 1 + padding - k) // stride + 1)
    return lo, max(lo, hi)


def _place(tap, src, r0, r1, c0, c1):
    """One tap's slice of a column matrix: tap [c, rows, cols] gets src in [r0, r1) x [c0, c1) -- the pixels the
    tap sees inside the map -- and zeros in the strips around it, which fall on the padding (so the padding is
    never materialised)."""
    if r1 <= r0 or c1 <= c0:
        tap[...] = 0
        return
    tap[:, :r0] = 0
    tap[:, r1:] = 0
    tap[:, r0:r1, :c0] = 0
    tap[:, r0:r1, c1:] = 0
    tap[:, r0:r1, c0:c1] = src


def _place_shifted(tap, src, r0, r1, iy, s):
    """One horizontal tap of a row-tap column matrix: tap [c, R, W] gets, in its rows [r0, r1), the input rows
    iy .. iy + r1 - r0 - 1 of src [c, H*W] shifted left by s (tap[:, r, j] = map row iy + r - r0, column j + s),
    zeros where j + s falls on the padding and in the rows outside [r0, r1).

    Row by row that is a copy of W - |s| pixels per row: NumPy's copy loop then restarts on every short row, and
    cost ~1 ns per float on r18vd's maps. In the flattened pixel axis the same tap is ONE contiguous copy per
    channel (row r, column j + s of the map is flat index (iy + r - r0) * W + j + s), which picks up |s| pixels of
    the neighbouring row at each row's end -- exactly the columns that fall on the padding, zeroed afterwards.
    """
    c, R, W = tap.shape
    flat = tap.reshape(c, R * W)                                                 # [c, R*W] (a view)
    flat[:, :r0 * W] = 0                                                         # halo rows on the padding
    flat[:, r1 * W:] = 0
    d0, d1 = r0 * W, r1 * W                                                      # destination, flat
    s0 = iy * W + s                                                              # source, flat
    if s0 < 0:                                                                   # before the map's first pixel:
        d0, s0 = d0 - s0, 0                                                      # a padding column, zeroed below
    if s0 + d1 - d0 > src.shape[1]:                                              # past its last pixel: likewise
        d1 = d0 + src.shape[1] - s0
    if d1 > d0:
        flat[:, d0:d1] = src[:, s0:s0 + d1 - d0]
    if s < 0:                                                                    # the padding columns
        tap[:, r0:r1, :min(W, -s)] = 0
    elif s > 0:
        tap[:, r0:r1, max(0, W - s):] = 0


def conv_im2col(x, w, bias=None, stride=1, padding=0, act=None, residual=None, after=None):
    """Replaces model/nn.conv2d for any square kernel and stride. x [C_in, B, H, W], w [C_out, C_in, K, K] (folded)
    -> [C_out, B, Ho, Wo], Ho = (H + 2*padding - K) // stride + 1.

    The reference's algorithm -- a column matrix for a band of output rows, one GEMM per band -- on the
    channel-major layout: row (c, kh, kw) of the band's column matrix holds the pixel that tap (kh, kw) of channel
    c sees at each output pixel. The padding is not materialised (no padded copy of the input): each tap copies
    the pixels it sees inside the map and zeroes the strips that fall on the padding. The copies are split over
    threads by channel.
    """
    C_out, C_in, K, _ = w.shape
    _, B, H, W = x.shape
    Ho = (H + 2 * padding - K) // stride + 1
    Wo = (W + 2 * padding - K) // stride + 1
    w2 = w.reshape(C_out, C_in * K * K)                                          # [C_out, C_in*K*K]
    out = np.empty((C_out, B, Ho, Wo), x.dtype)                                  # [C_out, B, Ho, Wo]
    rows = max(1, min(Ho, max(IM2COL_BLOCK // (C_in * K * K * Wo), -(-IM2COL_MIN_COLS // Wo))))   # per band
    buf, = scratch([C_in * K * K * rows * Wo], x.dtype)
    ys = [_valid(Ho, H, k, stride, padding) for k in range(K)]                   # per tap row: valid outputs
    xs = [_valid(Wo, W, k, stride, padding) for k in range(K)]                   # per tap column
    for b in range(B):
        for y0 in range(0, Ho, rows):
            n = min(rows, Ho - y0)
            cols = buf[:C_in * K * K * n * Wo].reshape(C_in, K, K, n, Wo)       # [C_in, K, K, n, Wo]

            def fill(lo, hi):
                for kh in range(K):
                    r0, r1 = max(ys[kh][0], y0) - y0, min(ys[kh][1], y0 + n) - y0   # band rows inside the map
                    for kw in range(K):
                        c0, c1 = xs[kw]
                        iy = (y0 + r0) * stride + kh - padding                   # first input row / column read
                        ix = c0 * stride + kw - padding
                        _place(cols[lo:hi, kh, kw], x[lo:hi, b, iy:iy + stride * (r1 - r0 - 1) + 1:stride,
                                                      ix:ix + stride * (c1 - c0 - 1) + 1:stride], r0, r1, c0, c1)
            parallel(fill, C_in, cols.size)
            band = out[:, b, y0:y0 + n]                                          # [C_out, n, Wo] (a view)
            np.matmul(w2, cols.reshape(C_in * K * K, n * Wo), out=band.reshape(C_out, n * Wo))
            epilogue_parallel(band, bias, act, None if residual is None else residual[:, b, y0:y0 + n],
                              None if after is None else after[:, b, y0:y0 + n])
    return out


# ----------------------------------------------------------------------------------------------------------------
# K x K stride 1, "same" padding: im2col over the K horizontal taps only, the K vertical taps as row shifts [VAG]
# ----------------------------------------------------------------------------------------------------------------
#
# im2col copies every input pixel K*K times; for a stride-1 kernel most of that copy is redundant. Lay a band's
# column matrix out as rows (c, kw) x flattened pixels (r, x): row (c, kw) holds channel c shifted left by kw - p
# (the K horizontal taps only: K copies of the input, not K*K). Vertical tap kh of output row y reads input row
# y + kh - p, which in this flattened layout is the same matrix shifted by kh whole rows. So ONE GEMM of the
# stacked kernels W_all [K*C_out, C_in*K] (row block kh = the kernels' row kh) with the band's column matrix gives
# every vertical tap's partial sum at every band row, and
#     out[o, y, x] = sum_kh  Y[kh, o, (y + kh) * W + x]                         (K-1 shifted additions)
# A band of n output rows reads n + K-1 input rows: K-1 halo rows, which are also the last K-1 input rows of the
# band before. Their GEMM rows are not computed twice: Y keeps them, moved to its front, and the next band's GEMM
# computes only its n new rows (so the GEMM does exactly im2col's multiplications) on a K times smaller copy, in
# one long BLAS call (measured faster than K GEMMs of C_out rows each accumulated one by one, and than im2col, on
# every r18vd 3x3 stride-1 shape below 256 channels: fast/__init__.py).

ROW_TAPS_BLOCK = 1 << 22   # floats of a band's column matrix plus its GEMM output (16 MB): bands of 45-68 rows
                           # on r18vd's shapes at 640x640. Measured on r18vd's six row-tap shapes (their sum,
                           # median of 7 alternating runs each): bands of 1, 2, 4, 8, 32 and 64 MB took 72 %,
                           # 33 %, 9 %, 2-5 %, 5 % and 24 % longer than 16 MB


def row_taps_filter(w):
    """w [C_out, C_in, K, K] (folded) -> W_all [K*C_out, C_in*K]: row kh*C_out + o, column c*K + kw holds
    w[o, c, kh, kw], the layout conv_row_taps' single GEMM reads."""
    C_out, C_in, K, _ = w.shape
    return np.ascontiguousarray(w.transpose(2, 0, 1, 3).reshape(K * C_out, C_in * K))   # [K*C_out, C_in*K]


def conv_row_taps(x, w_all, bias=None, act=None, residual=None, after=None):
    """Replaces model/nn.conv2d for a K x K kernel, stride 1, padding (K-1)//2 (odd K). x [C_in, B, H, W], w_all
    [K*C_out, C_in*K] from row_taps_filter, bias [C_out] -> [C_out, B, H, W]. Algorithm: the block comment above.

    Bands of n output rows per image (ROW_TAPS_BLOCK): the column matrix cols [C_in, K(kw), m, W] of the band's
    new input rows (m = n + K-1 in an image's first band, n after it; entries on the padding are zeros), filled by
    K copies per channel chunk; one GEMM into Y's rows after the K-1 carried ones; the K shifted slices of Y
    summed into the output; the epilogue. Element-wise steps are split over threads by channel.
    """
    C_in, B, H, W = x.shape
    K = w_all.shape[1] // C_in
    C_out = w_all.shape[0] // K
    CK = C_in * K
    p = (K - 1) // 2
    h = K - 1                                                                        # halo rows
    rows = max(1, min(H, ROW_TAPS_BLOCK // ((CK + K * C_out) * W)))                 # output rows per band
    Rm = rows + h                                                                    # a band's rows with the halo
    out = np.empty((C_out, B, H, W), x.dtype)                                        # [C_out, B, H, W]
    cbuf, Y = scratch([CK * Rm * W, K * C_out * Rm * W], x.dtype)
    Y = Y.reshape(K, C_out, Rm * W)                                                  # [K, C_out, Rm*W]
    Y2 = Y.reshape(K * C_out, Rm * W)                                                # the GEMM's view
    for b in range(B):
        for y0 in range(0, H, rows):
            n = min(rows, H - y0)
            new0 = h if y0 > 0 else 0                                                # band rows already in Y
            if new0:                                                                 # the previous band's last h
                Y[:, :, :h * W] = Y[:, :, rows * W:Rm * W]                           # rows are this one's first
            m = n + h - new0                                                         # band rows to compute
            cols = cbuf[:CK * m * W].reshape(C_in, K, m, W)                          # [C_in, K, m, W]
            first = y0 - p + new0                                                    # input row of cols' row 0
            r0, r1 = max(0, -first), min(m, H - first)                               # rows inside the map
            iy = first + r0                                                          # first input row read

            def fill(lo, hi):
                src = x[lo:hi, b].reshape(hi - lo, H * W)                            # [c, H*W]
                for kw in range(K):
                    _place_shifted(cols[lo:hi, kw], src, r0, r1, iy, kw - p)
            parallel(fill, C_in, cols.size)
            np.matmul(w_all, cols.reshape(CK, m * W), out=Y2[:, new0 * W:(new0 + m) * W])
            band = out[:, b, y0:y0 + n].reshape(C_out, n * W)                        # [C_out, n*W] (a view)

            def shifted_sum(lo, hi):
                for c0, c1 in chunks(lo, hi, n * W, EPILOGUE_BLOCK):                 # sum and epilogue while
                    if K == 1:                                                       # the chunk is in cache
                        np.copyto(band[c0:c1], Y[0, c0:c1, :n * W])
                    else:
                        np.add(Y[0, c0:c1, :n * W], Y[1, c0:c1, W:(n + 1) * W], out=band[c0:c1])
                    for kh in range(2, K):
                        band[c0:c1] += Y[kh, c0:c1, kh * W:(kh + n) * W]
                    epilogue(band[c0:c1].reshape(c1 - c0, n, W), None if bias is None else bias[c0:c1], act,
                             None if residual is None else residual[c0:c1, b, y0:y0 + n],
                             None if after is None else after[c0:c1, b, y0:y0 + n])
            parallel(shifted_sum, C_out, band.size * K)
    return out


# ----------------------------------------------------------------------------------------------------------------
# 3x3 stride 1: Winograd minimal filtering F(m x m, 3 x 3) [LG]
# ----------------------------------------------------------------------------------------------------------------
#
# One output tile Y [m, m] from the input tile d [a, a] (a = m + 2, overlapping by 2) and the kernel g [3, 3]:
#     Y = A^T [ (G g G^T) * (B^T d B) ] A          ([LG], nested form; * element-wise, a cross-correlation as in CNNs)
# Summed over input channels, the element-wise product becomes, for each of the a*a positions (i, j), one matrix
# product over channels:  M[ij] = U[ij] @ V[ij],  U[ij] [C_out, C_in] = (G g G^T)[i, j] of every kernel (computed
# once at load: winograd_filter), V[ij] [C_in, tiles] = (B^T d B)[i, j] of every tile. Multiplications per output
# pixel and channel pair: a^2 / m^2 instead of 9 (F(2,3): 4, F(4,3): 2.25).
# Error (measured in tests/test_fast.py against float64): F(2,3) is as accurate as the direct sum; F(4,3)
# uses the points 0, +-1, +-2 and its transforms have coefficients up to 8 and 1/24, so rounding errors are ~8x
# larger (rms ~2e-6 of the output's scale in float32).

WINOGRAD = {
    # m: (B^T [a, a], G [a, 3], A^T [m, a]) -- [LG] F(2x2, 3x3) and F(4x4, 3x3)
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)),
}
WINOGRAD_TILES = 2048      # tiles per band (all images): fewer make the a*a GEMMs thinner and the NumPy calls more
                           # numerous, more make the band's buffers larger (~80 MB for 256 channels at 80x80)
TRANSFORM_BLOCK = 1 << 21  # floats of transform intermediates per channel chunk (8 MB). Both measured with
                           # benchmarks/benchmark.py --bands (r18vd + r50vd shapes, 640x640, batch 1, best of 5): the
                           # four Winograd shapes took 68.9 ms in all at 2048 / 1 << 21, against 80.9 ms at the
                           # earlier 512 / 1 << 17 (256 channels at 80x80: 42.8 against 52.6 ms); 4096 tiles or
                           # 1 << 22 were no faster


def winograd_filter(w, m):
    """U = G g G^T for every kernel, once per model. w [C_out, C_in, 3, 3] (folded) -> U [a*a, C_out, C_in].

    As a GEMM, vec(G g G^T) = (G kron G) vec(g), straight into the [a*a, C_out, C_in] layout the GEMMs read. In
    float64, rounded once: computed in float32 instead, U's own rounding (sums of up to 9 scaled weights) raised the
    convolution's error vs float64 from 0.7e-6 to 1.2e-6 in a test; F(4,3)'s 1/6, 1/24 are not even exact in
    float32. In chunks of output channels, so the float64 temporaries stay small (a few MB) at load.
    """
    _, G, _ = WINOGRAD[m]
    C_out, C_in = w.shape[:2]
    GG = np.kron(G, G)                                                                # [a*a, 9]
    U = np.empty(((m + 2) ** 2, C_out, C_in), w.dtype)                                # [a*a, C_out, C_in]
    step = max(1, (1 << 18) // (9 * C_in))                                            # 2 MB of float64 kernels
    for o in range(0, C_out, step):
        g = np.ascontiguousarray(w[o:o + step].reshape(-1, 9).T, dtype=np.float64)   # [9, step*C_in]
        U[:, o:o + step] = np.matmul(GG, g).reshape(-1, g.shape[1] // C_in, C_in)
    return U


def _lincomb(coeffs, terms, out):
    """out = sum_j coeffs[j] * terms[j] (zero coefficients skipped): the first two terms in one ufunc call when
    both coefficients are +-1, then one call per term (+-1: add / subtract; others: a multiply into a temporary).
    """
    nz = [(float(c), t) for c, t in zip(coeffs, terms) if c != 0]
    acc = out
    (c0, t0), rest = nz[0], nz[1:]
    if rest and c0 in (1, -1) and rest[0][0] in (1, -1):                   # +-t0 +- t1 in one call
        (c1, t1), rest = rest[0], rest[1:]
        dst = out if not rest else acc
        if c0 == 1:
            (np.add if c1 == 1 else np.subtract)(t0, t1, out=dst)
        elif c1 == 1:
            np.subtract(t1, t0, out=dst)
        else:
            np.add(t0, t1, out=dst)
            np.negative(dst, out=dst)
    elif c0 == 1:
        np.copyto(out if not rest else acc, t0)
    else:
        np.multiply(t0, out.dtype.type(c0), out=out if not rest else acc)
    for j, (c, t) in enumerate(rest):
        dst = out if j == len(rest) - 1 else acc
        if c == 1:
            np.add(acc, t, out=dst)
        elif c == -1:
            np.subtract(acc, t, out=dst)
        else:
            np.add(acc, out.dtype.type(c) * t, out=dst)
    return out


def conv_winograd(x, U, bias=None, m=2, act=None, residual=None, after=None, padding=1):
    """Replaces model/nn.conv2d for a 3x3 kernel with stride 1 ([LG]). x [C_in, B, H, W], U [a*a, C_out, C_in]
    from winograd_filter, bias [C_out] -> [C_out, B, Ho, Wo], Ho = H + 2*padding - 2 (a = m + 2).

    Phase planes. Tile (t, u) covers padded rows m*t .. m*t + a-1 and columns m*u .. m*u + a-1, so its entry
    (i, j) is pixel (t + i // m, u + j // m) of phase plane (i % m, j % m): the padded map's pixels whose row and
    column leave the remainders i % m, j % m. Stored flat, each plane [Hq * Wq] with Wq = tw + 1, entry (i, j) of
    every tile is ONE contiguous slice of its plane, shifted by (i // m) * Wq + j // m; the extra tile column
    u = tw reads across the row's end and is computed and thrown away. So every input-transform step is one NumPy
    call on long contiguous rows; only the copy into the planes and the final write into the output are strided.
    Bands of tile rows (all images at once, WINOGRAD_TILES): input transform V = B^T d B (columns, then rows, as
    NumPy additions), the a*a GEMMs M = U @ V, the output transform Y = A^T M A as ONE more GEMM with the m*m x a*a
    matrix A^T kron A^T (measured 2x faster than 24 NumPy passes), Y scattered into the output, then the epilogue
    on the band. The element-wise steps are split over threads by channel.
    """
    BT, _, AT = WINOGRAD[m]
    A2, C_out, C_in = U.shape
    a = m + 2
    _, B, H, W = x.shape
    Ho, Wo = H + 2 * padding - 2, W + 2 * padding - 2
    th, tw = -(-Ho // m), -(-Wo // m)                                            # tiles down, across
    Wq = tw + 1
    Lp = (th + 1) * Wq + 1                                                       # plane length (+1: last shift)
    nb = max(1, min(th, WINOGRAD_TILES // (B * Wq)))                             # tile rows per band, at most
    nb = -(-th // -(-th // nb))                                                  # ... evened out over the bands
    # the phase planes, then one flat buffer per stage, sized for a full band; each band takes a contiguous view
    sizes = (C_in * B * m * m * Lp, m * a * C_in * (nb + 1) * Wq * B, A2 * C_in * nb * Wq * B,
             A2 * C_out * nb * Wq * B, m * m * C_out * nb * Wq * B)
    xq, *bufs = scratch(sizes, x.dtype)
    xq = xq.reshape(C_in, B, m, m, Lp)                                           # [C_in, B, m, m, Hq*Wq+1]
    xq.fill(0)                                                                   # the padding
    planes = xq[..., :(th + 1) * Wq].reshape(C_in, B, m, m, th + 1, Wq)          # [C_in, B, m, m, Hq, Wq] view
    for pr in range(m):
        r0 = (pr - padding) % m                                                  # first input row of this phase
        for pc in range(m):
            c0 = (pc - padding) % m
            if r0 < H and c0 < W:
                src = x[:, :, r0::m, c0::m]                                      # [C_in, B, h, w]
                s0, u0 = (r0 + padding) // m, (c0 + padding) // m
                planes[:, :, pr, pc, s0:s0 + src.shape[2], u0:u0 + src.shape[3]] = src
    out = np.empty((C_out, B, m * th, m * tw), x.dtype)                          # [C_out, B, m*th, m*tw]
    AA = np.kron(AT, AT).astype(x.dtype)                                         # [m*m, a*a]
    for r0 in range(0, th, nb):
        n = min(nb, th - r0)
        N = n * Wq                                                               # tiles of one image in the band
        Tc = bufs[0][:m * a * C_in * B * (N + Wq)].reshape(m, a, C_in, B, N + Wq)   # B^T along columns
        V = bufs[1][:A2 * C_in * B * N].reshape(A2, C_in, B, N)                  # B^T d B per tile
        Mb = bufs[2][:A2 * C_out * B * N].reshape(A2, C_out, B * N)              # U @ V per position
        Y = bufs[3][:m * m * C_out * B * N]                                      # A^T M A per tile
        f0 = r0 * Wq                                                             # first tile of the band
        y0, y1 = m * r0, min(m * (r0 + n), Ho)                                   # output rows of the band

        def input_transform(lo, hi):
            step = max(1, TRANSFORM_BLOCK // (m * a * B * (N + Wq)))             # channels per chunk
            for c0 in range(lo, hi, step):
                c1 = min(hi, c0 + step)
                for pr in range(m):                                              # columns, both row phases
                    cols = [xq[c0:c1, :, pr, j % m, f0 + j // m:f0 + j // m + N + Wq] for j in range(a)]
                    for j in range(a):
                        _lincomb(BT[j], cols, Tc[pr, j, c0:c1])
                for j in range(a):                                               # then rows
                    rows = [Tc[i % m, j, c0:c1, :, (i // m) * Wq:(i // m) * Wq + N] for i in range(a)]
                    for i in range(a):
                        _lincomb(BT[i], rows, V[i * a + j, c0:c1])
        parallel(input_transform, C_in, C_in * B * N * A2)
        np.matmul(U, V.reshape(A2, C_in, B * N), out=Mb)                         # [a*a, C_out, B*N]
        # output transform as one GEMM: vec(A^T M A) = (A^T kron A^T) vec(M), all tiles and channels at once
        np.matmul(AA, Mb.reshape(A2, C_out * B * N), out=Y.reshape(m * m, C_out * B * N))
        Y6 = Y.reshape(m, m, C_out, B, n, Wq)                                    # [m, m, C_out, B, n, Wq]
        band = out[:, :, y0:m * (r0 + n)].reshape(C_out, B, n, m, tw, m)         # [C_out, B, n, m, tw, m] view

        def scatter(lo, hi):
            for i in range(m):
                for k in range(m):
                    band[lo:hi, :, :, i, :, k] = Y6[i, k, lo:hi, :, :, :tw]
            epilogue(out[lo:hi, :, y0:y1, :Wo], None if bias is None else bias[lo:hi], act,
                     None if residual is None else residual[lo:hi, :, y0:y1],
                     None if after is None else after[lo:hi, :, y0:y1])
        parallel(scatter, C_out, C_out * B * N * m * m)
    if m * th != Ho or m * tw != Wo:
        out = np.ascontiguousarray(out[:, :, :Ho, :Wo])                          # [C_out, B, Ho, Wo]
    return out

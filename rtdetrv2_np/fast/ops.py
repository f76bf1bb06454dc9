"""Small shared pieces of the fast path: the bias / residual / activation epilogue, a thread split of element-wise
work, and the work buffers a model keeps between calls (arena, scratch).

Cores outside BLAS (opt-in: THREADS). NumPy releases the GIL inside its element-wise loops (ufuncs, take, copies)
on float arrays, so Python threads that each run such calls on their own rows of an array run at the same time.
`parallel` splits a range of rows (channels, queries) into contiguous chunks, one per thread. Every element is
computed by exactly the same operations as without the split, so results are bit-identical whatever the number of
threads (tests/test_fast.py checks it). BLAS calls are never split this way: the BLAS library already uses every
core inside one call.
"""

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from ..model.nn import ACTIVATIONS


# Threads for element-wise work: 1 by default (everything runs in the caller; BLAS still uses every core inside
# each GEMM). Measured on a quiet 2-core machine (benchmarks/benchmark.py, r18vd and r50vd at 640x640, batch 1, two
# runs of 5 and 4 interleaved rounds): splitting over both cores made the forward pass slower in 13 of 18 paired
# rounds, by a median 10 % -- OpenBLAS's worker threads keep spinning for a while after each GEMM, and the split
# competes with them for the cores. RTDETRV2_NP_THREADS=n splits over n threads (benchmarks/benchmark.py reports
# the fast path both ways).
THREADS = max(1, int(os.environ.get("RTDETRV2_NP_THREADS", "1") or 1))
MIN_PARALLEL = 1 << 16   # elements below which a split costs more (thread hand-off, ~20 us) than it saves

_pool = None


def _executor():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=THREADS - 1, thread_name_prefix="rtdetrv2_np")
    return _pool


def parallel(fn, n, size=None):
    """Call fn(lo, hi) on contiguous chunks [lo, hi) that cover range(n), on up to THREADS threads.

    size: the number of elements the whole call touches; below MIN_PARALLEL (or with one thread, or n < 2) fn(0, n)
    runs here, in one piece. fn must write only to its own rows. The calling thread takes the first chunk.
    """
    k = min(THREADS, n)
    if k < 2 or (size is not None and size < MIN_PARALLEL):
        fn(0, n)
        return
    bounds = [n * i // k for i in range(k + 1)]
    futures = [_executor().submit(fn, bounds[i], bounds[i + 1]) for i in range(1, k)]
    fn(bounds[0], bounds[1])
    for f in futures:
        f.result()                                           # re-raises a worker's exception here


EPILOGUE_BLOCK = 1 << 17   # floats per epilogue chunk (512 KB, an L2): measured on SiLU over 256 x 80 x 80, a 1.6 M
                           # value map in one piece took 8.7 ms, in chunks of 100-400 K values 6.5 ms (NumPy's exp
                           # and its temporaries stay in cache)


def chunks(lo, hi, per_row, block):
    """(c0, c1) pairs covering rows [lo, hi) in chunks of at most `block` values (rows of `per_row` values; at least
    one row per chunk): how the fast path keeps a sequence of element-wise passes over one piece in cache."""
    step = max(1, block // max(1, per_row))
    for c0 in range(lo, hi, step):
        yield c0, min(hi, c0 + step)


_zeros = {}             # dtype -> a block of zeros, grown on demand (relu's second operand; read only)

_local = threading.local()   # .bufs: the buffers of the FastModel running in this thread (see `arena`)


@contextmanager
def arena(store):
    """Run the kernels in this thread with the work buffers kept in store (a threading.local that a FastModel owns):
    `scratch` then hands out the same buffers on every call, instead of new arrays.

    Why: each convolution's band buffers (16 MB and more) were allocated and freed per call, and glibc's heap
    returned that memory to the system and mapped it afresh, page by page: ~6,800 page faults per r18vd forward
    pass. Kept buffers brought that to 0 and the pass ~5 % faster (benchmark note in fast/__init__.py). The
    buffers live as long as the model (or the thread) and are as large as the largest band any layer used.
    """
    bufs = store.__dict__.setdefault("bufs", {})
    previous = getattr(_local, "bufs", None)
    _local.bufs = bufs
    try:
        yield
    finally:
        _local.bufs = previous


def scratch(sizes, dtype, slot="work"):
    """1-D work buffers of the given sizes (values), carved one after the other from the running model's buffer for
    `slot` (grown when too small, never shrunk; see `arena`), or new arrays outside a model. The kernels share one
    slot: a call's buffers are free again when it returns. Contents are whatever the last user left.
    """
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        return [np.empty(n, dtype) for n in sizes]
    key = (slot, np.dtype(dtype))
    starts = np.cumsum([0] + [-(-n // 16) * 16 for n in sizes])  # each one 16 values (64 bytes) past the last
    buf = bufs.get(key)
    if buf is None or buf.size < starts[-1]:
        bufs[key] = None                                          # the old buffer is freed before the new one
        buf = bufs[key] = np.empty(starts[-1], dtype)
    return [buf[a:a + n] for a, n in zip(starts, sizes)]


def relu(x, out=None):
    """model/nn.relu (same signature): max(x, 0) -- against a block of zeros instead of the scalar 0.

    NumPy's float32 `maximum` with a scalar operand (a stride-0 input) misses its fast loop: 0.69 ns per value
    against 0.27 ns with an array of zeros, on a 128 K-value block (benchmarks/benchmark.py --ops, this project's
    build machine, numpy 2.4.6, AVX2). The same comparison on the same values, so the same results (NaN
    propagates in both; tests/test_fast.py).
    """
    z = _zeros.get(x.dtype)
    if z is None or z.size < x.size:
        z = _zeros[x.dtype] = np.zeros(max(x.size, EPILOGUE_BLOCK), x.dtype)
    return np.maximum(x, z[:x.size].reshape(x.shape), out=out)


# [AS] Abramowitz & Stegun, Handbook of Mathematical Functions (NBS, 1964), formula 7.1.26: for z >= 0,
# erf(z) = 1 - (a1 t + a2 t^2 + a3 t^3 + a4 t^4 + a5 t^5) exp(-z^2) + e(z), t = 1 / (1 + p z), |e(z)| <= 1.5e-7.
# The same constants as PyTorch's own float32 CPU erf (ATen/cpu/vec/vec256/vec256_float.h and vec512_float.h,
# Vectorized<float>::erf, torch 2.13), which its GELU kernel calls.
ERF_P = 0.3275911
ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)   # a1 .. a5
GELU_BLOCK = 1 << 16     # values per chunk of gelu: its four temporaries (1 MB) stay in an L2


def gelu(x, out=None):
    """model/nn.gelu (exact erf form, 0.5 x (1 + erf(x / sqrt 2))) with erf by [AS] 7.1.26 in NumPy passes, in
    chunks of GELU_BLOCK values. Replaces scipy.special.erf, which took ~20 ns per float32 value here (AIFI's
    [400, 1024] hidden layer, median of 40: 9.8 -> 3.5 ms). Error, besides float32 rounding: |x| * 0.75e-7 (half
    of erf's bound, as GELU scales erf by x / 2); measured against float64 on 1 M values of N(0, 9): at most 3.4e-7 |x|
    (PyTorch's float32 GELU: 2.5e-7 |x|; the reference path's scipy erf: 1.1e-7 |x|), and the same bits as
    PyTorch's on 75 % of them. Element-wise, so the same bits however x is cut.
    """
    if out is None:
        out = np.empty_like(x)
    if not (x.flags.c_contiguous and out.flags.c_contiguous):                      # a strided view (an epilogue's
        np.copyto(out, gelu(np.ascontiguousarray(x)))                               # band): through a copy
        return out
    xf, of = x.reshape(-1), out.reshape(-1)                                         # [N] (views)
    f = x.dtype.type
    z, a, t, r = (np.empty(min(GELU_BLOCK, xf.size), x.dtype) for _ in range(4))
    for i in range(0, xf.size, GELU_BLOCK):
        xc, oc = xf[i:i + GELU_BLOCK], of[i:i + GELU_BLOCK]
        k = xc.size
        zc, ac, tc, rc = z[:k], a[:k], t[:k], r[:k]
        np.multiply(xc, f(1 / math.sqrt(2)), out=zc)                                 # z = x / sqrt 2
        np.abs(zc, out=ac)
        np.multiply(ac, f(ERF_P), out=tc)                                            # t = 1 / (1 + p |z|)
        tc += f(1)
        np.divide(f(1), tc, out=tc)
        np.multiply(tc, f(ERF_A[4]), out=rc)                                         # r = a1 + a2 t + ... + a5 t^4
        for c in ERF_A[3:0:-1]:                                                      # (Horner)
            rc += f(c)
            rc *= tc
        rc += f(ERF_A[0])
        np.multiply(ac, ac, out=ac)                                                  # exp(-z^2)
        np.negative(ac, out=ac)
        np.exp(ac, out=ac)
        ac *= tc                                                                     # erf(|z|) = 1 - t r exp(-z^2)
        ac *= rc
        np.subtract(f(1), ac, out=ac)
        np.copysign(ac, zc, out=ac)                                                  # erf(z), odd
        ac += f(1)
        np.multiply(xc, f(0.5), out=zc)
        np.multiply(zc, ac, out=oc)                                                  # (x / 2) (1 + erf(z))
    return out


FAST_ACTIVATIONS = {**ACTIVATIONS, "relu": relu, "gelu": gelu}   # the epilogue's activations


def activation_(x, act):
    """model/nn.activation_ (same signature) with FAST_ACTIVATIONS, in chunks of rows (x [..., F], an array the
    caller has just made)."""
    if act is not None and act not in FAST_ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(FAST_ACTIVATIONS)}")
    epilogue(x.reshape(-1, x.shape[-1]), act=act)
    return x


def epilogue(x, bias=None, act=None, residual=None, after=None):
    """x += bias; x += residual; x = act(x); x += after -- in place, row by row (x [C, ...], bias [C]).

    The operations and their order are those of the reference: a convolution's folded BatchNorm shift
    (model/nn.conv2d `out += bias`), a residual sum before the activation (model/backbone.residual_block
    `y += s` then ReLU), model/nn.activation_ (ReLU and GELU as this module's relu and gelu), and a sum after the
    activation (model/hybrid_encoder.csp_rep_layer `a += conv2(x)`). The same ufuncs on the same values give the
    same bits (relu: the same values; gelu: within its stated error). In chunks of rows of at most EPILOGUE_BLOCK
    values (every operation is element-wise: the same bits however x is cut). Runs in the calling thread: callers
    split rows with `parallel` (see epilogue_parallel).
    """
    for r0, r1 in chunks(0, x.shape[0], x[0].size if len(x) else 1, EPILOGUE_BLOCK):
        xc = x[r0:r1]
        if bias is not None:
            xc += bias[r0:r1].reshape((-1,) + (1,) * (x.ndim - 1))
        if residual is not None:
            xc += residual[r0:r1]
        if act is not None:
            FAST_ACTIVATIONS[act](xc, out=xc)
        if after is not None:
            xc += after[r0:r1]
    return x


def epilogue_parallel(x, bias=None, act=None, residual=None, after=None):
    """`epilogue` with its rows split over THREADS threads (bit-identical to one thread)."""
    def rows(lo, hi):
        epilogue(x[lo:hi], None if bias is None else bias[lo:hi], act,
                 None if residual is None else residual[lo:hi], None if after is None else after[lo:hi])
    parallel(rows, x.shape[0], x.size)
    return x


LN_ROWS = 1024           # rows per chunk of layer_norm_: its temporaries stay ~1 MB however many tokens


def layer_norm_(x, p, eps=1e-5):
    """model/nn.layer_norm in place on x [..., C] (an array the caller has just made), in chunks of rows split over
    threads: the same operations on each row in the same order (so the same bits), without four full-size
    temporaries (at batch 4 the 33,600 query-selection tokens made ~140 MB of them)."""
    rows = x.reshape(-1, x.shape[-1])                                            # [N, C] (a view)

    def part(lo, hi):
        for r in range(lo, hi, LN_ROWS):
            xc = rows[r:min(hi, r + LN_ROWS)]
            xc -= xc.mean(axis=-1, keepdims=True)
            var = np.mean(xc * xc, axis=-1, keepdims=True)
            xc /= np.sqrt(var + eps)
            xc *= p["weight"]
            xc += p["bias"]
    parallel(part, rows.shape[0], x.size)
    return x

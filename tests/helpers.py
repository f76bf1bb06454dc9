"""Shared test helpers (import as `from helpers import assert_close`; pytest puts tests/ on sys.path)."""

import numpy as np


def assert_close(actual, expected, atol, what):
    """Fail unless `actual` and `expected` have the same shape and |actual - expected| <= atol everywhere.

    NaN must sit at the same positions in both (NaN == NaN counts as equal), and so must +-inf. On failure the
    message names `what`, the max abs difference and where it is, with both values there; on success nothing
    is printed. atol = 0 asks for exact equality (0.0 == -0.0 still counts as equal).
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != expected {expected.shape}")
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if (nan_a != nan_e).any():
        pos = tuple(int(i) for i in np.argwhere(nan_a != nan_e)[0])
        raise AssertionError(f"{what}: NaN mismatch at {pos} ({(nan_a != nan_e).sum()} positions): "
                             f"actual {actual[pos]}, expected {expected[pos]}")
    inf_a, inf_e = np.isinf(a), np.isinf(e)
    if (inf_a != inf_e).any() or (a[inf_a] != e[inf_a]).any():
        bad = (inf_a != inf_e) | (inf_a & (a != e))
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(f"{what}: inf mismatch at {pos} ({bad.sum()} positions): "
                             f"actual {actual[pos]}, expected {expected[pos]}")
    finite = ~(nan_a | inf_a)
    diff = np.abs(np.where(finite, a, 0.0) - np.where(finite, e, 0.0))
    if diff.size == 0:
        return
    pos = np.unravel_index(int(np.argmax(diff)), diff.shape)
    max_diff = diff[pos]
    if max_diff > atol:
        n_bad = int((diff > atol).sum())
        raise AssertionError(f"{what}: max abs diff {max_diff:.3g} > atol {atol:.3g} at {tuple(int(i) for i in pos)} "
                             f"({n_bad} of {diff.size} elements): actual {actual[pos]}, expected {expected[pos]}")

"""Shared test helpers (import as `from helpers import assert_close`; pytest puts tests/ on sys.path).

Every assert_close call is recorded in RECORDS (case, what, scale, max abs diff, tolerance, ratio), passing or not;
tests/conftest.py prints them as the parity report at the end of the run, so the margins are visible, not only the
failures.
"""

import os
from dataclasses import dataclass

import numpy as np

SENTINEL = 1e30   # |x| >= this is a fill value, not data: transformers' finfo(float32).max for invalid anchors


@dataclass
class Comparison:
    case: str         # the running test (pytest node id, without "tests/")
    what: str         # what was compared
    scale: float      # max |expected| over finite entries below SENTINEL (0 if none)
    max_diff: float   # max |actual - expected| over finite entries
    tol: float        # the tolerance it was held to: atol + rtol * scale
    passed: bool

    @property
    def ratio(self):
        """max_diff / tol: below 1 passes; 0 for an exact match, inf for any difference where tol is 0."""
        if self.max_diff == 0:
            return 0.0
        return self.max_diff / self.tol if self.tol > 0 else float("inf")


RECORDS = []


def _current_case():
    name = os.environ.get("PYTEST_CURRENT_TEST", "")         # "tests/test_x.py::test_y[param] (call)"
    name = name.rsplit(" (", 1)[0]
    return name[len("tests/"):] if name.startswith("tests/") else name


def scale_of(expected):
    """max |expected| over its finite entries below SENTINEL: the size of the values a stage holds."""
    e = np.asarray(expected, dtype=np.float64)
    ok = np.isfinite(e) & (np.abs(e) < SENTINEL)
    return float(np.abs(e[ok]).max()) if ok.any() else 0.0


def assert_close(actual, expected, atol, what, rtol=0.0):
    """Fail unless `actual` and `expected` have the same shape and |actual - expected| <= tol everywhere, where
    tol = atol + rtol * scale_of(expected) (one number for the whole array: the error of float32 arithmetic grows
    with the size of the values it works on, so rtol states it relative to the stage's own scale).

    NaN must sit at the same positions in both (NaN == NaN counts as equal), and so must +-inf. On failure the
    message names `what`, the max abs difference and where it is, with both values there. atol = rtol = 0 asks for
    exact equality (0.0 == -0.0 still counts as equal). Every call is recorded in RECORDS for the parity report.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != expected {expected.shape}")
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    scale = scale_of(e)
    tol = atol + rtol * scale
    record = Comparison(_current_case(), what, scale, 0.0, tol, False)
    RECORDS.append(record)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if (nan_a != nan_e).any():
        pos = tuple(int(i) for i in np.argwhere(nan_a != nan_e)[0])
        record.max_diff = float("inf")
        raise AssertionError(f"{what}: NaN mismatch at {pos} ({(nan_a != nan_e).sum()} positions): "
                             f"actual {actual[pos]}, expected {expected[pos]}")
    inf_a, inf_e = np.isinf(a), np.isinf(e)
    if (inf_a != inf_e).any() or (a[inf_a] != e[inf_a]).any():
        bad = (inf_a != inf_e) | (inf_a & (a != e))
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        record.max_diff = float("inf")
        raise AssertionError(f"{what}: inf mismatch at {pos} ({bad.sum()} positions): "
                             f"actual {actual[pos]}, expected {expected[pos]}")
    finite = ~(nan_a | inf_a)
    diff = np.abs(np.where(finite, a, 0.0) - np.where(finite, e, 0.0))
    if diff.size == 0:
        record.passed = True
        return
    pos = np.unravel_index(int(np.argmax(diff)), diff.shape)
    record.max_diff = max_diff = float(diff[pos])
    record.passed = max_diff <= tol
    if not record.passed:
        n_bad = int((diff > tol).sum())
        how = f"tol {tol:.3g}" + (f" = {atol:.3g} + {rtol:.3g} * scale {scale:.3g}" if rtol else "")
        raise AssertionError(f"{what}: max abs diff {max_diff:.3g} > {how} at {tuple(int(i) for i in pos)} "
                             f"({n_bad} of {diff.size} elements): actual {actual[pos]}, expected {expected[pos]}")

"""The parity report: at the end of a run, how close every assert_close comparison came to its tolerance.

By default one row per test: how many comparisons it made and its tightest one (largest max_diff / tol). With -v,
every comparison. Rows are sorted tightest first; a ratio below 1 passes, "exact" means no difference at all.
"""

from helpers import RECORDS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RECORDS:
        return
    tr = terminalreporter
    verbose = config.getoption("verbose") > 0
    if verbose:
        rows = [(c, None, c.passed) for c in RECORDS]
    else:
        by_case = {}
        for c in RECORDS:
            by_case.setdefault(c.case, []).append(c)
        rows = [(max(cs, key=lambda c: c.ratio), len(cs), all(c.passed for c in cs)) for cs in by_case.values()]
    rows.sort(key=lambda r: -r[0].ratio)
    wt = min(max(len(r[0].case) for r in rows), 90)
    ww = min(max(len(r[0].what) for r in rows), 60)
    n = "" if verbose else f"{'n':>5s}  "
    tr.section(f"parity report: {len(RECORDS)} comparisons (max |actual - expected| against the tolerance)")
    tr.write_line(f"{n}{'test':<{wt}s}  {'compared':<{ww}s}  {'max|ref|':>9s} {'max diff':>9s} {'tol':>9s} "
                  f"{'ratio':>7s}")
    for c, count, passed in rows:
        ratio = "exact" if c.ratio == 0 else f"{c.ratio:.3g}"
        n = "" if count is None else f"{count:>5d}  "
        tr.write_line(f"{n}{c.case[:wt]:<{wt}s}  {c.what[:ww]:<{ww}s}  {c.scale:>9.3g} {c.max_diff:>9.3g} "
                      f"{c.tol:>9.3g} {ratio:>7s}" + ("" if passed else "  FAILED"))
    failed = sum(not c.passed for c in RECORDS)
    tightest = max(RECORDS, key=lambda c: c.ratio)
    tr.write_line(f"{len(RECORDS) - failed} of {len(RECORDS)} comparisons within tolerance; tightest: "
                  f"{tightest.ratio:.3g} of its tolerance ({tightest.case}: {tightest.what})"
                  + ("" if verbose else "; -v lists every comparison"))

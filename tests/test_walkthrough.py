"""The teaching notebooks in walkthrough/: each runs top to bottom, and each committed .ipynb matches its .py.

The .py files (jupytext percent format) are the source; the .ipynb files are what a reader opens, committed WITH
their outputs (figures, printed numbers) made by `python tools/build_walkthrough.py` from the shipped demo model.
A committed notebook must have the cells of its .py (sources compared; outputs allowed), and the stamp its first
code cell printed (`plotting.weights_stamp()`: "sha256 <hex>") must be the SHA-256 of the demo weights shipped
now, so that outputs made with older weights fail as stale. A notebook is executed
with nbclient in a kernel running this interpreter, from a temporary working directory (the notebooks must find
their data relative to the package), with HF_HUB_OFFLINE=1 (they must never download). Each must finish within
NOTEBOOK_BUDGET_S seconds (default 60; set RTDETRV2_NOTEBOOK_BUDGET to change it on a slow machine); the time is
printed (pytest -s shows it).
"""

import hashlib
import os
import re
import sys
import time
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

WALKTHROUGH = Path(__file__).resolve().parents[1] / "walkthrough"
NOTEBOOKS = sorted(WALKTHROUGH.glob("[0-9][0-9]_*.py"))
NOTEBOOK_BUDGET_S = float(os.environ.get("RTDETRV2_NOTEBOOK_BUDGET", "60"))
DEMO_WEIGHTS = Path(__file__).resolve().parents[1] / "rtdetrv2_np" / "demo" / "models" / "shapes_bilinear" / \
    "model.safetensors"
STALE = "outputs are stale: run python tools/build_walkthrough.py"


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06", "07"]


def cells(nb):
    return [(c.cell_type, c.source) for c in nb.cells]


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_ipynb_matches_py(py):
    """The committed .ipynb has the cells of the .py (same types, same sources; outputs allowed)."""
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: {STALE}"
    committed = nbformat.read(ipynb, as_version=4)
    nbformat.validate(committed)
    expected = jupytext.read(py)
    assert cells(committed) == cells(expected), f"{ipynb.name} differs from {py.name}: {STALE}"
    assert committed.metadata.get("kernelspec", {}).get("name") == "python3"


def text_of(outputs):
    """The printed text of a code cell's outputs (stream and text/plain)."""
    parts = []
    for o in outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            parts.append(o.get("data", {}).get("text/plain", ""))
    return "".join(parts)


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_are_current(py):
    """The committed outputs were made with the demo weights shipped now: the first code cell's stamp
    (plotting.weights_stamp: "sha256 <hex>") equals the SHA-256 of rtdetrv2_np/demo/models/shapes_bilinear/
    model.safetensors, and every code cell was executed without an error."""
    committed = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), f"{py.stem}.ipynb has unexecuted cells: {STALE}"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{py.stem}.ipynb was committed with an error output: {STALE}"
    stamp = re.search(r"sha256 ([0-9a-f]{64})", text_of(code[0].outputs))
    assert stamp, f"{py.stem}: the first code cell must print plotting.weights_stamp() (sha256 <hex>)"
    shipped = hashlib.sha256(DEMO_WEIGHTS.read_bytes()).hexdigest()
    assert stamp.group(1) == shipped, f"{py.stem}.ipynb: {STALE} (made with {stamp.group(1)[:12]}, shipped " \
                                      f"{shipped[:12]})"


def build_tool():
    """tools/build_walkthrough.py as a module (its kernel_manager: a kernel that runs this very interpreter)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_walkthrough",
                                                  WALKTHROUGH.parent / "tools" / "build_walkthrough.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(py, tmp_path, monkeypatch):
    from nbclient.exceptions import CellExecutionError
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")            # inherited by the kernel: no downloads
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))   # and no cached checkpoint either
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    nb = jupytext.read(py)
    km = build_tool().kernel_manager(tmp_path / "kernels")
    client = nbclient.NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{py.name} failed:\n{str(e)[-3000:]}", pytrace=False)
    seconds = time.perf_counter() - start
    print(f"{py.name}: ran in {seconds:.1f} s (budget {NOTEBOOK_BUDGET_S:.0f} s)")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert seconds < NOTEBOOK_BUDGET_S, f"{py.name} took {seconds:.1f} s, more than {NOTEBOOK_BUDGET_S:.0f} s"


MAX_NOTEBOOK_BYTES = 1_500_000      # committed outputs stay readable on GitHub and light in git (PNG at 72 dpi)


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_small(py):
    size = py.with_suffix(".ipynb").stat().st_size
    assert size < MAX_NOTEBOOK_BYTES, f"{py.stem}.ipynb is {size / 1e6:.2f} MB (limit {MAX_NOTEBOOK_BYTES / 1e6} MB)"


def test_build_tool_refuses_an_unknown_notebook():
    """tools/build_walkthrough.py names what it cannot find and builds nothing."""
    import subprocess
    tool = WALKTHROUGH.parent / "tools" / "build_walkthrough.py"
    run = subprocess.run([sys.executable, str(tool), "99_no_such"], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "error: no notebook in walkthrough/ starts with 99_no_such" in run.stderr, run

"""The teaching notebooks in walkthrough/: each runs top to bottom, and each committed .ipynb matches its .py.

The .py files (jupytext percent format) are the source; the .ipynb files are what a reader opens, committed without
outputs and regenerated with `jupytext --sync walkthrough/*.py` (walkthrough/README.md). A notebook is executed
with nbclient in a kernel running this interpreter, from a temporary working directory (the notebooks must find
their data relative to the package), with HF_HUB_OFFLINE=1 (they must never download). Each must finish within
NOTEBOOK_BUDGET_S seconds (default 60; set RTDETRV2_NOTEBOOK_BUDGET to change it on a slow machine); the time is
printed (pytest -s shows it).
"""

import os
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


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06"]


def cells(nb):
    return [(c.cell_type, c.source) for c in nb.cells]


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_ipynb_matches_py(py):
    """The committed .ipynb is the jupytext conversion of the .py: same cells, same sources, no outputs."""
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `jupytext --sync walkthrough/*.py` (walkthrough/README.md)"
    committed = nbformat.read(ipynb, as_version=4)
    nbformat.validate(committed)
    expected = jupytext.read(py)
    assert cells(committed) == cells(expected), (
        f"{ipynb.name} differs from {py.name}: regenerate it with `jupytext --sync walkthrough/*.py`")
    for c in committed.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, f"{ipynb.name} was committed with outputs"
    assert committed.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory):
    """A kernel spec that runs this very interpreter (not whatever `python` is first on PATH)."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    root = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(str(root / "this-python"), overrides={
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "this interpreter"})
    return KernelSpecManager(kernel_dirs=[str(root)])


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(py, kernel_specs, tmp_path, monkeypatch):
    from jupyter_client.manager import KernelManager
    from nbclient.exceptions import CellExecutionError
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")            # inherited by the kernel: no downloads
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    nb = jupytext.read(py)
    km = KernelManager(kernel_name="this-python", kernel_spec_manager=kernel_specs)
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

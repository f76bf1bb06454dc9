"""Build the walkthrough notebooks with their outputs: walkthrough/NN_*.py -> walkthrough/NN_*.ipynb, executed.

The jupytext percent-format .py files are the source; the committed .ipynb files carry the outputs a reader sees
without running anything (figures, printed numbers). This is the one command that makes them:

    python tools/build_walkthrough.py                    # every notebook
    python tools/build_walkthrough.py 00 05_postprocess  # some: a number or the start of a name

Each notebook is converted with jupytext, executed top to bottom with nbclient in a kernel that runs this very
interpreter, from a fresh temporary working directory (a notebook must find its data relative to the package),
with HF_HUB_OFFLINE=1 and the Hugging Face cache pointed at an empty temporary folder (HF_HOME, HF_HUB_CACHE): the
outputs come from the demo model shipped in the package, never from whatever checkpoint this machine has cached.
The first code cell of each notebook prints `plotting.weights_stamp()` (the demo weights file and its SHA-256);
tests/test_walkthrough.py compares that stamp with the shipped file, so outputs made with older weights fail
("outputs are stale"). The .ipynb is written atomically (temp file + rename). A notebook that raises is not
written, and the command exits with status 1.

Figures are embedded as PNG at DPI dots per inch (an IPython profile in the temporary folder sets the inline
backend's print_figure_kwargs; run by hand, the notebooks draw at matplotlib's own resolution), so that a committed
notebook stays well under 1.5 MB. Execution timings and other volatile metadata are dropped, so rebuilding with the
same weights changes only what the notebooks themselves print as varying (their run time); cells are
numbered c00, c01, ... in order.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rtdetrv2_np.fileio import atomic_write  # noqa: E402
WALKTHROUGH = REPO / "walkthrough"
DPI = 72                    # committed figures: readable on screen, small in git (a notebook's figures < ~1 MB)


def notebooks(selection):
    """The .py sources to build: all, or those whose name starts with one of `selection` (e.g. "00", "05_post")."""
    every = sorted(WALKTHROUGH.glob("[0-9][0-9]_*.py"))
    if not selection:
        return every
    chosen = [p for p in every if any(p.name.startswith(s) for s in selection)]
    missing = [s for s in selection if not any(p.name.startswith(s) for p in every)]
    if missing:
        raise SystemExit(f"error: no notebook in {WALKTHROUGH.name}/ starts with {', '.join(missing)}")
    return chosen


def kernel_manager(root):
    """A KernelManager whose kernel runs this interpreter (not whatever `python` is first on PATH)."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    write_kernel_spec(str(Path(root) / "this-python"), overrides={
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "this interpreter"})
    return KernelManager(kernel_name="this-python", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(root)]))


def clean(nb):
    """Drop volatile metadata (execution timings, the kernel's own language_info version strings) and number the
    cells "c00", "c01", ... (jupytext gives them new random ids on every conversion, which made every rebuild
    change every cell in git)."""
    for i, cell in enumerate(nb.cells):
        cell.metadata.pop("execution", None)
        cell.id = f"c{i:02d}"
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    return nb


def build(py, timeout=600):
    """Execute one notebook offline with an empty hub cache and write its .ipynb with outputs. Returns seconds."""
    import jupytext
    import nbclient
    import nbformat
    nb = jupytext.read(py)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        work, hf, kernels, ipy = tmp / "work", tmp / "hf", tmp / "kernels", tmp / "ipython"
        for d in (work, hf / "hub", kernels, ipy / "profile_default"):
            d.mkdir(parents=True)
        (ipy / "profile_default" / "ipython_kernel_config.py").write_text(
            f"c.InlineBackend.print_figure_kwargs = {{'bbox_inches': 'tight', 'dpi': {DPI}}}\n")
        saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "OPENBLAS_NUM_THREADS",
                                                "PYDEVD_DISABLE_FILE_VALIDATION", "MPLBACKEND", "IPYTHONDIR")}
        os.environ.update(HF_HUB_OFFLINE="1", HF_HOME=str(hf), HF_HUB_CACHE=str(hf / "hub"), IPYTHONDIR=str(ipy),
                          PYDEVD_DISABLE_FILE_VALIDATION="1", MPLBACKEND="module://matplotlib_inline.backend_inline")
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")        # the kernel inherits the environment
        try:
            client = nbclient.NotebookClient(nb, km=kernel_manager(kernels), timeout=timeout,
                                             resources={"metadata": {"path": str(work)}})
            start = time.perf_counter()
            client.execute()
            seconds = time.perf_counter() - start
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    clean(nb)
    nbformat.validate(nb)
    text = nbformat.writes(nb)
    atomic_write(py.with_suffix(".ipynb"), (text if text.endswith("\n") else text + "\n").encode("utf-8"))
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python tools/build_walkthrough.py", description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", metavar="NAME",
                        help="notebooks to build: a number (00) or the start of a name (05_post); default: all")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    a = parser.parse_args(argv)
    from nbclient.exceptions import CellExecutionError
    failed = 0
    for py in notebooks(a.notebooks):
        try:
            seconds = build(py, a.timeout)
        except CellExecutionError as e:
            failed += 1
            print(f"error: {py.relative_to(REPO)}: a cell raised; {py.with_suffix('.ipynb').name} not written\n"
                  f"{str(e)[-2000:]}", file=sys.stderr)
            continue
        size = py.with_suffix(".ipynb").stat().st_size
        print(f"{py.with_suffix('.ipynb').relative_to(REPO)}: executed in {seconds:.1f} s, {size / 1e6:.2f} MB")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

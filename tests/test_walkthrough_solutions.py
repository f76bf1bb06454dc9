"""The answers to the walkthrough's exercises (walkthrough/solutions/NN_<name>.py) run and pass their own checks.

Each solution file is a plain script with functions exercise_1(), exercise_2(), ... that compute an answer, print it
and assert a check against the package. Every one is called here, offline (HF_HUB_OFFLINE=1 and an empty hub
cache: the answers use the shipped demo model, never a download). pytest -s shows the printed answers.
"""

import importlib.util
import re
from pathlib import Path

import pytest

SOLUTIONS = Path(__file__).resolve().parents[1] / "walkthrough" / "solutions"
FILES = sorted(SOLUTIONS.glob("[0-9][0-9]_*.py"))


def load(path):
    """Import a solution file by path (its name starts with a digit, so it is not an importable module name)."""
    spec = importlib.util.spec_from_file_location(f"walkthrough_solution_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exercises():
    """(file, function name) for every exercise_N function of every solution file, in file and number order."""
    found = []
    for path in FILES:
        names = re.findall(r"^def (exercise_\d+)\(", path.read_text(encoding="utf-8"), flags=re.M)
        found += [(path, n) for n in sorted(names, key=lambda n: int(n.split("_")[1]))]
    return found


def test_there_are_solutions():
    """Every solution file belongs to a notebook and has at least one exercise."""
    notebooks = {p.stem for p in SOLUTIONS.parent.glob("[0-9][0-9]_*.py")}
    assert FILES, f"no solution files in {SOLUTIONS}"
    for path in FILES:
        assert path.stem in notebooks, f"{path.name} has no notebook walkthrough/{path.name}"
        assert re.search(r"^def exercise_1\(", path.read_text(encoding="utf-8"), flags=re.M), path.name


@pytest.mark.parametrize("path,name", exercises(), ids=lambda v: v.stem if isinstance(v, Path) else v)
def test_exercise(path, name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.chdir(tmp_path)                      # a solution must not depend on the working directory
    getattr(load(path), name)()

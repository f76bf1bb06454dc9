"""Answers to the exercises of walkthrough/06_weights: each function computes its answer, prints it and checks it
against the package. Run `python walkthrough/solutions/06_weights.py`; tests/test_walkthrough_solutions.py calls
every exercise_* function.
"""

import json
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

import rtdetrv2_np
from rtdetrv2_np import RTDetrError, load_model, plotting
from rtdetrv2_np.weights import expected_shapes, flatten_params

REPO = Path(rtdetrv2_np.__file__).resolve().parents[1]
RULES_5X = [(r"out_proj", "o_proj"), (r"layers\.(\d+)\.(fc[12])", r"layers.\1.mlp.\2"),
            (r"encoder\.encoder\.(\d+)\.layers", r"encoder.aifi.\1.layers")]          # the notebook's rules
RULES_4X = [(r"o_proj", "out_proj"), (r"layers\.(\d+)\.mlp\.(fc[12])", r"layers.\1.\2"),
            (r"encoder\.aifi\.(\d+)\.layers", r"encoder.encoder.\1.layers")]          # their inverse


def rename(name, rules):
    for pattern, repl in rules:
        name = re.sub(pattern, repl, name)
    return name


def exercise_1():
    """Tensors inference never reads: the denoising embedding (training only). Dropping it changes nothing."""
    model, _ = plotting.teaching_model()
    unused = [n for n in expected_shapes(model.config) if "denoising" in n]
    params = {**model.params, "model": {k: v for k, v in model.params["model"].items() if k != "denoising_class_embed"}}
    stripped = type(model)(model.config, params, model.source)
    x = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)
    diff = float(np.abs(stripped(x).logits - model(x).logits).max())
    print(f"exercise 1: never read at inference: {unused} (max logit change without them: {diff})")
    assert unused and diff == 0.0
    return unused


def exercise_2():
    """config.json says 4 decoder layers, the file holds 3: load_model names the first missing tensor."""
    model, _ = plotting.teaching_model()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        d = model.config.to_hf_dict()
        d["decoder_layers"] = d["decoder_layers"] + 1
        (folder / "config.json").write_text(json.dumps(d))
        save_file(flatten_params(model.params), str(folder / "model.safetensors"))
        try:
            load_model(folder)
        except RTDetrError as e:
            message = str(e).replace(tmp, "<tmp>")
        else:
            raise AssertionError("a config with an extra decoder layer loaded")
    print(f"exercise 2: RTDetrError: {message}")
    assert f"missing tensor model.decoder.layers.{model.config.decoder_layers}." in message
    return message


def exercise_3():
    """The inverse of to_5x maps every 5.x run-time name back to the file's 4.x name."""
    model, _ = plotting.teaching_model()
    names = list(expected_shapes(model.config))
    back = {n: rename(rename(n, RULES_5X), RULES_4X) for n in names}
    wrong = [n for n, b in back.items() if b != n]
    changed = sum(rename(n, RULES_5X) != n for n in names)
    print(f"exercise 3: {changed} of {len(names)} names differ in 5.x; all map back: {not wrong}")
    assert not wrong and changed > 0
    return changed


def exercise_4():
    """A torch.save file is a zip: data.pkl (the pickled structure) and data/<k> (each storage's raw bytes)."""
    pth = REPO / "tests" / "fixtures" / "official" / "tiny_basic" / "tiny_basic.pth"
    with zipfile.ZipFile(pth) as z:
        entries = z.infolist()
    data = [e for e in entries if re.search(r"/data/\d+$", e.filename)]
    other = [e.filename for e in entries if e not in data]
    print(f"exercise 4: {len(entries)} entries: {other} and {len(data)} storages under <archive>/data/ "
          f"({sum(e.file_size for e in data):,d} bytes of tensor data)")
    from rtdetrv2_np.pth import load_pth
    sd = load_pth(pth)
    assert sum(e.file_size for e in data) >= sum(v.nbytes for v in sd.values()) > 0
    assert any(f.endswith("data.pkl") for f in other)
    return len(data)


if __name__ == "__main__":
    for f in (exercise_1, exercise_2, exercise_3, exercise_4):
        f()

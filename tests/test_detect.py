"""python -m rtdetrv2_np.detect, run as a user runs it (a subprocess from the repository root, no torch): output
format, options, exit status, errors and what is (not) left on disk, downloads from a fake hub on 127.0.0.1.

Exit status under test (detect.py's docstring): 0 every image processed; 1 the model or at least one image failed
(the other images are still processed and written); 2 usage error. Every error is one line "error: <file>: ...".
"""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from fake_hub import FakeHub
from helpers import assert_close
from PIL import Image
from safetensors.numpy import save_file

from rtdetrv2_np.model.config import config_from_dict
from rtdetrv2_np.postprocess import COCO_LABEL_TO_CATEGORY, COCO_NAMES
from rtdetrv2_np.random_weights import random_params
from rtdetrv2_np.weights import expected_shapes

ROOT = Path(__file__).resolve().parents[1]
CATS = "tests/data/coco_000000039769.png"
OTHER = "tests/data/coco_000000004016.png"
REFERENCE = ROOT / "tests" / "fixtures" / "reference"
RECORDED = ROOT / "tests" / "fixtures" / "detect" / "tiny_basic_cats.json"
PTH_FIXTURES = ROOT / "tests" / "fixtures" / "pth"
LINE = re.compile(r"^(?P<label>[\w ]+): (?P<score>\d\.\d\d) \[(?P<box>-?\d+\.\d\d(, -?\d+\.\d\d){3})\]$")
TIMING = re.compile(r"^(\d+) images? in \d+\.\d s \(load \d+\.\d s, \d+\.\d\d s/image\)(, \d+ failed)?$")


def clean_env(**extra):
    """The environment of a user without hub settings; the package importable from the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(PYTHONPATH=str(ROOT), no_proxy="127.0.0.1,localhost", **extra)
    return env


def detect(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "rtdetrv2_np.detect", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env=env or clean_env())


def write_model_dir(folder, seed=0):
    """A hub-layout model folder: the tiny_basic architecture with the 80 COCO class names, random weights."""
    d = json.loads((REFERENCE / "tiny_basic" / "config.json").read_text())
    d["id2label"] = {str(i): name for i, name in enumerate(COCO_NAMES)}
    d.pop("label2id", None)
    cfg = config_from_dict(d)
    os.makedirs(folder, exist_ok=True)
    (Path(folder) / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
    save_file(random_params(expected_shapes(cfg), seed, cfg.n_points), str(Path(folder) / "model.safetensors"),
              metadata={"format": "pt"})
    return Path(folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("model") / "tiny_coco")


def files_in(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file()) \
        if Path(folder).exists() else []


def one_error_line(r):
    """The run failed with exit status 1 and said so in exactly one line; returns it."""
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------

def test_fresh_checkout_prints_detections(model_dir):
    r = detect(CATS, "--model", model_dir)                    # the command as documented, default size 640x640
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"tests/data/coco_000000039769\.png \(640x480\): \d+ detections?", lines[0])
    n = int(lines[0].split(": ")[1].split()[0])
    assert n > 0 and len(lines) == n + 1
    for line in lines[1:]:
        m = LINE.match(line)
        assert m and m["label"] in COCO_NAMES, line
        assert float(m["score"]) >= 0.5 - 0.005               # threshold 0.5 (printed rounded to 2 decimals)
    assert TIMING.match(r.stderr.strip()) and r.stderr.count("\n") == 1   # no progress for one image


def test_recorded_transformers_detections_through_the_command():
    """The cats image through the command with the recorded tiny_basic model (96x64 input) gives what transformers'
    RTDetrImageProcessorPil + RTDetrV2ForObjectDetection + post_process_object_detection gave
    (tools/record_detect.py): same labels in the same order, boxes within 1e-3 pixel."""
    rec = json.loads(RECORDED.read_text())
    # The premise: the recorded scores are well separated, so rounding (~1e-6 here) cannot reorder them or move
    # one across the threshold.
    assert rec["min_gap_between_kept_scores"] >= 1e-4 and rec["margin_to_threshold"] >= 1e-4
    H, W = rec["size_hw"]
    r = detect(rec["image"], "--model", rec["model"], "--size", H, W, "--threshold", repr(rec["threshold"]),
               "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (image,) = doc["images"]
    assert [image["height"], image["width"]] == rec["target_size_hw"]
    dets = image["detections"]
    assert [d["label_id"] for d in dets] == rec["labels"]
    assert [d["label"] for d in dets] == rec["names"]
    # scores: sigmoid of logits that differ from PyTorch's by ~1e-6, and torch's Sleef exp by a few ulp; 1e-5 is
    # ten times that and ten times below the recorded gaps
    assert_close([d["score"] for d in dets], rec["scores"], 1e-5, "scores")
    # boxes: normalised boxes agree to ~4e-7, times 640 pixels -> ~2.5e-4 pixel; 1e-3 pixel is the bound
    assert_close([d["box"] for d in dets], rec["boxes"], 1e-3, "boxes (pixels)")
    # the same run as text: one line per recorded detection, two decimals
    r = detect(rec["image"], "--model", rec["model"], "--size", H, W, "--threshold", repr(rec["threshold"]))
    lines = r.stdout.splitlines()[1:]
    assert len(lines) == len(rec["labels"])
    for line, name, score, box in zip(lines, rec["names"], rec["scores"], rec["boxes"]):
        m = LINE.match(line)
        assert m and m["label"] == name, line
        # printed rounded to 0.01; the values themselves agree to 1e-3, so the printed ones to 0.005 + 1e-3
        assert abs(float(m["score"]) - score) <= 0.006 and \
            np.abs(np.array(m["box"].split(", "), float) - box).max() <= 0.006, line


def test_json_is_the_only_thing_on_stdout_and_progress_goes_to_stderr(model_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(ROOT / CATS, folder / "b_cats.png")
    shutil.copy(ROOT / OTHER, folder / "a_other.png")
    (folder / "notes.txt").write_text("not an image, and not an image extension: ignored")
    r = detect(folder, "--model", model_dir, "--size", 96, 64, "--json", "--threshold", 0)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)                                 # the whole of stdout is one JSON document
    assert [Path(i["file"]).name for i in doc["images"]] == ["a_other.png", "b_cats.png"]   # name order
    assert doc["errors"] == [] and doc["threshold"] == 0 and doc["size"] == [96, 64]
    dets = doc["images"][1]["detections"]
    assert len(dets) == 20                                     # threshold 0: the top Nq = 20 of the tiny model
    assert all(set(d) == {"label", "label_id", "score", "box"} for d in dets)
    err = r.stderr.splitlines()
    assert err[:2] == ["[1/2] a_other.png", "[2/2] b_cats.png"] and TIMING.match(err[2]) and len(err) == 3


def test_save_and_coco_json(model_dir, tmp_path):
    out, coco = tmp_path / "annotated", tmp_path / "results.json"
    r = detect(CATS, OTHER, "--model", model_dir, "--size", 96, 64, "--threshold", 0.1, "--save", out,
               "--coco-json", coco, "--json")
    assert r.returncode == 0, r.stderr
    assert files_in(out) == ["coco_000000004016.png", "coco_000000039769.png"]
    for name in files_in(out):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 300
    doc = json.loads(r.stdout)
    records = json.loads(coco.read_text())
    assert {rec["image_id"] for rec in records} == {39769, 4016}       # the number ending each file name
    cats = [rec for rec in records if rec["image_id"] == 39769]
    dets = doc["images"][0]["detections"]
    assert len(cats) == len(dets)
    for rec, d in zip(cats, dets):
        assert rec["category_id"] == COCO_LABEL_TO_CATEGORY[d["label_id"]]
        x1, y1, x2, y2 = d["box"]
        assert_close(rec["bbox"], [x1, y1, x2 - x1, y2 - y1], 1e-4, "COCO bbox = x, y, w, h")   # float32 rounding
        assert rec["score"] == d["score"]
    assert files_in(tmp_path) == sorted(["results.json"] + [f"annotated/{n}" for n in files_in(out)])   # no temps


def test_coco_ids_fall_back_to_positions(model_dir, tmp_path):
    shutil.copy(ROOT / CATS, tmp_path / "cats.png")
    r = detect(tmp_path / "cats.png", OTHER, "--model", model_dir, "--size", 96, 64, "--threshold", 0.1,
               "--coco-json", tmp_path / "r.json")
    assert r.returncode == 0
    assert {rec["image_id"] for rec in json.loads((tmp_path / "r.json").read_text())} == {1, 2}
    assert "note: --coco-json: image ids are the images' positions" in r.stderr


def test_coco_json_needs_the_80_coco_classes(tmp_path):
    r = detect(CATS, "--model", REFERENCE / "tiny_basic", "--size", 96, 64, "--coco-json", tmp_path / "r.json")
    assert "has 5 classes, --coco-json needs a model of the 80 COCO classes" in one_error_line(r)
    assert files_in(tmp_path) == []


def test_method_option(model_dir):
    a = detect(CATS, "--model", model_dir, "--size", 96, 64, "--json", "--threshold", 0)
    b = detect(CATS, "--model", model_dir, "--size", 96, 64, "--json", "--threshold", 0, "--method", "discrete")
    assert json.loads(a.stdout)["method"] == "bilinear" and json.loads(b.stdout)["method"] == "discrete"
    assert json.loads(a.stdout)["images"] != json.loads(b.stdout)["images"]


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: one error line, exit status 1, nothing partial on disk
# ---------------------------------------------------------------------------------------------------------------

def bomb_png(path, side=20000):
    """A valid 1-bit greyscale PNG of side x side pixels (4e8 > 2 * Pillow's MAX_IMAGE_PIXELS), about 50 kB."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    row = b"\0" * (1 + side // 8)                            # filter byte 0, then side bits of zeros
    idat = b"".join(z.compress(row * 1000) for _ in range(side // 1000)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def bad_image(kind, folder):
    if kind == "missing":
        return folder / "missing.png", "missing.png: no such file or folder; check the path"
    if kind == "not an image":
        (folder / "notes.jpg").write_text("these are notes, not a JPEG\n")
        return folder / "notes.jpg", "notes.jpg: not an image file of a supported format (JPEG, PNG, BMP, GIF"
    if kind == "truncated":
        data = (ROOT / CATS).read_bytes()
        (folder / "cut.png").write_bytes(data[: len(data) // 2])
        return folder / "cut.png", "cut.png: could not decode the image"
    if kind == "decompression bomb":
        return bomb_png(folder / "bomb.png"), "bomb.png: refused as a possible decompression bomb"
    if kind == "empty folder":
        (folder / "empty").mkdir()
        return folder / "empty", "empty: no image files in this folder"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["missing", "not an image", "truncated", "decompression bomb", "empty folder"])
def test_bad_image(model_dir, tmp_path, kind):
    inputs = tmp_path / "in"
    inputs.mkdir()
    path, message = bad_image(kind, inputs)
    if kind == "decompression bomb":
        assert path.stat().st_size < 200_000                 # a small file that claims 20000 x 20000 pixels
    out = tmp_path / "out"
    r = detect(path, "--model", model_dir, "--size", 96, 64, "--save", out / "annotated", "--coco-json",
               tmp_path / "results.json")
    line = one_error_line(r)
    assert line.startswith(f"error: {path}") and message in line, line
    assert r.stdout == ""
    assert files_in(out) == [] and not (tmp_path / "results.json").exists()


def test_bad_image_in_a_folder_is_skipped_and_the_rest_processed(model_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(ROOT / CATS, folder / "a.png")
    (folder / "b.jpg").write_text("not a JPEG")
    shutil.copy(ROOT / OTHER, folder / "c.png")
    r = detect(folder, "--model", model_dir, "--size", 96, 64, "--save", tmp_path / "ann", "--json",
               "--threshold", 0.1)
    assert r.returncode == 1                                     # not every image was processed
    doc = json.loads(r.stdout)
    assert [Path(i["file"]).name for i in doc["images"]] == ["a.png", "c.png"]
    assert len(doc["errors"]) == 1 and doc["errors"][0]["file"] == str(folder / "b.jpg")
    errors = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
    assert errors == [f"error: {folder / 'b.jpg'}: not an image file of a supported format (JPEG, PNG, BMP, GIF, "
                      f"TIFF, WebP, PPM/PGM/PBM); convert it to JPEG or PNG"]
    assert TIMING.match(r.stderr.splitlines()[-1]) and r.stderr.splitlines()[-1].endswith(", 1 failed")
    assert files_in(tmp_path / "ann") == ["a.png", "c.png"]


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def bad_model(kind, model_dir, tmp_path):
    if kind == "missing model":
        return tmp_path / "nothing_here", "nothing_here: no such file or directory"
    if kind == "truncated weights":
        d = copy_model(model_dir, tmp_path / "m")
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[: len(data) // 2])
        return d, "model.safetensors: not a readable .safetensors file"
    if kind == "not safetensors":
        (tmp_path / "weights.safetensors").write_text('{"this is": "json"}')
        return tmp_path / "weights.safetensors", "weights.safetensors: not a readable .safetensors file"
    from rtdetrv2_np.weights import read_safetensors
    tensors, _ = read_safetensors(model_dir / "model.safetensors")
    config = (model_dir / "config.json").read_text()
    name = "model.decoder.layers.1.fc2.weight"
    if kind == "missing tensor":
        del tensors[name]
        message = f"missing tensor {name}"
    elif kind == "mis-shaped tensor":
        tensors[name] = tensors[name][:, :-1].copy()
        message = f"tensor {name} has shape [16, 31], the architecture in its config needs [16, 32]"
    else:
        raise ValueError(kind)
    save_file(tensors, str(tmp_path / "converted.safetensors"), metadata={"config": config})
    return tmp_path / "converted.safetensors", message


@pytest.mark.parametrize("kind", ["missing model", "truncated weights", "not safetensors", "missing tensor",
                                  "mis-shaped tensor"])
def test_bad_model(model_dir, tmp_path, kind):
    model, message = bad_model(kind, model_dir, tmp_path)
    out = tmp_path / "out"
    r = detect(CATS, "--model", model, "--size", 96, 64, "--save", out, "--coco-json", out / "r.json")
    line = one_error_line(r)
    assert line.startswith(f"error: {model}") and message in line, line
    assert r.stdout == "" and files_in(out) == []


@pytest.mark.skipif(not (PTH_FIXTURES / "evil_system.pth").exists(), reason="tests/fixtures/pth not present")
def test_malicious_pth_model(tmp_path):
    marker = json.loads(str(np.load(PTH_FIXTURES / "expected.npz")["meta_json"]))["markers"]["evil_system.pth"]
    if os.path.exists(marker):
        os.unlink(marker)
    r = detect(CATS, "--model", PTH_FIXTURES / "evil_system.pth", "--save", tmp_path / "out")
    line = one_error_line(r)
    assert "evil_system.pth: refused to load: the pickle calls for posix.system" in line or \
        "evil_system.pth: refused to load: the pickle calls for os.system" in line, line
    assert not os.path.exists(marker) and files_in(tmp_path) == []


def test_official_pth_model(tmp_path):
    rec = json.loads(RECORDED.read_text())
    H, W = rec["size_hw"]
    args = (rec["image"], "--size", H, W, "--threshold", repr(rec["threshold"]), "--json")
    a = detect(*args, "--model", rec["model"])
    b = detect(*args, "--model", ROOT / "tests" / "fixtures" / "official" / "tiny_basic" / "tiny_basic.pth")
    assert b.returncode == 0, b.stderr
    assert json.loads(a.stdout)["images"] == json.loads(b.stdout)["images"]


@pytest.mark.parametrize("args, message", [
    ([], "error: give at least one image or folder (or --demo to try the shipped demo model offline)"),
    ([CATS, "--size", "100", "64"], "error: --size 100 64: height and width must be positive multiples of 32"),
    ([CATS, "--threshold", "high"], "error: argument --threshold: invalid threshold value: 'high'"),
    ([CATS, "--method", "nearest"], "error: argument --method: invalid choice: 'nearest'"),
    ([CATS, "--frobnicate"], "error: unrecognized arguments: --frobnicate"),
])
def test_usage_errors_exit_2(args, message):
    r = detect(*args)
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(message), r.stderr
    assert r.stdout == ""


def test_save_onto_a_file_is_refused_before_loading(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = detect(CATS, "--save", tmp_path / "afile", env=clean_env(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path)))
    assert "afile: exists and is not a folder" in one_error_line(r)


# ---------------------------------------------------------------------------------------------------------------
# The hub: the default model offline, downloads through the command
# ---------------------------------------------------------------------------------------------------------------

def test_default_model_offline_with_an_empty_cache(tmp_path):
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    r = detect(CATS, env=clean_env(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache)))
    line = one_error_line(r)
    assert line.startswith("error: PekingU/rtdetr_v2_r18vd/config.json@main: not in the cache ") and \
        "HF_HUB_OFFLINE is set" in line and "pass their folder with --model" in line, line
    assert files_in(cache) == []


@pytest.fixture
def hub_with_model(model_dir):
    """The fake hub of test_hub.py serving the generated model folder as tiny-org/tiny-model (every revision)."""
    from fake_hub import REPO
    import hashlib
    fake = FakeHub()
    files = {name: (model_dir / name).read_bytes() for name in ("config.json", "model.safetensors")}
    for commit in fake.commits:
        fake.commits[commit].update(files)
    fake.blobs.update({hashlib.sha256(d).hexdigest(): d for d in files.values()})
    yield fake, REPO
    fake.close()


def test_download_through_the_command(hub_with_model, tmp_path):
    fake, repo = hub_with_model
    cache = tmp_path / "cache"
    env = clean_env(HF_ENDPOINT=fake.endpoint, HF_HUB_CACHE=str(cache))
    r = detect(CATS, "--model", repo, "--size", 96, 64, "--threshold", 0.1, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{CATS} (640x480): ")
    assert [req[1] for req in fake.log if req[0] == "cdn"] == ["GET"]      # the weights came from the "CDN"
    assert not any(f.endswith((".incomplete", ".tmp")) for f in files_in(cache))
    # offline now: the command finds the model in the cache and prints the same
    again = detect(CATS, "--model", repo, "--size", 96, 64, "--threshold", 0.1,
                   env=clean_env(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache)))
    assert again.returncode == 0 and again.stdout == r.stdout


@pytest.mark.parametrize("failure, message", [("truncate", "download interrupted after"),
                                              ("corrupt", "the transfer was corrupted, run again")])
def test_interrupted_or_corrupted_download(hub_with_model, tmp_path, failure, message):
    fake, repo = hub_with_model
    setattr(fake, failure, True)
    cache = tmp_path / "cache"
    r = detect(CATS, "--model", repo, "--save", tmp_path / "out",
               env=clean_env(HF_ENDPOINT=fake.endpoint, HF_HUB_CACHE=str(cache)))
    line = one_error_line(r)
    assert line.startswith(f"error: {repo}/model.safetensors@") and message in line, line
    cached = files_in(cache)
    assert not any(f.endswith((".incomplete", ".tmp")) for f in cached), cached        # no partial download
    assert not any(f.endswith("model.safetensors") for f in cached), cached            # no snapshot pointer
    assert not (tmp_path / "out").exists()

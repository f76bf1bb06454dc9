"""Hostile and careless input (issue 9): nothing crashes, hangs, exhausts memory, corrupts state or destroys a
user's files.

Every hostile file is generated here; servers listen on 127.0.0.1 only (tests/fake_hub.py). Where an unprotected
reader would blow up (memory, recursion, hashing time), the case runs in a subprocess with a memory limit
(RLIMIT_AS) and a generous timeout that only catches a hang; nothing here is timed. Each case checks the one-line
error, the exit status (for the commands) and that no file outside the intended outputs changed. POSIX-only cases
(FIFOs, devices, signals, file names that are not UTF-8) are skipped elsewhere, saying why.
"""

import collections
import hashlib
import json
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fake_hub import REPO, FakeHub, git_blob_sha1
from PIL import Image
from safetensors.numpy import save_file

from rtdetrv2_np import hub as hubmod
from rtdetrv2_np.errors import RTDetrError
from rtdetrv2_np.fileio import atomic_write
from rtdetrv2_np.model.config import config_from_dict
from rtdetrv2_np.postprocess import COCO_NAMES
from rtdetrv2_np.preprocess import load_image
from rtdetrv2_np.pth import MAX_EXPANDED_BYTES, load_pth
from rtdetrv2_np.random_weights import random_params
from rtdetrv2_np.weights import expected_shapes, read_safetensors

ROOT = Path(__file__).resolve().parents[1]
CATS = ROOT / "tests" / "data" / "coco_000000039769.png"
REFERENCE = ROOT / "tests" / "fixtures" / "reference"
PTH = ROOT / "tests" / "fixtures" / "pth"
POSIX = os.name == "posix"
posix_only = pytest.mark.skipif(not POSIX, reason="FIFOs, devices, symlink loops and signals are POSIX features")
HANG = 300                    # seconds: only a hang takes this long; no assertion is about time


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------

def env(**extra):
    """A user's environment without hub settings; the package importable from the checkout; one BLAS thread (so
    that a memory limit measures what the code allocates, not per-thread buffers)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
         and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    e.update(PYTHONPATH=str(ROOT), no_proxy="127.0.0.1,localhost", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
             HF_HUB_OFFLINE="1", **extra)
    return e


def command(module, *args, cwd=ROOT, environment=None, **kwargs):
    args = [a if isinstance(a, (str, bytes, os.PathLike)) else str(a) for a in args]
    return subprocess.run([sys.executable, "-m", f"rtdetrv2_np.{module}", *map(os.fsdecode, args)],
                          capture_output=True, cwd=cwd, timeout=HANG, env=environment or env(), **kwargs)


def one_error(r, status=1):
    """The command exited with `status` and said so in exactly one line "error: ..."; returns that line."""
    err = r.stderr.decode() if isinstance(r.stderr, bytes) else r.stderr
    assert r.returncode == status, (r.returncode, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def limited(code, limit=1 << 30):
    """Run `code` in a fresh interpreter whose address space is limited to `limit` bytes (where the OS enforces
    RLIMIT_AS); it prints the result. Returns the CompletedProcess (text)."""
    prelude = ("import resource\n"
               "try:\n"
               f"    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
               "except (ValueError, OSError):\n"
               "    pass\n") if POSIX else ""
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=HANG,
                          env=env(), cwd=ROOT)


def load_pth_limited(path, limit=1 << 30):
    """load_pth(path) in a memory-limited subprocess: ("ok", n tensors) or ("error", message)."""
    r = limited(f"""
import sys
from rtdetrv2_np.errors import RTDetrError
from rtdetrv2_np.pth import load_pth
try:
    sd = load_pth({str(path)!r})
    print("ok", len(sd))
except RTDetrError as e:
    print("error", e)
""", limit)
    assert r.returncode == 0 and r.stderr == "", (r.returncode, r.stderr[-2000:])
    kind, _, rest = r.stdout.strip().partition(" ")
    assert "\n" not in rest, rest
    return kind, rest


def tree(folder):
    """{relative path: (kind, sha256 or link target)} of everything under folder: to check what changed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, folder)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", hashlib.sha256(Path(p).read_bytes()).hexdigest())
            else:
                out[rel] = ("dir" if stat.S_ISDIR(st.st_mode) else "special", stat.S_IFMT(st.st_mode))
    return out


def write_model_dir(folder, id2label=None, poison=None):
    """A hub-layout model folder (tiny_basic architecture, random weights): the 80 COCO names unless `id2label`;
    `poison`: {tensor name: value} written into that tensor (NaN, inf)."""
    d = json.loads((REFERENCE / "tiny_basic" / "config.json").read_text())
    labels = id2label or dict(enumerate(COCO_NAMES))
    d["id2label"] = {str(i): name for i, name in labels.items()}
    d.pop("label2id", None)
    d["num_labels"] = len(labels)
    cfg = config_from_dict(d)
    os.makedirs(folder, exist_ok=True)
    (Path(folder) / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
    tensors = random_params(expected_shapes(cfg), 0, cfg.n_points)
    for name, value in (poison or {}).items():
        tensors[name] = np.full_like(tensors[name], value)
    save_file(tensors, str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})
    return Path(folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("model") / "tiny_coco")


def small_jpeg(path, color=(200, 30, 30)):
    Image.new("RGB", (64, 48), color).save(path, format="JPEG")
    return path


# ---------------------------------------------------------------------------------------------------------------
# 1. Output paths never destroy anything they shouldn't
# ---------------------------------------------------------------------------------------------------------------

def char_device(tmp_path):
    """A character device to write to: a private copy of /dev/null (same device numbers) when we may create one
    (root), else /dev/null itself (which a non-root process could not replace anyway)."""
    if POSIX and hasattr(os, "geteuid") and os.geteuid() == 0 and os.path.exists("/dev/null"):
        path = tmp_path / "null"
        os.mknod(path, stat.S_IFCHR | 0o666, os.stat("/dev/null").st_rdev)
        return path
    return Path("/dev/null")


def fifo_reader(path):
    """Open a FIFO for reading in a thread; returns (thread, list that receives the bytes read)."""
    got = []

    def read():
        with open(path, "rb") as f:
            got.append(f.read())
    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t, got


@posix_only
def test_atomic_write_to_special_files_writes_them_directly(tmp_path):
    device = char_device(tmp_path)
    before = os.stat(device)
    atomic_write(device, b"thrown away")
    atomic_write(device, lambda tmp: Path(tmp).write_bytes(b"through a writer callable"))
    after = os.stat(device)
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader, got = fifo_reader(fifo)
    atomic_write(fifo, b"through the pipe")
    reader.join(HANG)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == sorted(["pipe"] + (["null"] if device.parent == tmp_path else []))
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, b"x")


def test_atomic_write_follows_a_symlink_and_keeps_it(tmp_path):
    if not POSIX:
        pytest.skip("symbolic links need privileges on Windows")
    (tmp_path / "real.json").write_bytes(b"old")
    os.chmod(tmp_path / "real.json", 0o640)
    os.symlink("real.json", tmp_path / "link.json")
    atomic_write(tmp_path / "link.json", b"new")
    assert os.readlink(tmp_path / "link.json") == "real.json"                 # the link is still a link
    assert (tmp_path / "real.json").read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(tmp_path / "real.json").st_mode) == 0o640     # a replaced file keeps its mode
    assert sorted(os.listdir(tmp_path)) == ["link.json", "real.json"]


@posix_only
def test_coco_json_to_a_fifo_and_dev_null(model_dir, tmp_path):
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    reader, got = fifo_reader(fifo)
    r = command("detect", CATS, "--model", model_dir, "--size", 96, 64, "--threshold", 0.1, "--coco-json", fifo)
    reader.join(HANG)
    assert r.returncode == 0, r.stderr
    records = json.loads(got[0])
    assert records and {rec["image_id"] for rec in records} == {39769}
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and os.listdir(tmp_path) == ["results.fifo"]
    device = char_device(tmp_path)
    before = os.stat(device)
    r = command("detect", CATS, "--model", model_dir, "--size", 96, 64, "--coco-json", device)
    assert r.returncode == 0, r.stderr
    after = os.stat(device)
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


@posix_only
def test_coco_json_to_dev_stdout_appends_to_what_stdout_is(model_dir, tmp_path):
    if not os.path.exists("/dev/stdout"):
        pytest.skip("no /dev/stdout on this system")
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:                                    # stdout redirected to a regular file, as `> out.txt`
        r = subprocess.run([sys.executable, "-m", "rtdetrv2_np.detect", str(CATS), "--model", str(model_dir),
                            "--size", "96", "64", "--threshold", "0.1", "--coco-json", "/dev/stdout"],
                           stdout=f, stderr=subprocess.PIPE, cwd=ROOT, timeout=HANG, env=env())
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    header, _, rest = text.partition("\n")
    assert header.startswith(f"{CATS} (640x480): ")               # the text output is still there
    records = json.loads(text[text.index("\n[{") + 1:])           # followed by the COCO records
    assert records and all(rec["image_id"] == 39769 for rec in records)
    assert os.listdir(tmp_path) == ["out.txt"]


@posix_only
def test_coco_json_to_a_process_substitution(model_dir, tmp_path):
    """`--coco-json >(jq .)`: the shell passes /dev/fd/N, the write end of a pipe; it is written to, not replaced."""
    if not os.path.isdir("/dev/fd"):
        pytest.skip("no /dev/fd on this system")
    read_end, write_end = os.pipe()
    got = []
    reader = threading.Thread(target=lambda: got.append(os.fdopen(read_end, "rb").read()), daemon=True)
    reader.start()
    try:
        r = subprocess.run([sys.executable, "-m", "rtdetrv2_np.detect", str(CATS), "--model", str(model_dir),
                            "--size", "96", "64", "--threshold", "0.1", "--coco-json", f"/dev/fd/{write_end}"],
                           capture_output=True, cwd=ROOT, timeout=HANG, env=env(), pass_fds=(write_end,))
    finally:
        os.close(write_end)
    reader.join(HANG)
    assert r.returncode == 0, r.stderr
    assert {rec["image_id"] for rec in json.loads(got[0])} == {39769} and os.listdir(tmp_path) == []


def test_save_into_the_input_folder_never_overwrites_or_reads_back_an_input(model_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    small_jpeg(folder / "a.jpg")
    Image.new("RGB", (50, 40), (0, 90, 0)).save(folder / "a.png")            # a.jpg's annotation would be a.png
    before = tree(tmp_path)
    r = command("detect", folder, "--model", model_dir, "--size", 96, 64, "--save", folder)
    line = one_error(r)
    assert line == f"error: {folder / 'a.png'}: --save would overwrite the input {folder / 'a.png'}; choose another " \
                   f"folder"
    assert r.stdout == b"" and tree(tmp_path) == before
    # Only JPEGs: the annotations (PNG) are written beside them and are not read as inputs in this run ...
    os.unlink(folder / "a.png")
    small_jpeg(folder / "b.jpg", (0, 0, 200))
    r = command("detect", folder, "--model", model_dir, "--size", 96, 64, "--save", folder, "--json")
    assert r.returncode == 0, r.stderr
    assert [Path(i["file"]).name for i in json.loads(r.stdout)["images"]] == ["a.jpg", "b.jpg"]
    assert sorted(os.listdir(folder)) == ["a.jpg", "a.png", "b.jpg", "b.png"]
    # ... and in the next run they are inputs, which --save would overwrite: refused.
    before = tree(tmp_path)
    r = command("detect", folder, "--model", model_dir, "--size", 96, 64, "--save", folder)
    assert "--save would overwrite the input" in one_error(r) and tree(tmp_path) == before


@pytest.mark.parametrize("what", ["an input image", "the model's weights", "the model's config.json", "a hard link"])
def test_coco_json_onto_an_input_is_refused(model_dir, tmp_path, what):
    image = small_jpeg(tmp_path / "img.jpg")
    target = {"an input image": image, "the model's weights": model_dir / "model.safetensors",
              "the model's config.json": model_dir / "config.json", "a hard link": tmp_path / "link.json"}[what]
    if what == "a hard link":
        os.link(image, target)
    watched = [tmp_path, model_dir]
    before = [tree(w) for w in watched]
    r = command("detect", image, "--model", model_dir, "--size", 96, 64, "--coco-json", target)
    line = one_error(r)
    assert line.startswith(f"error: {target}: --coco-json would overwrite the input "), line
    assert [tree(w) for w in watched] == before


def test_save_target_hard_linked_to_an_input_is_refused(model_dir, tmp_path):
    image = small_jpeg(tmp_path / "cats.jpg")
    (tmp_path / "out").mkdir()
    os.link(image, tmp_path / "out" / "cats.png")                   # cats.jpg's annotation would replace it
    before = tree(tmp_path)
    r = command("detect", image, "--model", model_dir, "--size", 96, 64, "--save", tmp_path / "out")
    assert "out/cats.png: --save would overwrite the input " in one_error(r).replace(os.sep, "/")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("out", ["the checkpoint", "its config.json", "a symlink to it"])
def test_convert_out_onto_its_input_is_refused(tmp_path, out):
    src = ROOT / "tests" / "fixtures" / "official" / "tiny_basic"
    for name in ("tiny_basic.pth", "config.json"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    target = {"the checkpoint": tmp_path / "tiny_basic.pth", "its config.json": tmp_path / "config.json",
              "a symlink to it": tmp_path / "link.safetensors"}[out]
    if out == "a symlink to it":
        if not POSIX:
            pytest.skip("symbolic links need privileges on Windows")
        os.symlink("tiny_basic.pth", target)
    before = tree(tmp_path)
    r = command("convert", tmp_path / "tiny_basic.pth", "--out", target)
    line = one_error(r)
    assert line.startswith(f"error: {target}: --out is the same file as the input "), line
    assert tree(tmp_path) == before


@posix_only
def test_convert_out_dev_stdout_writes_the_file_there(tmp_path):
    r = command("convert", REFERENCE / "tiny_basic", "--out", "/dev/stdout")
    assert r.returncode == 0, r.stderr
    (tmp_path / "x.safetensors").write_bytes(r.stdout)               # stdout is exactly the safetensors file
    tensors, meta = read_safetensors(tmp_path / "x.safetensors")
    assert "config" in meta and len(tensors) > 100
    assert r.stderr.decode().splitlines()[-1].startswith("wrote /dev/stdout (")   # the report went to stderr


# ---------------------------------------------------------------------------------------------------------------
# 2. Untrusted checkpoints: .pth files built opcode by opcode
# ---------------------------------------------------------------------------------------------------------------

def s_(text):
    """BINUNICODE."""
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def i_(n):
    """BININT, or LONG1 for big ones."""
    if -2 ** 31 <= n < 2 ** 31:
        return b"J" + struct.pack("<i", n)
    b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(b)]) + b


def g_(module, name):
    """GLOBAL."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def tuple_(items):
    return b"(" + b"".join(items) + b"t"


def tensor_(key, numel, size, stride, offset=0, storage="FloatStorage"):
    """_rebuild_tensor_v2(<storage key>, offset, size, stride, False, OrderedDict()), as torch.save writes it."""
    pid = tuple_([s_("storage"), g_("torch", storage), s_(key), s_("cpu"), i_(numel)]) + b"Q"
    return (g_("torch._utils", "_rebuild_tensor_v2") +
            tuple_([pid, i_(offset), tuple_(map(i_, size)), tuple_(map(i_, stride)), b"\x89",
                    g_("collections", "OrderedDict") + b")R"]) + b"R")


def dict_(pairs):
    """EMPTY_DICT, then SETITEMS of (key opcodes, value opcodes)."""
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def write_pth(path, body, storages=(), compress=False):
    """A torch.save-style zip: arch/data.pkl = PROTO 2 + body + STOP, arch/data/<key> = bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr("arch/data.pkl", b"\x80\x02" + body + b".")
        z.writestr("arch/byteorder", b"little")
        for key, data in dict(storages).items():
            if callable(data):
                with z.open(f"arch/data/{key}", "w", force_zip64=True) as f:
                    data(f)
            else:
                z.writestr(f"arch/data/{key}", data)
    return path


def test_the_hand_built_checkpoints_are_valid_when_they_should_be(tmp_path):
    """The builders above write what torch writes: a legitimate tensor, a view, a state dict whose OrderedDict
    carries torch's _metadata (BUILD) and a full training checkpoint with a Counter load with the right values."""
    values = np.arange(6, dtype=np.float32)
    sd = dict_([(s_("w"), tensor_("0", 6, (2, 3), (3, 1))), (s_("wt"), tensor_("0", 6, (3, 2), (1, 3))),
                (s_("tail"), tensor_("0", 6, (2,), (1,), offset=4))])
    od = g_("collections", "OrderedDict") + b")R" + b"(" + s_("w") + tensor_("0", 6, (6,), (1,)) + b"u" + \
        dict_([(s_("_metadata"), dict_([(s_(""), dict_([(s_("version"), i_(1))]))]))]) + b"b"
    counter = g_("collections", "Counter") + tuple_([dict_([(i_(10), i_(1))])]) + b"R"
    full = dict_([(s_("ema"), dict_([(s_("module"), od)])), (s_("model"), sd),
                  (s_("lr_scheduler"), dict_([(s_("milestones"), counter)])), (s_("epoch"), i_(3))])
    for name, body in [("sd", sd), ("full", full)]:
        out = load_pth(write_pth(tmp_path / f"{name}.pth", body, {"0": values.tobytes()}))
        if name == "sd":
            assert np.array_equal(out["w"], values.reshape(2, 3)) and np.array_equal(out["wt"], values.reshape(2, 3).T)
            assert out["tail"].tolist() == [4.0, 5.0]
        else:
            assert list(out) == ["w"] and np.array_equal(out["w"], values)


def test_build_cannot_change_shared_state(tmp_path):
    """BUILD on an allow-listed global (the issue: collections.Counter broken process-wide, a storage class
    stand-in given another dtype so that a later, legitimate checkpoint loaded garbage) is refused."""
    most_common = collections.Counter.most_common
    attacks = {
        "counter": g_("collections", "Counter") + tuple_([b"N", dict_([(s_("most_common"), i_(1))])]) + b"b",
        "storage type": g_("torch", "FloatStorage") + tuple_([b"N", dict_([(s_("dtype"), s_("<f8"))])]) + b"b",
        "rebuild function": g_("torch._utils", "_rebuild_tensor_v2") +
        dict_([(s_("__code__"), i_(0))]) + b"b",
    }
    for name, body in attacks.items():
        with pytest.raises(RTDetrError) as e:
            load_pth(write_pth(tmp_path / "evil.pth", body + b"0" + dict_([(s_("w"), tensor_("0", 1, (1,), (1,)))]),
                               {"0": np.ones(1, np.float32).tobytes()}))
        message = str(e.value)
        assert "refused to load data.pkl: the pickle sets the state of a " in message and "\n" not in message, name
    assert collections.Counter.most_common is most_common and collections.Counter("aab").most_common(1) == [("a", 2)]
    expected = dict(np.load(PTH / "expected.npz"))
    assert np.array_equal(load_pth(PTH / "plain.pth")["backbone.conv1.weight"], expected["sd/backbone.conv1.weight"])


def nested_tuple_key(depth):
    """{((((...)))): 1}: a dict key of tuples nested `depth` deep (hashing it recursed in C until the stack broke)."""
    return b"}" + b")" + b"\x85" * depth + i_(1) + b"s"


def dag_tuple(levels):
    """t0 = (), t_{k+1} = (t_k, t_k) through the memo: `levels` * 4 bytes, 2**levels parts when expanded."""
    body = b")q\x000"                                               # EMPTY_TUPLE, BINPUT 0, POP
    for k in range(levels):                                         # BINGET k twice, TUPLE2, BINPUT k + 1, POP
        body += b"h" + bytes([k]) + b"h" + bytes([k]) + b"\x86" + b"q" + bytes([k + 1]) + b"0"
    return body + b"h" + bytes([levels])                            # BINGET: t_levels on the stack


@pytest.mark.parametrize("case", ["deeply nested tuple key", "exponential hashing", "huge object in a message",
                                  "deep MARK nesting", "huge integer"])
def test_pickles_that_exhaust_the_interpreter_are_refused(tmp_path, case):
    if case == "deeply nested tuple key":
        body = nested_tuple_key(200_000)                                     # a 200 KB file
        expected = "tuples nested more than 1000 deep"
    elif case == "exponential hashing":
        body = b"}" + dag_tuple(100) + i_(1) + b"s"                          # hash() would take 2**100 steps
        expected = "a dict key or set item of more than 10000 parts (with repeats)"
    elif case == "huge object in a message":
        body = dag_tuple(60) + b"Q"                                          # repr would be 2**60 characters
        expected = "unexpected persistent id ((((...), (...)), ((...), (...))), (((...), (...)), ((...), (...))))"
    elif case == "deep MARK nesting":
        body = b"(" * 100_000
        expected = "groups (MARK) nested more than 1000 deep"
    else:
        body = b"\x8b" + struct.pack("<i", 100_000_000) + b"\0" * 1000       # claims a 100 MB integer
        expected = "an integer of 100000000 bytes (at most 64)"
    path = write_pth(tmp_path / "evil.pth", body)
    assert path.stat().st_size < 300_000
    kind, message = load_pth_limited(path)
    assert kind == "error" and message.startswith(f"{path}: refused to load data.pkl: ") and expected in message, \
        message
    assert len(message) < 400 and os.listdir(tmp_path) == ["evil.pth"]


@pytest.mark.parametrize("case", ["stride 0", "overlapping views", "zip bomb", "declared size", "size past storage"])
def test_tensors_that_would_exhaust_memory_are_refused_before_allocating(tmp_path, case):
    one = np.ones(1, np.float32).tobytes()
    if case == "stride 0":                                   # 535 bytes in the issue; 1.7e9 bytes as a tensor
        storages = {"0": one}
        body = dict_([(s_("w"), tensor_("0", 1, (20_000, 21_000), (0, 0)))])
        expected = "the tensors would take 1680000000 bytes, 1679999996 more than the 4 bytes of storage they view"
    elif case == "overlapping views":                        # 200 views of one 1 MiB storage: 200 MiB
        storages = {"0": bytes(1 << 20)}
        body = dict_([(s_(f"w{i}"), tensor_("0", 1 << 18, (1 << 18,), (1,))) for i in range(200)])
        expected = f"more than the 1048576 bytes of storage they view (stride-0 or overlapping views; at most " \
                   f"{MAX_EXPANDED_BYTES} allowed)"
    elif case == "zip bomb":                                 # 300 MB of zeros, deflated to ~300 KB
        numel = 75_000_000

        def zeros(f):
            for _ in range(300):
                f.write(bytes(1_000_000))
        storages = {"0": zeros}
        body = dict_([(s_("w"), tensor_("0", numel, (numel,), (1,)))])
        expected = "bytes of content in a file of"
    elif case == "declared size":                            # the entry declares more than the storage holds
        storages = {"0": bytes(1 << 20)}
        body = dict_([(s_("w"), tensor_("0", 1, (1,), (1,)))])
        expected = "zip entry data/0 declares 1048576 bytes, its 1 elements need 4"
    else:                                                    # a view reaching past its storage
        storages = {"0": one}
        body = dict_([(s_("w"), tensor_("0", 1, (2,), (1,)))])
        expected = "tensor w reaches element 1 of a storage of 1"
    path = write_pth(tmp_path / "evil.pth", body, storages, compress=case == "zip bomb")
    assert path.stat().st_size < 2_000_000
    kind, message = load_pth_limited(path, limit=1 << 30)   # 1 GiB: less than any of these would allocate
    assert kind == "error" and expected in message, message


@pytest.mark.parametrize("case", ["INST", "NEWOBJ", "bad memo", "truncated", "unhashable key", "non-string key",
                                  "codecs"])
def test_malformed_pickles_give_one_line(tmp_path, case):
    body, expected = {
        "INST": (b"(ibuiltins\nobject\n", "pickle instruction 'INST'"),
        "NEWOBJ": (g_("collections", "OrderedDict") + b")\x81", "pickle instruction 'NEWOBJ'"),
        "bad memo": (b"h\x07", "memo entry 7, which it never stored"),
        "truncated": (b"X\xff\xff\x00\x00ab", "the pickle ends in the middle of an instruction"),
        "unhashable key": (b"}]" + i_(1) + b"s", "a dict key or set item is a list"),
        "non-string key": (dict_([(s_("model"), dict_([(i_(5), tensor_("0", 1, (1,), (1,)))]))]),
                           "state dict key 5 is not a string"),
        "codecs": (g_("_codecs", "encode") + tuple_([s_("x"), s_("rot13")]) + b"R", "_codecs.encode called with"),
    }[case]
    path = write_pth(tmp_path / "bad.pth", body, {"0": np.ones(1, np.float32).tobytes()})
    with pytest.raises(RTDetrError) as e:
        load_pth(path)
    assert expected in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith(str(path))


@posix_only
def test_a_fifo_as_checkpoint_or_weights_is_refused_without_hanging(tmp_path):
    for name in ("model.pth", "model.safetensors"):
        os.mkfifo(tmp_path / name)
        r = command("detect", CATS, "--model", tmp_path / name)
        assert f"{name}: is a FIFO (named pipe), not a" in one_error(r)


# ---------------------------------------------------------------------------------------------------------------
# 2b. bfloat16 weights, NaN/inf outputs
# ---------------------------------------------------------------------------------------------------------------

def to_bf16_safetensors(src, dst):
    """Rewrite a float32 .safetensors as BF16 by hand (the format: 8-byte header length, JSON header, data), keeping
    the top 16 bits of each float32 (truncation); returns the float32 values those bf16 numbers stand for."""
    tensors, meta = read_safetensors(src)
    header, chunks, offset, exact = {"__metadata__": meta}, [], 0, {}
    for name in sorted(tensors):
        bits = (np.ascontiguousarray(tensors[name], np.float32).view(np.uint32) >> 16).astype("<u2")
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + bits.nbytes]}
        chunks.append(bits.tobytes())
        offset += bits.nbytes
        exact[name] = (bits.astype(np.uint32) << 16).view(np.float32)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    Path(dst).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))
    return exact


def test_bfloat16_safetensors_load_exactly(model_dir, tmp_path):
    from rtdetrv2_np import load_model
    bf16_dir = tmp_path / "bf16"
    bf16_dir.mkdir()
    (bf16_dir / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    exact = to_bf16_safetensors(model_dir / "model.safetensors", bf16_dir / "model.safetensors")
    tensors, meta = read_safetensors(bf16_dir / "model.safetensors")
    assert meta == {"format": "pt"} and sorted(tensors) == sorted(exact)
    for name, value in exact.items():
        assert tensors[name].dtype == np.float32 and np.array_equal(tensors[name], value), name
    # the same float32 numbers in an ordinary float32 file give bit-identical outputs
    f32_dir = tmp_path / "f32"
    f32_dir.mkdir()
    (f32_dir / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    save_file(exact, str(f32_dir / "model.safetensors"), metadata={"format": "pt"})
    pixels = np.random.default_rng(0).random((1, 3, 96, 64), dtype=np.float32)
    a, b = load_model(bf16_dir)(pixels), load_model(f32_dir)(pixels)
    assert np.array_equal(a.logits, b.logits) and np.array_equal(a.pred_boxes, b.pred_boxes)
    r = command("detect", CATS, "--model", bf16_dir, "--size", 96, 64)
    assert r.returncode == 0 and r.stdout.decode().startswith(f"{CATS} (640x480): "), r.stderr


@pytest.mark.parametrize("case", ["F8_E4M3", "gap", "past the end"])
def test_safetensors_with_bf16_and_bad_layouts_give_one_line(tmp_path, case):
    header = {"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
              "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}
    data = bytes(8)
    if case == "F8_E4M3":
        header["b"]["dtype"] = "F8_E4M3"
        expected = "tensor 'b' has dtype 'F8_E4M3', which this reader does not support"
    elif case == "gap":
        header["b"]["data_offsets"] = [6, 10]
        data = bytes(10)
        expected = "data_offsets [6, 10] do not follow the previous tensor"
    else:
        header["b"]["shape"] = [1000]
        header["b"]["data_offsets"] = [4, 4004]
        expected = "not a readable .safetensors file"
    text = json.dumps(header).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    with pytest.raises(RTDetrError) as e:
        read_safetensors(path)
    assert expected in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith(str(path))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_outputs_are_an_error_not_detections(tmp_path, value):
    model = write_model_dir(tmp_path / "m", poison={"model.decoder.class_embed.1.bias": value})
    out = tmp_path / "out"
    r = command("detect", CATS, "--model", model, "--size", 96, 64, "--json", "--threshold", 0,
                "--coco-json", out / "r.json", "--save", out)
    assert r.returncode == 1
    doc = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in the JSON output"))   # strict JSON
    assert doc["images"] == [] and len(doc["errors"]) == 1
    line = [l for l in r.stderr.decode().splitlines() if l.startswith("error: ")]
    assert line == [f"error: {CATS}: the model's outputs are not finite (NaN or inf), so there are no detections "
                    f"to report; the weights {model} are damaged or unusable"]
    assert "Traceback" not in r.stderr.decode() and os.listdir(out) == []


# ---------------------------------------------------------------------------------------------------------------
# 3. The downloader only follows what it should
# ---------------------------------------------------------------------------------------------------------------

FOLDER = "models--tiny-org--tiny-model"


@pytest.fixture
def fake():
    server = FakeHub()
    yield server
    if server.stall is not None:
        server.stall.set()
    server.close()


@pytest.fixture
def hub_env(monkeypatch, tmp_path, fake):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HOME", "HUGGINGFACE_HUB_CACHE",
                 "XDG_CACHE_HOME", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
    return tmp_path / "cache"


def cached_files(cache):
    return sorted(os.path.relpath(os.path.join(d, f), cache) for d, _, fs in os.walk(cache) for f in fs)


@pytest.mark.parametrize("location", ["file", "/dev/zero", "ftp", "data"])
def test_head_location_other_than_http_is_refused(hub_env, fake, tmp_path, location):
    secret = tmp_path / "secret.txt"
    secret.write_text("a local file the hub should never be able to copy into the cache")
    fake.lfs_location = {"file": secret.as_uri(), "/dev/zero": "file:///dev/zero", "ftp": "ftp://127.0.0.1:1/x",
                         "data": "data:application/octet-stream;base64,AAAA"}[location]
    with pytest.raises(RTDetrError) as e:
        hubmod.hf_hub_download(REPO, "model.safetensors")
    scheme = fake.lfs_location.split(":")[0]
    assert f"a {scheme} URL; only http and https are followed" in str(e.value) and "\n" not in str(e.value)
    assert not any(f.startswith(f"{FOLDER}/blobs") or "snapshots" in f for f in cached_files(hub_env))
    assert fake.requests("cdn") == []


def test_cdn_redirect_to_a_file_url_is_refused(hub_env, fake, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("local")
    fake.cdn_redirect = secret.as_uri()
    with pytest.raises(RTDetrError, match=r"a file URL; only http and https are followed"):
        hubmod.hf_hub_download(REPO, "model.safetensors")
    assert cached_files(hub_env) == []


def test_file_endpoint_is_refused(hub_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", (tmp_path / "hub").as_uri())
    with pytest.raises(RTDetrError, match=r"HF_ENDPOINT='file:.*' is not an http\(s\) URL"):
        hubmod.hf_hub_download(REPO, "config.json")


def test_writing_stops_at_the_announced_size(hub_env, fake):
    fake.cdn_unsized, fake.cdn_extra = True, 50 << 20            # 50 MB more than X-Linked-Size, no Content-Length
    written = []
    with pytest.raises(RTDetrError, match=r"the server sent more than the 3000 bytes announced; stopped there"):
        hubmod.hf_hub_download(REPO, "model.safetensors", progress=lambda done, total: written.append(done))
    assert max(written, default=0) <= 3000                         # never a byte past the announced size on disk
    assert not any("blobs/" in f or "snapshots" in f for f in cached_files(hub_env))


def test_writing_stops_at_a_limit_without_any_size(hub_env, fake, monkeypatch):
    monkeypatch.setattr(hubmod, "MAX_UNANNOUNCED_BYTES", 100_000)  # 100 MB in use; small here
    fake.git_unsized = True
    fake.commits[fake.refs["main"]]["config.json"] = b"{}" + b" " * 1_000_000
    with pytest.raises(RTDetrError, match=r"more than the 100000 bytes allowed without a size"):
        hubmod.hf_hub_download(REPO, "config.json")
    assert cached_files(hub_env) == []


def test_truncated_git_file_without_size_is_caught_by_its_git_sha1(hub_env, fake):
    fake.git_unsized = fake.git_truncate = True                   # half of config.json, no Content-Length
    with pytest.raises(RTDetrError, match=r"failed verification: its git blob sha1 is [0-9a-f]{40}, the hub says"):
        hubmod.hf_hub_download(REPO, "config.json")
    assert cached_files(hub_env) == []                            # nothing cached for good
    fake.git_truncate = False                                     # the next run gets the whole file
    path = hubmod.hf_hub_download(REPO, "config.json")
    assert Path(path).read_bytes() == fake.commits[fake.refs["main"]]["config.json"]


def damaged_cache(cache, fake):
    """A cache (as huggingface_hub lays it out) whose config.json blob holds half the file under its full git sha1
    (what an older version cached from a truncated download)."""
    data = fake.commits[fake.refs["main"]]["config.json"]
    folder = cache / FOLDER
    (folder / "blobs").mkdir(parents=True)
    (folder / "snapshots" / fake.refs["main"]).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "blobs" / git_blob_sha1(data)).write_bytes(data[: len(data) // 2])
    os.symlink(f"../../blobs/{git_blob_sha1(data)}", folder / "snapshots" / fake.refs["main"] / "config.json")
    (folder / "refs" / "main").write_text(fake.refs["main"])
    return folder / "snapshots" / fake.refs["main"] / "config.json", data


@posix_only
def test_a_damaged_cache_entry_is_never_used(hub_env, fake, monkeypatch):
    pointer, data = damaged_cache(hub_env, fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RTDetrError, match=r"the cached file .*config.json failed verification \(its git blob sha1 "
                                          r"is [0-9a-f]{40}, the hub says [0-9a-f]{40}\), so it was deleted; "
                                          r"HF_HUB_OFFLINE is set"):
        hubmod.hf_hub_download(REPO, "config.json")
    assert not os.path.lexists(pointer) and os.listdir(hub_env / FOLDER / "blobs") == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    pointer, data = damaged_cache(hub_env / "again", fake)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_env / "again"))
    assert Path(hubmod.hf_hub_download(REPO, "config.json")).read_bytes() == data   # online: downloaded again


@posix_only
def test_stale_incomplete_files_of_killed_downloads_are_removed(hub_env, fake, tmp_path):
    """A download killed with SIGKILL leaves its *.incomplete; while it runs its lock protects it, once dead the next
    download removes it (after STALE_AFTER seconds without a write: backdated here rather than waited for)."""
    fake.stall = threading.Event()                                 # the CDN sends half, then waits
    code = ("from rtdetrv2_np.hub import hf_hub_download\n"
            f"hf_hub_download({REPO!r}, 'model.safetensors')\n")
    child = subprocess.Popen([sys.executable, "-c", code], env={**env(), "HF_HUB_OFFLINE": "0",
                                                                "HF_HUB_CACHE": str(hub_env),
                                                                "HF_ENDPOINT": fake.endpoint},
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    blobs = hub_env / FOLDER / "blobs"
    try:
        for _ in range(HANG * 10):                                 # until half the body has been written
            partial = [p for p in blobs.glob("*.incomplete")] if blobs.exists() else []
            if partial and partial[0].stat().st_size == 1500:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the child never wrote its partial file")
        old = time.time() - 10 * hubmod.STALE_AFTER
        os.utime(partial[0], (old, old))
        assert hubmod.remove_stale_downloads(blobs) == []          # locked by a live process: kept
        assert partial[0].exists()
    finally:
        child.kill()                                               # SIGKILL: no clean-up in the child
        child.wait(HANG)
    assert partial[0].exists()                                     # what SIGKILL leaves behind
    fake.stall.set()
    fake.stall = None
    unrelated = blobs / "0123abcd.incomplete"                      # huggingface_hub's own naming: not ours to touch
    unrelated.write_bytes(b"x")
    os.utime(unrelated, (old, old))
    hubmod.hf_hub_download(REPO, "model.safetensors")              # the next download cleans up
    assert not partial[0].exists() and unrelated.exists()
    assert sorted(p.name for p in blobs.iterdir()) == sorted(
        [unrelated.name, hashlib.sha256(fake.commits[fake.refs["main"]]["model.safetensors"]).hexdigest()])


def test_creating_the_same_snapshot_link_in_two_processes_does_not_race(tmp_path):
    blob = tmp_path / "blobs" / "abc"
    blob.parent.mkdir()
    blob.write_bytes(b"content")
    pointer = tmp_path / "snapshots" / "c0ffee" / "model.safetensors"
    code = ("import sys\nfrom rtdetrv2_np.hub import _link_pointer\n"
            f"for _ in range(1500):\n    _link_pointer({str(blob)!r}, {str(pointer)!r})\n")
    children = [subprocess.Popen([sys.executable, "-c", code], env=env(), cwd=ROOT, stderr=subprocess.PIPE,
                                 text=True) for _ in range(3)]
    results = [(c.wait(HANG), c.stderr.read()) for c in children]
    assert results == [(0, "")] * 3
    assert pointer.read_bytes() == b"content" and os.listdir(pointer.parent) == ["model.safetensors"]


# ---------------------------------------------------------------------------------------------------------------
# 4. Images are only images
# ---------------------------------------------------------------------------------------------------------------

@posix_only
def test_postscript_named_jpg_never_reaches_ghostscript(model_dir, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "ghostscript-ran"
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")           # a stand-in Ghostscript that leaves a mark
    gs.chmod(0o755)
    ps = tmp_path / "photo.jpg"
    ps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n")
    path_env = env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    # The premise: Pillow left to itself identifies the file as EPS and runs `gs` to load it.
    probe = subprocess.run([sys.executable, "-c", f"import PIL.Image\ntry:\n    PIL.Image.open({str(ps)!r}).load()\n"
                                                  f"except Exception:\n    pass\n"],
                           env=path_env, timeout=HANG, capture_output=True)
    assert probe.returncode == 0 and marker.exists(), probe.stderr
    marker.unlink()
    r = command("detect", ps, "--model", model_dir, "--size", 96, 64, environment=path_env)
    assert f"{ps}: not an image file of a supported format (JPEG, PNG" in one_error(r)
    assert not marker.exists()


@posix_only
@pytest.mark.parametrize("kind", ["FIFO", "character device", "symlink loop", "dangling symlink"])
def test_special_image_paths_are_refused_without_opening_them(model_dir, tmp_path, kind):
    path = tmp_path / "image.jpg"
    if kind == "FIFO":
        os.mkfifo(path)                                            # opening it for reading would wait forever
        expected = "is a FIFO (named pipe), not an image file; only regular files are read"
    elif kind == "character device":
        path = Path("/dev/zero")
        if not path.exists():
            pytest.skip("no /dev/zero here")
        expected = "is a character device, not an image file"
    elif kind == "symlink loop":
        os.symlink("image.jpg", path)
        expected = "symbolic link loop (too many levels of symbolic links)"
    else:
        os.symlink("gone.jpg", path)
        expected = "a symbolic link to 'gone.jpg', which does not exist"
    before = tree(tmp_path)
    r = command("detect", path, "--model", model_dir, "--size", 96, 64)
    line = one_error(r)
    assert line == f"error: {path}: {expected}" or line.startswith(f"error: {path}: {expected}"), line
    assert tree(tmp_path) == before
    with pytest.raises(RTDetrError, match=re.escape(expected.split(";")[0])):
        load_image(path)


# ---------------------------------------------------------------------------------------------------------------
# 5. Output stays parseable and honest
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="file names must be arbitrary bytes (Linux)")
def test_a_file_name_that_is_not_utf8_is_escaped_and_the_run_goes_on(model_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    bad = os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"))   # Latin-1 bytes, not UTF-8
    small_jpeg(bad)
    small_jpeg(folder / "z.jpg")
    for encoding in ("utf-8", "ascii"):
        r = command("detect", folder, "--model", model_dir, "--size", 96, 64, "--threshold", 1,
                    environment=env(PYTHONIOENCODING=encoding))
        assert r.returncode == 0, r.stderr
        headers = [l for l in r.stdout.decode("ascii").splitlines() if " detection" in l]
        assert headers == [f"{folder}/caf\\xe9.jpg (64x48): 0 detections", f"{folder}/z.jpg (64x48): 0 detections"]


def test_newlines_and_ansi_escapes_in_names_and_labels_cannot_forge_lines(tmp_path):
    if not POSIX:
        pytest.skip("newlines and escapes in file names are POSIX")
    labels = {0: "cat\nperson: 0.99 [0.00, 0.00, 1.00, 1.00]", 1: "\x1b[2J\x1b[31mdog", 2: "bird\u2028x",
              3: "$\\frac{", 4: "ok"}
    model = write_model_dir(tmp_path / "m", id2label=labels)
    name = tmp_path / "a\nfake.png: 1 detection\x1b[1A.jpg"
    small_jpeg(name)
    r = command("detect", name, "--model", model, "--size", 96, 64, "--threshold", 0, "--save", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    lines = out.splitlines()
    assert "\x1b" not in out and "\u2028" not in out
    assert lines[0] == f"{tmp_path}/a\\nfake.png: 1 detection\\x1b[1A.jpg (64x48): 20 detections"
    assert len(lines) == 21                                          # the header and the top Nq = 20, nothing forged
    shown = {l.rsplit(": ", 1)[0] for l in lines[1:]}
    assert shown <= {"cat\\nperson: 0.99 [0.00, 0.00, 1.00, 1.00]", "\\x1b[2J\\x1b[31mdog", "bird\\u2028x",
                     "$\\frac{", "ok"}
    assert len(os.listdir(tmp_path / "out")) == 1                    # the $ in a label did not break the drawing


@posix_only
def test_ctrl_c_ends_the_run_with_130_and_no_partial_output(model_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(150):
        small_jpeg(folder / f"{i:03d}.jpg", (i, 2 * i % 256, 90))
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-m", "rtdetrv2_np.detect", str(folder), "--model", str(model_dir),
                              "--size", "96", "64", "--json", "--coco-json", str(tmp_path / "r.json"),
                              "--save", str(out)],
                             cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = child.stderr.readline()                              # "[1/150] 000.jpg": the loop has started
        assert first.startswith(b"[1/150]"), first
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=HANG)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, (child.returncode, stderr)
    assert stderr.decode().splitlines()[-1] == "error: interrupted" and b"Traceback" not in stderr
    assert stdout == b""                                             # no partial JSON document
    assert not (tmp_path / "r.json").exists()
    assert all(n.endswith(".png") and not n.startswith(".tmp") for n in os.listdir(out))   # whole files only

"""Write small torch.save checkpoints for tests/test_pth.py, under tests/fixtures/pth/.

Run with the reference environment (torch), from the repository root:

    venv-ref/bin/python tools/make_pth_fixture.py

Files (each written to a temp file, then os.replace):
    ema.pth          {"ema": {"module": SD, "updates": 7}, "model": SD_OTHER, "optimizer": {...},
                      "lr_scheduler": {"milestones": Counter(...)}, "date": ..., "last_epoch": 3}: the layout of the
                      official training checkpoints (rtdetrv2_pytorch/src/solver/_solver.py::state_dict); the reader
                      must pick ema -> module
    model.pth        {"model": SD_OTHER, "last_epoch": 3}
    plain.pth        SD itself (torch.save(state_dict))
    bigendian.pth    plain.pth rewritten as a big-endian machine would write it (byteorder record "big", every
                     storage byte-swapped); torch itself cannot write one here
    evil_system.pth  a checkpoint whose pickle would run os.system("touch <marker>") when loaded by torch.load
                     with weights_only=False (checked below, in a subprocess, before the marker is deleted)
    evil_eval.pth    the same through builtins.eval(...) writing the marker with open()
    expected.npz     the tensors of SD and SD_OTHER as torch holds them (contiguous copies; bfloat16 -> float32)
SD covers what a reader must get right: transposed / sliced / expanded views with odd strides and storage offsets,
several tensors sharing one storage, float32/float16/float64/bfloat16/int64/int32/uint8/bool, 0-d tensors (like
num_batches_tracked), an empty tensor, an nn.Parameter. The package never imports this file.
"""

import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter, OrderedDict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rtdetrv2_np.fileio import atomic_write  # noqa: E402  (temp file + os.replace)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "pth")
MARKER_DIR = tempfile.gettempdir()
MARKERS = {"evil_system.pth": os.path.join(MARKER_DIR, "rtdetrv2_np_pth_marker_system"),
           "evil_eval.pth": os.path.join(MARKER_DIR, "rtdetrv2_np_pth_marker_eval")}




def saved(obj, stem):
    """torch.save into bytes; the archive folder is named after `stem` as when saving to <stem>.pth."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, stem + ".pth")
        torch.save(obj, path)
        return open(path, "rb").read()


def make_state_dicts():
    g = torch.Generator().manual_seed(20240727)
    base = torch.randn(5, 7, generator=g)                         # one storage, several views of it
    big = torch.randn(4, 6, 3, generator=g)
    sd = OrderedDict()
    sd["backbone.conv1.weight"] = torch.randn(4, 3, 3, 3, generator=g)          # plain contiguous
    sd["view.transposed"] = base.t()                                             # strides (1, 7)
    sd["view.sliced"] = base[1:4, 2:7:2]                                         # offset 9, strides (7, 2)
    sd["view.row"] = base[3]                                                     # offset 21, shares base's storage
    sd["view.permuted"] = big.permute(2, 0, 1)[:, 1:, ::2]                       # 3-d, offset, odd strides
    sd["view.expanded"] = torch.arange(3, dtype=torch.float32).reshape(3, 1).expand(3, 4)   # stride 0
    sd["dtype.half"] = torch.randn(2, 3, generator=g).half().t()
    sd["dtype.double"] = torch.randn(3, generator=g, dtype=torch.float64)
    sd["dtype.bfloat16"] = torch.randn(5, generator=g).bfloat16()
    sd["dtype.long"] = torch.tensor([[-(2 ** 40), 3], [7, 2 ** 62]], dtype=torch.int64)
    sd["dtype.int"] = torch.tensor([-5, 0, 2 ** 31 - 1], dtype=torch.int32)
    sd["dtype.uint8"] = torch.tensor([0, 17, 255], dtype=torch.uint8)
    sd["dtype.bool"] = torch.tensor([[True, False, True], [False, False, True]]).t()
    sd["bn.num_batches_tracked"] = torch.tensor(12345, dtype=torch.int64)        # 0-d int64
    sd["scalar.float"] = torch.tensor(0.25)                                       # 0-d float32
    sd["scalar.view"] = base[2, 5]                                                # 0-d with an offset
    sd["empty"] = torch.zeros(0, 4)
    sd["param"] = torch.nn.Parameter(torch.randn(3, generator=g))
    sd["decoder.anchors"] = torch.tensor([[1.0, float("inf")], [float("-inf"), float("nan")]])
    other = OrderedDict((k, v * 2 if v.is_floating_point() else v) for k, v in list(sd.items())[:4])
    return sd, other


class EvilSystem:
    def __reduce__(self):
        return os.system, (f"touch {MARKERS['evil_system.pth']}",)


class EvilEval:
    def __reduce__(self):
        return eval, (f"open({MARKERS['evil_eval.pth']!r}, 'w').write('pwned')",)


def as_numpy(t):
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.contiguous().numpy().copy()


def big_endian_copy(data, sd):
    """Rewrite a plain.pth as a big-endian machine writes it: byteorder "big", storages byte-swapped."""
    zin = zipfile.ZipFile(io.BytesIO(data))
    # torch.save numbers storages 0, 1, ... in the order the pickler first meets them: the order of sd's values.
    seen, order = set(), []
    for t in sd.values():
        sid = t.untyped_storage()._cdata
        if sid not in seen:
            seen.add(sid)
            order.append(t.dtype)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            raw = zin.read(info.filename)
            folder, _, rest = info.filename.partition("/")
            if rest == "byteorder":
                raw = b"big"
            elif rest.startswith("data/"):
                dtype = order[int(rest[5:])]
                item = torch.empty(0, dtype=dtype).element_size()
                raw = np.frombuffer(raw, dtype=np.uint8).reshape(-1, item)[:, ::-1].tobytes() if item > 1 else raw
            zout.writestr(zipfile.ZipInfo(info.filename, date_time=info.date_time), raw)   # reproducible
    return out.getvalue()


def main():
    os.makedirs(OUT, exist_ok=True)
    sd, other = make_state_dicts()
    files = {
        "ema.pth": saved({"date": "2024-07-27T00:00:00", "last_epoch": 3,
                          "model": other, "ema": {"module": sd, "updates": 7},
                          "optimizer": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.ones(3)}},
                                        "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]},
                          "lr_scheduler": {"milestones": Counter({1000: 1}), "gamma": 0.1, "last_epoch": 3}},
                         "ema"),
        "model.pth": saved({"model": other, "last_epoch": 3}, "model"),
        "plain.pth": saved(sd, "plain"),
        "evil_system.pth": saved({"model": OrderedDict(w=torch.ones(2)), "payload": EvilSystem()}, "evil_system"),
        "evil_eval.pth": saved({"payload": EvilEval(), "model": OrderedDict(w=torch.ones(2))}, "evil_eval"),
    }
    files["bigendian.pth"] = big_endian_copy(files["plain.pth"], sd)
    for name, data in files.items():
        atomic_write(os.path.join(OUT, name), data)

    # The big-endian copy must load in torch to the same values (torch honours the byteorder record).
    loaded = torch.load(os.path.join(OUT, "bigendian.pth"), weights_only=True)
    assert all(torch.equal(loaded[k], v) or (v.is_floating_point() and torch.allclose(loaded[k], v, equal_nan=True))
               for k, v in sd.items()), "bigendian.pth does not round-trip in torch"

    # The malicious files must really be malicious, or the test that they are refused proves nothing.
    for name, marker in MARKERS.items():
        if os.path.exists(marker):
            os.unlink(marker)
        code = f"import torch; torch.load({os.path.join(OUT, name)!r}, weights_only=False)"
        subprocess.run([sys.executable, "-c", code], check=False, capture_output=True)
        assert os.path.exists(marker), f"{name} did not create its marker under torch.load(weights_only=False)"
        os.unlink(marker)

    arrays = {f"sd/{k}": as_numpy(v) for k, v in sd.items()}
    arrays.update({f"other/{k}": as_numpy(v) for k, v in other.items()})
    arrays["meta_json"] = np.array(json.dumps({"torch": torch.__version__, "markers": MARKERS,
                                               "dtypes": {k: str(v.dtype) for k, v in sd.items()}}))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(os.path.join(OUT, "expected.npz"), buf.getvalue())
    print("wrote", ", ".join(sorted(files)), "and expected.npz to", os.path.relpath(OUT, ROOT))


if __name__ == "__main__":
    main()

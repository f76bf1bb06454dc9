"""rtdetrv2_np.pth.load_pth against checkpoints written by torch.save (tools/make_pth_fixture.py), and its refusal
of pickles that would run code."""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from rtdetrv2_np.errors import RTDetrError
from rtdetrv2_np.pth import load_pth

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "pth")
EXPECTED = dict(np.load(os.path.join(FIX, "expected.npz")))
META = json.loads(str(EXPECTED.pop("meta_json")))
SD = {k[3:]: v for k, v in EXPECTED.items() if k.startswith("sd/")}
OTHER = {k[6:]: v for k, v in EXPECTED.items() if k.startswith("other/")}


def assert_same(ours, ref, what):
    """Same keys in the same order, and each array bit-identical (NaN included) with the same dtype and shape."""
    assert list(ours) == list(ref), what
    for k in ref:
        a, b = ours[k], ref[k]
        assert a.dtype == b.dtype and a.shape == b.shape, (what, k, a.dtype, a.shape, b.dtype, b.shape)
        with np.errstate(invalid="ignore"):
            numeric = a.size and a.dtype != np.bool_
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64)) if numeric else np.zeros(1)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), \
            f"{what}: {k} differs, max |diff| = {np.nanmax(diff) if diff.size else 0}"
        assert a.flags.c_contiguous and a.flags.writeable and a.flags.owndata, (what, k)


@pytest.mark.parametrize("name, ref", [("ema.pth", SD), ("plain.pth", SD), ("bigendian.pth", SD),
                                       ("model.pth", OTHER)])
def test_values_equal_torch(name, ref):
    assert_same(load_pth(os.path.join(FIX, name)), ref, name)


def test_ema_preferred_over_model():
    sd = load_pth(os.path.join(FIX, "ema.pth"))
    assert np.array_equal(sd["backbone.conv1.weight"], SD["backbone.conv1.weight"])
    assert not np.array_equal(sd["backbone.conv1.weight"], OTHER["backbone.conv1.weight"])


def test_special_cases():
    sd = load_pth(os.path.join(FIX, "plain.pth"))
    assert sd["bn.num_batches_tracked"].shape == () and sd["bn.num_batches_tracked"] == 12345
    assert sd["bn.num_batches_tracked"].dtype == np.int64
    assert sd["scalar.view"].shape == () and sd["scalar.view"] == SD["view.transposed"][5, 2]   # base[2, 5]
    assert sd["empty"].shape == (0, 4)
    assert sd["dtype.bfloat16"].dtype == np.float32                         # widened exactly
    assert sd["dtype.long"][1, 1] == 2 ** 62
    assert sd["view.expanded"].tolist() == [[0.0] * 4, [1.0] * 4, [2.0] * 4]
    sd["view.row"][0] = 99                                                   # copies: views do not alias
    assert sd["view.transposed"][0, 3] != 99


@pytest.mark.parametrize("name", ["evil_system.pth", "evil_eval.pth"])
def test_malicious_pickle_refused(name):
    marker = META["markers"][name]
    if os.path.exists(marker):
        os.unlink(marker)
    with pytest.raises(RTDetrError) as e:
        load_pth(os.path.join(FIX, name))
    message = str(e.value)
    print(message)
    assert "\n" not in message and name in message and "refused" in message
    assert ("posix.system" in message) if name == "evil_system.pth" else ("builtins.eval" in message)
    assert not os.path.exists(marker)


def write_zip(path, entries):
    with zipfile.ZipFile(path, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)


class Anything:
    pass


def test_refuses_any_other_global(tmp_path):
    # A pickle naming a harmless-looking but unlisted global is refused too (allow-list, not deny-list).
    payload = pickle.dumps({"model": {"x": Anything()}}, protocol=2)
    path = tmp_path / "odd.pth"
    write_zip(path, {"odd/data.pkl": payload, "odd/byteorder": b"little"})
    with pytest.raises(RTDetrError, match=r"refused to load.*test_pth.Anything"):
        load_pth(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(RTDetrError, match="no such file"):
        load_pth(tmp_path / "missing.pth")
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(RTDetrError, match="not a zip-format torch checkpoint"):
        load_pth(legacy)
    nopkl = tmp_path / "nopkl.pth"
    write_zip(nopkl, {"x/readme.txt": b"hi"})
    with pytest.raises(RTDetrError, match="has 0"):
        load_pth(nopkl)
    nosd = tmp_path / "nosd.pth"
    write_zip(nosd, {"nosd/data.pkl": pickle.dumps({"epoch": 3}, protocol=2)})
    with pytest.raises(RTDetrError, match=r"no state dict found \(top-level keys 'epoch'\)"):
        load_pth(nosd)


def test_truncated_storage(tmp_path):
    data = open(os.path.join(FIX, "plain.pth"), "rb").read()
    zin = zipfile.ZipFile(io.BytesIO(data))
    entries = {i.filename: zin.read(i.filename) for i in zin.infolist()}
    entries["plain/data/0"] = entries["plain/data/0"][:20]                  # conv1.weight's storage cut short
    path = tmp_path / "cut.pth"
    write_zip(path, entries)
    with pytest.raises(RTDetrError, match=r"cut.pth: zip entry data/0 declares 20 bytes, its 108 elements need 432"):
        load_pth(path)                                                      # checked before anything is read
    del entries["plain/data/0"]
    write_zip(path, entries)
    with pytest.raises(RTDetrError, match=r"storage data/0 is missing"):
        load_pth(path)

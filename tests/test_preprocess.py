"""rtdetrv2_np.preprocess against transformers' load_image + RTDetrImageProcessorPil, recorded by
tools/record_preprocess.py into tests/fixtures/preprocess/ (see the README there). Equality is bit-exact."""

import hashlib
import json
import os

import numpy as np
import PIL
import PIL.Image
import pytest

from rtdetrv2_np.errors import RTDetrError
from rtdetrv2_np.preprocess import load_image, preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "preprocess")
META = json.load(open(os.path.join(FIX, "reference.json")))
REF = dict(np.load(os.path.join(FIX, "reference.npz")))
NAMES = sorted(META["images"])
COCO = [n for n in NAMES if n.startswith("coco_")]
SMALL = [n for n in NAMES if not n.startswith("coco_")]


PILLOW = f"recorded with Pillow {META['recorded_with']['Pillow']}, running Pillow {PIL.__version__}"


def sha(x):
    return hashlib.sha256(np.ascontiguousarray(x, dtype="<f4").tobytes()).hexdigest()


def assert_bitexact(ours, ref, what):
    """np.array_equal, reporting the largest difference and how many values differ."""
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, (what, ours.shape, ours.dtype, ref.shape, ref.dtype)
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    print(f"{what}: max |diff| = {diff.max():.3g}, {int((diff > 0).sum())} of {diff.size} values differ")
    assert np.array_equal(ours, ref), f"{what}: NOT bit-exact, max |diff| = {diff.max():.3g} ({PILLOW})"


def from_k(k):
    return k.astype(np.float32) / np.float32(255)


def test_rescale_is_float32_division_for_all_256_values():
    k = np.arange(256, dtype=np.uint8)
    reference = (k.astype(np.float64) * (1 / 255)).astype(np.float32)   # image_transforms.rescale
    assert_bitexact(k.astype(np.float32) / np.float32(255), reference, "float32 k / 255 vs float64 k * (1/255)")
    multiplied = k.astype(np.float32) * np.float32(1 / 255)
    assert int((multiplied != reference).sum()) == 126                     # why we divide: multiplying is 1 ulp off
    assert META["rescale_equals_float32_division"] is True                 # the same, checked with transformers


@pytest.mark.parametrize("name", NAMES)
def test_pixel_values_640_bit_exact(name):
    entry = META["images"][name]
    pv, sizes = preprocess(load_image(os.path.join(ROOT, entry["path"])))   # [1, 3, 640, 640]
    assert pv.shape == (1, 3, 640, 640) and pv.dtype == np.float32
    assert sizes == [tuple(entry["original_size_hw"])]
    if name in COCO:
        assert_bitexact(pv[0][:, [0, 320, 639], :], from_k(REF[f"{name}/rows"]), f"{name} rows 0/320/639")
        assert_bitexact(pv[0][:, 300:332, 400:432], from_k(REF[f"{name}/patch"]), f"{name} patch")
    assert sha(pv) == entry["sha256_640"], f"{name}: sha256 of the 640x640 float32 pixel values differs ({PILLOW})"


@pytest.mark.parametrize("name", SMALL)
def test_pixel_values_small_size_bit_exact(name):
    entry = META["images"][name]
    pv, _ = preprocess(load_image(os.path.join(ROOT, entry["path"])), size=tuple(META["small_size"]))
    assert_bitexact(pv[0], from_k(REF[f"{name}/small"]), f"{name} at {META['small_size']}")


def test_batch_of_two_and_paths():
    paths = [os.path.join(ROOT, META["images"][n]["path"]) for n in
             ["coco_000000039769.png", "coco_000000004016.png"]]
    pv, sizes = preprocess(paths)                                          # [2, 3, 640, 640]
    assert pv.shape == (2, 3, 640, 640)
    assert sha(pv) == META["coco_batch_sha256_640"]
    assert sizes == [tuple(META["images"][os.path.basename(p)]["original_size_hw"]) for p in paths]


def test_exif_orientation_applied():
    entry = META["images"]["exif_orientation6.jpg"]
    img = load_image(os.path.join(ROOT, entry["path"]))
    assert entry["size_wh"] == [50, 37]                                    # stored landscape
    assert (img.width, img.height) == (37, 50)                             # orientation 6: shown rotated 90 deg


@pytest.mark.parametrize("name", [n for n in NAMES if META["images"][n]["mode"] != "RGB"])
def test_every_unusual_mode_loads_as_rgb(name):
    # The processor handed the raw image gives no 3-channel result (recorded): a reason to convert in load_image.
    raw = META["images"][name]["raw_processor"]
    assert "error" in raw or raw["shape"][1] != 3
    assert load_image(os.path.join(ROOT, META["images"][name]["path"])).mode == "RGB"


def test_non_rgb_image_refused():
    with pytest.raises(RTDetrError, match="mode 'L'.*load_image"):
        preprocess(PIL.Image.new("L", (8, 8)))


def test_missing_file(tmp_path):
    with pytest.raises(RTDetrError, match="nothere.png: no such file"):
        load_image(tmp_path / "nothere.png")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, not a picture\n")
    with pytest.raises(RTDetrError, match="notes.png: not an image file"):
        load_image(path)


def test_directory(tmp_path):
    with pytest.raises(RTDetrError, match="is a directory"):
        load_image(tmp_path)


def test_truncated_image(tmp_path):
    data = open(os.path.join(ROOT, "tests", "data", "coco_000000039769.png"), "rb").read()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RTDetrError, match="cut.png: could not decode") as e:
        load_image(path)
    assert "\n" not in str(e.value)


def test_decompression_bomb(monkeypatch):
    # Pillow refuses images above 2 * MAX_IMAGE_PIXELS; shrink the limit rather than write a huge file.
    assert PIL.Image.MAX_IMAGE_PIXELS == 89478485                         # Pillow's default, which we keep
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)               # 50 x 37 = 1850 > 2 * 100
    with pytest.raises(RTDetrError, match="mode_L.png: refused as a possible decompression bomb"):
        load_image(os.path.join(FIX, "inputs", "mode_L.png"))

"""The generated shapes dataset (rtdetrv2_np.demo.shapes): deterministic across library versions, and what its
module docstring promises about boxes, areas, sizes and occlusion.

The pinned digests were computed by this code under NumPy 2.4.6 and are the same under NumPy 1.26.4; the generator
uses no NumPy random stream and no Pillow drawing, so any version must give them.
"""

import json

import numpy as np
import pytest

from rtdetrv2_np.demo import shapes
from rtdetrv2_np.demo.shapes import CLASSES, SUB, export_coco, make_scene, scene_digest

# (seed, index, size) -> SHA-256 of pixels + annotations JSON, recorded from this generator (scene 0..: training
# stream; seed 2026: the evaluation stream of the model cards).
PINS = {
    (0, 0, 256): "95c23c7b187baac78ff7b3717a40181f688b60ac6d365e4a39bf3fbcf423ba52",
    (0, 1, 256): "6aa30e7f21073f2bd9641c53ea9c523234ab5bc594f9ad89e0ac6645af16dd9c",
    (0, 123, 256): "de845973ee5834156b91621c98d8f411746556c1d0f9e4a7ee62418919786890",
    (2026, 0, 256): "89508bd1de6bc4db0fcd1e789673bcccab9aad2bdf6d39403f8b6fff61aded70",
    (2026, 499, 256): "d05efbc2542ecaac8ca949f1a98d913605e0def90f8db347dfb96a913e436561",
    (5, 0, 320): "be0af0b20804fc2592ada02b829e0d5016e735f08b65dfeb9ffe1cb6ad3b8088",
}


@pytest.mark.parametrize("key", list(PINS), ids=lambda k: f"seed{k[0]}-scene{k[1]}-{k[2]}px")
def test_digest_pins(key):
    seed, index, size = key
    got = scene_digest(seed, index, size)
    assert got == PINS[key], (f"scene {index} of seed {seed} changed: {got} != {PINS[key]} (numpy {np.__version__}); "
                              "the generator must give the same scenes on every version")


def test_random_field_is_uniform_and_keyed():
    """SplitMix64 fields: in [0, 1), mean 1/2 and variance 1/12 (to 4 standard errors of 10^5 draws), and two
    draws of one stream differ."""
    d = shapes.Draws(1, 2)
    a, b = d.field((100_000,)), d.field((100_000,))
    assert a.min() >= 0 and a.max() < 1
    se = (1 / 12) ** 0.5 / 100_000 ** 0.5
    assert abs(a.mean() - 0.5) < 4 * se, a.mean()
    assert abs(a.var() - 1 / 12) < 4 * 0.0745 / 100_000 ** 0.5, a.var()     # sd of u² terms ≈ 0.0745
    assert np.abs(a - b).max() > 0.5


def _sample(n=150, seed=0):
    return [make_scene(seed, i) for i in range(n)]


def test_scene_statistics():
    """What the docstring says about the objects: 1..15 per image (some dropped by the occlusion rule), all four
    classes, sizes from ~8 px to over half the image, at least a third small in COCO's sense, a few large."""
    scenes = _sample()
    counts = [len(objs) for _, objs in scenes]
    objs = [o for _, objects in scenes for o in objects]
    areas = np.array([o["area"] for o in objs])
    widths = np.array([max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) for o in objs])
    assert min(counts) >= 1 and max(counts) <= shapes.MAX_OBJECTS and max(counts) >= 13, counts
    assert set(o["label"] for o in objs) == set(range(len(CLASSES)))
    small, large = (areas < 32 ** 2).mean(), (areas >= 96 ** 2).mean()
    print(f"{len(objs)} objects: small {small:.2f}, large {large:.3f}, extent {widths.min():.1f}..{widths.max():.1f}")
    assert small >= 1 / 3 and 0.005 < large < 0.2
    assert widths.min() < 10 and widths.max() > 128


def test_boxes_are_visible_extents():
    """Boxes lie in the image, on the 1/SUB sub-pixel grid, and enclose their visible area."""
    for index in range(40):
        image, objects = make_scene(3, index)
        S = image.shape[0]
        for o in objects:
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < x1 <= S and 0 <= y0 < y1 <= S
            assert all(abs(v * SUB - round(v * SUB)) < 1e-9 for v in o["box"])
            assert o["area"] <= (x1 - x0) * (y1 - y0) + 1e-9 and o["area"] > 0


def test_occlusion_rule():
    """Every object keeps at least MIN_VISIBLE of its own area visible; the front object is whole; and the set does
    contain partly hidden objects (so boxes of visible parts matter)."""
    fractions = []
    for index in range(60):
        _, objects = make_scene(11, index)
        vis = [o["area"] / o["full_area"] for o in objects]
        assert min(vis) >= shapes.MIN_VISIBLE, vis
        assert vis[-1] == 1.0
        fractions += vis
    fractions = np.array(fractions)
    print(f"{(fractions < 1).mean():.2f} of {fractions.size} objects partly hidden, min visible {fractions.min():.2f}")
    assert (fractions < 0.95).sum() > 10


def test_export_coco_round_trip(tmp_path):
    import PIL.Image
    path = export_coco(tmp_path / "coco", seed=4, count=3)
    data = json.loads(open(path).read())
    assert [im["file_name"] for im in data["images"]] == ["000000.png", "000001.png", "000002.png"]
    assert [c["name"] for c in data["categories"]] == list(CLASSES)
    for im in data["images"]:
        image, objects = make_scene(4, im["id"] - 1)
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "coco" / "images" / im["file_name"])),
                                      image)
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        assert len(anns) == len(objects)
        for a, o in zip(anns, objects):
            x0, y0, x1, y1 = o["box"]
            assert a["bbox"] == [x0, y0, x1 - x0, y1 - y0] and a["category_id"] == o["label"] + 1
            assert a["area"] == o["area"] and a["iscrowd"] == 0
    assert not list((tmp_path / "coco").rglob(".tmp-*")), "temporary files left behind"

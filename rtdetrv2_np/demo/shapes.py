"""A generated object-detection dataset of shapes, deterministic from a seed: what the shipped demo model knows.

Each scene is a 256×256 RGB image (any size may be asked for) on a textured background with 1 to 15 filled,
anti-aliased shapes of four classes — disc, square, triangle, star — in many colours, sizes and rotations, with
overlaps and occlusions, and its ground truth: one box and one label per object, in COCO's conventions. A scene is
a pure function of (seed, index): the demo model was trained on the stream `make_scene(0, i)` for i = 0, 1, 2, …
and is evaluated on `make_scene(EVAL_SEED, i)` for i < 500, a stream it never saw.

    from rtdetrv2_np.demo.shapes import make_scene, export_coco
    image, objects = make_scene(seed=7, index=0)   # uint8 [S, S, 3]; [{"label", "box" (x0, y0, x1, y1), "area"}]
    python -m rtdetrv2_np.demo.shapes --out shapes_eval --seed 2026 --count 500     # a COCO-format folder

Ground-truth rules, fixed before any model was trained (they move AP more than training does):
- Objects lie wholly inside the image; the one drawn later is in front.
- A box is the tight box of the object's *visible* part, as COCO's boxes are: measured on a 4×4 sub-pixel grid
  (SUB), so it is exact to 1/(2·SUB) = 1/8 px. Box coordinates are in pixels, the image's top-left corner at (0, 0).
- `area` is the visible area in pixels (visible sub-pixel samples / SUB²), as COCO's `area` is the area of the
  visible segmentation; it decides small / medium / large (COCO: area < 32², < 96², ≥ 96²).
- No object is ever mostly hidden: a new object is not placed where it would leave any earlier object with less
  than MIN_VISIBLE = 1/2 of its own area visible (its placement is redrawn, up to PLACEMENT_TRIES times, then the
  object is left out). So every object in an image is labelled, and no unlabelled fragment exists.
- An object's colour differs from the mean colour of what lies beneath it by at least MIN_CONTRAST (RGB distance
  on 0–255), so every labelled object can be seen.

Sizes: the shape's circumscribed diameter d is drawn, with equal chances, log-uniform in [8, 192] px (every
octave as likely: the small objects) or uniform in [24, 192] px (the medium and large ones): about 40 % of the
objects are small in COCO's sense (area < 32²) and a few per cent large (area ≥ 96²: only discs and squares can be,
as a triangle or star of a given diameter covers less area). Sizes scale with the image side.

Determinism across NumPy and Pillow versions: NumPy's Generator methods may change their streams between versions
(NEP 19), and Pillow's polygon rasteriser and filters have changed between versions. So the random numbers come
from SplitMix64 ([1] Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014) written
here with Python integers and NumPy uint64 arithmetic, shapes are rasterised here by sub-pixel inside-tests, and
the only transcendental functions (math.sin/cos/exp on a few scalars per object) are rounded to 1/1024 before use;
every per-pixel operation is IEEE addition, multiplication or comparison. Pillow only encodes PNG files. The test
suite pins the SHA-256 of a few scenes' pixels and annotations (tests/test_shapes.py).
"""

import argparse
import hashlib
import json
import math
import os
import sys

import numpy as np

CLASSES = ("disc", "square", "triangle", "star")    # label i = CLASSES[i]
SIZE = 256                  # image side the demo model was trained at
SUB = 4                     # sub-pixel samples per pixel side: anti-aliasing (17 coverage levels) and box precision
MIN_VISIBLE = 0.5           # an earlier object must keep at least this share of its area visible
PLACEMENT_TRIES = 20        # tries to place one object before it is left out
MIN_CONTRAST = 60.0         # RGB distance (0-255 scale) between an object and the mean of what lies beneath it
LOG_DIAMETER = (8.0, 192.0)     # circumscribed diameter, log-uniform half of the time (px at SIZE = 256)
LIN_DIAMETER = (24.0, 192.0)    # ... and uniform the other half
MAX_OBJECTS = 15
EVAL_SEED = 2026            # the held-out evaluation stream of the model cards (the training stream is seed 0)
EVAL_COUNT = 500
STAR_INNER = (0.38, 0.55)   # star: inner radius / outer radius


# ---------------------------------------------------------------------------------------------------------------
# Random numbers: SplitMix64 [1], version-independent
# ---------------------------------------------------------------------------------------------------------------

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z):
    """SplitMix64's output function on a Python int (the state increment is done by the caller)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _mix64_array(z):
    """The same function on a uint64 array (NumPy's uint64 arithmetic wraps modulo 2^64, as the algorithm needs)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class Draws:
    """A stream of uniform numbers from SplitMix64, keyed by (seed, index): one per scene."""

    def __init__(self, seed, index):
        self.state = _mix64((int(seed) * _GOLDEN + _mix64(int(index) + 1)) & _M64)

    def _next(self):
        self.state = (self.state + _GOLDEN) & _M64
        return _mix64(self.state)

    def uniform(self, lo=0.0, hi=1.0):
        """A float in [lo, hi) (53 random bits)."""
        return lo + (hi - lo) * ((self._next() >> 11) * 2.0 ** -53)

    def integer(self, lo, hi):
        """An int in [lo, hi] (both included)."""
        return lo + self._next() % (hi - lo + 1)

    def field(self, shape):
        """An array of independent uniforms in [0, 1), float64, from one draw of this stream as key."""
        key = np.uint64(self._next())
        n = int(np.prod(shape))
        z = key + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(_GOLDEN)      # [n]
        return ((_mix64_array(z) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).reshape(shape)


def _q(x):
    """Round to 1/1024: makes a value from libm (sin, cos, exp) the same on every platform for all practical
    purposes (a different last bit changes the result only at an exact tie)."""
    return round(x * 1024.0) / 1024.0


# ---------------------------------------------------------------------------------------------------------------
# Background
# ---------------------------------------------------------------------------------------------------------------

def _upsample(grid, S):
    """Bilinear upsampling of a coarse [g, g] grid to [S, S] (corners aligned), written out so that it is the same
    arithmetic on every version."""
    g = grid.shape[0]
    t = np.arange(S, dtype=np.float64) * ((g - 1) / (S - 1))        # [S] positions in grid units
    i0 = np.minimum(t.astype(np.int64), g - 2)                       # [S]
    f = t - i0                                                       # [S]
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]  # [S, g]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]   # [S, S]


def _colour(draws):
    return np.array([draws.uniform(0, 255) for _ in range(3)])      # [3]


def _background(draws, S):
    """A textured background, float64 [S, S, 3] in 0..255: a blend of two colours by smooth value noise (two
    octaves), sometimes with stripes or a checkerboard, always with fine pixel noise."""
    c1, c2 = _colour(draws), _colour(draws)
    g = 2 + draws.integer(0, 3) * 3                                  # coarse grid 2, 5, 8 or 11
    t = 0.7 * _upsample(draws.field((g, g)), S) + 0.3 * _upsample(draws.field((4 * g, 4 * g)), S)   # [S, S]
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]                                              # [S, S, 3]
    kind = draws.integer(0, 2)                                       # 0 plain, 1 stripes, 2 checkerboard
    if kind:
        period = _q(draws.uniform(6, 40) * S / SIZE)
        angle = draws.uniform(0, math.pi)
        ca, sa = _q(math.cos(angle)), _q(math.sin(angle))
        y, x = np.mgrid[0:S, 0:S].astype(np.float64)                 # [S, S]
        u = (x * ca + y * sa) / period
        wave = np.abs(u - np.floor(u) - 0.5) * 2                     # triangle wave in [0, 1]
        if kind == 2:
            v = (-x * sa + y * ca) / period
            wave = np.abs(wave - (np.abs(v - np.floor(v) - 0.5) * 2))
        img = img + (wave[..., None] - 0.5) * (_colour(draws) - 127.5) * draws.uniform(0.1, 0.4)
    noise = draws.uniform(0, 12)
    img = img + (draws.field((S, S, 3)) + draws.field((S, S, 3)) - 1.0) * noise                    # [S, S, 3]
    return img


# ---------------------------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------------------------

def _outline(label, cx, cy, r, angle, inner):
    """The shape's polygon vertices [V, 2] (x, y) in pixels; a disc has none."""
    if label == 0:
        return None
    if label == 1:
        n, radii = 4, [r]
    elif label == 2:
        n, radii = 3, [r]
    else:
        n, radii = 5, [r, r * inner]
    k = n * len(radii)
    verts = []
    for i in range(k):
        a = angle + 2 * math.pi * i / k
        rad = radii[i % len(radii)]
        verts.append((_q(cx + rad * math.cos(a)), _q(cy + rad * math.sin(a))))
    return np.array(verts)


def _inside(label, cx, cy, r, verts, x0, y0, x1, y1):
    """Which sub-pixel samples of the pixel box [x0, x1) × [y0, y1) lie inside the shape: bool [(y1-y0)·SUB,
    (x1-x0)·SUB]. Sample (a, b) of pixel (x, y) sits at (x + (a + 0.5)/SUB, y + (b + 0.5)/SUB)."""
    xs = x0 + (np.arange((x1 - x0) * SUB, dtype=np.float64) + 0.5) / SUB       # [w·SUB]
    ys = y0 + (np.arange((y1 - y0) * SUB, dtype=np.float64) + 0.5) / SUB       # [h·SUB]
    X, Y = xs[None, :], ys[:, None]
    if verts is None:
        return (X - cx) ** 2 + (Y - cy) ** 2 <= r * r
    # even-odd crossing test over the polygon's edges (exact for the simple polygons used here)
    inside = np.zeros((ys.size, xs.size), bool)
    for (ax, ay), (bx, by) in zip(verts, np.roll(verts, -1, axis=0)):
        if ay == by:
            continue
        crosses = (ay > Y) != (by > Y)                                           # [h·SUB, 1]
        x_at = ax + (Y - ay) * ((bx - ax) / (by - ay))                           # [h·SUB, 1]
        inside ^= crosses & (X < x_at)                                           # [h·SUB, w·SUB]
    return inside


def _coverage(inside):
    """Per-pixel coverage in [0, 1] from sub-pixel samples: float64 [h, w]."""
    h, w = inside.shape[0] // SUB, inside.shape[1] // SUB
    return inside.reshape(h, SUB, w, SUB).sum(axis=(1, 3)) / float(SUB * SUB)


def _overlap(a, b):
    """Intersection of two pixel boxes (x0, y0, x1, y1), or None."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _crop(mask, box, sub_box):
    """The part of a sub-pixel mask (over pixel box `box`) that lies over pixel box `sub_box`."""
    return mask[(sub_box[1] - box[1]) * SUB:(sub_box[3] - box[1]) * SUB,
                (sub_box[0] - box[0]) * SUB:(sub_box[2] - box[0]) * SUB]


def make_scene(seed, index, size=SIZE):
    """One generated scene.

    Returns (image uint8 [S, S, 3], objects): objects a list, in drawing order (back to front), of dicts
    {"label": int, "name": str, "box": [x0, y0, x1, y1] (pixels, visible part), "area": float (visible px²),
    "full_area": float (the area it would cover unoccluded; area / full_area >= MIN_VISIBLE)}.
    """
    draws = Draws(seed, index)
    S = int(size)
    scale = S / SIZE
    img = _background(draws, S)                                      # [S, S, 3] float64
    placed = []     # dicts: label, pix (pixel box), inside (sub-pixel mask), visible (sub-pixel mask), full (count)
    n_objects = draws.integer(1, MAX_OBJECTS)
    for _ in range(n_objects):
        label = draws.integer(0, len(CLASSES) - 1)
        for _try in range(PLACEMENT_TRIES):
            if draws.uniform() < 0.5:
                d = math.exp(draws.uniform(math.log(LOG_DIAMETER[0]), math.log(LOG_DIAMETER[1])))
            else:
                d = draws.uniform(*LIN_DIAMETER)
            r = _q(d * scale / 2)
            angle = draws.uniform(0, 2 * math.pi)
            inner = draws.uniform(*STAR_INNER)
            cx, cy = _q(draws.uniform(r, S - r)), _q(draws.uniform(r, S - r))
            verts = _outline(label, cx, cy, r, angle, inner)
            lo = (cx - r, cy - r) if verts is None else verts.min(axis=0)
            hi = (cx + r, cy + r) if verts is None else verts.max(axis=0)
            pix = (max(0, math.floor(lo[0])), max(0, math.floor(lo[1])),
                   min(S, math.ceil(hi[0])), min(S, math.ceil(hi[1])))
            inside = _inside(label, cx, cy, r, verts, *pix)
            if not inside.any():
                continue
            new_visible, ok = [], True          # what the earlier objects would keep visible
            for obj in placed:
                ov = _overlap(obj["pix"], pix)
                if ov is None:
                    new_visible.append(None)
                    continue
                vis = obj["visible"].copy()
                _crop(vis, obj["pix"], ov)[...] &= ~_crop(inside, pix, ov)
                if vis.sum() < MIN_VISIBLE * obj["full"]:
                    ok = False
                    break
                new_visible.append(vis)
            if ok:
                break
        else:
            continue                            # no placement keeps every earlier object visible enough
        alpha = _coverage(inside)[..., None]                                     # [h, w, 1]
        region = img[pix[1]:pix[3], pix[0]:pix[2]]                               # [h, w, 3] (a view)
        beneath = (region * alpha).sum(axis=(0, 1)) / alpha.sum()               # [3] mean colour under the shape
        for _c in range(10):
            colour = _colour(draws)
            if np.sqrt(((colour - beneath) ** 2).sum()) >= MIN_CONTRAST:
                break
        else:
            colour = np.where(beneath < 127.5, 255.0, 0.0)                      # the far corner of the RGB cube
        # gentle shading across the object (a linear ramp in a random direction), as if lit from one side
        shade_angle = draws.uniform(0, 2 * math.pi)
        shade = draws.uniform(0, 0.25)
        yy, xx = np.mgrid[pix[1]:pix[3], pix[0]:pix[2]].astype(np.float64)      # [h, w]
        ramp = ((xx + 0.5 - cx) * _q(math.cos(shade_angle)) + (yy + 0.5 - cy) * _q(math.sin(shade_angle))) / r
        fill = colour * (1 + shade * np.clip(ramp, -1, 1))[..., None]            # [h, w, 3]
        region[...] = region * (1 - alpha) + fill * alpha
        for obj, vis in zip(placed, new_visible):
            if vis is not None:
                obj["visible"] = vis
        placed.append(dict(label=label, pix=pix, inside=inside, visible=inside.copy(), full=int(inside.sum())))
    img = img + (draws.field((S, S, 3)) - 0.5) * 4.0                   # sensor noise over everything (±2)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)             # [S, S, 3]
    return image, [_annotation(obj) for obj in placed]


def _annotation(obj):
    vis = obj["visible"]
    rows, cols = np.nonzero(vis.any(axis=1))[0], np.nonzero(vis.any(axis=0))[0]
    x0, y0 = obj["pix"][0], obj["pix"][1]
    box = [x0 + cols[0] / SUB, y0 + rows[0] / SUB, x0 + (cols[-1] + 1) / SUB, y0 + (rows[-1] + 1) / SUB]
    return {"label": obj["label"], "name": CLASSES[obj["label"]], "box": [float(v) for v in box],
            "area": float(vis.sum()) / (SUB * SUB), "full_area": obj["full"] / (SUB * SUB)}


def scene_digest(seed, index, size=SIZE):
    """SHA-256 of a scene's pixels and annotations (what tests/test_shapes.py pins)."""
    image, objects = make_scene(seed, index, size)
    h = hashlib.sha256(image.tobytes())
    h.update(json.dumps(objects, sort_keys=True).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# COCO export
# ---------------------------------------------------------------------------------------------------------------

def coco_instances(scenes, seed, size=SIZE):
    """The COCO instances dict of generated scenes: scenes a list of (index, objects as make_scene returns them).

    Scene i is image id i + 1 with file name NNNNNN.png (i, six digits); label l is category id l + 1 (CLASSES
    order); boxes become COCO's [x, y, w, h]."""
    images, annotations = [], []
    for i, objects in scenes:
        images.append({"id": i + 1, "file_name": f"{i:06d}.png", "width": size, "height": size})
        for obj in objects:
            x0, y0, x1, y1 = obj["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": obj["label"] + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": obj["area"], "iscrowd": 0})
    return {"info": {"description": f"rtdetrv2_np generated shapes, seed {seed}, {len(images)} images of "
                                    f"{size}x{size}"},
            "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]}


def export_coco(folder, seed, count, size=SIZE, progress=None):
    """Write scenes 0..count-1 of `seed` as a COCO-format folder: folder/images/NNNNNN.png + folder/instances.json.

    Returns the path of instances.json. Each file is written to a temporary name and renamed (no partial file).
    """
    import PIL.Image

    from ..fileio import atomic_write
    images_dir = os.path.join(folder, "images")
    os.makedirs(images_dir, exist_ok=True)
    scenes = []
    for i in range(count):
        image, objects = make_scene(seed, i, size)
        atomic_write(os.path.join(images_dir, f"{i:06d}.png"),
                     lambda tmp: PIL.Image.fromarray(image).save(tmp, format="PNG"))
        scenes.append((i, objects))
        if progress:
            progress(i + 1, count)
    data = coco_instances(scenes, seed, size)
    path = os.path.join(folder, "instances.json")
    atomic_write(path, json.dumps(data).encode())
    return path


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m rtdetrv2_np.demo.shapes",
                                description="Write generated shape scenes as a COCO-format folder "
                                            "(images/NNNNNN.png + instances.json).")
    p.add_argument("--out", required=True, help="folder to write (created if needed)")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help=f"scene stream (default {EVAL_SEED}: the evaluation set)")
    p.add_argument("--count", type=int, default=EVAL_COUNT, help=f"number of scenes (default {EVAL_COUNT})")
    p.add_argument("--size", type=int, default=SIZE, help=f"image side in pixels (default {SIZE})")
    a = p.parse_args(argv)
    if a.count < 1 or a.size < 32:
        p.error("--count must be >= 1 and --size >= 32")

    def progress(i, n):
        if i % 50 == 0 or i == n:
            print(f"{i}/{n} scenes", file=sys.stderr)
    print(export_coco(a.out, a.seed, a.count, a.size, progress))
    return 0


if __name__ == "__main__":
    sys.exit(main())

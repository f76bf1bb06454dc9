"""The lesson figures of walkthrough 03 and 04 (plotting.plot_sampling_ramp, plot_sampling_patterns, plot_anchors,
plot_score_vs_iou): each renders (Agg, to a PNG of the expected size, not blank) and draws the values it claims --
the data of its lines, dots and patches are compared with the package's own functions or with hand-computed
values."""

import matplotlib

matplotlib.use("Agg")        # the tests choose the backend; the package never does

import numpy as np
import PIL.Image
from helpers import assert_close
from matplotlib.collections import PathCollection
from matplotlib.patches import Rectangle

from rtdetrv2_np import plotting
from rtdetrv2_np.model.deformable_attention import sample_bilinear, sample_discrete, sampling_locations
from rtdetrv2_np.model.query_selection import generate_anchors

DPI = 40


def check_png(fig, path):
    """Save with Agg; the PNG has figsize * dpi pixels (within 1) and is not blank."""
    fig.savefig(path, dpi=DPI)
    png = np.asarray(PIL.Image.open(path).convert("RGB"))
    w_in, h_in = fig.get_size_inches()
    assert abs(png.shape[1] - w_in * DPI) <= 1 and abs(png.shape[0] - h_in * DPI) <= 1
    assert png.std() > 5, "blank figure"


def test_sampling_ramp(tmp_path):
    fig = plotting.plot_sampling_ramp(width=5, n=401)
    check_png(fig, tmp_path / "ramp.png")
    top = fig.axes[0]
    bil, dis = (line for line in top.lines if line.get_label().startswith(("bilinear", "discrete")))
    u = bil.get_xdata()
    x = (u / 5).astype(np.float32)
    ramp = np.arange(1, 6, dtype=np.float32).reshape(1, 1, 5, 1)
    loc = np.stack([x, np.full_like(x, 0.5)], -1)[None]
    # the lines are the package's samplers, to float32 rounding of u / W (the figure builds u from x)
    assert_close(bil.get_ydata(), sample_bilinear(ramp, loc)[0, :, 0], 1e-5, "bilinear line")
    assert_close(dis.get_ydata(), sample_discrete(ramp, loc)[0, :, 0], 0, "discrete line")
    inside = (u > 0.5 + 1e-3) & (u < 4.5 - 1e-3)
    # by hand inside the map: bilinear u + 0.5, discrete trunc(u + 0.5) + 1 (float32 u: 1e-5)
    assert_close(bil.get_ydata()[inside], u[inside] + 0.5, 1e-5, "bilinear = u + 0.5")
    steps = np.trunc(u[inside] + 0.5) + 1
    near_step = np.abs((u[inside] + 0.5) - np.round(u[inside] + 0.5)) < 1e-4     # float32 rounding at the steps
    assert_close(dis.get_ydata()[inside][~near_step], steps[~near_step], 0, "discrete = trunc(u + 0.5) + 1")
    gap = fig.axes[1].lines[-1].get_ydata()[inside]
    assert gap.min() > -1e-5 and gap.max() < 1 + 1e-5                         # (0, 1] up to float32


def test_sampling_patterns(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(64, 80, 3), dtype=np.uint8)
    box = np.array([0.5, 0.4, 0.3, 0.2], np.float32)
    raw = rng.normal(size=(1, 1, 2, 6, 2)).astype(np.float32)
    loc = sampling_locations(box[None, None], raw, n_points=[2, 4])[0, 0]           # [M=2, K=6, 2]
    weights = rng.random((2, 6))
    fig = plotting.plot_sampling_patterns(image, box, [("a", loc, None), ("b", loc, weights)], [2, 4])
    check_png(fig, tmp_path / "patterns.png")
    ax = fig.axes[1]
    drawn = np.concatenate([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)
                            and len(c.get_offsets())])
    expected = np.concatenate([loc[m, sel] * [80, 64] for m in range(2) for sel in (slice(0, 2), slice(2, 6))])
    assert_close(drawn, expected, 1e-9, "points drawn at loc * (W, H)")
    # the reference box, in pixels, and the image border
    rects = [(r.get_x(), r.get_y(), r.get_width(), r.get_height()) for r in ax.patches if isinstance(r, Rectangle)]
    assert (0, 0, 80, 64) in rects
    assert any(np.allclose(r, [(0.5 - 0.15) * 80, (0.4 - 0.1) * 64, 0.3 * 80, 0.2 * 64], atol=1e-4) for r in rects)


def test_anchors(tmp_path):
    grid = [(80, 80), (40, 40), (20, 20)]
    fig = plotting.plot_anchors(grid, image=np.zeros((64, 64, 3), np.uint8) + 128)
    check_png(fig, tmp_path / "anchors.png")
    _, valid = generate_anchors(grid)
    starts = np.cumsum([0] + [h * w for h, w in grid])
    for l, ax in enumerate(fig.axes[:3]):
        hatched = [p for p in ax.patches if p.get_hatch()]
        n_invalid = int((~valid[starts[l]:starts[l + 1]]).sum())
        assert len(hatched) == n_invalid
        assert ax.get_xlabel().startswith(f"{n_invalid} of ")
        # the lattice boxes have the anchor's true side, 0.05 * 2^l of the image
        sides = {round(p.get_width(), 6) for p in ax.patches if not p.get_hatch() and p.get_width() < 64}
        assert sides == {round(0.05 * 2 ** l * 64, 6)}, sides
    assert len([p for p in fig.axes[0].patches if p.get_hatch()]) == 4 * 80 - 4   # the outer ring of level 0


def test_score_vs_iou(tmp_path):
    rng = np.random.default_rng(1)
    iou = rng.random(60)
    score = np.clip(iou + 0.2 * rng.normal(size=60), 0, 1)
    groups = rng.integers(0, 3, 60)
    fig = plotting.plot_score_vs_iou(score, iou, groups, ["L0", "L1", "L2"])
    check_png(fig, tmp_path / "score_iou.png")
    r = np.corrcoef(score, iou)[0, 1]
    assert f"Pearson r = {r:.2f}" in fig.texts[0].get_text()
    ax = fig.axes[0]
    drawn = np.concatenate([c.get_offsets() for c in ax.collections])
    order = np.argsort(groups, kind="stable")
    assert_close(drawn, np.stack([iou[order], score[order]], -1), 0, "dots at (IoU, score)")

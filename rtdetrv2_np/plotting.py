"""Figures that teach RT-DETRv2, drawn from the named intermediates of one forward pass (`Model.trace`).

Every function takes the trace dict (`stages = model.trace(pixel_values)`) or plain arrays and returns a
`matplotlib.figure.Figure` built directly, without pyplot: nothing here chooses a backend, opens a window or calls
plt.show(). Save one with `fig.savefig("out.png")`; in Jupyter, run `%matplotlib inline` once and put the figure on
the last line of a cell.

    plot_detections            boxes, label names and scores on the image          (after post-processing)
    plot_sampling_locations    where each head of one query samples, per level      ([2] Eq. 3, [3] §2.1)
    plot_bilinear_vs_discrete  grid_sample's 4-neighbour mix against [3]'s one-texel gather  ([3] §2.1)
    plot_box_refinement        one query's box through the decoder layers           ([2] App. A.4)
    plot_query_selection       max class logit per encoder position, the top-300 marked   ([1] §4.3)
    plot_feature_maps          backbone / encoder maps: channel mean and first channels   ([1] §4.1-4.2)

Weights. The teaching notebooks use the trained demo detector shipped inside the package (`teaching_model()` =
load_model("demo"): 4 shape classes at 256x256, trained on rtdetrv2_np/demo/shapes.py), so every figure shows what
a trained network does, offline. `weights_stamp()` names the weights file and its SHA-256 (each notebook prints it
first, and the tests compare it with the shipped file). `coco_model()` gives the trained r18vd when it is in the
Hugging Face cache and otherwise a deterministic random-weight model; whatever depends on the weights (boxes,
scores, where heads look, which positions win the top-Nq) means nothing with random weights, and a figure must say
so: every figure function takes `weights_note` (any text, stamped in red at the top) and `random_weights=True`
(stamps RANDOM_WEIGHTS_NOTE followed by what, in that figure, carries no meaning).

References [1] RT-DETR, [2] Deformable DETR, [3] RT-DETRv2 (with versions and sections) and the glossary of shape
letters: the package docstring, rtdetrv2_np/__init__.py.
"""


import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .model.deformable_attention import bilinear_taps, discrete_texel, sample_bilinear, sample_discrete
from .postprocess import center_to_corners

HUB_ID = "PekingU/rtdetr_v2_r18vd"
DEMO = "demo"                                   # load_model's name of the shipped demo detector (rtdetrv2_np/demo)
RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS (no trained checkpoint in the cache):"
# what carries no meaning with random weights, per figure (the note says it for the figure it sits on)
_RANDOM_MEANS_NOTHING = {
    "detections": "these boxes and scores mean nothing",
    "sampling": "where the heads sample and their weights mean nothing",
    "refinement": "these boxes, their corrections and the class mean nothing",
    "selection": "which positions score high means nothing",
    "features": "the channels respond to edges and colour, not to learned parts",
    "sampling_values": "the texel values are arbitrary (the sampling rules hold for any values)",
}
NOTE_COLOR = "#b00020"
LEVEL_MARKERS = ("o", "s", "^", "D", "v")      # one marker per feature level (stride 8, 16, 32, ...)


# ----------------------------------------------------------------------------------------------------------------
# The model the walkthrough uses
# ----------------------------------------------------------------------------------------------------------------

def teaching_model(source=DEMO, method=None):
    """(model, is_trained): the walkthrough's model, the trained demo detector shipped in the package.

    source: "demo" (trained with bilinear sampling) or "demo-discrete" (its discrete-sampling fine-tune, where
    shipped). method: "bilinear" / "discrete" overrides the sampling, e.g. the bilinear-trained demo read with
    discrete sampling. Never touches the network. is_trained is True (kept so that `model, IS_REAL =
    teaching_model()` reads as before); coco_model() is the one that may fall back to random weights.
    """
    from .loading import load_model
    return load_model(source, method=method), True


def weights_stamp(model=None):
    """One line naming the weights file a notebook used and its SHA-256 (the committed outputs' stamp).

    model: a loaded Model (its .source file is hashed); None hashes the shipped "demo" weights. A model whose
    source is not a file (random weights) is named as such, with no hash. tests/test_walkthrough.py reads
    "sha256 <hex>" from each notebook's first code cell and compares it with the shipped demo file.
    """
    import hashlib
    import os
    if model is None:
        from .demo import demo_model_dir
        path = os.path.join(demo_model_dir(DEMO, check=True), "model.safetensors")
    else:
        path = model.source
    if not os.path.isfile(path):
        return f"weights: {path} (not a file: no sha256)"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    parts = os.path.normpath(path).split(os.sep)
    shown = "/".join(parts[parts.index("rtdetrv2_np"):]) if "rtdetrv2_np" in parts else os.path.basename(path)
    return f"weights: {shown} sha256 {h.hexdigest()}"


def coco_model(hub_id=HUB_ID, variant="r18vd", seed=0, method=None):
    """(model, is_real): the trained COCO checkpoint if it is in the hub cache, else a deterministic random-weight
    model (for figures on photographs; the walkthrough's committed outputs are made with the cache disabled).

    Never downloads: the hub id is looked up in the cache only (load_model(..., offline=True); the process's
    environment is left alone). If the checkpoint is not
    cached (an RTDetrError), returns random_model(variant, seed, method) -- the same architecture, computing exactly
    what the trained network computes, but finding nothing. is_real tells which; model.source names the file.
    """
    from .errors import RTDetrError
    from .loading import load_model
    from .random_weights import random_model
    try:
        return load_model(hub_id, method=method, offline=True), True
    except RTDetrError:
        return random_model(variant, seed=seed, method=method), False


# ----------------------------------------------------------------------------------------------------------------
# Layout helpers
# ----------------------------------------------------------------------------------------------------------------

def _note(weights_note, random_weights, figure=None):
    """The red note of a figure: weights_note if given, else with random_weights what means nothing in `figure`."""
    if weights_note is not None:
        return weights_note
    what = _RANDOM_MEANS_NOTHING.get(figure, "what this figure shows depends on the weights and means nothing")
    return f"{RANDOM_WEIGHTS_NOTE} {what}" if random_weights else None


def _figure(nrows, ncols, panel, title, note, *, right=0.2, left=0.2, bottom=0.25, wspace=0.25, hspace=0.35):
    """A Figure with an nrows x ncols grid of panels of `panel` (w, h) inches and a header band on top.

    The header holds the title (black) and, below it, the weights note (red), so that the warning is the first thing
    a reader sees. Sizes are in inches, so the layout does not depend on the backend. Returns (fig, axes 2-D array).
    """
    pw, ph = panel
    n_title = title.count("\n") + 1 if title else 0
    head = 0.32 + 0.3 * n_title + (0.28 if note else 0.0)
    width = left + right + ncols * pw + (ncols - 1) * wspace * pw
    height = head + bottom + nrows * ph + (nrows - 1) * hspace * ph
    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=dict(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - head / height,
        wspace=wspace, hspace=hspace))
    y = 1 - 0.12 / height
    if title:
        fig.text(0.5, y, title, ha="center", va="top", fontsize=12, fontweight="bold", linespacing=1.3)
        y -= 0.3 * n_title / height
    if note:
        fig.text(0.5, y, note, ha="center", va="top", fontsize=10, color=NOTE_COLOR, fontweight="bold",
                 wrap=True)
    return fig, axes


def _rgb(image):
    """An image as float [H, W, 3] in [0, 1], from a PIL image, [H, W, 3] uint8/float, or pixel values [(1,) 3, H, W]."""
    if image is None:
        return None
    if hasattr(image, "convert"):                                   # PIL
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    a = np.asarray(image)
    if a.ndim == 4:
        a = a[0]
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)                                     # [3, H, W] -> [H, W, 3]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    a = a.astype(np.float32)
    if np.issubdtype(np.asarray(image).dtype, np.integer):
        a = a / 255
    return np.clip(a, 0, 1)


def _box_xyxy(box, w, h):
    """(cx, cy, w, h) normalised -> (x1, y1, x2, y2) in pixels of a w x h image (postprocess.center_to_corners)."""
    return tuple(float(v) for v in center_to_corners(np.asarray(box, np.float32)) * np.array([w, h, w, h]))


def _zoom(ax, xs, ys, w, h, margin=0.25, min_size=0.15):
    """Limit ax to the span of xs, ys (pixels) plus a margin, at least min_size of the image, kept square-ish."""
    x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
    size = max(x2 - x1, y2 - y1, min_size * max(w, h)) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    cx = _slide(cx, x1, x2, size, w)                                # inside the image if the content allows
    cy = _slide(cy, y1, y2, size, h)
    ax.set_xlim(cx - size / 2, cx + size / 2)
    ax.set_ylim(cy + size / 2, cy - size / 2)


def _slide(c, lo, hi, size, extent):
    """Move a window centre c so the window [c - size/2, c + size/2] stays in [0, extent] while still holding
    [lo, hi]; if it cannot do both, it holds [lo, hi]."""
    keep = (hi - size / 2, lo + size / 2)                           # centres whose window holds the content
    inside = (size / 2, extent - size / 2)                          # centres whose window stays in the image
    a, b = max(keep[0], inside[0]), min(keep[1], inside[1])
    return min(max(c, a), b) if a <= b else min(max(c, keep[0]), keep[1])


def _clean(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def _n_points(stages, K):
    """Points per level from the trace: K split evenly over the levels (the published models all use equal counts)."""
    L = sum(1 for k in stages if k.startswith("encoder.output.")) or 3
    if K % L:
        raise ValueError(f"cannot split {K} points evenly over {L} levels: pass n_points")
    return [K // L] * L


def _label(id2label, c):
    return id2label.get(int(c), str(int(c))) if id2label else str(int(c))


# ----------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------

def plot_detections(image, detections, id2label=None, threshold=None, max_detections=30, title=None,
                    weights_note=None, random_weights=False, panel=6.0, ground_truth=None):
    """Boxes, label names and scores drawn on the image; optionally the ground truth beside them.

    image: PIL image, [H, W, 3] array or pixel values [(1,) 3, H, W]. detections: one dict of
    post_process_object_detection ("scores" [n], "labels" [n], "boxes" [n, 4] x1, y1, x2, y2 in pixels of `image`).
    id2label: {label: name} (model.id2label). threshold: drop scores <= threshold; max_detections: the best n drawn.
    ground_truth: a list of {"label", "box" (x1, y1, x2, y2)} (demo.shapes.make_scene's objects), drawn as white
    dashed boxes under the detections. Each label sits just above its box (inside the image), so it never covers
    the object.
    """
    img = _rgb(image)
    H, W = img.shape[:2]
    scores = np.asarray(detections["scores"], dtype=np.float64)
    labels = np.asarray(detections["labels"])
    boxes = np.asarray(detections["boxes"], dtype=np.float64).reshape(-1, 4)
    keep = np.argsort(-scores, kind="stable")
    if threshold is not None:
        keep = keep[scores[keep] > threshold]
    keep = keep[:max_detections]
    note = _note(weights_note, random_weights, "detections")
    head = title or f"{len(keep)} detections" + (f" (colour), {len(ground_truth)} ground-truth objects (white, "
                                                 f"dashed)" if ground_truth is not None else "")
    fig, axes = _figure(1, 1, (panel, panel * H / W), head, note)
    ax = axes[0, 0]
    ax.imshow(img)
    for obj in ground_truth or []:
        x1, y1, x2, y2 = (float(v) for v in obj["box"])
        for color, lw, ls in (("black", 2.6, "-"), ("white", 1.6, "--")):      # white dashes on a black outline
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=lw,
                                   linestyle=ls))
    fs = 9 * min(1.0, panel / 6.0) + 1
    line = 1.5 * fs / 72 * H / (panel * H / W)                      # one label's height in pixels of the image
    placed = []                                                     # label anchors so far (best scores first)
    for i in keep:
        x1, y1, x2, y2 = boxes[i]
        color = _tab10(int(labels[i]))
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=2))
        above = y1 > 0.06 * H                                       # room above the box: the label goes there
        tx, ty0 = min(max(x1, 0), 0.8 * W), y1 - 1 if above else max(y2, 0) + 1
        step = -line if above else line                             # a near-duplicate's label: stack it away
        ty = ty0
        for k in range(1, 6):                                       # at most 5 moves (then it may overlap)
            if not any(abs(tx - px) < 0.2 * W and abs(ty - py) < line for px, py in placed):
                break
            ty = ty0 + k * step
            if not line <= ty <= H - line:                          # out of the image: stack the other way
                ty = ty0 - k * step
        placed.append((tx, ty))
        ax.text(tx, ty, f"{_label(id2label, labels[i])} {scores[i]:.2f}", color="white", fontsize=fs,
                va="bottom" if above else "top", ha="left", clip_on=True, zorder=4,
                bbox=dict(facecolor=color, edgecolor="none", alpha=0.85, pad=1.0))
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    _clean(ax)
    return fig


def _tab10(i):
    """The i-th colour of matplotlib's tab10 cycle (no colormap registry needed)."""
    cycle = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
             "#17becf"]
    return cycle[i % 10]


def plot_sampling_locations(image, stages, layer, query, n_points=None, batch=0, heads=None, zoom=True, ncols=4,
                            title=None, weights_note=None, random_weights=False, panel=3.0):
    """Where one query's deformable cross-attention samples in decoder layer `layer`: one panel per head.

    image: what the locations are drawn on (the model input or the original image; locations are normalised, so any
    size works). stages: the trace dict; reads decoder.{layer}.sampling_locations [B, Nq, M, K, 2] and
    .attention_weights [B, Nq, M, K], and the reference box that layer received: reference_boxes for layer 0,
    decoder.{layer-1}.boxes after. n_points: K_l per level (default: K split evenly over the levels).
    In each panel: the reference box (thick cyan on a black outline) and its centre (+), every sampling point
    coloured by its attention weight A_mlqk (one colour scale for all heads), one marker shape per level (points of
    several levels may coincide: the legend says so); the panel title gives the share of the head's attention that
    goes to each level. zoom: crop to the box and its points; the image border is drawn (red) and the outside
    greyed, since sampling points may lie outside the image (they read zeros there).
    """
    img = _rgb(image)
    H, W = img.shape[:2]
    loc = np.asarray(stages[f"decoder.{layer}.sampling_locations"][batch, query], dtype=np.float64)   # [M, K, 2]
    aw = np.asarray(stages[f"decoder.{layer}.attention_weights"][batch, query], dtype=np.float64)     # [M, K]
    ref_name = "reference_boxes" if layer == 0 else f"decoder.{layer - 1}.boxes"
    ref = np.asarray(stages[ref_name][batch, query], dtype=np.float64)                                # [4]
    M, K = aw.shape
    n_points = list(n_points) if n_points is not None else _n_points(stages, K)
    level_of = np.repeat(np.arange(len(n_points)), n_points)                                           # [K]
    heads = list(range(M)) if heads is None else list(heads)
    nrows = -(-len(heads) // ncols)
    note = _note(weights_note, random_weights, "sampling")
    title = title or (f"decoder layer {layer}, query {query}: where each head samples\n"
                      f"colour = attention weight, marker = level, cyan = the reference box ({ref_name})")
    fig, axes = _figure(nrows, min(ncols, len(heads)), (panel, panel), title, note, right=1.3, hspace=0.3)
    norm = Normalize(0, max(float(aw[heads].max()), 1e-6))
    x1, y1, x2, y2 = _box_xyxy(ref, W, H)
    mappable = None
    for ax in axes.flat[len(heads):]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, heads):
        ax.set_facecolor("#d0d0d0")                                 # outside the image: grey
        ax.imshow(img, alpha=0.55)
        ax.add_patch(Rectangle((0, 0), W, H, fill=False, edgecolor=NOTE_COLOR, linewidth=1.2, linestyle=":",
                               zorder=2))                          # the image border
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="black", linewidth=4.0, zorder=2))
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="#00e5ff", linewidth=2.2,
                               zorder=2))
        ax.plot([ref[0] * W], [ref[1] * H], marker="+", color="black", markersize=12, mew=2.5, zorder=4)
        px, py = loc[m, :, 0] * W, loc[m, :, 1] * H
        order = np.argsort(aw[m])                                   # heaviest drawn last, on top
        for l in range(len(n_points)):
            sel = order[level_of[order] == l]
            mappable = ax.scatter(px[sel], py[sel], c=aw[m, sel], cmap="plasma", norm=norm,
                                  s=25 + 220 * aw[m, sel] / norm.vmax, marker=LEVEL_MARKERS[l % 5],
                                  edgecolors="black", linewidths=0.6, zorder=3)
        share = [aw[m, level_of == l].sum() for l in range(len(n_points))]
        ax.set_title(f"head {m}: " + " / ".join(f"L{l} {s:.2f}" for l, s in enumerate(share)), fontsize=9)
        if zoom:
            _zoom(ax, list(px) + [x1, x2], list(py) + [y1, y2], W, H)
        else:
            ax.set_xlim(0, W)
            ax.set_ylim(H, 0)
        _clean(ax)
    cax = fig.add_axes([1 - 1.0 / fig.get_figwidth(), 0.25, 0.15 / fig.get_figwidth(), 0.5])
    fig.colorbar(mappable, cax=cax, label="attention weight A")
    handles = [axes.flat[0].scatter([], [], marker=LEVEL_MARKERS[l % 5], color="grey", edgecolors="black",
                                    label=f"level {l} (K={k})") for l, k in enumerate(n_points)]
    cax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.04), fontsize=8, frameon=False,
               title="stacked markers:\nlevels at one point", title_fontsize=7)
    return fig


def plot_bilinear_vs_discrete(value, locations, title=None, weights_note=None, random_weights=False, panel=4.0,
                              annotate=True):
    """Bilinear versus discrete sampling of the same points on one small feature map, side by side.

    value [H, W]: one channel of one level (small, e.g. 4 x 5, so that every texel can be labelled).
    locations [P, 2]: normalised (x, y), as in the sampling_locations of the decoder.
    Axes are in texel units u = x * W, v = y * H; texel (i, j) covers [i, i+1] x [j, j+1], its centre at (i + 0.5,
    j + 0.5) -- grid_sample's align_corners=False convention. Left: the point (x), the 4 neighbour centres with their
    bilinear weights (0 and hollow where the neighbour lies outside the map: zero padding), and the interpolated
    value. Right: the texel discrete sampling picks, trunc(u + 0.5) clamped into the map, and the dashed cell of u
    values that pick it -- [i - 0.5, i + 0.5), shifted half a texel from the texel itself. The values printed are
    computed by the package's sample_bilinear and sample_discrete.
    """
    value = np.asarray(value, dtype=np.float32)
    H, W = value.shape
    locs = np.asarray(locations, dtype=np.float32).reshape(-1, 2)                            # [P, 2]
    v4 = value[None, :, :, None]                                                              # [1, H, W, 1]
    bil = sample_bilinear(v4, locs[None])[0, :, 0]                                            # [P]
    dis = sample_discrete(v4, locs[None])[0, :, 0]                                            # [P]
    note = _note(weights_note, random_weights, "sampling_values")
    size = (panel, panel * (H + 1.5) / (W + 1.5))
    fig, axes = _figure(1, 2, size, title or "one feature map, the same points, two ways to read it", note,
                        wspace=0.15, left=0.45, bottom=0.6 + 0.17 * len(locs))
    for ax, name in zip(axes[0], ("bilinear: grid_sample, zero padding", "discrete: texel trunc(u + 0.5), [3] §2.1")):
        ax.imshow(value, cmap="Greys", extent=(0, W, H, 0), alpha=0.45,
                  vmin=float(value.min()) - 0.3 * float(np.ptp(value) or 1), vmax=float(value.max()))
        for j in range(H + 1):
            ax.axhline(j, color="grey", linewidth=0.5)
        for i in range(W + 1):
            ax.axvline(i, color="grey", linewidth=0.5)
        if annotate:                                                # texel values in the top-left corners
            for j in range(H):
                for i in range(W):
                    ax.text(i + 0.06, j + 0.06, f"{value[j, i]:.3g}", ha="left", va="top", fontsize=7,
                            color="#444444")
        ax.set_xlim(-0.75, W + 0.75)
        ax.set_ylim(H + 0.75, -0.75)
        ax.set_xticks(range(W + 1))
        ax.set_yticks(range(H + 1))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("u = x * W (texel units)", fontsize=8)
        ax.set_title(name, fontsize=10)
    axes[0, 0].set_ylabel("v = y * H", fontsize=8)
    lines_b, lines_d = [], []
    for p, (x, y) in enumerate(locs):
        color = _tab10(p + 3)
        u, v = float(x) * W, float(y) * H
        # bilinear: the four neighbours and their weights, as the package computes them (bilinear_taps)
        ax = axes[0, 0]
        for cx, cy, wgt in bilinear_taps(x, y, H, W):
            cx, cy, wgt = int(cx), int(cy), float(wgt)
            inside = 0 <= cx < W and 0 <= cy < H
            ax.plot([u, cx + 0.5], [v, cy + 0.5], color=color, linewidth=0.8 + 2.5 * wgt, alpha=0.8)
            ax.plot([cx + 0.5], [cy + 0.5], marker="o", markersize=6, color=color if inside else "white",
                    markeredgecolor=color)
            # the weight beside its neighbour centre, on the side away from the point, above every marker
            dx = 0.14 if cx + 0.5 >= u else -0.14
            ax.text(cx + 0.5 + dx, cy + 0.5 + (0.14 if cy + 0.5 >= v else -0.14),
                    f"{wgt:.2f}" if inside else "0 (pad)", ha="left" if dx > 0 else "right",
                    va="top" if cy + 0.5 >= v else "bottom", fontsize=7, color=color, fontweight="bold",
                    zorder=5, bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=0.3))
        ax.plot([u], [v], marker="X", markersize=10, color=color, markeredgecolor="black")
        ax.text(u + 0.12, v - 0.12, f"p{p}", color=color, fontsize=8, fontweight="bold", ha="left", va="bottom")
        lines_b.append(f"p{p} ({x:.3f}, {y:.3f}) -> {bil[p]:.4g}")
        # discrete: the picked texel, and the cell of u values that pick it
        ax = axes[0, 1]
        i, j = discrete_texel(x, y, H, W)
        ax.add_patch(Rectangle((i, j), 1, 1, fill=True, facecolor=color, alpha=0.3, edgecolor=color, linewidth=2.5))
        ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, edgecolor=color, linewidth=1.2,
                               linestyle="--"))
        ax.annotate("", xy=(i + 0.5, j + 0.5), xytext=(u, v),
                    arrowprops=dict(arrowstyle="->", color=color, linewidth=1.5))
        ax.plot([u], [v], marker="X", markersize=10, color=color, markeredgecolor="black")
        ax.text(u + 0.12, v - 0.12, f"p{p}", color=color, fontsize=8, fontweight="bold", ha="left", va="bottom")
        lines_d.append(f"p{p} -> texel (col {i}, row {j}) = {dis[p]:.4g}")
    h_ax = axes[0, 0].get_position().height * fig.get_figheight()
    for ax, lines in ((axes[0, 0], lines_b), (axes[0, 1], lines_d)):
        ax.text(0.0, -0.5 / h_ax, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=8,
                family="monospace")
    return fig


def plot_box_refinement(image, stages, queries, batch=0, id2label=None, zoom=True, ncols=3, title=None,
                        weights_note=None, random_weights=False, panel=3.6):
    """The boxes of a few queries through the decoder: query selection's box, then the output of every layer.

    image: as in plot_detections (boxes are normalised, so any size). stages: the trace dict (reference_boxes and
    decoder.{i}.boxes [B, Nq, 4], decoder.{i}.logits [B, Nq, NC]). queries: query indices, one panel each. Each
    layer's box is b_i = sigmoid(bbox_embed_i(h_i) + logit(b_{i-1})) ([2] App. A.4); colours go from light (the
    selected anchor box) to dark (the last layer). With id2label the panel title gives the last layer's best class
    and its score sigmoid(logit).
    """
    img = _rgb(image)
    H, W = img.shape[:2]
    n_layers = sum(1 for k in stages if k.startswith("decoder.") and k.endswith(".boxes"))
    names = ["reference_boxes"] + [f"decoder.{i}.boxes" for i in range(n_layers)]
    labels = ["query selection"] + [f"layer {i}" for i in range(n_layers)]
    queries = [int(q) for q in np.atleast_1d(queries)]
    nrows = -(-len(queries) // ncols)
    note = _note(weights_note, random_weights, "refinement")
    fig, axes = _figure(nrows, min(ncols, len(queries)), (panel, panel),
                        title or "iterative box refinement: each decoder layer corrects the box it received", note,
                        right=1.6, hspace=0.3)
    for ax in axes.flat[len(queries):]:
        ax.set_visible(False)
    # query selection's box in orange, then the layers from light to dark blue
    shades = ["#e69f00"] + [(0.55 * (1 - t), 0.65 * (1 - t) + 0.1, 0.95 - 0.4 * t)
                            for t in np.linspace(0, 1, max(1, len(names) - 1))]
    for ax, q in zip(axes.flat, queries):
        ax.imshow(img, alpha=0.6)
        xs, ys = [], []
        for k, (name, lab) in enumerate(zip(names, labels)):
            x1, y1, x2, y2 = _box_xyxy(np.asarray(stages[name][batch, q]), W, H)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=shades[k],
                                   linewidth=1.4 + 1.2 * k / max(1, len(names) - 1),
                                   linestyle="--" if k == 0 else "-", label=lab))
            xs += [x1, x2]
            ys += [y1, y2]
        sub = f"query {q}"
        if id2label is not None and n_layers:
            logits = np.asarray(stages[f"decoder.{n_layers - 1}.logits"][batch, q], dtype=np.float64)
            c = int(np.argmax(logits))
            sub += f": {_label(id2label, c)} {1 / (1 + np.exp(-logits[c])):.2f}"
        ax.set_title(sub, fontsize=9)
        if zoom:
            _zoom(ax, xs, ys, W, H, margin=0.12)
        else:
            ax.set_xlim(0, W)
            ax.set_ylim(H, 0)
        _clean(ax)
    axes.flat[0].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False) \
        if len(queries) == 1 else fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="center right",
                                             fontsize=8, frameon=False)
    return fig


def plot_query_selection(stages, spatial_shapes, image=None, batch=0, title=None, weights_note=None,
                         random_weights=False, panel=3.4):
    """Query selection as a heat map: the max class logit of every encoder position, on each level, top-Nq marked.

    stages: the trace dict (enc_logits [B, Nv, NC], topk_index [B, Nq], valid_mask [Nv]). spatial_shapes: [(H_l,
    W_l)] of the levels (fine to coarse, as the tokens are concatenated). image: optional, drawn under the heat map.
    The score ranked is max_c enc_logits ([1] §4.3; [5] RTDetrV2Model.forward). Positions whose anchor is invalid
    (centre within 1% of the border or box too large) see zeroed memory; they are hatched. White dots: the
    selected positions; the panel title counts them per level.
    """
    score = np.asarray(stages["enc_logits"][batch], dtype=np.float64).max(axis=-1)          # [Nv]
    index = np.asarray(stages["topk_index"][batch])                                          # [Nq]
    valid = np.asarray(stages["valid_mask"]).reshape(-1).astype(bool)                        # [Nv]
    img = _rgb(image)
    note = _note(weights_note, random_weights, "selection")
    L = len(spatial_shapes)
    fig, axes = _figure(1, L, (panel, panel), title or f"query selection: max class logit per position, the "
                        f"top-{len(index)} marked", note, right=1.0, bottom=0.3, wspace=0.12)
    norm = Normalize(float(score[valid].min()), float(score[valid].max()))
    start, im = 0, None
    for l, (ax, (h, w)) in enumerate(zip(axes[0], spatial_shapes)):
        s = score[start:start + h * w].reshape(h, w)                                         # [H_l, W_l]
        v = valid[start:start + h * w].reshape(h, w)
        sel = index[(index >= start) & (index < start + h * w)] - start
        if img is not None:
            ax.imshow(img, extent=(0, w, h, 0))
        im = ax.imshow(np.where(v, s, np.nan), cmap="magma", norm=norm, extent=(0, w, h, 0),
                       alpha=0.75 if img is not None else 1.0, interpolation="nearest")
        inv_y, inv_x = np.nonzero(~v)
        for yy, xx in zip(inv_y, inv_x):                            # invalid anchors: grey, dark hatching
            ax.add_patch(Rectangle((xx, yy), 1, 1, facecolor="#e8e8e8", hatch="xxx", edgecolor="#303030",
                                   linewidth=0, zorder=2))
        ax.scatter(sel % w + 0.5, sel // w + 0.5, s=max(4.0, 400 / max(h, w)), facecolors="white",
                   edgecolors="black", linewidths=0.4, zorder=3)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_title(f"level {l}: {h}x{w}, {len(sel)} selected, {int((~v).sum())} invalid", fontsize=9)
        _clean(ax)
        start += h * w
    axes[0, 0].legend(handles=[Rectangle((0, 0), 1, 1, facecolor="#e8e8e8", hatch="xxx", edgecolor="#303030",
                                         linewidth=0, label="invalid anchor (memory zeroed)"),
                               axes[0, 0].scatter([], [], facecolors="white", edgecolors="black", label="selected")],
                      loc="upper left", bbox_to_anchor=(0.0, -0.02), fontsize=8, frameon=False, ncol=2)
    cax = fig.add_axes([1 - 0.8 / fig.get_figwidth(), 0.3 / fig.get_figheight() + 0.05, 0.15 / fig.get_figwidth(),
                        0.6])
    fig.colorbar(im, cax=cax, label="max class logit")
    return fig


def plot_feature_maps(stages, names, batch=0, channels=None, n_channels=3, title=None, weights_note=None,
                      random_weights=False, panel=2.2):
    """Feature maps [B, C, H, W] by name, one row each: the mean over channels, then a few single channels.

    stages: the trace dict (or any {name: array}); names: e.g. ["backbone.0", "backbone.1", "backbone.2"] or
    ["encoder.input_proj.2", "encoder.aifi"]. channels: which channels to show; None picks, per map, the n_channels
    with the largest spatial standard deviation (after a ReLU many channels are all zero). Each panel has its own
    colour scale (viridis, dark = low), shown by its own colourbar.
    """
    note = _note(weights_note, random_weights, "features")
    ncols = 1 + (len(channels) if channels is not None else n_channels)
    fig, axes = _figure(len(names), ncols, (panel, panel), title or "feature maps (each panel its own colour scale)",
                        note, left=1.6, hspace=0.25, wspace=0.35)
    for row, name in zip(axes, names):
        x = np.asarray(stages[name][batch], dtype=np.float64)                                # [C, H, W]
        chosen = list(channels) if channels is not None else \
            list(np.argsort(-x.reshape(len(x), -1).std(axis=1), kind="stable")[:n_channels])
        maps = [x.mean(axis=0)] + [x[c] for c in chosen]
        heads = ["mean over C"] + [f"channel {c}" for c in chosen]
        for ax, m, head in zip(row, maps, heads):
            im = ax.imshow(m, cmap="viridis", interpolation="nearest")
            ax.set_title(head, fontsize=8)
            _clean(ax)
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)      # each panel its own scale
            cb.ax.tick_params(labelsize=6)
        row[0].set_ylabel(f"{name}\n[C={x.shape[0]}, {x.shape[1]}x{x.shape[2]}]", fontsize=9, rotation=0,
                          ha="right", va="center")
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Lesson figures of walkthrough 03 and 04 (second edition): plain arrays in, one Figure out
# ----------------------------------------------------------------------------------------------------------------

def plot_sampling_ramp(width=6, n=721, title=None, panel=(7.0, 2.6)):
    """A 1-D sweep across a ramp: bilinear sampling is a line, discrete sampling a staircase shifted half a texel.

    The map is one row of `width` texels whose values are 1, 2, ..., width (texel i holds i + 1), sampled at n
    points x from -1/width to 1 + 1/width (u = x * width from -1 to width + 1) by the package's sample_bilinear and
    sample_discrete. Top: both readings against u, the texel centres (i + 0.5) marked. Bottom: discrete - bilinear.
    Between the first and last texel centre bilinear reads u + 0.5 (value i + 1 at the centre u = i + 0.5);
    discrete reads texel trunc(u + 0.5), value trunc(u + 0.5) + 1: a staircase whose tread for texel i spans
    u in [i - 0.5, i + 0.5), centred on u = i, half a texel left of the texel's centre. So discrete(u) is
    bilinear(u + 0.5) rounded, and discrete - bilinear lies in (0, 1], 0.5 on average. Outside the map bilinear
    fades to 0 (zero padding), discrete holds the border texel.
    """
    x = np.linspace(-1.0 / width, 1.0 + 1.0 / width, n, dtype=np.float32)           # [n] normalised
    value = np.arange(1, width + 1, dtype=np.float32).reshape(1, 1, width, 1)       # [1, H=1, W, 1]
    loc = np.stack([x, np.full_like(x, 0.5)], axis=-1)[None]                         # [1, n, 2] on the row's centre
    bil = sample_bilinear(value, loc)[0, :, 0]                                       # [n]
    dis = sample_discrete(value, loc)[0, :, 0]                                       # [n]
    u = x * width
    fig, axes = _figure(2, 1, panel, title or f"a ramp of {width} texels (texel i holds i + 1), read at every u",
                        None, left=0.8, right=0.3, bottom=0.55, hspace=0.45)
    ax = axes[0, 0]
    for i in range(width + 1):
        ax.axvline(i, color="#dddddd", linewidth=0.8, zorder=0)                      # texel borders
    ax.axvspan(u[0], 0, color="#f3e0e0", zorder=0)
    ax.axvspan(width, u[-1], color="#f3e0e0", zorder=0, label="outside the map")
    ax.plot(u, bil, color="#1f77b4", linewidth=2, label="bilinear (grid_sample, zero padding)")
    ax.plot(u, dis, color="#d62728", linewidth=2, label="discrete: texel trunc(u + 0.5), clamped")
    ax.plot(np.arange(width) + 0.5, value[0, 0, :, 0], "o", color="black", markersize=5,
            label="texel centres (i + 0.5, value i + 1)", zorder=3)
    ax.set_ylabel("value read", fontsize=8)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    ax.set_xlim(u[0], u[-1])
    ax.tick_params(labelsize=7)
    ax = axes[1, 0]
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.plot(u, dis - bil, color="#6a3d9a", linewidth=1.5)
    ax.set_xlim(u[0], u[-1])
    ax.set_ylim(-0.6, 1.6)                                          # outside the map the gap grows to the border value
    ax.set_title("discrete - bilinear (clipped; inside the map it lies in (0, 1])", fontsize=8)
    ax.set_xlabel("u = x * W (texel units; texel i covers [i, i + 1])", fontsize=8)
    ax.set_ylabel("discrete - bilinear", fontsize=8)
    ax.tick_params(labelsize=7)
    return fig


def plot_sampling_patterns(image, box, patterns, n_points, title=None, weights_note=None, panel=3.4, zoom=True):
    """Sampling points of one query around its reference box, one panel per pattern (e.g. the initialisation and
    the trained model), one colour per head, one marker per level.

    image: as in plot_detections. box: the reference box (cx, cy, w, h), normalised, drawn thick in black and
    yellow. patterns: [(name, loc [M, K, 2] normalised, weights [M, K] or None)]; with weights the marker area
    grows with the attention weight. n_points: K_l per level (level-major slots). The image's border is drawn in
    every panel (zoomed panels may reach past it).
    """
    img = _rgb(image)
    H, W = img.shape[:2]
    level_of = np.repeat(np.arange(len(n_points)), n_points)                         # [K]
    fig, axes = _figure(1, len(patterns), (panel, panel), title or "where one query samples", weights_note,
                        right=1.5, wspace=0.12)
    x1, y1, x2, y2 = _box_xyxy(box, W, H)
    for ax, (name, loc, weights) in zip(axes[0], patterns):
        loc = np.asarray(loc, dtype=np.float64)                                       # [M, K, 2]
        ax.imshow(img, alpha=0.5, extent=(0, W, H, 0))
        ax.add_patch(Rectangle((0, 0), W, H, fill=False, edgecolor="black", linewidth=1.0, linestyle=":"))
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="black", linewidth=3.2))
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="#ffd700", linewidth=1.6))
        for m in range(loc.shape[0]):
            size = 30 if weights is None else 15 + 300 * np.asarray(weights[m], np.float64)
            for l in range(len(n_points)):
                sel = level_of == l
                ax.scatter(loc[m, sel, 0] * W, loc[m, sel, 1] * H, s=np.broadcast_to(size, level_of.shape)[sel],
                           color=_tab10(m), marker=LEVEL_MARKERS[l % 5], edgecolors="black", linewidths=0.5,
                           zorder=3, label=f"head {m}" if l == 0 else None)
        ax.set_title(name, fontsize=9)
        if zoom:
            _zoom(ax, list(loc[..., 0].ravel() * W) + [x1, x2], list(loc[..., 1].ravel() * H) + [y1, y2], W, H,
                  margin=0.1)
        else:
            ax.set_xlim(0, W)
            ax.set_ylim(H, 0)
        _clean(ax)
    handles = axes[0, 0].get_legend_handles_labels()
    handles[0].extend(axes[0, 0].scatter([], [], marker=LEVEL_MARKERS[l % 5], color="grey", edgecolors="black")
                      for l in range(len(n_points)))
    handles[1].extend(f"level {l} (K={k})" for l, k in enumerate(n_points))
    fig.legend(*handles, loc="center right", fontsize=8, frameon=False)
    return fig


def plot_anchors(spatial_shapes, image=None, title=None, panel=3.4):
    """Each level's anchors at their true size on the image, invalid positions hatched ([2] App. A.4, [1] §4.3).

    spatial_shapes: [(H_l, W_l)] fine to coarse. The anchors come from the package (query_selection.
    generate_anchors, logit space; drawn after a sigmoid). Per level: every position's centre as a dot, a sparse
    lattice of anchor boxes at their true size (every s-th position, s chosen so they do not overlap), and the
    cells of invalid positions hatched (red). image: optional background (any size: anchors are normalised).
    """
    from .model.query_selection import generate_anchors
    logits, valid = generate_anchors(spatial_shapes)                                   # [Nv, 4], [Nv]
    with np.errstate(over="ignore"):
        boxes = 1 / (1 + np.exp(-logits.astype(np.float64)))                          # [Nv, 4]; invalid -> 1
    img = _rgb(image)
    H, W = img.shape[:2] if img is not None else (1.0, 1.0)
    fig, axes = _figure(1, len(spatial_shapes), (panel, panel), title or
                        "anchors at their true size; hatched red: invalid positions (their anchors are discarded)",
                        None, wspace=0.1)
    start = 0
    for l, (ax, (h, w)) in enumerate(zip(axes[0], spatial_shapes)):
        n = h * w
        v = valid[start:start + n].reshape(h, w)
        ok = boxes[start:start + n][valid[start:start + n]]
        side = float(ok[0, 2]) if len(ok) else 0.05 * 2 ** l
        if img is not None:
            ax.imshow(img, alpha=0.45, extent=(0, W, H, 0))
        ax.add_patch(Rectangle((0, 0), W, H, fill=False, edgecolor="black", linewidth=1.0))
        overlay = np.zeros((h, w, 4))                                                  # [H_l, W_l, RGBA]
        overlay[~v] = (0.84, 0.15, 0.16, 0.75)                                         # invalid cells: red
        ax.imshow(overlay, extent=(0, W, H, 0), interpolation="nearest", zorder=2)
        for yy, xx in zip(*np.nonzero(~v)):
            ax.add_patch(Rectangle((xx * W / w, yy * H / h), W / w, H / h, fill=False, hatch="///",
                                   edgecolor="white", linewidth=0, zorder=2))
        if h * w <= 1024:                                                              # centres, where legible
            yy, xx = np.mgrid[0:h, 0:w]
            ax.scatter((xx.ravel() + 0.5) * W / w, (yy.ravel() + 0.5) * H / h, s=max(1.0, 60.0 / max(h, w)),
                       color="black", zorder=3)
        step = max(1, int(np.ceil(side * w)))                                          # positions per anchor side
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                if v[y, x]:
                    cx, cy = (x + 0.5) / w, (y + 0.5) / h
                    ax.add_patch(Rectangle(((cx - side / 2) * W, (cy - side / 2) * H), side * W, side * H,
                                           fill=False, edgecolor=_tab10(l), linewidth=1.5))
        unit = "px" if img is not None else "of the image"
        size = f"{side * W:.1f} {unit}" if img is not None else f"{side:.2f} {unit}"
        ax.set_title(f"level {l}: {h}x{w} positions, side 0.05*2^{l} = {size}", fontsize=8)
        ax.set_xlabel(f"{int((~v).sum())} of {n} positions invalid", fontsize=8)
        ax.set_xlim(-0.12 * W, 1.12 * W)                                               # anchors may pass the border
        ax.set_ylim(1.12 * H, -0.12 * H)
        _clean(ax)
        start += n
    return fig


def plot_score_vs_iou(scores, ious, groups=None, group_names=None, title=None, weights_note=None, panel=4.2):
    """Classification score against IoU with the best ground-truth box, one dot per selected query ([1] §4.3).

    scores [N] (sigmoid of the best class logit), ious [N] in [0, 1]; groups [N] ints (e.g. the level each query
    came from), named by group_names. The title gives N and the Pearson correlation of the two (computed here).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    ious = np.asarray(ious, dtype=np.float64).ravel()
    groups = np.zeros(len(scores), int) if groups is None else np.asarray(groups).ravel()
    r = float(np.corrcoef(scores, ious)[0, 1]) if len(scores) > 1 and scores.std() > 0 and ious.std() > 0 else 0.0
    fig, axes = _figure(1, 1, (panel, panel), title or f"{len(scores)} selected queries: score vs IoU "
                        f"(Pearson r = {r:.2f})", weights_note, left=0.7, bottom=0.6)
    ax = axes[0, 0]
    for g in np.unique(groups):
        sel = groups == g
        name = group_names[g] if group_names is not None else None
        ax.scatter(ious[sel], scores[sel], s=10, alpha=0.6, color=_tab10(int(g)), label=name, edgecolors="none")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--", label="score = IoU")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("IoU with the best ground-truth box", fontsize=9)
    ax.set_ylabel("score = sigmoid(max class logit)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    ax.tick_params(labelsize=8)
    return fig

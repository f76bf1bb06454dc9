"""Every figure of rtdetrv2_np.plotting renders (Agg, to a PNG) to the expected size and is not blank; the weights
note is stamped when asked for, worded for its figure; teaching_model is the shipped demo detector, weights_stamp
its file's SHA-256; coco_model picks cached real weights or falls back to random ones offline."""

import json
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")        # the tests choose the backend; the package never does

import numpy as np
import PIL.Image
import pytest

import rtdetrv2_np
from rtdetrv2_np import plotting
from rtdetrv2_np.postprocess import post_process_object_detection
from rtdetrv2_np.preprocess import load_image, preprocess
from rtdetrv2_np.random_weights import random_model

DATA = Path(__file__).parent / "data"
DPI = 50


@pytest.fixture(scope="module")
def run():
    """A random r18vd model traced on the cats image at 320x320 (small, to keep the test fast)."""
    model = random_model("r18vd", seed=0)
    image = load_image(DATA / "coco_000000039769.png")
    pixels, sizes = preprocess(image, size=(320, 320))
    stages = model.trace(pixels)
    shapes = [tuple(stages[f"encoder.output.{l}"].shape[2:]) for l in range(3)]
    return model, image, pixels, sizes, stages, shapes


def check_png(fig, path, min_colors=30):
    """Save fig with Agg, check the PNG's size against figsize * dpi, and that it is not blank."""
    fig.savefig(path, dpi=DPI)
    png = PIL.Image.open(path).convert("RGB")
    w_in, h_in = fig.get_size_inches()
    assert abs(png.width - w_in * DPI) <= 1 and abs(png.height - h_in * DPI) <= 1, (png.size, w_in, h_in)
    a = np.asarray(png)
    colors = len(np.unique(a.reshape(-1, 3), axis=0))
    print(f"{path.name}: {png.width}x{png.height}, pixel std {a.std():.1f}, {colors} colours")
    assert a.std() > 5, "blank figure"
    assert colors > min_colors, f"only {colors} distinct colours"


def has_note(fig, note=plotting.RANDOM_WEIGHTS_NOTE):
    """The red note is there: RANDOM_WEIGHTS_NOTE followed by what means nothing in this figure."""
    if note != plotting.RANDOM_WEIGHTS_NOTE:                        # a caller's own note, verbatim
        return any(t.get_text() == note for t in fig.texts)
    return any(t.get_text().startswith(note) and len(t.get_text()) > len(note) + 10 for t in fig.texts)


def test_plot_detections(run, tmp_path):
    model, image, _, sizes, stages, _ = run
    det = post_process_object_detection(stages["logits"], stages["pred_boxes"], sizes, threshold=0.0)[0]
    fig = plotting.plot_detections(image, det, model.id2label, max_detections=5, random_weights=True)
    check_png(fig, tmp_path / "detections.png")
    assert has_note(fig)
    assert not has_note(plotting.plot_detections(image, det, model.id2label, max_detections=5))


def test_plot_sampling_locations(run, tmp_path):
    _, _, pixels, _, stages, _ = run
    for layer in (0, 2):
        fig = plotting.plot_sampling_locations(pixels, stages, layer, query=3, weights_note="my note")
        check_png(fig, tmp_path / f"sampling_{layer}.png")
        assert has_note(fig, "my note")
    fig = plotting.plot_sampling_locations(pixels, stages, 1, query=0, heads=[0, 5], zoom=False, n_points=[4, 4, 4])
    check_png(fig, tmp_path / "sampling_heads.png")


def test_plot_bilinear_vs_discrete(tmp_path):
    value = (np.arange(20, dtype=np.float32).reshape(4, 5) % 7)
    fig = plotting.plot_bilinear_vs_discrete(value, [[0.33, 0.4], [0.97, 0.1], [0.5, 0.875]])
    check_png(fig, tmp_path / "bilinear_vs_discrete.png")
    # the printed values are the package's samplers'
    text = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "-> 2.34" in text and "= 4" in text


def test_plot_box_refinement(run, tmp_path):
    model, _, pixels, _, stages, _ = run
    fig = plotting.plot_box_refinement(pixels, stages, [0, 1, 2, 3], id2label=model.id2label, random_weights=True)
    check_png(fig, tmp_path / "refinement.png")
    assert has_note(fig)
    check_png(plotting.plot_box_refinement(pixels, stages, 7, zoom=False), tmp_path / "refinement_one.png")


def test_plot_query_selection(run, tmp_path):
    _, _, pixels, _, stages, shapes = run
    check_png(plotting.plot_query_selection(stages, shapes, random_weights=True), tmp_path / "qs.png")
    check_png(plotting.plot_query_selection(stages, shapes, image=pixels), tmp_path / "qs_image.png")


def test_plot_feature_maps(run, tmp_path):
    _, _, _, _, stages, _ = run
    fig = plotting.plot_feature_maps(stages, ["backbone.0", "backbone.1", "backbone.2"], random_weights=True)
    check_png(fig, tmp_path / "features.png")
    fig = plotting.plot_feature_maps(stages, ["encoder.input_proj.2", "encoder.aifi"], channels=[0, 1])
    check_png(fig, tmp_path / "features_channels.png")


def test_plotting_imports_no_pyplot():
    """Importing the module must not select a backend or import pyplot (users keep their own)."""
    code = "import sys, rtdetrv2_np.plotting; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_teaching_model_is_the_shipped_demo():
    """The walkthrough's model is load_model("demo"); weights_stamp hashes exactly the file it was loaded from."""
    import hashlib
    model, trained = plotting.teaching_model()
    assert trained and model.config.num_labels == 4 and model.input_size == (256, 256)
    digest = hashlib.sha256(Path(model.source).read_bytes()).hexdigest()
    stamp = plotting.weights_stamp(model)
    assert stamp == plotting.weights_stamp() and stamp.endswith("sha256 " + digest), stamp
    assert "rtdetrv2_np/demo/models/" in stamp and not stamp.startswith("weights: /"), stamp   # no machine path
    assert "no sha256" in plotting.weights_stamp(random_model("r18vd"))


def test_coco_model_falls_back_to_random_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")   # would fail loudly if anything tried the network
    model, is_real = plotting.coco_model()
    assert not is_real and model.source.startswith("random weights")
    import os
    assert "HF_HUB_OFFLINE" not in os.environ                  # restored


def test_coco_model_uses_cached_weights(tmp_path, monkeypatch):
    """A hub cache holding PekingU/rtdetr_v2_r18vd (here: random weights in its layout) gives is_real = True."""
    from safetensors.numpy import save_file
    ref = random_model("r18vd", seed=1)
    from rtdetrv2_np.random_weights import random_params
    from rtdetrv2_np.weights import expected_shapes
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = tmp_path / "hub" / "models--PekingU--rtdetr_v2_r18vd"
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    (snap / "config.json").write_text(json.dumps(ref.config.to_hf_dict()))
    save_file(random_params(expected_shapes(ref.config), 1, ref.config.n_points), str(snap / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    model, is_real = plotting.coco_model()
    assert is_real and model.source.endswith("model.safetensors")
    assert model.config.decoder_layers == 3


def test_coco_model_leaves_the_environment_alone(tmp_path, monkeypatch):
    """coco_model looks the hub id up in the cache only, without setting HF_HUB_OFFLINE in the process (issue:
    no library function mutates the environment); with an empty cache it falls back to random weights."""
    import os
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")          # nothing listens there: any request would fail
    before = dict(os.environ)
    model, real = plotting.coco_model()
    assert not real and "random weights" in model.source
    assert dict(os.environ) == before


def test_plot_detections_stacks_labels_of_many_duplicates(tmp_path):
    """100 detections of one box (an untrained or duplicate-prone model): the labels are stacked a bounded number of
    times and the figure renders (an unbounded stacking loop once hung `detect --save` here)."""
    image = np.zeros((64, 64, 3), np.uint8)
    det = {"scores": np.linspace(0.9, 0.1, 100), "labels": np.zeros(100, int),
           "boxes": np.tile([[10.0, 10.0, 30.0, 30.0]], (100, 1))}
    fig = plotting.plot_detections(image, det, {0: "disc"}, max_detections=100, panel=4.0)
    fig.savefig(tmp_path / "dup.png", dpi=DPI)
    ys = sorted({round(t.get_position()[1], 3) for t in fig.axes[0].texts})
    assert 2 <= len(ys) <= 6, ys                # stacked, and at most 5 moves from the box's edge

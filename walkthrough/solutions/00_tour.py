"""Answers to the exercises of walkthrough/00_tour: each function computes its answer, prints it and checks it
against the package. Run `python walkthrough/solutions/00_tour.py`; tests/test_walkthrough_solutions.py calls
every exercise_* function. The numbers depend on the shipped demo weights, so they are printed, never written here.
"""

import time

import numpy as np
import PIL.Image

from rtdetrv2_np import plotting
from rtdetrv2_np.demo.shapes import EVAL_SEED, make_scene
from rtdetrv2_np.detect import match_to_truth
from rtdetrv2_np.postprocess import post_process_object_detection
from rtdetrv2_np.preprocess import preprocess


def scene(index, size=None):
    """A held-out scene: (PIL image, ground-truth objects, pixel values, target sizes) at the model's input size."""
    model, _ = plotting.teaching_model()
    array, objects = make_scene(EVAL_SEED, index)
    image = PIL.Image.fromarray(array)
    pixel_values, sizes = preprocess(image, size=size or model.input_size)
    return image, objects, pixel_values, sizes


def exercise_1():
    """Detections above 0.5 on held-out scene 1, its objects, and how many of them are found at IoU >= 0.5."""
    model, _ = plotting.teaching_model()
    _, objects, pixel_values, sizes = scene(1)
    out = model(pixel_values)
    det = post_process_object_detection(out.logits, out.pred_boxes, target_sizes=sizes, threshold=0.5)[0]
    matched, extra = match_to_truth(objects, det)
    found = sum(d is not None for d, _ in matched)
    print(f"exercise 1: {len(det['scores'])} detections > 0.5, {len(objects)} objects, {found} found at IoU >= 0.5, "
          f"{len(extra)} detections match nothing")
    # check: every detection is either matched once or extra, and the threshold really is strict
    assert found + len(extra) == len(det["scores"])
    assert (np.asarray(det["scores"]) > 0.5).all()
    scores = 1 / (1 + np.exp(-out.logits.astype(np.float64)))
    assert len(det["scores"]) == min(int((scores > 0.5).sum()), model.config.num_queries)
    return found, len(objects)


def exercise_2():
    """A non-square input (192 x 256): which traced entries change shape. Nv changes, Nq does not."""
    model, _ = plotting.teaching_model()
    _, _, square, _ = scene(0)
    _, _, wide, _ = scene(0, size=(192, 256))
    a, b = model.trace(square), model.trace(wide)
    changed = sorted(k for k in a if a[k].shape != b[k].shape)
    same = sorted(k for k in a if a[k].shape == b[k].shape)
    print(f"exercise 2: {len(changed)} entries change shape, e.g. {changed[:4]}; {len(same)} keep it, e.g. "
          f"{[k for k in same if k.startswith('decoder.0')][:3]}")
    Nv = sum(b[f"encoder.output.{l}"].shape[2] * b[f"encoder.output.{l}"].shape[3] for l in range(3))
    assert b["memory"].shape[1] == Nv == (192 // 8) * (256 // 8) + (192 // 16) * (256 // 16) + (192 // 32) * (256 // 32)
    assert "memory" in changed and "pred_boxes" in same and "topk_index" in same
    return changed


def exercise_3():
    """Parameters per stage, and the time of the backbone against the decoder."""
    from rtdetrv2_np.model.backbone import backbone
    from rtdetrv2_np.model.decoder import decoder
    model, _ = plotting.teaching_model()
    _, _, pixel_values, _ = scene(0)
    m, cfg = model.params["model"], model.config
    count = lambda t: sum(count(v) for v in t.values()) if isinstance(t, dict) else \
        sum(count(v) for v in t if v is not None) if isinstance(t, list) else t.size       # noqa: E731
    n = {"backbone": count(m["backbone"]), "encoder": count(m["encoder"]), "decoder": count(m["decoder"])}
    stages = model.trace(pixel_values)
    feats = [stages[f"backbone.{l}"] for l in range(3)]
    t = time.perf_counter()
    backbone(pixel_values, m["backbone"]["model"], cfg)
    t_backbone = time.perf_counter() - t
    shapes = [stages[f"encoder.output.{l}"].shape[2:] for l in range(3)]          # [(H_l, W_l)]
    t = time.perf_counter()
    decoder(stages["target"], stages["reference_boxes"], stages["memory"], shapes, m["decoder"], cfg)
    t_decoder = time.perf_counter() - t
    print(f"exercise 3: parameters {n}; most in the {max(n, key=n.get)}; time backbone {t_backbone * 1e3:.0f} ms, "
          f"decoder {t_decoder * 1e3:.0f} ms (one run each, on this machine)")
    assert max(n, key=n.get) == "backbone" and len(feats) == 3
    return n


def exercise_4():
    """The same weights read with discrete sampling: how far the boxes move, and AP50 on 20 held-out scenes."""
    from rtdetrv2_np.evaluate import evaluate_shapes
    bilinear, _ = plotting.teaching_model()
    discrete, _ = plotting.teaching_model(method="discrete")
    _, _, pixel_values, _ = scene(3)
    a, b = bilinear(pixel_values), discrete(pixel_values)
    moved = float(np.abs(a.pred_boxes - b.pred_boxes).max())
    ap_b = evaluate_shapes(bilinear, count=20)["AP50"]
    ap_d = evaluate_shapes(discrete, count=20)["AP50"]
    print(f"exercise 4: max |pred_boxes bilinear - discrete| = {moved:.3f} (normalised units) on scene 3; "
          f"AP50 on 20 held-out scenes: bilinear {ap_b:.3f}, discrete {ap_d:.3f}")
    assert discrete.config.decoder_method == "discrete" and moved > 0
    return moved, ap_b, ap_d


if __name__ == "__main__":
    for f in (exercise_1, exercise_2, exercise_3, exercise_4):
        f()

"""Solutions to the exercises of walkthrough/04_query_selection_decoder.py.

Each exercise_N() computes its answer, checks it against the package (an assert), prints it and returns it.
Run them all: python walkthrough/solutions/04_query_selection_decoder.py (offline, a few seconds). The answers about
the trained demo model are measured, so they follow whatever weights are shipped.
"""

import numpy as np
import PIL.Image

import rtdetrv2_np
from rtdetrv2_np.demo.shapes import EVAL_SEED, make_scene
from rtdetrv2_np.detect import box_iou
from rtdetrv2_np.model.decoder import decoder
from rtdetrv2_np.model.deformable_attention import multiscale_deformable_attention
from rtdetrv2_np.model.nn import inverse_sigmoid, layer_norm, linear, mlp, multi_head_attention, relu, sigmoid
from rtdetrv2_np.model.query_selection import generate_anchors
from rtdetrv2_np.postprocess import center_to_corners

_MODEL = []


def _model():
    if not _MODEL:
        _MODEL.append(rtdetrv2_np.load_model("demo"))
    return _MODEL[0]


def _scene(index):
    model = _model()
    image, objects = make_scene(EVAL_SEED, index)
    from rtdetrv2_np.preprocess import preprocess
    pixel_values, _ = preprocess(PIL.Image.fromarray(image), size=model.input_size)
    return (pixel_values, np.array([o["box"] for o in objects], np.float64).reshape(-1, 4),
            np.array([o["area"] for o in objects], np.float64))


def _shapes(st):
    return [tuple(st[f"encoder.output.{l}"].shape[2:]) for l in range(3)]


def exercise_1():
    """Selected queries per level for scenes 0 and 1, beside each scene's count of small objects (area < 32^2)."""
    model = _model()
    result = {}
    for i in (0, 1):
        pv, gt, area = _scene(i)
        st = model.trace(pv)
        starts = np.cumsum([0] + [h * w for h, w in _shapes(st)])
        level = np.searchsorted(starts, st["topk_index"][0], side="right") - 1           # [Nq]
        counts = np.bincount(level, minlength=3)
        assert counts.sum() == model.config.num_queries
        result[i] = counts
        print(f"ex 1: scene {i}: {len(gt)} objects, {(area < 32 ** 2).sum()} small; queries per level {counts}")
    return result


def _found(boxes, gt, S):
    """How many ground-truth boxes some predicted box [Nq, 4] (cx, cy, w, h) overlaps with IoU >= 0.5."""
    iou = box_iou(center_to_corners(boxes) * S, gt)                                      # [Nq, G]
    return int((iou.max(0) >= 0.5).sum()) if iou.size else 0


def exercise_2(n_scenes=8):
    """Nq random valid positions (seed 0) instead of the top-Nq: the decoder starts from their features and boxes.
    Counts the ground-truth objects some final box finds (IoU >= 0.5) over scenes 0..n_scenes-1."""
    model = _model()
    cfg, m = model.config, model.params["model"]
    S = model.input_size[0]
    rng = np.random.default_rng(0)
    results = {"top-Nq": 0, "random": 0, "objects": 0}
    for i in range(n_scenes):
        pv, gt, _ = _scene(i)
        st = model.trace(pv)
        shapes = _shapes(st)
        anchors, valid = generate_anchors(shapes)
        memory = st["memory"]
        out = layer_norm(linear(memory * valid[None, :, None], m["enc_output"][0]), m["enc_output"][1])  # [B, Nv, C]
        box_logits = mlp(out, m["enc_bbox_head"]["layers"]) + anchors                    # [B, Nv, 4]
        for name, index in (("top-Nq", st["topk_index"][0]),
                            ("random", rng.choice(np.flatnonzero(valid), cfg.num_queries, replace=False))):
            target = out[:, index]                                                       # [B, Nq, C]
            ref = sigmoid(box_logits[:, index])                                          # [B, Nq, 4]
            _, boxes = decoder(target, ref, memory, shapes, m["decoder"], cfg)
            if name == "top-Nq":
                assert np.allclose(boxes, st["pred_boxes"], atol=1e-5)                   # the real path
            results[name] += _found(boxes[0], gt, S)
        results["objects"] += len(gt)
    print(f"ex 2: {results['objects']} objects in scenes 0-{n_scenes - 1}; found (IoU >= 0.5) from the top-Nq "
          f"selection: {results['top-Nq']}, from {cfg.num_queries} random valid positions: {results['random']}")
    return results


def _decode(model, st, self_attention=True):
    """The decoder by hand (notebook 04 §4), optionally without self-attention. -> logits, boxes of the last layer."""
    cfg, dec = model.config, model.params["model"]["decoder"]
    x, b = st["target"], st["reference_boxes"]
    for i in range(cfg.num_decoder_layers_used):
        p = dec["layers"][i]
        pos = mlp(b, dec["query_pos_head"]["layers"])
        if self_attention:
            x = layer_norm(x + multi_head_attention(x + pos, x, p["self_attn"], cfg.decoder_attention_heads),
                           p["self_attn_layer_norm"])
        attn, _, _ = multiscale_deformable_attention(p["encoder_attn"], x + pos, b, st["memory"], _shapes(st),
                                                     cfg.decoder_attention_heads, cfg.n_points,
                                                     cfg.decoder_offset_scale, cfg.method)
        x = layer_norm(x + attn, p["encoder_attn_layer_norm"])
        x = layer_norm(x + linear(relu(linear(x, p["fc1"])), p["fc2"]), p["final_layer_norm"])
        b = sigmoid(mlp(x, dec["bbox_embed"][i]["layers"]) + inverse_sigmoid(b))
        logits = linear(x, dec["class_embed"][i])
    return logits, b


def _duplicates(logits, boxes, threshold=0.3, iou_min=0.7):
    """Pairs of detections (best class per query, score > threshold) with the same label and IoU > iou_min."""
    score = sigmoid(logits.max(-1))
    label = logits.argmax(-1)
    keep = np.flatnonzero(score > threshold)
    iou = box_iou(center_to_corners(boxes[keep]), center_to_corners(boxes[keep]))
    same = label[keep][:, None] == label[keep][None, :]
    return int(np.triu((iou > iou_min) & same, k=1).sum())


def exercise_3(n_scenes=8):
    """Near-duplicate pairs among the final detections with and without the decoder's self-attention."""
    model = _model()
    counts = {"intact": 0, "no self-attention": 0}
    for i in range(n_scenes):
        pv, _, _ = _scene(i)
        st = model.trace(pv)
        logits, boxes = _decode(model, st)
        assert np.allclose(boxes, st["pred_boxes"], atol=1e-5) and np.allclose(logits, st["logits"], atol=1e-4)
        counts["intact"] += _duplicates(logits[0], boxes[0])
        logits, boxes = _decode(model, st, self_attention=False)
        counts["no self-attention"] += _duplicates(logits[0], boxes[0])
    print(f"ex 3: near-duplicate pairs (same label, IoU > 0.7, scores > 0.3) over {n_scenes} scenes: {counts}")
    return counts


def exercise_4():
    """Class probabilities sigmoid(logits) of the best query of scene 0, layer by layer."""
    model = _model()
    pv, _, _ = _scene(0)
    st = model.trace(pv)
    q = int(st["logits"][0].max(-1).argmax())
    n = model.config.num_decoder_layers_used
    probs = np.stack([sigmoid(st[f"decoder.{i}.logits"][0, q]) for i in range(n)])      # [layers, NC]
    assert np.allclose(probs[-1], sigmoid(st["logits"][0, q]))
    final = int(probs[-1].argmax())
    first = next(i for i in range(n) if all(probs[j].argmax() == final for j in range(i, n)))
    for i, p in enumerate(probs):
        print(f"ex 4: layer {i}: " + ", ".join(f"{model.id2label[c]} {v:.2f}" for c, v in enumerate(p)))
    print(f"ex 4: the final class ({model.id2label[final]}) is the top class from layer {first} on")
    return first


def exercise_5():
    """At 640 x 640: a position is invalid when a coordinate of its anchor is <= 0.01 or >= 0.99. Centres are
    (x + 0.5)/W_l: the outermost is 0.5/W_l = 0.00625 (W = 80), 0.0125 (40), 0.025 (20), so only level 0's outer
    ring (4*80 - 4 = 316 positions) falls out; sides 0.05, 0.1, 0.2 are all inside (0.01, 0.99)."""
    grid = [(80, 80), (40, 40), (20, 20)]
    _, valid = generate_anchors(grid)
    starts = np.cumsum([0] + [h * w for h, w in grid])
    counts = [int((~valid[a:b]).sum()) for a, b in zip(starts[:-1], starts[1:])]
    predicted = [4 * w - 4 if 0.5 / w <= 0.01 else 0 for _, w in grid]
    assert counts == predicted, (counts, predicted)
    print(f"ex 5: invalid positions per level at 640x640: {counts} (outermost centres at "
          f"{[0.5 / w for _, w in grid]})")
    return counts


if __name__ == "__main__":
    for f in (exercise_1, exercise_2, exercise_3, exercise_4, exercise_5):
        f()

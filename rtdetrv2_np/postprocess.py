"""Post-processing: model outputs (class logits, normalised cx, cy, w, h boxes) -> scored, labelled boxes in pixels.

Reproduces transformers 5.24 `RTDetrImageProcessor.post_process_object_detection(outputs, threshold, target_sizes,
use_focal_loss=True)` (`models/rt_detr/image_processing_pil_rt_detr.py`; the torchvision class has the same code),
which follows the original `RTDETRPostProcessor.forward` (lyuwenyu/RT-DETR `rtdetrv2_pytorch/src/zoo/rtdetr/
rtdetr_postprocessor.py`, use_focal_loss=True branch):
    1. boxes cx, cy, w, h -> x1, y1, x2, y2 (`image_transforms.center_to_corners_format`), times (w, h, w, h) of the
       image; the reference does not clip boxes to the image, nor do we.
    2. scores = sigmoid(logits) (focal-loss classification: one independent sigmoid per class; RT-DETR [1]
       Appendix Table A).
    3. top-k over all Nq * NC (query, class) pairs, k = Nq: flat index i -> label i % NC, query i // NC. One query can
       so appear several times, with different labels.
    4. keep score > threshold (strict: a score equal to the threshold is dropped).
The original differs only in taking orig_target_sizes as (w, h) and in scaling before, not after, the gather (the
same numbers either way).

Ties. `torch.topk` (CPU, sorted=True) returns equal values in an unspecified order that depends on the input size
and the selection algorithm; measured with torch 2.13 it is not index order. Here ties are broken by the flat
index, lowest first (stable sort): for equal scores, the lower query first, then the lower class. Which of several
tied pairs at the k-th place are kept can differ from torch in the same way. NaN scores rank above everything, as in
torch.topk; they never pass the threshold.

Scores: `sigmoid` from nn.py is 1 / (1 + exp(-x)) in float32; torch.sigmoid (Sleef exp on CPU) differs from it by
up to 4 ulp (measured on 1.1M values, torch 2.13); pairs whose scores are that close can therefore swap places.
Boxes are bit-exact (pure float32 elementwise arithmetic, as in torch).

Also the COCO mapping of the 80 contiguous labels to COCO category ids (original `src/data/dataset/
coco_dataset.py::mscoco_label2category`), used for COCO-format results.

[1] RT-DETR; references and the glossary of shape letters: the package docstring, rtdetrv2_np/__init__.py (B batch,
Nq queries, NC classes; n kept).
"""

import numpy as np

from .errors import RTDetrError
from .model.nn import sigmoid, topk

f32 = np.float32

# COCO category id (1..90, with 10 ids unused) of each contiguous label 0..79, in the order of the original's
# `mscoco_category2name` (lyuwenyu/RT-DETR src/data/dataset/coco_dataset.py); HF's label indices are the same.
COCO_LABEL_TO_CATEGORY = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65,
    67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
COCO_CATEGORY_TO_LABEL = {category: label for label, category in enumerate(COCO_LABEL_TO_CATEGORY)}

# Names of the 80 labels, for models whose config.json has no id2label (the random-weight stand-ins). A hub
# config.json's id2label always wins. These are the spellings of the hub configs (from huggingface/label-files
# coco-detection-mmdet-id2label.json, darknet-style: "sofa", "motorbike", "tvmonitor"; transformers' docs print
# "sofa" for label 57); the official COCO names differ in six places (couch, motorcycle, airplane, tv, ...).
COCO_NAMES = (
    "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "sofa",
    "pottedplant", "bed", "diningtable", "toilet", "tvmonitor", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


def center_to_corners(boxes):
    """(cx, cy, w, h) -> (x1, y1, x2, y2), like transformers' center_to_corners_format. [..., 4] -> [..., 4]."""
    cx, cy, w, h = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    half = f32(0.5)
    return np.stack([cx - half * w, cy - half * h, cx + half * w, cy + half * h], axis=-1)   # [..., 4]


def post_process_object_detection(logits, pred_boxes, target_sizes=None, threshold=0.5, top_k=None):
    """Turn model outputs into detections per image, like HF's post_process_object_detection(use_focal_loss=True).

    logits [B, Nq, NC] float32 class logits; pred_boxes [B, Nq, 4] float32 normalised (cx, cy, w, h).
    target_sizes: None (boxes stay normalised to [0, 1]) or (height, width) per image, [B, 2] or a list of pairs,
        e.g. the original_sizes from preprocess.
    threshold: keep scores strictly greater than this (0.5 as in HF). top_k: how many (query, class) pairs to rank,
        default Nq (HF and the original: 300 for the released models).
    Returns a list of B dicts {"scores" [n] float32, "labels" [n] int64, "boxes" [n, 4] float32 (x1, y1, x2, y2)},
    in order of decreasing score, ties by lower query then lower class.
    """
    logits = np.asarray(logits, dtype=f32)
    pred_boxes = np.asarray(pred_boxes, dtype=f32)
    if logits.ndim != 3 or pred_boxes.shape != logits.shape[:2] + (4,):
        raise RTDetrError(f"post_process_object_detection: expected logits [B, Nq, NC] and pred_boxes [B, Nq, 4], "
                          f"got {logits.shape} and {pred_boxes.shape}; pass the model's logits and pred_boxes")
    B, Nq, NC = logits.shape
    k = Nq if top_k is None else min(int(top_k), Nq * NC)

    boxes = center_to_corners(pred_boxes)                                        # [B, Nq, 4]
    if target_sizes is not None:
        sizes = np.asarray(target_sizes, dtype=f32).reshape(-1, 2)               # [B, 2] (h, w)
        if len(sizes) != B:
            raise RTDetrError(f"post_process_object_detection: {len(sizes)} target sizes for a batch of {B} "
                              f"images; give one (height, width) per image")
        h, w = sizes[:, 0], sizes[:, 1]
        scale = np.stack([w, h, w, h], axis=1)                                   # [B, 4]
        boxes = boxes * scale[:, None, :]                                        # [B, Nq, 4]

    scores = sigmoid(logits).reshape(B, Nq * NC)                                 # [B, Nq*NC]
    index = topk(scores, k)                       # [B, k] descending, ties by lower index, NaN first
    top_scores = np.take_along_axis(scores, index, axis=1)                       # [B, k]
    labels = index % NC                                                          # [B, k]
    query = index // NC                                                          # [B, k]
    top_boxes = np.take_along_axis(boxes, query[:, :, None], axis=1)             # [B, k, 4]

    results = []
    for b in range(B):
        keep = top_scores[b] > threshold                                         # [k]
        results.append({"scores": top_scores[b][keep],                           # [n]
                        "labels": labels[b][keep].astype(np.int64),              # [n]
                        "boxes": top_boxes[b][keep]})                            # [n, 4]
    return results


def to_coco_results(detections, image_ids, label_to_category=COCO_LABEL_TO_CATEGORY):
    """Detections (post_process_object_detection output, boxes in pixels) -> COCO results records.

    detections: list of B dicts; image_ids: B COCO image ids. Returns a list of
    {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}, the format pycocotools'
    COCO.loadRes reads; bbox = [x1, y1, x2 - x1, y2 - y1] as the original's `convert_to_xywh`
    (src/data/dataset/coco_eval.py), computed in float32, then as Python floats.
    """
    if len(detections) != len(image_ids):
        raise RTDetrError(f"to_coco_results: {len(detections)} detection sets but {len(image_ids)} image ids; "
                          f"give one image id per image")
    records = []
    for det, image_id in zip(detections, image_ids):
        x1, y1, x2, y2 = np.asarray(det["boxes"], dtype=f32).reshape(-1, 4).T  # [n] each
        xywh = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)                       # [n, 4]
        for label, box, score in zip(np.asarray(det["labels"]).tolist(), xywh.tolist(),
                                     np.asarray(det["scores"], dtype=f32).tolist()):
            if not 0 <= label < len(label_to_category):
                raise RTDetrError(f"to_coco_results: label {label} has no COCO category (0..."
                                  f"{len(label_to_category) - 1}); use a model trained on the 80 COCO classes")
            records.append({"image_id": int(image_id), "category_id": int(label_to_category[label]),
                            "bbox": box, "score": score})
    return records

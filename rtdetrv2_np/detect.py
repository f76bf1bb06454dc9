"""Detect objects in images from the command line: python -m rtdetrv2_np.detect IMAGE [IMAGE|DIR ...].

    python -m rtdetrv2_np.detect cats.jpg                          # PekingU/rtdetr_v2_r18vd from the hub cache
    python -m rtdetrv2_np.detect photos/ --save annotated/ --threshold 0.3
    python -m rtdetrv2_np.detect val2017/ --threshold 0 --coco-json results.json --model weights/r50vd.safetensors
    python -m rtdetrv2_np.detect cats.jpg --json | jq '.images[0].detections'

For each image: load_image (EXIF rotation, RGB) -> preprocess (exact resize to --size, /255) -> the model ->
post_process_object_detection (sigmoid scores, top-Nq over (query, class), score > --threshold, boxes scaled to
the image), the same steps as transformers' RTDetrImageProcessor + RTDetrV2ForObjectDetection +
post_process_object_detection. Output on stdout, per image, a header line and one line per detection, as in the
transformers documentation's example:

    tests/data/coco_000000039769.png (640x480): 6 detections
    cat: 0.97 [341.14, 25.11, 639.98, 372.89]

--json prints one JSON document on stdout instead (and nothing else there). Messages, the progress display and the
timing line go to stderr.

Exit status:
    0  every image was processed (detections or not);
    1  something failed: the model could not be loaded (nothing is processed then), or at least one image could not
       be read or written. Images are independent: a bad image is reported as "error: <file>: <what is wrong>" and
       skipped, the others are still processed and their outputs written; the status then says the run was not
       complete, like cp, gzip or rsync, which carry on past a bad file and exit non-zero, so that a script never
       mistakes a partial run for a complete one;
    2  usage error (unknown option, bad value, no image given), printed as "error: <what is wrong>".
Every file this command writes (--save images, --coco-json) is written to a temporary file and renamed, so an
interrupted or failed run never leaves a partial file.
"""

import argparse
import json
import math
import os
import re
import sys
import time
import warnings

import PIL.Image

from .errors import RTDetrError
from .fileio import atomic_write

DEFAULT_MODEL = "PekingU/rtdetr_v2_r18vd"
PROG = "python -m rtdetrv2_np.detect"


# ---------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):                      # one line, exit status 2 (argparse's convention for usage)
        print(f"error: {message}; see {PROG} --help", file=sys.stderr)
        sys.exit(2)


def _threshold(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


_threshold.__name__ = "threshold"                   # argparse's message: "invalid threshold value: 'nan'"


def parse_args(argv):
    p = _Parser(prog=PROG, description="Detect objects in images with RT-DETRv2 (NumPy, no PyTorch).",
                epilog="Exit status: 0 all images processed; 1 the model or at least one image failed (the others "
                       "are still processed); 2 usage error.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders (their image files, not "
                                                              "recursive, in name order)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id, hub-layout folder (config.json + model.safetensors), converted .safetensors, or "
                        f"official .pth (default: {DEFAULT_MODEL})")
    p.add_argument("--revision", default="main", help="branch, tag or commit of a hub id (default: main)")
    p.add_argument("--threshold", type=_threshold, default=0.5,
                   help="keep detections with score > THRESHOLD (default: 0.5, as transformers)")
    p.add_argument("--method", choices=["bilinear", "discrete"],
                   help="deformable-attention sampling (default: the checkpoint's; discrete for *_dsp models)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=[640, 640],
                   help="model input height and width, multiples of 32 (default: 640 640, the training size)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of text")
    p.add_argument("--save", metavar="DIR", help="write each image with its detections drawn to DIR/<name>.png "
                                                 "(DIR is created if needed)")
    p.add_argument("--coco-json", metavar="FILE",
                   help="write the detections in COCO results format (image_id: the number ending each file name, "
                        "as in 000000039769.jpg, if all have distinct ones; else the images' positions 1, 2, ...); "
                        "use --threshold 0 for COCO evaluation")
    args = p.parse_args(argv)
    H, W = args.size
    if H <= 0 or W <= 0 or H % 32 or W % 32:
        p.error(f"--size {H} {W}: height and width must be positive multiples of 32 (the coarsest feature stride)")
    return args


# ---------------------------------------------------------------------------------------------------------------
# Inputs and outputs
# ---------------------------------------------------------------------------------------------------------------

def image_extensions():
    """Lower-case file extensions Pillow can open (".jpg", ".png", ...)."""
    PIL.Image.init()
    return {ext.lower() for ext, fmt in PIL.Image.registered_extensions().items() if fmt in PIL.Image.OPEN}


def expand_inputs(paths):
    """(image paths in order, [(path, error message)], whether a folder was given).

    A folder contributes its non-hidden files with an image extension, sorted by name (not recursive); a folder
    without any is an error. A file is taken whatever its extension (decoding tells if it is an image); a path that
    does not exist is an error.
    """
    exts = image_extensions()
    images, errors, folder = [], [], False
    for path in paths:
        if os.path.isdir(path):
            folder = True
            names = sorted(n for n in os.listdir(path) if not n.startswith(".")
                           and os.path.splitext(n)[1].lower() in exts and os.path.isfile(os.path.join(path, n)))
            if not names:
                errors.append((path, f"{path}: no image files in this folder (files named .jpg, .png or another "
                                     f"extension Pillow opens; sub-folders are not searched)"))
            images.extend(os.path.join(path, n) for n in names)
        elif os.path.exists(path):
            images.append(path)
        else:
            errors.append((path, f"{path}: no such file or folder; check the path"))
    return images, errors, folder


def coco_image_ids(paths):
    """(COCO image ids, True) from the number that ends each file name (000000039769.jpg and
    COCO_val2014_000000039769.jpg -> 39769) if every name has one and they are distinct; else (1, 2, ..., False)."""
    numbers = [re.search(r"(\d+)$", os.path.splitext(os.path.basename(p))[0]) for p in paths]
    if numbers and all(numbers) and len({int(m.group(1)) for m in numbers}) == len(numbers):
        return [int(m.group(1)) for m in numbers], True
    return list(range(1, len(paths) + 1)), False


def save_annotated(image, detections, id2label, path, threshold):
    """Draw boxes, names and scores on the image (plotting.plot_detections) and write it as PNG, atomically."""
    from .plotting import plot_detections
    panel = min(max(image.width / 100, 4.0), 20.0)          # inches at 100 dpi: about the image's own resolution
    fig = plot_detections(image, detections, id2label=id2label, threshold=threshold, max_detections=100,
                          title=f"{os.path.basename(path)}: {len(detections['scores'])} detections", panel=panel)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def _fmt(x):
    s = f"{x:.2f}"
    return "0.00" if s == "-0.00" else s


def text_lines(result):
    """The human-readable lines of one image: header, then `label: score [x1, y1, x2, y2]` per detection."""
    dets = result["detections"]
    lines = [f"{result['file']} ({result['width']}x{result['height']}): {len(dets)} detection"
             f"{'' if len(dets) == 1 else 's'}"]
    for d in dets:
        lines.append(f"{d['label']}: {_fmt(d['score'])} [{', '.join(_fmt(v) for v in d['box'])}]")
    return lines


class _Progress:
    """'[i/N] name' lines on stderr, and a download counter when stderr is a terminal."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()

    def image(self, i, n, path):
        if self.enabled:
            print(f"[{i}/{n}] {os.path.basename(path)}", file=sys.stderr, flush=True)

    def download(self, done, total):
        if self.tty:
            of = f" / {total / 1e6:.1f}" if total else ""
            end = "\n" if total and done >= total else ""
            print(f"\rdownloading model.safetensors: {done / 1e6:.1f}{of} MB", end=end, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------

def run(args):
    from .loading import load_model
    from .postprocess import post_process_object_detection, to_coco_results
    from .preprocess import load_image, preprocess

    t0 = time.perf_counter()
    images, failures, folder = expand_inputs(args.images)
    for _, message in failures:
        print(f"error: {message}", file=sys.stderr)
    if not images:
        return 1
    if args.save:                                           # check the outputs before the (slow) model load
        if os.path.exists(args.save) and not os.path.isdir(args.save):
            print(f"error: {args.save}: exists and is not a folder; --save needs a folder", file=sys.stderr)
            return 1
    if args.coco_json and os.path.isdir(args.coco_json):
        print(f"error: {args.coco_json}: is a folder; --coco-json needs a file name", file=sys.stderr)
        return 1

    progress = _Progress(enabled=len(images) > 1 and (sys.stderr.isatty() or folder))
    try:
        model = load_model(args.model, method=args.method, revision=args.revision, progress=progress.download)
    except RTDetrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.coco_json and model.config.num_labels != 80:
        print(f"error: {args.model}: has {model.config.num_labels} classes, --coco-json needs a model of the 80 COCO "
              f"classes", file=sys.stderr)
        return 1
    id2label = model.id2label
    t_load = time.perf_counter() - t0

    results, coco_dets, saved_names = [], [], set()
    ids, numeric = coco_image_ids(images)
    coco_ids = []
    if args.save:
        os.makedirs(args.save, exist_ok=True)
    for i, path in enumerate(images, 1):
        progress.image(i, len(images), path)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                image = load_image(path)
            for w in caught:
                print(f"warning: {path}: {w.message}", file=sys.stderr)
            pixel_values, sizes = preprocess([image], tuple(args.size))          # [1, 3, H, W]
            out = model(pixel_values)
            det = post_process_object_detection(out.logits, out.pred_boxes, target_sizes=sizes,
                                                threshold=args.threshold)[0]
            if args.save:
                stem = os.path.splitext(os.path.basename(path))[0]
                name, k = stem + ".png", 1
                while name in saved_names:                   # two inputs with one name: cats.png, cats-2.png
                    k += 1
                    name = f"{stem}-{k}.png"
                target = os.path.join(args.save, name)
                if os.path.exists(target) and os.path.samefile(target, path):
                    raise RTDetrError(f"{target}: --save would overwrite the input image; choose another folder")
                save_annotated(image, det, id2label, target, args.threshold)
                saved_names.add(name)
        except RTDetrError as e:
            print(f"error: {e}", file=sys.stderr)
            failures.append((path, str(e)))
            continue
        except OSError as e:                                # writing the annotated image
            message = f"{path}: cannot write the annotated image ({e.strerror or e})"
            print(f"error: {message}", file=sys.stderr)
            failures.append((path, message))
            continue
        results.append({
            "file": path, "width": image.width, "height": image.height,
            "detections": [{"label": id2label.get(int(l), str(int(l))), "label_id": int(l), "score": float(s),
                            "box": [float(v) for v in b]}
                           for s, l, b in zip(det["scores"], det["labels"], det["boxes"])]})
        coco_dets.append(det)
        coco_ids.append(ids[i - 1])
        if not args.json:                                   # text: as each image is done; JSON: one document
            print(("\n" if len(results) > 1 else "") + "\n".join(text_lines(results[-1])), flush=True)

    if args.coco_json and results:
        if not numeric:
            print("note: --coco-json: image ids are the images' positions 1, 2, ... (not every file name ends "
                  "in a distinct number)", file=sys.stderr)
        records = to_coco_results(coco_dets, coco_ids)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.coco_json)), exist_ok=True)
            atomic_write(args.coco_json, json.dumps(records).encode())
        except OSError as e:
            print(f"error: {args.coco_json}: cannot write ({e.strerror or e})", file=sys.stderr)
            failures.append((args.coco_json, str(e)))

    if args.json:
        doc = {"model": args.model, "method": model.method, "threshold": args.threshold, "size": list(args.size),
               "images": results, "errors": [{"file": f, "error": m} for f, m in failures]}
        print(json.dumps(doc))

    n = len(results)
    if n:                                                   # after a lone error, the error stays the only line
        total = time.perf_counter() - t0
        failed = f", {len(failures)} failed" if failures else ""
        print(f"{n} image{'' if n == 1 else 's'} in {total:.1f} s (load {t_load:.1f} s, "
              f"{(total - t_load) / n:.2f} s/image){failed}", file=sys.stderr)
    return 1 if failures else 0


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:                                 # stdout closed early, e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error when Python flushes
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Detect objects in images from the command line: python -m rtdetrv2_np.detect IMAGE [IMAGE|DIR ...].

    python -m rtdetrv2_np.detect --demo                            # offline: the shipped demo model on a scene
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

--demo needs no image and no network: it draws a scene from the package's shape generator (demo/shapes.py,
--seed), runs a shipped demo model on it (--model demo, the default there, or demo-discrete), prints each
ground-truth object beside the detection that matches it (COCO's rule at IoU 0.5: detections in score order take
the best unmatched object of their class; misses and extra detections too), and saves the annotated scene as a PNG (into the current folder unless --save names a file or folder).

The model's input size is its own (preprocessor_config.json in its folder, as the hub's image processor reads
it: 256x256 for the demo models) or 640x640 (the published COCO models' training size); --size overrides it.

Exit status:
    0  every image was processed (detections or not);
    1  something failed: the model could not be loaded (nothing is processed then), or at least one image could not
       be read or written or gave outputs that are not finite (NaN, inf). Images are independent: a bad image is
       reported as "error: <file>: <what is wrong>" and skipped, the others are still processed and their outputs
       written; the status then says the run was not complete, like cp, gzip or rsync, which carry on past a bad
       file and exit non-zero, so that a script never mistakes a partial run for a complete one;
    2  usage error (unknown option, bad value, no image given), printed as "error: <what is wrong>".
  130  interrupted (Ctrl-C, SIGINT): nothing more is written, no --coco-json file, no JSON document.
Every file this command writes (--save images, --coco-json) is written to a temporary file and renamed, so an
interrupted or failed run never leaves a partial file; a special file (/dev/stdout, /dev/null, a FIFO) is written
to directly instead (fileio.atomic_write). An output that is the same file as an input (an image or the model's
files) is refused before the model is loaded, and the inputs are listed before anything is written, so a file this
run writes is never read by it (`detect DIR --save DIR` is safe).

Text output cannot be forged by file names or labels: control characters (newlines, ANSI escapes), Unicode line
separators and direction overrides, and bytes of a file name that are not UTF-8 are printed as backslash escapes
(printable()); whatever stdout's encoding cannot show is backslash-escaped too.
"""

import argparse
import errno
import json
import math
import os
import re
import signal
import sys
import time
import warnings

import numpy as np
import PIL.Image

from .errors import RTDetrError
from .fileio import atomic_write, input_ids, os_error_message, same_as_input
from .preprocess import DEFAULT_SIZE

DEFAULT_MODEL = "PekingU/rtdetr_v2_r18vd"
DEMO_SEED = 1               # --demo's default scene stream: neither the training stream (0) nor the evaluation set
PROG = "python -m rtdetrv2_np.detect"


# ---------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------

class OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors as one line `error: <what>; see <prog> --help`, exit status 2 (argparse's
    convention for usage); shared by the package's commands."""

    def error(self, message):
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def _threshold(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


_threshold.__name__ = "threshold"                   # argparse's message: "invalid threshold value: 'nan'"


def parse_args(argv):
    p = OneLineParser(prog=PROG, description="Detect objects in images with RT-DETRv2 (NumPy, no PyTorch).",
                epilog="Exit status: 0 all images processed; 1 the model or at least one image failed (the others "
                       "are still processed); 2 usage error.")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files, or folders (their image files, not "
                                                              "recursive, in name order)")
    p.add_argument("--demo", action="store_true",
                   help="no image, no network: detect in a generated scene with the shipped demo model and compare "
                        "with its ground truth")
    p.add_argument("--seed", type=int, default=DEMO_SEED,
                   help=f"with --demo: the scene stream (default {DEMO_SEED}; the demo model was trained on 0)")
    p.add_argument("--model", default=None,
                   help=f"hub id, hub-layout folder (config.json + model.safetensors), converted .safetensors, "
                        f"official .pth, or a shipped demo model: demo, demo-discrete (default: {DEFAULT_MODEL}; "
                        f"with --demo: demo)")
    p.add_argument("--revision", default="main", help="branch, tag or commit of a hub id (default: main)")
    p.add_argument("--threshold", type=_threshold, default=0.5,
                   help="keep detections with score > THRESHOLD (default: 0.5, as transformers)")
    p.add_argument("--method", choices=["bilinear", "discrete"],
                   help="deformable-attention sampling (default: the checkpoint's; discrete for *_dsp models)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="model input height and width, multiples of 32 (default: the model's own, from its "
                        "preprocessor_config.json, else 640 640, the published models' training size)")
    p.add_argument("--reference", action="store_true",
                   help="run the reference path (rtdetrv2_np.model, what the notebooks teach) instead of the fast "
                        "float32 kernels (rtdetrv2_np.fast; the same detections up to float32 rounding)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of text")
    p.add_argument("--save", metavar="DIR", help="write each image with its detections drawn to DIR/<name>.png "
                                                 "(DIR is created if needed); with --demo a .png file or a folder")
    p.add_argument("--coco-json", metavar="FILE",
                   help="write the detections in COCO results format (image_id: the number ending each file name, "
                        "as in 000000039769.jpg, if all have distinct ones; else the images' positions 1, 2, ...); "
                        "use --threshold 0 for COCO evaluation")
    args = p.parse_args(argv)
    if args.size is not None:
        H, W = args.size
        if H <= 0 or W <= 0 or H % 32 or W % 32:
            p.error(f"--size {H} {W}: height and width must be positive multiples of 32 (the coarsest feature "
                    "stride)")
    if args.demo:
        if args.images:
            p.error("--demo draws its own scene: give no image with it")
        if args.coco_json:
            p.error("--coco-json needs images and a model of the 80 COCO classes, not --demo")
        args.model = args.model or "demo"
    elif not args.images:
        p.error("give at least one image or folder (or --demo to try the shipped demo model offline)")
    args.model = args.model or DEFAULT_MODEL
    return args


# ---------------------------------------------------------------------------------------------------------------
# Inputs and outputs
# ---------------------------------------------------------------------------------------------------------------

def image_extensions():
    """Lower-case file extensions of the formats load_image opens (".jpg", ".png", ...)."""
    from .preprocess import IMAGE_FORMATS
    PIL.Image.init()
    return {ext.lower() for ext, fmt in PIL.Image.registered_extensions().items() if fmt in IMAGE_FORMATS}


def expand_inputs(paths):
    """(image paths in order, [(path, error message)], whether a folder was given).

    A folder contributes its non-hidden regular files with an image extension, sorted by name (not recursive); a
    folder without any is an error. A file is taken whatever its extension (decoding tells if it is an image); a
    path that does not exist (or a symbolic link loop, a dangling link) is an error that says which.
    """
    exts = image_extensions()
    images, errors, folder = [], [], False
    for path in paths:
        if os.path.isdir(path):
            folder = True
            try:
                entries = os.listdir(path)
            except OSError as e:
                errors.append((path, f"{path}: cannot list the folder ({e.strerror or e}); check its permissions"))
                continue
            names = sorted(n for n in entries if not n.startswith(".")
                           and os.path.splitext(n)[1].lower() in exts and os.path.isfile(os.path.join(path, n)))
            if not names:
                errors.append((path, f"{path}: no image files in this folder (files named .jpg, .png or another "
                                     f"extension of {', '.join(sorted(exts))[:60]}...; sub-folders are not "
                                     f"searched)"))
            images.extend(os.path.join(path, n) for n in names)
        else:
            try:
                os.stat(path)
                images.append(path)
            except OSError as e:
                if e.errno == errno.ENOENT and not os.path.islink(path):
                    errors.append((path, f"{path}: no such file or folder; check the path"))
                else:
                    errors.append((path, os_error_message(path, e, "an image file")))
            except ValueError:                              # an embedded NUL character
                errors.append((path, f"{path}: not a valid file name"))
    return images, errors, folder


def save_targets(images, folder):
    """DIR/<stem>.png for each image, in order; two inputs with one stem get cats.png, cats-2.png (compared
    ignoring case, as on macOS and Windows file systems)."""
    taken, targets = set(), []
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        name, k = stem + ".png", 1
        while name.casefold() in taken:
            k += 1
            name = f"{stem}-{k}.png"
        taken.add(name.casefold())
        targets.append(os.path.join(folder, name))
    return targets


def model_files(model):
    """The local files a --model argument reads (itself, or a folder's files, and the config.json and
    preprocessor_config.json beside a file); [] for a hub id."""
    if os.path.isdir(model):
        return [model]
    if os.path.exists(model):
        folder = os.path.dirname(model) or "."
        return [model, os.path.join(folder, "config.json"), os.path.join(folder, "preprocessor_config.json")]
    return []


def check_outputs(args, images, targets):
    """None, or the error message if an output would overwrite an input (or --coco-json one of the --save files)."""
    ids = input_ids(list(images) + model_files(args.model))
    for target in targets:
        source = same_as_input(target, ids)
        if source is not None:
            return f"{target}: --save would overwrite the input {source}; choose another folder"
    if args.coco_json:
        source = same_as_input(args.coco_json, ids)
        if source is not None:
            return f"{args.coco_json}: --coco-json would overwrite the input {source}; choose another file name"
        coco = os.path.realpath(args.coco_json)
        if any(os.path.realpath(t) == coco for t in targets):
            return f"{args.coco_json}: --coco-json names one of the --save images; choose another file name"
    return None


def coco_image_ids(paths):
    """(COCO image ids, True) from the number that ends each file name (000000039769.jpg and
    COCO_val2014_000000039769.jpg -> 39769) if every name has one and they are distinct; else (1, 2, ..., False)."""
    numbers = [re.search(r"(\d+)$", os.path.splitext(os.path.basename(p))[0]) for p in paths]
    if numbers and all(numbers) and len({int(m.group(1)) for m in numbers}) == len(numbers):
        return [int(m.group(1)) for m in numbers], True
    return list(range(1, len(paths) + 1)), False


def save_annotated(image, detections, id2label, path, threshold, truth=None):
    """Draw boxes, names and scores on the image (plotting.plot_detections) and write it as PNG, atomically.
    truth: ground-truth objects ({"box": [x0, y0, x1, y1], ...}, as demo.shapes makes them), drawn dashed."""
    from .plotting import plot_detections
    panel = min(max(image.width / 100, 4.0), 20.0)          # inches at 100 dpi: about the image's own resolution
    # matplotlib reads $...$ in a text as mathematics (and fails on an unbalanced one): labels are plain text
    names = {k: str(v).replace("$", r"\$") for k, v in id2label.items()}
    title = f"{os.path.basename(path)}: {len(detections['scores'])} detections".replace("$", r"\$")
    if truth is not None:
        title += f"\n(white dashed: the {len(truth)} ground-truth boxes)"
    fig = plot_detections(image, detections, id2label=names, threshold=threshold, max_detections=100, title=title,
                          panel=panel, ground_truth=truth)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


# C0 and C1 controls (newline, carriage return, ESC of ANSI sequences, ...), Unicode line and paragraph separators,
# bidirectional overrides and isolates (which reorder what a terminal shows), and lone surrogates (bytes of a file
# name that are not UTF-8, as os.fsdecode keeps them).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match):
    c = match.group()
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:                               # os.fsdecode's surrogateescape of byte o - 0xDC00
        return f"\\x{o - 0xDC00:02x}"
    return _NAMED.get(c) or (f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")


def printable(text):
    """`text` with everything that could end a line, move the cursor or reorder the display backslash-escaped, so
    that a file name or a label can never forge another output line."""
    return _UNPRINTABLE.sub(_escape, str(text))


def _err(message):
    """One line on stderr: "error: <message>" (escaped)."""
    print(f"error: {printable(message)}", file=sys.stderr, flush=True)


def _fmt(x):
    s = f"{x:.2f}"
    return "0.00" if s == "-0.00" else s


def text_lines(result):
    """The human-readable lines of one image: header, then `label: score [x1, y1, x2, y2]` per detection."""
    dets = result["detections"]
    lines = [f"{printable(result['file'])} ({result['width']}x{result['height']}): {len(dets)} detection"
             f"{'' if len(dets) == 1 else 's'}"]
    for d in dets:
        lines.append(f"{printable(d['label'])}: {_fmt(d['score'])} [{', '.join(_fmt(v) for v in d['box'])}]")
    return lines


class _Progress:
    """'[i/N] name' lines on stderr, and a download counter when stderr is a terminal."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()

    def image(self, i, n, path):
        if self.enabled:
            print(f"[{i}/{n}] {printable(os.path.basename(path))}", file=sys.stderr, flush=True)

    def download(self, done, total):
        if self.tty:
            of = f" / {total / 1e6:.1f}" if total else ""
            end = "\n" if total and done >= total else ""
            print(f"\rdownloading model.safetensors: {done / 1e6:.1f}{of} MB", end=end, file=sys.stderr, flush=True)


def _unexpected(what, error):
    """The one line for an exception this package did not foresee (a bug, or memory exhausted)."""
    if isinstance(error, MemoryError):
        return f"{what}: out of memory; use a smaller --size or a smaller model, or free memory"
    detail = str(error).splitlines()[0][:200] if str(error) else ""
    return (f"{what}: unexpected {type(error).__name__}{': ' + detail if detail else ''} (a bug in rtdetrv2_np; "
            f"please report it with the command line)")


# ---------------------------------------------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------------------------------------------

_interrupts = []                                            # SIGINTs received while main() runs


def _on_sigint(signum, frame):
    """Record the interrupt (so that it counts even if some library swallows the exception), then raise it."""
    _interrupts.append(signum)
    raise KeyboardInterrupt


def _check_interrupted():
    if _interrupts:
        raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------

def run(args):
    """Check the inputs and outputs, load the model, detect in every image, write the outputs; the exit status."""
    from .loading import load_model
    from .postprocess import to_coco_results

    if args.demo:
        return run_demo(args)
    t0 = time.perf_counter()
    images, failures, folder = expand_inputs(args.images)
    for _, message in failures:
        _err(message)
    if not images:
        return 1
    if args.save:                                           # check the outputs before the (slow) model load
        if os.path.exists(args.save) and not os.path.isdir(args.save):
            _err(f"{args.save}: exists and is not a folder; --save needs a folder")
            return 1
    if args.coco_json and os.path.isdir(args.coco_json):
        _err(f"{args.coco_json}: is a folder; --coco-json needs a file name")
        return 1
    targets = save_targets(images, args.save) if args.save else [None] * len(images)
    clash = check_outputs(args, images, targets if args.save else [])
    if clash:
        _err(clash)
        return 1

    progress = _Progress(enabled=len(images) > 1 and (sys.stderr.isatty() or folder))
    try:
        model = load_model(args.model, method=args.method, revision=args.revision, progress=progress.download,
                           fast=not args.reference)
    except RTDetrError as e:
        _err(str(e))
        return 1
    except Exception as e:                                  # noqa: BLE001 (one line, never a traceback)
        _err(_unexpected(args.model, e))
        return 1
    if args.size is None:
        args.size = list(model.input_size or DEFAULT_SIZE)
    if args.coco_json and model.config.num_labels != 80:
        _err(f"{args.model}: has {model.config.num_labels} classes, --coco-json needs a model of the 80 COCO classes")
        return 1
    t_load = time.perf_counter() - t0
    if args.save:
        try:
            os.makedirs(args.save, exist_ok=True)
        except OSError as e:
            _err(f"{args.save}: cannot create the folder ({e.strerror or e})")
            return 1

    results, detections, coco_ids = detect_images(model, images, targets, args, progress, failures)

    _check_interrupted()                                    # nothing more is written after a Ctrl-C
    if args.coco_json and results:
        ids, numeric = coco_image_ids(images)
        if not numeric:
            print("note: --coco-json: image ids are the images' positions 1, 2, ... (not every file name ends "
                  "in a distinct number)", file=sys.stderr)
        records = to_coco_results(detections, [ids[i] for i in coco_ids])
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.coco_json)), exist_ok=True)
            atomic_write(args.coco_json, json.dumps(records, allow_nan=False).encode())
        except OSError as e:
            _err(f"{args.coco_json}: cannot write ({e.strerror or e})")
            failures.append((args.coco_json, str(e)))

    if args.json:
        doc = {"model": args.model, "method": model.method, "threshold": args.threshold, "size": list(args.size),
               "images": results, "errors": [{"file": f, "error": m} for f, m in failures]}
        print(json.dumps(doc, allow_nan=False))

    n = len(results)
    if n:                                                   # after a lone error, the error stays the only line
        total = time.perf_counter() - t0
        failed = f", {len(failures)} failed" if failures else ""
        print(f"{n} image{'' if n == 1 else 's'} in {total:.1f} s (load {t_load:.1f} s, "
              f"{(total - t_load) / n:.2f} s/image){failed}", file=sys.stderr)
    return 1 if failures else 0


def detect_images(model, images, targets, args, progress, failures):
    """The per-image loop: load, preprocess, the model, post-process, --save, and the text output of each image.

    An image that fails is reported (one error line) and added to `failures`; the others go on. Returns (results
    for the JSON document, detections for --coco-json, the index in `images` of each result).
    """
    from .postprocess import post_process_object_detection
    from .preprocess import load_image, preprocess

    id2label = model.id2label
    results, detections, indices = [], [], []
    for i, (path, target) in enumerate(zip(images, targets)):
        _check_interrupted()
        progress.image(i + 1, len(images), path)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                image = load_image(path)
            for w in caught:
                print(f"warning: {printable(path)}: {printable(w.message)}", file=sys.stderr)
            pixel_values, sizes = preprocess([image], tuple(args.size))          # [1, 3, H, W]
            out = model(pixel_values)
            if not (np.isfinite(out.logits).all() and np.isfinite(out.pred_boxes).all()):
                raise RTDetrError(f"{path}: the model's outputs are not finite (NaN or inf), so there are no "
                                  f"detections to report; the weights {args.model} are damaged or unusable")
            det = post_process_object_detection(out.logits, out.pred_boxes, target_sizes=sizes,
                                                threshold=args.threshold)[0]
            if target is not None:
                save_annotated(image, det, id2label, target, args.threshold)
        except RTDetrError as e:
            message = str(e)
        except OSError as e:                                # writing the annotated image
            message = f"{target or path}: cannot write the annotated image ({e.strerror or e})"
        except Exception as e:                              # noqa: BLE001 (one line, never a traceback)
            message = _unexpected(path, e)
        else:
            message = None
        if message is not None:
            _err(message)
            failures.append((path, message))
            continue
        results.append({
            "file": path, "width": image.width, "height": image.height,
            "detections": [{"label": str(id2label.get(int(l), str(int(l)))), "label_id": int(l), "score": float(s),
                            "box": [float(v) for v in b]}
                           for s, l, b in zip(det["scores"], det["labels"], det["boxes"])]})
        detections.append(det)
        indices.append(i)
        if not args.json:                                   # text: as each image is done; JSON: one document
            print(("\n" if len(results) > 1 else "") + "\n".join(text_lines(results[-1])), flush=True)
    return results, detections, indices


# ---------------------------------------------------------------------------------------------------------------
# --demo: a generated scene, the shipped model, the ground truth
# ---------------------------------------------------------------------------------------------------------------

def box_iou(a, b):
    """IoU of boxes a [N, 4] and b [M, 4] (x0, y0, x1, y1) -> [N, M]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])                          # [N, M, 2]
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])                          # [N, M, 2]
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)                      # [N, M]
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=-1)                  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def match_to_truth(truth, det):
    """COCO's matching at IoU 0.5: detections in score order, each takes the unmatched ground-truth object of its
    class with the highest IoU (>= 0.5). Returns ([(detection index or None, IoU) per object], unmatched detections).
    """
    gt_boxes = np.array([o["box"] for o in truth], np.float64).reshape(-1, 4)
    gt_labels = np.array([o["label"] for o in truth])
    iou = box_iou(np.asarray(det["boxes"], np.float64).reshape(-1, 4), gt_boxes)        # [D, G]
    iou = np.where(np.asarray(det["labels"])[:, None] == gt_labels[None, :], iou, 0.0)
    match, extra = [(None, 0.0)] * len(truth), []
    for d in np.argsort(-np.asarray(det["scores"]), kind="stable"):
        free = [g for g in range(len(truth)) if match[g][0] is None]
        g = max(free, key=lambda g: iou[d, g], default=None)
        if g is not None and iou[d, g] >= 0.5:
            match[g] = (int(d), float(iou[d, g]))
        else:
            extra.append(int(d))
    return match, sorted(extra)


def run_demo(args):
    """--demo: the shipped model on scene 0 of stream --seed; detections beside the ground truth; the saved PNG."""
    from .demo.shapes import make_scene
    from .loading import load_model
    from .postprocess import post_process_object_detection
    from .preprocess import preprocess

    t0 = time.perf_counter()
    name = f"rtdetrv2_demo_seed{args.seed}.png"
    target = args.save or name
    if os.path.isdir(target) or target.endswith(("/", os.sep)):
        target = os.path.join(target, name)
    try:
        model = load_model(args.model, method=args.method, fast=not args.reference)
    except RTDetrError as e:
        _err(str(e))
        return 1
    if args.size is None:
        args.size = list(model.input_size or DEFAULT_SIZE)
    image_array, truth = make_scene(args.seed, 0, size=max(args.size))
    image = PIL.Image.fromarray(image_array)
    pixel_values, sizes = preprocess([image], tuple(args.size))                 # [1, 3, H, W]
    out = model(pixel_values)
    if not (np.isfinite(out.logits).all() and np.isfinite(out.pred_boxes).all()):
        _err(f"{args.model}: the model's outputs are not finite (NaN or inf); the weights are damaged or unusable")
        return 1
    det = post_process_object_detection(out.logits, out.pred_boxes, target_sizes=sizes, threshold=args.threshold)[0]
    id2label = model.id2label
    label = lambda i: printable(str(id2label.get(int(i), str(int(i)))))          # noqa: E731
    matched, extra = match_to_truth(truth, det)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        save_annotated(image, det, id2label, target, args.threshold, truth=truth)
    except OSError as e:
        _err(f"{target}: cannot write the annotated image ({e.strerror or e})")
        return 1
    found = sum(d is not None for d, _ in matched)
    if args.json:
        doc = {"model": args.model, "method": model.method, "seed": args.seed, "threshold": args.threshold,
               "size": list(args.size), "saved": target,
               "ground_truth": [{"label": o["name"], "box": o["box"], "area": o["area"],
                                 "detection": d, "iou": round(iou, 4)} for o, (d, iou) in zip(truth, matched)],
               "detections": [{"label": str(id2label.get(int(l), str(int(l)))), "label_id": int(l),
                               "score": float(s), "box": [float(v) for v in b]}
                              for s, l, b in zip(det["scores"], det["labels"], det["boxes"])]}
        print(json.dumps(doc, allow_nan=False))
    else:
        print(f"scene 0 of seed {args.seed} ({image.width}x{image.height}), model {printable(args.model)} "
              f"({model.method} sampling): {len(truth)} objects, {len(det['scores'])} detections above "
              f"{args.threshold:g}; {found} of {len(truth)} objects found (same class, IoU >= 0.5)")
        for o, (d, iou) in zip(truth, matched):
            gt = f"{o['name']:8s} [{', '.join(_fmt(v) for v in o['box'])}]"
            if d is None:
                print(f"  truth {gt}  ->  missed")
            else:
                print(f"  truth {gt}  ->  {label(det['labels'][d])}: {float(det['scores'][d]):.2f} "
                      f"[{', '.join(_fmt(float(v)) for v in det['boxes'][d])}]  IoU {iou:.2f}")
        for d in extra:
            print(f"  extra detection  {label(det['labels'][d])}: {float(det['scores'][d]):.2f} "
                  f"[{', '.join(_fmt(float(v)) for v in det['boxes'][d])}]")
        print(f"saved {printable(target)}", flush=True)
    print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def main(argv=None):
    for stream in (sys.stdout, sys.stderr):                 # a name the terminal cannot show never stops the run
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = parse_args(argv)
    del _interrupts[:]
    try:
        previous = signal.signal(signal.SIGINT, _on_sigint)
    except (ValueError, OSError, AttributeError):           # not the main thread, or no signals here
        previous = None
    try:
        status = run(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:                                 # stdout closed early, e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error when Python flushes
        return 1
    except Exception as e:                                  # noqa: BLE001 (one line, never a traceback)
        _err(_unexpected("detect", e))
        status = 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if _interrupts:                                         # even if some library swallowed the KeyboardInterrupt
        _err("interrupted")
        status = 130
    return status


if __name__ == "__main__":
    status = main()
    if hasattr(signal, "SIGINT"):                           # from here on, Ctrl-C ends the process as SIGINT does
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(status)

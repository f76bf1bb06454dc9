"""Record transformers' RT-DETR image pre-processing on the test images, for tests/test_preprocess.py.

Reference: transformers 5.24 `transformers.image_utils.load_image` (EXIF transpose, then `.convert("RGB")`)
followed by `RTDetrImageProcessorPil()` with its defaults (`models/rt_detr/image_processing_pil_rt_detr.py`):
PIL resize to 640x640 with BILINEAR, rescale by 1/255, no normalisation, channels first. Without torchvision,
`transformers.RTDetrImageProcessor` itself resolves to `RTDetrImageProcessorPil` (with a warning), so this tool
imports `RTDetrImageProcessorPil` directly.

Run with the reference environment (torch + transformers), from the repository root:

    venv-ref/bin/python tools/record_preprocess.py

It writes, under tests/fixtures/preprocess/ (each file to a temp file first, then os.replace):
    inputs/*            small generated images of unusual modes (P, LA, RGBA, CMYK, I;16, L, 1, EXIF-rotated JPEG)
    reference.json      versions; per image: mode, sizes, sha256 of the float32 pixel values at 640x640,
                        what the processor does when handed the raw (unconverted) image
    reference.npz       uint8 k with pixel = k / 255 (checked bit-exactly here): full pixel values of the small
                        images at a small output size, and a few slices of the two COCO images at 640x640

The package never imports this file.
"""

import hashlib
import io
import json
import os
import sys
import warnings

import numpy as np
import PIL
import PIL.Image
import transformers
from transformers.image_utils import load_image
from transformers.models.rt_detr.image_processing_pil_rt_detr import RTDetrImageProcessorPil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rtdetrv2_np.fileio import atomic_write  # noqa: E402  (temp file + os.replace)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "preprocess")
INPUTS = os.path.join(OUT, "inputs")
COCO = ["coco_000000039769.png", "coco_000000004016.png"]
SMALL_SIZE = (48, 64)            # (height, width) used for the full-array records of the small images
SMALL_WH = (50, 37)              # generated images are 50 wide, 37 high (odd, non-square)




def encode(image, fmt, **kw):
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def make_inputs():
    """Generate the small test images of unusual modes; return {file name: bytes}."""
    rng = np.random.default_rng(20240727)
    w, h = SMALL_WH
    yy, xx = np.mgrid[0:h, 0:w]
    # A smooth colour pattern plus noise, so resampling has something to average and the rotation is visible.
    rgb = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) * 3 % 256], -1)
    rgb = np.clip(rgb + rng.integers(-20, 21, rgb.shape), 0, 255).astype(np.uint8)     # [h, w, 3]
    base = PIL.Image.fromarray(rgb, "RGB")
    alpha = PIL.Image.fromarray((xx * 255 // (w - 1)).astype(np.uint8), "L")

    files = {}
    files["mode_L.png"] = encode(base.convert("L"), "PNG")
    files["mode_1.png"] = encode(base.convert("1"), "PNG")
    files["mode_P.png"] = encode(base.convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=64), "PNG")
    p_t = base.convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=16)
    files["mode_P_transparency.png"] = encode(p_t, "PNG", transparency=3)
    la = base.convert("L")
    la.putalpha(alpha)
    files["mode_LA.png"] = encode(la, "PNG")
    rgba = base.copy()
    rgba.putalpha(alpha)
    files["mode_RGBA.png"] = encode(rgba, "PNG")
    files["mode_CMYK.tif"] = encode(base.convert("CMYK"), "TIFF")        # uncompressed: no codec differences
    # 16-bit grey: values spread over 0..65535, so most exceed 255 (the RGB conversion clips them).
    g16 = (xx * 65535 // (w - 1)).astype(np.uint16)
    g16[::4] = rng.integers(0, 256, g16[::4].shape)                         # some rows in 0..255 (kept as is)
    files["mode_I16.png"] = encode(PIL.Image.fromarray(g16), "PNG")
    exif = PIL.Image.Exif()
    exif[0x0112] = 6                                                        # Orientation: rotate 90 CW to view
    files["exif_orientation6.jpg"] = encode(base, "JPEG", quality=90, exif=exif.tobytes())
    files["mode_RGB.png"] = encode(base, "PNG")
    return files


def k_of(pixel_values, what):
    """uint8 k with pixel == float32(k) / 255 bit for bit (asserted), the compact form stored in the npz."""
    k = np.rint(pixel_values.astype(np.float64) * 255).astype(np.uint8)
    back = k.astype(np.float32) / np.float32(255)
    if not np.array_equal(back.view(np.uint32), pixel_values.view(np.uint32)):
        sys.exit(f"record_preprocess: {what}: pixel values are not exactly k/255; store them another way")
    return k


def sha(pixel_values):
    return hashlib.sha256(np.ascontiguousarray(pixel_values, dtype="<f4").tobytes()).hexdigest()


def main():
    os.makedirs(INPUTS, exist_ok=True)
    for name, data in make_inputs().items():
        atomic_write(os.path.join(INPUTS, name), data)

    proc = RTDetrImageProcessorPil()
    arrays = {}
    meta = {
        "recorded_with": {"transformers": transformers.__version__, "Pillow": PIL.__version__,
                          "numpy": np.__version__, "processor": type(proc).__name__,
                          "processor_defaults": {"size": dict(proc.size), "resample": int(proc.resample),
                                                 "do_rescale": proc.do_rescale, "rescale_factor": proc.rescale_factor,
                                                 "do_normalize": proc.do_normalize, "do_pad": proc.do_pad,
                                                 "do_convert_rgb": proc.do_convert_rgb}},
        "small_size": list(SMALL_SIZE),
        "images": {},
    }

    paths = [os.path.join(ROOT, "tests", "data", n) for n in COCO]
    paths += [os.path.join(INPUTS, n) for n in sorted(os.listdir(INPUTS))]
    for path in paths:
        rel = os.path.relpath(path, ROOT)
        key = os.path.basename(path)
        raw = PIL.Image.open(path)
        img = load_image(path)                                              # RGB, upright
        pv = proc(img, return_tensors="np")["pixel_values"]                 # [1, 3, 640, 640]
        assert pv.dtype == np.float32 and pv.shape == (1, 3, 640, 640), pv.shape
        k640 = k_of(pv, rel)
        entry = {"path": rel, "mode": raw.mode, "size_wh": list(raw.size),
                 "original_size_hw": [img.height, img.width], "sha256_640": sha(pv)}
        if key in COCO:
            # A few slices at 640x640: rows 0, 320, 639 of every channel, and a 32x32 patch.
            arrays[f"{key}/rows"] = k640[0][:, [0, 320, 639], :]             # [3, 3, 640]
            arrays[f"{key}/patch"] = k640[0][:, 300:332, 400:432]            # [3, 32, 32]
        else:
            small = proc(img, size={"height": SMALL_SIZE[0], "width": SMALL_SIZE[1]},
                         return_tensors="np")["pixel_values"]               # [1, 3, 48, 64]
            arrays[f"{key}/small"] = k_of(small, rel)[0]                     # [3, 48, 64]
        # What the processor does with the image as opened, without load_image's RGB conversion.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                raw_pv = proc(PIL.Image.open(path), return_tensors="np")["pixel_values"]
                entry["raw_processor"] = {"shape": list(raw_pv.shape), "dtype": str(raw_pv.dtype)}
            except Exception as e:                                          # noqa: BLE001 - recorded, not hidden
                entry["raw_processor"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
        meta["images"][key] = entry
        print(f"{rel:55s} {raw.mode:5s} -> {entry['raw_processor']}")

    # The two COCO images as one batch: [2, 3, 640, 640].
    batch = proc([load_image(p) for p in paths[:2]], return_tensors="np")["pixel_values"]
    meta["coco_batch_sha256_640"] = sha(batch)

    # The 1/255 arithmetic: the reference's float64 * (1/255) cast to float32 equals float32 k / 255 for all k.
    k = np.arange(256, dtype=np.uint8)[None, :, None]                       # [1, 256, 1]
    ref = proc.rescale(k, proc.rescale_factor)
    meta["rescale_equals_float32_division"] = bool(np.array_equal(ref, k.astype(np.float32) / np.float32(255)))

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(os.path.join(OUT, "reference.npz"), buf.getvalue())
    atomic_write(os.path.join(OUT, "reference.json"), (json.dumps(meta, indent=1) + "\n").encode())
    print("wrote", os.path.relpath(OUT, ROOT))


if __name__ == "__main__":
    main()

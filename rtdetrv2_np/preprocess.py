"""Pre-processing: image file -> pixel values [B, 3, H, W] float32 in [0, 1], the RT-DETRv2 input.

Reproduces, bit for bit (given the same Pillow version):
  * transformers 5.24 `transformers/image_utils.py::load_image` on a local file: `PIL.Image.open`,
    `PIL.ImageOps.exif_transpose`, then `.convert("RGB")`;
  * `transformers/models/rt_detr/image_processing_pil_rt_detr.py::RTDetrImageProcessorPil` with its defaults
    (`PilBackend.resize` -> `image_transforms.resize`, `image_transforms.rescale`): `PIL.Image.resize` to exactly
    (H, W) = (640, 640) with BILINEAR and reducing_gap=None (aspect ratio NOT kept, no padding), rescale by 1/255, no
    mean/std normalisation (do_normalize=False), channels first. Without torchvision installed,
    `transformers.RTDetrImageProcessor` resolves to this PIL class.
The original repo's deploy script (lyuwenyu/RT-DETR `references/deploy/rtdetrv2_torch.py`: `.convert('RGB')`,
torchvision `Resize((640, 640))` on the PIL image, `ToTensor()`) computes the same values, except that it does not
apply the EXIF orientation.

How each PIL mode becomes RGB (Pillow's `Image.convert("RGB")`, which transformers' load_image calls; recorded in
tests/fixtures/preprocess/reference.json):
    L         grey value copied to R, G, B               1      0 -> 0, 1 -> 255
    P         palette lookup; tRNS transparency ignored  LA     grey copied, alpha DROPPED (not blended)
    RGBA      alpha DROPPED (not blended onto white)     CMYK   R = round((255 - C) * (255 - K) / 255), etc.
    I;16, I   grey CLIPPED to 0..255, not scaled (65535 -> 255, 200 -> 200); F: clipped, then truncated
transformers' other RGB conversion, `image_transforms.convert_to_rgb` (blends alpha onto white), runs only with
do_convert_rgb=True; RT-DETR's processor leaves do_convert_rgb unset, so it is never used here.

The processor itself does NOT convert modes: handed a non-RGB PIL image it gives 1 (L, P, 1), 2 (LA) or 4 (RGBA,
CMYK) channels, fails on 16-bit values above 255, and maps mode-1 pixels to 0 or 1/255. The model needs 3 channels,
so `preprocess` accepts only RGB images and says to use `load_image`.

The 1/255: the reference computes float64(k) * (1/255) and casts to float32. For every k in 0..255 that equals the
float32 division float32(k) / float32(255) (checked for all 256 values in the tests), which is also what the
original's ToTensor computes; the float32 MULTIPLICATION k * float32(1/255) differs by 1 ulp for 126 of the 256.

Shape letters: the glossary in the package docstring, rtdetrv2_np/__init__.py (B batch, H, W height and width).
"""

import os

import numpy as np
import PIL.Image
import PIL.ImageOps

from .errors import RTDetrError
from .fileio import open_regular

# The image formats load_image opens (Pillow format names; see PIL.Image.registered_extensions() for their file
# extensions). Pillow identifies a file by its content, trying every plugin it has unless told which: among them EPS,
# which runs Ghostscript. These are the common photo and dataset formats (COCO, VOC, Objects365: JPEG; the rest for
# users' own images). Camera JPEGs with several pictures (MPO) open through "JPEG" too.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
FORMAT_NAMES = "JPEG, PNG, BMP, GIF, TIFF, WebP, PPM/PGM/PBM"

# transformers RTDetrImageProcessorPil class attributes: size = {"height": 640, "width": 640},
# resample = PILImageResampling.BILINEAR (= PIL.Image.BILINEAR), rescale_factor = 1 / 255 (BaseImageProcessor).
DEFAULT_SIZE = (640, 640)
RESAMPLE = PIL.Image.Resampling.BILINEAR
RESCALE_DIVISOR = np.float32(255)


def load_image(path):
    """Open an image file as an upright RGB PIL image, like transformers.image_utils.load_image.

    path: str or os.PathLike of a local file. Returns a fully decoded PIL.Image in mode "RGB" with the EXIF
    orientation applied (PIL.ImageOps.exif_transpose). Only regular files are opened (a FIFO or device is refused
    from its stat, without being opened), and only as one of IMAGE_FORMATS: Pillow does not even try its other
    plugins, so a PostScript file named .jpg never reaches Ghostscript. Pillow's decompression-bomb guard is kept at
    its default (PIL.Image.MAX_IMAGE_PIXELS pixels: a warning above it, refused above twice that). Every failure is
    an RTDetrError naming the file.
    """
    name = os.fspath(path)
    PIL.Image.init()                                   # register every plugin, so that each of IMAGE_FORMATS exists
    with open_regular(name, "an image file") as f:    # missing, symlink loop, folder, FIFO, device: RTDetrError
        try:
            with PIL.Image.open(f, formats=IMAGE_FORMATS) as image:
                image = PIL.ImageOps.exif_transpose(image)
                rgb = image.convert("RGB")             # decodes the whole file; a copy even when already RGB
                rgb.load()
        except PIL.Image.DecompressionBombError as e:
            raise RTDetrError(f"{name}: refused as a possible decompression bomb ({e}); use a smaller image, or "
                              f"raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from None
        except PIL.UnidentifiedImageError:
            raise RTDetrError(f"{name}: not an image file of a supported format ({FORMAT_NAMES}); convert it to "
                              f"JPEG or PNG") from None
        except Exception as e:                         # Pillow's decoders raise OSError, SyntaxError, ValueError, ...
            detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise RTDetrError(f"{name}: could not decode the image ({type(e).__name__}: {detail}); the file is "
                              f"truncated or corrupt, re-export or re-download it") from None
    return rgb


def preprocess(images, size=DEFAULT_SIZE):
    """Resize and rescale images like RTDetrImageProcessorPil's defaults.

    images: one RGB PIL image or a path, or a list of them (paths are opened with `load_image`).
    size: (H, W) of the model input; the default (640, 640) is the processor's and the original's.
    Returns (pixel_values [B, 3, H, W] float32 in [0, 1], original_sizes [(h, w), ...]), where (h, w) is each input's
    size, the `target_sizes` that post-processing needs to scale boxes back to the image.
    """
    if isinstance(images, (PIL.Image.Image, str, os.PathLike)):
        images = [images]
    if len(images) == 0:
        raise RTDetrError("preprocess: no images given; pass at least one image")
    H, W = size
    batch, original_sizes = [], []
    for image in images:
        if not isinstance(image, PIL.Image.Image):
            image = load_image(image)
        if image.mode != "RGB":
            raise RTDetrError(f"preprocess: image has PIL mode {image.mode!r}, not 'RGB' (transformers' processor "
                              f"would not convert it either); open it with rtdetrv2_np.preprocess.load_image")
        original_sizes.append((image.height, image.width))
        resized = image.resize((W, H), resample=RESAMPLE, reducing_gap=None)  # PIL takes (width, height)
        k = np.asarray(resized, dtype=np.uint8)                               # [H, W, 3]
        batch.append(k.transpose(2, 0, 1))                                    # [3, H, W]
    k = np.stack(batch)                                                       # [B, 3, H, W] uint8
    pixel_values = k.astype(np.float32) / RESCALE_DIVISOR                     # [B, 3, H, W] float32
    return pixel_values, original_sizes

"""Inference inputs: which files to read, and how to decode any of them into the model's input.

    paths = expand_inputs(["photos/", "shop/*.png", "one.jpg"])      # sorted, de-duplicated image files
    names = unique_stems(paths)                                       # output base names, one per path
    decoded = decode_image(paths[0], max_image_pixels=178956970, max_decoded_side=4096,
                           min_size=800, max_size=1333)       # the last two: the model's input sizes (optional)
    decoded.image            # float32 (3, h, w) RGB in [0, 1], what the model sees
    decoded.height, decoded.width, decoded.reduction   # original size; h = ceil(height / reduction)

**Which files.** An input is a file (taken as given, whatever its extension), a folder (its image files by
extension, recursively, in sorted order) or a glob pattern (``*``, ``?``, ``[...]``, ``**``). A file named twice
is read once. An input that matches nothing is an error naming it.

**Decoding** converts pixels as the training loader's :func:`maskrcnn.data.read_image` does (without a
reduction the result is the same tensor, tested), so an image looks the same to the model at inference as in
training: the EXIF orientation is applied (phone photos are stored sideways), and
every mode becomes RGB in [0, 1] -- palette (P), greyscale (L), CMYK, 16-bit greyscale (``I;16``, divided by
65535) and images with transparency (RGBA, LA, P with a transparent index: composited on white).

**Huge images.** Pillow refuses files above ``2 * Image.MAX_IMAGE_PIXELS`` (a "decompression bomb": a small file
that decodes to gigabytes). Here the limit is ``max_image_pixels``, checked from the header before anything is
decoded, and a file above it raises :class:`ImageTooLargeError` naming the file, its size and the option that
raises the limit.

**Decoding at a reduced size.** An image is shrunk by an integer factor ``f`` while it is decoded: at least
what ``max_decoded_side`` requires (the smallest ``f`` that brings the longer side within it) and, when the
caller passes the model's ``min_size`` / ``max_size``, as much as the model's own resize makes free (the largest
``f`` that still leaves the image at least as large as the model's input, :func:`network_reduction`). A JPEG is
decoded directly at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling through Pillow's ``Image.draft``: the full
image never exists in memory, and decoding is several times faster); the rest of ``f`` is a box average of the
uint8 pixels (``Image.reduce``). Pixels stay uint8 until then; only the reduced image becomes float32. Pixel
``(i, j)`` of the reduced image covers original pixels ``[f*i, f*i + f) x [f*j, f*j + f)``: a coordinate ``x``
in the reduced image is ``f * x`` in the original, which is how the predictor maps boxes back. (16-bit and
float images take the training loader's float path and a float block mean, ``reduce_image``.)
"""
from __future__ import annotations

import contextlib
import glob
import math
import os
import threading
from dataclasses import dataclass
from typing import Iterable, List, Sequence

import torch
import torch.nn.functional as F
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from maskrcnn.data.dataset import SIXTEEN_BIT_MODES, read_image

# Extensions picked up when a folder is given (any file given by name is tried, whatever its extension).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif")

# What decoding a broken file can raise (Pillow's errors, the EXIF parser's, and ours).
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageTooLargeError(ValueError):
    """An image with more pixels than the ``max_image_pixels`` limit (a possible decompression bomb)."""


@dataclass
class DecodedImage:
    """One decoded input.

    Attributes:
        image: float32 ``(3, h, w)`` RGB in [0, 1], possibly reduced (``h = ceil(height / reduction)``).
        height, width: the original size in pixels, after the EXIF orientation.
        reduction: the integer factor ``f`` the image was shrunk by (1 = not shrunk).
    """

    image: torch.Tensor
    height: int
    width: int
    reduction: int = 1


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """Files, folders and glob patterns -> image file paths, in the order given (each folder or glob sorted).

    Raises FileNotFoundError naming an input that is neither an existing file or folder nor a pattern that
    matches a file.
    """
    paths: List[str] = []
    seen = set()

    def add(path: str) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            paths.append(path)

    for item in inputs:
        if os.path.isdir(item):
            found = sorted(_images_under(item))
            for path in found:
                add(path)
        elif os.path.isfile(item):
            add(item)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise FileNotFoundError(f"input {item!r}: the pattern matches no file")
            for path in found:
                add(path)
        else:
            raise FileNotFoundError(f"input {item!r}: no such file or folder")
    return paths


def _images_under(folder: str) -> Iterable[str]:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                yield os.path.join(root, name)


def unique_stems(paths: Sequence[str]) -> List[str]:
    """A distinct output base name per path: the file name without extension, ``_2``, ``_3``... on repeats.

    ``a/shirt.jpg, b/shirt.jpg, shirt.png`` -> ``shirt, shirt_2, shirt_3``.
    """
    used, stems = set(), []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        candidate, count = stem, 1
        while candidate in used:
            count += 1
            candidate = f"{stem}_{count}"
        used.add(candidate)
        stems.append(candidate)
    return stems


_GUARD_LOCK = threading.Lock()
_GUARD_STATE = {"users": 0, "saved": None}  # decodes inside _pillow_guard_off now; the limit they replaced


@contextlib.contextmanager
def _pillow_guard_off():
    """Disable Pillow's own pixel-count guard while we apply ours (``Image.MAX_IMAGE_PIXELS = None``).

    The limit is one global of Pillow's, and the server decodes in several threads at once: the first
    decode to enter saves it and the last to leave restores it (a count under a lock). Saving and
    restoring per decode would interleave (A saves the limit, B saves A's None, A restores, B restores
    None) and leave the guard off for the rest of the process, or switch it back on under a decode that
    our own, higher limit allowed."""
    with _GUARD_LOCK:
        if _GUARD_STATE["users"] == 0:
            _GUARD_STATE["saved"] = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _GUARD_STATE["users"] += 1
    try:
        yield
    finally:
        with _GUARD_LOCK:
            _GUARD_STATE["users"] -= 1
            if _GUARD_STATE["users"] == 0:
                Image.MAX_IMAGE_PIXELS = _GUARD_STATE["saved"]


def reduction_factor(height: int, width: int, max_side: int) -> int:
    """The smallest integer ``f >= 1`` with ``ceil(max(height, width) / f) <= max_side`` (1 when ``max_side <= 0``)."""
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return 1
    factor = math.ceil(longest / max_side)
    while math.ceil(longest / factor) > max_side:  # guards against float rounding in the division
        factor += 1
    return factor


def reduce_image(image: torch.Tensor, factor: int) -> torch.Tensor:
    """``(3, h, w) -> (3, ceil(h / f), ceil(w / f))``: each pixel the mean of its ``f x f`` block.

    Blocks at the right and bottom edges may be cut short; they average the pixels they have.
    """
    if factor == 1:
        return image
    # (3, h, w) -> (1, 3, h, w) -> (1, 3, ceil(h/f), ceil(w/f)) -> (3, ceil(h/f), ceil(w/f))
    return F.avg_pool2d(image[None], kernel_size=factor, stride=factor, ceil_mode=True)[0]


def network_reduction(height: int, width: int, min_size: int, max_size: int) -> int:
    """The largest integer ``f >= 1`` with ``f * scale <= 1``, where ``scale = min(min_size / short side, max_size /
    long side)`` is the model transform's resize factor: an image shrunk by ``f`` is still at least as large as
    what the model resizes it to. 1 when either size is ``<= 0`` or the model does not downscale by 2 or more.
    """
    if min_size <= 0 or max_size <= 0:
        return 1
    scale = min(min_size / min(height, width), max_size / max(height, width))
    factor = max(1, math.floor(1 / scale))
    while factor > 1 and factor * scale > 1:  # guards against float rounding in the division
        factor -= 1
    return factor


def _wanted_reduction(height: int, width: int, max_side: int, min_size: int, max_size: int) -> int:
    return max(reduction_factor(height, width, max_side), network_reduction(height, width, min_size, max_size))


def _exif_swaps_axes(image: Image.Image) -> bool:
    """Whether the EXIF orientation (5-8: rotated by 90 or 270 degrees) makes the shown image ``w x h``."""
    return image.getexif().get(0x0112, 1) in (5, 6, 7, 8)


def decode_image(path: str, max_image_pixels: int = 178956970, max_decoded_side: int = 0, *,
                 min_size: int = 0, max_size: int = 0) -> DecodedImage:
    """Read ``path`` as the model's input (module docstring).

    The reduction factor ``f`` is the larger of what ``max_decoded_side`` requires (:func:`reduction_factor`) and,
    when the model's ``min_size`` and ``max_size`` are given, what the model's own resize makes free
    (:func:`network_reduction`). A JPEG is then decoded directly at 1/2, 1/4 or 1/8 of its size, the largest
    power of two not above ``f`` (libjpeg's DCT scaling, Pillow's ``Image.draft``: the full image is never
    decoded), and whatever reduction is left is a box average of the uint8 pixels (Pillow's ``Image.reduce``).
    The pixels stay uint8 until that point; only the reduced image becomes float32.

    Raises :class:`ImageTooLargeError` above ``max_image_pixels`` (0 = no limit), and ``OSError``,
    ``PIL.UnidentifiedImageError``, ``ValueError`` or ``SyntaxError`` for missing, truncated or undecodable
    files (:data:`DECODE_ERRORS`).
    """
    with _pillow_guard_off():
        with Image.open(path) as opened:  # reads the header only
            width, height = opened.size  # as stored, before the EXIF orientation
            if max_image_pixels and width * height > max_image_pixels:
                raise ImageTooLargeError(
                    f"{path}: {width}x{height} = {width * height} pixels is more than the limit of "
                    f"{max_image_pixels} (Pillow's decompression-bomb guard); raise it with --max-image-pixels "
                    "(infer.max_image_pixels) if the file is trusted")
            if opened.mode in SIXTEEN_BIT_MODES or opened.mode == "F":
                # Rare high-bit-depth files: the training loader's float path, then a float block mean.
                image = read_image(path)  # (3, H, W), EXIF orientation applied
                height, width = int(image.shape[1]), int(image.shape[2])
                factor = _wanted_reduction(height, width, max_decoded_side, min_size, max_size)
                return DecodedImage(reduce_image(image, factor), height, width, factor)
            draft = 1
            if opened.format == "JPEG":
                wanted = _wanted_reduction(height, width, max_decoded_side, min_size, max_size)
                draft = max(d for d in (1, 2, 4, 8) if d <= wanted)
                # Pillow picks the largest of 8, 4, 2 whose result is at least the requested size.
                if draft > 1 and opened.draft(None, (width // draft, height // draft)) is not None:
                    if opened.size != (-(-width // draft), -(-height // draft)):
                        raise ValueError(f"{path}: a 1/{draft} JPEG decode gave {opened.size}, not "
                                         f"ceil({width}x{height} / {draft})")
                else:
                    draft = 1
            opened.load()  # decode now: a truncated file fails here, inside the caller's error handling
            swapped = _exif_swaps_axes(opened)
            picture = _rgb_uint8(ImageOps.exif_transpose(opened))
    if swapped:
        height, width = width, height
    # What is left after the JPEG's own reduction, as a box average of the uint8 pixels.
    rest = _wanted_reduction(picture.height, picture.width, max_decoded_side, min_size, max_size)
    if rest > 1:
        picture = picture.reduce(rest)  # sizes rounded up; edge blocks average the pixels they have
    # (h, w, 3) uint8 -> (3, h, w) float32 in [0, 1], computed as read_image does (same values)
    rgb = np.asarray(picture, dtype=np.float32) / 255.0
    image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    return DecodedImage(image, height, width, draft * rest)


def _rgb_uint8(image: Image.Image) -> Image.Image:
    """Any 8-bit mode -> RGB, as ``read_image`` converts it: transparency composited on white."""
    if "A" in image.mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")

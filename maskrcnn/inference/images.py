"""Inference inputs: which files to read, and how to decode any of them into the model's input.

    paths = expand_inputs(["photos/", "shop/*.png", "one.jpg"])      # sorted, de-duplicated image files
    names = unique_stems(paths)                                       # output base names, one per path
    decoded = decode_image(paths[0], max_image_pixels=178956970, max_decoded_side=4096)
    decoded.image            # float32 (3, h, w) RGB in [0, 1], what the model sees
    decoded.height, decoded.width, decoded.reduction   # original size; h = ceil(height / reduction)

**Which files.** An input is a file (taken as given, whatever its extension), a folder (its image files by
extension, recursively, in sorted order) or a glob pattern (``*``, ``?``, ``[...]``, ``**``). A file named twice
is read once. An input that matches nothing is an error naming it.

**Decoding** reuses the training loader's :func:`maskrcnn.data.read_image`, so an image looks the same to the
model at inference as in training: the EXIF orientation is applied (phone photos are stored sideways), and
every mode becomes RGB in [0, 1] -- palette (P), greyscale (L), CMYK, 16-bit greyscale (``I;16``, divided by
65535) and images with transparency (RGBA, LA, P with a transparent index: composited on white).

**Huge images.** Pillow refuses files above ``2 * Image.MAX_IMAGE_PIXELS`` (a "decompression bomb": a small file
that decodes to gigabytes). Here the limit is ``max_image_pixels``, checked from the header before anything is
decoded, and a file above it raises :class:`ImageTooLargeError` naming the file, its size and the option that
raises the limit. An image whose longer side exceeds ``max_decoded_side`` is shrunk by the smallest integer
factor ``f`` that brings it within, each output pixel the mean of an ``f x f`` block
(``reduce_image``); the model resizes to ``input.max_size`` (1333) anyway, so only memory changes. Pixel
``(i, j)`` of the reduced image covers original pixels ``[f*i, f*i + f) x [f*j, f*j + f)``: a coordinate ``x``
in the reduced image is ``f * x`` in the original, which is how the predictor maps boxes back.
"""
from __future__ import annotations

import contextlib
import glob
import math
import os
from dataclasses import dataclass
from typing import Iterable, List, Sequence

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from maskrcnn.data.dataset import read_image

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


@contextlib.contextmanager
def _pillow_guard_off():
    """Disable Pillow's own pixel-count guard while we apply ours (``Image.MAX_IMAGE_PIXELS = None``)."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


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


def decode_image(path: str, max_image_pixels: int = 178956970, max_decoded_side: int = 0) -> DecodedImage:
    """Read ``path`` as the model's input (module docstring).

    Raises :class:`ImageTooLargeError` above ``max_image_pixels`` (0 = no limit), and ``OSError``,
    ``PIL.UnidentifiedImageError``, ``ValueError`` or ``SyntaxError`` for missing, truncated or undecodable
    files (:data:`DECODE_ERRORS`).
    """
    with _pillow_guard_off():
        with Image.open(path) as opened:  # reads the header only
            width, height = opened.size
        if max_image_pixels and width * height > max_image_pixels:
            raise ImageTooLargeError(
                f"{path}: {width}x{height} = {width * height} pixels is more than the limit of {max_image_pixels} "
                "(Pillow's decompression-bomb guard); raise it with --max-image-pixels (infer.max_image_pixels) "
                "if the file is trusted")
        image = read_image(path)  # (3, H, W), EXIF orientation applied
    height, width = int(image.shape[1]), int(image.shape[2])
    factor = reduction_factor(height, width, max_decoded_side)
    return DecodedImage(reduce_image(image, factor), height, width, factor)

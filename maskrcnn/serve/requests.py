"""What a ``POST /predict`` request carries, checked: the query options and the uploaded image.

    options = parse_options(request.query_params, class_names, defaults)   # PredictOptions, or RequestError
    decoded = decode_upload(data, "upload 'look.jpg'", limits)              # DecodedImage, or RequestError

**Options** have the meaning of ``infer.py``'s options of the same name (``maskrcnn/inference/cli.py``),
and default to the checkpoint's ``infer`` section as there:

    score_thresh=0.3        keep detections scoring at least this, in [0, 1]   (infer.py --score-thresh)
    max_detections=20       most items, best first, after the class filter, >= 1 (--max-detections)
    class=dress&class=bag   keep only these classes; repeat for several          (--class, repeatable)
    format=json | png       the JSON document (default) or the overlay picture

Class names are matched exactly (iMaterialist's ``shirt, blouse`` holds a comma, so there is no
comma-separated form); an unknown name is an error listing the checkpoint's classes.

**Uploads** are decoded by ``maskrcnn.inference.images.decode_image``, the decoder of ``infer.py`` and of
training (EXIF orientation, every Pillow mode, transparency on white, 16-bit greyscale), with the same
decompression-bomb guard (``max_image_pixels``, from the header, before any pixel is decoded) and the
same shrinking of huge images (``max_decoded_side``).

Every problem is a :class:`RequestError` with the HTTP status and a sentence naming it; the app sends it
as ``{"error": sentence}``.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Mapping, Tuple

from maskrcnn.inference.images import DECODE_ERRORS, DecodedImage, ImageTooLargeError, decode_image

FORMATS = ("json", "png")
KNOWN_PARAMETERS = ("score_thresh", "max_detections", "class", "format")


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx/5xx) and a ``message`` naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class PredictOptions:
    """The filters of one request (hashable: requests with equal options share a forward pass's filter)."""

    score_thresh: float
    max_detections: int
    classes: Tuple[str, ...] = ()  # empty = every class
    format: str = "json"


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on one upload: its bytes, its pixels (decompression bombs) and the decoded side."""

    max_upload_bytes: int = 20 * 2**20
    max_image_pixels: int = 50_000_000
    max_decoded_side: int = 4096


def parse_options(query, class_names, defaults: PredictOptions) -> PredictOptions:
    """Query parameters -> :class:`PredictOptions` (module docstring); ``query`` is a multi-dict
    (``getlist``) such as Starlette's ``request.query_params``."""
    unknown = sorted(set(query.keys()) - set(KNOWN_PARAMETERS))
    if unknown:
        raise RequestError(422, f"unknown query parameter(s) {unknown}; known: {list(KNOWN_PARAMETERS)}")
    score_thresh = defaults.score_thresh
    if "score_thresh" in query:
        score_thresh = _number(query, "score_thresh", float)
        if not 0.0 <= score_thresh <= 1.0:
            raise RequestError(422, f"score_thresh={score_thresh} is outside [0, 1]")
    max_detections = defaults.max_detections
    if "max_detections" in query:
        max_detections = _number(query, "max_detections", int)
        if max_detections < 1:
            raise RequestError(422, f"max_detections={max_detections} must be at least 1")
    classes = tuple(query.getlist("class")) or defaults.classes
    missing = [name for name in classes if name not in class_names]
    if missing:
        raise RequestError(422, f"unknown class name(s) {missing}; the model's classes are {list(class_names)}")
    output = query.get("format", defaults.format)
    if output not in FORMATS:
        raise RequestError(422, f"format={output!r} is not one of {list(FORMATS)}")
    return PredictOptions(score_thresh, max_detections, classes, output)


def _number(query: Mapping, key: str, kind):
    text = query.get(key)
    try:
        value = kind(text)
    except ValueError:
        raise RequestError(422, f"{key}={text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise RequestError(422, f"{key}={text!r} is not a finite number")
    return value


class _NamedBytes(io.BytesIO):
    """Upload bytes that print as the upload's name, so the decoder's messages name it (not an address)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__


def decode_upload(data: bytes, label: str, limits: UploadLimits) -> DecodedImage:
    """Upload bytes -> :class:`DecodedImage` (the model's float ``(3, h, w)`` input and the original size).

    ``label`` names the upload in messages (``"upload 'look.jpg'"``, ``"the request body"``).
    Raises :class:`RequestError`: 400 for no bytes, 413 above ``max_image_pixels``, 400 for anything that
    does not decode (not an image, a truncated or corrupt file).
    """
    if not data:
        raise RequestError(400, "no image: send the file as the multipart field 'image' or as the raw "
                                "request body")
    if len(data) > limits.max_upload_bytes:
        raise RequestError(413, too_large_message(len(data), limits.max_upload_bytes))
    try:
        return decode_image(_NamedBytes(data, label), limits.max_image_pixels, limits.max_decoded_side)
    except ImageTooLargeError as error:
        message = str(error).replace("--max-image-pixels (infer.max_image_pixels)", "the server's "
                                     "--max-image-pixels")
        raise RequestError(413, message) from None
    except DECODE_ERRORS as error:
        raise RequestError(400, f"{label} is not a readable image (truncated, corrupt or not an image "
                                f"format Pillow reads): {type(error).__name__}: {error}") from None


def too_large_message(size: int, limit: int) -> str:
    """``"the upload (25.0 MiB) is larger than the server's limit of 20.0 MiB (--max-upload-mb)"``."""
    return f"the upload ({_size(size)}) is larger than the server's limit of {_size(limit)} (--max-upload-mb)"


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count} bytes"

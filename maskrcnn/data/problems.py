"""What the dataset adapters do with bad input: raise, warn and skip, or collect for a report.

Every adapter (``coco.py``, ``imaterialist.py``, ``deepfashion2.py``) validates what it reads and calls
``problems.report(where, message)`` for each defect, naming the file and the field, e.g.
``modanet.json: annotations[17].bbox: expected 4 numbers, got 3``. The adapter then skips the
offending item (one polygon, one annotation, or one image) and goes on. What ``report`` does depends
on the mode:

- ``"raise"``   (strict loading): raise :class:`DataError` at the first problem;
- ``"warn"``    (the default): emit one :class:`DataWarning` per problem and remember it;
- ``"collect"`` (the dataset checker): only remember it, for a report at the end.

So bad data is never silent, and the checker sees every problem in one pass instead of the first one.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

__all__ = ["DataError", "DataWarning", "Problem", "Problems"]

MODES = ("raise", "warn", "collect")


class DataError(ValueError):
    """A dataset file or record that cannot be used; the message names the file and the field."""


class DataWarning(UserWarning):
    """A dataset defect that was skipped (lenient loading)."""


@dataclass(frozen=True)
class Problem:
    """One defect: ``where`` names the file and field, ``message`` says what is wrong."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Problems:
    """A collector of data problems; see the module docstring for the three modes."""

    mode: str = "warn"
    items: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Problems.mode: expected one of {MODES}, got {self.mode!r}")

    @classmethod
    def for_loading(cls, strict: bool) -> "Problems":
        """``"raise"`` when ``strict`` else ``"warn"``: the behaviour of ``load_records(strict=...)``."""
        return cls("raise" if strict else "warn")

    def report(self, where: str, message: str, action: str = "skipped") -> None:
        """Record one problem; raise DataError in strict mode, warn in warn mode.

        ``action`` says what lenient loading does about it (shown in the warning).
        """
        problem = Problem(where, message)
        if self.mode == "raise":
            raise DataError(str(problem))
        self.items.append(problem)
        if self.mode == "warn":
            warnings.warn(f"{problem} ({action})", DataWarning, stacklevel=3)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


# ----------------------------------------------------------------------------------------------
# Checks shared by the adapters: each reports what is wrong and returns None for a skipped item.
# ----------------------------------------------------------------------------------------------
def clean_box(value, box_format: str, height: int, width: int, where: str, problems: Problems,
              clip: bool = True):
    """Validate a source box and convert it to ``[x1, y1, x2, y2]`` floats, or report and return None.

    Args:
        value: the box as stored in the file.
        box_format: ``"xywh"`` (COCO) or ``"xyxy"`` (DeepFashion2 corners).
        height, width: the image size; a box with no overlap with the image is reported.
        where: file and field for messages, e.g. ``"modanet.json: annotations[17].bbox"``.
        clip: clip a box that sticks out of the image to the image (the checker turns this off to
            report out-of-image boxes itself).
    """
    from .records import _is_number  # local: records imports nothing from here

    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(_is_number(v) for v in value):
        got = f"{len(value)}" if isinstance(value, (list, tuple)) else type(value).__name__
        problems.report(where, f"expected 4 numbers, got {got}")
        return None
    a, b, c, d = (float(v) for v in value)
    if not all(v == v and abs(v) != float("inf") for v in (a, b, c, d)):
        problems.report(where, f"not finite: {list(value)}")
        return None
    x1, y1, x2, y2 = (a, b, a + c, b + d) if box_format == "xywh" else (a, b, c, d)
    if not (x2 > x1 and y2 > y1):
        problems.report(where, f"degenerate box {list(value)} ({box_format}: zero or negative size)")
        return None
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        problems.report(where, f"box {list(value)} ({box_format}) lies outside the {width}x{height} image")
        return None
    if clip:
        x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    elif x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        problems.report(where, f"out-of-image box {list(value)} ({box_format}): extends outside the "
                               f"{width}x{height} image", action="kept unclipped")
    return [x1, y1, x2, y2]


def clean_segmentation(value, height: int, width: int, where: str, problems: Problems):
    """Validate a segmentation; return polygons (bad ones dropped) or the RLE dict, or None if unusable.

    Polygons with fewer than 3 points, an odd coordinate count or non-numbers are reported one by one
    and dropped; if none is left the annotation is unusable. An RLE dict must have the image's size;
    compressed ``counts`` given as bytes become an ASCII str (records stay JSON-serializable).
    """
    from .records import polygon_error, rle_error

    if isinstance(value, dict):
        error = rle_error(value, height, width)
        if error:
            problems.report(f"{where}.{error.split(':', 1)[0]}", error.split(": ", 1)[1])
            return None
        counts = value["counts"]
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        return {"size": [int(height), int(width)], "counts": counts}
    if not isinstance(value, list):
        problems.report(where, f"expected a list of polygons or an RLE dict, got {type(value).__name__}")
        return None
    if not value:
        problems.report(where, "empty segmentation (no polygon)")
        return None
    polygons = []
    for i, polygon in enumerate(value):
        error = polygon_error(polygon)
        if error:
            problems.report(f"{where}[{i}]", error)
        else:
            polygons.append(list(map(float, polygon)))
    return polygons or None

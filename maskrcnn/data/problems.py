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

The checks the adapters share live here too: :func:`clean_box`, :func:`clean_segmentation` and
:func:`build_annotation`, which turns one source annotation into a record annotation (category map,
segmentation, box) or reports why it cannot.
"""
from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import dataclass, field

from .records import is_number, polygon_error, polygon_self_intersects, rle_error, segmentation_box

__all__ = ["DataError", "DataWarning", "Problem", "Problems", "clean_box", "clean_segmentation",
           "build_annotation", "image_path"]

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
    """A collector of data problems; see the module docstring for the three modes.

    ``thorough`` turns on the checks that cost too much for every training run (the dataset checker sets
    it): each polygon is tested for self-intersection. What they find are *notes*: warnings that do not
    make the data unusable (``note``; kept in ``notes``, never raised).
    """

    mode: str = "warn"
    items: list = field(default_factory=list)
    thorough: bool = False
    notes: list = field(default_factory=list)

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

    def note(self, where: str, message: str) -> None:
        """Remember a warning that leaves the item usable (shown by the checker, never raised)."""
        self.notes.append(Problem(where, message))

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


# ----------------------------------------------------------------------------------------------
# Checks shared by the adapters: each reports what is wrong and returns None for a skipped item.
# ----------------------------------------------------------------------------------------------
def image_path(images_dir: str, file_name: str, where: str, problems: Problems,
               allow_outside: bool = False):
    """``images_dir`` joined with an annotation's ``file_name``, or None (reported) when it leaves the folder.

    A name such as ``../../../../etc/hostname`` or an absolute path would make training read a file outside
    the images folder: refused unless ``allow_outside`` (``data.allow_outside_images``). With no images
    folder (``images_dir=""``: names as written) absolute names are allowed, and only names that climb
    above the current folder with ``..`` are refused. Symbolic links are not followed (a linked images
    folder is fine).
    """
    path = os.path.join(images_dir, file_name)
    if allow_outside:
        return path
    if images_dir:
        base = os.path.abspath(images_dir)
        resolved = os.path.abspath(path)
        inside = os.path.commonpath([base, resolved]) == base
    else:
        base, resolved = "the current folder", os.path.normpath(file_name)
        inside = os.path.isabs(file_name) or not (resolved == os.pardir or resolved.startswith(os.pardir + os.sep))
    if not inside:
        problems.report(where, f"{file_name!r} resolves to {resolved}, outside the images folder {base}; "
                               f"refused (set data.allow_outside_images=true to allow it)")
        return None
    return path


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
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(is_number(v) for v in value):
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

    Polygons with fewer than 3 points, an odd coordinate count, non-numbers or a vertex far outside the
    image (``records.POLYGON_MARGIN``) are reported one by one and dropped; if none is left the
    annotation is unusable. An RLE dict must have the image's size and runs that sum to it; compressed
    ``counts`` given as bytes become an ASCII str (records stay JSON-serializable). In ``thorough`` mode
    a self-intersecting polygon is noted (kept: pycocotools fills it by the even-odd rule).
    """
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
        error = polygon_error(polygon, height, width)
        if error:
            problems.report(f"{where}[{i}]", error)
            continue
        if problems.thorough and polygon_self_intersects(polygon):
            problems.note(f"{where}[{i}]", "self-intersecting polygon (filled by the even-odd rule: "
                                           "where its loops overlap is left out)")
        polygons.append(list(map(float, polygon)))
    return polygons or None


def build_annotation(
    *,
    box,
    box_format: str,
    segmentation,
    source_category,
    height: int,
    width: int,
    where: str,
    problems,
    category_map,
    table_name: str = "the class table",
    recompute_boxes: bool = False,
    clip_boxes: bool = True,
    iscrowd=0,
    box_field: str = "bbox",
    **extra,
):
    """Turn one source annotation into a record annotation, or report why not and return None.

    The steps every adapter shares, in order: map the source category (dropped -> None silently, since
    dropping is configuration; unknown -> reported), clean the segmentation and the box (see
    ``problems.clean_segmentation`` / ``clean_box``), and optionally replace the box by the whole-pixel
    box of the rasterized mask (``recompute_boxes``, the usual fix for ModaNet's boxes that disagree
    with their polygons). ``box`` may be None when the source has no box: the mask's box is used.

    Args:
        where: file and annotation for messages, e.g. ``"modanet.json: annotations[17]"``.
        box_field: the source's name of the box field, for messages (DeepFashion2: bounding_box).
        problems: a ``maskrcnn.data.problems.Problems``.
        category_map: a ``maskrcnn.data.categories.CategoryMap``.
        extra: further keys copied into the annotation (``id``, ``attribute_ids``, ...).

    Returns:
        ``{"bbox", "category_id", "segmentation", "iscrowd", **extra}`` or None.
    """
    if isinstance(source_category, bool) or not isinstance(source_category, numbers.Integral):
        problems.report(f"{where}.category_id", f"expected an int, got {source_category!r}")
        return None
    if source_category in category_map.dropped:
        return None
    label = category_map.labels.get(int(source_category))
    if label is None:
        problems.report(f"{where}.category_id", f"unknown category {source_category} (not in {table_name})")
        return None
    if iscrowd not in (0, 1):
        problems.report(f"{where}.iscrowd", f"expected 0 or 1, got {iscrowd!r}")
        return None
    segmentation = clean_segmentation(segmentation, height, width, f"{where}.segmentation", problems)
    if segmentation is None:
        return None
    if recompute_boxes:
        box = None  # the source box is replaced, so its defects do not matter
    elif box is not None:
        box = clean_box(box, box_format, height, width, f"{where}.{box_field}", problems, clip=clip_boxes)
        if box is None:
            return None
    if box is None:
        box = segmentation_box(segmentation, height, width, where)
        if box[2] <= box[0]:
            problems.report(f"{where}.segmentation", "empty mask (no pixel inside the image)")
            return None
    return {"bbox": box, "category_id": int(label), "segmentation": segmentation,
            "iscrowd": int(iscrowd), **extra}

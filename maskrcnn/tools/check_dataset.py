"""Dataset checker: decode every image and annotation, report each problem by file and field, summarize.

    python -m maskrcnn.tools.check_dataset --config configs/modanet_r50_fpn.yaml [--split train]
    python -m maskrcnn.tools.check_dataset --format coco --annotations a.json --images imgs/ --show 8

Problems found (each named by the file and the field, e.g.
``modanet.json: annotations[17].bbox: expected 4 numbers, got 3``):

- from the annotation file, by the format's adapter (``maskrcnn.data``): malformed entries, duplicate
  image or annotation ids, annotations of unknown images, degenerate boxes, out-of-image boxes,
  polygons with fewer than 3 points or with vertices far outside the image, RLEs of the wrong size or
  whose runs do not add up to it, corrupted (e.g. non-ASCII) RLE strings, unknown categories, category
  names that disagree with the class table (this stops the check: exit 2), exact duplicate annotations
  (``maskrcnn.data.duplicates``), file names that resolve outside the images folder;
- here, per record: a missing or undecodable image, an image whose size differs from the annotation's
  ``height``/``width``, a mask with no pixel;
- with an attribute table (``data.attributes`` in the config, or ``--attributes``): each attribute id that
  annotations carry but the table does not list, with its count and an example annotation. After a
  ``data.attribute_supercategories`` selection the ids of the other supercategories are expected (the
  model leaves them out); they are listed as a note, not as problems.

Warnings that leave the data usable are listed apart and do not change the exit status: self-intersecting
polygons (with their count). An empty split (no image) cannot be checked: exit 2.

It then prints the instances and images per class, the number of images without instances, and
instance-size statistics (mask area, with COCO's small < 32^2 <= medium < 96^2 <= large buckets), and each
class's image frequency with the repeat factor it gets at ``--repeat-threshold`` (``maskrcnn/data/samplers.py``).
``--show N`` writes ground-truth overlays (masks, boxes, tags, legend) of the first N images with
instances, decoded by the training decoder. The exit status is 1 when a problem was found, 2 when the dataset cannot be read at all
(missing annotation file, bad config), 0 otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from pycocotools import mask as coco_mask

from maskrcnn.data.attributes import attribute_table_for, select_supercategories, unknown_attribute_ids
from maskrcnn.data.load import load_dataset, split_options
from maskrcnn.data.problems import Problem, Problems
from maskrcnn.data.dataset import decode_image
from maskrcnn.data.records import RecordSet, segmentation_to_rle
from maskrcnn.data.samplers import format_repeat_factors

__all__ = ["CheckReport", "check_attributes", "check_dataset", "check_records", "format_report", "write_overlays",
           "main"]

SMALL_AREA, MEDIUM_AREA = 32 ** 2, 96 ** 2  # COCO's instance-size buckets


@dataclass
class CheckReport:
    """What the checker found for one split.

    ``problems`` are :class:`maskrcnn.data.problems.Problem` (``where``, ``message``); ``per_class`` is
    a list of ``(label, name, instances, images)``; ``areas`` holds every instance's mask area in
    pixels; ``box_mask_disagreements`` counts boxes whose IoU with their mask's box is below 0.9
    (reported as a note: ``data.recompute_boxes`` fixes them). ``attribute_table`` describes the attribute
    table checked against (empty: none); ``unselected_attributes`` are ``(source id, count, example)`` of
    the ids that a supercategory selection leaves out (expected; unknown ids are in ``problems``).
    """

    source: str
    class_names: list
    problems: list = field(default_factory=list)
    num_images: int = 0
    num_empty_images: int = 0
    num_instances: int = 0
    per_class: list = field(default_factory=list)
    areas: list = field(default_factory=list)
    box_mask_disagreements: int = 0
    notes: list = field(default_factory=list)
    dataset: Optional[RecordSet] = None
    attribute_table: str = ""
    unselected_attributes: list = field(default_factory=list)


def _box_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _check_image(record: dict, problems: Problems) -> None:
    """Missing file, undecodable file, or a size that differs from the annotations.

    The image is decoded by the training decoder (``maskrcnn.data.dataset.decode_image``), so what fails
    here (a truncated file, a decompression bomb) is what training would skip.
    """
    path = record["file_name"]
    where = f"{path} (image_id {record['image_id']})"
    if not os.path.isfile(path):
        problems.report(where, "missing image file")
        return
    try:
        height, width = decode_image(path).shape[:2]  # every pixel, EXIF orientation applied
    except Exception as e:  # Pillow raises several types for broken files
        problems.report(where, f"undecodable image: {e}")
        return
    if (height, width) != (record["height"], record["width"]):
        problems.report(where, f"size mismatch: the image is {width}x{height} (w x h), the annotations "
                               f"say {record['width']}x{record['height']}")


def check_records(dataset: RecordSet, problems: Problems, check_images: bool = True) -> CheckReport:
    """Decode every image (optional) and every segmentation of ``dataset``; gather problems and statistics.

    Masks are checked through their run-length encoding (pycocotools' area and box work on the runs),
    so a 50k-image dataset does not build 265k full-size masks.
    """
    report = CheckReport(dataset.source, list(dataset.class_names), dataset=dataset)
    instances = np.zeros(len(dataset.class_names) + 1, dtype=np.int64)
    images = np.zeros(len(dataset.class_names) + 1, dtype=np.int64)
    for record in dataset.records:
        if check_images:
            _check_image(record, problems)
        report.num_images += 1
        if not record["annotations"]:
            report.num_empty_images += 1
        seen = set()
        for ann in record["annotations"]:
            where = f"{dataset.source}: image_id {record['image_id']}, annotation id {ann.get('id')}"
            try:  # the mask's run-length encoding: area and box without an (H, W) array
                rle = segmentation_to_rle(ann["segmentation"], record["height"], record["width"],
                                          f"{where}.segmentation")
            except ValueError as e:
                problems.report(where, str(e))
                continue
            area = int(coco_mask.area(rle))
            if area == 0:
                problems.report(f"{where}.segmentation", "empty mask (no pixel inside the image)")
                continue
            x, y, w, h = (float(v) for v in coco_mask.toBbox(rle))
            if _box_iou(ann["bbox"], [x, y, x + w, y + h]) < 0.9:
                report.box_mask_disagreements += 1
            report.areas.append(area)
            report.num_instances += 1
            instances[ann["category_id"]] += 1
            seen.add(ann["category_id"])
        for label in seen:
            images[label] += 1
    report.per_class = [(k, name, int(instances[k]), int(images[k]))
                        for k, name in enumerate(dataset.class_names, start=1)]
    report.problems = list(problems.items)
    report.notes = list(problems.notes)
    return report


def _first_annotations(records, ids) -> dict:
    """``{source id: "image_id I, annotation id A"}``: the first annotation carrying each of ``ids``."""
    examples = {}
    for record in records:
        for ann in record["annotations"]:
            for i in ann.get("attribute_ids") or []:
                if i in ids and i not in examples:
                    examples[i] = f"image_id {record['image_id']}, annotation id {ann.get('id')}"
    return examples


def check_attributes(report: CheckReport, attributes: str, annotations, format: str, label_descriptions: str = "",
                     supercategories: Sequence[str] = ()) -> None:
    """Add the attribute ids outside the table that ``data.attributes`` names to ``report`` (module docstring).

    Ids absent from the whole table are problems; ids only left out by the ``supercategories`` selection
    go to ``report.unselected_attributes``. ValueError when the table cannot be read.
    """
    full = attribute_table_for(attributes, annotations, format, label_descriptions)  # the table file, read once
    if full is None:
        return
    table = select_supercategories(full, list(supercategories))
    report.attribute_table = f"{len(table)} attributes of {table.path or attributes}" + (
        f" (supercategories {list(supercategories)} of {len(full)})" if supercategories else "")
    records = report.dataset.records
    counts = unknown_attribute_ids(records, table)
    examples = _first_annotations(records, set(counts))
    in_full = set(full.source_ids)
    for i in sorted(counts):
        if i in in_full:  # listed by the table, outside the chosen supercategories: expected
            report.unselected_attributes.append((i, counts[i], examples[i]))
        else:
            report.problems.append(Problem(f"{report.source}: attribute_ids",
                                           f"attribute id {i} is not in {table.path or attributes} ({counts[i]} "
                                           f"annotation(s), e.g. {examples[i]})"))


def check_dataset(format: str, annotations, images_dir="", check_images: bool = True, attributes: str = "",
                  attribute_supercategories: Sequence[str] = (), **options) -> CheckReport:
    """Load a split with every problem collected (nothing raised, boxes not clipped) and check it.

    ``attributes`` (``data.attributes``: ``"file"`` or a table file) and ``attribute_supercategories`` add
    the attribute check (:func:`check_attributes`).
    """
    problems = Problems("collect", thorough=True)
    options = {**options, "problems": problems, "clip_boxes": False, "strict": False}
    dataset = load_dataset(format, annotations, images_dir, **options)
    report = check_records(dataset, problems, check_images=check_images)
    if attributes:
        check_attributes(report, attributes, annotations, format, options.get("label_descriptions", ""),
                         list(attribute_supercategories))
    return report


def format_report(report: CheckReport, max_problems: int = 200) -> str:
    """The human-readable report: problems, per-class counts, empty images, instance sizes."""
    lines = [f"== {report.source}",
             f"images: {report.num_images}   instances: {report.num_instances}   "
             f"images without instances: {report.num_empty_images}"]
    lines.append(f"problems: {len(report.problems)}")
    for problem in report.problems[:max_problems]:
        lines.append(f"  {problem}")
    if len(report.problems) > max_problems:
        lines.append(f"  ... and {len(report.problems) - max_problems} more")
    lines.append("per class:            label  instances  images  name")
    for label, name, count, image_count in report.per_class:
        lines.append(f"                      {label:5d}  {count:9d}  {image_count:6d}  {name}")
    if report.areas:
        areas = np.array(report.areas)
        small = int((areas < SMALL_AREA).sum())
        medium = int(((areas >= SMALL_AREA) & (areas < MEDIUM_AREA)).sum())
        lines.append(f"instance mask area (pixels): min {areas.min()}  median {np.median(areas):.0f}  "
                     f"mean {areas.mean():.1f}  max {areas.max()}")
        lines.append(f"COCO size buckets: small {small}  medium {medium}  large {len(areas) - small - medium}")
    if report.notes:
        lines.append(f"warnings: {len(report.notes)} (the data stays usable)")
        for note in report.notes[:max_problems]:
            lines.append(f"  {note}")
        if len(report.notes) > max_problems:
            lines.append(f"  ... and {len(report.notes) - max_problems} more")
    if report.attribute_table:
        lines.append(f"attributes: {report.attribute_table}; ids outside it are listed as problems")
    if report.unselected_attributes:
        lines.append(f"note: {len(report.unselected_attributes)} attribute id(s) of supercategories that "
                     f"data.attribute_supercategories leaves out (expected, not an error: the model ignores them)")
        for i, count, example in report.unselected_attributes[:max_problems]:
            lines.append(f"  attribute id {i}: {count} annotation(s), e.g. {example}")
    if report.box_mask_disagreements:
        lines.append(f"note: {report.box_mask_disagreements} boxes disagree with their masks (IoU < 0.9); "
                     f"data.recompute_boxes=true replaces them by the masks' boxes")
    return "\n".join(lines)


def write_overlays(dataset: RecordSet, out_dir: str, count: int) -> list:
    """Ground-truth overlays of the first ``count`` images with instances; returns the written paths.

    Images are decoded as training decodes them (16-bit images scaled, transparency composited on white).
    """
    from maskrcnn.visualize import draw_record

    os.makedirs(out_dir, exist_ok=True)
    written = []
    for record in dataset.records:
        if len(written) >= count:
            break
        if not record["annotations"]:
            continue
        try:
            picture = draw_record(record, dataset.class_names, image=decode_image(record["file_name"]))
        except Exception:  # a broken image is already in the problem list
            continue
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        path = os.path.join(out_dir, f"{record['image_id']}_{stem}.png")
        picture.save(path)
        written.append(path)
    return written


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m maskrcnn.tools.check_dataset",
        description="Decode every image and annotation of a dataset and report problems by file and field.")
    parser.add_argument("--config", help="config file whose data section names the dataset")
    parser.add_argument("--split", choices=("train", "val", "all"), default="all",
                        help="with --config: which split to check (default: every split that is set)")
    parser.add_argument("--format", choices=("coco", "imaterialist", "deepfashion2"),
                        help="without --config: the annotation format")
    parser.add_argument("--annotations", help="without --config: annotation file (or DeepFashion2 annos/ folder)")
    parser.add_argument("--images", default="", help="without --config: the images folder")
    parser.add_argument("--categories", default="", help="class-table file or built-in name (optional)")
    parser.add_argument("--attributes", default="", metavar="TABLE",
                        help="without --config: check attribute ids against this table ('file' = the "
                             "annotation file's own list, or a table file; data.attributes)")
    parser.add_argument("--show", type=int, default=0, metavar="N", help="write N ground-truth overlays")
    parser.add_argument("--out", default="output/check_dataset", help="folder for the --show overlays")
    parser.add_argument("--no-images", action="store_true", help="skip decoding the image files (faster)")
    parser.add_argument("--max-problems", type=int, default=200, help="list at most this many problems")
    parser.add_argument("--repeat-threshold", type=float, default=0.1, metavar="T",
                        help="print each class's image frequency and repeat factor at this "
                             "dataloader.repeat_factor_threshold (default 0.1)")
    parser.add_argument("overrides", nargs="*", help="with --config: dotted key=value overrides")
    args = parser.parse_args(argv)
    if bool(args.config) == bool(args.annotations):
        parser.error("give either --config or --format/--annotations/--images")
    if args.annotations and not args.format:
        parser.error("--annotations needs --format")
    return args


def _jobs(args: argparse.Namespace) -> list:
    """``(name, format, annotations, images_dir, options)`` for each split to check."""
    if not args.config:
        options = {"categories": args.categories or None, "attributes": args.attributes}
        return [("", args.format, args.annotations, args.images, options)]
    from maskrcnn.config import load_config

    cfg = load_config(args.config, args.overrides)
    splits = ("train", "val") if args.split == "all" else (args.split,)
    jobs = []
    for split in splits:
        if args.split == "all" and not cfg.data[f"{split}_annotations"]:
            continue
        options = split_options(cfg.data, split)
        for key in ("clip_boxes", "strict"):
            options.pop(key)
        options["attributes"] = cfg.data.attributes
        options["attribute_supercategories"] = list(cfg.data.attribute_supercategories)
        jobs.append((split, options.pop("format"), options.pop("annotations"), options.pop("images_dir"), options))
    if not jobs:
        raise ValueError(f"{args.config}: data.train_annotations and data.val_annotations are both empty")
    return jobs


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the checker; returns 0 (no problem), 1 (problems found) or 2 (cannot read the dataset)."""
    args = _parse_args(argv)
    found = 0
    try:
        jobs = _jobs(args)
    except (ValueError, FileNotFoundError) as e:  # config errors, unset annotation paths
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, format, annotations, images_dir, options in jobs:
        try:
            report = check_dataset(format, annotations, images_dir, check_images=not args.no_images, **options)
        except (ValueError, FileNotFoundError) as e:  # a file that cannot be read at all
            print(f"error: {e}", file=sys.stderr)
            return 2
        if report.num_images == 0:
            print(f"error: {annotations}: the {split + ' ' if split else ''}split has no images; "
                  f"nothing to train or evaluate on", file=sys.stderr)
            return 2
        print(format_report(report, args.max_problems))
        print(format_repeat_factors(report.dataset.records, report.class_names, args.repeat_threshold))
        found += len(report.problems)
        if args.show:
            out_dir = os.path.join(args.out, split) if split else args.out
            paths = write_overlays(report.dataset, out_dir, args.show)
            print(f"wrote {len(paths)} overlays to {out_dir}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

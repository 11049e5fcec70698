"""COCO evaluation of a detector: box and mask AP, per-class AP, precision-recall curves, confusion matrix.

The metrics are pycocotools' ``COCOeval`` (Lin et al., 2014, "Microsoft COCO", Sec. "Evaluation"):
AP is the precision averaged over 101 recall points (0, 0.01, ..., 1; precision interpolated as the
best precision at any higher recall) and over IoU thresholds 0.50, 0.55, ..., 0.95; AP50 and AP75 use
one threshold; APs/APm/APl keep objects of area < 32^2, 32^2..96^2, > 96^2 pixels; at most 100
detections per image. ``-1`` from COCOeval (nothing to measure, e.g. no large objects) is reported as
``None``.

One evaluation, in a single process or across ranks:

    encoded = [encode_prediction({**output, "image_id": id}) for each image]   # on each rank
    encoded = gather_predictions(encoded)                                      # on every rank
    if is_main_process():
        report = evaluate(ground_truth, encoded, class_names, output_dir="out/eval")
        print(format_report(report))

``ground_truth`` is a COCO dict or a list of records (see ``coco_format``). ``report`` is plain data:

    {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
              "per_class": [{"class_id", "name", "num_gt", "AP", "AP50", "AP75"}, ...],
              "pr_curve": {"iou": 0.5, "recall": [101], "precision": {name: [101] or None}},
              "summary": COCOeval's printed summary},
     "segm": {... the same for masks ...},
     "confusion": {"labels": ["background", names...], "matrix": [[...]], "iou_type", "iou_thresh",
                   "score_thresh"},
     "num_images": int, "num_predictions": int,
     "num_images_total": int, "skipped_images": [{"image_id", "file_name", "reason"}, ...]}

Images that could not be decoded (``skipped``) are taken out of the ground truth before scoring, so
their objects do not count as misses, and the report says so: ``evaluated on N of M images; skipped:
FILE (reason)``.

``write_report`` saves it as ``evaluation.json``, ``per_class_{type}.csv``, ``pr_curve_{type}.csv``,
``confusion_matrix.csv`` and, unless turned off, PNG pictures of the curves and the matrix.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn.engine import plots
from maskrcnn.engine.coco_format import coco_results, encode_prediction, prepare_coco_ground_truth, records_to_coco
from maskrcnn.engine.confusion import confusion_matrix
from maskrcnn.engine.distributed import all_gather_object

IOU_TYPES = ("bbox", "segm")
# The order of COCOeval.stats.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def gather_predictions(predictions: Sequence[Mapping]) -> List[dict]:
    """Every rank's predictions on every rank, one per image, sorted by ``image_id``.

    Call it on every rank (a rank with no images passes ``[]``). Encode first (``encode_prediction``):
    the gathered objects are pickled, and RLEs are far smaller than probability maps. An image seen by
    several ranks (a distributed sampler pads the last batch by repeating images) is kept once.
    """
    merged: Dict[int, dict] = {}
    for rank_predictions in all_gather_object([encode_prediction(p) for p in predictions]):
        for pred in rank_predictions:
            merged.setdefault(pred["image_id"], pred)
    return [merged[k] for k in sorted(merged)]


def _coco_from_dict(dataset: dict) -> COCO:
    """A pycocotools ``COCO`` built from an in-memory dict, without its progress prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _detections(gt: COCO, results: List[dict]) -> COCO:
    """The detections as a ``COCO`` object (``COCO.loadRes`` fails on an empty list; this does not)."""
    annotations = []
    for index, entry in enumerate(results):
        annotation = dict(entry, id=index + 1, iscrowd=0)
        annotations.append(annotation)
    dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
               "annotations": annotations}
    return _coco_from_dict(dataset)


def _as_metric(value: float) -> Optional[float]:
    return None if value < 0 else float(value)


def _mean_valid(values: np.ndarray) -> Optional[float]:
    """Mean of the entries > -1 (COCOeval marks 'no ground truth' with -1); ``None`` if there are none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def coco_evaluate(gt: dict, encoded: Sequence[Mapping], iou_type: str, class_names: Sequence[str]) -> dict:
    """Run COCOeval for one ``iou_type`` on a prepared ground-truth dict; return its part of the report."""
    if iou_type == "segm":
        missing = [a["id"] for a in gt["annotations"] if not a.get("segmentation")]
        if missing:
            raise ValueError(
                f"segm evaluation: ground-truth annotations {missing[:5]} have no segmentation; "
                "evaluate with iou_types=['bbox']"
            )
    coco_gt = _coco_from_dict(copy.deepcopy(gt))  # COCOeval rewrites segmentations and adds keys in place
    coco_dt = _detections(coco_gt, coco_results(encoded, iou_type))
    evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    summary = "\n".join(line for line in printed.getvalue().splitlines() if line.startswith(" Average"))
    part: Dict[str, Any] = {name: _as_metric(v) for name, v in zip(STAT_NAMES, evaluator.stats)}

    # precision: (T=10 IoUs, R=101 recalls, K classes, A=4 areas [all, s, m, l], M=3 maxDets [1, 10, 100])
    precision = evaluator.eval["precision"]
    cat_ids = evaluator.params.catIds  # sorted category ids, i.e. 1..K
    num_gt = {c: 0 for c in cat_ids}
    for ann in gt["annotations"]:
        if not ann["iscrowd"]:
            num_gt[ann["category_id"]] += 1
    per_class, curves = [], {}
    for k, cat_id in enumerate(cat_ids):
        name = str(class_names[cat_id - 1])
        p = precision[:, :, k, 0, -1]  # (T, R): all areas, 100 detections
        per_class.append({"class_id": int(cat_id), "name": name, "num_gt": num_gt[cat_id],
                          "AP": _mean_valid(p), "AP50": _mean_valid(p[0]), "AP75": _mean_valid(p[5])})
        curves[name] = p[0].tolist() if (p[0] > -1).any() else None
    part["per_class"] = per_class
    part["pr_curve"] = {"iou": 0.5, "recall": evaluator.params.recThrs.tolist(), "precision": curves}
    part["summary"] = summary
    return part


def evaluate(
    ground_truth: Union[Mapping, Sequence[Mapping]],
    predictions: Sequence[Mapping],
    class_names: Sequence[str],
    iou_types: Sequence[str] = IOU_TYPES,
    output_dir: Optional[str] = None,
    pictures: bool = True,
    mask_threshold: float = 0.5,
    confusion_iou_thresh: float = 0.5,
    confusion_score_thresh: float = 0.5,
    skipped: Sequence[Mapping] = (),
) -> dict:
    """COCO AP for each of ``iou_types``, per-class AP, PR curves and the confusion matrix (see module doc).

    Args:
        ground_truth: a COCO dict (category ids 1..K) or a list of records.
        predictions: per-image model outputs with ``image_id`` (masks as probabilities, thresholded at
            ``mask_threshold``) or already encoded ones. Images without an entry have no detections.
        class_names: K names; ``class_names[i]`` is label ``i + 1``.
        output_dir: when given, ``write_report`` saves the files there.
        skipped: images that could not be decoded, ``{"image_id", "file_name", "reason"}`` each: removed
            from the ground truth (with their objects) and listed in the report.
    Returns the report dict. The confusion matrix uses mask IoU when ``'segm'`` is evaluated, else box IoU.
    """
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_types: {iou_type!r} is not one of {IOU_TYPES}")
    if isinstance(ground_truth, Mapping):
        gt = prepare_coco_ground_truth(ground_truth)
    else:
        gt = prepare_coco_ground_truth(records_to_coco(ground_truth, class_names))
    if len(gt["categories"]) != len(class_names):
        raise ValueError(f"class_names: {len(class_names)} names for {len(gt['categories'])} ground-truth categories")
    num_total = len(gt["images"])
    gt = _without_images(gt, {int(s["image_id"]) for s in skipped})
    encoded = [encode_prediction(p, mask_threshold) for p in predictions]
    _check_predictions(gt, encoded, len(class_names))

    report: Dict[str, Any] = {"num_images": len(gt["images"]), "num_predictions": sum(len(p["labels"]) for p in encoded),
                              "num_images_total": num_total,
                              "skipped_images": [{"image_id": int(s["image_id"]), "file_name": str(s["file_name"]),
                                                  "reason": str(s["reason"])} for s in skipped]}
    for iou_type in iou_types:
        report[iou_type] = coco_evaluate(gt, encoded, iou_type, class_names)
    matrix_type = "segm" if "segm" in iou_types else "bbox"
    matrix = confusion_matrix(gt, encoded, len(class_names), confusion_iou_thresh, confusion_score_thresh, matrix_type)
    report["confusion"] = {"labels": ["background"] + [str(n) for n in class_names], "matrix": matrix.tolist(),
                           "iou_type": matrix_type, "iou_thresh": confusion_iou_thresh,
                           "score_thresh": confusion_score_thresh}
    if output_dir is not None:
        write_report(report, output_dir, pictures=pictures)
    return report


def _without_images(gt: dict, image_ids: set) -> dict:
    """The ground truth without the images ``image_ids`` and their annotations (a new dict)."""
    if not image_ids:
        return gt
    known = {image["id"] for image in gt["images"]}
    unknown = sorted(image_ids - known)
    if unknown:
        raise ValueError(f"skipped: image ids {unknown[:5]} are not in the ground truth")
    out = dict(gt)
    out["images"] = [image for image in gt["images"] if image["id"] not in image_ids]
    out["annotations"] = [ann for ann in gt["annotations"] if ann["image_id"] not in image_ids]
    return out


def images_line(report: Mapping) -> str:
    """``evaluated on N of M images`` and, when images were skipped, ``; skipped: FILE (reason), ...``."""
    total = report.get("num_images_total", report["num_images"])
    line = f"evaluated on {report['num_images']} of {total} images"
    skipped = report.get("skipped_images") or []
    if skipped:
        line += "; skipped: " + ", ".join(f"{s['file_name']} ({s['reason']})" for s in skipped)
    return line


def _check_predictions(gt: dict, encoded: Sequence[Mapping], num_classes: int) -> None:
    """Every prediction must name a known image, use labels 1..K, and have masks of the image's size."""
    images = {image["id"]: image for image in gt["images"]}
    for pred in encoded:
        image = images.get(pred["image_id"])
        if image is None:
            raise ValueError(f"prediction names image_id {pred['image_id']}, which is not in the ground truth")
        bad = [label for label in pred["labels"] if not 1 <= label <= num_classes]
        if bad:
            raise ValueError(f"prediction for image {pred['image_id']}: labels {bad[:5]} outside 1..{num_classes}")
        for rle in pred["masks"] or []:
            if list(rle["size"]) != [image["height"], image["width"]]:
                raise ValueError(
                    f"prediction for image {pred['image_id']}: a mask of size {list(rle['size'])} on an image of "
                    f"height x width {[image['height'], image['width']]} (masks must be in original-image pixels)"
                )


def _fmt(value: Optional[float]) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def format_report(report: Mapping) -> str:
    """The image count (with any skipped image), the headline numbers and the per-class table, for the log."""
    lines = [images_line(report)]
    for iou_type in IOU_TYPES:
        if iou_type not in report:
            continue
        part = report[iou_type]
        lines.append(f"{iou_type}: " + "  ".join(f"{n} {_fmt(part[n])}" for n in STAT_NAMES[:6]))
    for iou_type in IOU_TYPES:
        if iou_type not in report:
            continue
        width = max(len("class"), *(len(row["name"]) for row in report[iou_type]["per_class"]))
        lines.append(f"per-class {iou_type} AP:")
        lines.append(f"  {'class':<{width}}  {'#gt':>5}  {'AP':>5}  {'AP50':>5}  {'AP75':>5}")
        for row in report[iou_type]["per_class"]:
            lines.append(f"  {row['name']:<{width}}  {row['num_gt']:>5}  {_fmt(row['AP'])}  "
                         f"{_fmt(row['AP50'])}  {_fmt(row['AP75'])}")
    return "\n".join(lines)


def write_report(report: Mapping, output_dir: str, pictures: bool = True) -> List[str]:
    """Save the report as JSON and CSV files (and PNG pictures when ``pictures``); return the paths."""
    os.makedirs(output_dir, exist_ok=True)
    written = []

    def path(name: str) -> str:
        written.append(os.path.join(output_dir, name))
        return written[-1]

    with open(path("evaluation.json"), "w") as f:
        json.dump(report, f, indent=1)
    for iou_type in IOU_TYPES:
        if iou_type not in report:
            continue
        part = report[iou_type]
        with open(path(f"per_class_{iou_type}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class_id", "name", "num_gt", "AP", "AP50", "AP75"])
            for row in part["per_class"]:
                writer.writerow([row["class_id"], row["name"], row["num_gt"]] +
                                ["" if row[k] is None else f"{row[k]:.6f}" for k in ("AP", "AP50", "AP75")])
        curve = part["pr_curve"]
        names = [n for n, values in curve["precision"].items() if values is not None]
        with open(path(f"pr_curve_{iou_type}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["recall"] + names)
            for r, recall in enumerate(curve["recall"]):
                writer.writerow([f"{recall:.2f}"] + [f"{curve['precision'][n][r]:.6f}" for n in names])
        if pictures:
            series = [(n, curve["recall"], curve["precision"][n]) for n in names]
            plots.line_chart(path(f"pr_curve_{iou_type}.png"), series, title=f"{iou_type} precision-recall at IoU 0.5",
                             xlabel="recall", ylabel="precision", x_range=(0, 1), y_range=(0, 1.02))
    confusion = report["confusion"]
    with open(path("confusion_matrix.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted"] + confusion["labels"])
        for label, row in zip(confusion["labels"], confusion["matrix"]):
            writer.writerow([label] + row)
    if pictures:
        plots.heatmap(path("confusion_matrix.png"), np.array(confusion["matrix"]), confusion["labels"],
                      confusion["labels"], title=f"confusion at {confusion['iou_type']} IoU {confusion['iou_thresh']}")
    return written

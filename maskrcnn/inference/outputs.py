"""What inference writes: a JSON per image, a COCO results file, overlay pictures and product crops.

All of them come from :class:`maskrcnn.inference.predictor.FileResult` (instances in original pixels):

``{name}.json`` (:func:`image_json`), one per image, self-describing::

    {"file_name": "look.jpg", "path": "photos/look.jpg", "height": 600, "width": 400,
     "weights": "model.pth", "class_names": ["bag", ...], "score_thresh": 0.5, "mask_threshold": 0.5,
     "instances": [{"box": [x1, y1, x2, y2], "tag": "dress", "category_id": 4, "score": 0.97, "area": 5012,
                    "segmentation": {"size": [600, 400], "counts": "..."}}, ...]}

``coco_results.json`` (:func:`coco_results`): the COCO results list that ``pycocotools.COCO.loadRes`` reads,
boxes as ``[x, y, w, h]``, with the class name and file name beside the ids so the file explains itself::

    [{"image_id": 1, "file_name": "look.jpg", "category_id": 4, "category_name": "dress", "score": 0.97,
      "bbox": [x, y, w, h], "segmentation": {"size": [600, 400], "counts": "..."}}, ...]

``image_id`` is the image's 1-based position in the input list (unreadable files keep their number).

With an attribute head (``model.num_attributes``) each instance of the JSON has ``"attributes": [{"name",
"score"}]`` (those scoring at least ``infer.attribute_thresh``, best first), and each COCO results entry
carries them as Fashionpedia's evaluation reads them: ``"attribute_ids"``, the dataset's own ids
(``model.attribute_source_ids``, e.g. Fashionpedia's 0..293), and ``"attribute_scores"`` in the same order::

    {..., "category_name": "dress", "attribute_ids": [115, 136], "attribute_scores": [0.91, 0.64]}

Overlays (:func:`draw_overlay`): ``maskrcnn.visualize.draw_instances`` -- masks in their class colours, boxes,
``"tag score"`` labels (``"tag score | attribute, attribute"`` with an attribute head) and a legend -- scaled
down when the image's longer side exceeds ``max_side``.

Crops (:func:`instance_crops`): each instance cut out at the whole-pixel bounds of its mask, as an RGBA picture
whose alpha is the mask (transparent background, a product image). A crop of an image that was shrunk for
inference (``reduction > 1``) is cut from the shrunk image.
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from maskrcnn.inference.predictor import FileResult, Instance
from maskrcnn.visualize import draw_instances, to_pil_image


def image_json(result: FileResult, class_names: Sequence[str], weights: str, score_thresh: float,
               mask_threshold: float) -> dict:
    """The per-image JSON document (module docstring) of a successfully read file."""
    return {
        "file_name": os.path.basename(result.path), "path": result.path,
        "height": result.height, "width": result.width,
        "weights": weights, "class_names": list(class_names),
        "score_thresh": score_thresh, "mask_threshold": mask_threshold,
        "instances": [instance.to_dict() for instance in result.instances],
    }


def write_json(path: str, data) -> str:
    """Write ``data`` as JSON to ``path`` (parent folders created); return ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def attribute_source_ids(attribute_names: Sequence[str], source_ids: Sequence[int]) -> Dict[str, int]:
    """``{attribute name: source id}`` from ``model.attribute_names`` and ``model.attribute_source_ids``.

    Empty ``source_ids`` (a config written before they were stored) give the 0-based positions. ValueError
    naming the keys when the lists differ in length or a name repeats (it would not say which id is meant).
    """
    names = list(attribute_names)
    ids = [int(i) for i in source_ids] or list(range(len(names)))
    if len(ids) != len(names):
        raise ValueError(f"model.attribute_source_ids has {len(ids)} entries but model.attribute_names "
                         f"{len(names)}: they must list the same attributes")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"model.attribute_names: {repeated} appear more than once")
    return dict(zip(names, ids))


def coco_results(result: FileResult, image_id: int, attribute_ids: Optional[Mapping[str, int]] = None) -> List[dict]:
    """The COCO results entries (module docstring) of one image.

    ``attribute_ids``: :func:`attribute_source_ids`, needed when the instances carry attributes.
    """
    entries = []
    for instance in result.instances:
        x1, y1, x2, y2 = instance.box
        entry = {
            "image_id": int(image_id), "file_name": os.path.basename(result.path),
            "category_id": instance.label, "category_name": instance.tag, "score": instance.score,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": dict(instance.rle),
        }
        if instance.attributes is not None:  # already cut at infer.attribute_thresh, best first
            if attribute_ids is None:
                raise ValueError("coco_results: the instances carry attributes; pass attribute_ids")
            entry["attribute_ids"] = [attribute_ids[a["name"]] for a in instance.attributes]
            entry["attribute_scores"] = [float(a["score"]) for a in instance.attributes]
        entries.append(entry)
    return entries


def _scaled_masks(instances: Sequence[Instance], size: Tuple[int, int]) -> np.ndarray:
    """``(N, h, w)`` bool masks resized (nearest neighbour) to ``size = (w, h)`` when it differs."""
    masks = []
    for instance in instances:
        mask = instance.mask
        if (mask.shape[1], mask.shape[0]) != size:
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
        masks.append(mask)
    return np.stack(masks) if masks else np.zeros((0, size[1], size[0]), dtype=bool)


def draw_overlay(result: FileResult, class_names: Sequence[str], max_side: int = 0) -> Image.Image:
    """The overlay picture of one image; longer side at most ``max_side`` pixels (0 = original size)."""
    scale = 1.0
    if max_side > 0 and max(result.height, result.width) > max_side:
        scale = max_side / max(result.height, result.width)
    size = (max(1, round(result.width * scale)), max(1, round(result.height * scale)))  # (w, h)
    picture = to_pil_image(result.image)
    if picture.size != size:  # shrunk for display, or decoded at a reduced size
        picture = picture.resize(size, Image.BILINEAR)
    instances = result.instances
    boxes = np.array([i.box for i in instances], dtype=np.float64).reshape(-1, 4)
    boxes *= np.array([size[0] / result.width, size[1] / result.height] * 2)
    attributes = None
    if any(i.attributes is not None for i in instances):  # a model with an attribute head
        attributes = [[a["name"] for a in i.attributes or []] for i in instances]
    return draw_instances(picture, boxes, [i.label for i in instances], masks=_scaled_masks(instances, size),
                          scores=[i.score for i in instances], class_names=class_names, attributes=attributes)


def _safe(text: str) -> str:
    """A tag as a file-name part: ``"shirt, blouse"`` -> ``"shirt_blouse"``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_") or "item"


def instance_crops(result: FileResult) -> List[Tuple[str, Image.Image]]:
    """``(file name, RGBA crop)`` per instance with a non-empty mask: ``{name}_{k:02d}_{tag}.png``, k from 0."""
    picture = np.asarray(to_pil_image(result.image))  # (h, w, 3) uint8
    height, width = picture.shape[:2]
    crops = []
    for k, instance in enumerate(result.instances):
        mask = instance.mask
        if mask.shape != (height, width):  # the image was shrunk for inference: shrink the mask alike
            mask = _scaled_masks([instance], (width, height))[0]
        rows, cols = np.where(mask)
        if rows.size == 0:
            continue
        y1, y2, x1, x2 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1  # whole-pixel mask bounds
        alpha = mask[y1:y2, x1:x2].astype(np.uint8) * 255
        rgba = np.concatenate([picture[y1:y2, x1:x2], alpha[:, :, None]], axis=2)  # (h', w', 3) + (h', w', 1)
        crops.append((f"{result.name}_{k:02d}_{_safe(instance.tag)}.png", Image.fromarray(rgba, "RGBA")))
    return crops


def write_outputs(result: FileResult, out: str, class_names: Sequence[str], weights: str, score_thresh: float,
                  mask_threshold: float, per_image_json: bool = True, overlays: bool = True, crops: bool = False,
                  overlay_max_side: int = 0) -> List[str]:
    """Write the chosen per-image outputs of ``result`` under ``out``; return the paths written.

    Layout: ``{out}/json/{name}.json``, ``{out}/overlays/{name}.png``, ``{out}/crops/{name}_{k}_{tag}.png``.
    """
    written = []
    if per_image_json:
        data = image_json(result, class_names, weights, score_thresh, mask_threshold)
        written.append(write_json(os.path.join(out, "json", f"{result.name}.json"), data))
    if overlays:
        os.makedirs(os.path.join(out, "overlays"), exist_ok=True)
        path = os.path.join(out, "overlays", f"{result.name}.png")
        draw_overlay(result, class_names, overlay_max_side).save(path)
        written.append(path)
    if crops:
        os.makedirs(os.path.join(out, "crops"), exist_ok=True)
        for file_name, crop in instance_crops(result):
            path = os.path.join(out, "crops", file_name)
            crop.save(path)
            written.append(path)
    return written


def read_image_json(path: str) -> Tuple[dict, List[Instance]]:
    """Read a per-image JSON back: ``(document, instances)``."""
    with open(path) as f:
        data = json.load(f)
    instances = [Instance(box=tuple(entry["box"]), label=entry["category_id"], tag=entry["tag"], score=entry["score"],
                          rle=entry["segmentation"]) for entry in data["instances"]]
    return data, instances


def summary_line(results: Sequence[FileResult]) -> str:
    """``"12 images, 31 instances; 1 file could not be read"`` for the end of a run."""
    done = [r for r in results if r.error is None]
    line = f"{len(done)} image(s), {sum(len(r.instances) for r in done)} instance(s)"
    failed = len(results) - len(done)
    return line + (f"; {failed} file(s) could not be read" if failed else "")

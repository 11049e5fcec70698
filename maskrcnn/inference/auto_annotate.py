"""Auto-annotation: predictions written as a COCO instance dataset, ready for human correction and training.

    python infer.py --weights model.pth crawled/ --out runs/crawl --as-dataset datasets/crawl --score-thresh 0.7

writes

    datasets/crawl/images/<file>          each readable input, copied byte for byte (EXIF and all)
    datasets/crawl/instances.json         COCO instances: images, annotations, categories

which the project's loaders read like any COCO-style set::

    load_records("coco", "datasets/crawl/instances.json", "datasets/crawl/images")
    python -m maskrcnn.tools.check_dataset --format coco --annotations datasets/crawl/instances.json \\
        --images datasets/crawl/images

and annotation tools that speak COCO (CVAT, Label Studio, ...) can import for correction.

Conventions. Images are copied unchanged, so the loaders apply the same EXIF orientation the predictor
applied, and ``height``/``width`` are the oriented size (what ``read_image_size`` reports). A copy keeps the
input's file name; a second input with the same name gets ``_2``, ``_3``... before the extension. Category ids
are the model's labels 1..K with the checkpoint's class names, in label order. Image ids are the inputs'
1-based positions (as in ``coco_results.json``), so an unreadable input leaves a gap. Each annotation holds the
predicted box (``[x, y, w, h]``, clipped to the image), the mask as compressed RLE, ``area`` = mask pixels,
``iscrowd`` 0 and, as an extra field the loaders ignore, the ``score``, so a reviewer can sort by confidence.
Instances whose mask is empty at the mask threshold are left out (a mask with no pixel is a broken annotation
to the dataset checker). Images with no instance are kept: they are negatives, or objects to annotate by hand.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import List, Sequence

from maskrcnn.inference.predictor import FileResult


class DatasetWriter:
    """Collects results, copies their images, and writes ``instances.json`` on :meth:`close`.

    Args:
        folder: the dataset folder (created; an existing ``instances.json`` there is replaced).
        class_names: the checkpoint's class names; category ``k`` is ``class_names[k - 1]``.
    """

    ANNOTATIONS_FILE = "instances.json"
    IMAGES_FOLDER = "images"

    def __init__(self, folder: str, class_names: Sequence[str]):
        self.folder = folder
        self.class_names = list(class_names)
        self.images: List[dict] = []
        self.annotations: List[dict] = []
        self.skipped_empty_masks = 0
        self._used_names = set()
        os.makedirs(os.path.join(folder, self.IMAGES_FOLDER), exist_ok=True)

    def _file_name(self, path: str) -> str:
        """The input's base name, made unique within the dataset (``look.jpg``, ``look_2.jpg``...)."""
        stem, extension = os.path.splitext(os.path.basename(path))
        candidate, count = stem + extension, 1
        while candidate in self._used_names:
            count += 1
            candidate = f"{stem}_{count}{extension}"
        self._used_names.add(candidate)
        return candidate

    def add(self, result: FileResult, image_id: int) -> None:
        """Copy the image of a successfully read ``result`` and record its instances under ``image_id``
        (infer.py passes the input's 1-based position, the id its COCO results file uses too)."""
        if result.error is not None:
            raise ValueError(f"{result.path}: an unreadable file cannot join the dataset ({result.error})")
        if any(image["id"] == image_id for image in self.images):
            raise ValueError(f"image_id {image_id}: already used by another image of the dataset")
        file_name = self._file_name(result.path)
        shutil.copyfile(result.path, os.path.join(self.folder, self.IMAGES_FOLDER, file_name))
        self.images.append({"id": image_id, "file_name": file_name, "height": result.height, "width": result.width})
        for instance in result.instances:
            area = instance.area
            if area == 0:
                self.skipped_empty_masks += 1
                continue
            # Clipped to the image: the box scaled back from the resized image can overshoot by float rounding.
            x1, x2 = (min(max(v, 0.0), float(result.width)) for v in instance.box[0::2])
            y1, y2 = (min(max(v, 0.0), float(result.height)) for v in instance.box[1::2])
            self.annotations.append({
                "id": len(self.annotations) + 1, "image_id": image_id, "category_id": instance.label,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area,
                "segmentation": dict(instance.rle), "iscrowd": 0, "score": instance.score,
            })

    def close(self) -> str:
        """Write ``instances.json``; return its path."""
        data = {
            "info": {"description": "maskrcnn predictions (infer.py --as-dataset), to be checked by a person"},
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": k, "name": name} for k, name in enumerate(self.class_names, start=1)],
        }
        path = os.path.join(self.folder, self.ANNOTATIONS_FILE)
        with open(path, "w") as f:
            json.dump(data, f)
        return path

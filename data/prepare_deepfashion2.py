"""Convert a DeepFashion2 split (``annos/*.json`` + ``image/*.jpg``) to a COCO instance JSON.

    python data/prepare_deepfashion2.py --annos datasets/deepfashion2/train/annos \
        --images datasets/deepfashion2/train/image --out datasets/deepfashion2/instances_train.json

The training code reads the per-image files directly (``data.format: deepfashion2``); the COCO file is
for COCOeval and other COCO tools. Differences from the official converter:

- ``area`` is the **mask** area (pixels of the rasterized polygons), not the box area: COCOeval puts
  instances into its small/medium/large buckets by ``area``, so the box area shifts them;
- landmarks are not written (this project does not predict them); ``style``, ``occlusion``,
  ``zoom_in``, ``viewpoint`` and ``scale`` are kept per annotation, ``source`` and ``pair_id`` per image.

Boxes are converted from corners ``[x1, y1, x2, y2]`` to COCO's ``[x, y, w, h]``; category ids stay
1-13. Image sizes are read from the image headers (EXIF orientation applied).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from maskrcnn.data.categories import load_category_table
from maskrcnn.data.deepfashion2 import ITEM_FIELDS_KEPT, load_deepfashion2
from maskrcnn.data.problems import Problems
from maskrcnn.data.records import segmentation_area


def convert(annos_dir: str, images_dir: str) -> dict:
    """Read the split (problems reported on stderr and skipped) and return the COCO dict."""
    problems = Problems("collect")
    table = load_category_table("deepfashion2")
    dataset = load_deepfashion2(annos_dir, images_dir, categories=table, problems=problems)
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    source_id_of_label = {k: source for k, (source, _) in enumerate(table.categories, start=1)}
    images, annotations = [], []
    for record in dataset.records:
        image = {"id": record["image_id"], "file_name": os.path.basename(record["file_name"]),
                 "height": record["height"], "width": record["width"]}
        image.update({k: record[k] for k in ("source", "pair_id") if k in record})
        images.append(image)
        for ann in record["annotations"]:
            x1, y1, x2, y2 = ann["bbox"]
            annotations.append({
                "id": ann["id"],
                "image_id": record["image_id"],
                "category_id": source_id_of_label[ann["category_id"]],
                "segmentation": ann["segmentation"],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": segmentation_area(ann["segmentation"], record["height"], record["width"]),
                "iscrowd": 0,
                **{k: ann[k] for k in ITEM_FIELDS_KEPT if k in ann},
            })
    categories = [{"id": source, "name": name, "supercategory": "clothes"} for source, name in table.categories]
    return {"info": {"description": "DeepFashion2 converted by data/prepare_deepfashion2.py (area = mask area)"},
            "images": images, "annotations": annotations, "categories": categories}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annos", required=True, help="the split's annos/ folder")
    parser.add_argument("--images", required=True, help="the split's image/ folder")
    parser.add_argument("--out", required=True, help="COCO JSON to write")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coco = convert(args.annos, args.images)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(coco, f)
    print(f"wrote {args.out}: {len(coco['images'])} images, {len(coco['annotations'])} annotations")
    return 0


if __name__ == "__main__":
    sys.exit(main())

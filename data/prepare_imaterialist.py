"""Convert iMaterialist (Fashion) 2019's ``train.csv`` to a COCO instance JSON.

    python data/prepare_imaterialist.py --csv datasets/imaterialist/train.csv \
        --label-descriptions datasets/imaterialist/label_descriptions.json \
        --out datasets/imaterialist/instances_train.json

The training code reads the CSV directly (``data.format: imaterialist``); the COCO file is for tools
that expect COCO (pycocotools' COCOeval, annotation viewers) and loads faster. It keeps the source
taxonomy, like Fashionpedia's files: category ids 0-45 with their names, ``attribute_ids`` from the
``ClassId`` suffix, and the ``attributes`` list of ``label_descriptions.json``. So the same class
tables (``imaterialist46``, ``imaterialist27``) apply to either file. Masks are written as compressed
COCO RLE (converted from the CSV runs without decoding the image-sized masks), ``bbox`` is the mask's
whole-pixel box and ``area`` its pixel count. Image and annotation ids start at 1 (CSV order).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from pycocotools import mask as coco_mask

from maskrcnn.data.categories import category_map_from_table
from maskrcnn.data.imaterialist import load_imaterialist, load_label_descriptions
from maskrcnn.data.problems import Problems


def convert(csv_path: str, label_descriptions: str) -> dict:
    """Read the CSV (bad rows are reported on stderr and skipped) and return the COCO dict."""
    table = load_label_descriptions(label_descriptions)
    category_map = category_map_from_table(table)  # no drop/merge: a bijection, labels 1..46
    source_id_of_label = {label: source for source, label in category_map.labels.items()}
    problems = Problems("collect")
    dataset = load_imaterialist(csv_path, "", categories=table, problems=problems)
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    with open(label_descriptions) as f:
        descriptions = json.load(f)
    images, annotations = [], []
    for record in dataset.records:
        images.append({"id": record["image_id"], "file_name": os.path.basename(record["file_name"]),
                        "height": record["height"], "width": record["width"]})
        for ann in record["annotations"]:
            rle = ann["segmentation"]
            x1, y1, x2, y2 = ann["bbox"]
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": record["image_id"],
                "category_id": source_id_of_label[ann["category_id"]],
                "attribute_ids": ann["attribute_ids"],
                "segmentation": rle,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": int(coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")})),
                "iscrowd": 0,
            })
    return {
        "info": {**descriptions.get("info", {}), "converted_from": os.path.basename(csv_path)},
        "images": images,
        "annotations": annotations,
        "categories": descriptions["categories"],
        "attributes": descriptions.get("attributes", []),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", required=True, help="iMaterialist train.csv")
    parser.add_argument("--label-descriptions", default="",
                        help="label_descriptions.json (default: the one beside the CSV)")
    parser.add_argument("--out", required=True, help="COCO JSON to write")
    args = parser.parse_args(argv)
    label_descriptions = args.label_descriptions or os.path.join(
        os.path.dirname(os.path.abspath(args.csv)), "label_descriptions.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coco = convert(args.csv, label_descriptions)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(coco, f)
    print(f"wrote {args.out}: {len(coco['images'])} images, {len(coco['annotations'])} annotations")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One entry point for every annotation format: ``load_dataset`` / ``load_records`` / ``load_split``.

    dataset = load_dataset("coco", "modanet.json", "images/", recompute_boxes=True)
    dataset.records        # list of record dicts (schema in records.py)
    dataset.class_names    # label k (1..K) is class_names[k - 1]
    records = load_records("imaterialist", "train.csv", "train/", categories="imaterialist27")
    train = load_split(cfg, "train")                   # the same, driven by the config's data section

Formats and their adapters (one module each):

=================  =================================  ==========================================
``format``         ``annotations``                    adapter
=================  =================================  ==========================================
``"coco"``         a COCO JSON file                   ``coco.load_coco`` (ModaNet, Fashionpedia)
``"imaterialist"`` ``train.csv``                      ``imaterialist.load_imaterialist``
``"deepfashion2"`` the ``annos/`` folder              ``deepfashion2.load_deepfashion2``
=================  =================================  ==========================================

Options shared by all formats: ``categories`` (class-table file or built-in name), ``drop``,
``merge``, ``class_order`` (see ``categories.py``), ``recompute_boxes``, ``clip_boxes``, ``strict``
(raise at the first problem instead of warning and skipping it) and ``problems`` (a collector, see
``problems.py``). ``"coco"`` also takes ``category_match`` and ``drop_duplicates``, ``"coco"`` and
``"imaterialist"`` ``allow_outside_images``, ``"imaterialist"`` ``label_descriptions``, ``"deepfashion2"``
``image_extensions``.
"""
from __future__ import annotations

from .attributes import attribute_table_for
from .coco import load_coco
from .deepfashion2 import load_deepfashion2
from .imaterialist import load_imaterialist
from .problems import Problems
from .records import RecordSet

__all__ = ["FORMATS", "load_dataset", "load_records", "load_split"]

FORMATS = {
    "coco": load_coco,
    "imaterialist": load_imaterialist,
    "deepfashion2": load_deepfashion2,
}


def load_dataset(format: str, annotations, images_dir="", **options) -> RecordSet:
    """Load one split with the adapter of ``format``; returns a RecordSet (records + class_names)."""
    if format not in FORMATS:
        raise ValueError(f"format: unknown dataset format {format!r}; expected one of {sorted(FORMATS)}")
    return FORMATS[format](annotations, images_dir, **options)


def load_records(format: str, annotations, images_dir="", **options) -> list:
    """Like :func:`load_dataset` but returns only the list of records."""
    return load_dataset(format, annotations, images_dir, **options).records


def split_options(data_cfg, split: str) -> dict:
    """The ``load_dataset`` arguments that the config's ``data`` section gives for ``split``.

    Returns ``{"format", "annotations", "images_dir", **options}``; ValueError naming the key when
    the split's annotation path is not set.
    """
    annotations = data_cfg[f"{split}_annotations"]
    if not annotations:
        raise ValueError(f"config: data.{split}_annotations is not set (the {split} annotation file)")
    options = {
        "categories": data_cfg["categories"] or None,
        "drop": list(data_cfg["drop_categories"]),
        "merge": dict(data_cfg["merge_categories"]),
        "class_order": list(data_cfg["class_order"]) or None,
        "recompute_boxes": bool(data_cfg["recompute_boxes"]),
        "clip_boxes": bool(data_cfg["clip_boxes"]),
        "strict": bool(data_cfg["strict"]),
    }
    if data_cfg["format"] in ("coco", "imaterialist"):  # DeepFashion2 lists its images folder itself
        options["allow_outside_images"] = bool(data_cfg["allow_outside_images"])
    if data_cfg["format"] == "coco":
        options["category_match"] = data_cfg["category_match"]
        options["drop_duplicates"] = bool(data_cfg["drop_duplicates"])
    if data_cfg["format"] == "imaterialist" and data_cfg["label_descriptions"]:
        options["label_descriptions"] = data_cfg["label_descriptions"]
    return {"format": data_cfg["format"], "annotations": annotations,
            "images_dir": data_cfg[f"{split}_images"], **options}


def load_split(cfg, split: str = "train", problems: Problems = None) -> RecordSet:
    """Load the ``train`` or ``val`` split described by ``cfg.data`` (see ``maskrcnn/defaults.py``)."""
    if split not in ("train", "val"):
        raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
    options = split_options(cfg["data"], split)
    if problems is not None:
        options["problems"] = problems
    data_format, annotations = options.pop("format"), options.pop("annotations")
    records = load_dataset(data_format, annotations, options.pop("images_dir"), **options)
    table = attribute_table_for(cfg["data"]["attributes"], annotations, data_format,
                                cfg["data"]["label_descriptions"], cfg["data"]["attribute_supercategories"],
                                cfg["data"]["drop_attributes"])
    if table is not None:  # the attributes the model predicts (attributes.py); records keep source ids
        records.attribute_names, records.attribute_source_ids = list(table.names), list(table.source_ids)
    return records

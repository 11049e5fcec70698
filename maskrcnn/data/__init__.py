"""Fashion datasets: one common per-image record (``records.py``) built by one adapter per format.

    from maskrcnn.data import load_records, load_dataset
    records = load_records("coco", "modanet.json", "images/")        # list of record dicts
    dataset = load_dataset("coco", "modanet.json", "images/")        # RecordSet: .records, .class_names

See ``records.py`` for the record schema and ``docs/datasets.md`` for the formats.
"""
from .records import (
    RecordSet,
    mask_to_box,
    masks_to_boxes,
    polygons_to_box,
    segmentation_area,
    segmentation_to_mask,
    validate_record,
)

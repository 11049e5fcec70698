"""Fashion datasets: one common per-image record (``records.py``) built by one adapter per format.

    from maskrcnn.data import load_records, load_dataset, load_split
    records = load_records("coco", "modanet.json", "images/")        # list of record dicts
    dataset = load_dataset("coco", "modanet.json", "images/")        # RecordSet: .records, .class_names
    train = load_split(cfg, "train")                                 # from the config's data section

See ``records.py`` for the record schema, ``load.py`` for the formats and options,
``categories.py`` for class tables, and ``docs/datasets.md`` for the datasets.
"""
from .categories import CategoryMap, CategoryTable, build_category_map, load_category_table
from .load import FORMATS, load_dataset, load_records, load_split
from .problems import DataError, DataWarning, Problems
from .records import (
    RecordSet,
    mask_to_box,
    masks_to_boxes,
    polygons_to_box,
    read_image_size,
    segmentation_area,
    segmentation_box,
    segmentation_to_mask,
    segmentation_to_rle,
    validate_record,
)

# Training pipeline (part B): Dataset, augmentations, batching.
from .collate import build_train_loader, collate, make_train_loader, to_device, train_batches
from .dataset import FashionDataset, read_image
from .samplers import AspectRatioBatchSampler
# The synthetic set is not imported here: ``python -m maskrcnn.data.synthetic`` runs that module as a script,
# and a package that imported it first would make runpy warn. Use ``from maskrcnn.data.synthetic import ...``.
from .transforms import build_augmentations

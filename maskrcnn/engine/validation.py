"""Running the model over the validation split, scoring it, and writing what it predicted.

One evaluation (``run_evaluation``), as the trainer and ``train.py --eval-only`` do it on every rank:

    encoded = predict(model, dataset, device, rank, world_size)        # this rank's share of the images
    encoded = gather_predictions(encoded)                              # every rank's, on every rank
    skipped = skipped_images(dataset)                                  # undecodable images, every rank's
    if rank == 0:
        report = evaluate(records, encoded, class_names, skipped=skipped, ...)  # COCO AP, per class, confusion
        write_predictions_json("predictions.json", encoded, class_names)
        write_overlays("overlays/", records, encoded, class_names)

Everything goes to one folder: ``evaluation.json``, the CSV tables and pictures of
``engine/evaluation.py``, and, for the final evaluation, ``predictions.json`` and ``overlays/*.png``. With
an attribute head (``model.num_attributes``), ``evaluation.json`` gains ``"attributes"``: the per-attribute
AP against chance (``engine/attribute_eval.py``, also ``attributes.csv``) and, under ``"fashionpedia"``,
Fashionpedia's AP_IoU+F1 for each IoU type (``engine/fashionpedia_eval.py``).

Rank ``r`` of ``W`` predicts images ``r, r + W, r + 2W, ...`` of the split, one image per forward pass
(the result of an image then does not depend on which images share its batch, nor on the number of
processes). Each prediction is encoded at once (``coco_format.encode_prediction``: boxes as lists, masks
as RLE), so a whole split's probability maps never sit in memory. A rank with no images still takes
part in the gather, with an empty list.

``predictions.json`` uses the COCO results format (a list of detections, the format of
``pycocotools.COCO.loadRes``), with both the box and the mask of each detection and, so that the file
describes itself, the class name beside the class id::

    [{"image_id": 7, "category_id": 3, "category_name": "outer", "score": 0.97,
      "bbox": [x, y, w, h], "segmentation": {"size": [h, w], "counts": "..."}}, ...]

With an attribute head each detection also has ``attribute_ids`` and ``attribute_scores``
(``coco_format.attribute_fields``), and the overlays list the attributes after each tag.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import nn

from maskrcnn.data import FashionDataset, collate, load_split
from maskrcnn.engine.attribute_eval import evaluate_attributes, format_attribute_report, write_attribute_report
from maskrcnn.engine.coco_format import attribute_fields, attributes_above, encode_prediction
from maskrcnn.engine.checkpoint import find_last_checkpoint, load_checkpoint
from maskrcnn.engine.distributed import (DistributedInfo, all_gather_object, destroy_distributed, init_distributed,
                                        synchronize)
from maskrcnn.engine.evaluation import evaluate, format_report, gather_predictions
from maskrcnn.engine.fashionpedia_eval import evaluate_fashionpedia
from maskrcnn.data.dataset import decode_image
from maskrcnn.visualize import draw_instances, to_pil_image

PREDICTIONS_FILE = "predictions.json"


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` to ``dtype`` on ``device`` (mixed precision), or a no-op context when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def predict(model: nn.Module, dataset: FashionDataset, device: torch.device, rank: int = 0, world_size: int = 1,
            mask_threshold: float = 0.5, num_workers: int = 0, autocast_dtype: Optional[torch.dtype] = None
            ) -> List[dict]:
    """Encoded predictions (``encode_prediction``) for this rank's images ``rank::world_size`` of ``dataset``.

    ``model`` is the bare model (not a DDP wrapper); it is put in eval mode and back in the mode it was in.
    ``autocast_dtype`` runs the forward pass under CUDA autocast (the trainer's AMP setting).
    """
    indices = list(range(rank, len(dataset), world_size))
    if not indices:
        return []
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, sampler=indices, num_workers=num_workers, collate_fn=collate,
        generator=torch.Generator(),  # a private generator: evaluating must not move the global RNG
    )
    was_training = model.training
    model.eval()
    encoded = []
    try:
        for images, targets in loader:
            images = [image.to(device) for image in images]
            with autocast(device, autocast_dtype):
                outputs = model(images)
            for output, target in zip(outputs, targets):
                # The target's image_id, not the index: a broken image is replaced by the next good one.
                output = {key: value.float() if value.is_floating_point() else value for key, value in output.items()}
                encoded.append(encode_prediction({**output, "image_id": target["image_id"]}, mask_threshold))
    finally:
        model.train(was_training)
    return encoded


def skipped_images(dataset: FashionDataset) -> List[dict]:
    """Every rank's undecodable images (``FashionDataset.skipped_images``), on every rank, once each, by image id.

    Call on every rank after :func:`predict`: each rank only tried its own share of the images.
    """
    merged = {}
    for rank_skipped in all_gather_object(dataset.skipped_images()):
        for entry in rank_skipped:
            merged.setdefault(entry["image_id"], {key: entry[key] for key in ("image_id", "file_name", "reason")})
    return [merged[k] for k in sorted(merged)]


def coco_detections(encoded: Sequence[Mapping], class_names: Sequence[str], attribute_source_ids: Sequence[int] = (),
                    attribute_thresh: float = 0.5) -> List[dict]:
    """Encoded predictions -> the COCO results list written to ``predictions.json`` (module docstring)."""
    detections = []
    for pred in encoded:
        masks = pred["masks"] or [None] * len(pred["labels"])
        for i, (box, label, score, rle) in enumerate(zip(pred["boxes"], pred["labels"], pred["scores"], masks)):
            x1, y1, x2, y2 = box
            entry = {"image_id": pred["image_id"], "category_id": int(label),
                     "category_name": str(class_names[label - 1]), "score": round(float(score), 5),
                     "bbox": [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)]}
            if rle is not None:
                entry["segmentation"] = rle
            if pred.get("attribute_scores") is not None:
                fields = attribute_fields(pred["attribute_scores"][i], attribute_source_ids, attribute_thresh)
                entry.update(fields, attribute_scores=[round(s, 5) for s in fields["attribute_scores"]])
            detections.append(entry)
    return detections


def write_predictions_json(path: str, encoded: Sequence[Mapping], class_names: Sequence[str],
                           attribute_source_ids: Sequence[int] = (), attribute_thresh: float = 0.5) -> str:
    """Write ``predictions.json`` (COCO results format with class names); return ``path``."""
    with open(path, "w") as f:
        json.dump(coco_detections(encoded, class_names, attribute_source_ids, attribute_thresh), f)
    return path


def write_overlays(folder: str, records: Sequence[Mapping], encoded: Sequence[Mapping],
                   class_names: Sequence[str], max_images: int = 16, score_thresh: float = 0.5,
                   attribute_names: Sequence[str] = (), attribute_thresh: float = 0.5) -> List[str]:
    """Draw the detections scoring at least ``score_thresh`` on the first ``max_images`` images (by
    ``image_id``) as ``{folder}/{image file stem}.png`` (``000001.jpg`` -> ``000001.png``; a stem already
    written gets ``_{image_id}`` appended); return the paths. ``max_images < 0`` draws them all. With
    ``attribute_names`` each tag lists the attributes scoring at least ``attribute_thresh``.

    Images are decoded as training decodes them (``maskrcnn.data.dataset.decode_image``: 16-bit images
    scaled, transparency composited on white); ``draw_instances`` enlarges small images and scales the text
    with the picture (``maskrcnn/visualize.py``).
    """
    os.makedirs(folder, exist_ok=True)
    by_id = {record["image_id"]: record for record in records}
    chosen = sorted(encoded, key=lambda p: p["image_id"])
    chosen = chosen if max_images < 0 else chosen[:max_images]
    written, stems = [], set()
    for pred in chosen:
        record = by_id[pred["image_id"]]
        keep = [i for i, score in enumerate(pred["scores"]) if score >= score_thresh]
        image = to_pil_image(decode_image(record["file_name"]))  # (H, W, 3) uint8 or float in [0, 1] -> RGB
        masks = None
        if pred["masks"] is not None and keep:
            masks = np.stack([mask_utils.decode(pred["masks"][i]) for i in keep])  # (N, H, W) uint8
        attributes = None
        if pred.get("attribute_scores") is not None and attribute_names:
            kept = [attributes_above(pred["attribute_scores"][i], attribute_thresh) for i in keep]
            attributes = [[attribute_names[a] for a, _ in pairs] for pairs in kept]  # names, best first
        picture = draw_instances(
            image,
            boxes=np.array([pred["boxes"][i] for i in keep], dtype=np.float64).reshape(-1, 4),
            labels=np.array([pred["labels"][i] for i in keep], dtype=np.int64),
            masks=masks, scores=np.array([pred["scores"][i] for i in keep]), class_names=class_names,
            attributes=attributes,
        )
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        stem = f"{stem}_{pred['image_id']}" if stem in stems else stem
        stems.add(stem)
        path = os.path.join(folder, f"{stem}.png")
        picture.save(path)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------
# One evaluation of the validation split
# ----------------------------------------------------------------------------------------------
@dataclass
class ValidationSet:
    """The validation split: its records (the ground truth), a dataset without augmentation, the class names
    and, with ``data.attributes`` set, the names of its attribute table (column order)."""

    records: List[dict]
    dataset: FashionDataset
    class_names: List[str]
    attribute_names: List[str] = field(default_factory=list)


def load_validation_set(cfg, class_names: Sequence[str], verbose: bool = True) -> Optional[ValidationSet]:
    """The ``data.val_*`` split, or None (with a message) when ``data.val_annotations`` is empty.

    Its class names must equal the training set's ``class_names``: labels would mean different things.
    """
    if not cfg.data.val_annotations:
        if verbose:
            print("data.val_annotations is empty: no evaluation during or after training", flush=True)
        return None
    val_set = load_split(cfg, "val")
    if list(val_set.class_names) != list(class_names):
        raise ValueError(f"data.val_annotations ({cfg.data.val_annotations}) has classes {val_set.class_names}, "
                         f"the training set {list(class_names)}: use the same class table for both")
    attribute_names = list(val_set.attribute_names)
    if cfg.model.num_attributes and attribute_names:
        # the columns of the attribute scores must mean the same attributes as the table the head learned
        expected = list(cfg.model.attribute_names) or attribute_names
        if attribute_names != expected or len(attribute_names) != cfg.model.num_attributes:
            raise ValueError(f"data.val_annotations ({cfg.data.val_annotations}) has attributes {attribute_names[:10]}"
                             f"{' ...' if len(attribute_names) > 10 else ''} ({len(attribute_names)}), the model "
                             f"{expected[:10]} ({cfg.model.num_attributes}): use the same attribute table for both")
    dataset = FashionDataset(val_set, augmentations=None, strict=cfg.data.strict, seed=cfg.seed)
    return ValidationSet(list(val_set.records), dataset, list(class_names), attribute_names)


def run_evaluation(model: nn.Module, validation: ValidationSet, cfg, info: DistributedInfo, folder: str,
                   autocast_dtype: Optional[torch.dtype] = None, write_predictions: bool = False) -> Optional[Dict]:
    """Predict on every rank, gather, and on rank 0 score and write everything into ``folder``.

    Call on every rank with the bare model. Returns the evaluation report on rank 0, None elsewhere.
    ``write_predictions`` adds ``predictions.json`` and up to ``train.overlays`` overlay pictures.
    """
    encoded = predict(model, validation.dataset, info.device, info.rank, info.world_size,
                      mask_threshold=cfg.eval.mask_threshold, num_workers=cfg.dataloader.num_workers,
                      autocast_dtype=autocast_dtype)
    encoded = gather_predictions(encoded)
    skipped = skipped_images(validation.dataset)
    report = None
    if info.rank == 0:
        report = evaluate(validation.records, encoded, validation.class_names, iou_types=cfg.eval.iou_types,
                          output_dir=folder, pictures=cfg.eval.pictures, mask_threshold=cfg.eval.mask_threshold,
                          confusion_iou_thresh=cfg.eval.confusion_iou_thresh,
                          confusion_score_thresh=cfg.eval.confusion_score_thresh, skipped=skipped)
        print(f"evaluation of the validation split ({folder}):", flush=True)
        print(format_report(report), flush=True)
        # names: the checkpoint's; train.py --eval-only reads the YAML, whose names are the validation table's
        attribute_names = list(cfg.model.attribute_names) or validation.attribute_names
        if cfg.model.num_attributes and validation.dataset.attribute_index:
            report["attributes"] = evaluate_attributes(validation.records, encoded, attribute_names,
                                                       validation.dataset.attribute_index, cfg.infer.attribute_thresh)
            report["attributes"]["fashionpedia"] = evaluate_fashionpedia(  # AP_IoU+F1, segm and bbox
                validation.records, encoded, validation.dataset.attribute_index, cfg.infer.attribute_thresh,
                cfg.eval.iou_types, skipped_ids=[entry["image_id"] for entry in skipped])
            write_attribute_report(report["attributes"], folder)
            print(format_attribute_report(report["attributes"]), flush=True)
        if write_predictions:
            index = validation.dataset.attribute_index  # {source id: column}: the table when the config lacks it
            source_ids = list(cfg.model.attribute_source_ids) or sorted(index, key=index.get)
            path = write_predictions_json(os.path.join(folder, PREDICTIONS_FILE), encoded, validation.class_names,
                                          source_ids, cfg.infer.attribute_thresh)
            pictures = write_overlays(os.path.join(folder, "overlays"), validation.records, encoded,
                                      validation.class_names, cfg.train.overlays, cfg.train.overlay_score_thresh,
                                      attribute_names, cfg.infer.attribute_thresh)
            print(f"predictions: {path}; {len(pictures)} overlay pictures in {os.path.join(folder, 'overlays')}",
                  flush=True)
    synchronize()
    return report


def evaluate_checkpoint(cfg) -> Optional[Dict]:
    """``train.py --eval-only``: evaluate ``model.weights`` if set, else the last checkpoint in ``output_dir``.

    Writes the report, ``predictions.json`` and overlays to ``{output_dir}/eval/{weights file stem}/``;
    returns the report on rank 0 (None elsewhere). Runs under ``torchrun`` too (the images are shared out).
    """
    from maskrcnn.modeling import build_model  # imported here: the model pulls in every module

    info = init_distributed(cfg.device, timeout_minutes=cfg.train.dist_timeout_minutes)
    try:
        weights = cfg.model.weights or find_last_checkpoint(cfg.output_dir)
        if not weights:
            raise FileNotFoundError(f"--eval-only: model.weights is empty and {cfg.output_dir} holds no checkpoint; "
                                    "train first or set model.weights=FILE")
        model = build_model(cfg, load_weights=bool(cfg.model.weights)).to(info.device)
        class_names = None
        if not cfg.model.weights:  # our own training checkpoint: weights and class names
            state = load_checkpoint(weights, model=model, restore_rng=False, map_location=info.device)
            class_names = state.get("class_names")
        if info.rank == 0:
            print(f"evaluating {weights}", flush=True)
        reference = class_names or load_split(cfg, "val").class_names
        validation = load_validation_set(cfg, reference, verbose=info.rank == 0)
        if validation is None:
            raise ValueError("--eval-only needs a validation split: set data.val_annotations")
        stem = os.path.splitext(os.path.basename(weights))[0]
        folder = os.path.join(cfg.output_dir, "eval", stem)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp) if info.device.type == "cuda" else None
        return run_evaluation(model, validation, cfg, info, folder, dtype, write_predictions=True)
    finally:
        destroy_distributed()

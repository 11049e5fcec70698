"""The attribute head learns.

* A few updates on one synthetic batch drive its loss well below the loss of the best constant prediction:
  the gradient reaches it with the right sign and the targets line up with the ROIs.
* A short training run on synthetic images lifts the attribute mAP on *held-out* images clearly above
  chance: it generalises. The objects are scored on their ground-truth boxes, because a detector trained
  from scratch needs far longer than a test may take before it finds them; the full run of
  configs/synthetic_attributes.yaml (detector and head together, docs/extending.md) takes minutes.
"""
import math

import pytest
import torch

from maskrcnn.config import load_config
from maskrcnn.data import FashionDataset, collate, load_dataset
from maskrcnn.data.attributes import attribute_table_for
from maskrcnn.data.synthetic import generate_synthetic_dataset
from maskrcnn.engine.attribute_eval import average_precision, evaluate_attributes, matched_attribute_pairs
from maskrcnn.modeling import build_model
from maskrcnn.modeling.mask_rcnn import NUM_POOLED_LEVELS

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def attribute_dataset(paths, split):
    """The synthetic ``split`` with its attribute table (the file's top-level ``attributes`` list)."""
    annotations = paths[split]["annotations"]
    records = load_dataset("coco", annotations, paths[split]["images"])
    table = attribute_table_for("file", annotations, "coco")
    records.attribute_names, records.attribute_source_ids = table.names, table.source_ids
    return records, FashionDataset(records)


@pytest.mark.slow
def test_attribute_loss_falls_far_below_the_best_constant_on_a_repeated_batch(tmp_path):
    paths = generate_synthetic_dataset(str(tmp_path), num_train=4, num_val=0, seed=5, image_size=96)
    _, dataset = attribute_dataset(paths, "train")
    images, targets = collate([dataset[i] for i in range(4)])
    labels = torch.cat([t["attributes"] for t in targets])  # (G, 7): a pattern, maybe a tone
    # the best constant score per attribute is its prevalence p; its mean BCE is the entropy H(p)
    p = labels.mean(dim=0).clamp(1e-6, 1 - 1e-6)
    constant_loss = float((-(p * p.log() + (1 - p) * (1 - p).log())).mean())

    cfg = load_config("configs/synthetic_attributes.yaml", overrides=[
        "input.min_size=96", "input.max_size=96", "model.rpn.post_nms_top_n_train=0",  # ROIs = the GT boxes
        "model.roi_heads.batch_size_per_image=10000000"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    head = model.roi_heads.attribute_head
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = model(images, targets)["loss_attributes"]
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    last = model(images, targets)["loss_attributes"].item()
    assert math.isclose(first, math.log(2), rel_tol=0.02)  # every attribute starts near probability 0.5
    assert last < 0.5 * constant_loss, (first, constant_loss, last)


def ground_truth_predictions(model, dataset, records):
    """``encode_prediction``-style predictions of every image of ``dataset``: its ground-truth objects as
    detections (score 1, true class) with the model's attribute scores on their boxes."""
    encoded = []
    heads = model.roi_heads
    with torch.no_grad():
        for index, record in enumerate(records.records):
            images, targets = collate([dataset[index]])
            batch, scaled = model.transform(images, targets)  # boxes follow the image's resize
            features = model.backbone(batch.tensors)[:NUM_POOLED_LEVELS]
            scores = heads.attribute_probabilities(features, [scaled[0]["boxes"]], batch.image_sizes)  # (G, A)
            objects = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
            assert len(objects) == scores.shape[0]
            encoded.append({"image_id": record["image_id"], "boxes": [a["bbox"] for a in objects],
                            "labels": [a["category_id"] for a in objects], "scores": [1.0] * len(objects),
                            "attribute_scores": scores.tolist()})
    return encoded


def mean_ap(scores, labels):
    """Mean over the attributes with a positive of ``average_precision``: the report's ``mAP``."""
    values = [average_precision(scores[:, a], labels[:, a]) for a in range(labels.shape[1])]
    return sum(v for v in values if v is not None) / sum(v is not None for v in values)


@pytest.mark.slow
def test_short_training_lifts_held_out_attribute_map_above_chance(tmp_path):
    paths = generate_synthetic_dataset(str(tmp_path), num_train=96, num_val=32, seed=3, image_size=96)
    _, train_set = attribute_dataset(paths, "train")
    val_records, val_set = attribute_dataset(paths, "val")
    cfg = load_config("configs/synthetic_attributes.yaml", overrides=[
        "input.min_size=96", "input.max_size=96", "model.rpn.post_nms_top_n_train=0",  # ROIs = the GT boxes
        "model.roi_heads.batch_size_per_image=10000000"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):  # 200 batches of 4 images: each image seen about 8 times
        chosen = torch.randperm(len(train_set), generator=generator)[:4].tolist()
        images, targets = collate([train_set[i] for i in chosen])
        loss = model(images, targets)["loss_attributes"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    encoded = ground_truth_predictions(model, val_set, val_records)
    index = val_set.attribute_index
    report = evaluate_attributes(val_records.records, encoded, val_records.attribute_names, index)
    assert report["num_matched"] == sum(len(r["annotations"]) for r in val_records.records)  # every object
    # the pairs the report scored; the mAP of random re-assignments of the score rows is the null distribution
    scores, labels = matched_attribute_pairs(val_records.records, encoded, index)
    assert report["mAP"] == pytest.approx(mean_ap(scores, labels), abs=1e-12)
    permutations = torch.Generator().manual_seed(1)
    null = [mean_ap(scores[torch.randperm(len(scores), generator=permutations).numpy()], labels) for _ in range(200)]
    assert report["mAP"] > max(null), (report["mAP"], max(null))  # p < 1/200
    assert report["mAP"] > report["chance_mAP"] + 0.05, report

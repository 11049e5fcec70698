"""The attribute head learns: a few updates on one synthetic batch drive its loss well below the loss of the
best constant prediction, so the gradient reaches it with the right sign and the targets line up with the
ROIs. (How well it generalises is measured by a real run of configs/synthetic_attributes.yaml, reported in
docs/extending.md: too long for the test suite.)"""
import math

import pytest
import torch

from maskrcnn.config import load_config
from maskrcnn.data import FashionDataset, collate, load_dataset
from maskrcnn.data.attributes import attribute_table_for
from maskrcnn.data.synthetic import generate_synthetic_dataset
from maskrcnn.modeling import build_model

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.mark.slow
def test_attribute_loss_falls_far_below_the_best_constant_on_a_repeated_batch(tmp_path):
    paths = generate_synthetic_dataset(str(tmp_path), num_train=4, num_val=0, seed=5, image_size=96)
    annotations = paths["train"]["annotations"]
    records = load_dataset("coco", annotations, paths["train"]["images"])
    table = attribute_table_for("file", annotations, "coco")
    records.attribute_names, records.attribute_source_ids = table.names, table.source_ids
    dataset = FashionDataset(records)
    images, targets = collate([dataset[i] for i in range(4)])
    labels = torch.cat([t["attributes"] for t in targets])  # (G, 5) one pattern per object
    # the best constant score per attribute is its prevalence p; its mean BCE is the entropy H(p)
    p = labels.mean(dim=0).clamp(1e-6, 1 - 1e-6)
    constant_loss = float((-(p * p.log() + (1 - p) * (1 - p).log())).mean())

    cfg = load_config("configs/synthetic_attributes.yaml", overrides=[
        "input.min_size=96", "input.max_size=96", "model.rpn.post_nms_top_n_train=0",  # ROIs = the GT boxes
        "model.roi_heads.batch_size_per_image=10000000"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    head = model.roi_heads.attribute_head
    optimizer = torch.optim.Adam(list(head.parameters()) + list(model.roi_heads.box_head.parameters()), lr=3e-3)
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

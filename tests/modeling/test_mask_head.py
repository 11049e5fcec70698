"""Mask head: shapes, mask targets against a float64 ROIAlign written out sample by sample, the loss."""
from __future__ import annotations

import math

import pytest
import torch

from maskrcnn.modeling.mask_head import MaskHead, mask_loss, mask_probabilities, mask_targets


def bilinear(image: torch.Tensor, y: float, x: float) -> float:
    """ROIAlign's sample rule (fixture README): 0 outside [-1, H] x [-1, W], else clamp and interpolate."""
    height, width = image.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = min(max(y, 0.0), height - 1), min(max(x, 0.0), width - 1)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    ly, lx = y - y0, x - x0
    return float((1 - ly) * (1 - lx) * image[y0, x0] + (1 - ly) * lx * image[y0, x1]
                 + ly * (1 - lx) * image[y1, x0] + ly * lx * image[y1, x1])


def roi_align_reference(image: torch.Tensor, box, size: int, aligned: bool = False) -> torch.Tensor:
    """Spatial scale 1, adaptive sampling ceil(roi / size) points per bin and axis. aligned=False raises the
    ROI to at least 1 x 1; aligned=True shifts it by -0.5 instead."""
    x1, y1, x2, y2 = (v - 0.5 for v in box) if aligned else box
    roi_w, roi_h = (x2 - x1, y2 - y1) if aligned else (max(x2 - x1, 1.0), max(y2 - y1, 1.0))
    bin_w, bin_h = roi_w / size, roi_h / size
    grid_h, grid_w = math.ceil(roi_h / size), math.ceil(roi_w / size)
    out = torch.zeros(size, size, dtype=torch.float64)
    for i in range(size):
        for j in range(size):
            total = 0.0
            for iy in range(grid_h):
                for ix in range(grid_w):
                    y = y1 + i * bin_h + (iy + 0.5) * bin_h / grid_h
                    x = x1 + j * bin_w + (ix + 0.5) * bin_w / grid_w
                    total += bilinear(image, y, x)
            out[i, j] = total / (grid_h * grid_w)
    return out


def test_mask_head_shapes_and_initialization():
    head = MaskHead(8, num_classes=5, conv_dims=(8, 8, 8, 8))
    logits = head(torch.randn(3, 8, 14, 14))
    assert logits.shape == (3, 6, 28, 28)
    assert len(head.convs) == 4 and torch.count_nonzero(head.logits.bias) == 0


@pytest.mark.parametrize("aligned", [False, True])
def test_mask_targets_are_roi_align_of_the_gt_mask(aligned):
    torch.manual_seed(0)
    gt_masks = (torch.rand(2, 40, 50) > 0.5).to(torch.uint8)
    boxes = torch.tensor([[3.2, 4.7, 30.1, 35.3], [10.0, 2.0, 48.5, 38.0], [-2.0, 30.0, 20.0, 42.0]])
    matched = torch.tensor([1, 0, 1])
    targets = mask_targets(gt_masks, boxes, matched, 8, aligned)
    assert targets.shape == (3, 8, 8) and targets.dtype == torch.float32
    for k in range(3):
        expected = roi_align_reference(gt_masks[int(matched[k])].double(), boxes[k].tolist(), 8, aligned)
        torch.testing.assert_close(targets[k].double(), expected, rtol=0, atol=1e-5)


def test_mask_loss_is_bce_on_the_gt_class_channel():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    gt_masks = [torch.zeros(2, 12, 12, dtype=torch.uint8), torch.ones(1, 12, 12, dtype=torch.uint8)]
    gt_masks[0][0, :, :6] = 1
    gt_labels = [torch.tensor([3, 1]), torch.tensor([2])]
    boxes = [torch.tensor([[0.0, 0.0, 12.0, 12.0], [2.0, 2.0, 8.0, 8.0]], dtype=torch.float64),
             torch.tensor([[1.0, 1.0, 7.0, 9.0]], dtype=torch.float64)]
    matched = [torch.tensor([0, 1]), torch.tensor([0])]
    loss = mask_loss(logits, boxes, gt_masks, gt_labels, matched)
    targets = torch.cat([mask_targets(m, b, i, 6) for m, b, i in zip(gt_masks, boxes, matched)])
    chosen = torch.stack([logits[0, 3], logits[1, 1], logits[2, 2]])  # the GT class of each ROI
    p = torch.sigmoid(chosen)
    expected = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    assert torch.equal(targets[1], torch.zeros(6, 6)) and torch.equal(targets[2], torch.ones(6, 6))


def test_mask_loss_without_positives_is_exactly_zero_and_attached():
    logits = torch.randn(0, 4, 28, 28, requires_grad=True)
    loss = mask_loss(logits, [torch.zeros(0, 4)], [torch.zeros(0, 20, 20, dtype=torch.uint8)],
                     [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, dtype=torch.int64)])
    assert loss.item() == 0.0 and loss.requires_grad


def test_mask_probabilities_take_the_predicted_class_channel():
    logits = torch.randn(3, 4, 5, 5)
    first, second = mask_probabilities(logits, [torch.tensor([2, 1]), torch.tensor([3])])
    assert first.shape == (2, 1, 5, 5) and second.shape == (1, 1, 5, 5)
    torch.testing.assert_close(first[1, 0], torch.sigmoid(logits[1, 1]))
    torch.testing.assert_close(second[0, 0], torch.sigmoid(logits[2, 3]))
    (empty,) = mask_probabilities(torch.zeros(0, 4, 5, 5), [torch.zeros(0, dtype=torch.int64)])
    assert empty.shape == (0, 1, 5, 5)

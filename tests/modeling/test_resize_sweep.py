"""Resize parity for every photo shape: the resized size is torchvision's eager one.

torchvision's ``GeneralizedRCNNTransform`` (eager mode) computes ``scale = min(min_size / short,
max_size / long)`` in Python floats and ``F.interpolate`` makes each side ``floor(side * scale)``. The
scale rounded to float32 first (this project's earlier code) gave one pixel less for about half of all
shapes: 154 of this sweep's 300 at 800/1333 and 164 at 224/320 (e.g. the common 375 x 500 became
799 x 1066 instead of 800 x 1066). The parity fixture's images are fixed (its image0, 180 x 260 at 224/320, is
limited by max_size), so the max-size-limited landscape 600 x 1000 is checked here against a float64
computation, forward and back.
"""
from __future__ import annotations

import math

import pytest
import torch

from maskrcnn.modeling.transform import ImageTransform, resize_boxes, resized_size

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def torchvision_size(height: int, width: int, min_size: int, max_size: int):
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return math.floor(height * scale), math.floor(width * scale)


def sweep():
    """300 shapes: portrait and landscape, limited by min_size and by max_size, small and large."""
    generator = torch.Generator().manual_seed(0)
    sides = torch.randint(50, 4000, (150, 2), generator=generator).tolist()
    shapes = [(h, w) for h, w in sides] + [(w, h) for h, w in sides]  # each shape in both orientations
    return shapes


@pytest.mark.parametrize("min_size, max_size", [(800, 1333), (224, 320)])
def test_resized_size_sweep_matches_torchvision(min_size, max_size):
    transform = ImageTransform(min_size, max_size, MEAN, STD)
    shapes = sweep()
    limited_by_max = sum(max_size / max(s) < min_size / min(s) for s in shapes)
    assert 30 <= limited_by_max <= len(shapes) - 30  # both limits are exercised
    wrong = []
    for height, width in shapes:
        scale = transform.resize_scale(height, width)
        if resized_size(height, width, scale) != torchvision_size(height, width, min_size, max_size):
            wrong.append((height, width))
    assert wrong == []
    # the real interpolation gives those sizes (a subset, since each resize costs a few milliseconds)
    for height, width in shapes[::15]:
        image, _ = transform.resize(torch.zeros(3, height, width), None)
        assert tuple(image.shape[-2:]) == torchvision_size(height, width, min_size, max_size)


@pytest.mark.parametrize("size, expected", [
    ((600, 1000), (799, 1333)),   # landscape limited by max_size: 1333 / 1000
    ((1000, 600), (1333, 799)),   # the same in portrait
    ((375, 500), (800, 1066)),    # a float32 scale gives 799 x 1066
    ((427, 640), (800, 1199)),    # a float32 scale gives 799 x 1199
    ((333, 500), (800, 1201)),
])
def test_resized_size_literals(size, expected):
    transform = ImageTransform(800, 1333, MEAN, STD)
    image, _ = transform.resize(torch.rand(3, *size), None)
    assert tuple(image.shape[-2:]) == expected


def test_max_size_limited_landscape_boxes_there_and_back():
    """600 x 1000 -> 799 x 1333: target boxes scaled forward, detections scaled back, against float64."""
    transform = ImageTransform(800, 1333, MEAN, STD)
    generator = torch.Generator().manual_seed(1)
    corners = torch.rand(30, 2, generator=generator) * torch.tensor([900.0, 500.0])
    boxes = torch.cat([corners, corners + 1 + torch.rand(30, 2, generator=generator) * 99], dim=1)
    target = {"boxes": boxes, "labels": torch.ones(30, dtype=torch.int64)}
    image, resized = transform.resize(torch.rand(3, 600, 1000), dict(target))
    assert tuple(image.shape[-2:]) == (799, 1333)
    ratios = torch.tensor([1333 / 1000, 799 / 600, 1333 / 1000, 799 / 600], dtype=torch.float64)
    forward = boxes.double() * ratios
    # float32: the ratio and the product are each rounded once (relative 2**-24 each)
    assert torch.allclose(resized["boxes"].double(), forward, rtol=2 * 2.0 ** -24, atol=0)
    back = resize_boxes(resized["boxes"], (799, 1333), (600, 1000))
    assert torch.allclose(back.double(), resized["boxes"].double() / ratios, rtol=2 * 2.0 ** -24, atol=0)
    assert torch.allclose(back.double(), boxes.double(), rtol=6 * 2.0 ** -24, atol=0)

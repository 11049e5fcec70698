"""Tests for maskrcnn.modeling.poolers: torchvision's poolers.pt, the level formula at its boundaries,
and a box-by-box reference (level by float64 math, then one roi_align call per box)."""
import math
from pathlib import Path

import pytest
import torch

from maskrcnn.modeling.poolers import MultiScaleRoIAlign, assign_fpn_levels, infer_level_scale
from maskrcnn.ops import roi_align

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# float32 ROIAlign against torchvision's float32 numbers. An absolute bound is right here because the
# pooled values are O(1) (at most 2.6 in the fixture, where one float32 ulp is 2.4e-7): 1e-5 is about
# 40 ulps of the largest value, room for bilinear sums rounded in another order or with fused
# multiply-adds on another CPU. It would not be for values in pixels (see tests/float32.py).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURES / "poolers.pt", weights_only=True)


def fixture_inputs(fixture):
    features = [fixture[f"feature{i}"] for i in range(4)]
    boxes = [fixture["boxes0"], fixture["boxes1"]]
    image_sizes = [tuple(fixture["image_size"].tolist())] * 2
    return features, boxes, image_sizes


@pytest.mark.parametrize("size, key", [(7, "pooled_7"), (14, "pooled_14")])
def test_pooled_features_equal_torchvision(fixture, size, key):
    features, boxes, image_sizes = fixture_inputs(fixture)
    pooled = MultiScaleRoIAlign(size, sampling_ratio=2)(features, boxes, image_sizes)
    expected = fixture[key]
    assert pooled.shape == expected.shape == (35, 4, size, size)
    assert (pooled - expected).abs().max().item() <= TOLERANCE


def test_fixture_uses_two_levels_and_rows_follow_the_boxes(fixture):
    features, boxes, image_sizes = fixture_inputs(fixture)
    levels = assign_fpn_levels(torch.cat(boxes))
    assert set(levels.tolist()) == {2, 3}  # the fixture's boxes are at most ~217 px
    # Pooling image 1 alone gives the last 15 rows: rows are image by image, in box order.
    alone = MultiScaleRoIAlign(7, 2)([f[1:] for f in features], boxes[1:], image_sizes[1:])
    assert (alone - fixture["pooled_7"][20:]).abs().max().item() <= TOLERANCE


def reference_level(box, k_min=2, k_max=5):
    x1, y1, x2, y2 = (float(v) for v in box)
    area = (x2 - x1) * (y2 - y1)
    if area <= 0:
        return k_min
    return min(max(math.floor(4 + math.log2(math.sqrt(area) / 224) + 1e-6), k_min), k_max)


def test_level_formula_literals():
    # sqrt(area): 224 -> P4 (the ImageNet size), halves and doubles step one level, clamped to [2, 5].
    sides = [224, 112, 111.9, 448, 447.9, 56, 1000, 20, 0]
    boxes = torch.tensor([[10.0, 20.0, 10 + s, 20 + s] for s in sides], dtype=torch.float64)
    assert assign_fpn_levels(boxes).tolist() == [4, 3, 2, 5, 4, 2, 5, 2, 2]
    # Non-square: 112 x 448 has sqrt(area) 224.
    assert assign_fpn_levels(torch.tensor([[0.0, 0.0, 112.0, 448.0]])).tolist() == [4]
    # Other level ranges and canonical constants.
    assert assign_fpn_levels(boxes[:4], min_level=3, max_level=4).tolist() == [4, 3, 3, 4]
    assert assign_fpn_levels(boxes[:1], canonical_scale=112, canonical_level=3).tolist() == [4]


def test_eps_lifts_a_box_just_below_a_boundary():
    side = 224 * (1 - 5e-7)  # log2(side / 224) = -7.2e-7, which eps = 1e-6 lifts back to 0
    box = torch.tensor([[0.0, 0.0, side, side]], dtype=torch.float64)
    assert assign_fpn_levels(box).tolist() == [4]
    assert assign_fpn_levels(box, eps=0.0).tolist() == [3]


def test_level_assignment_against_math_reference():
    generator = torch.Generator().manual_seed(3)
    xy = torch.rand(500, 2, generator=generator) * 400
    wh = torch.rand(500, 2, generator=generator) ** 2 * 900
    boxes = torch.cat([xy, xy + wh], dim=1)
    expected = [reference_level(b) for b in boxes.double()]
    assert assign_fpn_levels(boxes.double()).tolist() == expected
    assert set(expected) == {2, 3, 4, 5}


def test_scale_inference():
    assert infer_level_scale(200, 800) == 0.25
    assert infer_level_scale(56, 200) == 0.25  # padded batch: 224 / 4 = 56 feature rows for a 200 px image
    assert infer_level_scale(7, 224) == 1 / 32


def make_pyramid(batch, channels, height, width, generator, dtype=torch.float32):
    """Random P2..P5 features of a (height, width) padded batch."""
    return [
        torch.randn(batch, channels, math.ceil(height / s), math.ceil(width / s), generator=generator, dtype=dtype)
        for s in (4, 8, 16, 32)
    ]


def test_all_levels_against_box_by_box_reference():
    generator = torch.Generator().manual_seed(0)
    features = make_pyramid(2, 3, 640, 704, generator, dtype=torch.float64)
    image_sizes = [(600, 704), (640, 500)]  # the pyramid is of the padded 640 x 704 batch
    sides = [30, 80, 150, 230, 470, 600, 5, 112, 224, 448]
    boxes = [
        torch.tensor([[40.0, 30.0, 40 + s, 30 + 0.8 * s] for s in sides], dtype=torch.float64),
        torch.tensor([[300.0, 10.0, 300 + 0.5 * s, 10 + s] for s in sides[:7]], dtype=torch.float64),
    ]
    pooler = MultiScaleRoIAlign((7, 5), sampling_ratio=2, aligned=True)
    pooled = pooler(features, boxes, image_sizes)
    assert pooled.shape == (17, 3, 7, 5) and pooled.dtype == torch.float64

    rows, levels_seen = [], set()
    for image, image_boxes in enumerate(boxes):
        for box in image_boxes:
            level = reference_level(box)
            levels_seen.add(level)
            roi = torch.cat([torch.tensor([float(image)], dtype=torch.float64), box])[None]  # (1, 5)
            rows.append(roi_align(features[level - 2], roi, (7, 5), 2.0 ** -level, 2, True))
    assert levels_seen == {2, 3, 4, 5}
    assert (pooled - torch.cat(rows)).abs().max().item() <= 1e-10


def test_image_without_boxes_in_the_batch(fixture):
    features, boxes, image_sizes = fixture_inputs(fixture)
    no_boxes = torch.zeros((0, 4))
    pooled = MultiScaleRoIAlign(7, 2)(features, [no_boxes, boxes[1]], image_sizes)
    assert pooled.shape == (15, 4, 7, 7)
    assert (pooled - fixture["pooled_7"][20:]).abs().max().item() <= TOLERANCE
    pooled = MultiScaleRoIAlign(7, 2)(features, [boxes[0], no_boxes], image_sizes)
    assert (pooled - fixture["pooled_7"][:20]).abs().max().item() <= TOLERANCE


def test_all_boxes_empty(fixture):
    features, _, image_sizes = fixture_inputs(fixture)
    pooled = MultiScaleRoIAlign(14, 2)(features, [torch.zeros((0, 4)), torch.zeros((0, 4))], image_sizes)
    assert pooled.shape == (0, 4, 14, 14) and pooled.dtype == torch.float32


@pytest.mark.parametrize("half_dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_are_pooled_in_float32(fixture, half_dtype):
    features, boxes, image_sizes = fixture_inputs(fixture)
    half_features = [f.to(half_dtype) for f in features]
    pooled = MultiScaleRoIAlign(7, 2)(half_features, boxes, image_sizes)
    assert pooled.dtype == half_dtype
    # Same as pooling the rounded features in float32 with float32 boxes, then rounding once.
    expected = MultiScaleRoIAlign(7, 2)([f.float() for f in half_features], boxes, image_sizes).to(half_dtype)
    assert torch.equal(pooled, expected)


def test_gradient_reaches_only_the_assigned_levels():
    generator = torch.Generator().manual_seed(1)
    features = [f.requires_grad_() for f in make_pyramid(1, 2, 256, 256, generator)]
    boxes = [torch.tensor([[10.0, 10.0, 40.0, 40.0], [0.0, 0.0, 250.0, 250.0]])]  # levels 2 and 4
    MultiScaleRoIAlign(7, 2)(features, boxes, [(256, 256)]).sum().backward()
    nonzero = [bool(f.grad is not None and f.grad.abs().sum() > 0) for f in features]
    assert nonzero == [True, False, True, False]


def test_bad_inputs(fixture):
    features, boxes, image_sizes = fixture_inputs(fixture)
    pooler = MultiScaleRoIAlign(7, 2)
    with pytest.raises(ValueError, match="finest first"):
        pooler(features[::-1], boxes, image_sizes)
    with pytest.raises(ValueError, match="2 images"):
        pooler(features, boxes[:1], image_sizes)
    with pytest.raises(ValueError, match=r"boxes\[1\]"):
        pooler(features, [boxes[0], torch.zeros(3, 5)], image_sizes)
    with pytest.raises(ValueError, match=r"features\[2\]"):
        pooler(features[:2] + [features[2][:, :2]] + features[3:], boxes, image_sizes)
    with pytest.raises(ValueError, match="output_size"):
        MultiScaleRoIAlign(0, 2)
    with pytest.raises(ValueError, match="boxes"):
        assign_fpn_levels(torch.zeros(3, 5))


def test_zero_images_name_the_argument():
    """A batch of zero images is refused with a message naming the argument (not 'max() arg is empty')."""
    pooler = MultiScaleRoIAlign(output_size=7, sampling_ratio=2)
    features = [torch.zeros(0, 4, 8, 8), torch.zeros(0, 4, 4, 4)]
    with pytest.raises(ValueError, match=r"zero images \(features\[0\] has batch size 0, image_sizes is empty\)"):
        pooler(features, [], [])

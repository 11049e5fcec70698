"""Tests for maskrcnn.modeling.anchors: torchvision's anchors.pt, the literals of docs/conventions.md, and a slow
loop-by-loop float64 reference."""
import math
from pathlib import Path

import pytest
import torch

from maskrcnn.modeling.anchors import AnchorGenerator, make_cell_anchors

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# Anchors are compared exactly. Every anchor is a rounded cell anchor (whole pixels, as torchvision
# rounds them) plus a whole-pixel shift (integer stride times cell index): integers below 2**24, which
# float32 represents exactly and adds without rounding. Any CPU must therefore give the same bits, and
# an absolute tolerance (1e-5 before) would only hide a real change; it would also be below one float32
# ulp for the coordinates above 128 that these sets hold (up to 1450).
TOLERANCE = 0.0

FPN_SIZES = ((32,), (64,), (128,), (256,), (512,))
FPN_RATIOS = (0.5, 1.0, 2.0)


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURES / "anchors.pt", weights_only=True)


def reference_anchors(image_size, feature_sizes, sizes, ratios, round_cell, ratio_major, offset):
    """Loop-by-loop float64 anchors: level, then row, then column, then cell anchor."""
    rows = []
    for level_sizes, (h, w) in zip(sizes, feature_sizes):
        pairs = [(s, r) for r in ratios for s in level_sizes] if ratio_major else [
            (s, r) for s in level_sizes for r in ratios]
        cells = []
        for s, r in pairs:
            half_w, half_h = s / math.sqrt(r) / 2, s * math.sqrt(r) / 2
            cell = [-half_w, -half_h, half_w, half_h]
            cells.append([float(round(c)) for c in cell] if round_cell else cell)
        stride_y, stride_x = image_size[0] // h, image_size[1] // w
        for i in range(h):
            for j in range(w):
                cx, cy = (j + offset) * stride_x, (i + offset) * stride_y
                rows += [[c[0] + cx, c[1] + cy, c[2] + cx, c[3] + cy] for c in cells]
    return torch.tensor(rows, dtype=torch.float64)


def max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


def test_cell_anchors_equal_torchvision(fixture):
    generator = AnchorGenerator(FPN_SIZES, FPN_RATIOS)
    cells = torch.cat(generator.cell_anchors())  # 5 levels x (3, 4) -> (15, 4)
    assert cells.shape == fixture["cell_anchors"].shape == (15, 4)
    assert max_diff(cells, fixture["cell_anchors"]) <= TOLERANCE
    assert generator.num_anchors_per_location() == [3] * 5


@pytest.mark.parametrize("case", [0, 2])
def test_full_anchor_sets_equal_torchvision(fixture, case):
    image_size = fixture[f"case{case}_image_size"].tolist()
    feature_sizes = fixture[f"case{case}_feature_sizes"].tolist()
    anchors = AnchorGenerator(FPN_SIZES, FPN_RATIOS)(image_size=image_size, feature_sizes=feature_sizes)
    expected = fixture[f"case{case}_anchors"]
    assert anchors.dtype == torch.float32 and anchors.shape == expected.shape
    assert max_diff(anchors, expected) <= TOLERANCE


def test_large_image_count_and_every_97th_equal_torchvision(fixture):
    image_size = fixture["case1_image_size"].tolist()
    feature_sizes = fixture["case1_feature_sizes"].tolist()
    anchors = AnchorGenerator(FPN_SIZES, FPN_RATIOS)(image_size=image_size, feature_sizes=feature_sizes)
    assert anchors.shape[0] == int(fixture["case1_num_anchors"]) == 242991
    assert max_diff(anchors[::97], fixture["case1_anchors_every97"]) <= TOLERANCE


def test_flat_sizes_and_per_level_ratios_are_the_same_generator(fixture):
    flat = AnchorGenerator((32, 64, 128, 256, 512), ((0.5, 1.0, 2.0),) * 5)
    image_size = fixture["case2_image_size"].tolist()
    feature_sizes = fixture["case2_feature_sizes"].tolist()
    assert max_diff(flat(image_size, feature_sizes), fixture["case2_anchors"]) <= TOLERANCE


def test_facts_rounded_ratio_major_cell_anchors():
    cells = make_cell_anchors((32,), (0.5, 1.0, 2.0))
    assert cells.tolist() == [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]]


FACTS_UNROUNDED = [
    [-32, -8, 32, 8], [-16, -16, 16, 16], [-8, -32, 8, 32],
    [-64, -16, 64, 16], [-32, -32, 32, 32], [-16, -64, 16, 64],
]


def test_facts_unrounded_size_major_offset_0():
    generator = AnchorGenerator(((32, 64),), (0.25, 1.0, 4.0), round_cell_anchors=False, order="size_major")
    anchors = generator(image_size=(4, 8), feature_sizes=[(1, 2)])  # stride 4, a 1x2 feature map
    shifted = [[x1 + 4, y1, x2 + 4, y2] for x1, y1, x2, y2 in FACTS_UNROUNDED]
    assert anchors.tolist() == FACTS_UNROUNDED + shifted


def test_facts_offset_half_moves_every_box_by_half_a_stride():
    generator = AnchorGenerator(((32, 64),), (0.25, 1.0, 4.0), round_cell_anchors=False, order="size_major",
                                offset=0.5)
    anchors = generator(image_size=(4, 8), feature_sizes=[(1, 2)])
    expected = [[x1 + 2, y1 + 2, x2 + 2, y2 + 2] for x1, y1, x2, y2 in FACTS_UNROUNDED]
    expected += [[x1 + 6, y1 + 2, x2 + 6, y2 + 2] for x1, y1, x2, y2 in FACTS_UNROUNDED]
    assert anchors.tolist() == expected


@pytest.mark.parametrize("round_cell, order, offset", [
    (True, "ratio_major", 0.0), (False, "size_major", 0.5), (False, "ratio_major", 0.0), (True, "size_major", 0.5)])
def test_against_loop_reference(round_cell, order, offset):
    sizes = ((16, 40), (80,), (150, 300))
    ratios = (0.3, 1.0, 1.7)
    image_size = (100, 147)
    feature_sizes = [(25, 37), (13, 19), (4, 5)]  # strides (4, 3), (7, 7), (25, 29)
    generator = AnchorGenerator(sizes, ratios, round_cell_anchors=round_cell, order=order, offset=offset)
    expected = reference_anchors(image_size, feature_sizes, sizes, ratios, round_cell, order == "ratio_major", offset)
    anchors64 = generator(image_size, feature_sizes, dtype=torch.float64)
    assert anchors64.dtype == torch.float64 and anchors64.shape == expected.shape
    assert max_diff(anchors64, expected) <= 1e-10
    # float32 output is the float64 result correctly rounded.
    assert torch.equal(generator(image_size, feature_sizes), expected.float())
    per_level = generator.anchors_per_level(image_size, feature_sizes)
    assert [t.shape[0] for t in per_level] == [25 * 37 * 6, 13 * 19 * 3, 4 * 5 * 6]


def test_anchor_geometry():
    # Area s**2 and h / w = r for unrounded cell anchors.
    cells = make_cell_anchors((32, 100), (0.25, 0.5, 2.0), round_cell_anchors=False)
    widths, heights = cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]
    expected_sizes = torch.tensor([32, 100] * 3, dtype=torch.float64)
    expected_ratios = torch.tensor([0.25, 0.25, 0.5, 0.5, 2.0, 2.0], dtype=torch.float64)
    assert torch.allclose(widths * heights, expected_sizes**2, rtol=1e-12, atol=0)
    assert torch.allclose(heights / widths, expected_ratios, rtol=1e-12, atol=0)


def test_cell_anchor_cache_returns_the_same_tensors():
    generator = AnchorGenerator()
    assert generator.cell_anchors() is generator.cell_anchors("cpu")
    assert all(a.dtype == torch.float64 for a in generator.cell_anchors())
    assert len(generator.state_dict()) == 0  # no parameters or buffers: nothing for checkpoints


def test_bad_arguments():
    with pytest.raises(ValueError, match="sizes"):
        AnchorGenerator(())
    with pytest.raises(ValueError, match=r"sizes\[1\]"):
        AnchorGenerator(((32,), (-64,)))
    with pytest.raises(ValueError, match="aspect_ratios has 2"):
        AnchorGenerator(FPN_SIZES, ((0.5,), (1.0,)))
    with pytest.raises(ValueError, match="order"):
        AnchorGenerator(order="sideways")
    generator = AnchorGenerator()
    with pytest.raises(ValueError, match="feature_sizes has 2 levels"):
        generator((64, 64), [(16, 16), (8, 8)])
    with pytest.raises(ValueError, match=r"feature_sizes\[0\]"):
        generator((64, 64), [(128, 16), (8, 8), (4, 4), (2, 2), (1, 1)])
    with pytest.raises(ValueError, match="image_size"):
        generator((64,), [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)])

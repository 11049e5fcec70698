"""box_area, box_iou, clip_boxes_to_image, remove_small_boxes against torchvision and docs/conventions.md."""
import pytest
import torch

from maskrcnn.ops import box_area, box_iou, clip_boxes_to_image, remove_small_boxes


def test_iou_matches_torchvision(boxes_ref):
    iou = box_iou(boxes_ref["iou_boxes1"], boxes_ref["iou_boxes2"])
    assert iou.shape == (40, 30) and iou.dtype == torch.float32
    # IoU lies in [0, 1], where 1e-5 is at least 80 float32 ulps: an absolute bound is magnitude-safe here
    torch.testing.assert_close(iou, boxes_ref["iou"], rtol=0, atol=1e-5)
    assert not torch.isnan(iou).any()
    assert iou[0, 0] == pytest.approx(1.0)  # pair (0, 0) is identical
    assert (boxes_ref["iou_boxes2"][1, 2] == boxes_ref["iou_boxes2"][1, 0]).item()  # zero width
    assert torch.equal(iou[:, 1], torch.zeros(40))


def test_iou_literals():
    boxes = torch.tensor([[0, 0, 100, 100], [0, 0, 50, 50], [200, 200, 300, 300]], dtype=torch.float32)
    expected = torch.tensor([[1, 0.25, 0], [0.25, 1, 0], [0, 0, 1]])
    torch.testing.assert_close(box_iou(boxes, boxes), expected, rtol=0, atol=1e-6)
    unit = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    others = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.5, 1.5]])
    torch.testing.assert_close(box_iou(unit, others), torch.tensor([[0.25, 0.25 / 1.75]]), rtol=0, atol=1e-7)


def test_iou_zero_area_boxes_give_zero_not_nan():
    point = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    line = torch.tensor([[10.0, 10.0, 10.0, 20.0]])
    box = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    both = torch.cat([point, line])
    iou = box_iou(both, torch.cat([both, box]))
    assert torch.equal(iou, torch.zeros(2, 3))  # also a zero-area box against itself (0 / 0)


def test_iou_empty_and_half_precision():
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert box_iou(torch.zeros(0, 4), b).shape == (0, 1)
    assert box_iou(b, torch.zeros(0, 4)).shape == (1, 0)
    # 1000 x 1000 areas overflow float16 (max 65504): the products are computed in float32
    big = torch.tensor([[0.0, 0.0, 1000.0, 1000.0], [0.0, 0.0, 500.0, 1000.0]], dtype=torch.float16)
    iou = box_iou(big, big)
    assert iou.dtype == torch.float32
    torch.testing.assert_close(iou, torch.tensor([[1.0, 0.5], [0.5, 1.0]]))


def test_iou_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"boxes2 must be a tensor of shape \(N, 4\).*\(3, 5\)"):
        box_iou(torch.zeros(2, 4), torch.zeros(3, 5))


def test_box_area():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 5.0], [2.0, 2.0, 2.0, 8.0], [1.5, 1.0, 2.0, 3.0]])
    torch.testing.assert_close(box_area(boxes), torch.tensor([50.0, 0.0, 1.0]))
    assert box_area(torch.zeros(0, 4)).shape == (0,)


def test_clip_boxes_to_image():
    boxes = torch.tensor(
        [
            [-5.0, -3.0, 20.0, 8.0],  # partly outside on the top-left
            [10.0, 2.0, 40.0, 50.0],  # partly outside on the bottom-right
            [50.0, 60.0, 70.0, 80.0],  # fully outside: collapses onto the corner
            [1.0, 2.0, 3.0, 4.0],  # inside: unchanged
        ]
    )
    clipped = clip_boxes_to_image(boxes, (30, 32))  # (height, width)
    expected = torch.tensor(
        [[0.0, 0.0, 20.0, 8.0], [10.0, 2.0, 32.0, 30.0], [32.0, 30.0, 32.0, 30.0], [1.0, 2.0, 3.0, 4.0]]
    )
    assert torch.equal(clipped, expected)
    # class-specific layout (N, K*4): each group of four is clipped the same way
    per_class = boxes.reshape(2, 8)
    assert torch.equal(clip_boxes_to_image(per_class, (30, 32)), expected.reshape(2, 8))
    assert clip_boxes_to_image(torch.zeros(0, 4), (30, 32)).shape == (0, 4)


def test_remove_small_boxes_keeps_width_and_height_at_least_min_size():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 1.0, 10.0],  # w == min_size: kept (>=)
            [0.0, 0.0, 0.5, 10.0],  # too narrow
            [0.0, 0.0, 10.0, 0.99],  # too short
            [3.0, 3.0, 3.0, 3.0],  # zero area
        ]
    )
    keep = remove_small_boxes(boxes, 1.0)
    assert keep.dtype == torch.int64
    assert keep.tolist() == [0, 1]
    assert remove_small_boxes(boxes, 1e-3).tolist() == [0, 1, 2, 3]
    assert remove_small_boxes(torch.zeros(0, 4), 1.0).shape == (0,)

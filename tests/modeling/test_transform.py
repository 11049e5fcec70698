"""The image transform (normalize, resize, pad, map back) and mask pasting, against explicit references."""
from __future__ import annotations

import math

import pytest
import torch

from maskrcnn.modeling.paste_masks import paste_masks_in_image
from maskrcnn.modeling.transform import ImageTransform, resize_boxes

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make_transform(min_size=800, max_size=1333):
    return ImageTransform(min_size, max_size, MEAN, STD, size_divisible=32)


@pytest.mark.parametrize("size, expected", [
    ((180, 260), (221, 320)),    # the parity fixture: capped by max_size (320 / 260 < 224 / 180)
    ((240, 200), (268, 224)),    # short side to 224
])
def test_resized_sizes_small_setting(size, expected):
    transform = make_transform(224, 320)
    image = torch.rand(3, *size)
    resized, _ = transform.resize(transform.normalize(image), None)
    assert tuple(resized.shape[-2:]) == expected


@pytest.mark.parametrize("size, expected", [
    ((400, 600), (800, 1200)),    # short side 400 -> 800, long side 1200 <= 1333
    ((100, 1000), (133, 1333)),   # long side capped: scale 1.333
    ((800, 1216), (800, 1216)),   # already at size: scale 1
])
def test_resized_sizes_default_setting(size, expected):
    transform = make_transform()
    scale = transform.resize_scale(*size)
    assert scale == pytest.approx(min(800 / min(size), 1333 / max(size)), rel=1e-6)
    assert tuple(math.floor(s * scale) for s in size) == expected


def test_normalization_and_padding_against_float64_formula():
    transform = make_transform(224, 320)
    image = torch.rand(3, 224, 300)  # scale exactly 1: only normalization and padding act
    batch, _ = transform([image])
    assert batch.tensors.shape == (1, 3, 224, 320) and batch.image_sizes == [(224, 300)]
    mean = torch.tensor(MEAN, dtype=torch.float64)[:, None, None]
    std = torch.tensor(STD, dtype=torch.float64)[:, None, None]
    torch.testing.assert_close(batch.tensors[0, :, :, :300].double(), (image.double() - mean) / std,
                               rtol=0, atol=1e-6)
    assert torch.count_nonzero(batch.tensors[0, :, :, 300:]) == 0


def test_batch_is_padded_to_a_multiple_of_32_at_bottom_right():
    transform = make_transform(100, 1000)
    images = [torch.rand(3, 100, 130), torch.rand(3, 150, 100)]
    batch, _ = transform(images)
    assert batch.image_sizes == [(100, 130), (150, 100)]
    assert batch.tensors.shape == (2, 3, 160, 160)
    assert torch.count_nonzero(batch.tensors[0, :, 100:]) == 0 and torch.count_nonzero(batch.tensors[1, :, :, 100:]) == 0


def test_targets_follow_the_image_and_are_not_modified_in_place():
    transform = make_transform(224, 320)
    boxes = torch.tensor([[10.0, 20.0, 110.0, 90.0]])
    masks = torch.zeros(1, 180, 260, dtype=torch.uint8)
    masks[0, 20:90, 10:110] = 1
    target = {"boxes": boxes.clone(), "labels": torch.tensor([3]), "masks": masks.clone()}
    batch, (resized,) = transform([torch.rand(3, 180, 260)], [target])
    ratio_h, ratio_w = 221 / 180, 320 / 260
    torch.testing.assert_close(resized["boxes"], torch.tensor([[10 * ratio_w, 20 * ratio_h, 110 * ratio_w,
                                                                90 * ratio_h]]), rtol=1e-6, atol=1e-5)
    assert resized["masks"].shape == (1, 221, 320) and resized["masks"].dtype == torch.uint8
    # nearest neighbour: output row i reads input row floor(i * 180 / 221) (same for columns)
    rows = (torch.arange(221) * 180 / 221).floor().long()
    cols = (torch.arange(320) * 260 / 320).floor().long()
    assert torch.equal(resized["masks"][0], masks[0][rows][:, cols])
    assert torch.equal(target["boxes"], boxes) and torch.equal(target["masks"], masks)  # untouched
    assert torch.equal(resized["labels"], target["labels"])


def test_postprocess_maps_boxes_back_to_original_pixels():
    boxes = torch.tensor([[10.0, 20.0, 110.0, 90.0], [0.0, 0.0, 260.0, 180.0]])
    there = resize_boxes(boxes, (180, 260), (221, 320))
    transform = make_transform(224, 320)
    (back,) = transform.postprocess([{"boxes": there, "scores": torch.ones(2)}], [(221, 320)], [(180, 260)])
    torch.testing.assert_close(back["boxes"], boxes, rtol=1e-6, atol=1e-4)
    assert torch.equal(back["scores"], torch.ones(2))


def bilinear_reference(grid: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """align_corners=False bilinear resize, pixel by pixel in float64 (source coordinates below 0 clamp to 0)."""
    in_h, in_w = grid.shape
    out = torch.zeros(out_h, out_w, dtype=torch.float64)
    for i in range(out_h):
        y = max((i + 0.5) * in_h / out_h - 0.5, 0.0)
        y0 = int(math.floor(y)); y1 = min(y0 + 1, in_h - 1); ly = y - y0
        for j in range(out_w):
            x = max((j + 0.5) * in_w / out_w - 0.5, 0.0)
            x0 = int(math.floor(x)); x1 = min(x0 + 1, in_w - 1); lx = x - x0
            out[i, j] = ((1 - ly) * ((1 - lx) * grid[y0, x0] + lx * grid[y0, x1])
                         + ly * ((1 - lx) * grid[y1, x0] + lx * grid[y1, x1]))
    return out


def paste_reference(mask: torch.Tensor, box, height: int, width: int) -> torch.Tensor:
    """The documented pasting rule, written out: pad by 1, enlarge the box by 30/28, truncate to ints,
    resize to the inclusive box size, copy what lies inside the image."""
    m = mask.shape[-1]
    padded = torch.zeros(m + 2, m + 2, dtype=torch.float64)
    padded[1:-1, 1:-1] = mask.double()
    scale = (m + 2) / m
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) / 2 * scale, (box[3] - box[1]) / 2 * scale
    x1, y1, x2, y2 = (int(v) for v in (cx - hw, cy - hh, cx + hw, cy + hh))  # int() truncates toward zero
    resized = bilinear_reference(padded, max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1))
    canvas = torch.zeros(height, width, dtype=torch.float64)
    for y in range(max(y1, 0), min(y2 + 1, height)):
        for x in range(max(x1, 0), min(x2 + 1, width)):
            canvas[y, x] = resized[y - y1, x - x1]
    return canvas


def test_paste_masks_matches_the_written_out_rule():
    torch.manual_seed(0)
    masks = torch.rand(4, 1, 28, 28)
    boxes = torch.tensor([[10.3, 5.7, 40.2, 30.9],     # inside
                          [-8.0, 20.0, 15.5, 47.0],    # partly left of the image
                          [45.0, 30.0, 70.0, 80.0],    # partly below / right
                          [20.0, 20.0, 20.4, 20.2]])   # nearly empty
    pasted = paste_masks_in_image(masks, boxes, (50, 60))
    assert pasted.shape == (4, 1, 50, 60)
    for k in range(4):
        expected = paste_reference(masks[k, 0], boxes[k].tolist(), 50, 60)
        torch.testing.assert_close(pasted[k, 0].double(), expected, rtol=0, atol=1e-5)


def test_paste_of_no_masks_is_empty_with_the_image_size():
    out = paste_masks_in_image(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (30, 40))
    assert out.shape == (0, 1, 30, 40)


def test_bad_inputs_name_the_field():
    transform = make_transform()
    with pytest.raises(ValueError, match=r"images\[1\]: expected a \(3, H, W\)"):
        transform([torch.rand(3, 10, 10), torch.rand(10, 10)])
    with pytest.raises(ValueError, match=r"images\[0\]: expected a float tensor"):
        transform([torch.zeros(3, 10, 10, dtype=torch.uint8)])
    bad_box = {"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]\[0\]"):
        transform([torch.rand(3, 10, 10)], [bad_box])
    bad_masks = {"boxes": torch.tensor([[1.0, 1.0, 5.0, 9.0]]), "labels": torch.tensor([1]),
                 "masks": torch.zeros(1, 9, 10, dtype=torch.uint8)}
    with pytest.raises(ValueError, match=r"targets\[0\]\['masks'\]: expected shape \(1, 10, 10\)"):
        transform([torch.rand(3, 10, 10)], [bad_masks])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        transform([torch.rand(3, 10, 10)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])


def paste_per_detection(masks, boxes, height, width):
    """torchvision's way: one F.interpolate per detection into its integer box, copied into a canvas."""
    import torch.nn.functional as F

    from maskrcnn.modeling.paste_masks import integer_boxes
    padded = F.pad(masks, (1, 1, 1, 1))
    out = torch.zeros(masks.shape[0], 1, height, width)
    for k, (x1, y1, x2, y2) in enumerate(integer_boxes(boxes, masks.shape[-1], 1).tolist()):
        resized = F.interpolate(padded[k:k + 1], size=(max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)),
                                mode="bilinear", align_corners=False)[0, 0]
        top, left, bottom, right = max(y1, 0), max(x1, 0), min(y2 + 1, height), min(x2 + 1, width)
        if top < bottom and left < right:
            out[k, 0, top:bottom, left:right] = resized[top - y1:bottom - y1, left - x1:right - x1]
    return out


def random_detections(generator, count, height, width):
    masks = torch.rand(count, 1, 28, 28, generator=generator)
    corners = torch.rand(count, 2, generator=generator) * torch.tensor([width * 1.3, height * 1.3]) - 10
    sizes = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.8 + 0.2
    return masks, torch.cat([corners, corners + sizes], dim=1)


def test_paste_all_at_once_agrees_with_per_detection_interpolate():
    """Same formula as F.interpolate; its CPU kernel fuses multiply-adds, so values may differ by the
    rounding of the source coordinate (< ulp(30) = 2**-19 per axis) plus a few float32 steps of 1."""
    generator = torch.Generator().manual_seed(3)
    bound = 2 * 2.0 ** -19 + 4 * 2.0 ** -23
    for height, width in [(50, 60), (97, 33), (128, 200)]:
        masks, boxes = random_detections(generator, 25, height, width)
        ours = paste_masks_in_image(masks, boxes, (height, width))
        expected = paste_per_detection(masks, boxes, height, width)
        assert ((ours - expected).abs() <= bound).all()
        assert torch.equal(ours == 0, expected == 0)  # the same pixels lie inside the boxes


def test_paste_chunks_and_crops_give_the_same_values(monkeypatch):
    from maskrcnn.modeling import paste_masks
    generator = torch.Generator().manual_seed(4)
    masks, boxes = random_detections(generator, 30, 70, 90)
    whole = paste_masks_in_image(masks, boxes, (70, 90))
    monkeypatch.setattr(paste_masks, "CHUNK_PIXELS", 3 * 70 * 90 + 5)  # chunks of 3 detections
    assert torch.equal(paste_masks_in_image(masks, boxes, (70, 90)), whole)
    crops = paste_masks.paste_masks_in_crops(masks, boxes, (70, 90))
    canvas, start = torch.zeros_like(whole), 0
    for k, (x1, y1, x2, y2) in enumerate(crops.rects.tolist()):
        end = start + (x2 - x1) * (y2 - y1)
        canvas[k, 0, y1:y2, x1:x2] = crops.values[start:end].view(y2 - y1, x2 - x1)
        start = end
    assert start == crops.values.numel() and torch.equal(canvas, whole)  # and nothing outside the crops

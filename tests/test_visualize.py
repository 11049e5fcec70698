"""Overlays: exact blended mask pixels, box outlines, tags and legend in the class colours."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.visualize import class_color, draw_instances, draw_record, to_pil_image


def blend(pixel, color, alpha):
    """The documented rule, computed independently: floor((1 - a) * p + a * c + 0.5) per channel."""
    return tuple(math.floor((1 - alpha) * p + alpha * c + 0.5) for p, c in zip(pixel, color))


def grey(height=60, width=80, value=100):
    return np.full((height, width, 3), value, dtype=np.uint8)


def test_class_colors_are_distinct_and_stable():
    colors = [class_color(k) for k in range(1, 47)]
    assert len(set(colors)) == 46
    assert class_color(3) == class_color(3)
    assert all(0 <= c <= 255 for color in colors for c in color)


def test_mask_pixels_are_alpha_blended():
    masks = np.zeros((1, 60, 80), dtype=np.uint8)
    masks[0, 40:50, 10:20] = 1
    picture = np.asarray(draw_instances(grey(), labels=[5], masks=masks, mask_alpha=0.5, show_legend=False))
    assert tuple(picture[45, 15]) == blend((100, 100, 100), class_color(5), 0.5)
    assert tuple(picture[30, 15]) == (100, 100, 100)  # outside the mask: untouched


def test_float_masks_are_thresholded_and_model_shape_accepted():
    probabilities = torch.zeros(1, 1, 60, 80)
    probabilities[0, 0, 40:50, 10:20] = 0.7
    probabilities[0, 0, 50:55, 10:20] = 0.3
    picture = np.asarray(draw_instances(grey(), labels=torch.tensor([2]), masks=probabilities,
                                        mask_alpha=0.25, show_legend=False))
    assert tuple(picture[45, 15]) == blend((100, 100, 100), class_color(2), 0.25)
    assert tuple(picture[52, 15]) == (100, 100, 100)


def test_box_outline_tag_and_legend():
    box = [20, 30, 50, 55]  # covers pixels x 20..49, y 30..54
    picture = np.asarray(draw_instances(grey(), boxes=[box], labels=[3], scores=[0.9],
                                        class_names=["bag", "belt", "boots"], line_width=2))
    color = class_color(3)
    for y, x in [(40, 20), (40, 21), (54, 35), (53, 35), (40, 49)]:   # outline, 2 px inwards
        assert tuple(picture[y, x]) == color, (y, x)
    assert tuple(picture[40, 22]) == (100, 100, 100) and tuple(picture[40, 50]) == (100, 100, 100)
    tag = picture[:30, 20:50].reshape(-1, 3)          # the tag sits above the box, filled in its colour
    assert (tag == color).all(axis=1).sum() > 20
    without_legend = np.asarray(draw_instances(grey(), boxes=[box], labels=[3], scores=[0.9],
                                               class_names=["bag", "belt", "boots"], show_legend=False))
    assert (picture[:, 60:] != without_legend[:, 60:]).any()   # the legend is at the top right ...
    assert (picture[30:, :] == without_legend[30:, :]).all()   # ... and nowhere near the box


def test_legend_lists_each_class_once_with_its_swatch():
    boxes = [[5, 40, 15, 50], [20, 40, 30, 50], [40, 40, 50, 50]]
    picture = np.asarray(draw_instances(grey(), boxes=boxes, labels=[2, 7, 2], show_tags=False))
    panel = picture[:25, 30:]
    white = (panel == 255).all(axis=2)
    assert white.sum() > 100                                   # the white legend panel
    for label in (2, 7):
        swatch = (panel == class_color(label)).all(axis=2)
        rows = np.flatnonzero(swatch.any(axis=1))
        assert len(rows) >= 5                                  # one filled square per class
    first = np.flatnonzero((panel == class_color(2)).all(axis=2).any(axis=1))
    second = np.flatnonzero((panel == class_color(7)).all(axis=2).any(axis=1))
    assert first.max() < second.min()                          # label order, one line each


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="labels"):
        draw_instances(grey(), boxes=[[0, 0, 5, 5]])
    with pytest.raises(ValueError, match="boxes: expected 2"):
        draw_instances(grey(), boxes=[[0, 0, 5, 5]], labels=[1, 2])
    with pytest.raises(ValueError, match="masks: expected shape"):
        draw_instances(grey(), labels=[1], masks=np.zeros((1, 5, 5)))


def test_to_pil_image_from_tensor_and_float_array():
    tensor = torch.zeros(3, 4, 6)
    tensor[0] = 1.0
    tensor[1] = 0.5
    image = to_pil_image(tensor)
    assert image.size == (6, 4) and image.getpixel((0, 0)) == (255, 128, 0)
    assert to_pil_image(np.full((2, 2, 3), 0.2)).getpixel((1, 1)) == (51, 51, 51)


def test_draw_record(tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(grey(20, 30)).save(path)
    record = {"file_name": str(path), "image_id": 1, "height": 20, "width": 30, "annotations": [
        {"bbox": [2.0, 3.0, 12.0, 13.0], "category_id": 1, "iscrowd": 0,
         "segmentation": [[2, 3, 12, 3, 12, 13, 2, 13]]}]}
    picture = np.asarray(draw_record(record, ["top"], show_legend=False, show_tags=False, mask_alpha=0.5))
    # the box outline is drawn over the mask; inside, the blended colour
    assert tuple(picture[8, 7]) == blend((100, 100, 100), class_color(1), 0.5)
    assert tuple(picture[8, 2]) == class_color(1)

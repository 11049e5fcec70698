"""Overlays: the palette's spread, exact blended mask pixels, box outlines, tags and the legend strip.

The pixel-rule tests draw at the image's own size (``min_side=0``); the readable-scale and tag-placement
rules are tested in tests/test_overlay_layout.py."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.visualize import (PALETTE, class_color, draw_instances, draw_record, overlay_layout, srgb_to_lab,
                                to_pil_image)


def blend(pixel, color, alpha):
    """The documented rule, computed independently: floor((1 - a) * p + a * c + 0.5) per channel."""
    return tuple(math.floor((1 - alpha) * p + alpha * c + 0.5) for p, c in zip(pixel, color))


def grey(height=60, width=80, value=100):
    return np.full((height, width, 3), value, dtype=np.uint8)


def lab(rgb):
    """CIELAB (D65) of an sRGB colour, written out independently of maskrcnn.visualize (float64)."""
    def linear(c):
        c = c / 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (linear(c) for c in rgb)
    x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / 0.95047
    y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b
    z = (0.0193339 * r + 0.1191920 * g + 0.9503041 * b) / 1.08883
    f = [t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29 for t in (x, y, z)]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def min_distance(colors):
    points = [lab(c) for c in colors]
    return min(math.dist(p, q) for i, p in enumerate(points) for q in points[i + 1:])


def test_lab_conversion_matches_the_published_values():
    # sRGB red and white in CIELAB (D65): (53.24, 80.09, 67.20) and (100, 0, 0)
    assert np.allclose(lab((255, 0, 0)), (53.2408, 80.0925, 67.2032), atol=1e-3)
    assert np.allclose(lab((255, 255, 255)), (100, 0, 0), atol=1e-3)
    assert np.allclose(srgb_to_lab([[255, 0, 0], [255, 255, 255]]), [lab((255, 0, 0)), lab((255, 255, 255))],
                       rtol=0, atol=1e-9)


def test_class_colors_are_far_apart_for_every_dataset_size():
    colors = [class_color(k) for k in range(1, 47)]
    assert colors == PALETTE and len(set(colors)) == 46
    assert class_color(1) == (255, 0, 0) and class_color(47) == class_color(1)  # the rule's start; it repeats
    # Minimum pairwise CIE76 distance of the first K colours: the synthetic set (8 classes), ModaNet (13),
    # iMaterialist without parts (27) and Fashionpedia (46). A difference of about 2.3 is just noticeable;
    # the old golden-ratio hues were 27.0 / 22.8 / 2.2 apart for 8 / 13 / 46 classes.
    assert min_distance(colors[:8]) > 59.9
    assert min_distance(colors[:13]) > 43.1
    assert min_distance(colors[:27]) > 27.9
    assert min_distance(colors[:46]) > 21.7
    # dress (Fashionpedia id 10, label 11) and sleeve (id 31, label 32) were (202, 48, 242) and (177, 48, 242)
    assert math.dist(lab(class_color(11)), lab(class_color(32))) > 21.7
    for color in colors:  # neither near-black nor near-white nor grey: visible on photos
        lightness, a, b = lab(color)
        assert 30 <= lightness <= 85 and math.hypot(a, b) >= 30, color


def test_mask_pixels_are_alpha_blended():
    masks = np.zeros((1, 60, 80), dtype=np.uint8)
    masks[0, 40:50, 10:20] = 1
    picture = np.asarray(draw_instances(grey(), labels=[5], masks=masks, mask_alpha=0.5, show_legend=False,
                                        min_side=0))
    assert tuple(picture[45, 15]) == blend((100, 100, 100), class_color(5), 0.5)
    assert tuple(picture[30, 15]) == (100, 100, 100)  # outside the mask: untouched


def test_float_masks_are_thresholded_and_model_shape_accepted():
    probabilities = torch.zeros(1, 1, 60, 80)
    probabilities[0, 0, 40:50, 10:20] = 0.7
    probabilities[0, 0, 50:55, 10:20] = 0.3
    picture = np.asarray(draw_instances(grey(), labels=torch.tensor([2]), masks=probabilities,
                                        mask_alpha=0.25, show_legend=False, min_side=0))
    assert tuple(picture[45, 15]) == blend((100, 100, 100), class_color(2), 0.25)
    assert tuple(picture[52, 15]) == (100, 100, 100)


def test_box_outline_tag_and_legend_strip():
    box = [20, 30, 50, 55]  # covers pixels x 20..49, y 30..54
    picture = np.asarray(draw_instances(grey(), boxes=[box], labels=[3], scores=[0.9],
                                        class_names=["bag", "belt", "boots"], line_width=2, min_side=0))
    color = class_color(3)
    for y, x in [(40, 20), (40, 21), (54, 35), (53, 35), (40, 49)]:   # outline, 2 px inwards
        assert tuple(picture[y, x]) == color, (y, x)
    assert tuple(picture[40, 22]) == (100, 100, 100) and tuple(picture[40, 50]) == (100, 100, 100)
    tag = picture[:30, 20:].reshape(-1, 3)          # the tag sits just above the box, filled in its colour
    assert (tag == color).all(axis=1).sum() > 100 and tuple(picture[29, 20]) == color
    without_legend = np.asarray(draw_instances(grey(), boxes=[box], labels=[3], scores=[0.9],
                                               class_names=["bag", "belt", "boots"], min_side=0, show_legend=False))
    assert without_legend.shape == (60, 80, 3)
    assert picture.shape[0] > 60 and picture.shape[1] == 80      # the legend is a strip under the photo ...
    assert (picture[:60] == without_legend).all()                 # ... and changes nothing on it
    assert (picture[60:] == color).all(axis=2).sum() >= 12 * 12   # the class's swatch, a text-high square


def test_legend_lists_each_class_once_with_its_swatch():
    boxes = [[5, 40, 15, 50], [20, 40, 30, 50], [40, 40, 50, 50]]
    picture = np.asarray(draw_instances(grey(height=60, width=200), boxes=boxes, labels=[2, 7, 2],
                                        show_tags=False, min_side=0))
    strip = picture[60:]
    assert (strip == 255).all(axis=2).sum() > 0.5 * strip.shape[0] * strip.shape[1]   # white strip
    columns = {}
    for label in (2, 7):
        swatch = (strip == class_color(label)).all(axis=2)
        rows, cols = np.flatnonzero(swatch.any(axis=1)), np.flatnonzero(swatch.any(axis=0))
        assert len(rows) == len(cols) >= 12 and swatch.sum() == len(rows) * len(cols)  # one filled square
        columns[label] = cols
    assert columns[2].max() < columns[7].min()                   # label order, left to right in one row


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="labels"):
        draw_instances(grey(), boxes=[[0, 0, 5, 5]])
    with pytest.raises(ValueError, match="boxes: expected 2"):
        draw_instances(grey(), boxes=[[0, 0, 5, 5]], labels=[1, 2])
    with pytest.raises(ValueError, match="masks: expected shape"):
        draw_instances(grey(), labels=[1], masks=np.zeros((1, 5, 5)))
    with pytest.raises(ValueError, match="attributes: expected 1 lists"):
        draw_instances(grey(), boxes=[[0, 0, 5, 5]], labels=[1], attributes=[["striped"], []])


def test_attributes_are_written_after_the_tag():
    image, box, names = grey(height=120, width=400), [20, 50, 300, 110], ["dress"]
    options = dict(boxes=[box], labels=[1], scores=[0.93], class_names=names, min_side=0, font_size=12,
                   show_legend=False)
    plain = np.asarray(draw_instances(image, **options))
    drawn = np.asarray(draw_instances(image, attributes=[["striped", "midi"]], **options))
    short, = overlay_layout((400, 120), [box], [1], scores=[0.93], class_names=names, min_side=0, font_size=12,
                            show_legend=False).tags
    long, = overlay_layout((400, 120), [box], [1], scores=[0.93], class_names=names, min_side=0, font_size=12,
                           show_legend=False, attributes=[["striped", "midi"]]).tags
    assert (short.text, long.text) == ("dress 0.93", "dress 0.93 | striped, midi")
    assert short.rect[:2] == long.rect[:2] and long.rect[2] > short.rect[2]   # the same place, wider
    assert drawn.shape == plain.shape and (drawn != plain).any()
    color, (x0, y0, x1, y1) = class_color(1), long.rect
    assert tuple(drawn[y0, x1 - 1]) == color and tuple(plain[y0, x1 - 1]) == (100, 100, 100)  # tag's far corner
    added = drawn[y0:y1, short.rect[2]:x1].reshape(-1, 3)      # the part of the tag that holds the attributes
    assert ((added != color).any(axis=1)).sum() > 50          # letters drawn there, in the text colour
    below = slice(y1, 120)
    assert (drawn[below] == plain[below]).all()               # nothing else changes


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
    picture = np.asarray(draw_record(record, ["top"], show_legend=False, show_tags=False, mask_alpha=0.5,
                                     min_side=0))
    # the box outline is drawn over the mask; inside, the blended colour
    assert tuple(picture[8, 7]) == blend((100, 100, 100), class_color(1), 0.5)
    assert tuple(picture[8, 2]) == class_color(1)

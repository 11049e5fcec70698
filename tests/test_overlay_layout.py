"""Overlay layout: readable scale, text and line sizes, tags that neither overlap nor hide objects.

The golden layouts (tests/fixtures/overlays/layout_{128,800,3000}.json, written by make_goldens.py there)
are one synthetic picture at each size with five, four and five detections, two of them competing for
the same spot. Looked at when they were kept: at 128 px the picture is drawn 4x (512 px) with 12-px
text and 2-px lines and the legend under it; at 800 px 16-px text; at 3000x2000 49-px text and 6-px
lines (readable when the picture is shown 1000 px wide). Every tag sits just above or below its own box.
"""
import itertools
import json
import os

import numpy as np
import pytest

from maskrcnn.data.records import segmentation_to_mask
from maskrcnn.overlay_layout import (
    MAX_TAG_FRACTION,
    canvas_boxes,
    connector,
    fit_tag_text,
    load_font,
    overlay_layout,
    readable_factor,
    tag_text,
    text_size,
)
from maskrcnn.visualize import class_color, draw_instances

GOLDENS = os.path.join(os.path.dirname(__file__), "fixtures", "overlays")


def disjoint(a, b):
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_small_images_are_enlarged_by_a_whole_factor():
    assert readable_factor(128, 128) == 4           # 512 / 128
    assert readable_factor(42, 56) == 9             # round(512 / 56) = round(9.14)
    assert readable_factor(300, 200) == 2           # round(1.71)
    assert readable_factor(400, 300) == 1           # round(1.28): big enough
    assert readable_factor(3000, 2000) == 1
    assert readable_factor(128, 128, min_side=0) == 1


def test_text_and_lines_grow_with_the_picture():
    assert text_size(512, 512) == 12                # 0.02 * 512 = 10.2 -> the 12-pixel floor
    assert text_size(800, 800) == 16
    assert text_size(3000, 2000) == 49              # 0.02 * sqrt(6e6) = 48.99
    layout = overlay_layout((3000, 2000), [[100, 100, 900, 900]], [1], scores=[0.9])
    assert (layout.factor, layout.font_size, layout.line_width) == (1, 49, 6)   # round(49 / 8) = 6
    layout = overlay_layout((128, 128), [[10, 40, 60, 90]], [1], scores=[0.9])
    assert (layout.factor, layout.photo_size, layout.font_size, layout.line_width) == (4, (512, 512), 12, 2)


def test_canvas_boxes_cover_whole_enlarged_pixels():
    # [10.5, 20, 30.2, 40] covers image pixels x 10..30, y 20..39 -> canvas x 40..123, y 80..159 at factor 4
    assert canvas_boxes([[10.5, 20, 30.2, 40]], 4, (512, 512)).tolist() == [[40, 80, 124, 160]]
    assert canvas_boxes([[-5, 100, 200, 140]], 4, (512, 512)).tolist() == [[0, 400, 512, 512]]  # clipped


def test_a_second_tag_on_the_same_spot_goes_elsewhere():
    boxes = [[100, 100, 200, 200], [102, 102, 202, 202]]  # one object, two guesses
    layout = overlay_layout((400, 400), boxes, [1, 2], scores=[0.9, 0.6], class_names=["bag", "belt"],
                            min_side=0, font_size=12)
    first, second = layout.tags
    assert (first.text, first.place, first.step) == ("bag 0.90", "above", 0)
    assert first.rect[3] == 100 and first.rect[0] == 100          # flush on top of its box, left-aligned
    assert disjoint(first.rect, second.rect)
    assert second.step == 0 and second.place in ("above", "below")
    assert layout.hidden == []


def test_best_score_gets_the_best_place():
    # Side by side, 50 px apart: both boxes' spots above their left corner collide; the 0.9 detection
    # (index 1) is served first and takes its spot, the 0.6 one goes under its own box.
    boxes = [[100, 100, 200, 200], [150, 100, 250, 200]]
    layout = overlay_layout((400, 400), boxes, [1, 2], scores=[0.6, 0.9], class_names=["handbag", "sunglasses"],
                            min_side=0, font_size=12)
    low, high = layout.tags
    assert (high.index, high.place, high.step) == (1, "above", 0)
    assert high.rect[0] == 150 and high.rect[3] == 100
    assert (low.index, low.place, low.step) == (0, "below", 0)
    assert low.rect[0] == 100 and low.rect[1] == 200
    assert 100 + (low.rect[2] - low.rect[0]) > 150     # its spot above would have run into the other tag


def test_tags_avoid_covering_objects():
    # The first box touches the top edge (no room above); right under it lies a second object. Below the
    # box the tag would cover that object's mask; inside the box's top edge it covers only the box's own
    # outline (2-px lines), which is less, so it goes inside.
    masks = np.zeros((2, 200, 200), dtype=bool)
    masks[1, 60:120, 0:200] = True
    layout = overlay_layout((200, 200), [[20, 0, 120, 50], [0, 60, 200, 120]], [1, 2], scores=[0.9, 0.8],
                            masks=masks, min_side=0, font_size=12)
    font = load_font(12)
    tag_h = font.getbbox("Agy|")[3] + 2 * 2                    # text height + padding 12 // 6 = 2 each side
    tag_w = int(np.ceil(font.getlength("1 0.90"))) + 2 * 2
    below = (50 + tag_h - 60) / tag_h                           # rows of the second mask under a tag below
    inside = (2 * tag_w + 2 * (tag_h - 2)) / (tag_w * tag_h)    # top outline rows + left outline columns
    assert inside < below
    tag = layout.tags[0]
    assert (tag.place, tag.step, tag.rect) == ("inside", 0, (20, 0, 20 + tag_w, tag_h))
    assert tag.covered == pytest.approx(inside, rel=1e-12)


def test_no_room_anywhere_hides_the_tag_instead_of_overlapping():
    boxes = [[2, 2, 30, 30]] * 4          # four tags on a 40-px picture: they fit only inside the box, one at a time
    layout = overlay_layout((40, 40), boxes, [1, 2, 3, 4], scores=[0.9, 0.8, 0.7, 0.6], min_side=0, font_size=12)
    assert len(layout.tags) == 1 and layout.hidden == [1, 2, 3]   # the best score keeps its tag
    for a, b in itertools.combinations(layout.tags, 2):
        assert disjoint(a.rect, b.rect)


def test_connector_only_when_the_tag_is_away_from_its_box():
    assert connector((10, 0, 50, 18), (10, 18, 90, 90)) is None          # touching the box's top edge
    assert connector((10, 0, 50, 18), (10, 40, 90, 90)) == [(30, 17), (30, 40)]


@pytest.mark.parametrize("side", [128, 800, 3000])
def test_golden_layouts(side):
    with open(os.path.join(GOLDENS, f"layout_{side}.json")) as f:
        golden = json.load(f)
    expected = golden["expected"]
    width, height = golden["size"]
    instances = golden["instances"]
    probe = expected["probe"]
    assert load_font(expected["font_size"]).getlength(probe["text"]) == probe["width"], (
        "Pillow's built-in font measures text differently from the one the goldens were made with: "
        "look at the pictures of tests/fixtures/overlays/make_goldens.py --draw and rewrite the goldens")
    masks = np.stack([segmentation_to_mask(i["polygons"], height, width).astype(bool) for i in instances])
    layout = overlay_layout((width, height), [i["box"] for i in instances], [i["label"] for i in instances],
                            scores=[i["score"] for i in instances], class_names=golden["class_names"], masks=masks)
    assert (layout.factor, layout.font_size, layout.line_width, list(layout.size)) == (
        expected["factor"], expected["font_size"], expected["line_width"], expected["size"])
    assert layout.hidden == expected["hidden"] == []
    got = [{"index": t.index, "text": t.text, "rect": list(t.rect), "place": t.place, "step": t.step,
            "covered": round(t.covered, 4)} for t in layout.tags]
    assert got == expected["tags"]
    # What the golden stands for, independently of the stored numbers:
    photo_w, photo_h = layout.photo_size
    assert len(layout.tags) == len(instances)                        # every detection is named ...
    for tag in layout.tags:
        x0, y0, x1, y1 = tag.rect
        assert 0 <= x0 < x1 <= photo_w and 0 <= y0 < y1 <= photo_h    # ... inside the photo ...
        assert tag.place in ("above", "below") and tag.step == 0     # ... next to its own box ...
        assert tag.covered < 0.1                                     # ... hiding (almost) nothing
    for a, b in itertools.combinations(layout.tags, 2):
        assert disjoint(a.rect, b.rect), (a.text, b.text)            # no two tags overlap
    for entry in layout.legend:                                      # the legend is under the photo
        assert entry.swatch[1] >= photo_h


def test_drawn_tags_are_where_the_layout_says():
    with open(os.path.join(GOLDENS, "layout_128.json")) as f:
        golden = json.load(f)
    instances = golden["instances"]
    grey = np.full((128, 128, 3), 128, dtype=np.uint8)
    picture = np.asarray(draw_instances(grey, [i["box"] for i in instances], [i["label"] for i in instances],
                                        scores=[i["score"] for i in instances], class_names=golden["class_names"]))
    assert list(picture.shape[1::-1]) == golden["expected"]["size"]
    for tag in golden["expected"]["tags"]:
        x0, y0, x1, y1 = tag["rect"]
        color = class_color(instances[tag["index"]]["label"])
        for y, x in ((y0, x0), (y0, x1 - 1), (y1 - 1, x0), (y1 - 1, x1 - 1)):   # the tag's corners
            assert tuple(picture[y, x]) == color, (tag["text"], y, x)


# ----------------------------------------------------------------------------------------------
# Attributes in the tags (a model with an attribute head)
# ----------------------------------------------------------------------------------------------
def test_tag_text_lists_the_attributes_after_a_bar():
    assert tag_text(1, 0.93, ["dress"], ["striped", "midi"]) == "dress 0.93 | striped, midi"
    assert tag_text(1, 0.93, ["dress"], []) == "dress 0.93"                 # none above the threshold
    assert tag_text(2, None, ["dress"], ["dotted"]) == "2 | dotted"          # no name for label 2, no score


def test_long_attribute_lists_are_cut_whole_names_first_then_letters():
    font = load_font(12)
    names = ["striped", "midi", "sleeveless"]
    texts = ["dress 0.93 | striped, midi, sleeveless", "dress 0.93 | striped, midi, \u2026",
             "dress 0.93 | striped, \u2026", "dress 0.93 | stripe\u2026", "dress 0.93 | stri\u2026",
             "dress 0.93 | str\u2026", "dress 0.93 | s\u2026", "dress 0.93"]
    widths = [font.getlength(t) for t in texts]
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == len(widths)  # each step is narrower

    def fit(width):
        return fit_tag_text(1, 0.93, ["dress"], names, font, width)

    assert fit(widths[0]) == texts[0]                        # everything fits
    assert fit(widths[0] - 0.5) == texts[1]                  # the last name no longer fits
    assert fit(widths[1] - 0.5) == texts[2]
    assert fit(widths[2] - 0.5) == texts[3]                  # not even one whole name: its letters
    assert fit(widths[4]) == texts[4] and fit(widths[4] - 0.5) == texts[5]
    assert fit(widths[6] - 0.5) == "dress 0.93"              # no room for a single letter: the plain tag
    assert fit(0) == "dress 0.93"                            # "name score" itself is never cut


def test_tags_with_attributes_are_at_most_half_the_photo_wide():
    boxes = [[20, 100, 380, 300], [20, 320, 120, 390]]
    many = ["midi", "sleeveless", "floral", "a-line", "zip-up", "v-neck", "above-the-knee (length)"]
    layout = overlay_layout((400, 400), boxes, [1, 2], scores=[0.93, 0.6], class_names=["dress", "bag"],
                            min_side=0, font_size=12, attributes=[many, []])
    dress, bag = layout.tags
    assert dress.text.startswith("dress 0.93 | midi, sleeveless, ") and dress.text.endswith(", \u2026")
    assert font_width(dress.text) <= MAX_TAG_FRACTION * 400 < font_width(tag_text(1, 0.93, ["dress"], many))
    assert dress.rect[2] - dress.rect[0] == int(np.ceil(font_width(dress.text))) + 2 * layout.padding
    assert bag.text == "bag 0.60"                            # no attribute above the threshold: the plain tag
    assert [entry.text for entry in layout.legend] == ["dress", "bag"]   # the legend names classes only


def font_width(text, size=12):
    return load_font(size).getlength(text)

"""The dataset checker finds every problem planted in the corrupted fixture set and names each one."""
import os

import pytest
from PIL import Image

from maskrcnn.tools.check_dataset import check_dataset, format_report, main

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data")
CORRUPT_JSON = os.path.join(FIXTURES, "corrupt", "annotations.json")
CORRUPT_IMAGES = os.path.join(FIXTURES, "corrupt", "images")
MODANET_JSON = os.path.join(FIXTURES, "modanet", "modanet2018_instances_train.json")
MODANET_IMAGES = os.path.join(FIXTURES, "modanet", "images")

# (where the problem is, what it says): one entry per planted defect, in the order reported.
PLANTED = [
    ("annotations.json: images[4].id", "duplicate image id 1"),
    ("annotations.json: annotations[7].id", "duplicate annotation id 1"),
    ("annotations.json: annotations[1].bbox", "degenerate box [3, 3, 0, 5]"),
    ("annotations.json: annotations[2].segmentation[0]", "polygon with fewer than 3 points (2)"),
    ("annotations.json: annotations[3].bbox", "out-of-image box [10, 10, 15, 4] (xywh): extends outside the 20x16 image"),
    ("annotations.json: annotations[4].category_id", "unknown category 99"),
    ("annotations.json: annotations[5].segmentation.size", "RLE of the wrong size [10, 10], the image is [16, 20]"),
    ("annotations.json: annotations[6].bbox", "expected 4 numbers, got 3"),
    ("annotations.json: annotations[8].image_id", "no image with id 9"),
    ("images/missing.jpg (image_id 2)", "missing image file"),
    ("images/broken.jpg (image_id 3)", "undecodable image"),
    ("images/small.jpg (image_id 4)", "size mismatch: the image is 10x8 (w x h), the annotations say 20x16"),
]


def test_every_planted_problem_is_found_and_named():
    report = check_dataset("coco", CORRUPT_JSON, CORRUPT_IMAGES)
    assert len(report.problems) == len(PLANTED)
    for problem, (where, message) in zip(report.problems, PLANTED):
        assert problem.where.endswith(where), (problem.where, where)
        assert problem.message.startswith(message), (problem.message, message)


def test_statistics_of_the_corrupted_set():
    report = check_dataset("coco", CORRUPT_JSON, CORRUPT_IMAGES)
    # kept: image 1 (annotations 0 and 3), image 4 (the duplicate-id annotation 7); images 2, 3, 5 empty
    assert (report.num_images, report.num_instances, report.num_empty_images) == (5, 3, 3)
    assert report.per_class == [(1, "top", 1, 1), (2, "bag", 2, 2)]
    assert sorted(report.areas) == [9, 30, 36]  # 3x3, 6x5, 9x4 (the out-of-image box's polygon)


def test_clean_modanet_fixture_statistics():
    report = check_dataset("coco", MODANET_JSON, MODANET_IMAGES)
    assert report.problems == []
    assert (report.num_images, report.num_instances, report.num_empty_images) == (3, 4, 1)
    counts = {name: (instances, images) for _, name, instances, images in report.per_class}
    assert counts["top"] == (1, 1) and counts["pants"] == (1, 1) and counts["belt"] == (0, 0)
    assert sorted(report.areas) == [75, 96, 300, 450]
    assert report.box_mask_disagreements == 1  # the bag: box [5, 5, 15, 15] vs mask [6, 8, 14, 20]
    text = format_report(report)
    assert "images: 3   instances: 4   images without instances: 1" in text
    assert "min 75  median 198  mean 230.2  max 450" in text
    assert "small 4  medium 0  large 0" in text


def test_command_line_exit_status_and_overlays(tmp_path, capsys):
    out = tmp_path / "overlays"
    status = main(["--format", "coco", "--annotations", CORRUPT_JSON, "--images", CORRUPT_IMAGES])
    assert status == 1
    assert "problems: 12" in capsys.readouterr().out
    status = main(["--format", "coco", "--annotations", MODANET_JSON, "--images", MODANET_IMAGES,
                   "--show", "5", "--out", str(out)])
    assert status == 0
    written = sorted(os.listdir(out))
    assert written == ["1_0000001.png", "2_0000002.png"]  # image 3 has no instances
    with Image.open(out / written[0]) as overlay:  # 40x60 drawn round(512 / 60) = 9 times larger, legend under it
        assert overlay.size[0] == 40 * 9 and overlay.size[1] > 60 * 9


def test_config_mode(tmp_path, capsys):
    config = tmp_path / "modanet.yaml"
    config.write_text(f"data:\n  format: coco\n  train_annotations: {MODANET_JSON}\n"
                      f"  train_images: {MODANET_IMAGES}\n")
    assert main(["--config", str(config)]) == 0
    assert "images: 3   instances: 4" in capsys.readouterr().out
    assert main(["--config", str(config), "data.train_annotations=" + CORRUPT_JSON,
                 "data.train_images=" + CORRUPT_IMAGES]) == 1
    assert main(["--config", str(config), "--split", "val"]) == 2  # data.val_annotations is not set
    assert "data.val_annotations is not set" in capsys.readouterr().err
    assert main(["--format", "coco", "--annotations", str(tmp_path / "none.json")]) == 2
    assert "none.json: annotation file not found" in capsys.readouterr().err


def test_arguments_are_checked():
    with pytest.raises(SystemExit):
        main([])
    with pytest.raises(SystemExit):
        main(["--annotations", CORRUPT_JSON])


def test_an_empty_split_is_refused(tmp_path, capsys):
    path = tmp_path / "empty_val.json"
    path.write_text('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "bag"}]}')
    assert main(["--format", "coco", "--annotations", str(path), "--no-images"]) == 2
    assert capsys.readouterr().err == (f"error: {path}: the split has no images; nothing to train or evaluate on\n")


def _decoder_cases(tmp_path):
    """A 16-bit greyscale PNG at half intensity and an RGBA PNG whose transparent pixels hide pure red."""
    import numpy as np

    gray16 = tmp_path / "gray16.png"
    Image.fromarray(np.full((40, 60), 32768, dtype=np.uint16)).save(gray16)
    rgba = tmp_path / "rgba.png"
    pixels = np.zeros((40, 60, 4), dtype=np.uint8)
    pixels[..., 0] = 255  # red, fully transparent
    Image.fromarray(pixels, "RGBA").save(rgba)
    return gray16, rgba


def test_show_decodes_like_training(tmp_path):
    """--show overlays: a 16-bit image is mid-grey (not white) and transparency is white (not the hidden red)."""
    import json as json_module

    gray16, rgba = _decoder_cases(tmp_path)
    data = {"images": [{"id": 1, "file_name": gray16.name, "height": 40, "width": 60},
                       {"id": 2, "file_name": rgba.name, "height": 40, "width": 60}],
            "annotations": [{"id": k, "image_id": k, "category_id": 1, "bbox": [50, 30, 8, 8], "iscrowd": 0,
                             "segmentation": [[50, 30, 58, 30, 58, 38, 50, 38]]} for k in (1, 2)],
            "categories": [{"id": 1, "name": "bag"}]}
    path = tmp_path / "a.json"
    path.write_text(json_module.dumps(data))
    out = tmp_path / "show"
    assert main(["--format", "coco", "--annotations", str(path), "--images", str(tmp_path), "--show", "2",
                 "--out", str(out)]) == 0
    gray_picture = Image.open(out / "1_gray16.png").convert("RGB")
    rgba_picture = Image.open(out / "2_rgba.png").convert("RGB")
    # a pixel away from the instance (bottom right), the tag and the legend
    assert gray_picture.getpixel((5, 35)) == (128, 128, 128)  # 32768 / 65535 -> 0.5 -> 128
    assert rgba_picture.getpixel((5, 35)) == (255, 255, 255)


# ----------------------------------------------------------------------------------------------
# Attribute ids outside the attribute table (data.attributes)
# ----------------------------------------------------------------------------------------------
FASHIONPEDIA_JSON = os.path.join(FIXTURES, "fashionpedia", "instances_attributes_val2020.json")
FASHIONPEDIA_IMAGES = os.path.join(FIXTURES, "fashionpedia", "images")


def _fashionpedia_with_unknown_ids(tmp_path, other_supercategory=False):
    """The Fashionpedia fixture (attributes 115 and 136, annotations 11 and 12 of image 7) plus annotation 13
    carrying ids 999 (listed nowhere) and 136; optionally 136 moved to a second supercategory."""
    import json as json_module

    with open(FASHIONPEDIA_JSON) as f:
        data = json_module.load(f)
    data["annotations"].append({"id": 13, "image_id": 7, "category_id": 0, "attribute_ids": [999, 136],
                                "segmentation": [[2, 14, 10, 14, 10, 20, 2, 20]], "bbox": [2, 14, 8, 6],
                                "area": 48, "iscrowd": 0})
    if other_supercategory:
        data["attributes"][1]["supercategory"] = "other"
    path = tmp_path / "instances_attributes_val2020.json"
    path.write_text(json_module.dumps(data))
    return str(path)


def test_attribute_ids_outside_the_table_are_problems_with_count_and_example(tmp_path, capsys):
    path = _fashionpedia_with_unknown_ids(tmp_path)
    report = check_dataset("coco", path, FASHIONPEDIA_IMAGES, categories="fashionpedia", attributes="file")
    assert [str(p) for p in report.problems] == [
        f"{path}: attribute_ids: attribute id 999 is not in {path} (1 annotation(s), e.g. image_id 7, "
        "annotation id 13)"]
    assert report.unselected_attributes == []
    assert "attributes: 2 attributes of" in format_report(report)
    # without data.attributes there is no table, and nothing to report
    assert check_dataset("coco", path, FASHIONPEDIA_IMAGES, categories="fashionpedia").problems == []
    assert main(["--format", "coco", "--annotations", path, "--images", FASHIONPEDIA_IMAGES,
                 "--categories", "fashionpedia", "--attributes", "file"]) == 1
    assert "attribute id 999 is not in" in capsys.readouterr().out
    assert main(["--format", "coco", "--annotations", FASHIONPEDIA_JSON, "--images", FASHIONPEDIA_IMAGES,
                 "--categories", "fashionpedia", "--attributes", "file"]) == 0   # the fixture as shipped


def test_ids_left_out_by_a_supercategory_selection_are_expected_not_errors(tmp_path, capsys):
    path = _fashionpedia_with_unknown_ids(tmp_path, other_supercategory=True)
    config = tmp_path / "fashionpedia.yaml"
    config.write_text(f"data:\n  format: coco\n  categories: fashionpedia\n  train_annotations: {path}\n"
                      f"  train_images: {FASHIONPEDIA_IMAGES}\n  attributes: file\n"
                      f"  attribute_supercategories: [fixture]\n")
    assert main(["--config", str(config)]) == 1             # 999 is in no supercategory: still a problem
    out = capsys.readouterr().out
    assert "problems: 1\n" in out and "attribute id 999 is not in" in out
    assert ("note: 1 attribute id(s) of supercategories that data.attribute_supercategories leaves out "
            "(expected, not an error: the model ignores them)\n"
            "  attribute id 136: 2 annotation(s), e.g. image_id 7, annotation id 11") in out
    report = check_dataset("coco", path, FASHIONPEDIA_IMAGES, categories="fashionpedia", attributes="file",
                           attribute_supercategories=["fixture"])
    assert report.unselected_attributes == [(136, 2, "image_id 7, annotation id 11")]  # annotations 11 and 13
    assert "attributes: 1 attributes of" in format_report(report)
    assert main(["--config", str(config), "data.attribute_supercategories=[sleeve]"]) == 2   # not in the table
    assert "data.attribute_supercategories: ['sleeve'] not in" in capsys.readouterr().err

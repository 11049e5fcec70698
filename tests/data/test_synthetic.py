"""The synthetic fashion set: byte-identical from a seed, annotations that agree with their masks (visible,
occlusion-aware, disjoint), sensible object sizes, and a round trip through the COCO adapter and the Dataset."""
import filecmp
import json
import os

import numpy as np
import pytest
import torch

from maskrcnn.data import load_dataset
from maskrcnn.data.dataset import FashionDataset
from maskrcnn.data.records import mask_to_box, segmentation_to_mask
from maskrcnn.data.synthetic import CLASS_NAMES, generate_synthetic_dataset, main

SIZE = 128


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    return generate_synthetic_dataset(out, num_train=24, num_val=4, seed=3, image_size=SIZE)


def _files(folder):
    return sorted(os.listdir(folder))


def test_same_seed_writes_identical_bytes(synthetic, tmp_path):
    again = generate_synthetic_dataset(str(tmp_path / "again"), num_train=24, num_val=4, seed=3, image_size=SIZE)
    for split in ("train", "val"):
        assert filecmp.cmp(synthetic[split]["annotations"], again[split]["annotations"], shallow=False)
        names = _files(synthetic[split]["images"])
        assert names == _files(again[split]["images"]) and len(names) == (24 if split == "train" else 4)
        for name in names:
            assert filecmp.cmp(os.path.join(synthetic[split]["images"], name),
                               os.path.join(again[split]["images"], name), shallow=False)


def test_other_seed_differs_and_prefixes_do_not_depend_on_count(synthetic, tmp_path):
    other = generate_synthetic_dataset(str(tmp_path / "other"), num_train=3, num_val=0, seed=4, image_size=SIZE)
    first = os.path.join(synthetic["train"]["images"], "000001.jpg")
    assert not filecmp.cmp(first, os.path.join(other["train"]["images"], "000001.jpg"), shallow=False)
    fewer = generate_synthetic_dataset(str(tmp_path / "fewer"), num_train=3, num_val=0, seed=3, image_size=SIZE)
    for name in _files(fewer["train"]["images"]):
        assert filecmp.cmp(os.path.join(synthetic["train"]["images"], name),
                           os.path.join(fewer["train"]["images"], name), shallow=False)


def test_annotations_agree_with_their_visible_masks(synthetic):
    coco = json.load(open(synthetic["train"]["annotations"]))
    assert [c["name"] for c in coco["categories"]] == CLASS_NAMES == [
        "bag", "footwear", "outer", "dress", "pants", "top", "skirt", "headwear"]
    assert [c["id"] for c in coco["categories"]] == list(range(1, 9))
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    assert set(by_image) == {im["id"] for im in coco["images"]}  # every image has objects
    kinds = set()
    for image in coco["images"]:
        assert (image["height"], image["width"]) == (SIZE, SIZE)
        anns = by_image[image["id"]]
        assert 1 <= len(anns) <= 4
        union = np.zeros((SIZE, SIZE), dtype=np.int64)
        for ann in anns:
            mask = segmentation_to_mask(ann["segmentation"], SIZE, SIZE)
            x1, y1, x2, y2 = mask_to_box(mask).tolist()
            assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            assert ann["area"] == int(mask.sum()) > 0
            assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= 8
            union += mask
            kinds.add(type(ann["segmentation"]).__name__)
            if isinstance(ann["segmentation"], list):  # unoccluded: a polygon; its longer side is 15-60 % of
                longer = max(x2 - x1, y2 - y1) / SIZE  # the image side, up to the 8-degree turn's 13 % growth
                assert 0.14 <= longer <= 0.6 * 1.13 + 1 / SIZE
        assert union.max() == 1  # visible masks never overlap: covered pixels belong to the top object only
    assert kinds == {"list", "dict"}  # both fully visible (polygons) and partly covered (RLE) objects occur


def test_painted_pixels_follow_the_masks(synthetic):
    """The outline of each visible object is painted darker than the fabric just inside it."""
    from PIL import Image

    coco = json.load(open(synthetic["val"]["annotations"]))
    ann = next(a for a in coco["annotations"] if isinstance(a["segmentation"], list))
    image = np.asarray(Image.open(os.path.join(synthetic["val"]["images"], f"{ann['image_id']:06d}.jpg")),
                       dtype=np.float64)
    mask = segmentation_to_mask(ann["segmentation"], SIZE, SIZE).astype(bool)
    inner = mask.copy()
    for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
        inner &= np.roll(mask, shift, axis=axis)
    outline = mask & ~inner
    deep = inner.copy()
    for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
        deep &= np.roll(inner, shift, axis=axis)
    assert image[outline].mean() < image[deep & ~outline].mean()


def test_round_trip_through_the_coco_adapter_and_the_dataset(synthetic):
    records = load_dataset("coco", synthetic["val"]["annotations"], synthetic["val"]["images"])
    assert records.class_names == CLASS_NAMES
    coco = json.load(open(synthetic["val"]["annotations"]))
    dataset = FashionDataset(records)
    for index, record in enumerate(dataset.records):
        image, target = dataset[index]
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
        anns = [a for a in coco["annotations"] if a["image_id"] == target["image_id"]]
        assert target["labels"].tolist() == [a["category_id"] for a in anns]
        for mask, box, ann in zip(target["masks"], target["boxes"], anns):
            expected = segmentation_to_mask(ann["segmentation"], SIZE, SIZE)
            assert np.array_equal(mask.numpy(), expected)
            x, y, w, h = ann["bbox"]
            assert box.tolist() == [x, y, x + w, y + h]
    assert dataset.num_skipped_images == 0 and dataset.num_skipped_annotations == 0


def test_command_line_and_bad_sizes(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--num-train", "2", "--num-val", "1", "--seed", "0", "--size", "96", "64"])
    assert "instances_train.json" in capsys.readouterr().out
    coco = json.load(open(tmp_path / "cli" / "instances_train.json"))
    assert [(im["width"], im["height"]) for im in coco["images"]] == [(96, 64), (96, 64)]
    with pytest.raises(ValueError, match="image_size"):
        generate_synthetic_dataset(str(tmp_path / "tiny"), 1, 1, 0, image_size=16)


def test_python_dash_m_runs_without_a_runpy_warning(tmp_path):
    # `python -m maskrcnn.data.synthetic` (scripts/demo.sh) used to print runpy's RuntimeWarning, because the
    # package's __init__ imported the module before runpy ran it as __main__.
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "maskrcnn.data.synthetic",
                           "--out", str(tmp_path), "--num-train", "1", "--num-val", "0", "--size", "32"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert os.path.isfile(tmp_path / "instances_train.json")

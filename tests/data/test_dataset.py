"""FashionDataset and read_image: decoding (EXIF, 16-bit, CMYK, palette, alpha), targets against hand-computed
masks and boxes, and bad data that is skipped with one warning naming it, counted, or raised under strict."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.data.dataset import FashionDataset, read_image
from maskrcnn.data.problems import DataError, DataWarning
from maskrcnn.data.transforms import RandomAffine, RandomHorizontalFlip, Compose

EXIF_ORIENTATION = 0x0112


def write_rgb(path, height=6, width=8, value=(10, 200, 30), fmt="PNG"):
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:] = value
    Image.fromarray(array).save(path, format=fmt)
    return str(path)


# ---------------------------------------------------------------------------------------------- read_image
def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((2, 4, 3), dtype=np.uint8)  # stored 2 rows x 4 columns
    stored[0, 0] = (255, 255, 255)  # the stored top-left pixel is white
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "sideways.png"
    Image.fromarray(stored).save(path, exif=exif)
    image = read_image(str(path))
    assert image.shape == (3, 4, 2)  # displayed: 4 rows x 2 columns
    # clockwise turn: the stored top-left corner ends up top-right; nothing else is white
    assert image[:, 0, 1].tolist() == [1.0, 1.0, 1.0]
    assert image.sum().item() == 3.0


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = read_image(str(path))
    expected = values.astype(np.float64) / 65535.0
    for channel in range(3):
        assert np.abs(image[channel].numpy() - expected).max() < 1e-7


def test_cmyk_palette_grey_and_alpha_become_rgb(tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk, quality=100)  # no cyan, full magenta + yellow = red
    red = read_image(str(cmyk))
    assert red.shape == (3, 8, 8)
    assert np.allclose(red.mean(dim=(1, 2)).numpy(), [1.0, 0.0, 0.0], atol=0.03)

    palette = Image.new("P", (3, 2))
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png")
    blue = read_image(str(tmp_path / "p.png"))
    assert blue[:, 0, 1].tolist() == [0.0, 0.0, 1.0] and blue[:, 0, 0].tolist() == [0.0, 0.0, 0.0]

    Image.new("L", (2, 2), 51).save(tmp_path / "grey.png")
    grey = read_image(str(tmp_path / "grey.png"))
    assert torch.allclose(grey, torch.full((3, 2, 2), 0.2))

    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # fully transparent: shows the white background
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    composited = read_image(str(tmp_path / "alpha.png"))
    assert composited[:, 0, 0].tolist() == [1.0, 0.0, 0.0] and composited[:, 0, 1].tolist() == [1.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------- targets
def make_record(path, image_id=1, height=6, width=8, annotations=None):
    return {"file_name": str(path), "image_id": image_id, "height": height, "width": width,
            "annotations": annotations if annotations is not None else []}


RECTANGLE = {"bbox": [1.0, 1.0, 5.0, 4.0], "category_id": 2, "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]],
             "iscrowd": 0}
# column-major (Fortran) runs on the 6x8 image: skip 14 pixels (columns 0-1 and two rows of column 2), then 3
# pixels = rows 2-4 of column 2; then 3 more zeros, and 2 pixels = rows 2-3 of column 3; the rest is zero.
RLE_INSTANCE = {"bbox": [2.0, 2.0, 4.0, 5.0], "category_id": 1,
                "segmentation": {"size": [6, 8], "counts": [14, 3, 3, 2, 26]}, "iscrowd": 0}
CROWD = {"bbox": [0.0, 0.0, 8.0, 6.0], "category_id": 1, "segmentation": [[0, 0, 8, 0, 8, 6, 0, 6]],
         "iscrowd": 1}


def test_target_matches_hand_computed_masks_boxes_labels(tmp_path):
    path = write_rgb(tmp_path / "a.png")
    dataset = FashionDataset([make_record(path, 42, annotations=[RECTANGLE, RLE_INSTANCE, CROWD])],
                             num_classes=2)
    image, target = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 6, 8)
    assert torch.allclose(image[:, 0, 0], torch.tensor([10, 200, 30]) / 255.0)
    assert target["image_id"] == 42
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [2, 1]  # the crowd is left out
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].tolist() == [[1, 1, 5, 4], [2, 2, 4, 5]]
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (2, 6, 8)
    expected_rectangle = np.zeros((6, 8), dtype=np.uint8)
    expected_rectangle[1:4, 1:5] = 1
    assert np.array_equal(masks[0].numpy(), expected_rectangle)
    expected_rle = np.zeros((6, 8), dtype=np.uint8)
    expected_rle[2:5, 2] = 1
    expected_rle[2:4, 3] = 1
    assert np.array_equal(masks[1].numpy(), expected_rle)
    assert dataset.num_skipped_images == 0 and dataset.num_skipped_annotations == 0


def test_image_without_annotations_gives_empty_tensors(tmp_path):
    dataset = FashionDataset([make_record(write_rgb(tmp_path / "e.png"))])
    _, target = dataset[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 6, 8) and target["masks"].dtype == torch.uint8


def test_boxes_are_clipped_to_the_image(tmp_path):
    ann = dict(RECTANGLE, bbox=[-3.0, 1.0, 12.0, 4.0])
    _, target = FashionDataset([make_record(write_rgb(tmp_path / "c.png"), annotations=[ann])])[0]
    assert target["boxes"].tolist() == [[0, 1, 8, 4]]


def test_record_set_supplies_class_count(tmp_path):
    class RecordSetLike:
        records = [make_record(write_rgb(tmp_path / "r.png"), annotations=[RECTANGLE])]
        class_names = ["bag"]  # K = 1: the rectangle's category 2 is unknown

    dataset = FashionDataset(RecordSetLike())
    assert dataset.num_classes == 1 and dataset.class_names == ["bag"]
    with pytest.warns(DataWarning, match=r"r\.png: annotations\[0\]\.category_id"):
        _, target = dataset[0]
    assert target["labels"].numel() == 0


# ---------------------------------------------------------------------------------------------- bad data
def broken_set(tmp_path):
    good0 = write_rgb(tmp_path / "good0.png")
    missing = str(tmp_path / "missing.jpg")
    truncated = tmp_path / "truncated.jpg"
    write_rgb(truncated, 40, 40, fmt="JPEG")
    truncated.write_bytes(truncated.read_bytes()[:200])
    wrong_size = write_rgb(tmp_path / "wrong_size.png", 6, 9)
    good1 = write_rgb(tmp_path / "good1.png")
    records = [make_record(good0, 1, annotations=[RECTANGLE]), make_record(missing, 2),
               make_record(str(truncated), 3, 40, 40), make_record(wrong_size, 4), make_record(good1, 5)]
    return records


def test_broken_images_are_skipped_with_one_warning_each_and_counted(tmp_path):
    dataset = FashionDataset(broken_set(tmp_path))
    with pytest.warns(DataWarning) as caught:
        ids = [dataset[i][1]["image_id"] for i in range(len(dataset))]
    assert ids == [1, 5, 5, 5, 5]  # each broken image is replaced by the next good one
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 3
    assert "missing.jpg" in messages[0] and "truncated.jpg" in messages[1]
    assert "wrong_size.png" in messages[2] and "6x9" in messages[2] and "6x8" in messages[2]
    assert dataset.num_skipped_images == 3
    assert dataset.skipped_files() == [r["file_name"] for r in dataset.records[1:4]]
    assert "skipped 3 broken image(s)" in dataset.skip_summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # a second epoch warns no more
        assert [dataset[i][1]["image_id"] for i in range(len(dataset))] == [1, 5, 5, 5, 5]


def test_strict_raises_naming_the_file(tmp_path):
    dataset = FashionDataset(broken_set(tmp_path), strict=True)
    assert dataset[0][1]["image_id"] == 1
    with pytest.raises(DataError, match="missing.jpg"):
        dataset[1]
    with pytest.raises(DataError, match="truncated.jpg"):
        dataset[2]


def test_broken_annotations_are_dropped_with_a_warning_naming_them(tmp_path):
    path = write_rgb(tmp_path / "anns.png")
    annotations = [
        RECTANGLE,
        dict(RECTANGLE, segmentation=[[1, 1, 5, 1]], id=77),  # a polygon of 2 points
        dict(RECTANGLE, category_id=9),  # unknown class
        dict(RECTANGLE, bbox=[3.0, 2.0, 3.0, 5.0]),  # zero width
        dict(RLE_INSTANCE, segmentation={"size": [5, 8], "counts": [14, 3, 3, 2, 18]}),  # RLE of the wrong size
        dict(RECTANGLE, segmentation=[[9, 7, 12, 7, 12, 9]]),  # polygon entirely outside: empty mask
    ]
    dataset = FashionDataset([make_record(path, annotations=annotations)], num_classes=2)
    with pytest.warns(DataWarning) as caught:
        _, target = dataset[0]
    assert target["labels"].tolist() == [2]
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 5 and all("anns.png" in m for m in messages)
    assert "annotations[1] (id 77).segmentation" in messages[0] and "fewer than 3 points" in messages[0]
    assert "annotations[2].category_id" in messages[1]
    assert "annotations[3].bbox" in messages[2]
    assert "annotations[4].segmentation" in messages[3] and "wrong size" in messages[3]
    assert "annotations[5].segmentation" in messages[4] and "empty" in messages[4]
    assert dataset.num_skipped_annotations == 5 and dataset.num_skipped_images == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        dataset[0]
    with pytest.raises(DataError, match=r"annotations\[1\] \(id 77\)"):
        FashionDataset([make_record(path, annotations=annotations)], strict=True)[0]


def test_skip_counts_reach_the_main_process_from_workers(tmp_path):
    dataset = FashionDataset(broken_set(tmp_path))
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=lambda b: b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = [batch[0][1]["image_id"] for batch in loader]
    assert ids == [1, 5, 5, 5, 5]
    assert dataset.num_skipped_images == 3


def test_every_image_broken_raises(tmp_path):
    dataset = FashionDataset([make_record(str(tmp_path / "nothing.png"))])
    with pytest.warns(DataWarning), pytest.raises(DataError, match="every one of the 1 images"):
        dataset[0]


# ---------------------------------------------------------------------------------------------- augmentation
def test_augmentation_is_reproducible_per_seed_epoch_and_index(tmp_path):
    array = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(array).save(tmp_path / "x.png")
    record = make_record(str(tmp_path / "x.png"), height=20, width=24,
                         annotations=[dict(RECTANGLE, bbox=[2.0, 3.0, 15.0, 17.0],
                                           segmentation=[[2, 3, 15, 3, 15, 17, 2, 17]])])
    pipeline = Compose([RandomHorizontalFlip(0.5), RandomAffine(1.0, 30, (0.8, 1.2), 0.1, 5, 0.2)])

    def sample(seed, epoch, index=0):
        dataset = FashionDataset([record, record], augmentations=pipeline, seed=seed)
        dataset.set_epoch(epoch)
        return dataset[index]

    a, b = sample(3, 0), sample(3, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["masks"], b[1]["masks"])
    assert not torch.equal(a[0], sample(3, 1)[0])  # another epoch, another draw
    assert not torch.equal(a[0], sample(4, 0)[0])  # another seed
    assert not torch.equal(a[0], sample(3, 0, index=1)[0])  # same picture at another index
    assert a[1]["boxes"].tolist() == [[float(v) for v in box] for box in
                                      [_tight(m) for m in a[1]["masks"].numpy()]]


def _tight(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_a_decompression_bomb_is_skipped_and_counted(tmp_path, monkeypatch):
    bomb, good = tmp_path / "bomb.png", tmp_path / "good.png"
    Image.new("RGB", (8, 6), (10, 20, 30)).save(bomb)
    Image.new("RGB", (4, 3), (200, 100, 0)).save(good)
    # Pillow refuses images above twice MAX_IMAGE_PIXELS: 8x6 = 48 pixels > 2 * 20, 4x3 = 12 pixels is fine
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
    records = [make_record(bomb, image_id=1), make_record(good, image_id=2, height=3, width=4)]
    dataset = FashionDataset(records)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image, target = dataset[0]
    assert target["image_id"] == 2  # the next good image took its place
    assert dataset.num_skipped_images == 1 and dataset.skipped_files() == [str(bomb)]
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 1
    assert messages[0].startswith(f"{bomb}: cannot decode the image (DecompressionBombError: ")
    assert messages[0].endswith("(image skipped)")

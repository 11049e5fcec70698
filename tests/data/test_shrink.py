"""Large photos shrunk in the dataset give the model the same input as building everything at full size.

The reference is the full-size path: ``FashionDataset(records)`` (image, masks and boxes at the photo's
size) followed by the model's ``ImageTransform`` (normalize, then resize: bilinear image, nearest masks,
scaled boxes). The shrunk path is ``FashionDataset(records, input_size=...)`` followed by the same
transform, which then finds the image at its size. What may differ, and the bounds asserted:

- the image: float rounding only (the shrunk path resizes before normalizing, separably), at most
  ``IMAGE_ATOL`` after normalization (values up to 2.64 in magnitude; float32 spacing there is 2.4e-7);
- polygon masks: boundary pixels only. Every disagreeing pixel lies within one pixel of the reference
  mask's boundary (its 3x3 neighbourhood in the reference holds both values), and there are at most
  ``BOUNDARY_SHARE`` of the reference mask's boundary pixels (two pixels with a horizontal flip, which
  then runs after the resize instead of before it);
- RLE masks, labels and boxes: not at all (bit for bit).
"""
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from maskrcnn.data.dataset import FashionDataset
from maskrcnn.data.records import compressed_counts
from maskrcnn.data.shrink import nearest_indices, shrink_image, shrunk_size, size_rule
from maskrcnn.data.transforms import Compose, RandomHorizontalFlip
from maskrcnn.modeling.transform import ImageTransform

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
IMAGE_ATOL = 4e-6  # 16 float32 spacings at the largest normalized magnitude (2.64): rounding, not resampling
BOUNDARY_SHARE = 0.25  # measured: at most 0.14 (the sliver), 0.01-0.09 for garment-sized shapes


def ellipse(cx, cy, rx, ry, points=48):
    angles = np.linspace(0.0, 2.0 * np.pi, points, endpoint=False)
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1).round(2).reshape(-1).tolist()


def make_photo(tmp_path, height=1203, width=1711, seed=0):
    """A photo and a record with polygons, a compressed RLE, an uncompressed RLE, a sliver and an
    instance sticking out of the image, like real files."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) % 256], axis=2).astype(np.int64)
    pixels = np.clip(pixels + rng.integers(-20, 21, size=pixels.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    def at(*fractions):  # fractions of the width and height -> pixel coordinates
        return [round(f * (width if k % 2 == 0 else height), 2) for k, f in enumerate(fractions)]

    def oval(fx, fy, frx, fry):
        return ellipse(fx * width, fy * height, frx * width, fry * height)

    segmentations = [
        [oval(0.23, 0.25, 0.15, 0.15)],
        [oval(0.7, 0.58, 0.18, 0.33), oval(0.18, 0.75, 0.07, 0.17)],  # two parts
        [at(0.88, 0.08, 1.05, 0.1, 1.02, 0.42, 0.85, 0.37)],  # sticks out on the right
        [at(0.35, 0.83, 0.82, 0.832, 0.82, 0.836, 0.35, 0.839)],  # a sliver a few pixels high
    ]
    for polygon in ([oval(0.53, 0.29, 0.12, 0.12)], [oval(0.12, 0.17, 0.05, 0.05)]):
        rle = coco_mask.merge(coco_mask.frPyObjects(polygon, height, width))
        segmentations.append({"size": [height, width], "counts": rle["counts"].decode("ascii")})
    runs = compressed_counts(coco_mask.merge(coco_mask.frPyObjects([oval(0.58, 0.83, 0.06, 0.07)], height,
                                                                   width))["counts"]).tolist()
    segmentations.append({"size": [height, width], "counts": runs})  # uncompressed RLE
    annotations = []
    for k, segmentation in enumerate(segmentations):
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width)) if isinstance(
            segmentation, list) else coco_mask.frPyObjects(segmentation, height, width) if isinstance(
            segmentation["counts"], list) else {"size": [height, width], "counts": segmentation["counts"].encode()}
        x, y, w, h = coco_mask.toBbox(rle).tolist()
        annotations.append({"bbox": [x, y, x + w, y + h], "category_id": 1 + k % 3, "segmentation": segmentation,
                            "iscrowd": 0})
    return {"file_name": str(path), "image_id": 1, "height": height, "width": width, "annotations": annotations}


def model_input(record, input_size, shrink, augmentations=None):
    """What the model's stages after the transform see: (normalized image, resized target)."""
    dataset = FashionDataset([record], num_classes=3, augmentations=augmentations,
                             input_size=input_size if shrink else None)
    image, target = dataset[0]
    transform = ImageTransform(*input_size, MEAN, STD)
    batch, targets = transform([image], [target])
    return image, batch.tensors[0, :, :batch.image_sizes[0][0], :batch.image_sizes[0][1]], targets[0]


def boundary_band(mask, radius=1):
    """(H, W) bool: pixels whose (2 radius + 1)^2 neighbourhood (clipped at the edges) holds both 0 and 1."""
    side = 2 * radius + 1
    padded = np.pad(mask, radius, mode="edge")
    windows = [padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]] for dy in range(side) for dx in range(side)]
    stack = np.stack(windows)
    return stack.min(axis=0) != stack.max(axis=0)


def assert_boundary_only(new, reference, radius=1):
    """Masks (H, W) differing only within ``radius`` pixels of the reference's boundary, on at most
    BOUNDARY_SHARE of that band."""
    band = boundary_band(reference, radius)
    differ = new != reference
    assert not (differ & ~band).any(), "a pixel away from the boundary differs"
    assert differ.sum() <= BOUNDARY_SHARE * band.sum(), (int(differ.sum()), int(band.sum()))


@pytest.mark.parametrize("height, width, input_size", [(1203, 1711, (400, 667)), (1711, 1203, (400, 667)),
                                                       (1203, 2990, (400, 667))])  # last: max-size limited
def test_shrunk_item_matches_the_full_size_path(tmp_path, height, width, input_size):
    record = make_photo(tmp_path, height, width)
    rule = size_rule(*input_size)
    size = shrunk_size(rule, height, width)
    assert size is not None and max(size) <= input_size[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no annotation may be dropped on either path
        full_image, reference_image, reference = model_input(record, input_size, shrink=False)
        small_image, image, target = model_input(record, input_size, shrink=True)
    assert tuple(full_image.shape[1:]) == (height, width) and tuple(small_image.shape[1:]) == size
    assert image.shape == reference_image.shape
    assert (image - reference_image).abs().max().item() <= IMAGE_ATOL
    assert torch.equal(target["labels"], reference["labels"])
    assert torch.equal(target["boxes"], reference["boxes"])  # the model's own float32 ratios, then x 1.0
    masks, reference_masks = target["masks"].numpy(), reference["masks"].numpy()
    kinds = ["polygon" if isinstance(a["segmentation"], list) else "rle" for a in record["annotations"]]
    for kind, mask, reference_mask in zip(kinds, masks, reference_masks):
        if kind == "rle":
            assert np.array_equal(mask, reference_mask)
        else:
            assert_boundary_only(mask, reference_mask)


def test_with_flips_the_boxes_agree_to_rounding(tmp_path):
    record = make_photo(tmp_path)
    flip = Compose([RandomHorizontalFlip(1.0)])
    _, image, target = model_input(record, (400, 667), shrink=True, augmentations=flip)
    _, reference_image, reference = model_input(record, (400, 667), shrink=False, augmentations=flip)
    # Bilinear resampling is mirror-symmetric in exact arithmetic; in float32 the mirrored source coordinate
    # (below 2048 here) rounds differently by up to one spacing, 2**-12, which moves a weight by that much:
    # at most 2**-12 times the largest step between neighbours after normalization (1 / 0.224).
    assert (image - reference_image).abs().max().item() <= 2.0 ** -12 / 0.224
    assert torch.allclose(target["boxes"], reference["boxes"], rtol=0, atol=1e-3)
    # Nearest-neighbour sampling is not mirror-symmetric: flipping before or after it moves an edge by up to
    # one small pixel, on top of the rasterization's own boundary pixel: within two pixels of the boundary.
    for mask, reference_mask in zip(target["masks"].numpy(), reference["masks"].numpy()):
        assert_boundary_only(mask, reference_mask, radius=2)


def test_when_the_model_would_resize_again_the_photo_keeps_its_size(tmp_path):
    rule = size_rule(800, 1333)
    assert shrunk_size(rule, 600, 1000) is None  # enlarged by the model: nothing to save
    # find a size whose shrunk copy the model would resize once more under the rule in this checkout
    again = next(((h, w) for h in range(801, 3000, 7) for w in range(2000, 2600, 3)
                  if rule.resize_scale(h, w) < 1 and shrunk_size(rule, h, w) is None), None)
    if again is not None:
        h, w = again
        scale = rule.resize_scale(h, w)
        size = (math.floor(h * scale), math.floor(w * scale))
        assert (math.floor(size[0] * rule.resize_scale(*size)), math.floor(size[1] * rule.resize_scale(*size))) != size
    record = make_photo(tmp_path, 300, 400)
    dataset = FashionDataset([record], input_size=(800, 1333))
    assert tuple(dataset[0][0].shape) == (3, 300, 400)  # smaller than the model's input: untouched


def test_shrink_image_and_nearest_indices_follow_interpolate():
    rng = np.random.default_rng(3)
    for height, width, size in [(97, 131, (40, 55)), (1001, 777, (333, 258)), (50, 70, (49, 69))]:
        array = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        reference = torch.nn.functional.interpolate(
            torch.from_numpy(array).permute(2, 0, 1).float()[None] / 255.0, size=size, mode="bilinear",
            align_corners=False)[0]  # (3, h, w)
        assert (shrink_image(array, size) - reference).abs().max().item() <= 4 * 2.0 ** -24  # values <= 1
        plane = torch.arange(height, dtype=torch.float32)[None, None, :, None].expand(1, 1, height, 2)
        picked = torch.nn.functional.interpolate(plane, size=(size[0], 2), mode="nearest")[0, 0, :, 0]
        assert nearest_indices(height, size[0]).tolist() == picked.long().tolist()

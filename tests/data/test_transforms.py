"""Augmentation invariants: flips are involutions, boxes stay the tight boxes of their masks after every
geometric augmentation, instances cut below the visible fraction drop, and one seed gives one output."""
import math

import numpy as np
import pytest
import torch

from maskrcnn.data import transforms as T

AUGMENT_CFG = {
    "min_visible_fraction": 0.25,
    "hflip": {"prob": 0.5},
    "vflip": {"prob": 0.5},
    "scale_jitter": {"prob": 0.5, "min_scale": 0.5, "max_scale": 1.8},
    "crop": {"prob": 0.5, "min_fraction": 0.5},
    "affine": {"prob": 0.5, "degrees": 20.0, "scale": [0.8, 1.2], "translate": 0.1, "shear": 8.0},
    "color": {"prob": 0.5, "brightness": 0.3, "contrast": 0.3, "saturation": 0.3},
    "blur": {"prob": 0.5, "sigma": [0.3, 1.5]},
    "noise": {"prob": 0.5, "std": [0.01, 0.05]},
}


def make_sample(seed: int, height: int = 48, width: int = 64, num: int = 3):
    """A random image with ``num`` elliptical instances; channel 0 inside instance i is 0.2 * (i + 1), so the
    image itself says which instance a pixel belongs to (later instances paint over earlier ones)."""
    rng = np.random.default_rng(seed)
    image = rng.random((3, height, width)).astype(np.float32) * 0.1
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    masks = []
    for i in range(num):
        cy, cx = rng.uniform(8, height - 8), rng.uniform(8, width - 8)
        ry, rx = rng.uniform(4, height / 3), rng.uniform(4, width / 3)
        mask = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0
        for earlier in masks:  # keep masks disjoint (visible regions), as in a real annotation
            earlier &= ~mask
        masks.append(mask)
    for i, mask in enumerate(masks):
        image[0][mask] = 0.2 * (i + 1)
    masks = torch.from_numpy(np.stack(masks).astype(np.uint8))
    keep = masks.flatten(1).sum(1) > 0
    masks = masks[keep]
    target = {"boxes": T.masks_to_boxes(masks), "labels": torch.arange(1, num + 1)[keep], "masks": masks,
              "image_id": 7}
    return torch.from_numpy(image), target


def slow_mask_box(mask: np.ndarray):
    """Float64 reference of the whole-pixel rule of docs/conventions.md from the nonzero indices."""
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def assert_tight_boxes(target):
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and target["boxes"].dtype == torch.float32
    assert len(masks) == len(target["boxes"]) == len(target["labels"])
    for mask, box in zip(masks.numpy(), target["boxes"].tolist()):
        assert mask.any(), "an empty mask survived"
        assert box == slow_mask_box(mask)


def assert_labels_follow_masks(image, target, tolerance):
    """Channel 0 inside each mask's interior still shows the value painted for that instance."""
    for mask, label in zip(target["masks"].bool(), target["labels"].tolist()):
        values = image[0][mask]
        assert abs(values.median().item() - 0.2 * label) < tolerance


def test_masks_to_boxes_matches_slow_reference():
    rng = np.random.default_rng(0)
    masks = (rng.random((20, 13, 17)) < 0.05).astype(np.uint8)
    masks[3] = 0
    masks[4] = 0
    masks[4, 12, 16] = 1  # a single pixel in the last row and column -> [16, 12, 17, 13]
    boxes = T.masks_to_boxes(torch.from_numpy(masks))
    assert boxes[3].tolist() == [0, 0, 0, 0]
    assert boxes[4].tolist() == [16, 12, 17, 13]
    for i in range(20):
        if masks[i].any():
            assert boxes[i].tolist() == slow_mask_box(masks[i])
    assert T.masks_to_boxes(torch.zeros((0, 5, 5), dtype=torch.uint8)).shape == (0, 4)


def test_hflip_hand_example_and_involution():
    image = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10)[:1].expand(3, 3, 10).clone()
    masks = torch.zeros((1, 3, 10), dtype=torch.uint8)
    masks[0, 1, 1:4] = 1  # columns 1..3 of row 1: box [1, 1, 4, 2]
    target = {"boxes": torch.tensor([[1.0, 1.0, 4.0, 2.0]]), "labels": torch.tensor([1]), "masks": masks}
    flipped_image, flipped = T.hflip(image, target)
    assert flipped["boxes"].tolist() == [[6.0, 1.0, 9.0, 2.0]]  # columns 6..8 = 9 - (1..3)
    assert flipped["masks"][0, 1].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 0]
    assert flipped_image[0, 0].tolist() == list(range(9, -1, -1))
    back_image, back = T.hflip(flipped_image, flipped)
    assert torch.equal(back_image, image) and torch.equal(back["masks"], masks)
    assert torch.equal(back["boxes"], target["boxes"])


@pytest.mark.parametrize("flip", [T.hflip, T.vflip])
def test_flip_twice_is_identity_and_boxes_stay_tight(flip):
    for seed in range(5):
        image, target = make_sample(seed)
        once_image, once = flip(image, target)
        assert_tight_boxes(once)
        assert_labels_follow_masks(once_image, once, 1e-6)
        twice_image, twice = flip(once_image, once)
        assert torch.equal(twice_image, image)
        for key in ("boxes", "labels", "masks"):
            assert torch.equal(twice[key], target[key])
        assert twice["image_id"] == 7


def test_vflip_hand_example():
    masks = torch.zeros((1, 5, 4), dtype=torch.uint8)
    masks[0, 0:2, 2] = 1  # rows 0..1 of column 2: box [2, 0, 3, 2]
    target = {"boxes": torch.tensor([[2.0, 0.0, 3.0, 2.0]]), "labels": torch.tensor([1]), "masks": masks}
    _, flipped = T.vflip(torch.zeros(3, 5, 4), target)
    assert flipped["boxes"].tolist() == [[2.0, 3.0, 3.0, 5.0]]


def test_crop_drops_instances_below_visible_fraction():
    masks = torch.zeros((2, 20, 20), dtype=torch.uint8)
    masks[0, 0:10, 0:10] = 1  # 100 pixels; a crop from column 6 keeps 4 columns = 40 %
    masks[1, 12:16, 12:20] = 1  # fully inside the crop
    target = {"boxes": T.masks_to_boxes(masks), "labels": torch.tensor([3, 5]), "masks": masks}
    image = torch.rand(3, 20, 20)
    cropped_image, kept = T.crop(image, target, top=0, left=6, height=20, width=14, min_visible=0.3)
    assert kept["labels"].tolist() == [3, 5]
    assert kept["boxes"].tolist() == [[0, 0, 4, 10], [6, 12, 14, 16]]
    assert torch.equal(cropped_image, image[:, :, 6:])
    _, dropped = T.crop(image, target, top=0, left=6, height=20, width=14, min_visible=0.5)
    assert dropped["labels"].tolist() == [5]
    assert dropped["masks"].shape == (1, 20, 14)
    # an instance entirely outside the window drops even with min_visible = 0
    _, outside = T.crop(image, target, top=0, left=10, height=10, width=10, min_visible=0.0)
    assert outside["labels"].tolist() == [] and outside["boxes"].shape == (0, 4)
    with pytest.raises(ValueError, match="not inside"):
        T.crop(image, target, top=5, left=0, height=20, width=20)


def test_resize_doubles_a_block_exactly():
    masks = torch.zeros((1, 10, 10), dtype=torch.uint8)
    masks[0, 2:4, 2:4] = 1
    target = {"boxes": T.masks_to_boxes(masks), "labels": torch.tensor([1]), "masks": masks}
    image, out = T.resize(torch.rand(3, 10, 10), target, 20, 20)
    assert image.shape == (3, 20, 20)
    assert out["boxes"].tolist() == [[4, 4, 8, 8]]
    assert out["masks"].sum().item() == 16
    # shrinking a 1-pixel-wide line by 4 makes it vanish: the instance drops instead of keeping an empty mask
    thin = torch.zeros((1, 16, 16), dtype=torch.uint8)
    thin[0, :, 5] = 1
    _, gone = T.resize(torch.rand(3, 16, 16), {"boxes": T.masks_to_boxes(thin), "labels": torch.tensor([2]),
                                                "masks": thin}, 4, 4)
    assert gone["labels"].numel() == 0


def test_many_masks_are_resampled_in_chunks_like_one_by_one():
    masks = torch.zeros((11, 12, 12), dtype=torch.uint8)
    for i in range(11):
        masks[i, i // 2:i // 2 + 3, i:i + 1 + i % 3] = 1  # 11 different small blocks
    target = {"boxes": T.masks_to_boxes(masks), "labels": torch.arange(11), "masks": masks}
    _, together = T.resize(torch.rand(3, 12, 12), target, 30, 30)
    assert together["labels"].tolist() == list(range(11))
    for i in range(11):
        single = {"boxes": target["boxes"][i:i + 1], "labels": target["labels"][i:i + 1], "masks": masks[i:i + 1]}
        _, alone = T.resize(torch.rand(3, 12, 12), single, 30, 30)
        assert torch.equal(together["masks"][i], alone["masks"][0])


def test_pad_shifts_boxes():
    image, target = make_sample(3, 20, 30, 2)
    padded_image, padded = T.pad(image, target, 40, 50, top=5, left=7)
    assert padded_image.shape == (3, 40, 50)
    assert torch.equal(padded["boxes"], target["boxes"] + torch.tensor([7.0, 5.0, 7.0, 5.0]))
    assert_tight_boxes(padded)


def test_affine_identity_translation_and_quarter_turn():
    image, target = make_sample(1, 32, 32)
    same_image, same = T.affine(image, target, T.affine_matrix(0, 1, 0), (0, 0))
    assert (same_image - image).abs().max().item() < 1e-6
    assert torch.equal(same["masks"], target["masks"]) and torch.equal(same["boxes"], target["boxes"])

    shifted_image, shifted = T.affine(image, target, T.affine_matrix(0, 1, 0), (3, 2))
    assert torch.allclose(shifted_image[:, 2:, 3:], image[:, :-2, :-3], atol=1e-6)
    assert torch.equal(shifted["masks"][:, 2:, 3:], target["masks"][:, :-2, :-3][: len(shifted["masks"])])

    # On a square image pixel centres map onto pixel centres under a quarter turn: exactly torch.rot90.
    turned_image, turned = T.affine(image, target, T.affine_matrix(90, 1, 0), (0, 0))
    assert (turned_image - torch.rot90(image, 1, dims=(-2, -1))).abs().max().item() < 1e-5
    assert torch.equal(turned["masks"], torch.rot90(target["masks"], 1, dims=(-2, -1)))
    assert_tight_boxes(turned)


def test_affine_matrix_is_rotation_times_shear_times_scale():
    a = T.affine_matrix(30, 2.0, 10)
    c, s, t = math.cos(math.radians(30)), math.sin(math.radians(30)), math.tan(math.radians(10))
    expected = 2.0 * torch.tensor([[c, c * t + s], [-s, -s * t + c]], dtype=torch.float64)
    assert torch.allclose(a, expected, atol=1e-12, rtol=0)
    assert abs(torch.linalg.det(a).item() - 4.0) < 1e-12  # shear preserves area


def test_affine_drops_instances_pushed_out():
    masks = torch.zeros((1, 20, 20), dtype=torch.uint8)
    masks[0, 5:15, 14:20] = 1  # touches the right edge; a shift of +4 in x hides 4 of its 6 columns
    target = {"boxes": T.masks_to_boxes(masks), "labels": torch.tensor([1]), "masks": masks}
    _, kept = T.affine(torch.rand(3, 20, 20), target, T.affine_matrix(0, 1, 0), (4, 0), min_visible=0.3)
    assert kept["boxes"].tolist() == [[18, 5, 20, 15]]
    _, dropped = T.affine(torch.rand(3, 20, 20), target, T.affine_matrix(0, 1, 0), (4, 0), min_visible=0.4)
    assert dropped["labels"].numel() == 0


GEOMETRIC = {
    "hflip": T.RandomHorizontalFlip(1.0),
    "vflip": T.RandomVerticalFlip(1.0),
    "zoom_in": T.RandomScaleJitter(1.0, 1.1, 2.0, 0.25),
    "zoom_out": T.RandomScaleJitter(1.0, 0.4, 0.9, 0.25),
    "crop": T.RandomCrop(1.0, 0.4, 0.25),
    "affine": T.RandomAffine(1.0, 30.0, (0.7, 1.3), 0.15, 10.0, 0.25),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_every_geometric_augmentation_keeps_boxes_tight(name):
    augmentation = GEOMETRIC[name]
    for seed in range(12):
        image, target = make_sample(seed)
        out_image, out = augmentation(image, target, torch.Generator().manual_seed(seed))
        assert out_image.dtype == torch.float32 and out_image.shape[0] == 3
        assert out["masks"].shape[1:] == out_image.shape[1:]
        assert 0.0 <= out_image.min().item() and out_image.max().item() <= 1.0
        assert_tight_boxes(out)
        # resampled edges blur the painted values a little; the median inside a mask does not move far
        assert_labels_follow_masks(out_image, out, 0.06 if name in ("hflip", "vflip", "crop") else 0.1)
        assert out["image_id"] == 7


def test_visible_fraction_rule_holds_for_random_crops():
    """Every kept instance keeps >= min_visible of its area; every dropped one kept less (slow check)."""
    for seed in range(20):
        image, target = make_sample(seed, num=4)
        gen = torch.Generator().manual_seed(seed)
        crop_h, crop_w = 20 + seed, 25 + seed
        top = int(torch.randint(0, 48 - crop_h + 1, (), generator=gen))
        left = int(torch.randint(0, 64 - crop_w + 1, (), generator=gen))
        _, out = T.crop(image, target, top, left, crop_h, crop_w, min_visible=0.5)
        for mask, label in zip(target["masks"], target["labels"].tolist()):
            visible = mask[top:top + crop_h, left:left + crop_w].sum().item() / mask.sum().item()
            assert (label in out["labels"].tolist()) == (visible >= 0.5 and visible > 0)


def test_same_seed_same_output_different_seed_differs():
    pipeline = T.build_augmentations(AUGMENT_CFG)
    assert len(pipeline.augmentations) == 8
    image, target = make_sample(4)
    a = pipeline(image, target, torch.Generator().manual_seed(123))
    b = pipeline(image, target, torch.Generator().manual_seed(123))
    assert torch.equal(a[0], b[0])
    for key in ("boxes", "labels", "masks"):
        assert torch.equal(a[1][key], b[1][key])
    outputs = [pipeline(image, target, torch.Generator().manual_seed(s))[0] for s in range(6)]
    assert len({tuple(o.shape) + (round(o.sum().item(), 3),) for o in outputs}) > 1


def test_full_pipeline_keeps_invariants_and_handles_empty_targets():
    pipeline = T.build_augmentations(AUGMENT_CFG)
    for seed in range(25):
        image, target = make_sample(seed)
        out_image, out = pipeline(image, target, torch.Generator().manual_seed(seed))
        assert_tight_boxes(out)
        assert out["masks"].shape[1:] == out_image.shape[1:]
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64),
             "masks": torch.zeros((0, 48, 64), dtype=torch.uint8)}
    for seed in range(10):
        out_image, out = pipeline(torch.rand(3, 48, 64), empty, torch.Generator().manual_seed(seed))
        assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0,) + tuple(out_image.shape[1:])


def test_zero_probabilities_build_an_empty_pipeline_and_bad_values_are_named():
    cfg = {k: (dict(v, prob=0.0) if isinstance(v, dict) else v) for k, v in AUGMENT_CFG.items()}
    pipeline = T.build_augmentations(cfg)
    assert pipeline.augmentations == []
    image, target = make_sample(0)
    out_image, out = pipeline(image, target, torch.Generator().manual_seed(0))
    assert out_image is image and out is target
    with pytest.raises(ValueError, match="hflip: prob"):
        T.RandomHorizontalFlip(1.5)
    with pytest.raises(ValueError, match="scale_jitter"):
        T.RandomScaleJitter(0.5, 2.0, 1.0, 0.2)


def test_color_operations_hand_values():
    image = torch.tensor([[[0.2, 0.4]], [[0.6, 0.2]], [[0.1, 0.3]]])  # (3, 1, 2)
    assert torch.allclose(T.adjust_brightness(image, 1.5), (image * 1.5).clamp(0, 1))
    gray = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    desaturated = T.adjust_saturation(image, 0.0)
    assert torch.allclose(desaturated, gray.expand(3, 1, 2), atol=1e-7)
    flat = T.adjust_contrast(image, 0.0)
    assert torch.allclose(flat, torch.full_like(image, gray.mean().item()), atol=1e-7)
    assert torch.allclose(T.adjust_contrast(image, 1.0), image, atol=1e-7)


def test_gaussian_blur_matches_slow_float64_reference():
    rng = np.random.default_rng(5)
    image = rng.random((3, 9, 11))
    sigma = 1.2
    radius = math.ceil(3 * sigma)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    expected = np.zeros_like(image)
    for c in range(3):
        for y in range(9):
            for x in range(11):
                for dy, wy in zip(offsets, weights):
                    for dx, wx in zip(offsets, weights):
                        yy, xx = min(max(y + dy, 0), 8), min(max(x + dx, 0), 10)  # replicated edges
                        expected[c, y, x] += wy * wx * image[c, yy, xx]
    blurred = T.gaussian_blur(torch.from_numpy(image).float(), sigma)
    assert np.abs(blurred.numpy() - expected).max() < 1e-5


def test_noise_and_photometric_augmentations_leave_the_target_alone():
    image, target = make_sample(2)
    noisy, out = T.RandomGaussianNoise(1.0, (0.05, 0.05))(image * 0 + 0.5, target,
                                                          torch.Generator().manual_seed(0))
    assert out is target
    assert abs((noisy - 0.5).std().item() - 0.05) < 0.003  # 9216 samples: the std is within 6 %
    for aug in (T.ColorJitter(1.0, 0.4, 0.4, 0.4), T.RandomGaussianBlur(1.0, (0.5, 1.0))):
        out_image, out = aug(image, target, torch.Generator().manual_seed(0))
        assert out is target and out_image.shape == image.shape


def test_default_config_builds_the_flip_only_recipe():
    from maskrcnn.config import load_config

    cfg = load_config(overrides=["data.augment.affine.prob=0.3", "data.augment.noise.std=[0.01,0.02]",
                                 "data.augment.noise.prob=1.0"])
    pipeline = T.build_augmentations(cfg.data.augment)
    assert [type(a).__name__ for a in pipeline.augmentations] == [
        "RandomHorizontalFlip", "RandomAffine", "RandomGaussianNoise"]
    assert pipeline.augmentations[2].std == (0.01, 0.02)
    assert [type(a).__name__ for a in T.build_augmentations(load_config().data.augment).augmentations] == [
        "RandomHorizontalFlip"]

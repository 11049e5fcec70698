"""Decoding large photos at a reduced size (``maskrcnn/inference/images.py``): JPEG DCT scaling through Pillow's
draft mode, uint8 box averages, and answers still in original pixels."""
import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from inference_support import make_checkpoint, mode_images
from maskrcnn.data import read_image
from maskrcnn.inference.images import decode_image, network_reduction
from maskrcnn.inference.predictor import Predictor
from maskrcnn.ops import box_iou


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny.pth"))


def smooth_photo(path: str, height: int, width: int, rectangle=(200, 500, 300, 700), amplitude: float = 120) -> str:
    """A JPEG of smooth colour waves (what JPEG keeps) with a red rectangle rows y1:y2, columns x1:x2."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width] / 8.0
    rgb = np.stack([127 + amplitude * np.sin(xx / (4 + 3 * c) + yy / (5 + c) + rng.uniform(0, 6)) for c in range(3)], 2)
    y1, y2, x1, x2 = rectangle
    rgb[y1:y2, x1:x2] = [250, 30, 30]
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path, quality=95)
    return path


def test_network_reduction_leaves_at_least_the_models_input_size():
    assert network_reduction(6000, 6000, 800, 1333) == 7     # scale 800/6000: 6000/7 = 857 >= 800, /8 = 750 < 800
    assert network_reduction(1600, 2400, 800, 1333) == 2    # scale exactly 1/2
    assert network_reduction(130, 200, 64, 96) == 2          # scale min(64/130, 96/200) = 0.48
    assert network_reduction(42, 56, 64, 96) == 1            # the model enlarges it
    assert network_reduction(6000, 6000, 0, 0) == 1          # no model sizes given: no reduction


def test_unreduced_decoding_is_the_training_loaders(tmp_path):
    # The uint8 path must give exactly read_image's floats, for every Pillow mode (EXIF, CMYK, alpha, 16 bit...).
    images = mode_images(str(tmp_path))
    for name, path in images.items():
        if name == "corrupt":
            continue
        decoded = decode_image(path)
        expected = read_image(path)
        assert decoded.reduction == 1 and (decoded.height, decoded.width) == tuple(expected.shape[1:]), name
        assert decoded.image.dtype == torch.float32 and torch.equal(decoded.image, expected), name


def test_jpeg_is_decoded_by_dct_scaling_and_maps_back_to_original_pixels(tmp_path, monkeypatch):
    # A red rectangle, rows 200:500 and columns 300:700, on flat grey (60), stored with 4:2:0 chroma.
    pixels = np.full((768, 1030, 3), 60, dtype=np.uint8)
    pixels[200:500, 300:700] = (250, 30, 30)
    path = str(tmp_path / "photo.jpg")
    Image.fromarray(pixels).save(path, quality=95)
    drafts = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        drafts.append(size)
        return original_draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    reduced = decode_image(path, min_size=64, max_size=96)  # the model's scale is 96/1030: f = 10 = 8 (DCT) x 1
    assert drafts == [(128, 96)]  # 1030 // 8, 768 // 8: one 1/8 decode, never the full image
    assert (reduced.height, reduced.width, reduced.reduction) == (768, 1030, 8)
    assert reduced.image.shape == (3, 96, 129)  # ceil(768 / 8), ceil(1030 / 8)
    # Reduced pixel (i, j) covers original pixels [f*i, f*i + f): the rectangle's centroid and area, measured
    # in the reduced image and mapped by f, are the original's. Bound half an original pixel (measured <= 0.06
    # for f = 2, 4, 8; a shift by one reduced pixel would be 2-8).
    for min_size, max_size, factor in ((64, 96, 8), (128, 192, 4), (256, 384, 2)):
        decoded = decode_image(path, min_size=min_size, max_size=max_size)
        assert decoded.reduction == factor
        brightness = (decoded.image.mean(dim=0).double() - 60 / 255).clamp(min=0)  # (h, w): 0 off the rectangle
        for dim, center in ((1, 350.0), (0, 500.0)):  # rows (summed over columns), then columns
            profile = brightness.sum(dim=dim)
            centers = torch.arange(profile.numel(), dtype=torch.float64) + 0.5  # continuous pixel centres
            assert abs(factor * float((profile * centers).sum() / profile.sum()) - center) < 0.5
        full_area = 300 * 400 * (250 + 30 + 30 - 3 * 60) / 3 / 255  # the excess brightness summed over the rectangle
        assert abs(factor ** 2 * float(brightness.sum()) - full_area) < 0.01 * full_area


def test_png_is_box_averaged_in_uint8_and_answered_in_original_pixels(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (50, 71, 3), dtype=np.uint8)
    path = str(tmp_path / "big.png")
    Image.fromarray(pixels).save(path)
    decoded = decode_image(path, min_size=10, max_size=15)  # scale min(10/50, 15/71) = 0.2: f = 5
    assert (decoded.height, decoded.width, decoded.reduction) == (50, 71, 5)
    assert decoded.image.shape == (3, 10, 15)  # ceil(50 / 5), ceil(71 / 5)
    # Each pixel the mean of its 5x5 block as uint8; the last column's blocks are cut short (5x1). Pillow rounds
    # to the nearest step with a fixed-point division that can miss by a little more for factors that are not
    # powers of two (measured over factors 2-8: at most 0.6 of a step), hence 0.75 of a step.
    for (i, j), block in (((0, 0), pixels[:5, :5]), ((9, 14), pixels[45:50, 70:71]), ((3, 7), pixels[15:20, 35:40])):
        mean = block.reshape(-1, 3).mean(axis=0)
        assert np.abs(decoded.image[:, i, j].numpy().astype(np.float64) * 255 - mean).max() <= 0.75


def test_detections_of_a_draft_decode_match_the_full_decode_in_original_pixels(checkpoint, tmp_path):
    # The model resizes a 768x1024 photo to 72x96 either way; decoded at 1/8 first, its detections must be the
    # same, in original pixels. One model-input pixel is 10.7 original pixels; measured: boxes within 1.
    # (Sides that are multiples of 8, so the geometry is exact. At 768x1030 the last reduced column covers 6
    # pixels but is resized as a whole one, a 0.2 % stretch, and the aliasing of the full image's 10x bilinear
    # resize differs from the DCT's average: boxes then moved by up to 9 original pixels, under one
    # model-input pixel.)
    path = smooth_photo(str(tmp_path / "photo.jpg"), 768, 1024)
    predictor = Predictor(checkpoint, device="cpu", score_thresh=0.0, max_detections=10)
    full = predictor.predict_decoded([decode_image(path)])[0]
    reduced = predictor.predict_decoded([decode_image(path, min_size=64, max_size=96)])[0]
    assert len(full) == len(reduced) == 10
    boxes_reduced = torch.tensor([i.box for i in reduced])
    for instance in full[:8]:  # the last places may swap with near-ties below the cut
        close = (boxes_reduced - torch.tensor(instance.box)).abs().max(dim=1).values
        k = int(close.argmin())
        assert float(close[k]) <= 2.0 and reduced[k].label == instance.label
        assert abs(reduced[k].score - instance.score) < 0.01
        assert reduced[k].rle["size"] == [768, 1024]
        mask_full, mask_reduced = instance.mask, reduced[k].mask
        iou = (mask_full & mask_reduced).sum() / max((mask_full | mask_reduced).sum(), 1)
        assert iou > 0.95
    assert float(box_iou(torch.tensor([full[0].box]), boxes_reduced[:1])) > 0.99


def test_overlapping_decodes_restore_pillows_pixel_limit_once_the_last_one_ends():
    """The server decodes in several threads: Pillow's global limit is off while any decode runs and back
    to its value when the last one ends, however their ends interleave (saving and restoring per decode
    left it off for good when A entered, B entered, A left, B left)."""
    import threading

    from maskrcnn.inference.images import _pillow_guard_off

    limit = Image.MAX_IMAGE_PIXELS
    assert limit is not None
    entered, release_a, a_left, release_b = (threading.Event() for _ in range(4))
    seen = {}

    def decode_a():
        with _pillow_guard_off():
            entered.set()
            release_a.wait(10)
        a_left.set()

    def decode_b():
        entered.wait(10)
        with _pillow_guard_off():
            seen["inside_b"] = Image.MAX_IMAGE_PIXELS
            release_a.set()
            a_left.wait(10)
            seen["after_a_left"] = Image.MAX_IMAGE_PIXELS  # B still decoding: still off
            release_b.wait(10)

    threads = [threading.Thread(target=decode_a), threading.Thread(target=decode_b)]
    for thread in threads:
        thread.start()
    a_left.wait(10)
    release_b.set()
    for thread in threads:
        thread.join(10)
    assert seen == {"inside_b": None, "after_a_left": None}
    assert Image.MAX_IMAGE_PIXELS == limit

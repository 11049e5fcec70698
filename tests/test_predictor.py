"""maskrcnn.Predictor: the model's own detections, filtered, with masks pasted and encoded exactly."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from inference_support import CLASS_NAMES, make_checkpoint, mode_images, model_output, tiny_config
from maskrcnn.data import read_image
from maskrcnn.inference.images import (ImageTooLargeError, decode_image, expand_inputs, reduce_image,
                                       reduction_factor, unique_stems)
from maskrcnn.inference import predictor as predictor_module
from maskrcnn.inference.crop_rle import crop_rle
from maskrcnn.inference.predictor import Predictor, decode_mask, paste_groups
from maskrcnn.modeling.paste_masks import paste_masks_in_image
from maskrcnn.modeling.transform import resize_boxes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny.pth"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return mode_images(str(tmp_path_factory.mktemp("images")))


def test_instances_are_the_models_detections(checkpoint, images):
    # With the model's own settings the predictor must return exactly model(images): same boxes, labels,
    # scores, and masks equal to the pasted probabilities > 0.5.
    predictor = Predictor(checkpoint, device="cpu", score_thresh=0.05, max_detections=10)
    image = read_image(images["rgb"])
    instances = predictor.predict(image)
    expected = model_output(predictor, image)
    assert len(instances) == len(expected["scores"]) == 10
    assert torch.equal(torch.tensor([i.box for i in instances]), expected["boxes"])
    assert [i.label for i in instances] == expected["labels"].tolist()
    assert [i.tag for i in instances] == [CLASS_NAMES[k - 1] for k in expected["labels"].tolist()]
    assert torch.equal(torch.tensor([i.score for i in instances]), expected["scores"])
    areas = []
    for instance, probabilities in zip(instances, expected["masks"]):
        binary = (probabilities[0] > 0.5).numpy()
        assert np.array_equal(instance.mask, binary)
        assert instance.rle["size"] == [42, 56]
        assert instance.area == int(binary.sum())
        areas.append(instance.area)
    assert max(areas) > 0  # the comparison is not between empty masks


def test_pasting_in_groups_gives_the_same_masks(checkpoint, images, monkeypatch):
    """A budget that splits the detections into groups (as large boxes on a large photo do) changes nothing."""
    predictor = Predictor(checkpoint, device="cpu", score_thresh=0.05, max_detections=10)
    image = read_image(images["rgb"])
    whole = predictor.predict(image)
    monkeypatch.setattr(predictor_module, "PASTE_BUDGET_PIXELS", 600)  # about one 20x20 box per group
    grouped = predictor.predict(image)
    assert len(paste_groups([i.box for i in whole], 600)) > 3
    assert [(i.box, i.label, i.score, i.rle) for i in grouped] == [(i.box, i.label, i.score, i.rle) for i in whole]


def test_paste_groups_keep_order_and_budget():
    boxes = [[0, 0, 6, 6], [0, 0, 6, 6], [0, 0, 96, 96], [0, 0, 1, 1], [0, 0, 1, 1]]  # 100, 100, 10000, 25, 25 px
    assert paste_groups(boxes, 250) == [[0, 1], [2], [3, 4]]
    assert paste_groups(boxes, 10**6) == [[0, 1, 2, 3, 4]]
    assert paste_groups([], 10) == []


def test_path_input_decodes_like_the_training_loader(checkpoint, images):
    predictor = Predictor(checkpoint, device="cpu", score_thresh=0.0, max_detections=5)
    by_path = predictor.predict(images["exif"])
    by_tensor = predictor.predict(read_image(images["exif"]))
    assert [(i.box, i.label, i.score, i.rle) for i in by_path] == [(i.box, i.label, i.score, i.rle) for i in by_tensor]
    assert by_path[0].rle["size"] == [56, 42]  # EXIF orientation 6: shown 56 tall, 42 wide


def test_score_class_and_count_filters_pick_from_the_full_list(checkpoint, images):
    image = read_image(images["rgb"])
    predictor = Predictor(checkpoint, device="cpu", score_thresh=0.3, max_detections=4, classes=["bag", "shoe"])
    instances = predictor.predict(image)
    # The reference: every detection above 0.05 (the model's floor), then the same filters by hand.
    everything = model_output(predictor, image, detections_per_img=10 ** 6)
    candidates = zip(everything["boxes"].tolist(), everything["labels"].tolist(), everything["scores"].tolist())
    wanted = [(box, label, score) for box, label, score in candidates if score >= 0.3 and label in (2, 3)][:4]
    assert len(wanted) >= 2  # the filters leave something to compare
    assert [(list(i.box), i.label, i.score) for i in instances] == wanted
    assert all(i.tag in ("bag", "shoe") and i.score >= 0.3 for i in instances)


def test_score_threshold_below_the_models_floor_adds_detections(checkpoint, images):
    image = read_image(images["rgb"])
    # The model's own floor raised to 0.3 (random weights score every class about 1/4).
    floor_override = ["model.roi_heads.score_thresh=0.3"]
    low = Predictor(checkpoint, "cpu", overrides=floor_override, score_thresh=0.0, max_detections=1000).predict(image)
    floor = Predictor(checkpoint, "cpu", overrides=floor_override, score_thresh=0.3, max_detections=1000).predict(image)
    assert len(low) > len(floor) > 0
    assert min(i.score for i in low) < 0.3
    # Adding lower-scoring boxes never changes the ones above the floor (greedy NMS goes best first).
    above = [(i.box, i.label, i.score) for i in low if i.score >= 0.3]
    assert above == [(i.box, i.label, i.score) for i in floor]


def test_unknown_class_and_bad_weights_are_named(checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"classes: \['hat'\] not among"):
        Predictor(checkpoint, device="cpu", classes=["hat"])
    with pytest.raises(FileNotFoundError, match="weights: no such file"):
        Predictor(str(tmp_path / "missing.pth"), device="cpu")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"broken.pth: not a loadable checkpoint \("):
        Predictor(str(broken), device="cpu")


def test_bare_state_dict_needs_a_config(checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    bare = str(tmp_path / "bare.pth")
    torch.save(state["model"], bare)
    with pytest.raises(ValueError, match="stores no config"):
        Predictor(bare, device="cpu")
    config = str(tmp_path / "tiny.yaml")
    tiny_config().dump(config)
    predictor = Predictor(bare, device="cpu", config=config)
    assert predictor.class_names == ["class_1", "class_2", "class_3"]
    wrong = str(tmp_path / "wrong.yaml")
    tiny_config(["model.roi_heads.box_hidden_dim=64"]).dump(wrong)
    with pytest.raises(ValueError, match="does not fit the config's model"):
        Predictor(bare, device="cpu", config=wrong)


def test_rle_round_trip_is_exact():
    rng = np.random.default_rng(1)
    mask = rng.random((37, 23)) > 0.6
    rle = crop_rle(mask, (0, 0, 23, 37), (37, 23))  # the whole image as the crop
    assert isinstance(rle["counts"], str) and rle["size"] == [37, 23]
    assert np.array_equal(decode_mask(rle), mask)
    assert int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})) == int(mask.sum())


# -------------------------------------------------------------------------------------------------- images
def test_reduction_factor_and_block_means():
    assert reduction_factor(130, 200, 64) == 4       # ceil(200 / 4) = 50 <= 64, ceil(200 / 3) = 67 > 64
    assert reduction_factor(100, 100, 100) == 1
    assert reduction_factor(4097, 10, 4096) == 2
    assert reduction_factor(5000, 5000, 0) == 1      # 0 = never shrink
    image = torch.rand(3, 10, 7, dtype=torch.float64)
    reduced = reduce_image(image, 3)
    assert reduced.shape == (3, 4, 3)
    expected = np.zeros((3, 4, 3))
    array = image.numpy()
    for i in range(4):
        for j in range(3):
            expected[:, i, j] = array[:, 3 * i:3 * i + 3, 3 * j:3 * j + 3].mean(axis=(1, 2))  # edge blocks cut short
    assert np.abs(reduced.numpy() - expected).max() < 1e-12


def test_huge_images_are_shrunk_and_answered_in_original_pixels(checkpoint, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    path = str(tmp_path / "big.png")
    Image.fromarray(rng.integers(0, 256, (130, 200, 3), dtype=np.uint8)).save(path)
    predictor = Predictor(checkpoint, device="cpu", score_thresh=0.05, max_detections=10, max_decoded_side=64)
    decoded = decode_image(path, max_decoded_side=64)
    assert (decoded.height, decoded.width, decoded.reduction) == (130, 200, 4)
    assert decoded.image.shape == (3, 33, 50)
    instances = predictor.predict(path)
    assert len(instances) == 10
    # The reference: the model's stages on the reduced image; boxes scaled by 4 and clipped to 200 x 130,
    # and the detections' 28x28 probabilities pasted into the full frame at those boxes.
    model = predictor.model
    with torch.no_grad():
        batch, _ = model.transform([decoded.image])
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        detections, _ = model.roi_heads(features[:4], proposals, batch.image_sizes)
    boxes = resize_boxes(detections[0]["boxes"], batch.image_sizes[0], (33, 50)) * 4
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, 200)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, 130)
    assert torch.equal(torch.tensor([i.box for i in instances]), boxes)
    assert boxes[:, 2].max() > 100  # the boxes really are in the large frame
    for k, instance in enumerate(instances):
        pasted = paste_masks_in_image(detections[0]["masks"][k:k + 1], boxes[k:k + 1], (130, 200))[0, 0] > 0.5
        assert instance.rle["size"] == [130, 200]
        assert np.array_equal(instance.mask, pasted.numpy())


def test_decompression_bomb_limit_is_ours_and_named(images):
    with pytest.raises(ImageTooLargeError, match=r"a_rgb.png: 56x42 = 2352 pixels is more than the limit of 2000"):
        decode_image(images["rgb"], max_image_pixels=2000)
    assert decode_image(images["rgb"], max_image_pixels=2352).image.shape == (3, 42, 56)
    assert decode_image(images["rgb"], max_image_pixels=0).image.shape == (3, 42, 56)  # 0 = no limit


def test_files_stream_reports_unreadable_files_and_goes_on(checkpoint, images, tmp_path):
    from PIL import Image

    predictor = Predictor(checkpoint, device="cpu", score_thresh=0.0, max_detections=3, max_image_pixels=2000,
                          batch_size=2)
    small = str(tmp_path / "small.png")  # 40 x 30 = 1200 pixels: within the limit
    Image.open(images["rgb"]).crop((0, 0, 40, 30)).save(small)
    paths = [images["corrupt"], small, str(images["gray"]) + ".missing"]
    tall = images["exif"]  # 42 x 56 = 2352 pixels: over this predictor's limit
    results = list(predictor.predict_files(paths + [tall], num_workers=0))
    assert [r.path for r in results] == paths + [tall]
    assert "h_corrupt.jpg" in results[0].error and "UnidentifiedImageError" in results[0].error
    assert results[1].error is None and len(results[1].instances) == 3
    assert "No such file" in results[2].error
    assert "more than the limit of 2000" in results[3].error


def test_inputs_expand_from_files_folders_and_globs(images, tmp_path):
    folder = os.path.dirname(images["rgb"])
    assert expand_inputs([folder]) == sorted(images.values())
    assert expand_inputs([os.path.join(folder, "*.jpg"), images["cmyk"]]) == [images["cmyk"], images["exif"],
                                                                              images["corrupt"]]
    with pytest.raises(FileNotFoundError, match="input 'nope/': no such file or folder"):
        expand_inputs(["nope/"])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_inputs([os.path.join(folder, "*.gif")])
    assert unique_stems(["a/shirt.jpg", "b/shirt.jpg", "shirt.png", "x.png"]) == ["shirt", "shirt_2", "shirt_3", "x"]


def test_import_maskrcnn_stays_light():
    code = "import sys, maskrcnn; assert 'torch' not in sys.modules; maskrcnn.Predictor; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)

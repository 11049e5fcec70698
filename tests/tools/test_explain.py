"""The stage explainer: its numbers are the model's, its ROIAlign grid is roi_align's, every picture is drawn."""
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.config import load_config
from maskrcnn.data import read_image
from maskrcnn.data.synthetic import generate_synthetic_dataset
from maskrcnn.modeling import build_model
from maskrcnn.ops import roi_align
from maskrcnn.tools.explain import PICTURES, anchors_at, explained_roi, main, roi_align_sample_points, trace_stages

CLASS_NAMES = ["bag", "footwear", "outer", "dress", "pants", "top", "skirt", "headwear"]
# A tiny random-init model (as tests/inference_support.py, with the synthetic set's 8 classes).
TINY = ["model.num_classes=8", "model.backbone.depth=18", "model.backbone.fpn_channels=16",
        "model.backbone.frozen_stages=0", "input.min_size=96", "input.max_size=96",
        "model.rpn.anchor_sizes=[8,16,32,64,128]", "model.rpn.pre_nms_top_n_test=300",
        "model.rpn.post_nms_top_n_test=60", "model.roi_heads.box_hidden_dim=32", "model.roi_heads.mask_conv_dims=[16]",
        "model.roi_heads.detections_per_img=8"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    generate_synthetic_dataset(str(root / "synthetic"), num_train=0, num_val=1, seed=0, image_size=112)
    image_path = str(root / "synthetic" / "val" / "000001.jpg")
    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False).eval()
    checkpoint = str(root / "tiny.pth")
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "class_names": CLASS_NAMES}, checkpoint)
    image = read_image(image_path)
    return {"root": root, "image_path": image_path, "model": model, "checkpoint": checkpoint, "image": image,
            "trace": trace_stages(model, image)}


def bilinear_read(feature: np.ndarray, y: float, x: float) -> np.ndarray:
    """One ROIAlign read at (y, x) of a (C, H, W) map, written from the kernel's boundary rule (reference README):
    0 beyond one cell outside the map, else clamped into it, then bilinear."""
    height, width = feature.shape[1:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feature[:, y0, x0] + (1 - ly) * lx * feature[:, y0, x1]
            + ly * (1 - lx) * feature[:, y1, x0] + ly * lx * feature[:, y1, x1])


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_sample_points_reproduce_roi_align(aligned, sampling_ratio):
    # The picture's points, averaged per bin with an independent bilinear read, give roi_align's output.
    generator = torch.Generator().manual_seed(0)
    feature = torch.rand(1, 3, 13, 17, generator=generator, dtype=torch.float64)
    boxes = [[10.0, 6.0, 50.0, 31.0], [-6.0, 20.0, 18.0, 60.0], [33.3, 1.7, 35.1, 2.4], [60.0, 40.0, 75.0, 56.0]]
    scale, size = 0.25, (7, 5)
    for box in boxes:
        points = roi_align_sample_points(box, size, scale, sampling_ratio, aligned)  # (7, 5, gh, gw, 2)
        reads = np.array([[[[bilinear_read(feature[0].numpy(), *points[i, j, a, b].tolist())
                             for b in range(points.shape[3])] for a in range(points.shape[2])]
                           for j in range(size[1])] for i in range(size[0])])  # (7, 5, gh, gw, C)
        expected = reads.mean(axis=(2, 3)).transpose(2, 0, 1)  # (7, 5, C) -> (C, 7, 5)
        rois = torch.tensor([[0.0] + box], dtype=torch.float64)
        pooled = roi_align(feature, rois, size, scale, sampling_ratio, aligned)[0]
        assert np.abs(pooled.numpy() - expected).max() < 1e-12, box


def test_unaligned_points_sit_half_a_cell_off_the_box():
    # Unaligned: the first point of a 1-cell ROI at stride 8 is read at index 0.25 = image (0.25 + 0.5) * 8 = 6,
    # while the box's own first sub-cell centre is at 2: a shift of half a cell (4 px).
    box = [0.0, 0.0, 8.0, 8.0]
    unaligned = roi_align_sample_points(box, (1, 1), 1 / 8, 2, aligned=False)
    aligned = roi_align_sample_points(box, (1, 1), 1 / 8, 2, aligned=True)
    assert ((unaligned[0, 0, 0, 0] + 0.5) * 8).tolist() == [6.0, 6.0]
    assert ((aligned[0, 0, 0, 0] + 0.5) * 8).tolist() == [2.0, 2.0]


def test_trace_is_the_models_computation(setup):
    trace, model = setup["trace"], setup["model"]
    with torch.no_grad():
        output = model([setup["image"]])[0]
        batch, _ = model.transform([setup["image"]])
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        anchors = model.rpn.anchors(batch, features)
    for key in ("boxes", "labels", "scores", "masks"):
        assert torch.equal(trace.final[key], output[key]), key
    assert torch.equal(trace.proposals, proposals[0])
    # A 96-pixel input has a 3x3 P5, max-pooled (kernel 1, stride 2) to a 2x2 P6; the anchor generator's stride
    # is image size // feature size, 96 // 2 = 48 there, not 64.
    assert trace.resized_size == (96, 96) and trace.feature_sizes[3:] == [(3, 3), (2, 2)]
    assert trace.strides == [4, 8, 16, 32, 48]
    # Before NMS: the per-level top-n (here every anchor of the small levels), of which NMS keeps the proposals.
    per_level = [h * w * 3 for h, w in trace.feature_sizes]
    assert trace.pre_nms_boxes.shape[0] <= sum(min(300, n) for n in per_level)
    assert trace.pre_nms_boxes.shape[0] > trace.proposals.shape[0]
    assert bool((trace.pre_nms_scores[:-1] >= trace.pre_nms_scores[1:]).all())
    pre = {tuple(b) for b in trace.pre_nms_boxes.tolist()}
    assert all(tuple(b) in pre for b in trace.proposals.tolist())
    # The anchors drawn at one location are the generator's anchors at that position.
    start = 0
    for level, (h, w) in enumerate(trace.feature_sizes):
        drawn, (row, col) = anchors_at(trace, level, (48.0, 48.0))
        index = start + (row * w + col) * 3
        assert torch.equal(drawn, anchors[index:index + 3])
        start += h * w * 3
    assert 0 <= explained_roi(trace) < trace.proposals.shape[0]
    assert set(trace.proposal_levels.tolist()) <= {2, 3, 4, 5}
    assert trace.mask_logits.shape == (trace.detections["labels"].shape[0], 28, 28)


def test_every_picture_is_written_and_shows_something(setup, capsys):
    out = str(setup["root"] / "pictures")
    status = main(["--weights", setup["checkpoint"], setup["image_path"], "--out", out, "--score-thresh", "0.1",
                   "--display-side", "320"])
    assert status == 0
    assert sorted(os.listdir(out)) == sorted(PICTURES)
    arrays = []
    for name in PICTURES:
        picture = np.asarray(Image.open(os.path.join(out, name)).convert("RGB")).astype(np.float64)
        assert min(picture.shape[:2]) >= 100, name
        assert picture.std() > 20, name  # not a blank canvas
        arrays.append(picture)
    assert "01_anchors.png" in capsys.readouterr().out
    # Each stage draws something different (the before/after NMS pictures, for one, differ).
    for first in range(len(arrays)):
        for second in range(first + 1, len(arrays)):
            same_shape = arrays[first].shape == arrays[second].shape
            identical = same_shape and np.array_equal(arrays[first], arrays[second])
            assert not identical, (PICTURES[first], PICTURES[second])


def test_unreadable_image_is_an_error(setup, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nothing")
    assert main(["--weights", setup["checkpoint"], str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "bad.jpg" in capsys.readouterr().err

"""The assembled model on a small configuration: training edge cases, empty outputs, determinism, build."""
from __future__ import annotations

import math

import pytest
import torch

from maskrcnn.config import load_config
from maskrcnn.modeling import build_model

SMALL = ["model.backbone.depth=18", "model.num_classes=4", "input.min_size=64", "input.max_size=96",
         "model.rpn.pre_nms_top_n_train=200", "model.rpn.post_nms_top_n_train=50",
         "model.rpn.pre_nms_top_n_test=200", "model.rpn.post_nms_top_n_test=50",
         "model.roi_heads.batch_size_per_image=10000000", "model.rpn.batch_size_per_image=10000000",
         "model.backbone.fpn_channels=64", "model.roi_heads.box_hidden_dim=64",
         "model.roi_heads.mask_conv_dims=[64,64]", "model.roi_heads.detections_per_img=20"]
LOSS_NAMES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}


def small_model(*overrides):
    torch.manual_seed(0)
    return build_model(load_config(overrides=SMALL + list(overrides)))


def image_and_target(seed: int, with_objects: bool):
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(3, 64, 80, generator=generator)
    if not with_objects:
        return image, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                       "masks": torch.zeros(0, 64, 80, dtype=torch.uint8)}
    masks = torch.zeros(2, 64, 80, dtype=torch.uint8)
    masks[0, 10:40, 5:30] = 1
    masks[1, 20:60, 40:75] = 1
    return image, {"boxes": torch.tensor([[5.0, 10.0, 30.0, 40.0], [40.0, 20.0, 75.0, 60.0]]),
                   "labels": torch.tensor([1, 3]), "masks": masks}


@pytest.fixture(scope="module")
def model():
    return small_model()


def test_an_image_without_objects_trains_with_zero_box_and_mask_losses(model):
    model.train()
    image, target = image_and_target(0, with_objects=False)
    losses = model([image], [target])
    assert set(losses) == LOSS_NAMES
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_mask"].item() == 0.0
    assert losses["loss_rpn_box_reg"].item() == 0.0
    for name in ("loss_objectness", "loss_classifier"):
        assert math.isfinite(losses[name].item()) and losses[name].item() > 0
    sum(losses.values()).backward()  # the zero losses stay attached to the graph
    assert model.roi_heads.mask_head.logits.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_a_batch_mixing_empty_and_non_empty_targets(model):
    model.train()
    empty_image, empty = image_and_target(1, with_objects=False)
    image, target = image_and_target(2, with_objects=True)
    mixed = model([empty_image, image], [empty, target])
    alone = model([image], [target])
    assert all(math.isfinite(v.item()) for v in mixed.values())
    assert mixed["loss_mask"].item() > 0 and mixed["loss_box_reg"].item() > 0
    # every positive ROI comes from the second image, so the mean mask loss is that image's alone
    torch.testing.assert_close(mixed["loss_mask"], alone["loss_mask"], rtol=1e-4, atol=0)


def test_no_detections_gives_empty_tensors_of_the_right_shapes():
    model = small_model("model.roi_heads.score_thresh=1.0").eval()  # a softmax score never exceeds 1
    with torch.no_grad():
        outputs = model([torch.rand(3, 50, 70), torch.rand(3, 64, 64)])
    for output, (height, width) in zip(outputs, [(50, 70), (64, 64)]):
        assert output["boxes"].shape == (0, 4) and output["boxes"].dtype == torch.float32
        assert output["labels"].shape == (0,) and output["labels"].dtype == torch.int64
        assert output["scores"].shape == (0,)
        assert output["masks"].shape == (0, 1, height, width)


def test_eval_outputs_are_in_original_pixels_and_deterministic(model):
    model.eval()
    images = [torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(3)), torch.rand(3, 90, 60)]
    with torch.no_grad():
        first = model(images)
        second = model(images)
    for a, b, image in zip(first, second, images):
        assert set(a) == {"boxes", "labels", "scores", "masks"}
        for key in a:
            assert torch.equal(a[key], b[key]), key
        k = a["boxes"].shape[0]
        assert k > 0 and a["masks"].shape == (k, 1) + tuple(image.shape[-2:])
        assert float(a["boxes"][:, 2].max()) <= image.shape[-1] and float(a["boxes"][:, 3].max()) <= image.shape[-2]
        assert a["labels"].min() >= 1 and a["labels"].max() <= 4
        assert torch.all(a["scores"][:-1] >= a["scores"][1:])
        assert 0 <= float(a["masks"].min()) and float(a["masks"].max()) <= 1


def test_build_model_reads_the_config():
    cfg = load_config(overrides=["model.num_classes=13", "model.rpn.post_nms_top_n_test=321",
                                 "model.roi_heads.detections_per_img=7", "input.min_size=512"])
    model = build_model(cfg)
    assert model.roi_heads.box_predictor.class_logits.out_features == 14  # + background
    assert model.roi_heads.box_predictor.box_deltas.out_features == 56
    assert model.roi_heads.mask_head.logits.out_channels == 14
    assert model.rpn.post_nms_top_n["test"] == 321 and model.roi_heads.detections_per_img == 7
    assert model.transform.min_size == 512 and model.backbone.resnet.depth == 50
    trainable = [n for n, p in model.backbone.resnet.named_parameters() if p.requires_grad]
    assert trainable[0].startswith("res3.")  # frozen_stages=2: stem and res2 frozen by default


def test_parameter_count_matches_torchvision_for_coco():
    """torchvision documents 44,401,393 parameters for maskrcnn_resnet50_fpn (91 classes with background)."""
    model = build_model(load_config(overrides=["model.num_classes=90"]))
    assert sum(p.numel() for p in model.parameters()) == 44_401_393


def test_training_without_targets_is_an_error(model):
    model.train()
    with pytest.raises(ValueError, match="targets"):
        model([torch.rand(3, 64, 64)])
    model.eval()

"""Weights: the torchvision / ImageNet converter and the class-count-aware loader with its report table."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from maskrcnn.checkpoint import (CheckpointError, check_class_names, classes_of_weights, read_checkpoint_file,
                                 PREDICTOR_PREFIXES, convert_torchvision, load_model_weights, load_weights_file,
                                 torchvision_name_map)
from maskrcnn.config import load_config
from maskrcnn.modeling import build_model

from test_parity_support import load_key_list, rebuild_reference_weights


class NotAllowed:
    """An arbitrary Python object: ``weights_only=True`` must refuse to unpickle it."""


@pytest.fixture(scope="module")
def torchvision_weights():
    return rebuild_reference_weights(load_key_list())  # torchvision layout, 14 classes with background


@pytest.fixture(scope="module")
def model_5_classes():
    return build_model(load_config(overrides=["model.num_classes=5"]))


def imagenet_layout(torchvision_weights):
    """What torchvision's ImageNet resnet50 state dict looks like: trunk names, BN counters and the classifier."""
    state = {name[len("backbone.body."):]: value for name, value in torchvision_weights.items()
             if name.startswith("backbone.body.")}
    for name in [n for n in state if n.endswith("running_var")]:
        state[name.replace("running_var", "num_batches_tracked")] = torch.tensor(7)
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    return state


def test_imagenet_resnet50_fills_the_backbone_trunk_only(torchvision_weights, model_5_classes, capsys):
    converted = convert_torchvision(imagenet_layout(torchvision_weights))
    assert len(converted) == 265 and all(name.startswith("backbone.resnet.") for name in converted)
    report = load_model_weights(model_5_classes, imagenet_layout(torchvision_weights))
    assert len(report["loaded"]) == 265 and report["skipped"] == [] and report["reinitialized"] == []
    assert all(not name.startswith("backbone.resnet.") for name in report["missing"])
    own = model_5_classes.state_dict()
    assert torch.equal(own["backbone.resnet.res4.5.conv2.weight"], torchvision_weights["backbone.body.layer3.5.conv2.weight"])
    assert torch.equal(own["backbone.resnet.stem.norm.running_var"], torchvision_weights["backbone.body.bn1.running_var"])
    assert "loaded" in capsys.readouterr().out


def test_other_class_count_reinitializes_only_the_predictors(torchvision_weights, model_5_classes, capsys):
    before = {k: v.clone() for k, v in model_5_classes.state_dict().items() if k.startswith(PREDICTOR_PREFIXES)}
    report = load_model_weights(model_5_classes, torchvision_weights)
    assert sorted(report["reinitialized"]) == sorted(before)
    assert len(before) == 6 and len(report["loaded"]) == 307 - 6
    assert report["skipped"] == [] and report["missing"] == []
    own = model_5_classes.state_dict()
    for name, value in before.items():  # predictors keep their fresh initialization
        assert torch.equal(own[name], value)
    assert torch.equal(own["roi_heads.box_head.fc2.weight"], torchvision_weights["roi_heads.box_head.fc7.weight"])
    table = capsys.readouterr().out
    assert "reinitialized      6" in table and "loaded           301" in table


def test_other_mismatches_are_errors(model_5_classes):
    state = {"backbone.fpn.output_convs.0.weight": torch.zeros(256, 256, 1, 1)}
    with pytest.raises(ValueError, match=r"backbone\.fpn\.output_convs\.0\.weight"):
        load_model_weights(model_5_classes, state, verbose=False)
    report = load_model_weights(model_5_classes, {"not.a.parameter": torch.zeros(1)}, verbose=False)
    assert report["skipped"] == ["not.a.parameter"]


def test_every_torchvision_name_has_the_documented_counterpart():
    mapping = torchvision_name_map([name for name, _ in load_key_list()])
    assert len(mapping) == 307 and len(set(mapping.values())) == 307
    assert mapping["backbone.body.layer1.0.downsample.1.bias"] == "backbone.resnet.res2.0.shortcut.norm.bias"
    assert mapping["backbone.fpn.inner_blocks.3.0.weight"] == "backbone.fpn.lateral_convs.3.weight"
    assert mapping["backbone.fpn.layer_blocks.0.0.bias"] == "backbone.fpn.output_convs.0.bias"
    assert mapping["rpn.head.conv.0.0.weight"] == "rpn.head.conv.weight"
    assert mapping["rpn.head.cls_logits.weight"] == "rpn.head.objectness.weight"
    assert mapping["roi_heads.box_head.fc6.weight"] == "roi_heads.box_head.fc1.weight"
    assert mapping["roi_heads.box_predictor.bbox_pred.bias"] == "roi_heads.box_predictor.box_deltas.bias"
    assert mapping["roi_heads.mask_head.3.0.weight"] == "roi_heads.mask_head.convs.3.weight"
    assert mapping["roi_heads.mask_predictor.conv5_mask.weight"] == "roi_heads.mask_head.deconv.weight"
    assert mapping["roi_heads.mask_predictor.mask_fcn_logits.bias"] == "roi_heads.mask_head.logits.bias"


def test_older_torchvision_layouts_convert(torchvision_weights):
    old = dict(torchvision_weights)
    old["rpn.head.conv.weight"] = old.pop("rpn.head.conv.0.0.weight")
    for i in range(4):
        old[f"roi_heads.mask_head.mask_fcn{i + 1}.weight"] = old.pop(f"roi_heads.mask_head.{i}.0.weight")
    converted = convert_torchvision(old)
    assert torch.equal(converted["rpn.head.conv.weight"], torchvision_weights["rpn.head.conv.0.0.weight"])
    assert torch.equal(converted["roi_heads.mask_head.convs.2.weight"],
                       torchvision_weights["roi_heads.mask_head.2.0.weight"])


def test_unknown_layouts_are_refused():
    with pytest.raises(ValueError, match="neither a torchvision detection checkpoint"):
        convert_torchvision({"encoder.weight": torch.zeros(1)})


def test_weight_files_load_safely(tmp_path, torchvision_weights):
    path = tmp_path / "checkpoint.pt"
    small = {k: v for k, v in torchvision_weights.items() if k.startswith("rpn.")}
    torch.save({"model": small, "iteration": 12}, path)
    loaded = load_weights_file(str(path))
    assert sorted(loaded) == sorted(small) and torch.equal(loaded["rpn.head.bbox_pred.bias"],
                                                           small["rpn.head.bbox_pred.bias"])

    evil = tmp_path / "evil.pt"
    torch.save({"model": NotAllowed()}, evil)
    with pytest.raises(CheckpointError, match=r"evil.pt: not a loadable checkpoint \(it holds a pickled reference to "
                                              r".*NotAllowed, which loading would import and call; refused") as error:
        load_weights_file(str(evil))
    assert "weights_only" not in str(error.value)  # torch's advice to load unsafely is never passed on
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_weights_file(str(tmp_path / "missing.pt"))


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_unusable_files_are_named_with_the_reason_never_with_unsafe_advice(tmp_path, capfd):
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "class_names": ["top"]}, good)
    files = {
        "truncated.pth": (good.read_bytes()[:200], "truncated or corrupted: its zip archive is incomplete"),
        "empty.pth": (b"", "empty: 0 bytes"),
        "photo.pth": (b"\xff\xd8\xff\xe0" + bytes(60), "it is a JPEG image, not a file written by torch.save"),
        "picture.pth": (b"\x89PNG\r\n\x1a\n" + bytes(60), "it is a PNG image, not a file written by torch.save"),
        "noise.pth": (b"\x80\x02garbage", "not a file written by torch.save (unreadable pickle data)"),
    }
    for name, (content, reason) in files.items():
        (tmp_path / name).write_bytes(content)
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    files["tensor.pth"] = (None, "it holds a Tensor, not a dict of named weights")
    torch.save({"model": RunsCode()}, tmp_path / "code.pth")
    files["code.pth"] = (None, "it holds a pickled reference to posix.system, which loading would import and call; "
                               "refused: a checkpoint holds only tensors and plain data")
    for name, (_, reason) in files.items():
        with pytest.raises(CheckpointError) as error:
            read_checkpoint_file(str(tmp_path / name))
        assert str(error.value) == f"{tmp_path / name}: not a loadable checkpoint ({reason})"
        assert "weights_only" not in str(error.value)
    assert "this must never run" not in capfd.readouterr().out
    assert read_checkpoint_file(str(good))["class_names"] == ["top"]
    assert classes_of_weights(read_checkpoint_file(str(good))) == (["top"], None)


def test_class_names_are_part_of_a_checkpoints_identity():
    check_class_names("a.pth", ["top", "bag"], ["top", "bag"], "data.json")
    check_class_names("a.pth", None, ["top", "bag"], "data.json")  # a file without names: nothing to compare
    with pytest.raises(CheckpointError, match=r"^a.pth: trained for the classes \['top', 'bag'\], but the data "
                                              r"\(data.json\) has \['bag', 'top'\]; hint$"):
        check_class_names("a.pth", ["top", "bag"], ["bag", "top"], "data.json", hint="hint")
    state = {"roi_heads.box_predictor.class_logits.weight": torch.zeros(4, 8)}
    assert classes_of_weights(state) == (None, 3)  # background + 3 classes


def test_build_model_loads_model_weights_from_the_config(tmp_path, torchvision_weights, capsys):
    path = tmp_path / "torchvision.pt"
    torch.save(torchvision_weights, path)
    model = build_model(load_config(overrides=["model.num_classes=13", f"model.weights={path}"]))
    assert torch.equal(model.state_dict()["roi_heads.mask_head.logits.weight"],
                       torchvision_weights["roi_heads.mask_predictor.mask_fcn_logits.weight"])
    assert "loaded           307" in capsys.readouterr().out


# --- anchor surgery: a different number of anchors per position keeps the shared anchors' RPN rows -----------
def model_with_ratios(ratios, sizes=None):
    overrides = ["model.num_classes=13", f"model.rpn.aspect_ratios=[{','.join(str(r) for r in ratios)}]"]
    if sizes is not None:
        overrides.append(f"model.rpn.anchor_sizes=[{','.join(str(s) for s in sizes)}]")
    torch.manual_seed(0)
    return build_model(load_config(overrides=overrides))


def rpn_rows(state, per_anchor, anchors):
    """Rows of anchors ``anchors`` (indices) of an RPN predictor tensor with ``per_anchor`` rows per anchor."""
    return torch.cat([state[a * per_anchor:(a + 1) * per_anchor] for a in anchors])


def test_added_tall_ratio_keeps_torchvision_rpn_rows_and_initializes_the_new_one(torchvision_weights, capsys):
    model = model_with_ratios([0.5, 1.0, 2.0, 4.0])
    fresh = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("rpn.head.")}
    report = load_model_weights(model, torchvision_weights)
    assert sorted(report["adapted"]) == ["rpn.head.box_deltas.bias", "rpn.head.box_deltas.weight",
                                         "rpn.head.objectness.bias", "rpn.head.objectness.weight"]
    assert len(report["loaded"]) == 307 - 4 and report["reinitialized"] == [] and report["missing"] == []
    own = model.state_dict()
    assert own["rpn.head.objectness.weight"].shape == (4, 256, 1, 1)
    assert torch.equal(own["rpn.head.objectness.weight"][:3], torchvision_weights["rpn.head.cls_logits.weight"])
    assert torch.equal(own["rpn.head.objectness.weight"][3], fresh["rpn.head.objectness.weight"][3])
    assert torch.equal(own["rpn.head.box_deltas.bias"][:12], torchvision_weights["rpn.head.bbox_pred.bias"])
    assert torch.equal(own["rpn.head.box_deltas.weight"][12:], fresh["rpn.head.box_deltas.weight"][12:])
    assert torch.equal(own["rpn.head.conv.weight"], torchvision_weights["rpn.head.conv.0.0.weight"])
    out = capsys.readouterr().out
    assert "adapted            4" in out
    assert "anchors per position 3 -> 4: kept the checkpoint's ratios [0.5, 1.0, 2.0], initialized new ratios [4.0]" in out


def test_shared_anchors_predict_exactly_what_the_checkpoint_predicts(torchvision_weights):
    original, adapted = model_with_ratios([0.5, 1.0, 2.0]), model_with_ratios([2.0, 0.25, 1.0])
    load_model_weights(original, torchvision_weights, verbose=False)
    load_model_weights(adapted, torchvision_weights, verbose=False)
    # In float64: a 1x1 conv with another number of output channels may sum its 256 products in another order,
    # so the outputs agree to summation rounding (256 terms * 2**-53 * |sum of |terms|| < 1e-12 here), not bits.
    feature = [torch.randn(1, 256, 5, 6, dtype=torch.float64)]
    with torch.no_grad():
        (logits_a,), (deltas_a,) = original.rpn.head.double()(feature)  # (1, 3, 5, 6), (1, 12, 5, 6)
        (logits_b,), (deltas_b,) = adapted.rpn.head.double()(feature)
    # the same count, other ratios: 2.0 was anchor 2 and is now 0, 1.0 moves from 1 to 2, 0.5 is gone
    close = dict(rtol=0, atol=1e-12)
    torch.testing.assert_close(logits_b[:, 0], logits_a[:, 2], **close)
    torch.testing.assert_close(logits_b[:, 2], logits_a[:, 1], **close)
    torch.testing.assert_close(deltas_b[:, 0:4], deltas_a[:, 8:12], **close)
    torch.testing.assert_close(deltas_b[:, 8:12], deltas_a[:, 4:8], **close)
    assert not torch.allclose(logits_b[:, 1], logits_a[:, 0])  # the new ratio 0.25 is not the old 0.5
    fresh = model_with_ratios([2.0, 0.25, 1.0]).state_dict()
    assert torch.equal(rpn_rows(adapted.state_dict()["rpn.head.box_deltas.weight"], 4, [1]),
                       rpn_rows(fresh["rpn.head.box_deltas.weight"], 4, [1]))  # ratio 0.25: initialized


def test_our_checkpoint_brings_its_anchor_config(tmp_path, capsys):
    source = model_with_ratios([0.5, 1.0, 2.0, 4.0])
    config = load_config(overrides=["model.num_classes=13", "model.rpn.aspect_ratios=[0.5,1.0,2.0,4.0]"])
    path = tmp_path / "ours.pth"
    torch.save({"model": source.state_dict(), "config": config.to_dict(), "iteration": 10}, path)
    from maskrcnn.checkpoint import checkpoint_anchors

    assert checkpoint_anchors(str(path)) == {"anchor_sizes": [32, 64, 128, 256, 512],
                                             "aspect_ratios": [0.5, 1.0, 2.0, 4.0]}
    target = build_model(load_config(overrides=["model.num_classes=13", "model.rpn.aspect_ratios=[1.0,4.0]",
                                                f"model.weights={path}"]))
    own, theirs = target.state_dict(), source.state_dict()
    assert torch.equal(own["rpn.head.objectness.weight"], rpn_rows(theirs["rpn.head.objectness.weight"], 1, [1, 3]))
    assert torch.equal(own["rpn.head.box_deltas.bias"], rpn_rows(theirs["rpn.head.box_deltas.bias"], 4, [1, 3]))
    assert "4 -> 2: kept the checkpoint's ratios [1.0, 4.0], initialized new ratios none" in capsys.readouterr().out


def test_anchor_surgery_needs_the_checkpoints_anchors_and_notes_other_sizes(tmp_path, torchvision_weights, capsys):
    bare = tmp_path / "bare.pth"
    torch.save(model_with_ratios([0.5, 1.0, 2.0]).state_dict(), bare)
    from maskrcnn.checkpoint import checkpoint_anchors

    assert checkpoint_anchors(str(bare)) is None
    with pytest.raises(ValueError, match=r"rpn\.head\.(objectness|box_deltas)\.\w+.*stores no config"):
        load_model_weights(model_with_ratios([0.5, 1.0, 2.0, 4.0]), load_weights_file(str(bare)), verbose=False)
    # other anchor sizes: one head serves every level, so the rows still follow the ratios; the note says so
    model = model_with_ratios([0.5, 1.0, 2.0, 4.0], sizes=[16, 32, 64, 128, 256])
    load_model_weights(model, torchvision_weights)
    assert torch.equal(model.state_dict()["rpn.head.objectness.bias"][:3],
                       torchvision_weights["rpn.head.cls_logits.bias"])
    out = capsys.readouterr().out
    assert "kept the checkpoint's ratios [0.5, 1.0, 2.0], initialized new ratios [4.0]" in out
    assert ("rpn anchor sizes differ: [32, 64, 128, 256, 512] in the checkpoint, [16, 32, 64, 128, 256] in the "
            "model; the RPN rows serve the new sizes by ratio") in out
    # only the sizes differ: every tensor loads as before, and the report still says so
    same_ratios = model_with_ratios([0.5, 1.0, 2.0], sizes=[16, 32, 64, 128, 256])
    report = load_model_weights(same_ratios, torchvision_weights, verbose=False)
    assert len(report["loaded"]) == 307 and report["adapted"] == []
    assert report["notes"] == ["rpn anchor sizes differ: [32, 64, 128, 256, 512] in the checkpoint, "
                               "[16, 32, 64, 128, 256] in the model; the RPN rows serve the new sizes by ratio"]

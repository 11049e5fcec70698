"""What a model with an attribute head writes: the COCO results files (infer.py's coco_results.json and the
evaluation's predictions.json) carry each detection's attributes as Fashionpedia's evaluation reads them,
``attribute_ids`` = the dataset's own (source) ids, best first, and ``attribute_scores``; the overlays list
the attribute names after each tag. Without an attribute head every file is byte for byte what it was."""
import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from inference_support import CLASS_NAMES, make_checkpoint, mode_images, model_output
from maskrcnn.engine.coco_format import attribute_fields, attributes_above, encode_prediction
from maskrcnn.engine.validation import coco_detections, write_overlays
from maskrcnn.inference.cli import main
from maskrcnn.inference.outputs import attribute_source_ids, coco_results, draw_overlay
from maskrcnn.inference.predictor import FileResult, Instance, Predictor

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
ATTRIBUTES = ["striped", "dotted", "plain"]
SOURCE_IDS = [4, 7, 9]  # e.g. a table that starts at 1 and skips ids: the columns 0, 1, 2 are NOT the ids
HEAD = ["model.num_attributes=3", "model.attribute_names=[striped, dotted, plain]",
        "model.attribute_source_ids=[4, 7, 9]"]
OPTIONS = ["--score-thresh", "0.2", "--max-detections", "4", "--workers", "0"]


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


# ----------------------------------------------------------------------------------------------
# The fields of one detection
# ----------------------------------------------------------------------------------------------
def test_attribute_fields_are_source_ids_best_first_at_or_above_the_threshold():
    scores = [0.25, 0.875, 0.5, 0.75]          # columns 0..3
    assert attributes_above(scores, 0.5) == [(1, 0.875), (3, 0.75), (2, 0.5)]
    assert attribute_fields(scores, [115, 136, 7, 3], 0.5) == {"attribute_ids": [136, 3, 7],
                                                               "attribute_scores": [0.875, 0.75, 0.5]}
    assert attribute_fields(scores, [], 0.8) == {"attribute_ids": [1], "attribute_scores": [0.875]}  # positions
    assert attribute_fields(scores, [1, 2, 3, 4], 0.9) == {"attribute_ids": [], "attribute_scores": []}
    assert attributes_above([0.5, 0.75, 0.75], 0.5) == [(1, 0.75), (2, 0.75), (0, 0.5)]  # ties: column order
    with pytest.raises(ValueError, match="model.attribute_source_ids names 2 attributes, but the model scores 4"):
        attribute_fields(scores, [1, 2], 0.5)


def test_source_id_map_of_the_config():
    assert attribute_source_ids(ATTRIBUTES, SOURCE_IDS) == {"striped": 4, "dotted": 7, "plain": 9}
    assert attribute_source_ids(ATTRIBUTES, []) == {"striped": 0, "dotted": 1, "plain": 2}  # not stored
    assert attribute_source_ids([], []) == {}
    with pytest.raises(ValueError, match="model.attribute_source_ids has 2 entries but model.attribute_names 3"):
        attribute_source_ids(ATTRIBUTES, [4, 7])
    with pytest.raises(ValueError, match=r"model.attribute_names: \['plain'\] appear more than once"):
        attribute_source_ids(["plain", "dotted", "plain"], SOURCE_IDS)


# ----------------------------------------------------------------------------------------------
# predictions.json (the evaluation) and validation overlays
# ----------------------------------------------------------------------------------------------
def _encoded(with_attributes: bool):
    prediction = {"image_id": 7, "boxes": torch.tensor([[10.0, 20, 30, 50], [0, 0, 5, 5]]),
                  "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.875, 0.25])}
    if with_attributes:  # (N, A) as the model's eval output holds them
        prediction["attribute_scores"] = torch.tensor([[0.125, 0.625, 0.9375], [0.5, 0.25, 0.0625]])
    return encode_prediction(prediction)


def test_predictions_json_without_a_head_is_unchanged_and_with_one_has_source_ids():
    plain = json.dumps(coco_detections([_encoded(False)], ["top", "skirt"], SOURCE_IDS, 0.5))
    assert plain == (  # the format before attributes existed, character for character
        '[{"image_id": 7, "category_id": 2, "category_name": "skirt", "score": 0.875, '
        '"bbox": [10.0, 20.0, 20.0, 30.0]}, '
        '{"image_id": 7, "category_id": 1, "category_name": "top", "score": 0.25, "bbox": [0.0, 0.0, 5.0, 5.0]}]')
    detections = coco_detections([_encoded(True)], ["top", "skirt"], SOURCE_IDS, 0.5)
    assert [(d["attribute_ids"], d["attribute_scores"]) for d in detections] == [
        ([9, 7], [0.9375, 0.625]),  # columns 2 and 1, best first, as source ids
        ([4], [0.5])]               # 0.5 is at the threshold: kept
    for with_head, without in zip(detections, json.loads(plain)):  # the rest is as without the head
        assert {k: v for k, v in with_head.items() if not k.startswith("attribute_")} == without


def test_fashionpedia_reads_the_attributes_of_the_results_file(tmp_path):
    """pycocotools' loadRes (which Fashionpedia's loader extends) keeps attribute_ids per result, and the
    multi-hot vector FPEval builds from them marks the right attributes."""
    from pycocotools.coco import COCO

    from maskrcnn.engine.coco_format import records_to_coco
    from maskrcnn.engine.evaluation import _coco_from_dict

    record = {"file_name": "a.png", "image_id": 7, "height": 64, "width": 48,
              "annotations": [{"bbox": [10, 20, 30, 50], "category_id": 2, "iscrowd": 0}]}
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(coco_detections([_encoded(True)], ["top", "skirt"], SOURCE_IDS, 0.5)))
    with contextlib.redirect_stdout(io.StringIO()):
        results = _coco_from_dict(records_to_coco([record], ["top", "skirt"])).loadRes(str(path))
    assert isinstance(results, COCO)
    by_score = sorted(results.dataset["annotations"], key=lambda r: -r["score"])
    multi_hot = np.zeros((2, 10), dtype=np.int64)  # Fashionpedia's ids index the vector directly
    for row, result in enumerate(by_score):
        multi_hot[row, result["attribute_ids"]] = 1
    assert multi_hot.nonzero()[1].tolist() == [7, 9, 4]


def test_validation_overlays_name_the_attributes(tmp_path):
    Image.fromarray(np.full((64, 48, 3), 200, dtype=np.uint8)).save(tmp_path / "a.png")
    record = {"file_name": str(tmp_path / "a.png"), "image_id": 7, "height": 64, "width": 48, "annotations": []}
    encoded = _encoded(True)
    plain, = write_overlays(str(tmp_path / "plain"), [record], [encoded], ["top", "skirt"], score_thresh=0.5)
    named, = write_overlays(str(tmp_path / "named"), [record], [encoded], ["top", "skirt"], score_thresh=0.5,
                            attribute_names=ATTRIBUTES, attribute_thresh=0.5)
    without_scores, = write_overlays(str(tmp_path / "none"), [record], [_encoded(False)], ["top", "skirt"],
                                     score_thresh=0.5, attribute_names=ATTRIBUTES)
    pictures = [np.asarray(Image.open(p).convert("RGB")) for p in (plain, named, without_scores)]
    assert pictures[0].shape == pictures[1].shape and not np.array_equal(pictures[0], pictures[1])
    assert np.array_equal(pictures[0], pictures[2])   # no attribute scores: the picture of a plain model


# ----------------------------------------------------------------------------------------------
# infer.py: coco_results.json, per-image JSON and overlays of a checkpoint with an attribute head
# ----------------------------------------------------------------------------------------------
def test_infer_coco_results_without_a_head_are_unchanged():
    rle = {"size": [4, 6], "counts": "5220007"}  # rows 1-2, columns 1-3
    result = FileResult("photos/look.jpg", "look", 4, 6, [Instance((1.0, 0.5, 4.0, 3.5), 1, "dress", 0.75, rle)])
    assert json.dumps(coco_results(result, 3)) == (  # the format before attributes existed
        '[{"image_id": 3, "file_name": "look.jpg", "category_id": 1, "category_name": "dress", "score": 0.75, '
        '"bbox": [1.0, 0.5, 3.0, 3.0], "segmentation": {"size": [4, 6], "counts": "5220007"}}]')
    result.instances[0].attributes = [{"name": "plain", "score": 0.75}, {"name": "striped", "score": 0.5}]
    entry, = coco_results(result, 3, attribute_source_ids(ATTRIBUTES, SOURCE_IDS))
    assert (entry["attribute_ids"], entry["attribute_scores"]) == ([9, 4], [0.75, 0.5])
    with pytest.raises(ValueError, match="pass attribute_ids"):
        coco_results(result, 3)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    root = tmp_path_factory.mktemp("attributes")
    return {"checkpoint": make_checkpoint(str(root / "tiny.pth"), extra=HEAD),
            "images": mode_images(str(root / "images")), "root": root}


def test_infer_coco_results_carry_the_models_attributes_as_source_ids(head):
    out = str(head["root"] / "coco")
    path = head["images"]["rgb"]
    # The reference: the model's own forward pass (its attribute probabilities per detection, column order).
    predictor = Predictor(head["checkpoint"], device="cpu", score_thresh=0.2, max_detections=4)
    output = model_output(predictor, predictor.decode(path).image, detections_per_img=4)
    # random weights score every attribute near 0.5: a threshold at the median keeps some and drops some
    threshold = float(output["attribute_scores"].flatten().median())
    status, _, stderr = run(["--weights", head["checkpoint"], path, "--out", out, "--json", "coco",
                             "--no-overlays", "--attribute-thresh", repr(threshold)] + OPTIONS)
    assert status == 0, stderr
    with open(os.path.join(out, "coco_results.json")) as f:
        results = json.load(f)
    assert len(results) == 4
    assert torch.equal(torch.tensor([r["score"] for r in results]), output["scores"])
    kept_some = dropped_some = False
    for result, probabilities in zip(results, output["attribute_scores"].tolist()):
        order = sorted(range(3), key=lambda a: -probabilities[a])
        kept = [a for a in order if probabilities[a] >= threshold]
        assert result["attribute_ids"] == [SOURCE_IDS[a] for a in kept]
        assert result["attribute_scores"] == [probabilities[a] for a in kept]
        kept_some, dropped_some = kept_some or bool(kept), dropped_some or len(kept) < 3
    assert kept_some and dropped_some  # the threshold really chose
    # a lower threshold keeps every attribute
    status, _, _ = run(["--weights", head["checkpoint"], path, "--out", out, "--json", "coco", "--no-overlays",
                        "--attribute-thresh", "0"] + OPTIONS)
    with open(os.path.join(out, "coco_results.json")) as f:
        assert all(sorted(r["attribute_ids"]) == SOURCE_IDS for r in json.load(f))


def test_infer_per_image_json_and_overlay_name_the_attributes(head):
    out = str(head["root"] / "per_image")
    status, _, stderr = run(["--weights", head["checkpoint"], head["images"]["rgb"], "--out", out] + OPTIONS)
    assert status == 0, stderr
    with open(os.path.join(out, "json", "a_rgb.json")) as f:
        instances = json.load(f)["instances"]
    predictor = Predictor(head["checkpoint"], device="cpu", score_thresh=0.2, max_detections=4)
    result = next(iter(predictor.predict_files([head["images"]["rgb"]])))
    # the reference: the model's probabilities of the same detections, the names scoring >= 0.5 (the default)
    output = model_output(predictor, predictor.decode(head["images"]["rgb"]).image, detections_per_img=4)
    expected = [[ATTRIBUTES[a] for a in sorted(range(3), key=lambda a: -row[a]) if row[a] >= 0.5]
                for row in output["attribute_scores"].tolist()]
    assert [[a["name"] for a in i["attributes"]] for i in instances] == expected
    assert any(expected)  # some tag really lists attributes
    drawn = np.asarray(draw_overlay(result, CLASS_NAMES))
    assert np.array_equal(np.asarray(Image.open(os.path.join(out, "overlays", "a_rgb.png")).convert("RGB")), drawn)
    for instance in result.instances:
        instance.attributes = None  # the same detections as a model without the head would draw them
    assert not np.array_equal(np.asarray(draw_overlay(result, CLASS_NAMES)), drawn)


def test_a_bad_source_id_list_is_refused_with_exit_status_2(head, tmp_path):
    bad = make_checkpoint(str(tmp_path / "bad.pth"), extra=HEAD[:2] + ["model.attribute_source_ids=[4, 7]"])
    status, _, stderr = run(["--weights", bad, head["images"]["rgb"], "--out", str(tmp_path / "out"),
                             "--json", "coco"] + OPTIONS)
    assert status == 2
    assert stderr.strip() == ("infer.py: error: model.attribute_source_ids has 2 entries but "
                              "model.attribute_names 3: they must list the same attributes")


# ----------------------------------------------------------------------------------------------
# Train -> checkpoint -> results: the source ids travel in the checkpoint's config
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_stores_the_source_ids_and_every_results_file_uses_them(tmp_path):
    """Two iterations on the synthetic set (attribute source ids 1..7, columns 0..6): the checkpoint's config
    carries the ids, and predictions.json and infer.py's coco_results.json name the attributes by them."""
    from engine.tiny_training import synthetic_data, write_config
    from maskrcnn.config import load_config
    from maskrcnn.data.synthetic import PATTERN_NAMES, TONE_NAMES
    from maskrcnn.engine.trainer import train

    data = dict(synthetic_data(tmp_path / "data", num_train=2, num_val=2), attributes="file")
    config = write_config(tmp_path, data, model={"num_attributes": len(PATTERN_NAMES + TONE_NAMES),
                                                 "attribute_hidden_dim": 16},
                          solver={"max_iter": 2, "checkpoint_period": 0}, train={"overlays": 2},
                          infer={"attribute_thresh": 0.0}, output_dir=str(tmp_path / "run"))
    with contextlib.redirect_stdout(io.StringIO()):
        result = train(load_config(config))
    state = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)
    assert state["config"]["model"]["attribute_names"] == PATTERN_NAMES + TONE_NAMES
    assert state["config"]["model"]["attribute_source_ids"] == [1, 2, 3, 4, 5, 6, 7]
    with open(tmp_path / "run" / "eval" / "final" / "predictions.json") as f:
        detections = json.load(f)
    assert detections and all(sorted(d["attribute_ids"]) == [1, 2, 3, 4, 5, 6, 7] for d in detections)  # threshold 0
    out = str(tmp_path / "infer")
    status, _, stderr = run(["--weights", result["checkpoint"], data["val_images"], "--out", out, "--json", "coco",
                             "--no-overlays", "--score-thresh", "0", "--workers", "0"])
    assert status == 0, stderr
    with open(os.path.join(out, "coco_results.json")) as f:
        results = json.load(f)
    assert results and all(sorted(r["attribute_ids"]) == [1, 2, 3, 4, 5, 6, 7] for r in results)
    assert all(r["attribute_scores"] == sorted(r["attribute_scores"], reverse=True) for r in results)

"""``train.py`` as a user runs it: config errors, a short run's files, ``--eval-only``, and ``torchrun`` with two
CPU processes (gloo): the same parameters as one process over the same global batch, and no hang when one
rank's images have no objects."""
import json
import os

import pytest
import torch

from engine.tiny_training import (
    DETERMINISTIC_SAMPLING,
    TRAIN_PY,
    read_metrics,
    run,
    synthetic_data,
    write_config,
    write_rectangles_set,
)


def test_unknown_key_is_named_with_the_closest_valid_key(tmp_path):
    config = write_config(tmp_path, {"train_annotations": "unused.json"})
    result = run(["--config", config, "solver.base_lrr=0.1"], timeout=60)
    assert result.returncode == 2
    assert "unknown key 'solver.base_lrr'" in result.stderr and "solver.base_lr" in result.stderr

    with open(config, "a") as f:
        f.write("trian:\n  log_period: 5\n")
    result = run(["--config", config], timeout=60)
    assert result.returncode == 2
    assert "tiny.yaml" in result.stderr and "'trian'" in result.stderr and "'train'" in result.stderr


def test_missing_annotation_file_is_named(tmp_path):
    config = write_config(tmp_path, {"train_annotations": str(tmp_path / "nowhere.json")})
    result = run(["--config", config, f"output_dir={tmp_path / 'out'}"], timeout=120)
    assert result.returncode != 0
    assert "nowhere.json" in result.stderr


@pytest.mark.slow
def test_short_run_leaves_checkpoints_and_metrics_and_eval_only_reproduces_its_predictions(tmp_path):
    config = write_config(tmp_path, synthetic_data(tmp_path / "data"))
    out = tmp_path / "out"
    result = run(["--config", config, "solver.max_iter=3", f"output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p for p in os.listdir(out) if p.endswith(".pth")) == ["model_0000002.pth", "model_0000003.pth"]
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    train_lines = read_metrics(out)
    assert [r["iteration"] for r in train_lines] == [1, 2, 3]
    for record in train_lines:
        names = ["loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"]
        assert record["loss"] == pytest.approx(sum(record[n] for n in names), rel=1e-6)
    assert [r["iteration"] for r in read_metrics(out, "eval")] == [3]
    assert "iter 3/3" in result.stdout and "img/s" in result.stdout and "peak mem" in result.stdout
    assert (out / "loss_curves.png").is_file()
    final = out / "eval" / "final"
    with open(final / "predictions.json") as f:
        trained_predictions = json.load(f)
    assert trained_predictions, "the tiny model should still detect something at score_thresh 0.05"
    assert {"image_id", "category_id", "category_name", "score", "bbox", "segmentation"} <= set(trained_predictions[0])

    # --eval-only on the last checkpoint: the same weights must give the same detections and numbers.
    result = run(["--config", config, "--eval-only", f"output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    again = out / "eval" / "model_0000003"
    with open(again / "predictions.json") as f:
        assert json.load(f) == trained_predictions
    with open(final / "evaluation.json") as f, open(again / "evaluation.json") as g:
        first, second = json.load(f), json.load(g)
    for iou_type in ("bbox", "segm"):
        assert first[iou_type]["AP"] == second[iou_type]["AP"]
        assert first[iou_type]["AP50"] == second[iou_type]["AP50"]


def _rectangles(count):
    """``count`` images with exactly two objects each, at different places (every image's losses are then
    normalized by the same counts, see DETERMINISTIC_SAMPLING)."""
    images = []
    for i in range(count):
        a, b = 4 + 3 * i, 30 + 2 * i
        images.append([(1 + i % 3, a, a, a + 20, a + 16), (1 + (i + 1) % 3, b, 6, b + 14, 40)])
    return images


def _parameters(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
def test_two_gloo_processes_give_the_parameters_of_one_process_over_the_same_global_batch(tmp_path):
    annotations = write_rectangles_set(tmp_path / "data", _rectangles(8))
    data = {"train_annotations": annotations, "train_images": str(tmp_path / "data"), "val_annotations": ""}
    # A moderate rate: both runs round differently at the last bit (ROIAlign's backward sums the ROIs of 2 or
    # of 4 images), and at base_lr 0.02 this small unnormalised net amplifies a 1e-8 difference after one
    # update to 5e-5 after three; at 0.005 it stays near 3e-8 while the weights still move by ~5e-3.
    config = write_config(tmp_path, data, model={"num_classes": 3, **DETERMINISTIC_SAMPLING["model"]},
                          solver={"ims_per_batch": 4, "warmup_iters": 0, "base_lr": 0.005, "checkpoint_period": 1})
    single, double = tmp_path / "single", tmp_path / "double"
    result = run(["--config", config, "solver.max_iter=3", f"output_dir={single}"])
    assert result.returncode == 0, result.stderr[-3000:]
    result = run(["--config", config, "solver.max_iter=3", f"output_dir={double}"], torchrun_processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es) on cpu, 2 image(s) per process per iteration (global batch 4)" in result.stdout

    one, two = _parameters(single / "model_0000003.pth"), _parameters(double / "model_0000003.pth")
    before = _parameters(single / "model_0000001.pth")
    largest_difference = max(float((one[k] - two[k]).abs().max()) for k in one)
    largest_update = max(float((one[k] - before[k]).abs().max()) for k in one)
    assert largest_difference < 1e-5
    assert largest_update > 1e-3  # the runs did move the weights: the comparison above is not vacuous
    # The logged losses are the mean over the processes, which here is the single process's loss.
    for a, b in zip(read_metrics(single), read_metrics(double)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_a_rank_whose_images_have_no_objects_does_not_hang_the_other(tmp_path):
    from maskrcnn.data import AspectRatioBatchSampler, load_records

    # With the seed and sizes of the run below, find the images rank 1 gets at iteration 1, and leave
    # exactly those without objects.
    sampler = AspectRatioBatchSampler([1.0] * 4, batch_size=2, seed=0, rank=1, world_size=2)
    sampler.set_epoch(0)
    empty = set(next(iter(sampler)))
    images = [[] if i in empty else [(1, 8, 8, 40, 30), (2, 30, 34, 60, 60)] for i in range(4)]
    annotations = write_rectangles_set(tmp_path / "data", images)
    records = load_records("coco", annotations, str(tmp_path / "data"))
    assert [len(records[i]["annotations"]) for i in sorted(empty)] == [0, 0]
    data = {"train_annotations": annotations, "train_images": str(tmp_path / "data"),
            "val_annotations": annotations, "val_images": str(tmp_path / "data")}
    config = write_config(tmp_path, data, model={"num_classes": 3}, solver={"ims_per_batch": 4})
    out = tmp_path / "out"
    # A hang would surface as subprocess.TimeoutExpired (the run itself takes well under a minute).
    result = run(["--config", config, "solver.max_iter=2", f"output_dir={out}", "train.dist_timeout_minutes=2"],
                 timeout=300, torchrun_processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["iteration"] for r in read_metrics(out)] == [1, 2]
    assert (out / "model_0000002.pth").is_file()
    assert read_metrics(out, "eval")[0]["segm/AP"] is not None


@pytest.mark.parametrize("name", ["modanet_r50_fpn", "imaterialist_r50_fpn", "imaterialist27_r50_fpn",
                                  "fashionpedia_r50_fpn", "deepfashion2_r50_fpn"])
def test_dataset_configs_load_chain_their_stages_and_match_their_class_tables(name):
    from maskrcnn.config import load_config
    from maskrcnn.data.categories import category_map_from_table, load_category_table
    from maskrcnn.engine.solver import lr_schedule_from_config

    cfg = load_config(os.path.join(os.path.dirname(TRAIN_PY), "configs", f"{name}.yaml"))
    classes = category_map_from_table(load_category_table(cfg.data.categories), cfg.data.drop_categories,
                                      cfg.data.merge_categories).class_names
    assert len(classes) == cfg.model.num_classes
    schedule = lr_schedule_from_config(cfg.solver)
    # The seeds' recipe: heads at 1e-3, then all layers at 1e-4, then 1e-5, back to back up to max_iter.
    assert [(s.name, s.base_lr) for s in schedule.stages] == [("heads", 1e-3), ("all", 1e-4), ("all", 1e-5)]
    assert schedule.stages[-1].end == cfg.solver.max_iter
    assert cfg.model.weights.endswith(".pth") and cfg.data.augment.hflip.prob == 0.5

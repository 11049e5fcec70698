"""The training loop: exact resume after a SIGKILL (across a stage and an epoch boundary), the data position
on resume, the non-finite-loss stop, and the metrics file and progress line."""
import json
import os
import signal

import pytest
import torch

from maskrcnn.config import load_config
from maskrcnn.data import AspectRatioBatchSampler, FashionDataset, load_split
from maskrcnn.engine.progress import MetricsLog, SmoothedIterationTime, format_duration, progress_line, read_metrics
from maskrcnn.engine.trainer import KILL_AFTER_ENV, NonFiniteLossError, train, training_batches

from .tiny_training import ENV, read_metrics as read_train_metrics, run, synthetic_data, write_config


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return synthetic_data(tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=2)


# ----------------------------------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------------------------------
def test_batches_resume_at_the_batch_of_any_iteration(tiny_data, tmp_path):
    cfg = load_config(write_config(tmp_path, tiny_data))
    dataset = FashionDataset(load_split(cfg, "train"), seed=cfg.seed)

    def image_ids(start, count):
        sampler = AspectRatioBatchSampler(dataset.aspect_ratios(), 3, seed=cfg.seed)  # 3 batches per epoch
        stream = training_batches(dataset, sampler, start, num_workers=0, pin_memory=False)
        return [[t["image_id"] for t in next(stream)[1]] for _ in range(count)]

    uninterrupted = image_ids(0, 8)  # crosses two epoch boundaries (after iterations 3 and 6)
    assert uninterrupted[:3] != uninterrupted[3:6]  # each epoch has its own order
    for start in (1, 3, 5):
        assert image_ids(start, 8 - start) == uninterrupted[start:]


@pytest.mark.slow
def test_a_killed_run_resumes_with_the_same_losses_across_a_stage_boundary(tiny_data, tmp_path):
    # Stage 'heads' for iterations 1-2, then 'all'; 4 batches per epoch, so iterations 5-6 start epoch 1.
    config = write_config(tmp_path, tiny_data,
                          solver={"stages": [{"name": "heads", "iters": 2, "base_lr": 0.01},
                                             {"name": "all", "base_lr": 0.005}]},
                          dataloader={"num_workers": 1})
    common = ["--config", config, "solver.max_iter=6", "solver.checkpoint_period=2"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    result = run(common + [f"output_dir={straight}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stage 'heads', iterations 1-2" in result.stdout and "stage 'all', iterations 3-6" in result.stdout

    # SIGKILL right after iteration 3: the last checkpoint is iteration 2, iteration 3 is lost.
    result = run(common + [f"output_dir={killed}"], env=dict(ENV, **{KILL_AFTER_ENV: "3"}))
    assert result.returncode == -signal.SIGKILL
    assert [r["iteration"] for r in read_train_metrics(killed)] == [1, 2, 3]
    assert (killed / "last_checkpoint").read_text() == "model_0000002.pth"

    result = run(common + [f"output_dir={killed}", "--resume"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "at iteration 2" in result.stdout and "stage 'all', iterations 3-6" in result.stdout
    assert "stage 'heads'" not in result.stdout

    expected, resumed = read_train_metrics(straight), read_train_metrics(killed)
    assert [r["iteration"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(expected, resumed):
        for name in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask", "lr"):
            assert a[name] == b[name], (a["iteration"], name)
    final_a = torch.load(straight / "model_0000006.pth", weights_only=True)
    final_b = torch.load(killed / "model_0000006.pth", weights_only=True)
    for name, tensor in final_a["model"].items():
        assert torch.equal(tensor, final_b["model"][name]), name
    assert read_train_metrics(straight, "eval") == read_train_metrics(killed, "eval")


# ----------------------------------------------------------------------------------------------
# Non-finite loss
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_diverging_run_stops_naming_the_iteration_and_the_images(tiny_data, tmp_path):
    out = tmp_path / "out"
    config = write_config(tmp_path, tiny_data)
    cfg = load_config(config, ["solver.base_lr=100000000.0", "solver.warmup_iters=0", "solver.max_iter=8",
                               f"output_dir={out}", "solver.checkpoint_period=100"])
    with pytest.raises(NonFiniteLossError) as caught:
        train(cfg)
    message = str(caught.value)
    stopped_at = int(message.split("iteration ")[1].split(":")[0])
    assert 2 <= stopped_at <= 8

    # The batch of that iteration, as the sampler deals it: batch (i - 1) mod 4 of epoch (i - 1) div 4.
    dataset = FashionDataset(load_split(cfg, "train"))
    sampler = AspectRatioBatchSampler(dataset.aspect_ratios(), 2, seed=cfg.seed)
    epoch, position = divmod(stopped_at - 1, len(sampler))
    sampler.set_epoch(epoch)
    indices = list(sampler)[position]
    expected_ids = [dataset.records[i]["image_id"] for i in indices]
    assert f"the batch held image ids {expected_ids}" in message
    assert "nan" in message or "inf" in message
    logged = [r["iteration"] for r in read_train_metrics(out)]
    assert logged == list(range(1, stopped_at))  # nothing is logged or saved for the failed iteration
    assert not [p for p in os.listdir(out) if p.endswith(".pth")]


# ----------------------------------------------------------------------------------------------
# Progress line and metrics file
# ----------------------------------------------------------------------------------------------
def test_progress_line_reads_iteration_losses_rate_speed_eta_memory():
    losses = {"loss_objectness": 0.5, "loss_mask": 0.25}
    line = progress_line(40, 300, losses, 0.01, 7.94, 131.2, 3 * 2**29)
    assert line == "iter 40/300  loss 0.750  objectness 0.500  mask 0.250  lr 0.01  7.9 img/s  eta 0:02:11  peak mem 1.5G"
    assert format_duration(3725) == "1:02:05"


def test_thread_count_leaves_the_loader_workers_their_cores():
    from maskrcnn.engine.distributed import default_num_threads

    assert default_num_threads(cores=16, processes_per_machine=1, loader_workers=2) == 14
    assert default_num_threads(cores=2, processes_per_machine=1, loader_workers=2) == 1  # never below one
    assert default_num_threads(cores=16, processes_per_machine=4, loader_workers=2) == 2
    assert default_num_threads(cores=2, processes_per_machine=1, loader_workers=0) == 2


def test_eta_averages_the_iteration_time_with_a_half_life_in_iterations():
    timer = SmoothedIterationTime(half_life=20)
    assert timer.update(5.0, 1, provisional=True) == 5.0  # the first iteration, start-up included
    assert timer.update(1.0, 19) == 1.0  # replaces the provisional value instead of averaging with it
    assert timer.update(3.0, 20) == pytest.approx(0.5 * 1.0 + 0.5 * 3.0)  # 20 iterations: half the weight
    assert timer.update(3.0, 40) == pytest.approx(0.25 * 2.0 + 0.75 * 3.0)
    # One slow window moves the estimate by its share of iterations, not all the way (the ETA no longer jumps).
    steady = SmoothedIterationTime(half_life=50)
    steady.update(1.0, 20)
    assert steady.update(4.0, 20) == pytest.approx(1.0 + 3.0 * (1 - 0.5 ** (20 / 50)))


def test_metrics_log_drops_lines_after_the_resumed_checkpoint(tmp_path):
    log = MetricsLog(str(tmp_path), tensorboard=False)
    for iteration in (1, 2, 3, 4):
        log.write({"type": "train", "iteration": iteration, "loss": 1.0 / iteration})
    log.write({"type": "eval", "iteration": 4, "segm/AP": 0.5})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "iter')  # a line cut short by a kill
    assert [r["iteration"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == [1, 2, 3, 4, 4]

    MetricsLog(str(tmp_path), resume_from=2, tensorboard=False)
    assert read_metrics(str(tmp_path / "metrics.jsonl")) == [
        {"type": "train", "iteration": 1, "loss": 1.0}, {"type": "train", "iteration": 2, "loss": 0.5}]
    MetricsLog(str(tmp_path), tensorboard=False)  # a fresh run starts a new file
    assert read_metrics(str(tmp_path / "metrics.jsonl")) == []


def test_loss_curves_picture_is_drawn_from_the_metrics(tmp_path):
    log = MetricsLog(str(tmp_path), tensorboard=False)
    assert log.draw_loss_curves() is None
    for iteration in range(1, 6):
        log.write({"type": "train", "iteration": iteration, "loss": 2.0 / iteration, "loss_mask": 1.0 / iteration})
    path = log.draw_loss_curves()
    from PIL import Image

    with Image.open(path) as picture:
        assert picture.size == (720, 480)


# ----------------------------------------------------------------------------------------------
# Predictions file and overlays
# ----------------------------------------------------------------------------------------------
def test_predictions_json_is_coco_results_and_overlays_enlarge_small_images(tmp_path):
    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    from maskrcnn.engine.coco_format import encode_prediction, records_to_coco
    from maskrcnn.engine.evaluation import _coco_from_dict
    from maskrcnn.engine.validation import write_overlays, write_predictions_json

    Image.fromarray(np.full((64, 48, 3), 200, dtype=np.uint8)).save(tmp_path / "a.png")
    record = {"file_name": str(tmp_path / "a.png"), "image_id": 7, "height": 64, "width": 48,
              "annotations": [{"bbox": [10, 20, 30, 50], "category_id": 2, "iscrowd": 0,
                               "segmentation": [[10, 20, 30, 20, 30, 50, 10, 50]]}]}
    masks = torch.zeros(2, 1, 64, 48)
    masks[0, 0, 20:50, 10:30] = 0.9
    masks[1, 0, 0:5, 0:5] = 0.8
    encoded = encode_prediction({"image_id": 7, "boxes": torch.tensor([[10.0, 20, 30, 50], [0, 0, 5, 5]]),
                                 "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.9, 0.3]),
                                 "masks": masks})
    path = write_predictions_json(str(tmp_path / "predictions.json"), [encoded], ["top", "skirt"])
    with open(path) as f:
        detections = json.load(f)
    assert [(d["category_id"], d["category_name"], d["score"], d["bbox"]) for d in detections] == [
        (2, "skirt", 0.9, [10.0, 20.0, 20.0, 30.0]), (1, "top", 0.3, [0.0, 0.0, 5.0, 5.0])]
    assert int(mask_utils.area(detections[0]["segmentation"])) == 20 * 30
    # pycocotools accepts the file as results for this ground truth
    ground_truth = _coco_from_dict(records_to_coco([record], ["top", "skirt"]))
    assert len(ground_truth.loadRes(path).getAnnIds()) == 2

    written = write_overlays(str(tmp_path / "overlays"), [record], [encoded], ["top", "skirt"], score_thresh=0.5)
    assert [os.path.basename(p) for p in written] == ["a.png"]  # named after the image file, not its id 7
    with Image.open(written[0]) as picture:
        assert picture.size[0] == 48 * 8 and picture.size[1] > 64 * 8  # round(512 / 64) = 8 times larger + legend
        pixels = np.asarray(picture)
    assert tuple(pixels[35 * 8, 20 * 8]) != (200, 200, 200)  # inside the kept mask: tinted
    assert tuple(pixels[2 * 8, 2 * 8]) == (200, 200, 200)  # the 0.3 detection is below the threshold

"""``train.py`` as a user runs it: config errors, a short run's files, ``--eval-only``, and ``torchrun`` with two
CPU processes (gloo): the same parameters as one process over the same global batch, and no hang when one
rank's images have no objects."""
import json
import os

import pytest
import torch

from engine.tiny_training import (
    DETERMINISTIC_SAMPLING,
    ENV,
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


# ----------------------------------------------------------------------------------------------
# One way to fail (issue 12): every bad input found before training exits 2 with one line naming the
# file and the key or field, no traceback, and nothing written into output_dir.
# ----------------------------------------------------------------------------------------------
def _refused(result, *named, out=None):
    """Assert exit 2, every string of ``named`` in stderr, no traceback, and (``out``) nothing written there."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    for text in named:
        assert text in result.stderr, (text, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout
    if out is not None:
        assert not os.path.exists(out), sorted(os.listdir(out))


@pytest.fixture(scope="module")
def rectangles(tmp_path_factory):
    """A 3-class COCO set (top, skirt, bag) of four 64-pixel images, and its data section."""
    folder = tmp_path_factory.mktemp("rectangles")
    annotations = write_rectangles_set(folder, [[(1, 4, 4, 30, 30), (3, 30, 34, 60, 60)]] * 4)
    return {"train_annotations": annotations, "train_images": str(folder),
            "val_annotations": annotations, "val_images": str(folder)}


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


@pytest.mark.parametrize("case", ["invalid_json", "top_level_list", "semicolon_csv", "strict_bbox"])
def test_bad_data_files_exit_2_naming_the_file_and_field(tmp_path, rectangles, case):
    coco_image = {"id": 1, "file_name": "001.png", "height": 64, "width": 64}
    data, named = dict(rectangles), []
    if case == "invalid_json":
        data["train_annotations"] = _write(tmp_path / "broken.json", '{"images": [')
        named = ["broken.json: not valid JSON"]
    elif case == "top_level_list":
        data["train_annotations"] = _write(tmp_path / "list.json", "[]")
        named = ["list.json: expected a JSON object"]
    elif case == "semicolon_csv":
        data["format"] = "imaterialist"
        data["train_annotations"] = _write(tmp_path / "train.csv", "ImageId;EncodedPixels;Height;Width;ClassId\n")
        named = ["train.csv: line 1: expected the header ImageId,EncodedPixels,Height,Width,ClassId"]
    else:
        bad = {"images": [coco_image], "categories": [{"id": 1, "name": "top"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "iscrowd": 0,
                                "segmentation": [[4, 4, 30, 4, 30, 30]]}]}
        data["train_annotations"] = _write(tmp_path / "strict.json", json.dumps(bad))
        data["strict"] = True
        named = ["strict.json: annotations[0].bbox: expected 4 numbers, got 3"]
    config = write_config(tmp_path, data, model={"num_classes": 3})
    out = tmp_path / "out"
    _refused(run(["--config", config, f"output_dir={out}"], timeout=120), *named, out=out)


def test_missing_annotation_file_is_named(tmp_path, rectangles):
    config = write_config(tmp_path, {**rectangles, "train_annotations": str(tmp_path / "nowhere.json")})
    out = tmp_path / "out"
    _refused(run(["--config", config, f"output_dir={out}"], timeout=120), "nowhere.json: annotation file not found",
             out=out)


@pytest.mark.parametrize("override, named", [
    ("solver.base_lr=-0.01", "key 'solver.base_lr' must be a positive number, got -0.01"),
    ("solver.max_iter=-5", "key 'solver.max_iter' must be at least 1"),
    ("solver.max_iter=0", "key 'solver.max_iter' must be at least 1"),
    ("data.format=cocoa", "data.format='cocoa': unknown dataset format; choose one of ['coco', 'deepfashion2', "
                          "'imaterialist']"),
    ("data.train_annotations=", "data.train_annotations is not set"),
    ("model.num_classes=5", "model.num_classes=5, but the training set"),
    ("learning_rate=0.01", "unknown key 'learning_rate'. Did you mean 'solver.base_lr'?"),
])
def test_bad_config_values_exit_2_naming_the_key_and_writing_nothing(tmp_path, rectangles, override, named):
    config = write_config(tmp_path, rectangles, model={"num_classes": 3})
    out = tmp_path / "out"
    result = run(["--config", config, f"output_dir={out}", override], timeout=120)
    _refused(result, named, out=out)
    if override.startswith("model.num_classes"):
        assert rectangles["train_annotations"] in result.stderr and "['top', 'skirt', 'bag']" in result.stderr


def test_debug_flag_and_environment_variable_show_the_traceback(tmp_path, rectangles):
    config = write_config(tmp_path, rectangles, model={"num_classes": 5})
    for extra, env in ((["--debug"], None), ([], dict(ENV, MASKRCNN_DEBUG="1"))):
        result = run(["--config", config, f"output_dir={tmp_path / 'out'}"] + extra, timeout=120, env=env)
        assert result.returncode == 2
        assert "Traceback" in result.stderr and "model.num_classes=5, but the training set" in result.stderr


@pytest.mark.slow
def test_batch_not_divisible_by_the_processes_is_said_once_by_rank_0(tmp_path, rectangles):
    config = write_config(tmp_path, rectangles, model={"num_classes": 3}, solver={"ims_per_batch": 3})
    out = tmp_path / "out"
    result = run(["--config", config, f"output_dir={out}"], timeout=180, torchrun_processes=2)
    message = "solver.ims_per_batch=3 (the global batch) is not divisible by the 2 processes"
    assert result.stderr.count(message) == 1, result.stderr[-3000:]
    assert "exitcode  : 2" in result.stderr  # torchrun reports the workers' status (and exits 1 itself)
    # torchrun prints a traceback of its own launcher; none comes from train.py or the package.
    assert "maskrcnn/" not in result.stderr and "train.py\", line" not in result.stderr
    assert not os.path.exists(out)


def test_an_error_from_a_loader_worker_is_said_in_one_line():
    import importlib.util

    from maskrcnn.data.problems import DataError

    spec = importlib.util.spec_from_file_location("train_entry_point", TRAIN_PY)
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    # What torch re-raises in the main process for a DataError of a DataLoader worker.
    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1, in f\nmaskrcnn.data.problems.DataError: a/b.png: cannot "
                        "decode the image (OSError: truncated)\n")
    assert entry.one_line(wrapped) == "a/b.png: cannot decode the image (OSError: truncated)"
    assert entry.one_line(DataError("a.json: not valid JSON: x")) == "a.json: not valid JSON: x"


def test_help_lists_examples_and_exit_codes():
    result = run(["--help"], timeout=60)
    assert result.returncode == 0
    assert "--resume" in result.stdout and "torchrun --nproc_per_node=2 train.py" in result.stdout
    for line in ("0  done", "1  training stopped on a non-finite loss", "2  bad command line, config, data file",
                 "3  a checkpoint could not be written"):
        assert line in result.stdout


# ----------------------------------------------------------------------------------------------
# Weights files, class names, resume (issue 12.2-12.5): one short trained run shared by the tests
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, rectangles):
    """A 2-iteration run on the 3-class set: model_0000001.pth, model_0000002.pth, eval/final."""
    folder = tmp_path_factory.mktemp("trained")
    config = write_config(folder, rectangles, model={"num_classes": 3}, solver={"checkpoint_period": 1})
    out = folder / "out"
    result = run(["--config", config, "solver.max_iter=2", f"output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return {"config": config, "out": out, "stdout": result.stdout}


def _copy_run(trained, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(trained["out"], out)
    return out


def _bad_weights(folder, kind, good):
    """A weights file of ``kind`` (truncated, empty, jpeg, tensor, pickle) in ``folder``; return its path."""
    path = folder / f"{kind}.pth"
    if kind == "truncated":
        content = good.read_bytes()
        path.write_bytes(content[: len(content) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "jpeg":
        path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(100))
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        torch.save({"model": _RunsCode()}, path)
    return path


class _RunsCode:
    """Pickled, this would call os.system when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


@pytest.mark.slow
@pytest.mark.parametrize("kind, how, reason", [
    ("truncated", "model.weights", "truncated or corrupted: its zip archive is incomplete"),
    ("pickle", "model.weights", "it holds a pickled reference to posix.system, which loading would import and call"),
    ("jpeg", "--eval-only", "it is a JPEG image, not a file written by torch.save"),
    ("tensor", "--eval-only", "it holds a Tensor, not a dict of named weights"),
    ("empty", "--resume", "empty: 0 bytes"),
])
def test_unusable_weights_files_are_named(tmp_path, trained, rectangles, kind, how, reason):
    path = _bad_weights(tmp_path, kind, trained["out"] / "model_0000002.pth")
    out = tmp_path / "out"
    args = ["--config", trained["config"], f"output_dir={out}"]
    if how == "model.weights":
        args.append(f"model.weights={path}")
    elif how == "--eval-only":
        args += ["--eval-only", f"model.weights={path}"]
    else:  # the only checkpoint of the folder to resume is unusable
        out.mkdir()
        path = path.rename(out / "model_0000002.pth")
        args.append("--resume")
    result = run(args, timeout=180)
    _refused(result, f"{path}: not a loadable checkpoint ({reason}")
    assert "weights_only" not in result.stderr and "this must never run" not in result.stdout
    assert not (out / "config.yaml").exists()


@pytest.mark.slow
def test_resume_with_other_class_names_is_refused_with_both_lists_and_config_kept(tmp_path, trained):
    out = _copy_run(trained, tmp_path)
    before = (out / "config.yaml").read_bytes()
    result = run(["--config", trained["config"], f"output_dir={out}", "solver.max_iter=4", "--resume",
                  "data.class_order=[bag, skirt, top]"], timeout=180)
    _refused(result, f"{out / 'model_0000002.pth'}: trained for the classes ['top', 'skirt', 'bag'], but the data",
             "has ['bag', 'skirt', 'top']", "model.weights=FILE")
    assert (out / "config.yaml").read_bytes() == before  # a failed --resume leaves the run's config alone


@pytest.mark.slow
def test_eval_only_refuses_weights_for_other_classes(tmp_path, trained):
    # The run's 3-class checkpoint against an 8-class validation set.
    data = synthetic_data(tmp_path / "data", num_train=2, num_val=2)
    config = write_config(tmp_path, data)
    weights = trained["out"] / "model_0000002.pth"
    result = run(["--config", config, "--eval-only", f"model.weights={weights}", f"output_dir={tmp_path / 'o'}"],
                 timeout=180)
    _refused(result, f"{weights}: trained for the classes ['top', 'skirt', 'bag'], but the data",
             "'dress'", "'headwear'")
    # A bare state dict names no classes: its predictor's class count is compared instead.
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(weights, weights_only=True)["model"], bare)
    result = run(["--config", config, "--eval-only", f"model.weights={bare}", f"output_dir={tmp_path / 'o'}"],
                 timeout=180)
    _refused(result, f"{bare}: its box predictor has 3 classes, but the data", "has 8")


@pytest.mark.slow
def test_fine_tuning_onto_new_classes_through_model_weights_reports_what_it_reinitialized(tmp_path, trained):
    data = synthetic_data(tmp_path / "data", num_train=2, num_val=0)
    config = write_config(tmp_path, {**data, "val_annotations": ""})
    result = run(["--config", config, "solver.max_iter=1", f"output_dir={tmp_path / 'o'}",
                  f"model.weights={trained['out'] / 'model_0000002.pth'}"], timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("reinitialized"))
    assert row.split()[1] == "6"  # class logits, box deltas, mask logits: weight and bias each
    assert "roi_heads.box_predictor.class_logits" in row and "roi_heads.mask_head" in row


@pytest.mark.slow
def test_resume_falls_back_past_a_truncated_newest_checkpoint_and_removes_stale_temporaries(tmp_path, trained):
    out = _copy_run(trained, tmp_path)
    newest = out / "model_0000002.pth"
    newest.write_bytes(newest.read_bytes()[:1000])  # as a crash or a full disk could leave it
    stale = out / ".model_0000003.pth.4242.tmp"
    stale.write_bytes(b"half a checkpoint")
    result = run(["--config", trained["config"], f"output_dir={out}", "solver.max_iter=3", "train.log_period=5",
                  "--resume"], timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"warning: {newest}: not a loadable checkpoint (truncated" in result.stderr
    assert f"resumed from {out / 'model_0000001.pth'} at iteration 1" in result.stdout
    assert f"removed {stale}" in result.stdout and not stale.exists()
    # A progress line after the process's first iteration (2), on screen only; metrics.jsonl keeps its schedule:
    # the interrupted run's line 1, then the final iteration (log_period 5).
    assert "iter 2/3" in result.stdout and "iter 3/3" in result.stdout
    assert [r["iteration"] for r in read_metrics(out)] == [1, 3]
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_resuming_a_finished_run_says_so_and_where_its_results_are(tmp_path, trained):
    out = _copy_run(trained, tmp_path)
    before = {name: (out / name).read_bytes() for name in ("config.yaml", "metrics.jsonl", "model_0000002.pth")}
    result = run(["--config", trained["config"], f"output_dir={out}", "solver.max_iter=2", "--resume"], timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"the run in {out} is already finished: {out / 'model_0000002.pth'} is at iteration 2 of "
            f"solver.max_iter=2; its final evaluation is in {out / 'eval' / 'final'}") in result.stdout
    assert {name: (out / name).read_bytes() for name in before} == before


def test_trained_run_prints_each_saved_checkpoint_and_a_first_progress_line(trained):
    out, stdout = trained["out"], trained["stdout"]
    assert f"checkpoint saved: {out / 'model_0000001.pth'}" in stdout
    assert f"checkpoint saved: {out / 'model_0000002.pth'}" in stdout
    assert "iter 1/2" in stdout and "torch threads: 1 per process (OMP_NUM_THREADS)" in stdout


@pytest.mark.slow
def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, trained, monkeypatch, capsys):
    import errno
    import importlib.util

    import maskrcnn.engine.checkpoint as checkpoint_module

    real_save, calls = torch.save, []

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        calls.append(getattr(f, "name", f))
        if len(calls) == 2:  # the second checkpoint: as if the disk filled up mid-write
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_the_disk_is_full)
    spec = importlib.util.spec_from_file_location("train_entry_point", TRAIN_PY)
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    out = tmp_path / "out"
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # leave this process's threads alone
    status = entry.main(["--config", trained["config"], "solver.max_iter=2", f"output_dir={out}",
                         "data.val_annotations="])
    err = capsys.readouterr().err
    assert status == 3
    assert f"no space left on device while writing {out / 'model_0000002.pth'}" in err
    assert "Traceback" not in err and "inline_container" not in err
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"  # the resume point
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]  # the partial write was removed
    assert not (out / "model_0000002.pth").exists()


# ----------------------------------------------------------------------------------------------
# Stopping (issue 16.5): a torchrun worker whose launcher died stops by itself
# ----------------------------------------------------------------------------------------------
LAUNCHER = """
import os, subprocess, sys
env = dict(os.environ, TORCHELASTIC_RUN_ID="test", RANK="1")
worker = subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdout=subprocess.PIPE, text=True)
assert worker.stdout.readline().strip() == "watching"
print(worker.pid, flush=True)
os._exit(0)  # the launcher vanishes without stopping its worker, as under kill -9
"""
WORKER = """
import time
from maskrcnn.engine.distributed import stop_when_launcher_exits
assert stop_when_launcher_exits(poll_seconds=0.1)
print("watching", flush=True)
time.sleep(300)
"""


def test_a_worker_stops_by_itself_when_its_torchrun_launcher_dies():
    import subprocess
    import sys

    # The worker inherits the launcher's stderr pipe: run() returns only once the worker has ended too, so an
    # orphan that trained on would show up as a timeout here.
    result = subprocess.run([sys.executable, "-c", f"WORKER = {WORKER!r}\n{LAUNCHER}"], cwd=os.path.dirname(TRAIN_PY),
                            env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    worker = int(result.stdout.strip())
    assert "train.py (rank 1): the torchrun launcher (pid " in result.stderr and "has exited; stopping" in result.stderr
    assert worker > 0

"""The training loop: one plain function, from a config to a trained, evaluated model.

    from maskrcnn.config import load_config
    from maskrcnn.engine.trainer import train
    train(load_config("configs/synthetic_demo.yaml"), resume=False)

or ``python train.py --config FILE [key=value ...]``, also as ``torchrun --nproc_per_node=N train.py ...``.
What one run does, in order (every rank runs the same code; rank 0 alone prints and writes files):

    join the process group (torchrun's variables; none for a single process)
    check the batch split, the LR schedule; choose torch's thread count (distributed.configure_threads)
    load the train and val splits (cfg.data), check the class count against model.num_classes
    resume: read the newest intact checkpoint, compare its class names with the data's; already finished: stop
    build the model (weights from model.weights unless resuming), the SGD optimizer, the LR schedule
    resume: restore model, optimizer, scheduler, grad scaler, RNG states and the iteration
    only now write into output_dir: config.yaml (and remove the temporary files of interrupted writes)
    for iteration in start .. max_iter - 1:
        entering a stage (solver.stages): set what trains, print the table, (re)wrap in DDP
        next batch  -> forward (autocast on CUDA) -> the five losses, averaged over ranks for the log
        non-finite loss: stop, naming the iteration and the batch's image ids
        backward (DDP averages the gradients) -> clip -> SGD step -> LR schedule step
        every train.log_period (and after the first iteration): progress line + metrics.jsonl;
        every eval.period: COCO evaluation; every solver.checkpoint_period: checkpoint
    at the end: checkpoint, final evaluation with predictions.json and overlay pictures, loss curves

Failing. Everything that can be wrong with the input is found before anything is written: the config
(``ConfigError``, naming the key), the data files (``DataError``, naming the file and field; plain loader
errors are named here, :func:`data_errors_named`), the weights and the checkpoint to resume
(``CheckpointError``, "FILE: not a loadable checkpoint (reason)"). ``train.py`` turns each into one line and
exit status 2; a checkpoint write that fails for lack of space (``CheckpointWriteError``) into exit status 3.

Batches. ``solver.ims_per_batch`` is the global batch: each of the W processes takes
``ims_per_batch / W`` images per iteration (``distributed.per_rank_batch_size`` refuses a batch W does not
divide). The aspect-ratio batch sampler (``data/samplers.py``) deals every rank the same number of
batches per epoch, so no rank ever waits for another that ran out of data, and a rank whose images have no
objects still trains (its losses are zeros connected to the graph), so the gradient all-reduce always pairs up.

Exact resume. A checkpoint holds everything the next iteration depends on: model, optimizer (momentum),
scheduler, grad scaler, iteration, and every rank's RNG states. The data order needs no state: the
sampler's order is a function of (seed, epoch) and each image's augmentation of (seed, epoch, index), so
iteration i is batch ``i mod B`` of epoch ``i div B`` (B batches per epoch) and the resumed run skips to
it without decoding anything. Data loaders get a private RNG, so creating one does not move the global
RNG the model's samplers draw from. Hence a run killed and resumed computes the very same losses as a run
that never stopped (on the same hardware and number of processes).

Randomness: the model is initialised from ``seed`` (the same weights on every rank), then each rank
reseeds with ``seed + rank`` for its own draws (the RPN's and ROI heads' example sampling).
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from torch import nn

from maskrcnn.checkpoint import CheckpointError, check_class_names, classes_of_weights, read_checkpoint_file
from maskrcnn.config import ConfigError
from maskrcnn.data import AspectRatioBatchSampler, FashionDataset, build_augmentations, collate, load_split, to_device
from maskrcnn.data.attributes import training_attribute_names
from maskrcnn.data.load import FORMATS
from maskrcnn.data.problems import DataError
from maskrcnn.data.samplers import training_repeat_factors
from maskrcnn.engine.checkpoint import (
    checkpoint_path,
    find_last_checkpoint,
    find_resume_checkpoint,
    get_rng_states,
    remove_interrupted_writes,
    restore_training_state,
    save_checkpoint,
)
from maskrcnn.engine.distributed import (
    DistributedInfo,
    all_gather_object,
    configure_threads,
    ddp_without_buffer_sync,
    destroy_distributed,
    init_distributed,
    per_rank_batch_size,
    reduce_mean,
    synchronize,
)
from maskrcnn.engine.progress import MetricsLog, SmoothedIterationTime, peak_memory_bytes, progress_line
from maskrcnn.engine.solver import build_lr_scheduler, clip_gradients, lr_schedule_from_config, optimizer_from_config
from maskrcnn.engine.stages import Stage, apply_stage, stage_at, trainable_baseline, trainable_table
from maskrcnn.engine.validation import autocast, load_validation_set, run_evaluation
from maskrcnn.modeling import build_model

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Fault injection for the resume tests: the process SIGKILLs itself right after this iteration (1-based).
KILL_AFTER_ENV = "MASKRCNN_KILL_AFTER_ITERATION"


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the iteration and the images of the batch."""


def train(cfg, resume: bool = False) -> Dict:
    """Train (and evaluate) as ``cfg`` says; ``resume`` continues from the last checkpoint in ``cfg.output_dir``.

    Returns ``{"iteration": last iteration, "checkpoint": path, "eval": final report or None}`` (the report
    on rank 0 only). Raises :class:`NonFiniteLossError` when a loss stops being finite.
    """
    info = init_distributed(cfg.device, timeout_minutes=cfg.train.dist_timeout_minutes)
    try:
        return _train(cfg, resume, info)
    finally:
        destroy_distributed()


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_dtype(cfg, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``train.amp`` (None = float32). AMP runs on CUDA only; elsewhere it is off."""
    if cfg.train.amp not in AMP_DTYPES:
        raise ConfigError(f"train.amp={cfg.train.amp!r}: choose one of {list(AMP_DTYPES)}")
    if device.type != "cuda":
        if cfg.train.amp != "off":
            print(f"train.amp={cfg.train.amp}: mixed precision runs on CUDA only; training in float32 on {device}")
        return None
    return AMP_DTYPES[cfg.train.amp]


def training_batches(dataset: FashionDataset, batch_sampler: AspectRatioBatchSampler, start_iter: int,
                     num_workers: int, pin_memory: bool) -> Iterator[tuple]:
    """Endless ``(images, targets)`` batches of this rank, starting at the batch of iteration ``start_iter``.

    Iteration i is batch ``i % B`` of epoch ``i // B``, B = batches per epoch (the same on every rank).
    """
    per_epoch = len(batch_sampler)
    epoch, skip = divmod(start_iter, per_epoch)
    while True:
        batch_sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        index_batches = list(batch_sampler)[skip:]  # indices only: skipping decodes nothing
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=index_batches, num_workers=num_workers, collate_fn=collate,
            pin_memory=pin_memory, generator=torch.Generator(),  # private RNG: the global one stays untouched
        )
        yield from loader
        epoch, skip = epoch + 1, 0


def enter_stage(model: nn.Module, stage: Stage, baseline: Dict[str, bool], optimizer: torch.optim.Optimizer,
                info: DistributedInfo, find_unused_parameters: bool) -> nn.Module:
    """Make ``stage``'s parameters trainable, print the table (rank 0), and return the model to call:
    a fresh ``DistributedDataParallel`` wrapper with several processes (DDP fixes the set of parameters
    it synchronises when it is built), the bare model otherwise."""
    apply_stage(model, stage.name, baseline)
    optimizer.zero_grad(set_to_none=True)  # frozen parameters keep grad None, so SGD leaves them alone
    if info.rank == 0:
        title = f"stage '{stage.name}', iterations {stage.start + 1}-{stage.end} at base_lr {stage.base_lr:g}"
        print(trainable_table(model, title=title), flush=True)
    if info.world_size == 1:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,  # buffers are frozen:
                                               **ddp_without_buffer_sync(),   # no broadcast per forward
                                               find_unused_parameters=find_unused_parameters)


def check_losses(losses: Dict[str, float], iteration: int, targets: List[dict]) -> None:
    """Raise :class:`NonFiniteLossError` when a rank-averaged loss is NaN or infinite.

    Every rank sees the same averages, so every rank stops together; the image ids of the whole global
    batch are gathered from all ranks for the message.
    """
    if all(math.isfinite(v) for v in losses.values()):
        return
    image_ids = [i for ids in all_gather_object([int(t["image_id"]) for t in targets]) for i in ids]
    values = ", ".join(f"{name}={value:.4g}" for name, value in losses.items())
    raise NonFiniteLossError(
        f"non-finite loss at iteration {iteration}: {values}; the batch held image ids {image_ids}. "
        "Training stopped (no checkpoint written). Lower solver.base_lr, lengthen solver.warmup_iters or set "
        "solver.clip_grad_norm, and check these images' annotations."
    )


def _train(cfg, resume: bool, info: DistributedInfo) -> Dict:
    main = info.rank == 0
    device, out = info.device, cfg.output_dir
    # ---- every check before anything is written: config, data, weights, the checkpoint to resume ---
    autocast_dtype = amp_dtype(cfg, device)
    images_per_rank = as_config_error(per_rank_batch_size, cfg.solver.ims_per_batch, info.world_size)
    schedule = as_config_error(lr_schedule_from_config, cfg.solver)
    threads = configure_threads(cfg.dataloader.num_workers, device)
    if main:
        print(f"{info.world_size} process(es) on {device}, {images_per_rank} image(s) per process per iteration "
              f"(global batch {cfg.solver.ims_per_batch}); output in {out}", flush=True)
        if threads is not None:
            print(threads, flush=True)

    train_set = load_data(cfg, "train")
    class_names = list(train_set.class_names)
    if len(class_names) != cfg.model.num_classes:
        raise ConfigError(f"model.num_classes={cfg.model.num_classes}, but the training set "
                          f"({cfg.data.train_annotations}) has {len(class_names)} classes: {class_names}")
    if cfg.model.num_attributes:  # the checkpoint's config then carries the attribute names and source ids
        cfg.model.attribute_names = as_config_error(training_attribute_names, cfg.model.num_attributes, train_set,
                                                    cfg.data.attributes)
        cfg.model.attribute_source_ids = [int(i) for i in train_set.attribute_source_ids]
    train_dataset = FashionDataset(train_set, augmentations=build_augmentations(cfg.data.augment),
                                   strict=cfg.data.strict, seed=cfg.seed,
                                   input_size=(cfg.input.min_size, cfg.input.max_size))  # large photos shrunk first
    batch_sampler = AspectRatioBatchSampler(
        train_dataset.aspect_ratios(), images_per_rank, seed=cfg.seed, rank=info.rank,
        world_size=info.world_size, group_by_aspect_ratio=cfg.dataloader.aspect_ratio_grouping,
        drop_last=cfg.dataloader.drop_last, repeat_factors=training_repeat_factors(cfg, train_dataset.records, main))
    validation = load_data(cfg, "val", class_names, verbose=main)

    last, state = find_resume_checkpoint(out, map_location=device, verbose=main) if resume else (None, None)
    if resume and last is None and main:
        print(f"--resume: no checkpoint in {out}, starting from iteration 0", flush=True)
    if state is not None:
        check_class_names(last, state.get("class_names"), class_names, cfg.data.train_annotations,
                          hint="resume with the classes it was trained for, or start a new run (another "
                               "output_dir) from it with model.weights=FILE to fine-tune onto these classes")
        if state["iteration"] >= cfg.solver.max_iter:
            return already_finished(cfg, last, state["iteration"], main)

    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg, load_weights=last is None).to(device)
    baseline = trainable_baseline(model)
    optimizer = optimizer_from_config(model, cfg.solver)
    scheduler = build_lr_scheduler(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    start_iter = 0
    seed_everything(cfg.seed + info.rank)  # each rank's own draws from here on
    if state is not None:
        restore_training_state(state, last, model=model, optimizer=optimizer, scheduler=scheduler,
                               grad_scaler=scaler, rank=info.rank)
        start_iter = state["iteration"]
        state = None  # release the loaded tensors
    # ---- checks passed: from here on the run writes into output_dir --------------------------------
    if main:
        os.makedirs(out, exist_ok=True)
        for path in remove_interrupted_writes(out):
            print(f"removed {path} (left by an interrupted checkpoint write)", flush=True)
        cfg.dump(os.path.join(out, "config.yaml"))
        if last is not None:
            print(f"resumed from {last} at iteration {start_iter}", flush=True)
    log = MetricsLog(out, resume_from=start_iter if last else None, tensorboard=cfg.train.tensorboard) if main else None

    # ---- the loop --------------------------------------------------------------------------------
    max_iter, log_period = cfg.solver.max_iter, cfg.train.log_period
    kill_after = int(os.environ.get(KILL_AFTER_ENV, "0"))
    batches = training_batches(train_dataset, batch_sampler, start_iter, cfg.dataloader.num_workers,
                               pin_memory=cfg.dataloader.pin_memory and device.type == "cuda")
    trainable = [p for p in model.parameters() if p.requires_grad]
    ddp_model, stage_index = model, None
    report, saved = None, None
    window_start, window_iters = time.perf_counter(), 0
    iteration_time = SmoothedIterationTime()
    for iteration in range(start_iter, max_iter):
        index, stage = stage_at(schedule.stages, iteration)
        if index != stage_index:
            ddp_model = None  # release the previous DDP wrapper (and its gradient hooks) first
            ddp_model = enter_stage(model, stage, baseline, optimizer, info, cfg.train.find_unused_parameters)
            trainable, stage_index = [p for p in model.parameters() if p.requires_grad], index

        images, targets = to_device(*next(batches), device)
        with autocast(device, autocast_dtype):
            loss_dict = ddp_model(images, targets)
        loss_dict = {name: value.float() for name, value in loss_dict.items()}
        averaged = reduce_mean(loss_dict)  # the same numbers on every rank (sorted by name)
        losses = {name: averaged[name] for name in loss_dict}  # back in the model's order
        done = iteration + 1  # updates completed once this one is applied
        check_losses(losses, done, targets)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(sum(loss_dict.values())).backward()
        if cfg.solver.clip_grad_norm > 0:
            scaler.unscale_(optimizer)
            clip_gradients(trainable, cfg.solver.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        window_iters += 1

        scheduled_line = done % log_period == 0 or done == max_iter
        first_line = done == start_iter + 1  # an early sign of life (stdout only: metrics keep their schedule)
        if main and (scheduled_line or first_line):
            seconds = (time.perf_counter() - window_start) / window_iters
            smoothed = iteration_time.update(seconds, window_iters, provisional=first_line and not scheduled_line)
            memory = peak_memory_bytes(device)
            print(progress_line(done, max_iter, losses, lr, cfg.solver.ims_per_batch / seconds,
                                smoothed * (max_iter - done), memory), flush=True)
            if scheduled_line:
                log.write({"type": "train", "iteration": done, "loss": sum(losses.values()), **losses, "lr": lr,
                           "images_per_second": cfg.solver.ims_per_batch / seconds,
                           "seconds_per_iteration": seconds, "peak_memory_bytes": memory})

        final = done == max_iter
        paused = False  # evaluating and saving are not training speed: restart the timing window after them
        if validation is not None and (final or (cfg.eval.period > 0 and done % cfg.eval.period == 0)):
            folder = os.path.join(out, "eval", "final" if final else f"iter_{done:07d}")
            report = run_evaluation(model, validation, cfg, info, folder, autocast_dtype, write_predictions=final)
            if main:
                log.write(report_metrics(report, done))
            paused = True
        if final or (cfg.solver.checkpoint_period > 0 and done % cfg.solver.checkpoint_period == 0):
            saved = save_training_state(out, done, model, optimizer, scheduler, scaler, cfg, class_names, main)
            if main:
                print(f"checkpoint saved: {saved}", flush=True)
                log.draw_loss_curves()
            paused = True
        if paused or scheduled_line or first_line:
            window_start, window_iters = time.perf_counter(), 0
        if done == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    if main:
        curves = log.draw_loss_curves()
        log.close()
        print(f"done: {max_iter} iterations; last checkpoint {saved or find_last_checkpoint(out)}"
              + (f"; loss curves {curves}" if curves else ""), flush=True)
    return {"iteration": max_iter, "checkpoint": saved or find_last_checkpoint(out), "eval": report}


def as_config_error(function, *args):
    """``function(*args)``, its ValueError re-raised as a :class:`ConfigError` (they name the config key)."""
    try:
        return function(*args)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from None


@contextlib.contextmanager
def data_errors_named(cfg, split: str):
    """Turn the plain errors of loading ``split`` into ones that name the config key and the file.

    The loaders name the file and field of what they refuse (``DataError``, passed on as is); what is left
    (an unset path, an unknown ``data.format``, a class table that does not fit) becomes ``ConfigError`` or
    ``DataError`` here, where the key and the file are known.
    """
    try:
        yield
    except DataError:
        raise
    except (ValueError, KeyError, OSError) as error:
        annotations = cfg.data[f"{split}_annotations"]
        if not annotations:
            raise ConfigError(f"data.{split}_annotations is not set: the config has no {split} data "
                              "(a data section with train_annotations and train_images)") from None
        if cfg.data.format not in FORMATS:
            raise ConfigError(f"data.format={cfg.data.format!r}: unknown dataset format; choose one of "
                              f"{sorted(FORMATS)}") from None
        text = str(error).strip("'\"")
        raise DataError(text if annotations in text else f"data.{split}_annotations ({annotations}): {text}") from None


def load_data(cfg, split: str, class_names: Optional[List[str]] = None, verbose: bool = True):
    """The ``train`` split's RecordSet, or the validation set (``split="val"``, checked against
    ``class_names``; None without ``data.val_annotations``); errors named by :func:`data_errors_named`."""
    with data_errors_named(cfg, split):
        if split == "train":
            return load_split(cfg, "train")
        return load_validation_set(cfg, class_names, verbose=verbose)


def check_evaluation_inputs(cfg) -> None:
    """``--eval-only``'s checks before anything is built: a validation split, and weights trained for its classes.

    A checkpoint naming other classes, or a state dict whose predictor has another class count, is refused
    (:class:`CheckpointError` with both): evaluating it would score relabelled or randomly re-initialized heads.
    """
    if not cfg.data.val_annotations:
        raise ConfigError("--eval-only needs a validation split: set data.val_annotations")
    weights = cfg.model.weights or find_last_checkpoint(cfg.output_dir)
    if not weights:
        raise FileNotFoundError(f"--eval-only: model.weights is empty and {cfg.output_dir} holds no checkpoint; "
                                "train first or set model.weights=FILE")
    names, count = classes_of_weights(read_checkpoint_file(weights))
    with data_errors_named(cfg, "val"):
        data_names = list(load_split(cfg, "val").class_names)
    if names is not None:
        check_class_names(weights, names, data_names, cfg.data.val_annotations)
    elif count is not None and count != len(data_names):
        raise CheckpointError(f"{weights}: its box predictor has {count} classes, but the data "
                              f"({cfg.data.val_annotations}) has {len(data_names)}: {data_names}; evaluating it "
                              "would score randomly re-initialized heads")


def already_finished(cfg, checkpoint: str, iteration: int, main: bool) -> Dict:
    """``--resume`` of a run whose checkpoint reached ``solver.max_iter``: say so and where its results are."""
    results = os.path.join(cfg.output_dir, "eval", "final")
    if main:
        where = (f"its final evaluation is in {results}" if os.path.isdir(results)
                 else "it has no final evaluation (run --eval-only to make one)")
        print(f"--resume: the run in {cfg.output_dir} is already finished: {checkpoint} is at iteration "
              f"{iteration} of solver.max_iter={cfg.solver.max_iter}; {where}. Nothing to do (raise solver.max_iter "
              "to train longer).", flush=True)
    return {"iteration": iteration, "checkpoint": checkpoint, "eval": None}


def save_training_state(out: str, iteration: int, model, optimizer, scheduler, scaler, cfg, class_names,
                        main: bool) -> Optional[str]:
    """Gather every rank's RNG states (a collective call), then write the checkpoint on rank 0."""
    rng_states = all_gather_object(get_rng_states())
    path = None
    if main:
        path = save_checkpoint(checkpoint_path(out, iteration), model=model, iteration=iteration,
                               optimizer=optimizer, scheduler=scheduler, grad_scaler=scaler, config=cfg,
                               class_names=class_names, rng_states=rng_states)
    synchronize()  # no rank runs ahead while rank 0 writes
    return path


def report_metrics(report: Optional[Dict], iteration: int) -> Dict:
    """The headline numbers of an evaluation report as one flat ``metrics.jsonl`` record."""
    record = {"type": "eval", "iteration": iteration}
    for iou_type in ("bbox", "segm"):
        if report and iou_type in report:
            for name in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
                record[f"{iou_type}/{name}"] = report[iou_type][name]
    return record

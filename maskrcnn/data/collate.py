"""From samples to batches: the collate function, the training DataLoader, and moving a batch to a device.

Detection images differ in size, so a batch is *not* stacked into one tensor here: it stays a list of images
and a list of targets. The model's transform stage resizes, normalizes and pads them (docs/conventions.md), so padding
happens once, on the device, with the model's own settings::

    loader = build_train_loader(cfg, load_split(cfg, "train"))   # or make_train_loader(dataset, ...)
    for epoch, images, targets in train_batches(loader):
        images, targets = to_device(images, targets, device)
        losses = model(images, targets)
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from .dataset import FashionDataset
from .samplers import AspectRatioBatchSampler, training_repeat_factors
from .transforms import build_augmentations


def collate(batch: Sequence[tuple]) -> Tuple[List[torch.Tensor], List[dict]]:
    """``[(image, target), ...]`` -> ``([image, ...], [target, ...])``, keeping order; nothing is stacked."""
    images = [sample[0] for sample in batch]
    targets = [sample[1] for sample in batch]
    return images, targets


def to_device(images: Sequence[torch.Tensor], targets: Sequence[dict], device) -> tuple:
    """Move every image and every tensor inside the targets to ``device`` (other values are kept as they are).

    ``non_blocking`` copies overlap with compute when the DataLoader pinned the memory.
    """
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                for key, value in target.items()} for target in targets]
    return images, targets


def make_train_loader(dataset, images_per_rank: int, num_workers: int = 2, seed: int = 0,
                      rank: Optional[int] = None, world_size: Optional[int] = None, aspect_ratio_grouping: bool = True, drop_last: bool = False,
                      pin_memory: bool = False, repeat_factors=None) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` (a ``FashionDataset``) batched by ``AspectRatioBatchSampler``.

    Args:
        images_per_rank: images per batch in this process (the global ``solver.ims_per_batch`` / world_size).
        num_workers: decoding processes (0 decodes in the main process, easiest to debug).
        seed: shuffling seed, the same on every rank (augmentation seeds come from the dataset's own seed).
        rank, world_size: this process's place in the distributed group (None: from ``torch.distributed``).
        aspect_ratio_grouping, drop_last, repeat_factors: see ``AspectRatioBatchSampler``.
        pin_memory: page-locked batches for faster host-to-GPU copies (useful with CUDA only).
    """
    sampler = AspectRatioBatchSampler(dataset.aspect_ratios(), images_per_rank, seed=seed, rank=rank,
                                      world_size=world_size, group_by_aspect_ratio=aspect_ratio_grouping,
                                      drop_last=drop_last, repeat_factors=repeat_factors)
    # persistent_workers stays False: workers are re-created each epoch with the dataset's new epoch number.
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=collate, pin_memory=pin_memory, persistent_workers=False)


def train_batches(loader: torch.utils.data.DataLoader, start_epoch: int = 0) -> Iterator[tuple]:
    """Endless stream of ``(epoch, images, targets)``: before each pass over the data, the batch sampler and the
    dataset are told the epoch, so shuffling and augmentation differ per epoch and repeat per seed."""
    epoch = start_epoch
    while True:
        loader.batch_sampler.set_epoch(epoch)
        loader.dataset.set_epoch(epoch)
        for images, targets in loader:
            yield epoch, images, targets
        epoch += 1


def build_train_loader(cfg, records, world_size: Optional[int] = None, rank: Optional[int] = None,
                       cuda: bool = False) -> torch.utils.data.DataLoader:
    """The training DataLoader wired from the config: ``data.augment``, ``data.strict``, ``dataloader.*``,
    ``solver.ims_per_batch`` (the global batch, split over ``world_size`` ranks) and ``seed``.

    ``records`` is a list of records or a ``RecordSet`` (``maskrcnn.data.load_split(cfg, "train")``); ``cuda``
    turns on ``dataloader.pin_memory``. ``loader.dataset`` is the ``FashionDataset`` (for its skip counts).
    """
    if world_size is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        world_size = torch.distributed.get_world_size() if distributed else 1
    batch = cfg.solver.ims_per_batch
    if batch % world_size:
        raise ValueError(f"solver.ims_per_batch={batch} is the global batch and must be divisible by the "
                         f"{world_size} processes")
    dataset = FashionDataset(records, augmentations=build_augmentations(cfg.data.augment),
                             strict=cfg.data.strict, seed=cfg.seed,
                             input_size=(cfg.input.min_size, cfg.input.max_size))  # large photos shrunk first
    return make_train_loader(dataset, images_per_rank=batch // world_size, num_workers=cfg.dataloader.num_workers,
                             seed=cfg.seed, rank=rank, world_size=world_size,
                             aspect_ratio_grouping=cfg.dataloader.aspect_ratio_grouping,
                             drop_last=cfg.dataloader.drop_last, pin_memory=cfg.dataloader.pin_memory and cuda,
                             repeat_factors=training_repeat_factors(cfg, dataset.records))

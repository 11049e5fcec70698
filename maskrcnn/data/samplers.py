"""Aspect-ratio grouping batch sampler, single-process or distributed.

Images of one batch are padded to a common size (DESIGN.md: pad to the largest, then to a multiple of 32).
Mixing a portrait and a landscape photo pads each to a square-ish canvas and wastes up to half the pixels, so
detectron2 and torchvision put landscape images (width >= height) and portrait images in separate batches.

One epoch, for ``rank`` r of ``world_size`` W, batch size B (images per rank)::

    order   = permutation of all N indices, seeded by (seed, epoch)      identical on every rank
    order   = padded by repeating its start (or truncated, drop_last)    to a multiple of W * B
    shard   = order[r::W]                                               disjoint across ranks
    batches = stream the shard into two buckets (landscape / portrait); a full bucket is a batch;
              at the end, the leftovers of both buckets, in order, are cut into batches of B

Because every shard has the same length, a multiple of B, every rank yields the same number of batches, each of
exactly B images: DDP's collective calls always pair up and no rank waits forever. Without padding a rank could
run out first. With ``drop_last=False`` the padding repeats up to W * B - 1 images, which then appear twice in
the epoch (possibly on two ranks); with ``drop_last=True`` the shards are strictly disjoint and up to
W * B - 1 images sit out the epoch (different ones each epoch).
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch


class AspectRatioBatchSampler(torch.utils.data.Sampler):
    """Yields lists of dataset indices, one list per batch, for one rank.

    Args:
        aspect_ratios: width / height of each image (``FashionDataset.aspect_ratios()``).
        batch_size: images per batch on this rank (the global batch divided by ``world_size``).
        seed: shuffling seed; must be the same on every rank.
        rank, world_size: this process's place in the distributed group; None (the default) asks
            ``torch.distributed`` when it is initialized, else 0 and 1.
        group_by_aspect_ratio: keep landscape and portrait images in separate batches.
        shuffle: shuffle every epoch (False: dataset order, still sharded and padded).
        drop_last: truncate instead of pad to a multiple of ``world_size * batch_size`` (see module docstring).
    """

    def __init__(self, aspect_ratios: Sequence[float], batch_size: int, seed: int = 0, rank: Optional[int] = None,
                 world_size: Optional[int] = None, group_by_aspect_ratio: bool = True, shuffle: bool = True,
                 drop_last: bool = False):
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        if world_size is None:
            world_size = torch.distributed.get_world_size() if distributed else 1
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        count = len(aspect_ratios)
        if count == 0:
            raise ValueError("aspect_ratios is empty: the dataset has no images")
        if drop_last and count < world_size * batch_size:
            raise ValueError(f"drop_last with {count} images cannot fill one batch of {batch_size} on each of "
                             f"{world_size} ranks; use drop_last=False or a smaller batch")
        self.groups = np.asarray([0 if ratio >= 1.0 else 1 for ratio in aspect_ratios])  # 0 landscape, 1 portrait
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.group_by_aspect_ratio, self.shuffle, self.drop_last = group_by_aspect_ratio, shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling of ``epoch``; call it with the same value on every rank."""
        self.epoch = int(epoch)

    def _padded_length(self) -> int:
        total, step = len(self.groups), self.world_size * self.batch_size
        return (total // step) * step if self.drop_last else -(-total // step) * step

    def __len__(self) -> int:
        """Batches per rank in one epoch (the same on every rank)."""
        return self._padded_length() // (self.world_size * self.batch_size)

    def _epoch_order(self) -> np.ndarray:
        """All indices in this epoch's order, padded or truncated to the padded length."""
        count = len(self.groups)
        if self.shuffle:
            generator = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, dtype=np.uint64)[0]))
            order = torch.randperm(count, generator=generator).numpy()
        else:
            order = np.arange(count)
        length = self._padded_length()
        return np.resize(order, length)  # np.resize repeats from the start when growing, truncates when not

    def __iter__(self) -> Iterator[List[int]]:
        shard = self._epoch_order()[self.rank::self.world_size]  # (length / world_size,) indices of this rank
        if not self.group_by_aspect_ratio:
            for start in range(0, len(shard), self.batch_size):
                yield shard[start:start + self.batch_size].tolist()
            return
        buckets = ([], [])
        for index in shard.tolist():
            bucket = buckets[self.groups[index]]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield list(bucket)
                bucket.clear()
        leftovers = buckets[0] + buckets[1]  # a multiple of batch_size, since the shard is
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start:start + self.batch_size]

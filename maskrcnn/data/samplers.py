"""Aspect-ratio grouping batch sampler, single-process or distributed.

Images of one batch are padded to a common size (docs/conventions.md: pad to the largest, then to a multiple of 32).
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

Class-balanced sampling (optional, ``repeat_factors``). Fashion data is heavily imbalanced (iMaterialist 2019:
59,452 sleeves vs 112 leg warmers), so rare classes get few gradient updates. LVIS's repeat-factor sampling
(Gupta et al., 2019, sec. 4) shows every image ``r_i`` times per epoch on average, where

    f(c)  = fraction of the training images that contain class c
    r(c)  = max(1, sqrt(t / f(c)))             t = threshold (``dataloader.repeat_factor_threshold``)
    r_i   = max over the classes c in image i of r(c)      (1 for an image without objects)

so a class in a fraction ``f < t`` of the images is seen about ``sqrt(t / f)`` times as often, and images of
classes with ``f >= t`` are unchanged. Each epoch, image i appears ``floor(r_i)`` times plus once more with
probability ``r_i - floor(r_i)`` (stochastic rounding, drawn from (seed, epoch): identical on every rank);
that list of copies replaces "all N indices" in the recipe above. Its length varies a little from epoch to
epoch, so it is then cut or extended (repeating its start, as the padding does) to ``round(sum_i r_i)``,
padded to a multiple of W * B as before: every epoch has the same number of batches, so iteration ``i`` is
still batch ``i mod B`` of epoch ``i div B`` and a resumed run continues exactly.
"""
from __future__ import annotations

from typing import Iterable, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch

ROUNDING_STREAM = 1  # mixed into the (seed, epoch) seed of the stochastic rounding, apart from the shuffle's


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
        repeat_factors: ``(N,)`` mean copies of each image per epoch, each >= 1 (:func:`repeat_factors`);
            None (the default) shows every image once.
    """

    def __init__(self, aspect_ratios: Sequence[float], batch_size: int, seed: int = 0, rank: Optional[int] = None,
                 world_size: Optional[int] = None, group_by_aspect_ratio: bool = True, shuffle: bool = True,
                 drop_last: bool = False, repeat_factors: Optional[Sequence[float]] = None):
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
        self.repeat_factors = None
        if repeat_factors is not None:
            self.repeat_factors = np.asarray(repeat_factors, dtype=np.float64)  # (N,)
            if self.repeat_factors.shape != (count,) or not np.all(self.repeat_factors >= 1.0):
                raise ValueError(f"repeat_factors: expected {count} values, each >= 1, got shape "
                                 f"{self.repeat_factors.shape} with minimum {self.repeat_factors.min():.3g}")
        # Images per epoch before padding: N, or the expected number of copies (their sum) with repeat factors.
        self.epoch_size = count if self.repeat_factors is None else int(round(self.repeat_factors.sum()))
        if drop_last and self.epoch_size < world_size * batch_size:
            raise ValueError(f"drop_last with {self.epoch_size} images cannot fill one batch of {batch_size} on "
                             f"each of {world_size} ranks; use drop_last=False or a smaller batch")
        self.groups = np.asarray([0 if ratio >= 1.0 else 1 for ratio in aspect_ratios])  # 0 landscape, 1 portrait
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.group_by_aspect_ratio, self.shuffle, self.drop_last = group_by_aspect_ratio, shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling of ``epoch``; call it with the same value on every rank."""
        self.epoch = int(epoch)

    def _padded_length(self) -> int:
        total, step = self.epoch_size, self.world_size * self.batch_size
        return (total // step) * step if self.drop_last else -(-total // step) * step

    def __len__(self) -> int:
        """Batches per rank in one epoch (the same on every rank)."""
        return self._padded_length() // (self.world_size * self.batch_size)

    def epoch_copies(self) -> np.ndarray:
        """``(N,)`` int64: how many times each image appears in this epoch (before padding).

        All ones without repeat factors; else ``floor(r_i)`` plus one with probability ``r_i - floor(r_i)``,
        drawn from a generator seeded by (seed, epoch), so every rank and every resumed run draws the same.
        """
        if self.repeat_factors is None:
            return np.ones(len(self.groups), dtype=np.int64)
        whole = np.floor(self.repeat_factors)
        uniform = np.random.default_rng([self.seed, self.epoch, ROUNDING_STREAM]).random(len(whole))  # (N,)
        return (whole + (uniform < self.repeat_factors - whole)).astype(np.int64)

    def _epoch_order(self) -> np.ndarray:
        """All indices in this epoch's order, padded or truncated to the padded length."""
        pool = np.repeat(np.arange(len(self.groups)), self.epoch_copies())  # (sum of copies,); (N,) without repeats
        if self.shuffle:
            generator = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, dtype=np.uint64)[0]))
            order = pool[torch.randperm(len(pool), generator=generator).numpy()]
        else:
            order = pool
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


# ------------------------------------------------------------------------------- repeat factors (LVIS)
def class_image_frequencies(records: Iterable[Mapping], num_classes: int) -> np.ndarray:
    """``(K,)`` float64: the fraction of the records (images) with at least one object of class k (1..K) at
    index k - 1. Images without objects count in the denominator."""
    images_with = np.zeros(num_classes, dtype=np.int64)
    count = 0
    for record in records:
        count += 1
        labels = {int(ann["category_id"]) for ann in record["annotations"]}
        images_with[[k - 1 for k in labels]] += 1
    return images_with / max(count, 1)


def class_repeat_factors(frequencies: np.ndarray, threshold: float) -> np.ndarray:
    """``(K,)`` ``r(c) = max(1, sqrt(t / f(c)))``; 1 for a class in no image (it picks no image anyway)."""
    factors = np.ones_like(frequencies, dtype=np.float64)
    present = frequencies > 0
    factors[present] = np.maximum(1.0, np.sqrt(threshold / frequencies[present]))
    return factors


def repeat_factors(records: Sequence[Mapping], num_classes: int, threshold: float) -> np.ndarray:
    """``(N,)`` float64 image repeat factors ``r_i = max over the image's classes of r(c)`` (1 if it has none).

    ``threshold`` t > 0; with t <= 0 every factor is 1 (the sampler is then usually built without them).
    """
    records = list(records)
    if threshold <= 0:
        return np.ones(len(records), dtype=np.float64)
    class_factors = class_repeat_factors(class_image_frequencies(records, num_classes), threshold)
    return np.array([max([class_factors[int(ann["category_id"]) - 1] for ann in record["annotations"]], default=1.0)
                     for record in records], dtype=np.float64)


def format_repeat_factors(records: Sequence[Mapping], class_names: Sequence[str], threshold: float) -> str:
    """The table the dataset checker prints: per class its image frequency f(c) and repeat factor r(c) at
    ``threshold``, then the epoch length the image factors imply."""
    records = list(records)
    frequencies = class_image_frequencies(records, len(class_names))
    factors = class_repeat_factors(frequencies, threshold) if threshold > 0 else np.ones(len(class_names))
    lines = [f"repeat factors at t = {threshold:g} (dataloader.repeat_factor_threshold; 0 = off):",
             "                      label  image freq  repeat  name"]
    for label, (name, frequency, factor) in enumerate(zip(class_names, frequencies, factors), start=1):
        lines.append(f"                      {label:5d}  {frequency:10.4f}  {factor:6.2f}  {name}")
    image_factors = repeat_factors(records, len(class_names), threshold)
    repeated, most = int((image_factors > 1).sum()), image_factors.max(initial=1.0)
    lines.append(f"an epoch shows {image_factors.sum():.0f} images for {len(records)} "
                 f"({repeated} images repeated, at most {most:.2f} times)")
    return "\n".join(lines)


def training_repeat_factors(cfg, records: Sequence[Mapping], verbose: bool = False) -> Optional[np.ndarray]:
    """The sampler's ``repeat_factors`` for ``dataloader.repeat_factor_threshold`` (None when it is 0 = off);
    with ``verbose`` one line says what they do to the epoch."""
    threshold = cfg.dataloader.repeat_factor_threshold
    if threshold <= 0:
        return None
    factors = repeat_factors(records, cfg.model.num_classes, threshold)
    if verbose:
        print(f"repeat-factor sampling (dataloader.repeat_factor_threshold={threshold:g}): an epoch shows "
              f"{factors.sum():.0f} images for {len(factors)}; {int((factors > 1).sum())} images repeated, "
              f"at most {factors.max(initial=1.0):.2f} times", flush=True)
    return factors

"""AspectRatioBatchSampler: grouping, determinism per (seed, epoch), and the distributed guarantees (disjoint
shards, the same number of full batches on every rank)."""

import numpy as np
import torch
import pytest

from maskrcnn.data.samplers import AspectRatioBatchSampler


def ratios(count, seed=0):
    """Landscape (1.5) and portrait (0.75) images in random proportions."""
    return np.where(np.random.default_rng(seed).random(count) < 0.4, 1.5, 0.75).tolist()


def epoch_batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_unshuffled_ungrouped_order_and_padding_by_hand():
    sampler = AspectRatioBatchSampler([1.0] * 10, 4, group_by_aspect_ratio=False, shuffle=False)
    assert list(sampler) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]  # padded from the start
    assert len(sampler) == 3
    truncated = AspectRatioBatchSampler([1.0] * 10, 4, group_by_aspect_ratio=False, shuffle=False,
                                        drop_last=True)
    assert list(truncated) == [[0, 1, 2, 3], [4, 5, 6, 7]] and len(truncated) == 2


def test_unshuffled_distributed_shards_by_hand():
    # 7 images, 2 ranks, batch 2: padded to 8 = [0..6, 0]; rank 0 takes 0, 2, 4, 6; rank 1 takes 1, 3, 5, 0
    kwargs = dict(batch_size=2, world_size=2, group_by_aspect_ratio=False, shuffle=False)
    assert list(AspectRatioBatchSampler([1.0] * 7, rank=0, **kwargs)) == [[0, 2], [4, 6]]
    assert list(AspectRatioBatchSampler([1.0] * 7, rank=1, **kwargs)) == [[1, 3], [5, 0]]


def test_grouping_by_hand():
    # landscape = 0, 2, 3, 5; portrait = 1, 4; batch 2, no shuffle: [0, 2] fills first, then [1, 4], [3, 5]
    sampler = AspectRatioBatchSampler([2.0, 0.5, 1.0, 1.3, 0.7, 1.1], 2, shuffle=False)
    assert list(sampler) == [[0, 2], [1, 4], [3, 5]]


def test_batches_are_homogeneous_except_at_most_one_leftover_batch():
    aspect = ratios(103)
    groups = [r >= 1 for r in aspect]
    for epoch in range(5):
        batches = epoch_batches(AspectRatioBatchSampler(aspect, 4, seed=1), epoch)
        mixed = [b for b in batches if len({groups[i] for i in b}) > 1]
        assert len(mixed) <= 1
        assert all(len(b) == 4 for b in batches)
        flat = sum(batches, [])
        assert sorted(set(flat)) == list(range(103))  # every image is seen in every epoch
        assert len(flat) == 104  # one repeated image pads the epoch to 26 batches of 4


@pytest.mark.parametrize("count,batch,world", [(103, 2, 4), (10, 3, 2), (5, 2, 3), (64, 4, 8), (1, 1, 2)])
def test_distributed_ranks_get_equal_batches_and_cover_the_dataset(count, batch, world):
    aspect = ratios(count, seed=count)
    for epoch in range(3):
        per_rank = [epoch_batches(AspectRatioBatchSampler(aspect, batch, seed=5, rank=r, world_size=world), epoch)
                    for r in range(world)]
        lengths = {len(b) for b in per_rank}
        assert lengths == {len(AspectRatioBatchSampler(aspect, batch, world_size=world))}
        assert all(len(b) == batch for batches in per_rank for b in batches)
        flat = [i for batches in per_rank for b in batches for i in b]
        padded = -(-count // (batch * world)) * batch * world
        assert len(flat) == padded and set(flat) == set(range(count))


@pytest.mark.parametrize("count,batch,world", [(103, 2, 4), (10, 3, 2), (64, 4, 8)])
def test_drop_last_shards_are_disjoint(count, batch, world):
    aspect = ratios(count)
    per_rank = [list(AspectRatioBatchSampler(aspect, batch, seed=2, rank=r, world_size=world, drop_last=True))
                for r in range(world)]
    flat = [i for batches in per_rank for b in batches for i in b]
    assert len(flat) == len(set(flat)) == (count // (batch * world)) * batch * world
    assert len({len(b) for b in per_rank}) == 1


def test_deterministic_per_seed_and_epoch():
    aspect = ratios(50)
    a = AspectRatioBatchSampler(aspect, 2, seed=9, rank=1, world_size=2)
    b = AspectRatioBatchSampler(aspect, 2, seed=9, rank=1, world_size=2)
    assert epoch_batches(a, 0) == epoch_batches(b, 0)
    assert epoch_batches(a, 3) == epoch_batches(b, 3)
    assert epoch_batches(a, 0) != epoch_batches(a, 1)
    assert epoch_batches(a, 0) != epoch_batches(AspectRatioBatchSampler(aspect, 2, seed=10, rank=1,
                                                                        world_size=2), 0)


def test_shuffling_reaches_every_position():
    aspect = [1.0] * 6
    sampler = AspectRatioBatchSampler(aspect, 6, seed=0)
    firsts = {epoch_batches(sampler, e)[0][0] for e in range(60)}
    assert firsts == set(range(6))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="batch_size"):
        AspectRatioBatchSampler([1.0], 0)
    with pytest.raises(ValueError, match="rank"):
        AspectRatioBatchSampler([1.0], 1, rank=2, world_size=2)
    with pytest.raises(ValueError, match="empty"):
        AspectRatioBatchSampler([], 1)
    with pytest.raises(ValueError, match="drop_last"):
        AspectRatioBatchSampler([1.0] * 3, 2, world_size=2, drop_last=True)


def _distributed_worker(rank, world_size, init_file, out_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    sampler = AspectRatioBatchSampler(ratios(23), 2, seed=7)  # rank and world size from torch.distributed
    sampler.set_epoch(1)
    batches = list(sampler)
    count = torch.tensor([len(batches)])
    counts = [torch.zeros(1, dtype=torch.int64) for _ in range(world_size)]
    dist.all_gather(counts, count)  # would hang if one rank stopped early
    for _ in batches:
        dist.all_reduce(torch.ones(1))  # one collective per step, as DDP does
    with open(f"{out_file}.{rank}", "w") as f:
        f.write(repr((sampler.rank, sampler.world_size, batches, [int(c) for c in counts])))
    dist.destroy_process_group()


@pytest.mark.slow
def test_real_gloo_group_ranks_get_disjoint_equal_work(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2)
    results = [eval((tmp_path / f"out.{r}").read_text()) for r in range(2)]
    assert [(r[0], r[1]) for r in results] == [(0, 2), (1, 2)]
    assert results[0][3] == results[1][3] == [6, 6]  # 23 images padded to 24 = 2 ranks x 6 batches x 2
    expected = [list(AspectRatioBatchSampler(ratios(23), 2, seed=7, rank=r, world_size=2)) for r in range(2)]
    single = [AspectRatioBatchSampler(ratios(23), 2, seed=7, rank=r, world_size=2) for r in range(2)]
    for s in single:
        s.set_epoch(1)
    assert [r[2] for r in results] == [list(s) for s in single]
    assert [r[2] for r in results] != expected  # epoch 1 differs from epoch 0
    flat = [i for r in results for b in r[2] for i in b]
    assert set(flat) == set(range(23)) and len(flat) == 24


# --- repeat-factor (class-balanced) sampling ------------------------------------------------------------------
from maskrcnn.data.samplers import (class_image_frequencies, class_repeat_factors, format_repeat_factors,  # noqa: E402
                                    repeat_factors, training_repeat_factors)


def record(*labels):
    return {"annotations": [{"category_id": label} for label in labels]}


def test_repeat_factors_by_hand():
    # 10 images: class 1 in 8 (one holds it three times), class 2 in 1 (beside class 1), 2 empty images,
    # class 3 in none: f = (0.8, 0.1, 0). With t = 0.4: r(1) = 1 (0.8 > t), r(2) = sqrt(0.4 / 0.1) = 2.
    records = [record(1, 1, 1), record(1, 2)] + [record(1)] * 6 + [record(), record()]
    assert class_image_frequencies(records, 3).tolist() == [0.8, 0.1, 0.0]  # images, not instances
    assert class_repeat_factors(class_image_frequencies(records, 3), 0.4).tolist() == [1.0, 2.0, 1.0]
    assert repeat_factors(records, 3, 0.4).tolist() == [1.0, 2.0] + [1.0] * 8  # empty images: 1
    # t = 0.9: r(1) = sqrt(0.9 / 0.8) = 1.06066, r(2) = 3; an image takes its rarest class's factor
    factors = repeat_factors(records, 3, 0.9)
    assert factors[1] == pytest.approx(3.0, rel=1e-15) and factors[0] == pytest.approx(1.125 ** 0.5, rel=1e-15)
    assert factors[8] == 1.0 and repeat_factors(records, 3, 0.0).tolist() == [1.0] * 10  # 0 = off
    table = format_repeat_factors(records, ["shirt", "leg warmer", "cape"], 0.4)
    assert "2      0.1000    2.00  leg warmer" in table and "3      0.0000    1.00  cape" in table
    assert "an epoch shows 11 images for 10 (1 images repeated, at most 2.00 times)" in table


def test_all_ones_repeat_factors_change_nothing():
    aspect = ratios(37)
    for world, rank in ((1, 0), (3, 2)):
        plain = AspectRatioBatchSampler(aspect, 2, seed=3, rank=rank, world_size=world)
        ones = AspectRatioBatchSampler(aspect, 2, seed=3, rank=rank, world_size=world, repeat_factors=[1.0] * 37)
        for epoch in range(3):
            assert epoch_batches(plain, epoch) == epoch_batches(ones, epoch)


def test_stochastic_rounding_is_unbiased_and_seeded():
    factors = [1.25] * 2000
    sampler = AspectRatioBatchSampler([1.0] * 2000, 4, seed=0, repeat_factors=factors)
    copies = sampler.epoch_copies()
    assert set(copies.tolist()) == {1, 2}
    # extra copies ~ Binomial(2000, 0.25): mean 500, standard deviation 19.4; allow 5 of them
    assert abs(int(copies.sum()) - 2500) <= 97
    again = AspectRatioBatchSampler([1.0] * 2000, 4, seed=0, repeat_factors=factors)
    assert np.array_equal(again.epoch_copies(), copies)
    sampler.set_epoch(1)
    assert not np.array_equal(sampler.epoch_copies(), copies)


def test_rare_images_are_seen_as_often_as_their_factor_and_every_epoch_has_the_same_length():
    count, rare = 40, [3, 17]
    factors = np.ones(count)
    factors[rare] = [2.5, 4.0]  # expected copies per epoch: 2.5 and 4
    sampler = AspectRatioBatchSampler(ratios(count), 3, seed=1, repeat_factors=factors)
    assert sampler.epoch_size == round(count - 2 + 6.5) == 44 and len(sampler) == 15  # 44 padded to 45
    seen = np.zeros(count)
    for epoch in range(200):
        batches = epoch_batches(sampler, epoch)
        assert len(batches) == 15 and all(len(b) == 3 for b in batches)
        for index in (i for b in batches for i in b):
            seen[index] += 1
    per_epoch = seen / 200
    # the cut/padding to 45 adds or removes a few random entries: a common image is seen about 45/44.5 times
    assert per_epoch[17] == pytest.approx(4.0 * 45 / 44.5, abs=0.15)
    assert per_epoch[3] == pytest.approx(2.5 * 45 / 44.5, abs=0.15)
    assert np.median(np.delete(per_epoch, rare)) == pytest.approx(45 / 44.5, abs=0.1)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_repeat_factors_keep_the_distributed_guarantees(world):
    count = 31
    factors = np.where(np.arange(count) % 5 == 0, 2.7, 1.0)
    for epoch in range(3):
        per_rank = [epoch_batches(AspectRatioBatchSampler(ratios(count), 2, seed=5, rank=r, world_size=world,
                                                          repeat_factors=factors), epoch) for r in range(world)]
        assert len({len(b) for b in per_rank}) == 1  # the same number of batches on every rank
        assert all(len(b) == 2 for batches in per_rank for b in batches)
        flat = [i for batches in per_rank for b in batches for i in b]
        single = AspectRatioBatchSampler(ratios(count), 2, seed=5, repeat_factors=factors, world_size=world)
        single.set_epoch(epoch)
        assert sorted(flat) == sorted(single._epoch_order().tolist())  # the shards split one epoch's list
        # resume: a new sampler with the same seed and epoch yields the same batches (iteration -> batch)
        again = AspectRatioBatchSampler(ratios(count), 2, seed=5, rank=world - 1, world_size=world,
                                        repeat_factors=factors)
        assert epoch_batches(again, epoch) == per_rank[-1]


def test_bad_repeat_factors_are_named():
    with pytest.raises(ValueError, match="repeat_factors"):
        AspectRatioBatchSampler([1.0] * 3, 1, repeat_factors=[1.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="repeat_factors"):
        AspectRatioBatchSampler([1.0] * 3, 1, repeat_factors=[1.0, 2.0])


def test_training_repeat_factors_follow_the_config(capsys):
    from maskrcnn.config import load_config

    records = [record(1, 1, 1), record(1, 2)] + [record(1)] * 6 + [record(), record()]
    off = load_config(overrides=["model.num_classes=3"])
    assert off.dataloader.repeat_factor_threshold == 0 and training_repeat_factors(off, records) is None
    on = load_config(overrides=["model.num_classes=3", "dataloader.repeat_factor_threshold=0.4"])
    assert training_repeat_factors(on, records, verbose=True).tolist() == [1.0, 2.0] + [1.0] * 8
    assert "an epoch shows 11 images for 10" in capsys.readouterr().out

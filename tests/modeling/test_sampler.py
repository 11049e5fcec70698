"""Tests for maskrcnn.modeling.sampler: counts, exclusions, determinism and torchvision's RNG order."""
import pytest
import torch

from maskrcnn.modeling.sampler import BalancedPositiveNegativeSampler


def make_labels(num_pos, num_neg, num_ignored, seed=0, positive_value=1):
    """A shuffled (P,) int64 label vector with the given counts of 1 / 0 / -1."""
    labels = torch.cat([
        torch.full((num_pos,), positive_value, dtype=torch.int64),
        torch.zeros(num_neg, dtype=torch.int64),
        torch.full((num_ignored,), -1, dtype=torch.int64),
    ])
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))]


def counts(mask):
    return int(mask.sum())


@pytest.mark.parametrize(
    "num_pos, num_neg, batch, fraction, expected_pos, expected_neg",
    [
        (10, 100, 64, 0.25, 10, 54),    # too few positives: negatives fill the batch
        (40, 100, 64, 0.25, 16, 48),    # positives capped at int(64 * 0.25)
        (200, 5000, 256, 0.5, 128, 128),  # the RPN setting
        (3, 4, 256, 0.5, 3, 4),          # fewer candidates than the batch: keep all
        (0, 30, 16, 0.5, 0, 16),         # no positives at all
        (30, 0, 16, 0.5, 8, 0),          # no negatives: the batch is not filled
        (7, 9, 10, 0.33, 3, 7),          # int(3.3) = 3
    ],
)
def test_counts(num_pos, num_neg, batch, fraction, expected_pos, expected_neg):
    labels = make_labels(num_pos, num_neg, num_ignored=25)
    sampler = BalancedPositiveNegativeSampler(batch, fraction)
    (positive,), (negative,) = sampler([labels], generator=torch.Generator().manual_seed(1))
    assert positive.dtype == torch.bool and positive.shape == labels.shape
    assert counts(positive) == expected_pos and counts(negative) == expected_neg
    # Only positives are sampled as positive, only negatives as negative; never an ignored one.
    assert (labels[positive] >= 1).all() and (labels[negative] == 0).all()
    assert not (positive & negative).any()
    assert not (positive | negative)[labels == -1].any()


def test_class_labels_count_as_positive():
    # The ROI heads pass class labels 1..K; every label >= 1 is a positive.
    labels = torch.tensor([0, 3, -1, 7, 1, 0, 0, 12])
    (positive,), (negative,) = BalancedPositiveNegativeSampler(100, 0.5)([labels])
    assert positive.tolist() == [False, True, False, True, True, False, False, True]
    assert negative.tolist() == [True, False, False, False, False, True, True, False]


def test_huge_batch_keeps_every_labelled_candidate():
    labels = make_labels(37, 1200, 90, seed=3)
    (positive,), (negative,) = BalancedPositiveNegativeSampler(10**7, 0.25)([labels])
    assert torch.equal(positive, labels >= 1)
    assert torch.equal(negative, labels == 0)


def test_seeded_generator_reproduces_and_seeds_differ():
    labels = [make_labels(50, 500, 30, seed=0), make_labels(20, 300, 0, seed=1)]
    sampler = BalancedPositiveNegativeSampler(128, 0.25)
    first = sampler(labels, generator=torch.Generator().manual_seed(42))
    again = sampler(labels, generator=torch.Generator().manual_seed(42))
    other = sampler(labels, generator=torch.Generator().manual_seed(43))
    for a, b in zip(first[0] + first[1], again[0] + again[1]):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(first[0] + first[1], other[0] + other[1]))


def test_draw_order_matches_torchvision_global_rng():
    """With the global RNG, the draws are: per image, randperm over the positives, then over the
    negatives (torchvision's order), so a seeded run picks exactly what torchvision picks."""
    labels = [make_labels(30, 200, 10, seed=5), make_labels(12, 90, 4, seed=6)]
    sampler = BalancedPositiveNegativeSampler(64, 0.25)
    torch.manual_seed(123)
    positive_masks, negative_masks = sampler(labels)

    torch.manual_seed(123)
    for labels_i, positive, negative in zip(labels, positive_masks, negative_masks):
        pos_idx = torch.nonzero(labels_i >= 1).flatten()
        neg_idx = torch.nonzero(labels_i == 0).flatten()
        num_pos = min(16, pos_idx.numel())
        num_neg = min(64 - num_pos, neg_idx.numel())
        expected_pos = pos_idx[torch.randperm(pos_idx.numel())[:num_pos]]
        expected_neg = neg_idx[torch.randperm(neg_idx.numel())[:num_neg]]
        assert sorted(torch.nonzero(positive).flatten().tolist()) == sorted(expected_pos.tolist())
        assert sorted(torch.nonzero(negative).flatten().tolist()) == sorted(expected_neg.tolist())


def test_choice_is_uniform():
    # 2 of 4 positives per draw: each should be picked half of the time (seeded, so exact counts).
    labels = torch.tensor([1, 1, 1, 1, 0, 0])
    sampler = BalancedPositiveNegativeSampler(4, 0.5)
    generator = torch.Generator().manual_seed(0)
    picked = torch.zeros(4)
    draws = 2000
    for _ in range(draws):
        (positive,), _ = sampler([labels], generator=generator)
        picked += positive[:4].float()
    assert picked.sum() == 2 * draws
    frequency = picked / draws
    assert ((frequency - 0.5).abs() < 0.05).all(), frequency  # binomial std is ~0.011


def test_empty_image():
    (positive,), (negative,) = BalancedPositiveNegativeSampler(256, 0.5)([torch.zeros(0, dtype=torch.int64)])
    assert positive.shape == (0,) and negative.shape == (0,)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size_per_image"):
        BalancedPositiveNegativeSampler(-1, 0.5)
    with pytest.raises(ValueError, match="positive_fraction"):
        BalancedPositiveNegativeSampler(256, 1.5)
    sampler = BalancedPositiveNegativeSampler(256, 0.5)
    with pytest.raises(ValueError, match="list"):
        sampler(torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"labels\[1\]"):
        sampler([torch.zeros(5, dtype=torch.int64), torch.zeros(5)])

"""Tests for maskrcnn.modeling.matcher: torchvision's reference numbers, the literal of docs/conventions.md, and a
slow loop-by-loop reference on random matrices with ties."""
from pathlib import Path

import pytest
import torch

from maskrcnn.modeling.matcher import Matcher

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def boxes_fixture():
    return torch.load(FIXTURES / "boxes.pt", weights_only=True)


def reference_match(quality, high, low, allow_low_quality):
    """Loop-by-loop float64 transcription of the matching rule (Faster R-CNN sec. 3.1.2)."""
    q = quality.double().tolist()
    num_gt, num_pred = len(q), len(q[0])
    best_gt = []
    for p in range(num_pred):
        column = [q[g][p] for g in range(num_gt)]
        best_gt.append(column.index(max(column)))  # first index among ties
    matches = []
    for p in range(num_pred):
        best = q[best_gt[p]][p]
        matches.append(best_gt[p] if best >= high else (-1 if best < low else -2))
    if allow_low_quality:
        for g in range(num_gt):
            best = max(q[g])
            for p in range(num_pred):
                if q[g][p] == best:
                    matches[p] = best_gt[p]
    return torch.tensor(matches, dtype=torch.int64)


def test_rpn_matching_equals_torchvision(boxes_fixture):
    quality = boxes_fixture["match_quality"]
    matches = Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality)
    assert matches.dtype == torch.int64
    assert torch.equal(matches, boxes_fixture["match_rpn"])
    # The fixture exercises all three outcomes.
    assert {-2, -1}.issubset(set(matches.tolist())) and (matches >= 0).any()
    # No GT reaches 0.7 here, so every match comes from the low-quality rule.
    assert (Matcher(0.7, 0.3, allow_low_quality_matches=False)(quality) >= 0).sum() == 0


def test_roi_matching_equals_torchvision(boxes_fixture):
    quality = boxes_fixture["match_quality"]
    matches = Matcher(0.5, 0.5, allow_low_quality_matches=False)(quality)
    assert torch.equal(matches, boxes_fixture["match_roi"])
    assert not (matches == Matcher.BETWEEN_THRESHOLDS).any()  # equal thresholds leave no gap


def test_facts_literal():
    # docs/conventions.md (reference facts): thresholds 0.3 / 0.7 with low-quality matches.
    quality = torch.tensor(
        [[0.15, 0.45, 0.2, 0.6], [0.3, 0.65, 0.05, 0.1], [0.05, 0.4, 0.25, 0.4]]
    )
    matches = Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality)
    # Matched GT [1, 1, 2, 0] with labels [ignore, fg, bg, fg]: column 0 lies between the thresholds,
    # column 2 is below the low one; columns 1 and 3 are promoted as the best match of their GT.
    assert matches.tolist() == [-2, 1, -1, 0]
    assert quality.argmax(dim=0).tolist() == [1, 1, 2, 0]
    labels = torch.where(matches >= 0, 1, torch.where(matches == -1, 0, -1))
    assert labels.tolist() == [-1, 1, 0, 1]
    # Without low-quality matches nothing reaches 0.7.
    assert Matcher(0.7, 0.3, False)(quality).tolist() == [-2, -2, -1, -2]


def test_thresholds_are_inclusive_at_high_and_low():
    # The thresholds are compared in the quality's dtype: float32 0.7 counts as reaching 0.7.
    for dtype in (torch.float32, torch.float64):
        quality = torch.tensor([[0.7, 0.3, 0.2999, 0.6999]], dtype=dtype)
        assert Matcher(0.7, 0.3)(quality).tolist() == [0, -2, -1, -2]


def test_low_quality_restores_every_tie_to_its_own_best_gt():
    # GT 0's best (0.4) is reached by predictions 0 and 2; prediction 2's own best GT is 1 (0.6).
    quality = torch.tensor([[0.4, 0.1, 0.4], [0.2, 0.9, 0.6]])
    assert Matcher(0.7, 0.3, True)(quality).tolist() == [0, 1, 1]
    assert Matcher(0.7, 0.3, False)(quality).tolist() == [-2, 1, -2]


@pytest.mark.parametrize("allow_low_quality", [True, False])
@pytest.mark.parametrize("thresholds", [(0.7, 0.3), (0.5, 0.5), (0.6, 0.4)])
def test_random_matrices_against_loop_reference(allow_low_quality, thresholds):
    generator = torch.Generator().manual_seed(7)
    for trial in range(20):
        num_gt = int(torch.randint(1, 6, (1,), generator=generator))
        num_pred = int(torch.randint(1, 40, (1,), generator=generator))
        # Quantized to tenths so that ties (and values equal to the thresholds) are frequent.
        # float64, so the thresholds compare the same way in the matcher and in Python floats.
        quality = torch.randint(0, 11, (num_gt, num_pred), generator=generator).double() / 10
        high, low = thresholds
        expected = reference_match(quality, high, low, allow_low_quality)
        got = Matcher(high, low, allow_low_quality)(quality)
        assert torch.equal(got, expected), (trial, quality)


def test_no_ground_truth_makes_everything_background():
    matches = Matcher(0.7, 0.3, True)(torch.zeros((0, 5)))
    assert matches.dtype == torch.int64 and matches.tolist() == [-1] * 5


def test_no_predictions_gives_empty_result():
    for num_gt in (0, 3):
        matches = Matcher(0.5, 0.5)(torch.zeros((num_gt, 0)))
        assert matches.shape == (0,) and matches.dtype == torch.int64


def test_bad_input_is_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="low_threshold"):
        Matcher(0.3, 0.7)
    with pytest.raises(ValueError, match="2-D"):
        Matcher(0.7, 0.3)(torch.zeros(4))
    with pytest.raises(ValueError, match="floating"):
        Matcher(0.7, 0.3)(torch.zeros((2, 3), dtype=torch.int64))

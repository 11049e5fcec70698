"""Matching predictions (anchors or proposals) to ground-truth boxes by IoU.

Faster R-CNN, sec. 3.1.2 ("Loss Function"): an anchor is positive when its IoU with some ground-truth
box is above a high threshold (0.7 for the RPN), negative when its IoU with every ground-truth box is
below a low threshold (0.3), and ignored in between. Because a small or oddly shaped object may have
no anchor above 0.7, the anchor(s) with the highest IoU for each ground-truth box are made positive
as well ("low-quality matches"). The ROI heads use the same rule with 0.5 / 0.5 and no low-quality
matches (Fast R-CNN, sec. 2.3).

Shape shorthand used below:
    G   number of ground-truth boxes in one image
    P   number of predictions (anchors or proposals) in the same image

Input is a *match-quality matrix* ``quality (G, P)`` (usually the IoU ``box_iou(gt, predictions)``);
output is ``matches (P,) int64``, for every prediction either

    0..G-1                 the index of the ground-truth box it is matched to,
    BELOW_LOW_THRESHOLD    (-1) its best quality is below ``low_threshold``: background,
    BETWEEN_THRESHOLDS     (-2) its best quality is in ``[low_threshold, high_threshold)``: ignored.

A quality equal to ``high_threshold`` is a match, one equal to ``low_threshold`` is "between" (not
background). These are torchvision's conventions, which this module reproduces exactly.

Edge cases (torchvision raises on both; we do not, so an image without objects can still train):
    * G == 0 (no ground truth): every prediction is ``BELOW_LOW_THRESHOLD`` (-1), i.e. background.
    * P == 0 (no predictions): the result is an empty ``(0,)`` int64 tensor.
"""
from __future__ import annotations

import torch
from torch import Tensor


class Matcher:
    """Assign each prediction to at most one ground-truth box, given their pairwise match quality.

    Args:
        high_threshold: qualities ``>= high_threshold`` are matches (RPN 0.7, ROI heads 0.5).
        low_threshold: qualities ``< low_threshold`` are background (RPN 0.3, ROI heads 0.5);
            ``[low_threshold, high_threshold)`` is ignored. Must satisfy ``low <= high``.
        allow_low_quality_matches: if True, for every ground-truth box, each prediction whose quality
            ties that box's best quality is restored to its own best-matching ground-truth index, even
            when it is below ``high_threshold`` (Faster R-CNN sec. 3.1.2, condition (i)).

    Call: ``matcher(quality)`` with ``quality (G, P)`` float -> ``matches (P,) int64`` (see module doc).
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError(
                f"Matcher: low_threshold ({low_threshold}) must not exceed high_threshold ({high_threshold})"
            )
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __repr__(self) -> str:
        return (
            f"Matcher(high_threshold={self.high_threshold}, low_threshold={self.low_threshold}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, quality: Tensor) -> Tensor:
        """Match predictions to ground truth.

        Args:
            quality: ``(G, P)`` floating tensor, ``quality[g, p]`` = how well prediction ``p`` fits
                ground-truth box ``g`` (usually IoU, in [0, 1]).

        Returns:
            ``(P,)`` int64 on ``quality``'s device: the matched ground-truth index, or
            ``BELOW_LOW_THRESHOLD`` (-1) / ``BETWEEN_THRESHOLDS`` (-2).
        """
        if not isinstance(quality, Tensor) or quality.dim() != 2:
            shape = tuple(quality.shape) if isinstance(quality, Tensor) else type(quality).__name__
            raise ValueError(f"Matcher: quality must be a 2-D (G, P) tensor, got {shape}")
        if not quality.is_floating_point():
            raise ValueError(f"Matcher: quality must be a floating tensor, got dtype {quality.dtype}")
        num_gt, num_predictions = quality.shape
        if num_gt == 0:
            # No ground truth: everything is background (empty (0,) when there are no predictions either).
            return torch.full((num_predictions,), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=quality.device)
        if num_predictions == 0:
            return torch.empty((0,), dtype=torch.int64, device=quality.device)

        # Best ground truth for every prediction; ties go to the lowest ground-truth index.
        best_quality, best_gt = quality.max(dim=0)  # (G, P) -> (P,), (P,)
        matches = best_gt.clone()

        matches[best_quality < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        between = (best_quality >= self.low_threshold) & (best_quality < self.high_threshold)
        matches[between] = self.BETWEEN_THRESHOLDS

        if self.allow_low_quality_matches:
            self._restore_low_quality_matches(matches, best_gt, quality)
        return matches

    @staticmethod
    def _restore_low_quality_matches(matches: Tensor, best_gt: Tensor, quality: Tensor) -> None:
        """In place: give back its best ground-truth index to every prediction that is some ground-truth
        box's best match.

        For each ground-truth box ``g`` the best quality ``max_p quality[g, p]`` is found, and *every*
        prediction ``p`` reaching it (ties included) gets ``matches[p] = best_gt[p]``. Note that this is
        the prediction's own best ground truth, which can differ from ``g`` when ``p`` is also the best
        match of another box with a higher quality (torchvision behaves the same way). A ground-truth
        box whose best quality is 0 (e.g. a zero-area box) ties with every prediction, so all of them
        get their own best index back, even those below the low threshold; torchvision has the same
        quirk, kept here for fidelity: drop degenerate ground-truth boxes before matching.
        """
        best_quality_per_gt = quality.max(dim=1).values  # (G, P) -> (G,)
        _, promoted = torch.nonzero(quality == best_quality_per_gt[:, None], as_tuple=True)  # (G, P) -> (M,)
        matches[promoted] = best_gt[promoted]

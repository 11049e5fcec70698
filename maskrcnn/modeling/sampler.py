"""Sampling a fixed-size, class-balanced mini-batch of anchors or proposals per image.

Most anchors (or proposals) of an image are background. Training on all of them would swamp the loss
with easy negatives, so each image contributes a fixed number of training examples, up to a given
fraction of them positive (Faster R-CNN sec. 3.1.3: 256 anchors per image, up to 1:1 positives;
Fast R-CNN sec. 2.3: 128 ROIs per image at 25 % positives; torchvision's Mask R-CNN uses 512 ROIs).

Shape shorthand:
    P_i   number of candidates (anchors or proposals) of image i

Label convention of the input, one ``(P_i,)`` integer tensor per image:
    >= 1  positive (1 for the RPN; the class label 1..K for the ROI heads)
       0  negative (background)
      -1  ignored (between the matcher's thresholds, or otherwise excluded); never sampled

The rule is torchvision's, step for step, so that with the same random state it picks the same
examples:

    num_pos = min(int(batch_size_per_image * positive_fraction), number of positives)
    num_neg = min(batch_size_per_image - num_pos, number of negatives)

``num_pos`` positives are drawn uniformly without replacement with ``torch.randperm`` (then, by a
second ``randperm``, ``num_neg`` negatives), image by image. When there are fewer positives than the
quota, negatives fill the rest of the batch. A batch size larger than the number of candidates keeps
every labelled candidate (the reference fixtures use ``10**7`` to make training deterministic).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor


class BalancedPositiveNegativeSampler:
    """Pick up to ``batch_size_per_image`` candidates per image, at most ``positive_fraction`` positive.

    Args:
        batch_size_per_image: examples drawn per image (RPN 256, ROI heads 512).
        positive_fraction: upper bound on the fraction of positives (RPN 0.5, ROI heads 0.25).

    Call: ``sampler(labels, generator=None)`` with ``labels``: a list of ``(P_i,)`` integer tensors
    (see the module docstring) -> ``(positive_masks, negative_masks)``, two lists of ``(P_i,)`` bool
    tensors on the labels' devices, ``True`` where a candidate was sampled as positive / negative.
    ``generator``: an optional ``torch.Generator`` on the labels' device for reproducible draws;
    by default the global RNG is used (as in torchvision).
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        if int(batch_size_per_image) != batch_size_per_image or batch_size_per_image < 0:
            raise ValueError(
                f"BalancedPositiveNegativeSampler: batch_size_per_image must be a non-negative integer, "
                f"got {batch_size_per_image!r}"
            )
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(
                f"BalancedPositiveNegativeSampler: positive_fraction must be in [0, 1], got {positive_fraction!r}"
            )
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def __repr__(self) -> str:
        return (
            f"BalancedPositiveNegativeSampler(batch_size_per_image={self.batch_size_per_image}, "
            f"positive_fraction={self.positive_fraction})"
        )

    def __call__(
        self, labels: Sequence[Tensor], generator: Optional[torch.Generator] = None
    ) -> Tuple[List[Tensor], List[Tensor]]:
        if isinstance(labels, Tensor):
            raise ValueError(
                "BalancedPositiveNegativeSampler: labels must be a list with one (P_i,) tensor per image, "
                f"got a single tensor of shape {tuple(labels.shape)}"
            )
        positive_masks, negative_masks = [], []
        for image_index, labels_per_image in enumerate(labels):
            if labels_per_image.dim() != 1 or labels_per_image.is_floating_point():
                raise ValueError(
                    f"BalancedPositiveNegativeSampler: labels[{image_index}] must be a 1-D integer tensor, "
                    f"got shape {tuple(labels_per_image.shape)} dtype {labels_per_image.dtype}"
                )
            positive_mask, negative_mask = self.sample_one_image(labels_per_image, generator)
            positive_masks.append(positive_mask)
            negative_masks.append(negative_mask)
        return positive_masks, negative_masks

    def sample_one_image(
        self, labels: Tensor, generator: Optional[torch.Generator] = None
    ) -> Tuple[Tensor, Tensor]:
        """Sample one image: ``labels (P,)`` integer -> ``(positive_mask (P,) bool, negative_mask (P,) bool)``."""
        positive = torch.nonzero(labels >= 1, as_tuple=True)[0]  # (P,) -> (#pos,) indices
        negative = torch.nonzero(labels == 0, as_tuple=True)[0]  # (P,) -> (#neg,) indices

        num_pos = min(int(self.batch_size_per_image * self.positive_fraction), positive.numel())
        num_neg = min(self.batch_size_per_image - num_pos, negative.numel())

        # A random permutation's first k entries: k draws without replacement.
        chosen_pos = positive[torch.randperm(positive.numel(), generator=generator, device=labels.device)[:num_pos]]
        chosen_neg = negative[torch.randperm(negative.numel(), generator=generator, device=labels.device)[:num_neg]]

        positive_mask = torch.zeros_like(labels, dtype=torch.bool)
        negative_mask = torch.zeros_like(labels, dtype=torch.bool)
        positive_mask[chosen_pos] = True
        negative_mask[chosen_neg] = True
        return positive_mask, negative_mask

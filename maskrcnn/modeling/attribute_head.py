"""The attribute branch: per-ROI fine-grained attributes ("sleeveless", "floral", "midi"), multi-label.

Not part of Mask R-CNN: an extension in the same mould as the mask branch (docs/extending.md walks
through it). It is built only when ``model.num_attributes > 0``; with 0 the model, its state dict and its
outputs are exactly those of the plain Mask R-CNN.

Shape shorthand: ``R`` ROIs, ``D`` the pyramid's channels (256), ``S`` the box pooler's side (7), ``H`` the
attribute head's hidden width (256), ``A`` attributes, ``P`` positive ROIs.

    pooled ROI features (R, D, S, S)  -- the box pooler's output, the box head's input
      -> flatten (R, D * S * S) -> fc + ReLU (R, H) -> attribute_logits (R, A)   one logit per attribute

Why the pooled features and not the box head's 1024-d output: the box head is trained to name the class,
and the class does not depend on colour or pattern, so its output learns to ignore exactly what attributes
describe. Measured on the synthetic set (configs/synthetic_attributes.yaml, 1000 iterations, 7 attributes,
docs/extending.md): reading the box head's output gave attribute mAP 0.270 (chance 0.184; the colour tone,
trivially visible, only 0.16-0.30 AP), reading the pooled features 0.545 (tone 0.94-0.95 AP), with the
same detection quality (mask AP 0.525 vs 0.533). The pooled map costs nothing extra in training (the
sampled ROIs are pooled for the box loss anyway), and the head's own MLP keeps the box head untouched.

Training (:func:`attribute_loss`): on the positive ROIs whose matched GT object has attribute annotations
(``attributes_known``), binary cross-entropy of each attribute logit against the GT object's 0/1 label,
averaged over those ROIs and the ``A`` attributes; ``pos_weight`` > 1 up-weights the positive term,
which counters rare attributes. ROIs of objects without annotations (ModaNet, DeepFashion2, most parts
and accessories in Fashionpedia) are masked out; with none in the batch the loss is an attached 0
so that DDP ranks still agree on the graph.

Inference: the detected boxes are pooled once more and each detection gets ``attribute_scores (K, A)``,
the sigmoid of its logits (float32).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
import torch.nn.functional as F


class AttributeHead(nn.Module):
    """``(R, D, S, S)`` pooled ROI features -> ``(R, A)`` attribute logits through one hidden layer of width
    ``H``; ``in_dim`` = ``D * S * S``."""

    def __init__(self, in_dim: int, hidden_dim: int, num_attributes: int):
        super().__init__()
        if num_attributes < 1:
            raise ValueError(f"num_attributes={num_attributes}: the attribute head needs at least one attribute")
        self.fc = nn.Linear(in_dim, hidden_dim)
        self.logits = nn.Linear(hidden_dim, num_attributes)
        # small initial logits: every attribute starts near probability 0.5, no attribute favoured
        nn.init.normal_(self.logits.weight, std=0.01)
        nn.init.zeros_(self.logits.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.logits(F.relu(self.fc(pooled.flatten(1))))  # (R, D, S, S) -> (R, D*S*S) -> (R, H) -> (R, A)


def attribute_loss(logits: Tensor, targets: Tensor, known: Tensor, pos_weight: float = 1.0) -> Tensor:
    """Mean binary cross-entropy over the ROIs whose object has attribute annotations.

    Args:
        logits: ``(P, A)`` attribute logits of positive ROIs.
        targets: ``(P, A)`` the matched GT object's 0/1 attributes (float).
        known: ``(P,)`` bool, whether that GT object carries attribute annotations.
        pos_weight: weight of the positive term ``-y log(sigmoid(x))`` (1 = plain BCE).
    Returns:
        a float32 scalar; ``0`` (attached to the graph) when no ROI is known. The unknown rows are
        masked out rather than selected, so the loss reads nothing back to the host (no ``nonzero``, no
        branch on a count): a GPU step does not stall on it.
    """
    if logits.shape != targets.shape or known.shape != logits.shape[:1]:
        raise ValueError(f"attribute_loss: logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and "
                         f"known {tuple(known.shape)} must be (P, A), (P, A) and (P,)")
    weight = torch.full((logits.shape[1],), float(pos_weight), dtype=torch.float32, device=logits.device)
    per_term = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=weight,
                                                  reduction="none")  # (P, A)
    mask = known.to(per_term.dtype)[:, None]  # (P, 1): 1 for known rows
    count = (mask.sum() * logits.shape[1]).clamp(min=1.0)  # known rows x A terms
    return (per_term * mask).sum() / count

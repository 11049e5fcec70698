"""Multi-scale ROIAlign: crop a fixed-size feature grid for every box from the FPN level that fits it.

The second stage needs, for each proposal, a ``C x S x S`` feature tensor (7 x 7 for the box head,
14 x 14 for the mask head). ROIAlign (Mask R-CNN sec. 3, "RoIAlign") samples it with bilinear
interpolation, without quantizing the box. With a feature pyramid, a box is pooled from one level,
chosen by its size (FPN paper, eq. 1):

    level = floor(canonical_level + log2(sqrt(w * h) / canonical_scale))

so a 224 x 224 box (the ImageNet pre-training size) is pooled from P4, a box half as large from P3,
and so on, clamped to the available levels (P2-P5 here: P6 is used by the RPN only).

Shape shorthand:
    N        images in the batch
    C        feature channels (256 with FPN)
    L        pooled levels (4: P2..P5, finest first)
    K_i      boxes of image i;  K = sum of K_i
    S        output size (S x S, or S_h x S_w)

Conventions (torchvision's ``MultiScaleRoIAlign``, reproduced exactly):
    * Boxes are ``(x1, y1, x2, y2)`` in input-image pixels (the resized image, before padding).
    * The scale of each level (feature pixels per image pixel) is inferred, not configured:
      ``scale = 2 ** round(log2(feature_height / max_image_height))``, with the largest image height
      in the batch. The finest and coarsest scales fix the level range ``[k_min, k_max]`` (2 and 5).
    * The level formula adds ``eps = 1e-6`` before the floor, so a box exactly on a level boundary
      (e.g. 112 x 112 -> log2(0.5) = -1) is not pushed down by floating-point error. It is computed
      in float32 (float64 for float64 boxes), as torchvision computes it for the model's float32 boxes,
      so boundary cases agree; half-precision boxes are widened first (in float16 the area of a box of
      256 x 256 px or more overflows to inf, which would send it to P5).
    * Output rows follow the input boxes: image 0's boxes in order, then image 1's, ... Each row is
      computed by ``maskrcnn.ops.roi_align`` on its level with that level's ``spatial_scale``.
    * ``aligned=False`` is torchvision's default (needed for its checkpoints); ``aligned=True`` shifts
      the box by half a pixel so that pixel centres, not corners, sit at integer coordinates, which is
      the geometrically correct choice (see ``maskrcnn.ops.roi_align``).
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from maskrcnn.ops import roi_align
from maskrcnn.ops.boxes import at_least_float32

LEVEL_EPS = 1e-6  # torchvision's LevelMapper eps


def assign_fpn_levels(
    boxes: Tensor,
    min_level: int = 2,
    max_level: int = 5,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = LEVEL_EPS,
) -> Tensor:
    """The FPN level each box is pooled from (FPN paper, eq. 1).

    Args:
        boxes: ``(K, 4)`` floating ``(x1, y1, x2, y2)`` in input-image pixels.
        min_level, max_level: the available levels (P2..P5 -> 2, 5); the result is clamped to them.
        canonical_scale, canonical_level: a box of size ``canonical_scale`` (sqrt of its area) goes to
            ``canonical_level`` (224 -> P4: the ImageNet pre-training size maps to the coarsest
            ResNet stage of the original single-scale Faster R-CNN).
        eps: added before the floor (torchvision uses 1e-6).

    Returns:
        ``(K,)`` int64 absolute levels in ``[min_level, max_level]``. A zero-area box has
        ``log2(0) = -inf`` and goes to ``min_level``.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
        raise ValueError(
            f"assign_fpn_levels: boxes must be a floating (K, 4) tensor, got {tuple(boxes.shape)} {boxes.dtype}"
        )
    if min_level > max_level:
        raise ValueError(f"assign_fpn_levels: min_level ({min_level}) must not exceed max_level ({max_level})")
    boxes = at_least_float32(boxes)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (K, 4) -> (K,)
    sizes = areas.sqrt()
    eps_t = torch.tensor(eps, dtype=boxes.dtype)  # a 0-dim CPU tensor: a scalar operand, no device copy
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_scale) + eps_t)
    return levels.clamp(min=min_level, max=max_level).to(torch.int64)


def infer_level_scale(feature_height: int, image_height: int) -> float:
    """Feature pixels per image pixel, snapped to a power of two: ``2 ** round(log2(h_feat / h_img))``.

    The feature map of a padded batch is a little larger than ``image_height / stride``; the rounding
    in log space recovers the stride's exact inverse (e.g. 1/4 for P2).
    """
    return 2.0 ** round(math.log2(feature_height / image_height))


class MultiScaleRoIAlign(nn.Module):
    """ROIAlign over FPN levels, each box from the level chosen by its size.

    Args:
        output_size: ``S`` or ``(S_h, S_w)`` (7 for boxes, 14 for masks).
        sampling_ratio: bilinear samples per bin along each axis (2 in torchvision's Mask R-CNN);
            ``<= 0`` means adaptive, ``ceil(roi_size / output_size)``.
        canonical_scale, canonical_level: the level formula's constants (224, 4); see
            :func:`assign_fpn_levels`.
        aligned: ROIAlign's half-pixel shift (False = torchvision's default; see the module docstring).

    Call: ``pooler(features, boxes, image_sizes)``
        features: list of ``L`` tensors ``(N, C, h_l, w_l)``, finest level first (P2..P5).
        boxes: list of ``N`` tensors ``(K_i, 4)``, ``(x1, y1, x2, y2)`` in input-image pixels.
        image_sizes: list of ``N`` pairs ``(H, W)``, each image's size before padding.
        -> ``(K, C, S_h, S_w)`` in the features' dtype, rows in the order of the boxes (image by image).

    dtypes: the level of a box is computed in float32 (float64 for float64 boxes); ROIAlign runs in the
    features' dtype, except that float16 / bfloat16 features are pooled in float32 and the result cast
    back (the boxes are never rounded to half precision), as torchvision's autocast rule for roi_align.
    """

    def __init__(
        self,
        output_size: Union[int, Tuple[int, int]],
        sampling_ratio: int,
        canonical_scale: float = 224.0,
        canonical_level: int = 4,
        aligned: bool = False,
    ):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        output_size = tuple(int(s) for s in output_size)
        if len(output_size) != 2 or min(output_size) <= 0:
            raise ValueError(f"MultiScaleRoIAlign: output_size must be a positive int or pair, got {output_size!r}")
        if canonical_scale <= 0:
            raise ValueError(f"MultiScaleRoIAlign: canonical_scale must be positive, got {canonical_scale!r}")
        self.output_size = output_size
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_scale = float(canonical_scale)
        self.canonical_level = int(canonical_level)
        self.aligned = bool(aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio}, "
            f"canonical_scale={self.canonical_scale}, canonical_level={self.canonical_level}, aligned={self.aligned}"
        )

    def level_scales(self, features: Sequence[Tensor], image_sizes: Sequence[Sequence[int]]) -> List[float]:
        """The ``spatial_scale`` of every level, from the largest image height in the batch.

        Raises if the levels are not consecutive halvings (e.g. a missing level, or features passed
        coarsest first), since the level formula assumes level ``k`` has scale ``2 ** -k``.
        """
        max_height = max(int(size[0]) for size in image_sizes)
        scales = [infer_level_scale(feature.shape[-2], max_height) for feature in features]
        for level in range(1, len(scales)):
            if scales[level] * 2 != scales[level - 1]:
                raise ValueError(
                    "MultiScaleRoIAlign: features must be consecutive pyramid levels, finest first "
                    f"(each half the size of the previous); inferred scales {scales} from feature heights "
                    f"{[f.shape[-2] for f in features]} and image height {max_height}"
                )
        return scales

    def forward(
        self, features: Sequence[Tensor], boxes: Sequence[Tensor], image_sizes: Sequence[Sequence[int]]
    ) -> Tensor:
        self._check_inputs(features, boxes, image_sizes)
        scales = self.level_scales(features, image_sizes)
        min_level = round(-math.log2(scales[0]))
        max_level = round(-math.log2(scales[-1]))

        first = features[0]
        num_channels = first.shape[1]
        # Half / bfloat16 features are pooled in float32 (as torchvision's autocast rule for roi_align
        # does), so box coordinates keep their precision; the result is cast back to the features' dtype.
        compute_dtype = at_least_float32(first).dtype
        all_boxes = torch.cat([b.to(first.device) for b in boxes], dim=0)  # K_0 + K_1 + ... -> (K, 4)
        if not all_boxes.is_floating_point():
            all_boxes = all_boxes.to(compute_dtype)
        all_boxes = at_least_float32(all_boxes)
        # ROIs in roi_align's format: (K, 5) = [image index, x1, y1, x2, y2], image 0's boxes first.
        image_index = torch.cat([
            torch.full((b.shape[0], 1), i, dtype=compute_dtype, device=first.device) for i, b in enumerate(boxes)
        ])  # (K, 1)
        rois = torch.cat([image_index, all_boxes.to(compute_dtype)], dim=1)  # (K, 1) + (K, 4) -> (K, 5)

        result = first.new_zeros((rois.shape[0], num_channels) + self.output_size)  # (K, C, S_h, S_w)
        if rois.shape[0] == 0:
            return result
        # Levels from the boxes in float32 (the model's boxes are float32), as torchvision computes them.
        levels = assign_fpn_levels(
            all_boxes, min_level, max_level, self.canonical_scale, self.canonical_level
        )  # (K,) absolute levels
        for offset, (feature, scale) in enumerate(zip(features, scales)):
            rows = torch.nonzero(levels == min_level + offset, as_tuple=True)[0]  # (K_l,)
            if rows.numel() == 0:
                continue
            pooled = roi_align(
                feature.to(compute_dtype), rois[rows], self.output_size,
                spatial_scale=scale, sampling_ratio=self.sampling_ratio, aligned=self.aligned,
                check_indices=False,  # rows [i, box] of image i < N by construction: no per-call sync
            )  # (K_l, C, S_h, S_w)
            result[rows] = pooled.to(result.dtype)
        return result

    @staticmethod
    def _check_inputs(features, boxes, image_sizes) -> None:
        if len(features) == 0:
            raise ValueError("MultiScaleRoIAlign: features is empty (expected one (N, C, h, w) tensor per level)")
        num_images, num_channels = features[0].shape[:2] if features[0].dim() == 4 else (None, None)
        for level, feature in enumerate(features):
            if feature.dim() != 4 or feature.shape[:2] != features[0].shape[:2]:
                raise ValueError(
                    f"MultiScaleRoIAlign: features[{level}] must be (N, C, h, w) with the same N and C as "
                    f"features[0] {tuple(features[0].shape)}, got {tuple(feature.shape)}"
                )
        if num_images == 0:
            raise ValueError("MultiScaleRoIAlign: zero images (features[0] has batch size 0, image_sizes is empty); "
                             "pass at least one image")
        if len(boxes) != num_images or len(image_sizes) != num_images:
            raise ValueError(
                f"MultiScaleRoIAlign: got {num_images} images in features but {len(boxes)} entries in boxes "
                f"and {len(image_sizes)} in image_sizes"
            )
        for index, image_boxes in enumerate(boxes):
            if image_boxes.dim() != 2 or image_boxes.shape[1] != 4:
                raise ValueError(f"MultiScaleRoIAlign: boxes[{index}] must be (K_i, 4), got {tuple(image_boxes.shape)}")

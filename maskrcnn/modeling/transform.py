"""The image transform: the model's first and last stage.

Shape shorthand: ``N`` images; image ``i`` arrives as ``(3, h_i, w_i)``; after resizing it is
``(3, H_i, W_i)``; the batch is padded to ``(N, 3, H, W)`` with ``H = ceil(max_i H_i / 32) * 32`` (same for W).

Forward (before the backbone):

1. **normalize** each channel: ``(x - mean) / std`` with ImageNet statistics (images are RGB in [0, 1]);
2. **resize** so the short side becomes ``min_size`` unless that pushes the long side past ``max_size``:
   ``scale = min(min_size / short, max_size / long)``, ``H_i = floor(h_i * scale)`` (bilinear,
   ``align_corners=False``); target boxes are scaled by ``H_i / h_i`` and ``W_i / w_i``, target masks are
   resized with nearest-neighbour interpolation;
3. **batch**: pad every image with zeros at the bottom and right to the common ``(H, W)``, a multiple of
   ``size_divisible`` so that every FPN stride (up to 32) divides it.

:meth:`ImageTransform.postprocess` (after the heads) maps detections back: boxes are scaled by
``h_i / H_i`` and ``w_i / W_i`` and the 28x28 mask probabilities are pasted into a full ``(h_i, w_i)``
canvas (:mod:`maskrcnn.modeling.paste_masks`).

Every number here is computed as torchvision's ``GeneralizedRCNNTransform`` computes it in eager mode (the
scale divided in Python floats, i.e. float64, ``floor(side * scale)`` as ``F.interpolate`` takes it, the same
interpolation calls), so resized sizes agree to the pixel for every image shape. (A float32 scale, as in
torchvision's scripted path, makes e.g. a 600x1000 photo 799x1332 instead of 799x1333 at 800/1333.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from maskrcnn.modeling.paste_masks import paste_masks_in_image

Size = Tuple[int, int]  # (height, width)


@dataclass
class ImageBatch:
    """A padded batch: ``tensors (N, 3, H, W)`` and each image's size ``(H_i, W_i)`` before padding."""

    tensors: Tensor
    image_sizes: List[Size]


def resize_boxes(boxes: Tensor, old_size: Size, new_size: Size) -> Tensor:
    """Scale ``(K, 4)`` xyxy boxes from an image of ``old_size (h, w)`` to one of ``new_size``."""
    ratio_h = torch.tensor(new_size[0], dtype=torch.float32) / torch.tensor(old_size[0], dtype=torch.float32)
    ratio_w = torch.tensor(new_size[1], dtype=torch.float32) / torch.tensor(old_size[1], dtype=torch.float32)
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


def resized_size(height: int, width: int, scale: float) -> Size:
    """``(floor(height * scale), floor(width * scale))`` in Python floats: the size ``F.interpolate`` gives an
    image resized by ``scale_factor=scale`` (its output size is ``floor(float(side) * scale)``)."""
    return math.floor(height * scale), math.floor(width * scale)


class ImageTransform(nn.Module):
    """Normalize, resize and batch images (and their targets); map detections back afterwards.

    Args:
        min_size: target length of the short side after resizing.
        max_size: upper bound on the long side after resizing.
        pixel_mean, pixel_std: per-channel RGB statistics, in [0, 1] units.
        size_divisible: the padded batch's height and width are multiples of this.
    """

    def __init__(self, min_size: int, max_size: int, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 size_divisible: int = 32):
        super().__init__()
        if min_size <= 0 or max_size <= 0:
            raise ValueError(f"min_size={min_size}, max_size={max_size}: both must be positive")
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(f"pixel_mean={pixel_mean}, pixel_std={pixel_std}: expected 3 RGB values each")
        self.min_size = min_size
        self.max_size = max_size
        self.size_divisible = size_divisible
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32), persistent=False)

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None
                ) -> Tuple[ImageBatch, Optional[List[Dict[str, Tensor]]]]:
        """``[(3, h_i, w_i)] -> ImageBatch((N, 3, H, W), [(H_i, W_i)])``; targets resized to match.

        Targets are copied, never modified in place: ``boxes (K, 4)`` float, ``labels (K,)`` int64 and
        optionally ``masks (K, h_i, w_i)`` uint8.
        """
        check_inputs(images, targets)
        resized_images, resized_targets = [], []
        for index, image in enumerate(images):
            target = None if targets is None else dict(targets[index])
            image = self.normalize(image)
            image, target = self.resize(image, target)
            resized_images.append(image)
            resized_targets.append(target)
        image_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in resized_images]
        batch = ImageBatch(self.batch_images(resized_images), image_sizes)
        return batch, (None if targets is None else resized_targets)

    def normalize(self, image: Tensor) -> Tensor:
        """``(3, h, w)`` in [0, 1] -> zero-mean, unit-std channels."""
        mean = self.pixel_mean.to(image)[:, None, None]  # (3,) -> (3, 1, 1)
        std = self.pixel_std.to(image)[:, None, None]    # (3,) -> (3, 1, 1)
        return (image - mean) / std

    def resize_scale(self, height: int, width: int) -> float:
        """``min(min_size / short side, max_size / long side)`` in Python floats (float64), as torchvision's
        eager ``_resize_image_and_masks``; the output side is then ``floor(side * scale)``
        (:func:`resized_size`). Pure host arithmetic: no tensor, no device sync."""
        return min(self.min_size / min(height, width), self.max_size / max(height, width))

    def resize(self, image: Tensor, target: Optional[Dict[str, Tensor]]):
        """Resize one ``(3, h, w)`` image (and its target) by :meth:`resize_scale`.

        The output size is ``floor(h * scale) x floor(w * scale)`` (:func:`resized_size`, what
        ``F.interpolate`` computes from a Python-float ``scale_factor``); the interpolation then uses the exact
        ratios of output to input size (``recompute_scale_factor=True``).
        """
        old_size = (int(image.shape[-2]), int(image.shape[-1]))
        scale = self.resize_scale(*old_size)
        image = F.interpolate(image[None], scale_factor=scale, mode="bilinear",  # (3,h,w) -> (1,3,h,w)
                              recompute_scale_factor=True, align_corners=False)[0]
        if target is None:
            return image, None
        new_size = (int(image.shape[-2]), int(image.shape[-1]))
        target["boxes"] = resize_boxes(target["boxes"], old_size, new_size)
        if "masks" in target:
            masks = target["masks"][:, None].float()  # (K, h, w) -> (K, 1, h, w)
            masks = F.interpolate(masks, scale_factor=scale, recompute_scale_factor=True)  # nearest
            target["masks"] = masks[:, 0].byte()      # (K, 1, H_i, W_i) -> (K, H_i, W_i)
        return image, target

    def batch_images(self, images: List[Tensor]) -> Tensor:
        """Zero-pad ``[(3, H_i, W_i)]`` at the bottom/right into one ``(N, 3, H, W)`` tensor."""
        stride = self.size_divisible
        height = max(image.shape[-2] for image in images)
        width = max(image.shape[-1] for image in images)
        height = (height + stride - 1) // stride * stride
        width = (width + stride - 1) // stride * stride
        batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
        for image, slot in zip(images, batch):
            slot[:, : image.shape[-2], : image.shape[-1]].copy_(image)
        return batch

    # -------------------------------------------------------------------------------------- postprocess
    def postprocess(self, detections: List[Dict[str, Tensor]], image_sizes: List[Size],
                    original_sizes: List[Size]) -> List[Dict[str, Tensor]]:
        """Map each image's detections from the resized ``(H_i, W_i)`` back to the original ``(h_i, w_i)``.

        ``boxes (K, 4)`` are rescaled; ``masks (K, 1, 28, 28)`` probabilities, when present, become
        ``(K, 1, h_i, w_i)`` by pasting into the rescaled boxes. Other fields pass through unchanged.
        """
        results = []
        for detection, resized_size, original_size in zip(detections, image_sizes, original_sizes):
            detection = dict(detection)
            detection["boxes"] = resize_boxes(detection["boxes"], resized_size, original_size)
            if "masks" in detection:
                detection["masks"] = paste_masks_in_image(detection["masks"], detection["boxes"], original_size)
            results.append(detection)
        return results

    def extra_repr(self) -> str:
        return (f"min_size={self.min_size}, max_size={self.max_size}, size_divisible={self.size_divisible}, "
                f"mean={self.pixel_mean.tolist()}, std={self.pixel_std.tolist()}")


def check_inputs(images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]]) -> None:
    """Raise a ValueError naming the offending image or target field when the input is malformed."""
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError("images: expected a non-empty list of (3, H, W) float tensors")
    for index, image in enumerate(images):
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"images[{index}]: expected a (3, H, W) RGB tensor, got {shape}")
        if not image.is_floating_point():
            raise ValueError(f"images[{index}]: expected a float tensor in [0, 1], got dtype {image.dtype}")
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"images[{index}]: empty image of shape {tuple(image.shape)}")
    if targets is None:
        return
    if len(targets) != len(images):
        raise ValueError(f"targets: {len(targets)} targets for {len(images)} images")
    for index, (image, target) in enumerate(zip(images, targets)):
        boxes, labels = target.get("boxes"), target.get("labels")
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"targets[{index}]['boxes']: expected a (K, 4) float tensor")
        if not boxes.is_floating_point():
            raise ValueError(f"targets[{index}]['boxes']: expected a float tensor, got {boxes.dtype}")
        if not isinstance(labels, Tensor) or labels.shape != (boxes.shape[0],) or labels.dtype != torch.int64:
            raise ValueError(f"targets[{index}]['labels']: expected an int64 tensor of shape ({boxes.shape[0]},)")
        masks = target.get("masks")
        if masks is not None:
            expected = (boxes.shape[0],) + tuple(image.shape[-2:])
            if not isinstance(masks, Tensor) or tuple(masks.shape) != expected:
                got = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
                raise ValueError(f"targets[{index}]['masks']: expected shape {expected}, got {got}")
    check_box_sizes([target["boxes"] for target in targets])


def check_box_sizes(boxes: List[Tensor]) -> None:
    """Raise naming the first target box without positive width and height. One device sync for the whole
    batch (the flag is read once), not one per image."""
    all_boxes = torch.cat([b.to(boxes[0].device) for b in boxes]) if boxes else torch.zeros(0, 4)
    if all_boxes.numel() == 0:
        return
    empty = (all_boxes[:, 2:] <= all_boxes[:, :2]).any(dim=1)  # (sum K_i, 4) -> (sum K_i,)
    if not bool(empty.any()):
        return
    first = int(torch.where(empty)[0][0])
    for index, image_boxes in enumerate(boxes):
        if first < image_boxes.shape[0]:
            raise ValueError(f"targets[{index}]['boxes'][{first}] = {image_boxes[first].tolist()}: "
                             "boxes must have positive width and height (x1 < x2, y1 < y2)")
        first -= image_boxes.shape[0]

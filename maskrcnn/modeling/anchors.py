"""Anchor boxes: the reference boxes that the RPN classifies and regresses (Faster R-CNN sec. 3.1.1).

At every position of every feature level, the RPN predicts one objectness score and one box delta
for each of ``A`` fixed reference boxes ("anchors") of different sizes and aspect ratios centred on
that position. With FPN (FPN paper sec. 4.1) each level gets one size (32 on P2 ... 512 on P6) and
three aspect ratios, so ``A = 3`` everywhere.

Shape shorthand:
    L        number of feature levels
    A        anchors per position of a level (= sizes x aspect ratios of that level)
    h, w     height and width of one level's feature map; stride = image size // feature size
    total    sum over levels of h * w * A

Conventions (torchvision's, the defaults here; docs/conventions.md section 1):
    * Boxes are ``(x1, y1, x2, y2)`` in input-image pixels with no "+1": width = x2 - x1.
    * Aspect ratio means ``h / w``. An anchor of size ``s`` and ratio ``r`` has the area ``s**2``:
      ``h = s * sqrt(r)``, ``w = s / sqrt(r)``.
    * A *cell anchor* is an anchor centred on (0, 0): ``[-w/2, -h/2, w/2, h/2]``, **rounded** to
      integers (``round_cell_anchors=True``; round half to even, as ``torch.round``).
    * Cell anchors are listed **ratio-major** (``order="ratio_major"``): for each ratio, every size.
      With one size per level the two orders agree.
    * The anchors of position ``(i, j)`` of a level with strides ``(sy, sx)`` are the cell anchors
      shifted by ``((j + offset) * sx, (i + offset) * sy)`` with ``offset=0`` (the anchor centre is
      the top-left corner of the cell, not its middle; detectron2 uses the same default).
    * Output order: level, then position in row-major order (row ``i`` outer, column ``j`` inner),
      then cell anchor. This is also the order of the RPN head outputs after its
      ``(N, A*4, h, w) -> (N, h*w*A, 4)`` reshape, so anchors and predictions line up index by index.

The unrounded / size-major / centred variants (``round_cell_anchors=False``, ``order="size_major"``,
``offset=0.5``) are detectron2's and the original Faster R-CNN's conventions; they are offered for
experiments, but torchvision checkpoints need the defaults.

dtype and device: the cell anchors are computed once in float64 on the CPU, and cached per device
(in float64) on first use; positions are added in float64 and the result is cast to the requested
``dtype`` at the end, so every anchor is the correctly rounded value of the exact one. For the
defaults every coordinate is an integer, which float32 holds exactly up to 2**24.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

ORDERS = ("ratio_major", "size_major")


def make_cell_anchors(
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    round_cell_anchors: bool = True,
    order: str = "ratio_major",
) -> Tensor:
    """The anchors of one level centred on (0, 0).

    Args:
        sizes: anchor sizes ``s`` (square root of the area), in input pixels.
        aspect_ratios: ratios ``r = h / w``.
        round_cell_anchors: round the coordinates to integers (torchvision).
        order: ``"ratio_major"`` (for each ratio, each size; torchvision) or ``"size_major"``.

    Returns:
        ``(len(sizes) * len(aspect_ratios), 4)`` float64 ``[-w/2, -h/2, w/2, h/2]`` boxes.
    """
    if order not in ORDERS:
        raise ValueError(f"anchors: order must be one of {ORDERS}, got {order!r}")
    sizes_t = torch.as_tensor(sizes, dtype=torch.float64)  # (S,)
    ratios_t = torch.as_tensor(aspect_ratios, dtype=torch.float64)  # (R,)
    height_factor = ratios_t.sqrt()  # h = s * sqrt(r)
    width_factor = 1.0 / height_factor  # w = s / sqrt(r), so h * w = s**2 and h / w = r
    if order == "ratio_major":
        widths = (width_factor[:, None] * sizes_t[None, :]).reshape(-1)  # (R, S) -> (R*S,)
        heights = (height_factor[:, None] * sizes_t[None, :]).reshape(-1)  # (R, S) -> (R*S,)
    else:
        widths = (sizes_t[:, None] * width_factor[None, :]).reshape(-1)  # (S, R) -> (S*R,)
        heights = (sizes_t[:, None] * height_factor[None, :]).reshape(-1)  # (S, R) -> (S*R,)
    cell_anchors = torch.stack([-widths, -heights, widths, heights], dim=1) / 2  # (A, 4)
    return cell_anchors.round() if round_cell_anchors else cell_anchors


def _per_level_sizes(sizes) -> List[Tuple[float, ...]]:
    """Accept ``((32,), (64,), ...)`` (one tuple per level) or ``(32, 64, ...)`` (one size per level)."""
    if isinstance(sizes, (int, float)) or len(sizes) == 0:
        raise ValueError(f"AnchorGenerator: sizes must be a non-empty list with one entry per level, got {sizes!r}")
    levels = []
    for level, entry in enumerate(sizes):
        level_sizes = (entry,) if isinstance(entry, (int, float)) else tuple(entry)
        if len(level_sizes) == 0 or any(not isinstance(s, (int, float)) or s <= 0 for s in level_sizes):
            raise ValueError(f"AnchorGenerator: sizes[{level}] must be positive numbers, got {entry!r}")
        levels.append(tuple(float(s) for s in level_sizes))
    return levels


def _per_level_ratios(aspect_ratios, num_levels: int) -> List[Tuple[float, ...]]:
    """Accept ``(0.5, 1, 2)`` (shared by every level) or one tuple per level."""
    if isinstance(aspect_ratios, (int, float)) or len(aspect_ratios) == 0:
        raise ValueError(f"AnchorGenerator: aspect_ratios must be a non-empty list, got {aspect_ratios!r}")
    if all(isinstance(r, (int, float)) for r in aspect_ratios):
        levels = [tuple(aspect_ratios)] * num_levels
    else:
        if len(aspect_ratios) != num_levels:
            raise ValueError(
                f"AnchorGenerator: aspect_ratios has {len(aspect_ratios)} per-level entries but sizes has "
                f"{num_levels} levels"
            )
        levels = [tuple(entry) for entry in aspect_ratios]
    for level, ratios in enumerate(levels):
        if len(ratios) == 0 or any(not isinstance(r, (int, float)) or r <= 0 for r in ratios):
            raise ValueError(f"AnchorGenerator: aspect_ratios for level {level} must be positive numbers, got {ratios!r}")
    return [tuple(float(r) for r in ratios) for ratios in levels]


class AnchorGenerator(nn.Module):
    """Anchors of one image over all feature levels.

    Args:
        sizes: one entry per level: a tuple of sizes (``((32,), (64,), (128,), (256,), (512,))``,
            torchvision's form) or a single number (``(32, 64, 128, 256, 512)``, one size per level).
        aspect_ratios: ratios ``h / w``: one tuple shared by every level (``(0.5, 1.0, 2.0)``) or one
            tuple per level (torchvision's ``((0.5, 1.0, 2.0),) * 5``).
        round_cell_anchors, order, offset: see the module docstring; the defaults are torchvision's.

    Call: ``generator(image_size=(H, W), feature_sizes=[(h, w), ...], dtype=torch.float32, device=None)``
    -> ``(total, 4)`` anchors of one image (order in the module docstring). ``image_size`` is the size of
    the (padded) input tensor the features were computed from, so in a batch every image gets the same
    anchors. ``device=None`` means the CPU.

    It is an ``nn.Module`` only so that it shows up in the printed model; it has no parameters or
    buffers (nothing in the state dict), and the cell-anchor cache follows the requested device.
    """

    def __init__(
        self,
        sizes=((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios=(0.5, 1.0, 2.0),
        round_cell_anchors: bool = True,
        order: str = "ratio_major",
        offset: float = 0.0,
    ):
        super().__init__()
        self.sizes = _per_level_sizes(sizes)
        self.aspect_ratios = _per_level_ratios(aspect_ratios, len(self.sizes))
        if order not in ORDERS:
            raise ValueError(f"AnchorGenerator: order must be one of {ORDERS}, got {order!r}")
        self.round_cell_anchors = bool(round_cell_anchors)
        self.order = order
        self.offset = float(offset)
        # Computed once, in float64 on the CPU; copies per device are cached by cell_anchors().
        cpu = torch.device("cpu")
        self._cell_anchors: Dict[torch.device, List[Tensor]] = {
            cpu: [
                make_cell_anchors(level_sizes, ratios, self.round_cell_anchors, self.order)
                for level_sizes, ratios in zip(self.sizes, self.aspect_ratios)
            ]
        }

    def extra_repr(self) -> str:
        return (
            f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}, "
            f"round_cell_anchors={self.round_cell_anchors}, order={self.order!r}, offset={self.offset}"
        )

    @property
    def num_levels(self) -> int:
        return len(self.sizes)

    def num_anchors_per_location(self) -> List[int]:
        """``A`` for each level (the RPN head predicts this many scores per position)."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def cell_anchors(self, device: Optional[torch.device] = None) -> List[Tensor]:
        """Per level, the ``(A, 4)`` float64 cell anchors on ``device`` (cached)."""
        device = torch.device("cpu") if device is None else torch.device(device)
        if device not in self._cell_anchors:
            cpu_anchors = self._cell_anchors[torch.device("cpu")]
            self._cell_anchors[device] = [anchors.to(device) for anchors in cpu_anchors]
        return self._cell_anchors[device]

    def forward(
        self,
        image_size: Sequence[int],
        feature_sizes: Sequence[Sequence[int]],
        dtype: torch.dtype = torch.float32,
        device: Optional[Union[torch.device, str]] = None,
    ) -> Tensor:
        return torch.cat(self.anchors_per_level(image_size, feature_sizes, dtype, device), dim=0)

    def anchors_per_level(
        self,
        image_size: Sequence[int],
        feature_sizes: Sequence[Sequence[int]],
        dtype: torch.dtype = torch.float32,
        device: Optional[Union[torch.device, str]] = None,
    ) -> List[Tensor]:
        """Like calling the generator, but one ``(h * w * A, 4)`` tensor per level."""
        image_height, image_width = _pair(image_size, "image_size")
        if len(feature_sizes) != self.num_levels:
            raise ValueError(
                f"AnchorGenerator: feature_sizes has {len(feature_sizes)} levels, the generator has "
                f"{self.num_levels} (sizes={self.sizes})"
            )
        anchors = []
        for level, (cell, feature_size) in enumerate(zip(self.cell_anchors(device), feature_sizes)):
            height, width = _pair(feature_size, f"feature_sizes[{level}]")
            if height > image_height or width > image_width:
                raise ValueError(
                    f"AnchorGenerator: feature_sizes[{level}] = {(height, width)} is larger than "
                    f"image_size = {(image_height, image_width)}"
                )
            stride_y, stride_x = image_height // height, image_width // width
            shifts_x = (torch.arange(width, dtype=torch.float64, device=cell.device) + self.offset) * stride_x
            shifts_y = (torch.arange(height, dtype=torch.float64, device=cell.device) + self.offset) * stride_y
            grid_y, grid_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # (h, w) each
            grid_x, grid_y = grid_x.reshape(-1), grid_y.reshape(-1)  # (h, w) -> (h*w,), row-major
            shifts = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=1)  # (h*w, 4)
            level_anchors = shifts[:, None, :] + cell[None, :, :]  # (h*w, 1, 4) + (1, A, 4) -> (h*w, A, 4)
            anchors.append(level_anchors.reshape(-1, 4).to(dtype))  # (h*w, A, 4) -> (h*w*A, 4)
        return anchors


def _pair(value, name: str) -> Tuple[int, int]:
    """``(H, W)`` as two positive Python ints (accepts tuples, lists, 1-D tensors, torch.Size)."""
    if isinstance(value, Tensor):
        value = value.tolist()
    try:
        first, second = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"AnchorGenerator: {name} must be a pair (height, width), got {value!r}") from None
    if first <= 0 or second <= 0:
        raise ValueError(f"AnchorGenerator: {name} must be positive, got {(first, second)}")
    return first, second

"""ResNet, the bottom-up pathway of the backbone (He et al., 2016, "Deep Residual Learning").

Shape shorthand used in this file: ``N`` images, ``C`` channels, ``H x W`` the padded input size.

    image (N, 3, H, W)
      -> stem: 7x7 conv stride 2, norm, ReLU, 3x3 max-pool stride 2      (N, 64, H/4, W/4)
      -> res2 (stride 1)  ->  C2                                         (N, 1*E, H/4,  W/4)
      -> res3 (stride 2)  ->  C3                                         (N, 2*E, H/8,  W/8)
      -> res4 (stride 2)  ->  C4                                         (N, 4*E, H/16, W/16)
      -> res5 (stride 2)  ->  C5                                         (N, 8*E, H/32, W/32)

where ``E`` is 64 for the basic-block ResNets (18, 34) and 256 for the bottleneck ones (50, 101). The
classification head (global pool + FC) is not built: the detector only needs ``C2..C5``.

Conventions (all chosen to match torchvision's ``resnet50``, so its weights load unchanged):

- "ResNet v1.5": a bottleneck block downsamples in its 3x3 conv (``conv2``), not in the first 1x1.
- The projection shortcut (1x1 conv + norm) is used only where the shape changes (first block of a stage).
- Normalization is :class:`FrozenBatchNorm2d`: batch norm with *fixed* statistics and affine parameters,
  the standard choice for detection, where a batch of 2 large images per GPU is too small to estimate
  batch statistics (Mask R-CNN paper, Sec. 3.1: "we freeze the BN layers").
- ``frozen_stages = k`` additionally stops the gradient of the first ``k`` stages' conv weights
  (0: nothing frozen; 1: the stem; 2: stem + res2; ... 5: everything). torchvision calls this
  ``trainable_layers = 5 - k``; its detection default ``trainable_layers=3`` is ``frozen_stages=2``.

Speed (issue 13; ``docs/benchmarks.md`` has the measurements):

- **Folded frozen norms.** Every ``conv -> FrozenBatchNorm2d`` pair runs as *one* convolution,
  ``conv(x, w * scale) + shift`` (:func:`conv_frozen_norm`), instead of a convolution followed by an
  elementwise pass over the whole activation map. The fold is computed on the fly at every forward pass:
  it costs one multiply per weight (23.5 M for ResNet-50, a few milliseconds) against one pass over every
  activation, it is exact algebra (only the rounding differs, about 1e-6 relative in float32) and it is
  differentiable with respect to ``w`` (the statistics are frozen buffers, so nothing else needs a
  gradient). Nothing is cached, so nothing can go stale: the state dict, checkpoints, ``load_state_dict``
  and the optimizer all see the unfolded ``conv.weight`` and the four norm buffers exactly as before.
- **In-place ReLU and residual add.** ``relu_`` overwrites the convolution output it follows and
  ``out += identity`` the last convolution's output: autograd allows both, since a convolution's backward
  needs its input and weight but not its output, and ReLU's backward needs only its own output (which is
  what stays in the buffer). Neither touches a block's input, which the shortcut and ``conv1`` still need.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn
import torch.nn.functional as F

# depth -> (block kind, number of blocks in res2, res3, res4, res5)
RESNET_SPECS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with frozen statistics: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    Input and output ``(N, C, H, W)``, the output in the input's dtype (a float16 or bfloat16 activation, as
    under autocast, stays float16 or bfloat16; the per-channel factors are computed in the buffers' dtype and
    rounded to the input's). All four per-channel tensors are *buffers*, not parameters: they are saved in the
    state dict but never updated, neither by the optimizer nor by running averages. The affine map is folded
    into one scale and one shift per channel (:meth:`scale_and_shift`), computed exactly as torchvision does
    so that a float32 output agrees with torchvision's bit for bit. Inside the ResNet the norm is folded into
    the preceding convolution instead (:func:`conv_frozen_norm`); this module's own ``forward`` serves a norm
    used on its own.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_channels))
        self.register_buffer("bias", torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))

    def scale_and_shift(self) -> Tuple[Tensor, Tensor]:
        """``(scale, shift)``, each ``(C,)``: ``scale = weight * rsqrt(var + eps)``, ``shift = bias - mean * scale``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return scale, shift

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_and_shift()
        # (C,) -> (1, C, 1, 1) so that they broadcast over N, H and W
        scale = scale.to(x.dtype).reshape(1, -1, 1, 1)
        shift = shift.to(x.dtype).reshape(1, -1, 1, 1)
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def conv_frozen_norm(conv: nn.Conv2d, norm: FrozenBatchNorm2d, x: Tensor) -> Tensor:
    """``norm(conv(x))`` computed as one convolution with the norm folded in: ``conv(x, w * scale) + shift``.

    ``conv`` has no bias (every ResNet conv is followed by a norm). Per output channel ``o``,
    ``norm(conv(x))_o = scale_o * sum(w_o * x) + shift_o = sum((scale_o * w_o) * x) + shift_o``: the same
    value, rounded differently (the module docstring says why the fold is recomputed at every call). When
    ``w`` is trained, :class:`_FoldedConv` recomputes ``w * scale`` in the backward pass instead of keeping it.
    """
    scale, shift = norm.scale_and_shift()
    args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    if conv.weight.requires_grad and torch.is_grad_enabled():
        return _FoldedConv.apply(x, conv.weight, scale, shift, *args)
    # (C_out,) -> (C_out, 1, 1, 1) to scale every output channel's filter
    return F.conv2d(x, conv.weight * scale.reshape(-1, 1, 1, 1), shift, *args)


class _FoldedConv(torch.autograd.Function):
    """``conv(x, w * scale) + shift`` whose backward pass recomputes ``w * scale`` rather than saving it.

    Through plain autograd, every trained convolution would keep its folded weight from the forward to the
    backward pass (88 MiB for ResNet-50's res3-res5); here only ``x`` and the parameter itself are kept, as an
    unfolded convolution keeps them. Gradients: ``dL/dx`` is the convolution's input gradient with the folded
    weight, ``dL/dw = scale * dL/d(w * scale)``; ``scale`` and ``shift`` come from frozen buffers and get none.
    Under autocast the convolution runs in the autocast dtype, and so does its backward.
    """

    @staticmethod
    def forward(ctx, x, weight, scale, shift, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight, scale)
        ctx.conv_args = (stride, padding, dilation, groups)
        return F.conv2d(x, weight * scale.reshape(-1, 1, 1, 1), shift, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, scale = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        dtype = grad_output.dtype  # the autocast dtype when the forward ran under autocast
        folded = (weight * scale.reshape(-1, 1, 1, 1)).to(dtype)
        grad_x, grad_folded, _ = torch.ops.aten.convolution_backward(
            grad_output, x.to(dtype), folded, None, stride, padding, dilation, False, [0, 0], groups,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        grad_weight = None
        if grad_folded is not None:
            grad_weight = (grad_folded.to(weight.dtype) * scale.reshape(-1, 1, 1, 1)).to(weight.dtype)
        return grad_x, grad_weight, None, None, None, None, None, None


class Shortcut(nn.Module):
    """The projection shortcut ``norm(conv1x1(x))`` that matches the block's output shape."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        self.norm = FrozenBatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return conv_frozen_norm(self.conv, self.norm, x)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34). ``(N, Cin, H, W) -> (N, Cout, H/s, W/s)``."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.norm1 = FrozenBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm2 = FrozenBatchNorm2d(width)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = Shortcut(in_channels, out_channels, stride) if needs_projection else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = conv_frozen_norm(self.conv1, self.norm1, x).relu_()
        out = conv_frozen_norm(self.conv2, self.norm2, out)
        out += identity
        return out.relu_()


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, plus the residual (ResNet-50/101).

    ``(N, Cin, H, W) -> (N, 4 * width, H/s, W/s)``; the stride sits on the 3x3 conv ("v1.5").
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.norm1 = FrozenBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.norm2 = FrozenBatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.norm3 = FrozenBatchNorm2d(out_channels)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = Shortcut(in_channels, out_channels, stride) if needs_projection else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = conv_frozen_norm(self.conv1, self.norm1, x).relu_()
        out = conv_frozen_norm(self.conv2, self.norm2, out).relu_()
        out = conv_frozen_norm(self.conv3, self.norm3, out)
        out += identity
        return out.relu_()


class Stem(nn.Module):
    """``conv 7x7/2 -> norm -> ReLU -> maxpool 3x3/2``: ``(N, 3, H, W) -> (N, 64, H/4, W/4)``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.norm = FrozenBatchNorm2d(64)

    def forward(self, x: Tensor) -> Tensor:
        x = conv_frozen_norm(self.conv, self.norm, x).relu_()
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """ResNet-{18, 34, 50, 101} trunk returning ``[C2, C3, C4, C5]`` (strides 4, 8, 16, 32).

    Args:
        depth: 18, 34, 50 or 101.
        frozen_stages: number of leading stages (stem = 1, res2 = 2, ...) whose weights get
            ``requires_grad = False``; 0..5.

    Attributes:
        out_channels: channels of C2..C5, e.g. ``[256, 512, 1024, 2048]`` for ResNet-50.
    """

    def __init__(self, depth: int = 50, frozen_stages: int = 2):
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ValueError(f"depth={depth!r}: ResNet depth must be one of {sorted(RESNET_SPECS)}")
        if not 0 <= frozen_stages <= 5:
            raise ValueError(f"frozen_stages={frozen_stages!r}: must be in 0..5 (stem, res2, res3, res4, res5)")
        kind, blocks_per_stage = RESNET_SPECS[depth]
        block = Bottleneck if kind == "bottleneck" else BasicBlock
        self.depth = depth
        self.stem = Stem()
        in_channels = 64
        self.out_channels: List[int] = []
        for index, (name, num_blocks) in enumerate(zip(STAGE_NAMES, blocks_per_stage)):
            width = 64 * 2**index
            first_stride = 1 if index == 0 else 2
            blocks = []
            for b in range(num_blocks):
                blocks.append(block(in_channels, width, first_stride if b == 0 else 1))
                in_channels = width * block.expansion
            self.add_module(name, nn.Sequential(*blocks))
            self.out_channels.append(in_channels)
        self._reset_parameters()
        self.frozen_stages = frozen_stages
        self.freeze(frozen_stages)

    def _reset_parameters(self) -> None:
        """He initialization of every conv (fan-out, as torchvision), for training without ImageNet weights."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def stages(self) -> List[nn.Module]:
        """The five stages in order: ``[stem, res2, res3, res4, res5]``."""
        return [self.stem] + [getattr(self, name) for name in STAGE_NAMES]

    def freeze(self, frozen_stages: int) -> None:
        """Set ``requires_grad`` so that exactly the first ``frozen_stages`` stages are frozen."""
        for index, stage in enumerate(self.stages()):
            for parameter in stage.parameters():
                parameter.requires_grad_(index >= frozen_stages)

    def forward(self, images: Tensor) -> List[Tensor]:
        """``(N, 3, H, W) -> [C2 (N, E, H/4, W/4), C3, C4, C5 (N, 8E, H/32, W/32)]``."""
        x = self.stem(images)
        features = []
        for name in STAGE_NAMES:
            x = getattr(self, name)(x)
            features.append(x)
        return features


def resnet_state_dict_names(depth: int) -> Dict[str, str]:
    """Map torchvision ``resnet{depth}`` parameter/buffer names to this module's names.

    ``conv1 -> stem.conv``, ``bn1 -> stem.norm``, ``layer{k}.{b}.bn{i} -> res{k+1}.{b}.norm{i}``,
    ``layer{k}.{b}.downsample.{0,1} -> res{k+1}.{b}.shortcut.{conv,norm}``. The ``fc`` classifier and
    BatchNorm's ``num_batches_tracked`` counters have no counterpart and are absent from the map.
    """
    kind, blocks_per_stage = RESNET_SPECS[depth]
    convs = (1, 2, 3) if kind == "bottleneck" else (1, 2)
    norm_fields = ("weight", "bias", "running_mean", "running_var")
    names = {"conv1.weight": "stem.conv.weight"}
    names.update({f"bn1.{f}": f"stem.norm.{f}" for f in norm_fields})
    for stage, num_blocks in enumerate(blocks_per_stage):
        for b in range(num_blocks):
            src, dst = f"layer{stage + 1}.{b}", f"{STAGE_NAMES[stage]}.{b}"
            for i in convs:
                names[f"{src}.conv{i}.weight"] = f"{dst}.conv{i}.weight"
                names.update({f"{src}.bn{i}.{f}": f"{dst}.norm{i}.{f}" for f in norm_fields})
            if b == 0 and (stage > 0 or kind == "bottleneck"):
                names[f"{src}.downsample.0.weight"] = f"{dst}.shortcut.conv.weight"
                names.update({f"{src}.downsample.1.{f}": f"{dst}.shortcut.norm.{f}" for f in norm_fields})
    return names

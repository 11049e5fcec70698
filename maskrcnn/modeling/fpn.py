"""Feature Pyramid Network (Lin et al., 2017, "Feature Pyramid Networks for Object Detection", Sec. 3).

Shape shorthand: ``N`` images, ``D`` the pyramid's channel count (256), ``C_l`` the channels of the
backbone's level-``l`` output, ``H_l x W_l = ceil(H / 2**l) x ceil(W / 2**l)``.

    C2 (N, C_2, H_2, W_2)  C3  C4  C5 (N, C_5, H_5, W_5)          bottom-up (ResNet)
    lateral_l = conv1x1(C_l)                                     (N, D, H_l, W_l)
    M5 = lateral_5
    M_l = lateral_l + upsample_nearest(M_{l+1}, to H_l x W_l)     top-down pathway, l = 4, 3, 2
    P_l = conv3x3(M_l)                                           (N, D, H_l, W_l), l = 2..5
    P6 = maxpool(kernel 1, stride 2)(P5)                         (N, D, H_6, W_6), only feeds the RPN

Conventions: the top-down upsampling targets the lateral's exact size (not a fixed factor 2), so odd
sizes work; P6 subsamples P5 (torchvision's ``LastLevelMaxPool``), not C5 as in RetinaNet. The lateral
and output convs have biases and start from ``kaiming_uniform_(a=1)`` weights and zero biases.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from maskrcnn.modeling.resnet import ResNet


class FeaturePyramidNetwork(nn.Module):
    """``[C2, C3, C4, C5] -> [P2, P3, P4, P5, P6]``, every level with ``out_channels`` channels.

    Args:
        in_channels: channels of each input level, bottom (finest) first, e.g. ``[256, 512, 1024, 2048]``.
        out_channels: ``D``, the channels of every pyramid level.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256):
        super().__init__()
        if len(in_channels) == 0:
            raise ValueError("in_channels: the FPN needs at least one input level")
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        self.out_channels = out_channels
        for conv in list(self.lateral_convs) + list(self.output_convs):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        """``[C2..C5]`` (fine to coarse) -> ``[P2..P5, P6]``, each ``(N, D, H_l, W_l)``."""
        if len(features) != len(self.lateral_convs):
            raise ValueError(f"features: expected {len(self.lateral_convs)} levels, got {len(features)}")
        merged = self.lateral_convs[-1](features[-1])                      # M5
        outputs = [self.output_convs[-1](merged)]                          # [P5]
        for level in range(len(features) - 2, -1, -1):
            lateral = self.lateral_convs[level](features[level])
            top_down = F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            merged = lateral + top_down                                    # M_l
            outputs.insert(0, self.output_convs[level](merged))            # P_l
        # P6: "a stride two subsampling of P5" (FPN paper, Sec. 4.1), used only by the RPN.
        outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2, padding=0))
        return outputs


class ResNetFPN(nn.Module):
    """The full backbone: ResNet trunk followed by the FPN. ``(N, 3, H, W) -> [P2, P3, P4, P5, P6]``.

    ``H`` and ``W`` should be multiples of 32 (the transform pads to that) so that every level's size is
    exactly ``H / stride``. ``strides`` are 4, 8, 16, 32, 64.

    Memory format: in eval mode on the CPU the images are converted to ``channels_last`` (NHWC) before the
    first convolution, and every convolution after it keeps that layout, so the pyramid levels come out
    ``channels_last`` too (same shapes and values up to rounding; a later ``.contiguous()`` is the only
    thing that would notice). Measured on the CPU (``docs/benchmarks.md``), it saves about 14 % of a
    whole-model inference, while in training it made the ResNet's forward + backward slower, so training
    keeps the default layout. GPUs were not measured (none was available), so CUDA inputs are left as
    they come. ``channels_last_cpu_inference = False`` turns the conversion off.
    """

    strides = (4, 8, 16, 32, 64)

    def __init__(self, depth: int = 50, frozen_stages: int = 2, out_channels: int = 256,
                 channels_last_cpu_inference: bool = True):
        super().__init__()
        self.resnet = ResNet(depth, frozen_stages)
        self.fpn = FeaturePyramidNetwork(self.resnet.out_channels, out_channels)
        self.out_channels = out_channels
        self.channels_last_cpu_inference = channels_last_cpu_inference

    def forward(self, images: Tensor) -> List[Tensor]:
        if self.channels_last_cpu_inference and not self.training and images.device.type == "cpu":
            images = images.contiguous(memory_format=torch.channels_last)
        return self.fpn(self.resnet(images))

"""Small building blocks shared by the heads and decoders (norm + conv + activation)."""

from __future__ import annotations

import math

from torch import nn

__all__ = ["conv_gn_relu", "group_norm"]


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups and at least 2 channels per group where possible.

    Two channels per group keeps the statistics meaningful at 1x1 spatial size
    (a single-channel group at one pixel would normalise every value to zero).
    GroupNorm rather than BatchNorm keeps every head usable at batch size 1.
    """
    groups = math.gcd(32, max(channels // 2, 1))
    return nn.GroupNorm(groups, channels)


def conv_gn_relu(in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    """``Conv2d`` (same padding, no bias) + :func:`group_norm` + ReLU."""
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        # No conv bias: GroupNorm's affine shift makes it redundant.
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, dilation=dilation, bias=False),
        group_norm(out_ch),
        nn.ReLU(inplace=True),
    )

"""Small building blocks shared by the heads and decoders (norm + conv + activation)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["align_features", "conv_gn_relu", "group_norm"]


def align_features(
    features: Sequence[Tensor], in_channels: Sequence[int], *, head: str = "head"
) -> list[Tensor]:
    """Check the maps against ``in_channels`` and resize each to the first map's size.

    ViT blocks already share one grid; resizing only matters for other backbones.

    Args:
        features: Maps ``[B, C_i, h_i, w_i]``, one per entry of ``in_channels``.
        in_channels: Channel count each map is expected to have.
        head: Named in the error.

    Returns:
        Maps ``[B, C_i, h_0, w_0]``.

    Raises:
        ValueError: When the number of maps or their channel counts do not match
            ``in_channels`` (the head was built for another backbone or layer set).
    """
    got = [int(f.shape[1]) for f in features]
    if got != list(in_channels):
        raise ValueError(
            f"{head} was built for feature channels {list(in_channels)} but received {got}; "
            "build the head from the backbone's out_channels"
        )
    size = features[0].shape[-2:]
    return [
        f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        for f in features
    ]


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

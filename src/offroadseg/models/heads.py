"""Segmentation heads: a list of backbone feature maps in, class logits out.

Every head shares one contract (segmentation_models.pytorch style): it is built from
the backbone's ``out_channels`` and the number of classes, and maps
``list[Tensor[B, C_i, h_i, w_i]]`` to logits ``Tensor[B, K, h, w]`` at the resolution of
the first feature map. The :class:`~offroadseg.models.segmentor.Segmentor` upsamples
the logits to the image size.

Heads available through :func:`create_head`:

- ``linear``: BatchNorm + 1x1 conv, the DINOv2 linear-probe head.
- ``conv``: the reference pipeline's phase-1/2 head (Duality starter
  ``SegmentationHeadConvNeXt``).
- ``ppm``: the reference pipeline's phase-3 head (called "UPerNet" there): a pyramid
  pooling module followed by parallel dilated convolutions.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offroadseg.errors import ModelError, close_matches

__all__ = ["HEADS", "ConvHead", "LinearHead", "PPMHead", "concat_features", "create_head"]


def concat_features(features: Sequence[Tensor], in_channels: Sequence[int]) -> Tensor:
    """Concatenate feature maps along channels, resizing each to the first one's size.

    Args:
        features: Maps ``[B, C_i, h_i, w_i]``, one per entry of ``in_channels``.
        in_channels: Channel count each map is expected to have.

    Returns:
        ``[B, sum(C_i), h_0, w_0]``.

    Raises:
        ValueError: When the number of maps or their channel counts do not match
            ``in_channels`` (the head was built for another backbone or layer set).
    """
    got = [int(f.shape[1]) for f in features]
    if got != list(in_channels):
        raise ValueError(
            f"head was built for feature channels {list(in_channels)} but received {got}; "
            "build the head from the backbone's out_channels"
        )
    size = features[0].shape[-2:]
    maps = [
        f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        for f in features
    ]
    return maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups and at least 2 channels per group where possible.

    Two channels per group keeps the statistics meaningful at 1x1 spatial size
    (a single-channel group at one pixel would normalise every value to zero).
    """
    groups = math.gcd(32, max(channels // 2, 1))
    return nn.GroupNorm(groups, channels)


def _conv_gn_relu(in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        # No conv bias: GroupNorm's affine shift makes it redundant.
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, dilation=dilation, bias=False),
        _group_norm(out_ch),
        nn.ReLU(inplace=True),
    )


class LinearHead(nn.Module):
    """BatchNorm + 1x1 conv over the concatenated feature maps (DINOv2 linear probe).

    Args:
        in_channels: Channels of each input map.
        num_classes: Number of output classes ``K``.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.num_classes = num_classes
        total = sum(self.in_channels)
        self.norm = nn.BatchNorm2d(total)
        self.classifier = nn.Conv2d(total, num_classes, kernel_size=1)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Map ``list[[B, C_i, h_i, w_i]]`` to logits ``[B, K, h_0, w_0]``."""
        x = concat_features(features, self.in_channels)
        return self.classifier(self.norm(x))


class ConvHead(nn.Module):
    """The reference phase-1/2 head (Duality starter ``SegmentationHeadConvNeXt``).

    7x7 stem conv + GELU, one ConvNeXt-like block (7x7 depthwise conv + GELU, 1x1 conv
    + GELU), then a 1x1 classifier. No normalisation, as in the reference.

    Args:
        in_channels: Channels of each input map (concatenated before the stem).
        num_classes: Number of output classes ``K``.
        hidden_channels: Width of the stem and block (128 in the reference).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, hidden_channels: int = 128) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.num_classes = num_classes
        c = hidden_channels
        self.stem = nn.Sequential(nn.Conv2d(sum(self.in_channels), c, kernel_size=7, padding=3), nn.GELU())
        self.block = nn.Sequential(
            nn.Conv2d(c, c, kernel_size=7, padding=3, groups=c),
            nn.GELU(),
            nn.Conv2d(c, c, kernel_size=1),
            nn.GELU(),
        )
        self.classifier = nn.Conv2d(c, num_classes, kernel_size=1)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Map ``list[[B, C_i, h_i, w_i]]`` to logits ``[B, K, h_0, w_0]``."""
        x = concat_features(features, self.in_channels)
        return self.classifier(self.block(self.stem(x)))


class PPMHead(nn.Module):
    """The reference phase-3 head: pyramid pooling + parallel dilated convolutions.

    Layout (``C = channels``):

    1. projection: 1x1 conv ``sum(in_channels) -> C`` + GroupNorm + ReLU;
    2. pyramid pooling: for each scale ``s`` in ``pool_scales``, adaptive average pool
       to ``s x s``, 1x1 conv ``C -> C // 4`` + GroupNorm + ReLU, bilinear upsample;
       the projection and the pooled maps are concatenated (PSPNet style) and reduced
       by a 3x3 bottleneck conv to ``C`` + GroupNorm + ReLU;
    3. context: three 3x3 convs with dilation ``dilations`` (``C -> C`` + GroupNorm +
       ReLU), run in parallel on the bottleneck output;
    4. fuse: concat (``3C``) -> 1x1 conv -> ``C`` + GroupNorm + ReLU;
    5. Dropout2d, then a 1x1 classifier ``C -> K``.

    GroupNorm (not BatchNorm) keeps the head usable at batch size 1 and at 1x1
    spatial size, where the 1x1 pooled branch would break BatchNorm in training.

    Args:
        in_channels: Channels of each input map (concatenated before the projection).
        num_classes: Number of output classes ``K``.
        channels: Internal width ``C``.
        pool_scales: Output sizes of the pyramid pooling branches.
        dilations: Dilation of each parallel context branch.
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 256,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dilations: Sequence[int] = (1, 2, 4),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if channels < 4:
            raise ValueError(f"PPMHead channels must be at least 4, got {channels}")
        self.in_channels = list(in_channels)
        self.num_classes = num_classes
        self.pool_scales = tuple(pool_scales)
        pooled = channels // 4
        self.proj = _conv_gn_relu(sum(self.in_channels), channels, 1)
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), _conv_gn_relu(channels, pooled, 1))
            for s in self.pool_scales
        )
        self.bottleneck = _conv_gn_relu(channels + pooled * len(self.pool_scales), channels, 3)
        self.context = nn.ModuleList(_conv_gn_relu(channels, channels, 3, dilation=d) for d in dilations)
        self.fuse = _conv_gn_relu(channels * len(self.context), channels, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Map ``list[[B, C_i, h_i, w_i]]`` to logits ``[B, K, h_0, w_0]``."""
        x = self.proj(concat_features(features, self.in_channels))
        size = x.shape[-2:]
        pyramid = [x] + [
            F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False) for branch in self.ppm
        ]
        x = self.bottleneck(torch.cat(pyramid, dim=1))
        x = self.fuse(torch.cat([branch(x) for branch in self.context], dim=1))
        return self.classifier(self.dropout(x))


HEADS: dict[str, type[nn.Module]] = {"linear": LinearHead, "conv": ConvHead, "ppm": PPMHead}


_POSITIONAL = ("self", "in_channels", "num_classes")


def create_head(name: str, in_channels: Sequence[int], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a head by name.

    Keyword arguments that are ``None`` are dropped, so an unset config field or CLI
    flag never overrides the head's own default (the timm habit).

    Args:
        name: A key of :data:`HEADS`.
        in_channels: The backbone's ``out_channels``.
        num_classes: Number of output classes ``K``.
        **kwargs: Head-specific options (e.g. ``channels`` for ``ppm``).

    Raises:
        ModelError: When ``name`` is not a known head.
    """
    try:
        cls = HEADS[name]
    except KeyError:
        valid = sorted(HEADS)
        raise ModelError(
            f"unknown head {name!r}{close_matches(name, valid)}; valid heads: {', '.join(valid)}"
        ) from None
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    options = [p for p in inspect.signature(cls.__init__).parameters if p not in _POSITIONAL]
    unknown = [k for k in kwargs if k not in options]
    if unknown:
        given = ", ".join(f"model.head.{k}={kwargs[k]!r}" for k in unknown)
        raise ModelError(
            f"{given}: the {name} head has no such option (its options: {', '.join(options) or 'none'}); "
            f"fix: remove it (null) or choose a head that takes it"
        )
    return cls(list(in_channels), num_classes, **kwargs)

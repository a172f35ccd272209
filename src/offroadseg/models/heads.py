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
- ``uper``: UPerNet (FPN + PPM) on a 4-level pyramid built from 4 ViT blocks
  (:mod:`offroadseg.models.decoders.uper`); logits at 4x the token grid.
- ``dpt``: DPT reassemble + fusion on 4 ViT blocks (:mod:`offroadseg.models.decoders.dpt`);
  logits at 4x the token grid.

The decoders that read 4 blocks need ``model.backbone.layers: [2, 5, 8, 11]`` (or ``4``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offroadseg.errors import ModelError, close_matches
from offroadseg.models.decoders.dpt import DPTHead
from offroadseg.models.decoders.uper import UPerHead
from offroadseg.models.layers import align_features, conv_gn_relu

__all__ = [
    "HEADS",
    "ConvHead",
    "DPTHead",
    "LinearHead",
    "PPMHead",
    "UPerHead",
    "concat_features",
    "create_head",
    "head_options",
]


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
    maps = align_features(features, in_channels)
    return maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)


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
        channels: Width of the stem and block (128 in the reference).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 128) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.num_classes = num_classes
        c = channels
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
        self.proj = conv_gn_relu(sum(self.in_channels), channels, 1)
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_gn_relu(channels, pooled, 1))
            for s in self.pool_scales
        )
        self.bottleneck = conv_gn_relu(channels + pooled * len(self.pool_scales), channels, 3)
        self.context = nn.ModuleList(conv_gn_relu(channels, channels, 3, dilation=d) for d in dilations)
        self.fuse = conv_gn_relu(channels * len(self.context), channels, 1)
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


HEADS: dict[str, type[nn.Module]] = {
    "linear": LinearHead,
    "conv": ConvHead,
    "ppm": PPMHead,
    "uper": UPerHead,
    "dpt": DPTHead,
}


def head_options(cls: type[nn.Module]) -> list[str]:
    """The keyword options a head class takes (its ``__init__`` after ``in_channels, num_classes``)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


_POSITIONAL = ("self", "in_channels", "num_classes")


def create_head(name: str, in_channels: Sequence[int], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a head by name.

    Keyword arguments that are ``None`` are dropped, so an unset config field or CLI
    flag never overrides the head's own default (the timm habit).

    Args:
        name: A key of :data:`HEADS`.
        in_channels: The backbone's ``out_channels``.
        num_classes: Number of output classes ``K``.
        **kwargs: Head-specific options (e.g. ``channels`` for ``ppm``); the config's
            ``model.head.<option>`` keys.

    Raises:
        ModelError: When ``name`` is not a known head, an option is not one the head
            takes, or the head needs another number of backbone layers.
    """
    try:
        cls = HEADS[name]
    except KeyError:
        valid = sorted(HEADS)
        raise ModelError(
            f"unknown head {name!r}{close_matches(name, valid)}; valid heads: {', '.join(valid)}"
        ) from None
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    takes = head_options(cls)
    refused = [k for k in kwargs if k not in takes]
    if refused:
        options = ", ".join(f"model.head.{k}={kwargs[k]!r}" for k in refused)
        raise ModelError(
            f"head {name!r} does not take {options}; it takes: {', '.join(takes) or 'no options'} "
            f"(fix: remove the option or choose another head)"
        )
    return cls(list(in_channels), num_classes, **kwargs)

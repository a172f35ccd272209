"""DPT decoder: reassemble 4 ViT blocks into a pyramid, fuse it coarse to fine (Ranftl et al. 2021).

Layout (``C = channels``, token grid ``h x w``):

1. reassemble: per block a 1x1 projection ``C_i -> C`` (patch tokens only: the backbone
   already dropped the class/register tokens, DPT's "ignore" readout), then resample
   to its level: x4 (4x4 stride-4 deconv), x2 (2x2 stride-2 deconv), x1, /2 (3x3
   stride-2 conv); a 3x3 conv per level;
2. fusion, coarsest level first: ``x = RCU(x + RCU(skip))``, then bilinear upsampling to
   the next finer level, a 1x1 conv (DPT's ``FeatureFusionBlock``); the finest block is
   not upsampled further;
3. head: 3x3 conv + GroupNorm + ReLU, Dropout2d, 1x1 classifier.

The residual conv units (RCU) use GroupNorm where DPT's segmentation model uses BatchNorm,
so batch size 1 works. Logits come out at 4x the token grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from offroadseg.models.decoders.pyramid import check_levels
from offroadseg.models.layers import align_features, conv_gn_relu, group_norm

__all__ = ["DPTHead"]


class ResidualConvUnit(nn.Module):
    """``x + conv(relu(norm(conv(relu(x)))))`` with 3x3 convs (DPT's RCU, GroupNorm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            group_norm(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            group_norm(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, h, w]`` -> ``[B, C, h, w]``."""
        return x + self.body(x)


class FusionBlock(nn.Module):
    """DPT ``FeatureFusionBlock``: merge a skip into the coarser path, refine, resize, project."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.skip_unit = ResidualConvUnit(channels)
        self.unit = ResidualConvUnit(channels)
        self.out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor, skip: Tensor | None, size: tuple[int, int]) -> Tensor:
        """Path ``x`` and ``skip`` on one grid -> ``[B, C, *size]``."""
        if skip is not None:
            x = x + self.skip_unit(skip)
        x = self.unit(x)
        if tuple(x.shape[-2:]) != tuple(size):
            # align_corners=True as in DPT.
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out(x)


class DPTHead(nn.Module):
    """DPT (reassemble + fusion) on 4 ViT blocks.

    Args:
        in_channels: Channels of the 4 input maps (earliest block first).
        num_classes: Number of output classes ``K``.
        channels: Width ``C`` of the reassembled maps and fusion path (DPT uses 256).
        dropout: Dropout2d probability before the classifier.

    Raises:
        ModelError: When ``in_channels`` does not have 4 entries.
    """

    def __init__(
        self, in_channels: Sequence[int], num_classes: int, channels: int = 128, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.in_channels = check_levels("dpt", in_channels)
        self.num_classes = num_classes
        c = channels
        self.project = nn.ModuleList(nn.Conv2d(ch, c, kernel_size=1) for ch in self.in_channels)
        self.resample = nn.ModuleList(
            [
                nn.ConvTranspose2d(c, c, kernel_size=4, stride=4),
                nn.ConvTranspose2d(c, c, kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c, c, kernel_size=3, stride=2, padding=1),
            ]
        )
        self.level_conv = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1, bias=False) for _ in range(4))
        self.fusion = nn.ModuleList(FusionBlock(c) for _ in range(4))
        self.head = conv_gn_relu(c, c, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(c, num_classes, kernel_size=1)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Map 4 maps ``[B, C_i, h, w]`` to logits ``[B, K, 4h, 4w]``."""
        maps = align_features(features, self.in_channels, head="dpt")
        levels = [
            conv(rs(proj(f)))
            for f, proj, rs, conv in zip(maps, self.project, self.resample, self.level_conv, strict=True)
        ]
        x = self.fusion[3](levels[3], None, tuple(levels[2].shape[-2:]))
        x = self.fusion[2](x, levels[2], tuple(levels[1].shape[-2:]))
        x = self.fusion[1](x, levels[1], tuple(levels[0].shape[-2:]))
        x = self.fusion[0](x, levels[0], tuple(levels[0].shape[-2:]))
        return self.classifier(self.dropout(self.head(x)))

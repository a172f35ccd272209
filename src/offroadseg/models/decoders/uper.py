"""UPerNet decoder over a 4-level pyramid made from 4 ViT blocks (Xiao et al. 2018; BEiT/ViTDet).

Layout (``C = channels``, token grid ``h x w``):

1. lateral 1x1 conv + GroupNorm + ReLU per block, ``C_i -> C`` (at the token grid: the
   cheapest place to change the width);
2. pyramid: block 0 upsampled x4 (two 2x2 stride-2 deconvs with GroupNorm + GELU between),
   block 1 x2 (one deconv), block 2 kept, block 3 max-pooled /2;
3. PPM (PSPNet pooling, scales ``pool_scales``) on the coarsest level replaces its lateral;
4. FPN top-down: each level adds the upsampled coarser one, then a 3x3 conv per level;
5. fuse: all levels upsampled to the finest (``4h x 4w``), concatenated, 3x3 conv -> ``C``,
   Dropout2d, 1x1 classifier.

Logits come out at the finest level, 4x the token grid; the segmentor upsamples them to the
image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offroadseg.models.decoders.pyramid import check_levels
from offroadseg.models.layers import align_features, conv_gn_relu, group_norm

__all__ = ["UPerHead", "vit_resamplers"]


def _deconv(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)


def vit_resamplers(channels: int) -> nn.ModuleList:
    """The x4, x2, x1, /2 resampling of the 4 pyramid levels (``channels`` kept)."""
    return nn.ModuleList(
        [
            nn.Sequential(
                _deconv(channels, channels), group_norm(channels), nn.GELU(), _deconv(channels, channels)
            ),
            _deconv(channels, channels),
            nn.Identity(),
            # ceil_mode: an odd grid side keeps its last row/column.
            nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True),
        ]
    )


class UPerHead(nn.Module):
    """UPerNet (FPN + PPM) on a pyramid built from 4 ViT blocks.

    Args:
        in_channels: Channels of the 4 input maps (earliest block first).
        num_classes: Number of output classes ``K``.
        channels: Internal width ``C`` (128 keeps CPU training affordable; UPerNet uses 512).
        pool_scales: Output sizes of the PPM branches on the coarsest level.
        dropout: Dropout2d probability before the classifier.

    Raises:
        ModelError: When ``in_channels`` does not have 4 entries.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 128,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_channels = check_levels("uper", in_channels)
        self.num_classes = num_classes
        c = channels
        self.lateral = nn.ModuleList(conv_gn_relu(ch, c, 1) for ch in self.in_channels)
        self.resample = vit_resamplers(c)
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_gn_relu(c, c, 1)) for s in pool_scales
        )
        self.ppm_bottleneck = conv_gn_relu(c * (len(self.ppm) + 1), c, 3)
        self.fpn = nn.ModuleList(conv_gn_relu(c, c, 3) for _ in range(3))
        self.fuse = conv_gn_relu(4 * c, c, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(c, num_classes, kernel_size=1)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Map 4 maps ``[B, C_i, h, w]`` to logits ``[B, K, 4h, 4w]``."""
        maps = align_features(features, self.in_channels, head="uper")
        levels = [rs(lat(f)) for f, lat, rs in zip(maps, self.lateral, self.resample, strict=True)]
        top = levels[3]
        pooled = [
            F.interpolate(branch(top), size=top.shape[-2:], mode="bilinear", align_corners=False)
            for branch in self.ppm
        ]
        levels[3] = self.ppm_bottleneck(torch.cat([top, *pooled], dim=1))
        for i in (2, 1, 0):  # top-down: coarse context into the finer levels
            levels[i] = levels[i] + F.interpolate(
                levels[i + 1], size=levels[i].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(x) for conv, x in zip(self.fpn, levels[:3], strict=True)] + [levels[3]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [
            F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in outs[1:]
        ]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, dim=1))))

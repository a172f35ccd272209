"""Image-guided refinement: sharpen a head's coarse logits with a light conv stem on the RGB image.

A ViT sees 14-pixel patches, so every head's logits are blurred at object borders (trail edges,
thin obstacles, puddle rims). :class:`RefineHead` wraps any head: a two-conv stem reads the
normalised image at 1/4 resolution, the head's logits are upsampled to that grid, both are
concatenated and passed through two 3x3 convs, and a 1x1 conv predicts a *correction* added to
the upsampled logits. The correction conv starts at zero, so training starts from the wrapped
head's own prediction and the refinement only learns where the image disagrees with it.

Contract: the class has ``uses_image = True``; the segmentor calls ``head(features, image)``
with ``image`` the normalised ``[B, 3, H, W]`` batch the features came from (padded or not:
the head pads it bottom/right, as the segmentor does, to the ``h * patch x w * patch`` area the
feature grid covers, so its logits cover that same area and the segmentor's upsample-and-crop
lines them up with the pixels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offroadseg.models.layers import conv_gn_relu, group_norm

__all__ = ["RefineHead"]


class RefineHead(nn.Module):
    """A head plus an image-guided refinement at 1/4 of the (padded) image resolution.

    Args:
        head: Any head: ``list[[B, C_i, h, w]] -> [B, K, h', w']``.
        num_classes: ``K``.
        patch_size: The backbone's patch size ``p`` (the feature grid covers ``h*p x w*p`` pixels).
        channels: Width of the image stem and the fusion convs.
    """

    uses_image = True

    def __init__(self, head: nn.Module, num_classes: int, *, patch_size: int, channels: int = 32) -> None:
        super().__init__()
        self.head = head
        self.num_classes = num_classes
        self.patch_size = int(patch_size)
        self.in_channels = list(getattr(head, "in_channels", []))
        half = max(channels // 2, 2)
        # Two stride-2 convs: 1/4 resolution, receptive field 7 px: edges and colour, not semantics.
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False),
            group_norm(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, channels, 3, stride=2, padding=1, bias=False),
            group_norm(channels),
            nn.ReLU(inplace=True),
        )
        self.fuse = nn.Sequential(
            conv_gn_relu(channels + num_classes, channels, 3), conv_gn_relu(channels, channels, 3)
        )
        self.correction = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)

    def _padded_image(self, image: Tensor, grid: tuple[int, int]) -> Tensor:
        """``image`` brought to the ``h*p x w*p`` area of the feature grid (bottom/right)."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"the refine head expects images [B, 3, H, W], got {tuple(image.shape)}")
        ph, pw = grid[0] * self.patch_size, grid[1] * self.patch_size
        h, w = image.shape[-2:]
        if h > ph or w > pw:
            raise ValueError(
                f"image {h}x{w} is larger than the {ph}x{pw} area its {grid[0]}x{grid[1]} feature grid covers "
                f"(patch {self.patch_size}); pass the image the features were computed from"
            )
        if (h, w) == (ph, pw):
            return image
        return F.pad(image, (0, pw - w, 0, ph - h), mode="replicate")

    def forward(self, features: list[Tensor], image: Tensor) -> Tensor:
        """Map maps ``[B, C_i, h, w]`` and the image ``[B, 3, H, W]`` to logits ``[B, K, ceil(h*p/4), ceil(w*p/4)]``."""
        coarse = self.head(features)
        image = self._padded_image(image.to(coarse.dtype), tuple(features[0].shape[-2:]))
        guide = self.stem(image)
        coarse = F.interpolate(coarse, size=guide.shape[-2:], mode="bilinear", align_corners=False)
        return coarse + self.correction(self.fuse(torch.cat([guide, coarse], dim=1)))

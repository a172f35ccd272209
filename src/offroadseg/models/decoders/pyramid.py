"""The ViT-to-pyramid step shared by the multi-block decoders.

A plain ViT returns every block on one ``h x w`` token grid. Segmentation decoders built for
CNN pyramids (UPerNet, DPT) get a 4-level pyramid from 4 blocks by resampling each to its own
stride (BEiT / ViTDet / DINOv2 segmentation): the earliest block is upsampled x4, the next x2,
the third kept, the last halved.
"""

from __future__ import annotations

from collections.abc import Sequence

from offroadseg.errors import ModelError

__all__ = ["PYRAMID_LEVELS", "check_levels"]

PYRAMID_LEVELS = 4  # maps a pyramid decoder reads: one per level (x4, x2, x1, /2)


def check_levels(head: str, in_channels: Sequence[int]) -> list[int]:
    """The channels of the 4 maps a pyramid decoder reads, or a one-line error with the fix.

    Raises:
        ModelError: When the backbone returns another number of maps than 4.
    """
    channels = list(in_channels)
    if len(channels) != PYRAMID_LEVELS:
        raise ModelError(
            f"head {head!r} needs {PYRAMID_LEVELS} backbone layers (one per pyramid level) but the "
            f"backbone returns {len(channels)}; fix: model.backbone.layers: [2, 5, 8, 11] "
            f"(4 blocks spread over the depth of a 12-block ViT) or model.backbone.layers: 4"
        )
    return channels

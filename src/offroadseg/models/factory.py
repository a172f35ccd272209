"""Build a segmentor (backbone + head) from a model config."""

from __future__ import annotations

import inspect
import warnings

from offroadseg.config import ModelConfig
from offroadseg.errors import ModelError
from offroadseg.models.backbone import create_backbone
from offroadseg.models.decoders.refine import RefineHead
from offroadseg.models.heads import create_head
from offroadseg.models.segmentor import Segmentor


def build_segmentor(cfg: ModelConfig, num_classes: int, *, for_checkpoint: bool = False) -> Segmentor:
    """Backbone from its weights source, head on top, frozen/unfrozen as configured.

    Args:
        cfg: the model section of a config.
        num_classes: K, the taxonomy's class count.
        for_checkpoint: build the backbone with random weights and no download, because a
            checkpoint's state dict is about to overwrite all of them.
    """
    weights = cfg.backbone.weights
    if for_checkpoint:
        weights = "random"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backbone = create_backbone(cfg.backbone.name, weights=weights, layers=cfg.backbone.layers)
    else:
        backbone = create_backbone(cfg.backbone.name, weights=weights, layers=cfg.backbone.layers)
    backbone.freeze()
    if not cfg.backbone.frozen:
        backbone.unfreeze()
    elif cfg.backbone.unfreeze_last > 0:
        backbone.unfreeze_last(cfg.backbone.unfreeze_last)
    head = create_head(
        cfg.head.name,
        backbone.out_channels,
        num_classes,
        channels=cfg.head.channels,
        dropout=cfg.head.dropout,
    )
    if cfg.head.refine:
        if "image" not in inspect.signature(Segmentor.forward_head).parameters:
            raise ModelError(
                "model.head.refine=true needs a segmentor that passes the image to the head, and this "
                "version's does not; fix: model.head.refine=false"
            )
        head = RefineHead(
            head, num_classes, patch_size=backbone.patch_size, channels=cfg.head.refine_channels
        )
    return Segmentor(backbone, head)

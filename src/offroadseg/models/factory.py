"""Build a segmentor (backbone + head) from a model config."""

from __future__ import annotations

import warnings

from offroadseg.config import BackboneConfig, ModelConfig
from offroadseg.errors import ConfigError
from offroadseg.models.backbone import DinoBackbone, create_backbone
from offroadseg.models.decoders.refine import RefineHead
from offroadseg.models.heads import create_head
from offroadseg.models.segmentor import Segmentor


def resolve_train_blocks(cfg: BackboneConfig, num_layers: int) -> int:
    """``model.backbone.train_blocks`` checked against the backbone's ``L`` blocks.

    ``frozen: false`` (the older way to say it) means ``L``; combined with another value it is refused.

    Raises:
        ConfigError: ``train_blocks`` outside ``0..L``, or contradicting ``frozen: false``.
    """
    k = cfg.train_blocks
    if not 0 <= k <= num_layers:
        raise ConfigError(
            f"model.backbone.train_blocks={k} is out of range for {cfg.name} ({num_layers} blocks); "
            f"use 0..{num_layers} (0 = frozen, {num_layers} = full fine-tuning)"
        )
    if not cfg.frozen:
        if k not in (0, num_layers):
            raise ConfigError(
                f"model.backbone.frozen=false means train_blocks={num_layers}, but train_blocks={k}; "
                f"fix: drop frozen and keep model.backbone.train_blocks={k}"
            )
        return num_layers
    return k


def configure_backbone(backbone: DinoBackbone, cfg: BackboneConfig) -> None:
    """Set what of ``backbone`` trains: the last ``train_blocks`` blocks, or LoRA adapters on them."""
    backbone.train_last(resolve_train_blocks(cfg, backbone.num_layers))
    lora = cfg.lora
    if lora.rank < 0:
        raise ConfigError(f"model.backbone.lora.rank={lora.rank} must be >= 0 (0 = no LoRA)")
    if lora.rank > 0:
        blocks = lora.blocks if lora.blocks is not None else (backbone.train_blocks or backbone.num_layers)
        backbone.add_lora(rank=lora.rank, alpha=lora.alpha, blocks=blocks)


def build_segmentor(cfg: ModelConfig, num_classes: int, *, for_checkpoint: bool = False) -> Segmentor:
    """Backbone from its weights source, head on top, trainable parts as configured.

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
    configure_backbone(backbone, cfg.backbone)
    head = create_head(
        cfg.head.name,
        backbone.out_channels,
        num_classes,
        channels=cfg.head.channels,
        dropout=cfg.head.dropout,
    )
    if cfg.head.refine:
        head = RefineHead(
            head, num_classes, patch_size=backbone.patch_size, channels=cfg.head.refine_channels
        )
    return Segmentor(backbone, head)

"""Optimizer parameter groups: a lower LR for the backbone, decaying with depth.

Adapting a pretrained ViT wants smaller steps than training a fresh head, and smaller still
for the early blocks, whose generic features a small dataset should disturb least (BEiT's
layer-wise LR decay). With ``L`` blocks, base LR ``lr``, ``m = backbone_lr_mult`` and
``d = layer_decay``:

============================  ====================
part                          LR
============================  ====================
head (and anything else)      ``lr``
final layernorm               ``lr * m``
block ``i`` (0-based)         ``lr * m * d ** (L - 1 - i)``
embeddings                    ``lr * m * d ** L``
============================  ====================

Only trainable parameters are grouped (LoRA adapters belong to their block). The LR
schedule multiplies every group's LR by the same factor (``LambdaLR``), so the ratios hold
through warmup and cosine decay.
"""

from __future__ import annotations

from torch import nn

__all__ = ["param_groups"]


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    backbone_lr_mult: float = 1.0,
    layer_decay: float = 1.0,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Parameter groups of a :class:`~offroadseg.models.segmentor.Segmentor` with per-depth LRs.

    Args:
        model: a segmentor (``model.backbone`` a :class:`~offroadseg.models.backbone.DinoBackbone`).
        lr: the base LR (the head's).
        backbone_lr_mult: ``m`` above; 1.0 gives the backbone the head's LR.
        layer_decay: ``d`` above; 1.0 turns layer-wise decay off.
        weight_decay: the same for every group.

    Returns:
        Groups (head first, then the backbone from the top) with ``params``, ``lr``, ``lr_scale``
        (``lr / base lr``), ``name`` and ``weight_decay``; groups without a trainable parameter are left out.

    Raises:
        ValueError: a non-positive multiplier or decay.
    """
    if backbone_lr_mult < 0 or not 0 < layer_decay <= 1:
        raise ValueError(
            f"need backbone_lr_mult >= 0 and 0 < layer_decay <= 1, got {backbone_lr_mult}, {layer_decay}"
        )
    backbone = model.backbone
    depth = backbone.num_layers
    parts: list[tuple[str, nn.Module, float]] = [
        ("backbone.layernorm", backbone.model.layernorm, backbone_lr_mult),
        *(
            (f"backbone.block{i}", backbone.blocks[i], backbone_lr_mult * layer_decay ** (depth - 1 - i))
            for i in reversed(range(depth))
        ),
        ("backbone.embeddings", backbone.model.embeddings, backbone_lr_mult * layer_decay**depth),
    ]
    seen: set[int] = set()
    groups: list[dict] = []

    def add(name: str, params: list[nn.Parameter], scale: float) -> None:
        params = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            groups.append(
                {
                    "params": params,
                    "lr": lr * scale,
                    "lr_scale": scale,
                    "name": name,
                    "weight_decay": weight_decay,
                }
            )

    backbone_params = {id(p) for p in backbone.parameters()}
    add("head", [p for p in model.parameters() if id(p) not in backbone_params], 1.0)
    for name, part, scale in parts:
        add(name, list(part.parameters()), scale)
    add("backbone.other", list(backbone.parameters()), backbone_lr_mult)  # anything a future arch adds
    return groups

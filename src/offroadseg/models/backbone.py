"""DINOv2 ViT backbones (transformers) that return dense feature maps for a segmentation head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from transformers import PreTrainedModel

from offroadseg.errors import ModelError, close_matches
from offroadseg.models.archs import ARCHS, ArchSpec
from offroadseg.models.weights import is_random_source, load_dinov2

__all__ = ["ARCHS", "ArchSpec", "DinoBackbone", "create_backbone"]


class DinoBackbone(nn.Module):
    """A DINOv2 ViT that returns NCHW patch-feature maps of chosen blocks.

    Like DINOv2's ``get_intermediate_layers(norm=True, reshape=True)``: the final layernorm is applied
    to every returned block, and the class and register tokens are dropped.

    Attributes:
        patch_size: input sides must be multiples of it (14).
        out_channels: channels of each returned map (the hidden size), one per layer.
        layer_indices: 0-based indices of the returned blocks, ascending.
        source: the weights source string the backbone was built from.
        is_random: whether the weights are random (tests and smoke runs only).
    """

    def __init__(self, model: PreTrainedModel, *, layer_indices: Sequence[int], source: str, is_random: bool):
        super().__init__()
        config = model.config
        self.model = model
        self.patch_size: int = int(config.patch_size)
        self.num_layers: int = int(config.num_hidden_layers)
        self.num_prefix_tokens: int = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        self.layer_indices: list[int] = list(layer_indices)
        self.out_channels: list[int] = [int(config.hidden_size)] * len(self.layer_indices)
        self.source = source
        self.is_random = is_random

    def forward(self, images: Tensor) -> list[Tensor]:
        """Feature maps of the chosen blocks.

        Args:
            images: ``[B, 3, H, W]``, ImageNet-normalised, H and W multiples of ``patch_size``.

        Returns:
            One ``[B, C, H / patch_size, W / patch_size]`` map per entry of ``layer_indices``.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {list(images.shape)}")
        height, width = images.shape[-2:]
        p = self.patch_size
        if height % p or width % p:
            padded = [*images.shape[:2], -(-height // p) * p, -(-width // p) * p]
            raise ValueError(
                f"image shape {list(images.shape)} is not a multiple of the patch size {p}; "
                f"pad or resize to {padded}"
            )
        out = self.model(pixel_values=images, output_hidden_states=True, return_dict=True)
        hidden_states = out.hidden_states  # [embeddings, block 0, ..., block L-1]
        grid = (height // p, width // p)
        maps = []
        for index in self.layer_indices:
            if index == self.num_layers - 1:
                tokens = out.last_hidden_state  # the model already applied the final layernorm
            else:
                tokens = self.model.layernorm(hidden_states[index + 1])
            patches = tokens[:, self.num_prefix_tokens :]
            maps.append(patches.reshape(patches.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous())
        return maps

    def freeze(self) -> None:
        """Make every parameter untrainable and switch to eval mode."""
        for param in self.parameters():
            param.requires_grad_(False)
        self.eval()

    def unfreeze(self) -> None:
        """Make every parameter trainable (embeddings included) for full fine-tuning.

        ``embeddings.mask_token`` stays frozen: it replaces masked patches in DINOv2's
        pre-training and is never used for an image, so it would get no gradient (and DDP
        stops on parameters that took no part in the loss).
        """
        self.requires_grad_(True)
        mask_token = getattr(self.model.embeddings, "mask_token", None)
        if mask_token is not None:
            mask_token.requires_grad_(False)
        self.train(self.training)

    def unfreeze_last(self, n: int) -> None:
        """Freeze all but the last ``n`` blocks and the final layernorm (trainable when ``n > 0``)."""
        if not 0 <= n <= self.num_layers:
            raise ValueError(f"unfreeze_last(n) needs 0 <= n <= {self.num_layers}, got {n}")
        was_training = self.training
        self.freeze()
        if n:
            for block in self.model.encoder.layer[self.num_layers - n :]:
                block.requires_grad_(True)
            self.model.layernorm.requires_grad_(True)
        self.train(was_training)

    def train(self, mode: bool = True) -> DinoBackbone:
        """Set train mode, keeping every fully frozen part (embeddings, block, norm) in eval mode."""
        if mode and not any(param.requires_grad for param in self.parameters()):
            mode = False  # fully frozen: the whole backbone, containers included, stays in eval mode
        super().train(mode)
        if mode:
            for part in self._parts():
                if not any(param.requires_grad for param in part.parameters()):
                    part.eval()
        return self

    def _parts(self) -> list[nn.Module]:
        return [self.model.embeddings, *self.model.encoder.layer, self.model.layernorm]

    def extra_repr(self) -> str:
        return f"layers={self.layer_indices}, source={self.source!r}, random={self.is_random}"


def _resolve_layers(layers: int | Sequence[int], num_layers: int) -> list[int]:
    if isinstance(layers, bool):
        raise ModelError(f"layers must be an int or a list of block indices, got {layers!r}")
    if isinstance(layers, int):
        if not 1 <= layers <= num_layers:
            raise ModelError(f"layers={layers}: the backbone has {num_layers} blocks; use 1..{num_layers}")
        return list(range(num_layers - layers, num_layers))
    indices = []
    for index in layers:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ModelError(f"layers={list(layers)!r}: block indices must be ints")
        if not -num_layers <= index < num_layers:
            raise ModelError(
                f"layer index {index} out of range for {num_layers} blocks (use {-num_layers}..{num_layers - 1})"
            )
        indices.append(index % num_layers)
    if not indices:
        raise ModelError("layers is empty: give a count or at least one block index")
    return sorted(set(indices))


def create_backbone(
    name: str,
    *,
    weights: str | None = None,
    layers: int | Sequence[int] = 1,
    frozen: bool = True,
) -> DinoBackbone:
    """Build a DINOv2 backbone.

    Args:
        name: a key of :data:`ARCHS`, e.g. ``"dinov2_vits14"``.
        weights: a weights source (Hub id, local directory, Meta ``.pth``, ``offline:dinov2-small``,
            ``random``); None uses the arch's Hub id (random for the test archs).
        layers: ``n`` returns the last n blocks; a sequence returns those block indices
            (negative counts from the end).
        frozen: freeze all parameters (the backbone stays in eval mode under ``.train()``).

    Raises:
        ModelError: unknown name, bad layer selection or unusable weights source.
    """
    if name not in ARCHS:
        raise ModelError(
            f"unknown backbone {name!r}{close_matches(name, list(ARCHS))}; valid: {', '.join(ARCHS)}"
        )
    spec = ARCHS[name]
    indices = _resolve_layers(layers, int(spec.config["num_hidden_layers"]))
    source = spec.default_weights if weights is None else weights
    model = load_dinov2(name, source)
    backbone = DinoBackbone(model, layer_indices=indices, source=source, is_random=is_random_source(source))
    if frozen:
        backbone.freeze()
    else:
        backbone.unfreeze()
        backbone.train()
    return backbone

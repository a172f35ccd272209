"""DINOv2 ViT backbones (transformers) that return dense feature maps for a segmentation head.

The forward pass is split at ``cache_start = L - train_blocks`` so that the frozen part can run
once and be cached (:mod:`offroadseg.training.features`)::

    images -> embeddings -> blocks[0 : start]      forward_prefix: frozen, cacheable
           -> blocks[start : L] -> final norm      forward_suffix: trained (train_blocks > 0)

``forward_prefix`` returns the token sequence *entering* block ``start`` (class, register and
patch tokens) and the pre-norm patch tokens of the returned blocks before ``start``;
``forward_suffix`` runs the rest and applies the final layernorm to every returned block, so
``forward(x) == forward_suffix(*forward_prefix(x), grid)`` exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
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
        num_layers: ``L``, the number of blocks.
        train_blocks: ``k``, how many of the last blocks (with the final norm) are adapted; 0 = frozen,
            ``L`` = the whole backbone, embeddings included (unless LoRA adapts it).
        lora_blocks: how many of the last blocks carry LoRA adapters (0: none).
        source: the weights source string the backbone was built from.
        is_random: whether the weights are random (tests and smoke runs only).
    """

    def __init__(self, model: PreTrainedModel, *, layer_indices: Sequence[int], source: str, is_random: bool):
        super().__init__()
        config = model.config
        self.model = model
        self.patch_size: int = int(config.patch_size)
        self.num_layers: int = int(config.num_hidden_layers)
        self.hidden_size: int = int(config.hidden_size)
        self.num_prefix_tokens: int = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        self.layer_indices: list[int] = list(layer_indices)
        self.out_channels: list[int] = [self.hidden_size] * len(self.layer_indices)
        self.train_blocks = 0
        self.lora_blocks = 0
        self.source = source
        self.is_random = is_random

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.encoder.layer

    @property
    def cache_start(self) -> int:
        """``L - train_blocks``: the first block that runs from the cache (``L``: none)."""
        return self.num_layers - self.train_blocks

    def grid(self, images: Tensor) -> tuple[int, int]:
        """Patch grid ``(H / p, W / p)`` of ``[B, 3, H, W]`` images; refuses sides that are not multiples."""
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
        return height // p, width // p

    def forward(self, images: Tensor) -> list[Tensor]:
        """Feature maps of the chosen blocks.

        Args:
            images: ``[B, 3, H, W]``, ImageNet-normalised, H and W multiples of ``patch_size``.

        Returns:
            One ``[B, C, H / patch_size, W / patch_size]`` map per entry of ``layer_indices``.
        """
        grid = self.grid(images)
        tokens, early = self.forward_prefix(images)
        return self.forward_suffix(tokens, early, grid)

    def cache_needs(self) -> list[int]:
        """Hidden-state indices the cache must hold for this backbone's ``train_blocks`` and layers.

        Hidden state ``h`` is the pre-norm token sequence entering block ``h`` (0: the embeddings'
        output; ``L``: the last block's output). Needed: ``cache_start`` (when ``< L``) and
        ``j + 1`` for every returned block ``j`` before it.
        """
        return hidden_states_needed(self.layer_indices, self.num_layers, self.train_blocks)

    def hidden_states(self, images: Tensor, indices: Sequence[int]) -> dict[int, Tensor]:
        """Pre-norm hidden states ``[B, P + h * w, C]`` (class + register tokens first) by index.

        Runs the embeddings and blocks ``[0, max(indices))`` only.

        Args:
            images: ``[B, 3, H, W]`` as in :meth:`forward`.
            indices: hidden-state indices in ``0..L`` (see :meth:`cache_needs`).
        """
        self.grid(images)
        wanted = set(indices)
        if not all(0 <= h <= self.num_layers for h in wanted):
            raise ValueError(f"hidden-state indices must be in 0..{self.num_layers}, got {sorted(wanted)}")
        tokens = self.model.embeddings(images)
        out = {0: tokens} if 0 in wanted else {}
        for index in range(max(wanted, default=0)):
            tokens = self.blocks[index](tokens)
            if index + 1 in wanted:
                out[index + 1] = tokens
        return out

    def forward_prefix(self, images: Tensor) -> tuple[Tensor | None, list[Tensor]]:
        """The frozen part: embeddings and blocks ``[0, cache_start)``.

        Runs without autograd when none of it is trainable (a frozen prefix needs no activations).

        Args:
            images: ``[B, 3, H, W]`` as in :meth:`forward`.

        Returns:
            ``tokens``: ``[B, P + h * w, C]`` entering block ``cache_start`` (P class + register
            tokens first), or None when ``cache_start == L``; ``early``: pre-norm patch tokens
            ``[B, h * w, C]`` of each returned block before ``cache_start``.
        """
        start = self.cache_start
        prefix = [self.model.embeddings, *self.blocks[:start]]
        trainable = any(p.requires_grad for part in prefix for p in part.parameters())
        with contextlib.nullcontext() if trainable else torch.no_grad():
            hidden = self.hidden_states(images, self.cache_needs())
        return self.split_cached(hidden)

    def split_cached(self, hidden: dict[int, Tensor]) -> tuple[Tensor | None, list[Tensor]]:
        """``(tokens entering cache_start or None, early pre-norm patch tokens)`` from hidden states.

        Args:
            hidden: at least the indices of :meth:`cache_needs`, each ``[B, P + h * w, C]``.
        """
        start = self.cache_start
        early = [hidden[j + 1][:, self.num_prefix_tokens :] for j in self.layer_indices if j < start]
        return (hidden[start] if start < self.num_layers else None), early

    def forward_suffix(
        self, tokens: Tensor | None, early: list[Tensor], grid: tuple[int, int]
    ) -> list[Tensor]:
        """The adapted part: blocks ``[cache_start, L)``, then the final norm on every returned block.

        Args:
            tokens: ``[B, P + h * w, C]`` entering block ``cache_start`` (None when it is ``L``).
            early: pre-norm patch tokens ``[B, h * w, C]`` of the returned blocks before ``cache_start``.
            grid: ``(h, w)``, the patch grid.

        Returns:
            One ``[B, C, h, w]`` map per entry of ``layer_indices``.
        """
        start = self.cache_start
        n_early = sum(1 for i in self.layer_indices if i < start)
        if len(early) != n_early or (tokens is None) != (start == self.num_layers):
            raise ValueError(
                f"cached inputs do not match cache_start={start}: {len(early)} early maps (expected {n_early}), "
                f"tokens {'absent' if tokens is None else 'present'}"
            )
        taps = list(early)
        for index in range(start, self.num_layers):
            tokens = self.blocks[index](tokens)
            if index in self.layer_indices:
                taps.append(tokens[:, self.num_prefix_tokens :])
        h, w = grid
        # LayerNorm is per token, so norming patch tokens alone equals norming the whole sequence.
        return [
            self.model.layernorm(t).reshape(t.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
            for t in taps
        ]

    def freeze(self) -> None:
        """Make every parameter untrainable and switch to eval mode."""
        self.train_last(0)

    def unfreeze(self) -> None:
        """Make every parameter trainable (embeddings included) for full fine-tuning."""
        self.train_last(self.num_layers)

    def train_last(self, k: int) -> None:
        """Train the last ``k`` blocks and the final layernorm; ``k = L`` trains the embeddings too.

        With LoRA adapters in place only the adapters and the final norm train (see :meth:`add_lora`).
        """
        if not 0 <= k <= self.num_layers:
            raise ValueError(f"train_last(k) needs 0 <= k <= {self.num_layers}, got {k}")
        was_training = self.training
        self.requires_grad_(False)
        self.train_blocks = k
        if k:
            for block in self.blocks[self.num_layers - k :]:
                block.requires_grad_(True)
            self.model.layernorm.requires_grad_(True)
            if k == self.num_layers:
                self.model.embeddings.requires_grad_(True)
                # mask_token replaces masked patches in DINOv2's pre-training and is never used for an
                # image: it would get no gradient (and DDP stops on parameters outside the loss).
                mask_token = getattr(self.model.embeddings, "mask_token", None)
                if mask_token is not None:
                    mask_token.requires_grad_(False)
        if self.lora_blocks:
            self._only_adapters()
        self.train(was_training)

    def add_lora(self, *, rank: int, alpha: float, blocks: int) -> None:
        """LoRA adapters (peft) on the attention and MLP linears of the last ``blocks`` blocks.

        Afterwards only the adapter weights and the final layernorm are trainable; the base weights
        of every block and the embeddings are frozen. ``lora_B`` starts at zero, so the output is
        unchanged until the adapters train.

        Raises:
            ModelError: peft is not installed, or ``rank``/``blocks`` out of range.
        """
        try:
            from peft import LoraConfig, inject_adapter_in_model  # noqa: PLC0415 (optional extra)
        except ImportError:
            raise ModelError(
                "model.backbone.lora needs the peft package; fix: pip install 'offroadseg[lora]' "
                "(or pip install peft), or remove model.backbone.lora"
            ) from None
        if not 1 <= blocks <= self.num_layers:
            raise ModelError(f"model.backbone.lora.blocks={blocks} is out of range; use 1..{self.num_layers}")
        if rank < 1:
            raise ModelError(f"model.backbone.lora.rank={rank} must be >= 1 (0 turns LoRA off)")
        # Every linear of a block is attention (q, k, v, out) or MLP; their names differ across
        # transformers versions, so the targets are found by type, not by name.
        first = self.num_layers - blocks
        targets = [
            f"encoder.layer.{first + i}.{name}"
            for i, block in enumerate(self.blocks[first:])
            for name, module in block.named_modules()
            if isinstance(module, nn.Linear)
        ]
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=targets)
        was_training = self.training
        inject_adapter_in_model(config, self.model)
        self.lora_blocks = blocks
        self._only_adapters()
        self.train(was_training)

    def _only_adapters(self) -> None:
        for name, param in self.model.named_parameters():
            param.requires_grad_("lora_" in name or name.startswith("layernorm."))

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
        return [self.model.embeddings, *self.blocks, self.model.layernorm]

    def extra_repr(self) -> str:
        return (
            f"layers={self.layer_indices}, train_blocks={self.train_blocks}, lora_blocks={self.lora_blocks}, "
            f"source={self.source!r}, random={self.is_random}"
        )


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


def hidden_states_needed(layer_indices: Sequence[int], num_layers: int, train_blocks: int) -> list[int]:
    """Hidden states a feature store must hold for a backbone that trains its last ``train_blocks``.

    ``cache_start = L - train_blocks``; needed: ``cache_start`` (when ``< L``) and ``j + 1`` for
    every returned block ``j`` before it (see :meth:`DinoBackbone.cache_needs`).
    """
    start = num_layers - train_blocks
    needs = {j + 1 for j in layer_indices if j < start}
    if start < num_layers:
        needs.add(start)
    return sorted(needs)


def resolve_layers(layers: int | Sequence[int], num_layers: int) -> list[int]:
    """``model.backbone.layers`` (a count of last blocks, or indices) -> sorted 0-based block indices."""
    return _resolve_layers(layers, num_layers)


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

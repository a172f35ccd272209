"""Meta's torch.hub DINOv2 checkpoints (``dinov2_vits14_pretrain.pth``) renamed to Hub key names."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from offroadseg.errors import ModelError

__all__ = ["meta_to_hf_state_dict", "unwrap_state_dict"]

_META_BLOCK_RENAMES = (
    ("norm1.", "norm1."),
    ("norm2.", "norm2."),
    ("attn.proj.", "attention.output.dense."),
    ("ls1.gamma", "layer_scale1.lambda1"),
    ("ls2.gamma", "layer_scale2.lambda1"),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
    ("mlp.w12.", "mlp.weights_in."),  # SwiGLU (ViT-g)
    ("mlp.w3.", "mlp.weights_out."),
)
_META_TOP_RENAMES = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "mask_token": "embeddings.mask_token",
    "register_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_META_BLOCK = re.compile(r"^blocks\.(?:\d+\.)?(\d+)\.(.+)$")  # also "blocks.<chunk>.<i>." layouts


def meta_to_hf_state_dict(state: Mapping[str, torch.Tensor], *, origin: str) -> dict[str, torch.Tensor]:
    """Rename a Meta DINOv2 state dict (``blocks.N.attn.qkv``...) to Hub key names.

    The fused ``qkv`` projection is split into ``query``, ``key`` and ``value``.

    Raises:
        ModelError: a key that has no Hub counterpart (named with ``origin``).
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key in _META_TOP_RENAMES:
            out[_META_TOP_RENAMES[key]] = value
            continue
        match = _META_BLOCK.match(key)
        if match is None:
            unknown.append(key)
            continue
        index, rest = match.groups()
        prefix = f"encoder.layer.{index}."
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            if value.shape[0] % 3:
                raise ModelError(f"{origin}: {key} has shape {tuple(value.shape)}, not a fused q,k,v")
            kind = rest.rsplit(".", 1)[1]
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                out[f"{prefix}attention.attention.{name}.{kind}"] = part.contiguous()
            continue
        for meta, hub in _META_BLOCK_RENAMES:
            if rest.startswith(meta):
                out[prefix + hub + rest[len(meta) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ModelError(
            f"{origin}: unexpected keys for a DINOv2 backbone: {', '.join(sorted(unknown)[:8])}"
            + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
        )
    return out


def unwrap_state_dict(state: object, *, origin: str) -> dict[str, torch.Tensor]:
    """The bare state dict of a Meta file (or of a training checkpoint that nests it)."""
    # Meta's hub files are a bare state dict; training checkpoints nest it (teacher/model/state_dict).
    if isinstance(state, Mapping):
        for wrapper in ("teacher", "model", "state_dict"):
            if wrapper in state and isinstance(state[wrapper], Mapping):
                state = state[wrapper]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{origin}: expected a state dict of tensors (as Meta's dinov2_*_pretrain.pth)")
    keys = list(state)
    if keys and all(k.startswith("backbone.") for k in keys):
        state = {k[len("backbone.") :]: v for k, v in state.items()}
    return dict(state)

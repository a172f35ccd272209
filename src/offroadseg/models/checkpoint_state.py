"""Slim checkpoint state: what training changed, plus where the rest comes from.

A frozen DINOv2 backbone is most of a model's bytes (ViT-B ~350 MB, ViT-g ~4.5 GB) and training
never changes it. A checkpoint therefore keeps only the *trained* tensors -- every parameter with
``requires_grad`` (head, unfrozen blocks, adapters) and the buffers of modules that own one -- and
records the backbone's weights source and the digest of the tensors it left out. Loading rebuilds
the backbone from the source, checks the digest, then loads the trained tensors on top.

The rule is generic on purpose: whatever is trainable when the checkpoint is written is kept,
whatever is frozen is rebuilt, so new ways of training part of the backbone need no change here.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from offroadseg.errors import ModelError
from offroadseg.models.weights.digest import state_digest

__all__ = [
    "CHECKPOINT_FORMAT",
    "RESUME_ONLY_KEYS",
    "backbone_record",
    "fill_frozen_state",
    "load_checkpoint_file",
    "slim_state_dict",
    "source_digest",
    "trained_keys",
]

# Lightning checkpoint entries only a resumed run needs (not inference).
RESUME_ONLY_KEYS = ("optimizer_states", "lr_schedulers", "loops")

# 1: whole Lightning state (backbone included). 2: slim, backbone rebuilt from its source.
CHECKPOINT_FORMAT = 2


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """A checkpoint file's dict, read without running any code it may hide.

    ``torch.load(weights_only=True)`` rebuilds only tensors and plain Python types; a pickle that
    names any other callable is refused before it is called.

    Raises:
        ModelError: missing, truncated, foreign or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"checkpoint {path} does not exist; fix: check the path (runs/<name>/checkpoints/best.ckpt)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        unsafe = "weights only load failed" in first.lower() or "unsupported global" in str(exc).lower()
        if unsafe:
            raise ModelError(
                f"{path} holds Python objects, not just weights, and loading it could run code: refused; "
                f"fix: use a checkpoint written by 'offroadseg train' or 'offroadseg export --format ckpt' "
                f"from a source you trust"
            ) from None
        raise ModelError(
            f"{path} is not a readable checkpoint ({first[:160]}); fix: pass a .ckpt file written by "
            f"'offroadseg train'"
        ) from None
    except Exception as exc:  # noqa: BLE001 - zip, EOF and torch errors all mean "not a checkpoint"
        raise ModelError(
            f"{path} is not a readable checkpoint (truncated or foreign: {type(exc).__name__}: "
            f"{str(exc)[:160]}); fix: pass a .ckpt file written by 'offroadseg train'"
        ) from None
    if not isinstance(ckpt, dict):
        raise ModelError(
            f"{path} is not an offroadseg checkpoint (it holds a {type(ckpt).__name__}); fix: pass a "
            f".ckpt file written by 'offroadseg train'"
        )
    return ckpt


def trained_keys(model: nn.Module) -> set[str]:
    """State-dict keys of ``model`` that training can change.

    Parameters with ``requires_grad``, and every buffer of a module that owns such a parameter
    (e.g. the running statistics of a trained BatchNorm).
    """
    keys = {name for name, param in model.named_parameters() if param.requires_grad}
    for prefix, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            dot = f"{prefix}." if prefix else ""
            keys.update(dot + name for name, _ in module.named_buffers(recurse=False))
    return keys


def _frozen_state(model: nn.Module) -> dict[str, Tensor]:
    keep = trained_keys(model)
    return {k: v for k, v in model.state_dict().items() if k not in keep}


def source_digest(model: nn.Module) -> str:
    """sha256 of the tensors a slim checkpoint leaves out (those rebuilt from the weights source)."""
    return state_digest(_frozen_state(model))


def backbone_record(model: nn.Module, digest: str, *, embedded: bool = False) -> dict[str, Any]:
    """The checkpoint's note of where the untrained weights come from.

    Args:
        model: the segmentor (``model.backbone.source`` names the weights source).
        digest: :func:`source_digest` of ``model`` as built from that source.
        embedded: the checkpoint carries the whole state (no source needed to load it).
    """
    backbone = model.backbone
    return {
        "source": str(getattr(backbone, "source", "")),
        "digest": digest,
        "embedded": bool(embedded),
        "frozen_tensors": len(_frozen_state(model)),
    }


def slim_state_dict(state: Mapping[str, Tensor], model: nn.Module, *, prefix: str = "") -> dict[str, Tensor]:
    """``state`` without the entries of ``model`` that are frozen.

    Args:
        state: a state dict holding ``model``'s entries under ``prefix`` (and maybe others, kept).
        model: the module whose frozen entries are dropped.
        prefix: where ``model`` sits in ``state`` (``"model."`` in a LightningModule's state).
    """
    keep = trained_keys(model)
    drop = {prefix + k for k in model.state_dict() if k not in keep}
    return {k: v for k, v in state.items() if k not in drop}


def fill_frozen_state(
    state: dict[str, Tensor], model: nn.Module, *, digest: str, origin: str, prefix: str = ""
) -> dict[str, Tensor]:
    """Complete a slim ``state`` with ``model``'s own frozen tensors, after checking their digest.

    Args:
        state: the checkpoint's (slim) state dict.
        model: the module rebuilt from the checkpoint's config and weights source.
        digest: the digest the checkpoint recorded for the frozen tensors.
        origin: names the checkpoint in errors.
        prefix: where ``model`` sits in ``state``.

    Returns:
        A full state dict for ``model`` under ``prefix`` (other entries of ``state`` kept).

    Raises:
        ModelError: the rebuilt weights differ from the ones the checkpoint was trained on, or the
            checkpoint lacks a trained tensor the config asks for.
    """
    source = str(getattr(getattr(model, "backbone", None), "source", "?"))
    actual = source_digest(model)
    if actual != digest:
        raise ModelError(
            f"{origin}: backbone weights source {source!r} now gives different weights (digest "
            f"{actual[:12]}, the checkpoint was trained on {digest[:12]}); fix: point "
            f"model.backbone.weights at the weights it was trained with, or on the training machine "
            f"write a self-contained file: offroadseg export {origin} --format ckpt --embed-backbone "
            f"--out model.ckpt"
        )
    keep = trained_keys(model)
    missing = sorted(prefix + k for k in keep if prefix + k not in state)
    if missing:
        raise ModelError(
            f"{origin}: has no trained weights for {', '.join(missing[:4])}"
            + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else "")
            + "; fix: use the config it was trained with (model.backbone.* and model.head.*)"
        )
    full = dict(state)
    for key, value in model.state_dict().items():
        if key not in keep:
            full[prefix + key] = value
    return full


def slim_checkpoint(checkpoint: dict[str, Any], model: nn.Module, *, digest: str) -> None:
    """Drop ``model``'s frozen tensors from a Lightning checkpoint dict and record their source.

    ``model`` sits at ``model.`` in the LightningModule's state dict; ``digest`` is
    :func:`source_digest` of it (constant during training, so the caller computes it once).
    """
    checkpoint["state_dict"] = slim_state_dict(checkpoint["state_dict"], model, prefix="model.")
    checkpoint.setdefault("offroadseg", {})["backbone"] = backbone_record(model, digest)


def restore_checkpoint(checkpoint: dict[str, Any], model: nn.Module, *, origin: str) -> None:
    """Refill a slim Lightning checkpoint dict's state with ``model``'s frozen tensors (for resume)."""
    record = checkpoint.get("offroadseg", {}).get("backbone")
    if record is None or record.get("embedded"):
        return  # a whole state: nothing to rebuild
    checkpoint["state_dict"] = fill_frozen_state(
        checkpoint["state_dict"], model, digest=record["digest"], origin=origin, prefix="model."
    )

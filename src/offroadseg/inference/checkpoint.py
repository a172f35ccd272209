"""Rebuild a trained model from a checkpoint: its trained weights, config and weights source.

A training checkpoint is slim (see :mod:`offroadseg.models.checkpoint_state`): the frozen
backbone is rebuilt from the weights source named inside, and its digest is checked before the
trained tensors are loaded on top. A self-contained file (``export --format ckpt
--embed-backbone``) carries every tensor and needs no source. Files are read with
``weights_only=True``: loading one never runs code.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from offroadseg import __version__
from offroadseg.config import Config, config_from_dict
from offroadseg.errors import ModelError
from offroadseg.models.checkpoint_state import (
    CHECKPOINT_FORMAT,
    backbone_record,
    fill_frozen_state,
    load_checkpoint_file,
    source_digest,
)
from offroadseg.models.factory import build_segmentor
from offroadseg.models.segmentor import Segmentor
from offroadseg.models.weights import is_random_source
from offroadseg.taxonomy import Taxonomy, taxonomy_from_dict

__all__ = [
    "CHECKPOINT_FORMAT",
    "LoadedModel",
    "load_checkpoint",
    "read_checkpoint",
    "save_inference_checkpoint",
]


@dataclass
class LoadedModel:
    """A segmentor in eval mode with the config and taxonomy it was trained with."""

    model: Segmentor
    config: Config
    taxonomy: Taxonomy
    path: Path
    hyper_parameters: dict | None = None  # the training module's arguments (written back on export)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, read safely and checked to be an offroadseg checkpoint of a known format."""
    path = Path(path)
    ckpt = load_checkpoint_file(path)
    meta = ckpt.get("offroadseg")
    if not isinstance(meta, dict) or "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise ModelError(
            f"{path} is not an offroadseg checkpoint (no offroadseg metadata); fix: pass a .ckpt file "
            f"written by 'offroadseg train'"
        )
    if meta.get("format") == 1:
        raise ModelError(
            f"{path} is an old-format offroadseg checkpoint (format 1, offroadseg {meta.get('version')}: "
            f"whole training state, backbone included), this version reads format {CHECKPOINT_FORMAT} "
            f"(trained weights + backbone source); fix: retrain with this version, or use offroadseg "
            f"{meta.get('version')} to predict with it"
        )
    if meta.get("format") != CHECKPOINT_FORMAT or not isinstance(meta.get("backbone"), dict):
        raise ModelError(
            f"{path} has checkpoint format {meta.get('format')!r} (offroadseg {meta.get('version')}), this "
            f"version reads format {CHECKPOINT_FORMAT}; fix: use the offroadseg version that wrote it"
        )
    return ckpt


def _build_from_source(cfg: Config, num_classes: int, record: dict, path: Path) -> Segmentor:
    try:
        return build_segmentor(cfg.model, num_classes)
    except ModelError as exc:
        raise ModelError(
            f"{path} needs its backbone weights source {record.get('source')!r}, which could not be "
            f"loaded ({exc}); fix: make that source available here (model.backbone.weights), or on the "
            f"training machine write a self-contained file: offroadseg export {path.name} --format ckpt "
            f"--embed-backbone --out model.ckpt"
        ) from None


def _build_empty(cfg: Config, num_classes: int) -> Segmentor:
    # Every tensor comes from the file: build on the meta device (no weights allocated or
    # initialised) and let load_state_dict(assign=True) put the file's tensors in place.
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return build_segmentor(cfg.model, num_classes, for_checkpoint=True)


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the segmentor a checkpoint describes and load its weights.

    Raises:
        ModelError: unreadable/unsafe/foreign file, old format, backbone source unavailable or
            giving other weights than the ones the model was trained on.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    record = ckpt["offroadseg"]["backbone"]
    cfg = config_from_dict(hp["config"])
    taxonomy = taxonomy_from_dict(hp["taxonomy"])
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if record.get("embedded"):
        model = _build_empty(cfg, taxonomy.num_classes)
        _load_exact(model, state, path, assign=True)
        # built without its source: name the one the weights came from, not the placeholder
        model.backbone.source = str(record.get("source", ""))
        model.backbone.is_random = is_random_source(model.backbone.source)
        if source_digest(model) != record.get("digest"):
            raise ModelError(
                f"{path}: its embedded backbone does not match the digest recorded beside it (the file "
                f"was altered or damaged); fix: export it again"
            )
    else:
        model = _build_from_source(cfg, taxonomy.num_classes, record, path)
        full = fill_frozen_state(state, model, digest=record.get("digest", ""), origin=str(path))
        _load_exact(model, full, path)
    model.eval().to(device)
    return LoadedModel(model, cfg, taxonomy, path, hyper_parameters=hp)


def _load_exact(model: Segmentor, state: dict, path: Path, *, assign: bool = False) -> None:
    expected = model.state_dict()
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected or wrong:
        raise ModelError(
            f"{path}: weights do not match the model its config describes (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}, wrong shape {wrong[:4]}); fix: use the offroadseg version "
            f"that wrote it"
        )
    model.load_state_dict(state, strict=True, assign=assign)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ModelError(f"{path}: no weights in the file for {left[:4]}; fix: export it again")


def save_inference_checkpoint(
    loaded: LoadedModel, path: str | Path, *, embed_backbone: bool
) -> dict[str, Any]:
    """Write a checkpoint for inference only (no optimizer or loop state), atomically.

    Args:
        loaded: the model to write (from :func:`load_checkpoint`).
        path: the ``.ckpt`` to write.
        embed_backbone: carry the frozen backbone too, so the file loads on a machine without the
            weights source (bigger); otherwise only the trained tensors.

    Returns:
        The file's ``offroadseg`` metadata.
    """
    from offroadseg.atomic import atomic_save
    from offroadseg.models.checkpoint_state import slim_state_dict

    model = loaded.model
    digest = source_digest(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if not embed_backbone:
        state = slim_state_dict(state, model)
    meta = {
        "version": __version__,
        "format": CHECKPOINT_FORMAT,
        "history": [],
        "backbone": backbone_record(model, digest, embedded=embed_backbone),
    }
    hp = loaded.hyper_parameters or {
        "config": loaded.config.to_dict(),
        "class_names": loaded.taxonomy.names,
        "taxonomy": loaded.taxonomy.to_dict(),
    }
    ckpt = {
        "offroadseg": meta,
        "hyper_parameters": hp,
        "state_dict": {f"model.{k}": v for k, v in state.items()},
    }
    atomic_save(path, lambda tmp: torch.save(ckpt, tmp))
    return meta

"""Rebuild a trained model from a checkpoint file alone (weights + resolved config)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from offroadseg.config import Config, config_from_dict
from offroadseg.errors import ModelError
from offroadseg.models.factory import build_segmentor
from offroadseg.models.segmentor import Segmentor
from offroadseg.taxonomy import Taxonomy, taxonomy_from_dict

CHECKPOINT_FORMAT = 1


@dataclass
class LoadedModel:
    """A segmentor in eval mode with the config and taxonomy it was trained with."""

    model: Segmentor
    config: Config
    taxonomy: Taxonomy
    path: Path


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, checked to be an offroadseg checkpoint of a known format."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"checkpoint {path} does not exist; fix: check the path (runs/<name>/checkpoints/best.ckpt)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise ModelError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc}); fix: pass a .ckpt file "
            f"written by 'offroadseg train'"
        ) from None
    meta = ckpt.get("offroadseg") if isinstance(ckpt, dict) else None
    if not meta or "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise ModelError(
            f"{path} is not an offroadseg checkpoint (no offroadseg metadata); fix: pass a .ckpt file "
            f"written by 'offroadseg train'"
        )
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(
            f"{path} has checkpoint format {meta.get('format')!r} (offroadseg {meta.get('version')}), this "
            f"version reads format {CHECKPOINT_FORMAT}; fix: use the offroadseg version that wrote it"
        )
    return ckpt


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Build the segmentor from the checkpoint's config and load all its weights."""
    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    cfg = config_from_dict(hp["config"])
    taxonomy = taxonomy_from_dict(hp["taxonomy"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_segmentor(cfg.model, taxonomy.num_classes, for_checkpoint=True)
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(
            f"{path}: weights do not match the model its config describes (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); fix: use the offroadseg version that wrote it"
        )
    model.eval().to(device)
    return LoadedModel(model, cfg, taxonomy, Path(path))

"""``--resume`` checks: the checkpoint exists, reads, and belongs to the same config.

A resume that silently trains a different config (another lr, another dataset) would
produce a history that is neither run, so differing keys are refused unless ``--force``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from offroadseg.config import Config
from offroadseg.errors import ConfigError, ModelError

__all__ = ["RESUMABLE_KEYS", "check_resume", "config_diff"]

# Keys a resume may change: how long to train and how to run, not what is trained.
RESUMABLE_KEYS = frozenset(
    {
        "train.epochs",
        "run.dir",
        "run.progress",
        "run.logger",
        "data.num_workers",
        "data.cache.dir",
        "data.root",
    }
)


def config_diff(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ between two config dicts, with (old, new) values."""
    out = []
    for key in sorted(set(old) | set(new)):
        full = f"{prefix}{key}"
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, full + ".")
        elif a != b:
            out.append((full, a, b))
    return out


def _saved_config(last: Path, checkpoint: dict) -> dict | None:
    config = (checkpoint.get("hyper_parameters") or {}).get("config")
    if isinstance(config, dict):
        return config
    on_disk = last.parent.parent / "config.yaml"  # <run.dir>/config.yaml, written at the start of the run
    return yaml.safe_load(on_disk.read_text()) if on_disk.is_file() else None


def check_resume(cfg: Config, last: Path, *, force: bool = False) -> int:
    """Refuse a resume that cannot continue this run.

    Returns:
        The number of epochs ``last`` has finished (its history rows).

    Raises:
        ConfigError: no checkpoint, or the config differs (without ``force``).
        ModelError: the checkpoint is unreadable (truncated, not a checkpoint).
    """
    if not last.is_file():
        raise ConfigError(f"--resume: {last} does not exist; fix: train without --resume first")
    try:
        checkpoint = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise ModelError(
            f"--resume: {last} is not a readable checkpoint ({type(exc).__name__}); "
            "fix: delete it and train without --resume, or copy best.ckpt over it to resume from the best epoch"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "loops" not in checkpoint:
        raise ModelError(
            f"--resume: {last} is not a training checkpoint (no training state); "
            "fix: resume from the last.ckpt a run wrote, or train without --resume"
        )
    history = (checkpoint.get("offroadseg") or {}).get("history")
    finished = len(history) if isinstance(history, list) else int(checkpoint.get("epoch", -1)) + 1
    saved = _saved_config(last, checkpoint)
    if saved is None or force:
        return finished
    diff = [d for d in config_diff(saved, cfg.to_dict()) if d[0] not in RESUMABLE_KEYS]
    if diff:
        listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in diff)
        raise ConfigError(
            f"--resume: the config differs from the one {last} was trained with: {listed}; "
            "fix: restore those values, or pass --force to resume with the new ones"
        )
    return finished

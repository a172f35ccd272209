"""Callbacks: the run directory's history files, and atomic checkpoint writes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from offroadseg.data.io import atomic_save, atomic_write_text
from offroadseg.training.checkpoint_state import RESUME_ONLY_KEYS, load_checkpoint_file

HISTORY_FIELDS = [
    "epoch",
    "train_loss",
    "val_loss",
    "train_miou",
    "val_miou",
    "train_dice",
    "val_dice",
    "train_acc",
    "val_acc",
    "val_batch_mean_iou",
    "lr",
    "epoch_time_s",
]


def write_history(run_dir: Path, history: list[dict]) -> None:
    """``history.json`` and ``history.csv`` in the run directory, atomically."""
    atomic_write_text(run_dir / "history.json", json.dumps(history, indent=2))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in HISTORY_FIELDS})
    atomic_write_text(run_dir / "history.csv", buf.getvalue())


class HistoryWriter(L.Callback):
    """Writes the module's history after every validation epoch (rank 0 only)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        write_history(self.run_dir, pl_module.history)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are streamed to a temporary file and renamed into place, so a crash or a full
    disk never leaves a truncated ``best.ckpt`` where a good one was; they are read back with
    ``weights_only=True``, so resuming from a file never runs code hidden in it.

    Only the files named in ``resume_files`` (``last.ckpt``) keep the optimizer, scheduler and
    loop state that ``--resume`` needs; the others (``best.ckpt``) are for inference and carry the
    trained weights alone, which keeps them small (Adam's two moments would triple them).
    """

    def __init__(self, resume_files: tuple[str, ...] = ("last.ckpt",)) -> None:
        super().__init__()
        self.resume_files = tuple(resume_files)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if Path(path).name not in self.resume_files:
            checkpoint = {k: v for k, v in checkpoint.items() if k not in RESUME_ONLY_KEYS}
        atomic_save(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint_file(path)

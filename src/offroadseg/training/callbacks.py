"""Callbacks: the run directory's history files, the non-finite loss guard, and atomic checkpoint writes."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from offroadseg.data.io import atomic_write_bytes, atomic_write_text
from offroadseg.errors import TrainingError

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


class FiniteLossGuard(L.Callback):
    """Stops the run at the first NaN/inf training loss, before its backward pass.

    The error names the optimizer step, the epoch and the batch's image files; no
    optimizer step is taken with the bad loss, so ``last.ckpt`` (written at the end of
    the previous epoch) is the last good state. Under DDP every rank learns that one rank
    saw a bad loss (one all-reduce of a flag per step), so no rank waits forever.
    """

    def __init__(self, last_checkpoint: Path | None = None) -> None:
        self.last_checkpoint = last_checkpoint
        self._batch: Any = None
        self._batch_idx = -1

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        value = float(loss.detach().float().reshape(-1)[0])
        files = self._files(trainer)
        kept = (
            f"{self.last_checkpoint} keeps the last finished epoch"
            if self.last_checkpoint is not None and Path(self.last_checkpoint).is_file()
            else "no epoch had finished, so no checkpoint was written"
        )
        raise TrainingError(
            f"training loss is {value} (not finite) at optimizer step {trainer.global_step}, epoch "
            f"{trainer.current_epoch + 1}, batch {self._batch_idx} (files: {files}); the run stopped and {kept}; "
            "fix: lower train.lr, set train.gradient_clip (e.g. 1.0) or train.precision=32, and check those files"
        )

    def _files(self, trainer: L.Trainer) -> str:
        batch = self._batch if isinstance(self._batch, dict) else {}
        names = list(batch.get("name", []))
        samples = getattr(trainer.datamodule, "train_samples", None)
        index = batch.get("index")
        if samples is not None and index is not None:
            with contextlib.suppress(IndexError, AttributeError, TypeError, ValueError):
                names = [str(samples[int(i)].image) for i in index]
        return ", ".join(map(str, names)) if names else "unknown (this rank's batch was finite)"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temporary file first and are renamed into place, so a crash or a
    full disk never leaves a truncated ``best.ckpt`` where a good one was."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(path, buf.getvalue())

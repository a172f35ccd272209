"""Callbacks: the run directory's history files, the non-finite loss guard, checkpoints that survive a moved
run folder, and atomic checkpoint writes."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from offroadseg.atomic import atomic_save, atomic_write_text
from offroadseg.errors import TrainingError
from offroadseg.models.checkpoint_state import RESUME_ONLY_KEYS, load_checkpoint_file

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


class RunDirCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose state survives a moved or renamed run folder.

    Lightning restores the best score only when the checkpoint folder is the one it was saved from;
    after ``mv runs/a runs/b`` a ``--resume`` would start with no best score, and the next epoch
    would overwrite ``best.ckpt`` even when worse. Here the saved paths are re-rooted to the current
    folder (same file names), so the best score and the best file carry over.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("dirpath")
        if self.dirpath is not None and saved is not None and saved != self.dirpath:
            here = Path(self.dirpath)

            def moved(path: str | None) -> str | None:
                return str(here / Path(path).name) if path else path

            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                "best_model_path": moved(state_dict.get("best_model_path")),
                "kth_best_model_path": moved(state_dict.get("kth_best_model_path")),
                "last_model_path": moved(state_dict.get("last_model_path")),
                "best_k_models": {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()},
            }
        super().load_state_dict(state_dict)


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

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Every epoch must have validated (one history row each): say so loudly if one did not."""
        expected = trainer.current_epoch + 1
        if trainer.num_val_batches and sum(trainer.num_val_batches) > 0 and len(pl_module.history) < expected:
            raise RuntimeError(
                f"epoch {expected} ended without validation ({len(pl_module.history)} history rows): the "
                f"training loader's length changed between epochs (Lightning counts it once); this is a bug"
            )


class EpochReport(L.Callback):
    """Calls ``on_epoch(row)`` after every validation epoch (rank 0 only), for progress lines of runs
    that show no bar (``cv`` folds, ``tune`` trials): ``row`` is the epoch's history row (``epoch``,
    ``val_miou``, ``epoch_time_s``, ...) plus ``epochs``, the most epochs the run may take."""

    def __init__(self, on_epoch) -> None:
        self.on_epoch = on_epoch

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        history = getattr(pl_module, "history", None)
        if trainer.sanity_checking or not trainer.is_global_zero or not history:
            return
        self.on_epoch({**history[-1], "epochs": trainer.max_epochs})


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

"""``train(config)``: one call from a resolved config to a finished run directory."""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from offroadseg.atomic import atomic_write_text
from offroadseg.config import Config, dump_config
from offroadseg.data.stats import count_pixels
from offroadseg.errors import ConfigError
from offroadseg.losses import class_weights_from_counts
from offroadseg.metrics import SegmentationScores, best_epoch, json_ready
from offroadseg.progress import ProgressFn, StepProgress
from offroadseg.training.callbacks import (
    AtomicCheckpointIO,
    EpochReport,
    FiniteLossGuard,
    HistoryWriter,
    RunDirCheckpoint,
    write_history,
)
from offroadseg.training.datamodule import SegDataModule
from offroadseg.training.hardware import check_devices, enable_tf32, on_cuda, resolve_precision
from offroadseg.training.module import SegmentationModule
from offroadseg.training.resume import check_resume
from offroadseg.training.schedule import lr_curve
from offroadseg.training.seeding import RngState, TransformSeeder, seed_run


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_val_miou: float | None
    history: list[dict] = field(default_factory=list)
    val_scores: dict | None = None
    class_weights: list[float] | None = None
    caches: dict | None = None  # CacheReport.to_dict(): stores used/built, sizes, messages
    world_size: int = 1  # processes that trained (DDP)
    model_checkpoint: Path | None = None  # the one train.checkpoint selects (best.ckpt | last.ckpt)


CLASS_WEIGHT_MODE = {"auto": "inverse", "sqrt": "sqrt"}  # loss.class_weights -> class_weights_from_counts


def compute_class_weights(
    dm: SegDataModule, max_weight: float, mode: str = "inverse", *, progress: ProgressFn | None = None
) -> list[float]:
    """Loss weights from the training masks' pixel frequencies (``mode``: inverse | sqrt; reads every mask)."""
    counts, _, _ = count_pixels(
        dm.train_samples, dm.taxonomy, unknown=dm.cfg.data.unknown_values, progress=progress
    )
    return class_weights_from_counts(counts, max_weight=max_weight, mode=mode).tolist()


def build_module(cfg: Config, dm: SegDataModule, class_weights: list[float] | None) -> SegmentationModule:
    """The LightningModule for a config and its data (taxonomy, class names, weights)."""
    return SegmentationModule(
        cfg.to_dict(),
        dm.taxonomy.names,
        class_weights=class_weights,
        ignore_index=dm.taxonomy.ignore_index,
        taxonomy=dm.taxonomy.to_dict(),
    )


class _AppendingCSVWriter(ExperimentWriter):
    """Lightning's CSV writer deletes the ``logs/metrics.csv`` it finds when it starts, so a resumed run
    lost the rows of its first epochs; this one keeps the file and appends to it under its header."""

    def _check_log_dir_exists(self) -> None:  # called by __init__: instead of deleting, adopt the header
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(next(csv.reader(f), []))


class _ResumedCSVLogger(CSVLogger):
    """``CSVLogger`` for a resumed run: its writer appends to the run's ``metrics.csv``."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingCSVWriter(log_dir=self.log_dir)
        return self._experiment


def _logger(cfg: Config, run_dir: Path, *, resume: bool = False):
    """Lightning logger of ``run.logger``: CSV (always available; a resume appends) or TensorBoard event
    files (a resume adds a file)."""
    if cfg.run.logger == "tensorboard":
        try:
            import tensorboard  # noqa: F401, PLC0415 (an optional extra)
        except ImportError:
            raise ConfigError(
                "run.logger=tensorboard needs the tensorboard package; "
                "fix: pip install 'offroadseg[tensorboard]' or use run.logger=csv"
            ) from None
        return TensorBoardLogger(run_dir, name="logs", version="", default_hp_metric=False)
    return (_ResumedCSVLogger if resume else CSVLogger)(run_dir, name="logs", version="")


def build_trainer(
    cfg: Config, run_dir: Path, *, extra_callbacks: list | None = None, resume: bool = False
) -> L.Trainer:
    """A Lightning Trainer with the run directory's checkpoints, history and log.

    Two checkpoint callbacks: ``best.ckpt`` when val mIoU improves, and ``last.ckpt`` at the end
    of every epoch (Lightning's ``save_last`` only copies the latest *saved* checkpoint, which
    with ``save_top_k=1`` is the best one). ``last`` is listed second so the file carries the
    best-checkpoint callback's updated state (best score) for a resume; with ``resume`` the CSV log
    appends to the run's ``logs/metrics.csv``.
    """
    t = cfg.train
    ckpt_dir = run_dir / "checkpoints"
    callbacks: list = [
        RunDirCheckpoint(
            dirpath=ckpt_dir,
            filename="best",
            monitor="val_miou",
            mode="max",
            save_last=False,
            save_top_k=1,
            enable_version_counter=False,
        ),
        RunDirCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False),
        HistoryWriter(run_dir),
        FiniteLossGuard(ckpt_dir / "last.ckpt"),
        TransformSeeder(t.seed),
        RngState(),
    ]
    if t.checkpoint == "ema":
        from offroadseg.training.averaging import EMAOfTrainable  # noqa: PLC0415

        callbacks.append(EMAOfTrainable(t.ema_decay))
    if t.early_stopping_patience > 0:
        callbacks.append(EarlyStopping(monitor="val_miou", mode="max", patience=t.early_stopping_patience))
    if cfg.run.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    callbacks += extra_callbacks or []
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=t.epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=resolve_precision(t.precision, t.accelerator, model=cfg.model),
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip or None,
        limit_train_batches=_limit(t.limit_train_batches),
        limit_val_batches=_limit(t.limit_val_batches),
        num_sanity_val_steps=0,
        # "warn": ops without a deterministic kernel (CUDA bilinear-upsample backward) warn, not stop
        deterministic="warn" if t.deterministic else None,
        benchmark=False if t.deterministic else None,
        logger=_logger(cfg, run_dir, resume=resume),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=cfg.run.progress,
        enable_model_summary=False,
        log_every_n_steps=10,
    )


def _limit(value: int | float) -> int | float | None:
    """Lightning's reading: an int counts batches (1 is one batch), the float 1.0 is all of them."""
    return None if isinstance(value, float) and value == 1.0 else value


def prepare_hardware(cfg: Config) -> None:
    """Check the config against this machine (one clear error, before any work) and set it up."""
    check_devices(cfg.train.accelerator, cfg.train.devices)
    resolve_precision(cfg.train.precision, cfg.train.accelerator)
    if on_cuda(cfg.train.accelerator):
        enable_tf32()


def prepare(cfg: Config) -> SegDataModule:
    """What every training run does first, in one place (``train``, ``bench train``): check the config
    against this machine, seed every generator, and build the data module."""
    prepare_hardware(cfg)
    if cfg.train.checkpoint == "ema":
        from offroadseg.training.averaging import check_ema_decay  # noqa: PLC0415

        check_ema_decay(cfg.train.ema_decay)
    seed_run(cfg.train.seed)
    return SegDataModule(cfg)


def train(
    cfg: Config,
    *,
    resume: bool = False,
    force: bool = False,
    progress: StepProgress | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train from a config; writes everything into ``cfg.run.dir``.

    Args:
        cfg: the resolved config.
        resume: continue from ``<run.dir>/checkpoints/last.ckpt`` (the end of the last finished epoch).
        force: resume even when the config differs from the checkpoint's (keys listed otherwise).
        progress: ``progress(description)`` returns a ``(done, total)`` callback for the cache builds
            (decoding, the backbone pass), or None for silence.
        on_epoch: called after every validation epoch with its history row plus ``epochs`` (the
            most the run may take): progress for callers that show no bar.
    """
    run_dir = Path(cfg.run.dir)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume:
        check_resume(cfg, last, force=force)
    dm = prepare(cfg)
    weights = None
    mode = CLASS_WEIGHT_MODE.get(cfg.loss.class_weights)
    if mode:
        shown = progress is not None and rank_zero_only.rank == 0
        weights = compute_class_weights(
            dm, cfg.loss.max_weight, mode, progress=progress("class weights") if shown else None
        )
    module = build_module(cfg, dm, weights)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))

    from offroadseg.training.caches import attach_caches  # noqa: PLC0415 (keeps import light)

    cache_report = attach_caches(cfg, dm, module, progress=progress)
    extra = [EpochReport(on_epoch)] if on_epoch else None
    trainer = build_trainer(cfg, run_dir, extra_callbacks=extra, resume=resume)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        if resume:  # the run's own folders: a resume expects them full (and the CSV log appends)
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None, weights_only=False)
    if not trainer.is_global_zero:
        return TrainResult(run_dir, None, None, None)
    best = ckpt_dir / "best.ckpt"
    # last/ema: last.ckpt holds the final epoch's weights (under ema, the average validated there).
    chosen = best if cfg.train.checkpoint == "best" else last
    result = TrainResult(
        run_dir=run_dir,
        best_checkpoint=best if best.is_file() else None,
        last_checkpoint=last if last.is_file() else None,
        best_val_miou=top[1] if (top := best_epoch(module.history)) else None,
        history=module.history,
        class_weights=weights,
        caches=cache_report.to_dict(),
        world_size=trainer.world_size,
        model_checkpoint=chosen if chosen.is_file() else None,
    )
    finish_run(cfg, run_dir, module, dm, result, steps_per_epoch=module.steps_per_epoch)
    return result


def finish_run(
    cfg: Config,
    run_dir: Path,
    module: SegmentationModule,
    dm: SegDataModule,
    result: TrainResult,
    *,
    steps_per_epoch: int | None,
) -> None:
    """Plots, metrics text and JSON of a finished run: the validation scores of the model
    ``train.checkpoint`` selects (the best epoch, or the last one, whose weights are the EMA under ema)."""
    from offroadseg.reporting import plots  # noqa: PLC0415 (matplotlib only when needed)

    write_history(run_dir, result.history)
    selected = (
        "best epoch" if cfg.train.checkpoint == "best" else f"last epoch, {cfg.train.checkpoint} weights"
    )
    scores: SegmentationScores | None = (
        module.best_val_scores if cfg.train.checkpoint == "best" else module.last_val_scores
    )
    names = dm.taxonomy.names
    score_dict = scores.to_dict(names) if scores is not None else None
    result.val_scores = score_dict
    total = (steps_per_epoch or 1) * cfg.train.epochs
    lrs = lr_curve(
        cfg.train.lr,
        total_steps=total,
        warmup_steps=int(round(cfg.train.warmup_epochs * (steps_per_epoch or 1))),
        schedule=cfg.train.scheduler,
        min_lr=cfg.train.min_lr,
    )
    plots.plot_curves(result.history, run_dir / "curves.png")
    plots.plot_lr_schedule(lrs, run_dir / "lr_schedule.png", steps_per_epoch=steps_per_epoch)
    if score_dict is not None:
        plots.plot_per_class_iou(score_dict, run_dir / "per_class_iou.png", colors=dm.taxonomy.colors)
        plots.plot_confusion_matrix(score_dict, run_dir / "confusion_matrix.png")
        title = f"offroadseg run {run_dir.name}: validation scores of the {selected}"
        atomic_write_text(
            run_dir / "evaluation_metrics.txt", plots.evaluation_text(result.history, score_dict, title=title)
        )
        summary = {
            "best_val_miou": result.best_val_miou,
            "best_epoch": top[0] if (top := best_epoch(result.history)) else None,
            "checkpoint": cfg.train.checkpoint,
            "model_checkpoint": str(result.model_checkpoint) if result.model_checkpoint else None,
            "val": score_dict,
            "class_weights": result.class_weights,
        }
        atomic_write_text(run_dir / "metrics.json", json.dumps(json_ready(summary), indent=2))

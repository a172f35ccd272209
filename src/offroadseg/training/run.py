"""``train(config)``: one call from a resolved config to a finished run directory."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from offroadseg.config import Config, dump_config
from offroadseg.data.io import atomic_write_text
from offroadseg.data.stats import count_pixels
from offroadseg.errors import ConfigError
from offroadseg.losses import class_weights_from_counts
from offroadseg.metrics import SegmentationScores
from offroadseg.training.callbacks import AtomicCheckpointIO, HistoryWriter, write_history
from offroadseg.training.datamodule import SegDataModule
from offroadseg.training.module import SegmentationModule
from offroadseg.training.schedule import lr_curve

PRECISIONS = {"32": "32-true", "32-true": "32-true", "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed"}
PRECISIONS.update({"16": "16-mixed", "16-mixed": "16-mixed"})


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


def resolve_precision(precision: str, accelerator: str) -> str:
    """Config precision -> Lightning precision; fp16 needs CUDA."""
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if precision == "amp":  # what the reference meant by AMP: fp16 autocast on a GPU
        return "16-mixed" if on_cuda else "32-true"
    value = PRECISIONS[str(precision)]
    if value == "16-mixed" and not on_cuda:
        raise ConfigError(
            "train.precision=16 (fp16 autocast) needs a CUDA GPU; fix: use train.precision=bf16 or 32 on CPU"
        )
    return value


def compute_class_weights(dm: SegDataModule, max_weight: float) -> list[float]:
    """Loss weights from the training masks' pixel frequencies."""
    counts, _, _ = count_pixels(dm.train_samples, dm.taxonomy, unknown=dm.cfg.data.unknown_values)
    return class_weights_from_counts(counts, max_weight=max_weight).tolist()


def build_module(cfg: Config, dm: SegDataModule, class_weights: list[float] | None) -> SegmentationModule:
    """The LightningModule for a config and its data (taxonomy, class names, weights)."""
    return SegmentationModule(
        cfg.to_dict(),
        dm.taxonomy.names,
        class_weights=class_weights,
        ignore_index=dm.taxonomy.ignore_index,
        taxonomy=dm.taxonomy.to_dict(),
    )


def build_trainer(cfg: Config, run_dir: Path, *, extra_callbacks: list | None = None) -> L.Trainer:
    """A Lightning Trainer with the run directory's checkpoints, history and CSV log."""
    t = cfg.train
    callbacks: list = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best",
            monitor="val_miou",
            mode="max",
            save_last=True,
            save_top_k=1,
            enable_version_counter=False,
        ),
        HistoryWriter(run_dir),
    ]
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
        precision=resolve_precision(t.precision, t.accelerator),
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip or None,
        limit_train_batches=_limit(t.limit_train_batches),
        limit_val_batches=_limit(t.limit_val_batches),
        num_sanity_val_steps=0,
        logger=CSVLogger(run_dir, name="logs", version=""),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=cfg.run.progress,
        enable_model_summary=False,
        log_every_n_steps=10,
    )


def _limit(value: int | float) -> int | float | None:
    """Lightning's reading: an int counts batches (1 is one batch), the float 1.0 is all of them."""
    return None if isinstance(value, float) and value == 1.0 else value


def train(cfg: Config, *, resume: bool = False) -> TrainResult:
    """Train from a config; writes everything into ``cfg.run.dir``.

    Args:
        cfg: the resolved config.
        resume: continue from ``<run.dir>/checkpoints/last.ckpt``.
    """
    run_dir = Path(cfg.run.dir)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume and not last.is_file():
        raise ConfigError(f"--resume: {last} does not exist; fix: train without --resume first")
    resolve_precision(cfg.train.precision, cfg.train.accelerator)  # fail before any work
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    dm = SegDataModule(cfg)
    weights = compute_class_weights(dm, cfg.loss.max_weight) if cfg.loss.class_weights == "auto" else None
    module = build_module(cfg, dm, weights)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))

    from offroadseg.training.caches import attach_caches  # noqa: PLC0415 (keeps import light)

    cache_report = attach_caches(cfg, dm, module)
    trainer = build_trainer(cfg, run_dir)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
    if not trainer.is_global_zero:
        return TrainResult(run_dir, None, None, None)
    best = ckpt_dir / "best.ckpt"
    result = TrainResult(
        run_dir=run_dir,
        best_checkpoint=best if best.is_file() else None,
        last_checkpoint=last if last.is_file() else None,
        best_val_miou=_best(module.history),
        history=module.history,
        class_weights=weights,
        caches=cache_report.to_dict(),
        world_size=trainer.world_size,
    )
    finish_run(cfg, run_dir, module, dm, result, steps_per_epoch=module.steps_per_epoch)
    return result


def _best(history: list[dict]) -> float | None:
    values = [h["val_miou"] for h in history if h.get("val_miou") is not None]
    return max(values) if values else None


def finish_run(
    cfg: Config,
    run_dir: Path,
    module: SegmentationModule,
    dm: SegDataModule,
    result: TrainResult,
    *,
    steps_per_epoch: int | None,
) -> None:
    """Plots, metrics text and JSON of a finished run (best epoch's validation scores)."""
    from offroadseg.reporting import plots  # noqa: PLC0415 (matplotlib only when needed)

    write_history(run_dir, result.history)
    scores: SegmentationScores | None = module.best_val_scores
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
        title = f"offroadseg run {run_dir.name}: validation scores of the best epoch"
        atomic_write_text(
            run_dir / "evaluation_metrics.txt", plots.evaluation_text(result.history, score_dict, title=title)
        )
        summary = {
            "best_val_miou": result.best_val_miou,
            "best_epoch": _best_epoch(result.history),
            "val": score_dict,
            "class_weights": result.class_weights,
        }
        atomic_write_text(run_dir / "metrics.json", json.dumps(summary, indent=2, default=_json_default))


def _best_epoch(history: list[dict]) -> int | None:
    best, epoch = -math.inf, None
    for h in history:
        if h.get("val_miou") is not None and h["val_miou"] > best:
            best, epoch = h["val_miou"], h["epoch"]
    return epoch


def _json_default(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    raise TypeError(type(obj).__name__)

"""``bench ycor``: real-data quality on YCOR (Yamaha-CMU Off-Road), one run per config.

Each config trains on YCOR's ``train`` split and is scored on ``val`` from one
confusion matrix at the label's resolution (class 0, void, ignored), with the weights its
``train.checkpoint`` selects (best | last | ema). Configs whose
``eval.tta`` is not ``none`` are scored once more from that checkpoint with that
test-time augmentation (the figure reported as ``val_miou``; the training loop's score
without TTA stays beside it as ``val_miou_no_tta``).

The ycor configs share their data, resolution and backbone layers, so the frozen-feature
cache is built by the first run and reused by the others: the first row's
``cache_build_s`` carries the ViT's pass over the dataset, the other rows ``0``.

With ``folds=K`` each config is also cross-validated (:mod:`offroadseg.experiments.cv`): grouped
K-fold over train ∪ val, after the val runs, so the folds reuse the feature store those built
(one store covers train ∪ val). The result's ``cv`` holds the mean ± std per config. The conv
head is left out of the default CV list: at ~20 min/epoch on 2 CPU cores its 5 folds alone
would take hours.

Every finished val run leaves its row and config in ``<work_dir>/<config stem>/bench_row.json``:
with ``resume=True`` a config whose row is there with the same config (up to how it ran, as
``cv --resume`` decides) is not trained again (its row says ``kept``), an interrupted one goes on from
its last finished epoch, and the folds go on as ``cv --resume`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from offroadseg.config import Config, load_config
from offroadseg.devices import accelerator_device
from offroadseg.errors import ConfigError, OffroadsegError
from offroadseg.experiments.cv import read_run_record, resume_point, same_recipe, write_run_record
from offroadseg.metrics import best_epoch

__all__ = [
    "BENCH_ROW_NAME",
    "DEFAULT_CONFIGS",
    "DEFAULT_CV_CONFIGS",
    "DEFAULT_ROOT",
    "bench_ycor",
    "check_root",
    "kept_bench_row",
    "ycor_config",
]

DEFAULT_CONFIGS = (
    "configs/ycor_linear.yaml",
    "configs/ycor_conv.yaml",
    "configs/ycor_ppm.yaml",
    "configs/ycor.yaml",
)
DEFAULT_CV_CONFIGS = (
    "configs/ycor_baseline.yaml",
    "configs/ycor_spread.yaml",
    "configs/ycor_adapt.yaml",
    "configs/ycor_combo.yaml",
)
DEFAULT_ROOT = "../shared/data/ycor"
BENCH_ROW_NAME = "bench_row.json"  # a finished val run's row and its config, in its run folder: `--resume`


def check_root(root: str | Path) -> Path:
    """The YCOR root, or an :class:`OffroadsegError` that says how to point at it."""
    path = Path(root).expanduser()
    if not (path / "images").is_dir() or not (path / "labels").is_dir():
        raise OffroadsegError(
            f"YCOR not found at {path.resolve()} (expected images/ and labels/ there); fix: --data PATH"
        )
    return path


def ycor_config(
    path: str | Path,
    *,
    data_root: str | Path | None = None,
    overrides: Sequence[str] = (),
    epochs: int | None = None,
    work_dir: str | Path = "runs/bench_ycor",
) -> Config:
    """One bench config: ``path`` + overrides, with its run under ``<work_dir>/<config stem>``."""
    extra = list(overrides)
    if data_root is not None:
        extra.append(f"data.root={data_root}")
    if epochs is not None:
        if epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {epochs}")
        extra.append(f"train.epochs={epochs}")
    cfg = load_config(path, extra)
    cfg.run.dir = str(Path(work_dir) / Path(path).stem)
    cfg.run.progress = False
    return cfg


def bench_ycor(
    configs: Sequence[str | Path] = DEFAULT_CONFIGS,
    *,
    data_root: str | Path | None = None,
    overrides: Sequence[str] = (),
    epochs: int | None = None,
    work_dir: str | Path = "runs/bench_ycor",
    on_config: Callable[[str, dict], None] | None = None,
    folds: int | None = None,
    gap: int | None = None,
    seed: int = 0,
    rare_class: str | None = None,
    keep_checkpoints: bool = False,
    resume: bool = False,
    on_fold: Callable[[dict, dict], None] | None = None,
) -> dict:
    """Train each config on YCOR's train split and score it on val (and cross-validate it).

    Args:
        configs: config files (their ``data`` section points at YCOR; ``data_root`` overrides it).
        data_root: the YCOR folder (default: each config's ``data.root``).
        overrides: dotted ``key=value`` overrides applied to every config.
        epochs: override ``train.epochs`` of every config.
        work_dir: runs go to ``<work_dir>/<config stem>``.
        on_config: called with ``(config path, row)`` after each config (partial results).
        folds: also run grouped ``folds``-fold cross-validation of every config (None: off).
        gap, seed, rare_class, keep_checkpoints: the CV's grouping gap, fold seed, reported rare
            class and whether fold checkpoints stay (see :func:`offroadseg.experiments.cv.cross_validate`).
        resume: continue an interrupted invocation with the same ``work_dir``: a val run finished there
            with the same config is kept (:func:`kept_bench_row`, ``kept: true``), one stopped after an
            epoch goes on from its ``last.ckpt`` (``resumed_after_epochs``; ``resume_refused`` says why
            one cannot), and the folds go on as ``cv --resume`` does.
        on_fold: ``on_fold(progress, cv_so_far)`` after every CV fold.

    Returns:
        ``rows`` (one per config: head, resolution, layers, val frames, val mIoU with and without TTA,
        per-class IoU, train / cache-build / evaluation / total seconds), ``best`` (the stem of
        the row with the highest val mIoU), ``device`` and ``cpu_threads``; with ``folds``,
        ``cv`` (the cross-validation result) and ``best_cv`` (highest CV mean mIoU).

    Raises:
        OffroadsegError: when the data root is missing (``YCOR not found at ...``).
    """
    if not configs:
        raise ConfigError("bench ycor: no config given")
    cfgs = [
        ycor_config(p, data_root=data_root, overrides=overrides, epochs=epochs, work_dir=work_dir)
        for p in configs
    ]
    for cfg in cfgs:  # fail before any training
        check_root(cfg.data.root)
    if folds is not None:
        from offroadseg.experiments.cv import plan_folds  # noqa: PLC0415

        # refuse too many folds, a duality layout or a repeated name before the first run
        for p, cfg in zip(configs, cfgs, strict=True):
            plan_folds(cfg, folds, gap=gap, seed=seed, source=str(p))
        stems = [Path(p).stem for p in configs]
        if len(set(stems)) != len(stems):
            raise ConfigError(f"bench ycor --folds: configs share a file name ({stems}); fix: rename one")
    rows = []
    for path, cfg in zip(configs, cfgs, strict=True):
        row = kept_bench_row(cfg) if resume else None
        if row is None:
            point = resume_point(cfg) if resume else None
            row = _run_one(str(path), cfg, resume_after=point if isinstance(point, int) else None)
            if isinstance(point, str):
                row["resume_refused"] = point
        rows.append(row)
        if on_config is not None:
            on_config(str(path), row)
    scored = [r for r in rows if r["val_miou"] is not None]
    best = max(scored, key=lambda r: r["val_miou"])["name"] if scored else None
    res = {
        "data_root": str(Path(cfgs[0].data.root).resolve()),
        "device": accelerator_device(cfgs[0].train.accelerator).type,
        "cpu_threads": torch.get_num_threads(),
        "rows": rows,
        "best": best,
    }
    if folds is not None:
        from offroadseg.experiments.cv import cross_validate  # noqa: PLC0415

        entries = [(r["name"], cfg) for r, cfg in zip(rows, cfgs, strict=True)]
        res["cv"] = cross_validate(
            entries,
            folds,
            gap=gap,
            seed=seed,
            work_dir=Path(work_dir) / "cv",
            rare_class=rare_class,
            keep_checkpoints=keep_checkpoints,
            resume=resume,
            on_fold=on_fold,
        )
        res["best_cv"] = res["cv"]["best"]
    return res


def _layers(cfg: Config) -> str:
    layers = cfg.model.backbone.layers
    return f"last {layers}" if isinstance(layers, int) else ",".join(str(i) for i in layers)


def _run_one(path: str, cfg: Config, *, resume_after: int | None = None) -> dict:
    """Train and score one config; ``resume_after``: continue its interrupted run, whose ``last.ckpt``
    finished that many epochs (the row then has ``resumed_after_epochs``)."""
    from offroadseg.data.datasets import list_samples  # noqa: PLC0415
    from offroadseg.experiments.scoring import train_and_score  # noqa: PLC0415 (torch/lightning when running)

    record = Path(cfg.run.dir) / BENCH_ROW_NAME
    record.unlink(missing_ok=True)  # a run interrupted from here on must not leave an earlier run's row
    run = train_and_score(cfg, resume=resume_after is not None)
    result, fit_s = run.result, run.fit_s
    caches = result.caches or {}
    scores = run.scores_no_tta
    row = {
        "config": path,
        "name": Path(path).stem,
        "run_dir": str(result.run_dir),
        "head": cfg.model.head.name,
        "head_channels": cfg.model.head.channels,
        "backbone": cfg.model.backbone.name,
        "weights": cfg.model.backbone.weights,
        "layers": _layers(cfg),
        "image_size": list(cfg.data.image_size),
        "loss": cfg.loss.name,
        "class_weights": cfg.loss.class_weights,
        "epochs": cfg.train.epochs,
        "val_frames": len(list_samples(cfg.data, cfg.data.val_split)),
        "best_epoch": top[0] if (top := best_epoch(result.history)) else None,
        "tta": cfg.eval.tta,
        "checkpoint": cfg.train.checkpoint,
        "val_miou_no_tta": scores["miou"] if scores else None,
        "val_miou": scores["miou"] if scores else None,
        "val_miou_present_no_tta": present_miou(scores),
        "val_miou_present": present_miou(scores),
        "absent_classes": absent_classes(scores),
        "per_class_iou": scores["per_class_iou"] if scores else None,
        "pixel_accuracy": scores["pixel_accuracy"] if scores else None,
        "history_val_miou": [h.get("val_miou") for h in result.history],
        "cache_features": bool(caches.get("features")),
        "cache_built": any(s.get("built") for s in caches.get("stores", [])),
        "cache_build_s": float(caches.get("build_s", 0.0)),
        "cache_setup_s": float(caches.get("setup_s", 0.0)),
        "cache_messages": list(caches.get("messages", [])),
        "train_s": fit_s - float(caches.get("setup_s", 0.0)),
        "eval_s": 0.0,
        "total_s": fit_s,
    }
    if run.scores is not scores:  # re-scored from the selected checkpoint with eval.tta
        row.update(
            val_miou=run.scores["miou"],
            val_miou_present=present_miou(run.scores),
            per_class_iou=run.scores["per_class_iou"],
            pixel_accuracy=run.scores["pixel_accuracy"],
            eval_s=run.eval_s,
        )
        row["total_s"] = fit_s + run.eval_s
    if resume_after is not None:
        row["resumed_after_epochs"] = resume_after
    write_run_record(record, cfg, row)
    return row


def kept_bench_row(cfg: Config) -> dict | None:
    """The row of the val run finished earlier in ``cfg.run.dir`` (its ``bench_row.json``) with this
    config up to how it ran (:func:`offroadseg.experiments.cv.same_recipe`), marked ``kept``; None when
    there is none, it is damaged, or the config differs."""
    saved = read_run_record(Path(cfg.run.dir) / BENCH_ROW_NAME)
    if saved is None or not same_recipe(saved.get("config"), cfg):
        return None
    return {**saved["row"], "kept": True}


def present_miou(scores: dict | None) -> float | None:
    """Mean IoU over the classes with ground-truth pixels in the split.

    The standard dataset-level mIoU also averages a class that is absent from the ground truth
    but predicted somewhere (its IoU is 0): on a small split that misses a class (YCOR's 70 val
    frames have no puddle) a few false-positive pixels then move the mean by 1/K.
    """
    if not scores:
        return None
    cm = np.asarray(scores["confusion_matrix"], dtype=np.float64)
    gt, tp = cm.sum(axis=1), np.diag(cm)
    union = gt + cm.sum(axis=0) - tp
    present = gt > 0
    return float(np.mean(tp[present] / union[present])) if present.any() else None


def absent_classes(scores: dict | None) -> list[str]:
    """Classes without ground-truth pixels in the split."""
    if not scores:
        return []
    cm = np.asarray(scores["confusion_matrix"])
    return [name for name, row in zip(scores["per_class_iou"], cm, strict=True) if row.sum() == 0]

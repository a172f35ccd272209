"""Grouped K-fold cross-validation of training configs over a dataset's train ∪ val frames.

A fold is an ordinary training run whose split assignment differs: the fold's groups of
neighbouring frames (:mod:`offroadseg.data.folds`) are written to a per-fold split file as
``val``, every other frame as ``train``, and :func:`offroadseg.training.run.train` trains on it.
A feature store keyed on the set of frames (not on the split) is therefore reused by every
fold. Cross-validation needs the generic layout (one image folder, a split file); the Duality
layout keeps train and val in separate folders and is refused with one line.

Each fold is scored from one confusion matrix over its val frames at the label's resolution:
mIoU is the mean over the classes present in the fold's labels or predictions (a class
predicted where the fold has none counts with IoU 0; a rare class is never dropped for being
absent from a split). The model scored is the one ``train.checkpoint`` selects (best | last |
ema); with ``eval.tta`` other than ``none`` it is scored again from that checkpoint with that
TTA, and ``scored_with`` says which.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from offroadseg.atomic import atomic_write_text
from offroadseg.config import Config, config_from_dict
from offroadseg.data.datasets import list_samples, read_split_table, split_file_path
from offroadseg.data.folds import Fold, make_folds, split_file_text
from offroadseg.errors import ConfigError
from offroadseg.metrics import best_epoch, json_ready
from offroadseg.progress import StepProgress, labelled

__all__ = [
    "FOLD_ROW_NAME",
    "cross_validate",
    "fold_config",
    "fold_resume_point",
    "kept_fold_row",
    "left_a_run",
    "plan_folds",
    "read_run_record",
    "resume_point",
    "run_fold",
    "run_or_keep_fold",
    "same_recipe",
    "summarize_folds",
    "write_run_record",
]

FOLD_ROW_NAME = "fold_row.json"  # a finished fold's row and its config, in the fold's folder: `cv --resume`


def plan_folds(
    cfg: Config, k: int, *, gap: int | None = None, seed: int = 0, source: str = "config"
) -> list[Fold]:
    """The grouped folds of a config's train ∪ val frames.

    Args:
        cfg: the resolved config (generic layout).
        k: number of folds.
        gap: id gap joining neighbouring frames (default: ``data.group_gap``); a ``group``
            column in the split file takes precedence.
        seed: fold-assignment seed.
        source: the config's file, for messages.
    """
    d = cfg.data
    if d.layout != "generic":
        raise ConfigError(
            f"{source}: cross-validation needs data.layout=generic (got {d.layout!r}): the duality layout keeps "
            f"train and val in separate folders, which a split file cannot regroup; fix: put the frames in one "
            f"images/ + labels/ folder with a split file (data.layout=generic, data.split_file)"
        )
    names: list[str] = []
    for split in (d.train_split, d.val_split):
        names += [s.name for s in list_samples(d, split) if s.name not in names]
    path = split_file_path(d)
    groups = {n: g for n, (_, g) in read_split_table(path).items()} if path is not None else None
    return make_folds(names, k, gap=d.group_gap if gap is None else gap, seed=seed, groups=groups)


def _split_text(fold: Fold) -> str:
    """The fold's split file: its frames as ``train`` and ``val``, which frame is which."""
    return split_file_text(fold, train_split="train", val_split="val")


def _as_saved(cfg: Config) -> dict:
    """A config as its JSON record reads back (tuples become lists), to compare with one."""
    return json.loads(json.dumps(json_ready(cfg.to_dict())))


def fold_config(cfg: Config, fold: Fold, run_dir: str | Path) -> Config:
    """The config of one fold: its own split file (written into ``run_dir``) and run directory."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    split_path = (run_dir / "cv_split.tsv").resolve()
    # the fold's own split names: a base that trains on a union (train_split: train+val) must train on
    # the fold's training frames only, never on its held-out ones
    atomic_write_text(split_path, _split_text(fold))
    out = config_from_dict(cfg.to_dict())
    out.data.train_split, out.data.val_split = "train", "val"
    out.data.split_file = str(split_path)
    out.run.dir = str(run_dir)
    return out


def run_fold(
    cfg: Config,
    fold: Fold,
    k: int,
    run_dir: Path,
    *,
    keep_checkpoints: bool,
    on_epoch: Callable[[dict], None] | None = None,
    progress: StepProgress | None = None,
    resume_after: int | None = None,
) -> dict:
    """Train and score one fold; ``on_epoch(row)`` after each of its validation epochs (history row
    plus ``epochs``); ``progress(description)`` for its steps before the first epoch (a store build);
    ``resume_after``: continue an interrupted run of this fold from ``<run_dir>/checkpoints/last.ckpt``,
    which finished that many epochs (:func:`fold_resume_point`); the row then has ``resumed_after_epochs``
    and ``resumed_epochs_s`` (those epochs' time: ``train_s``/``total_s`` count the epochs after them). A
    finished fold's row, config and split are recorded in ``<run_dir>/fold_row.json`` (see
    :func:`kept_fold_row`)."""
    from offroadseg.experiments.scoring import train_and_score  # noqa: PLC0415 (torch/lightning when running)

    start = time.perf_counter()
    run_dir = Path(run_dir)
    resume = resume_after is not None
    if not resume:  # a fresh start leaves nothing of an earlier run here to be kept or continued later
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (run_dir / FOLD_ROW_NAME).unlink(missing_ok=True)
    fcfg = fold_config(cfg, fold, run_dir)
    run = train_and_score(fcfg, on_epoch=on_epoch, progress=progress, resume=resume)
    result, scores, no_tta_scores = run.result, run.scores, run.scores_no_tta
    no_tta = no_tta_scores["miou"] if no_tta_scores else None
    scored_with, fit_s, eval_s = run.scored_with, run.fit_s, run.eval_s
    caches = result.caches or {}
    if not keep_checkpoints:  # each holds the backbone too: 5 folds x N configs add up
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    row = {
        "fold": fold.index + 1,
        "folds": k,
        "val_frames": len(fold.val),
        "train_frames": len(fold.train),
        "val_groups": list(fold.val_groups),
        "run_dir": str(result.run_dir),
        "miou": scores["miou"] if scores else None,
        "miou_no_tta": no_tta,
        "scored_with": scored_with,
        "model_checkpoint": str(result.model_checkpoint)
        if keep_checkpoints and result.model_checkpoint
        else None,
        "per_class_iou": scores["per_class_iou"] if scores else None,
        "confusion_matrix": scores["confusion_matrix"] if scores else None,
        "epochs": len(result.history),
        "best_epoch": top[0] if (top := best_epoch(result.history)) else None,
        "history_val_miou": [h.get("val_miou") for h in result.history],
        "history_epoch_s": [h.get("epoch_time_s") for h in result.history],
        "cache_build_s": float(caches.get("build_s", 0.0)),
        "cache_built": any(s.get("built") for s in caches.get("stores", [])),
        "cache_messages": list(caches.get("messages", [])),
        "train_s": fit_s - float(caches.get("setup_s", 0.0)),
        "eval_s": eval_s,
        "total_s": fit_s + eval_s,
        "wall_s": time.perf_counter() - start,
    }
    if resume:
        row["resumed_after_epochs"] = resume_after
        row["resumed_epochs_s"] = sum(float(s or 0.0) for s in row["history_epoch_s"][:resume_after])
    write_run_record(run_dir / FOLD_ROW_NAME, fcfg, row, split=_split_text(fold))
    return row


def run_or_keep_fold(
    cfg: Config,
    fold: Fold,
    k: int,
    run_dir: Path,
    *,
    keep_checkpoints: bool,
    on_epoch: Callable[[dict], None] | None = None,
    progress: StepProgress | None = None,
    say: Callable[[str], None] | None = None,
) -> dict:
    """:func:`run_fold` that goes on from where an earlier invocation left this fold in ``run_dir``.

    The row of the fold finished there with this config and split (:func:`kept_fold_row`, ``kept``; its
    checkpoint must still be there with ``keep_checkpoints``); else the fold continued from its
    ``last.ckpt`` (:func:`fold_resume_point`, ``resumed_after_epochs``); else run from the start
    (``resume_refused``: why a checkpoint there could not be continued). ``say`` gets one line saying which.
    """
    say = say or (lambda _m: None)
    row = kept_fold_row(cfg, fold, run_dir, checkpoint=keep_checkpoints)
    if row is not None:
        say(f"kept, finished earlier ({row['run_dir']})")
        return row
    point = fold_resume_point(cfg, fold, run_dir)
    if isinstance(point, int):
        say(f"continues an interrupted run after its epoch {point} ({run_dir})")
    elif point is not None:
        say(f"from the start (an interrupted run cannot be continued: {point})")
    else:
        say("starts")
    row = run_fold(
        cfg,
        fold,
        k,
        run_dir,
        resume_after=point if isinstance(point, int) else None,
        keep_checkpoints=keep_checkpoints,
        on_epoch=on_epoch,
        progress=progress,
    )
    if isinstance(point, str):
        row["resume_refused"] = point
    return row


def fold_resume_point(cfg: Config, fold: Fold, run_dir: str | Path) -> int | str | None:
    """Whether an interrupted run of this fold in ``run_dir`` can be continued (``run_fold(resume_after=)``).

    Returns:
        None when ``run_dir`` holds no ``checkpoints/last.ckpt``; the number of epochs it finished when the
        checkpoint reads and was trained with this fold's config and split (the checks of ``train
        --resume``, and the run's ``cv_split.tsv``: a fresh :func:`run_fold` deletes the checkpoints of an
        earlier run before it writes its split); else the one-line reason it cannot be continued (a damaged
        file, another config, other frames in the fold).
    """
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    split = Path(run_dir) / "cv_split.tsv"
    if not split.is_file() or split.read_text() != _split_text(fold):
        return f"{last} was trained on another split of the frames (other folds, seed or gap)"
    return resume_point(fold_config(cfg, fold, run_dir))


def resume_point(cfg: Config) -> int | str | None:
    """Whether an interrupted run in ``cfg.run.dir`` can be continued (``train --resume``): None when it
    holds no ``checkpoints/last.ckpt``; the number of epochs that checkpoint finished when it reads and was
    trained with this config (the checks of ``train --resume``); else the one-line reason it cannot be."""
    from offroadseg.errors import ModelError  # noqa: PLC0415
    from offroadseg.training.resume import check_resume  # noqa: PLC0415 (torch when resuming)

    last = Path(cfg.run.dir) / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    try:
        return check_resume(cfg, last)
    except (ConfigError, ModelError) as exc:
        return str(exc)


def kept_fold_row(cfg: Config, fold: Fold, fold_dir: str | Path, *, checkpoint: bool = False) -> dict | None:
    """The row of this fold finished earlier in ``fold_dir`` (its ``fold_row.json``) with this config, up to
    how it ran (run folder, progress, logger, workers, cache folder, data root: the keys ``train --resume``
    may change, less ``train.epochs``), and this split of the frames, marked ``kept``; None when there is
    none, the config or split differs, or (``checkpoint``) the row's model checkpoint is gone."""
    saved = read_run_record(Path(fold_dir) / FOLD_ROW_NAME)
    if saved is None or saved.get("split") != _split_text(fold):
        return None
    if checkpoint and not Path(str(saved["row"].get("model_checkpoint"))).is_file():
        return None
    if not same_recipe(saved.get("config"), fold_config(cfg, fold, fold_dir)):
        return None
    return {**saved["row"], "kept": True}


def write_run_record(path: Path, cfg: Config, row: dict, **extra: object) -> None:
    """A finished run's record (atomic): its config as saved (:func:`_as_saved`), its row and ``extra``
    (a fold's ``split``), read back by :func:`read_run_record` when a later invocation resumes."""
    record = {"config": _as_saved(cfg), **extra, "row": row}
    atomic_write_text(path, json.dumps(json_ready(record), indent=2))


def read_run_record(path: Path) -> dict | None:
    """The record :func:`write_run_record` left at ``path``; None when there is none or it is damaged (the
    run then runs again)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("row"), dict):
        return None
    return saved


def left_a_run(run_dir: Path, record: str = FOLD_ROW_NAME) -> bool:
    """Whether an earlier invocation left a run in ``run_dir``: finished (its ``record``) or stopped after an
    epoch (``checkpoints/last.ckpt``); a new invocation without ``--resume`` trains it again."""
    return (run_dir / record).is_file() or (run_dir / "checkpoints" / "last.ckpt").is_file()


def same_recipe(saved: dict | None, cfg: Config) -> bool:
    """Whether a finished run's saved config (its JSON record) is ``cfg`` up to how it ran: run folder,
    progress, logger, workers, cache folder, data root (the keys ``train --resume`` may change, less
    ``train.epochs``). A run kept by ``cv --resume`` or ``bench ycor --resume`` must pass this."""
    from offroadseg.training.resume import RESUMABLE_KEYS, config_diff  # noqa: PLC0415 (torch)

    how_it_ran = RESUMABLE_KEYS - {"train.epochs"}
    return not any(key not in how_it_ran for key, _, _ in config_diff(saved or {}, _as_saved(cfg)))


def epoch_event(on_epoch: Callable[[dict], None], row: dict, **context) -> None:
    """A fold's validation epoch as one progress event, for ``cv`` and ``tune`` alike: the epoch's history
    row (``epoch``, ``epochs``, ``val_miou``, ``epoch_time_s``, ...) plus where it ran (``fold``, ``folds``,
    and the config ``name`` or the ``trial``)."""
    on_epoch({**row, **context})


def summarize_folds(rows: Sequence[dict], *, rare_class: str | None = None) -> dict:
    """Mean ± std over folds, per-class means and the rare class's figures per fold.

    Args:
        rows: fold rows with ``miou``, ``per_class_iou`` (name -> IoU or None) and
            ``confusion_matrix`` (rows = ground truth, in ``per_class_iou`` order).
        rare_class: the class to report per fold (default: the class with the fewest labelled
            pixels over all folds, among those with any).

    Returns:
        ``miou_mean``, ``miou_std`` (sample standard deviation, ``ddof=1``; None for one fold),
        ``miou_min``/``miou_max``, ``per_class_mean_iou`` (mean over the folds where the class
        has an IoU, i.e. is labelled or predicted there), ``per_class_folds`` (how many),
        ``rare`` (class, and per fold its IoU, labelled, predicted and correct pixels),
        ``train_s_mean``, ``train_s_total``, ``cache_build_s``, ``eval_s_total``, ``total_s``.
    """
    scored = [r for r in rows if r.get("miou") is not None]
    mious = np.array([r["miou"] for r in scored], dtype=np.float64)
    names = list(scored[0]["per_class_iou"]) if scored else []
    per_class, per_class_n = {}, {}
    for name in names:
        vals = [r["per_class_iou"][name] for r in scored if r["per_class_iou"][name] is not None]
        per_class[name] = float(np.mean(vals)) if vals else None
        per_class_n[name] = len(vals)
    rare = None
    if scored:
        cms = [np.asarray(r["confusion_matrix"], dtype=np.int64) for r in scored]
        labelled = sum(cm.sum(axis=1) for cm in cms)
        if rare_class is None:
            present = [i for i in range(len(names)) if labelled[i] > 0]
            rare_i = min(present, key=lambda i: labelled[i]) if present else None
        else:
            if rare_class not in names:
                raise ConfigError(
                    f"--rare-class {rare_class!r} is not a class of this taxonomy; choose one of: {', '.join(names)}"
                )
            rare_i = names.index(rare_class)
        if rare_i is not None:
            rare = {"class": names[rare_i], "per_fold": []}
            for r, cm in zip(scored, cms, strict=True):
                rare["per_fold"].append(
                    {
                        "fold": r["fold"],
                        "iou": r["per_class_iou"][names[rare_i]],
                        "labelled_px": int(cm[rare_i].sum()),
                        "predicted_px": int(cm[:, rare_i].sum()),
                        "correct_px": int(cm[rare_i, rare_i]),
                    }
                )
    train = [r["train_s"] for r in rows]
    return {
        "folds_done": len(rows),
        "miou_mean": float(mious.mean()) if len(mious) else None,
        "miou_std": float(mious.std(ddof=1)) if len(mious) > 1 else None,
        "miou_min": float(mious.min()) if len(mious) else None,
        "miou_max": float(mious.max()) if len(mious) else None,
        "per_class_mean_iou": per_class,
        "per_class_folds": per_class_n,
        "rare": rare,
        "train_s_mean": float(np.mean(train)) if train else None,
        "train_s_total": float(np.sum(train)),
        "cache_build_s": float(sum(r["cache_build_s"] for r in rows)),
        "eval_s_total": float(sum(r["eval_s"] for r in rows)),
        "total_s": float(sum(r["total_s"] for r in rows)),
    }


def cross_validate(
    entries: Sequence[tuple[str, Config]],
    k: int,
    *,
    gap: int | None = None,
    seed: int = 0,
    work_dir: str | Path = "runs/cv",
    rare_class: str | None = None,
    keep_checkpoints: bool = False,
    resume: bool = False,
    on_fold: Callable[[dict, dict], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    progress: StepProgress | None = None,
) -> dict:
    """Grouped K-fold CV of each config; runs go to ``<work_dir>/<name>/fold<i>``.

    Args:
        entries: ``(name, config)`` pairs; names must be unique (they name the run folders).
        k: number of folds (at most the number of groups).
        gap: id gap joining frames into a group (default: each config's ``data.group_gap``).
        seed: fold-assignment seed (the training seed is each config's ``train.seed``).
        work_dir: where the fold runs go.
        rare_class: the class reported per fold (default: the least-labelled one).
        keep_checkpoints: keep each fold's ``checkpoints/`` (deleted after scoring by default).
        resume: continue an interrupted invocation with the same ``work_dir``: a fold finished with the
            same config (``fold_row.json`` in its folder; it may have run elsewhere or with other workers)
            is kept (its row has ``kept: true``), and a fold interrupted after an epoch goes on from its
            ``last.ckpt`` (``resumed_after_epochs``; ``resume_refused`` says why one cannot be continued).
        on_fold: ``on_fold(done, result_so_far)`` after every fold: ``done`` has
            ``name``, ``fold``, ``folds``, ``row``, ``done``, ``total``, ``elapsed_s``, ``eta_s``;
            ``result_so_far`` is the return value with the folds done so far (for partial JSON).
        on_epoch: ``on_epoch(event)`` after every validation epoch of a fold: ``name``, ``fold``,
            ``folds`` and the epoch's history row plus ``epochs`` (the most the fold may take).
        progress: ``progress(description)`` makes the callback of a fold's step before its first
            epoch (class weights, a feature-store build); descriptions lead with ``"<name> fold i/k"``.

    Returns:
        ``folds``, ``gap``, ``seed``, ``configs``: one entry per config with its settings
        (``checkpoint``, ``tta``, ``scored_with``), ``fold_rows`` and the
        :func:`summarize_folds` figures; ``best``: the name with the highest mean mIoU.
    """
    if not entries:
        raise ConfigError("cv: no config given; fix: offroadseg cv CONFIG [CONFIG ...] --folds K")
    seen: set[str] = set()
    for name, _ in entries:
        if name in seen:
            raise ConfigError(f"cv: two configs are named {name!r} (the run folder name); fix: rename one")
        seen.add(name)
    plans = [(name, cfg, plan_folds(cfg, k, gap=gap, seed=seed, source=name)) for name, cfg in entries]
    total = k * len(plans)
    result: dict = {"folds": k, "gap": gap, "seed": seed, "configs": [], "best": None}
    done, start, fold_times = 0, time.perf_counter(), []
    for name, cfg, folds in plans:
        entry = {
            "name": name,
            "checkpoint": cfg.train.checkpoint,
            "tta": cfg.eval.tta,
            "epochs": cfg.train.epochs,
            "head": cfg.model.head.name,
            "group_gap": cfg.data.group_gap if gap is None else gap,
            "fold_sizes": [len(f.val) for f in folds],
            "fold_rows": [],
        }
        result["configs"].append(entry)
        for fold in folds:
            row = (run_or_keep_fold if resume else run_fold)(
                cfg,
                fold,
                k,
                Path(work_dir) / name / f"fold{fold.index + 1}",
                keep_checkpoints=keep_checkpoints,
                on_epoch=None
                if on_epoch is None
                else partial(epoch_event, on_epoch, name=name, fold=fold.index + 1, folds=k),
                progress=labelled(progress, f"{name} fold {fold.index + 1}/{k}"),
            )
            if not row.get("kept"):  # the ETA leaves out cache builds: they happen once, not per fold
                fold_times.append(row["total_s"] - row["cache_build_s"])
            entry["fold_rows"].append(row)
            entry["scored_with"] = row["scored_with"]
            entry.update(summarize_folds(entry["fold_rows"], rare_class=rare_class))
            done += 1
            eta = float(np.mean(fold_times)) * (total - done) if fold_times else None
            if on_fold is not None:
                fold_done = {
                    "name": name,
                    "fold": fold.index + 1,
                    "folds": k,
                    "row": row,
                    "done": done,
                    "total": total,
                    "elapsed_s": time.perf_counter() - start,
                    "eta_s": eta,
                }
                on_fold(fold_done, result)
    scored = [
        c for c in result["configs"] if c.get("miou_mean") is not None and not math.isnan(c["miou_mean"])
    ]
    result["best"] = max(scored, key=lambda c: c["miou_mean"])["name"] if scored else None
    return result

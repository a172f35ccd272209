"""``offroadseg tune``: recipe search on grouped-CV mIoU, on Optuna.

A trial is one set of values for the space's keys applied to the base config; its objective is
the mean mIoU over the grouped K folds :func:`offroadseg.experiments.cv.plan_folds` makes (the folds
``offroadseg cv`` uses). After each fold the running mean is reported as a rung (step = folds
done), so the pruner (successive halving by default) stops a trial that is behind after its first
folds; a pruned trial keeps the folds it ran and is reported as pruned.

Every trial of one image size reads one feature store: the trial configs' ``data.cache.blocks``
is set to the union of the hidden states any point of the space can need at that size (the
store key covers frames, size, blocks and weights, not the split), so the backbone runs once
per size and a trial costs its adapted blocks and head only.

The study lives in a database (``--storage``: ``sqlite:///runs/tune.db``, or a PostgreSQL URL
shared by several machines). Workers take trials through Optuna (``constant_liar`` keeps
parallel TPE workers apart) and stop when N trials are complete or pruned (a trial started past
N by a racing worker is marked ``surplus`` and failed at once). Crash safety: each running trial
records its host and process id and sends a heartbeat; on start, a trial of this host whose
process is gone, or any trial whose heartbeat is older than the grace period, is marked failed
and its values are queued again (once per failure), so ``kill -9`` and the same command again
keep every finished trial and continue to N.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from offroadseg.config import Config, config_from_dict
from offroadseg.errors import ConfigError, OffroadsegError
from offroadseg.experiments.space import Param, apply_params, decode_values, encode_choice
from offroadseg.experiments.tune_store import (
    MAX_RETRIES,
    counted,
    fingerprint,
    finished_folds,
    inherit_rungs,
    open_study,
    predecessor,
    recover_trials,
)
from offroadseg.models.archs import ARCHS
from offroadseg.models.backbone import hidden_states_needed, resolve_layers
from offroadseg.processes import process_start
from offroadseg.progress import StepProgress, labelled

__all__ = [
    "TuneOptions",
    "ensemble_cv",
    "open_for_report",
    "open_study",
    "run_tune",
    "space_store_blocks",
    "trial_config",
    "trials_counted",
]


@dataclass
class TuneOptions:
    """What one ``offroadseg tune`` invocation asks for."""

    trials: int
    folds: int = 5
    storage: str = "sqlite:///runs/tune.db"
    study: str = "tune"
    minutes: float | None = None  # no new trial after this many minutes
    stop_after: float | None = None  # after this many minutes the fold under way is the last one run
    work_dir: str = "runs/tune"
    exclude: tuple[str, ...] = ()  # class names left out of the objective's mean
    pruner: str = "sha"  # sha | hyperband | none
    seed: int = 0  # sampler seed (the fold assignment uses cv's default seed 0)
    enqueue: list[dict] = field(default_factory=list)  # points to try first (dotted key -> value)
    keep_checkpoints: bool = False  # keep each fold's checkpoint (for --ensemble-top)


class _Surplus(Exception):
    """A trial started after the study already had N trials (a racing worker): not run."""


class _StopAfter(Exception):
    """``stop_after`` minutes passed at the end of a fold: the trial stops there (failed, its folds kept;
    the next run's recovery queues it again first and the retry starts at the next fold)."""


class _QuietControlFlow(logging.Filter):
    """Optuna logs every caught exception as a failed trial (two warnings, one with a traceback); the
    trials in ``trials`` ended by an exception of ours that only steers the study (a surplus trial, a
    stop at the time limit), which our own lines say instead."""

    def __init__(self) -> None:
        super().__init__()
        self.trials: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(f"Trial {n} failed ") for n in self.trials)


def _depth_and_layers(data: dict) -> tuple[int, list[int], int]:
    cfg = config_from_dict(data)
    bb = cfg.model.backbone
    if bb.name not in ARCHS:
        raise ConfigError(f"model.backbone.name={bb.name!r} is not a known backbone")
    depth = int(ARCHS[bb.name].config["num_hidden_layers"])
    k = depth if not bb.frozen else bb.train_blocks
    return depth, resolve_layers(bb.layers, depth), k


def _grid(params: Sequence[Param], keys: Sequence[str]) -> list[dict]:
    """Every combination of the values ``keys`` take in the space (ints: every integer)."""
    combos: list[dict] = [{}]
    for p in params:
        if p.key not in keys:
            continue
        if p.kind == "choice":
            values = list(p.choices)
        elif p.kind == "int":
            values = list(range(int(p.low), int(p.high) + 1))
        else:
            continue
        combos = [{**c, p.key: v} for c in combos for v in values]
    return combos


def space_store_blocks(base: dict, params: Sequence[Param]) -> dict[tuple[int, int], list[int]]:
    """Per image size ``(H, W)``: the union of hidden states any point of the space needs."""
    keys = (
        "model.backbone.train_blocks",
        "model.backbone.layers",
        "model.backbone.frozen",
        "data.image_size",
    )
    out: dict[tuple[int, int], set[int]] = {}
    for combo in _grid(params, keys):
        data = apply_params(base, combo)
        depth, layers, k = _depth_and_layers(data)
        size = tuple(int(s) for s in config_from_dict(data).data.image_size)
        out.setdefault(size, set()).update(hidden_states_needed(layers, depth, min(k, depth)))  # type: ignore[arg-type]
    return {size: sorted(blocks) for size, blocks in out.items()}


def trial_config(base: dict, values: dict[str, Any], store_blocks: dict, run_dir: str | Path) -> Config:
    """The config of one trial: base + values, the shared store's blocks, its own run folder."""
    data = apply_params(base, values)
    cfg = config_from_dict(data, source="trial")
    size = tuple(int(s) for s in cfg.data.image_size)
    if cfg.data.cache.features and size in store_blocks and store_blocks[size]:
        cfg.data.cache.blocks = list(store_blocks[size])
    cfg.run.dir = str(run_dir)
    cfg.run.progress = False
    return cfg


def _suggest(trial, params: Sequence[Param]) -> dict[str, Any]:
    values = {}
    for p in params:
        if p.kind == "int":
            values[p.key] = trial.suggest_int(
                p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log
            )
        elif p.kind == "float":
            values[p.key] = trial.suggest_float(p.key, float(p.low), float(p.high), step=p.step, log=p.log)
        else:
            values[p.key] = trial.suggest_categorical(p.key, list(p.choices))
    return values


def fold_objective(row: dict, exclude: Sequence[str]) -> float | None:
    """A fold's mIoU over its classes with an IoU, leaving out ``exclude`` (the row's own mIoU if none)."""
    if not exclude:
        return row.get("miou")
    per_class = row.get("per_class_iou") or {}
    vals = [v for name, v in per_class.items() if v is not None and name not in exclude]
    return float(sum(vals) / len(vals)) if vals else None


def open_for_report(base: dict, params: Sequence[Param], opts: TuneOptions):
    """The existing study of this config, space and folds, opened to read: no trial runs, nothing is
    recovered or queued (a worker may be running it). A missing database or study, or one made with
    another config/space/folds, is a one-line error."""
    return open_study(
        opts.storage,
        opts.study,
        fingerprint=fingerprint(base, params, opts.folds, opts.exclude),
        create=False,
    )


def trials_counted(study) -> int:
    """How many trials count toward ``--trials`` (:func:`counted`)."""
    return sum(counted(t) for t in study.get_trials(deepcopy=False))


def run_tune(
    base: dict,
    params: Sequence[Param],
    opts: TuneOptions,
    *,
    on_event: Callable[[dict], None] | None = None,
    run_fold: Callable | None = None,
    progress: StepProgress | None = None,
) -> dict:
    """Run (or continue) a study until N trials are complete or pruned, or ``minutes`` pass.

    Args:
        base: the base config mapping (its ``base:`` chain resolved).
        params: the space.
        opts: trials, folds, storage, study name, ...
        on_event: ``on_event(event)`` for progress: ``kind`` is ``start`` | ``begin`` (a trial, its values) |
            ``epoch`` (a fold's validation epoch) | ``fold`` | ``trial`` | ``stop``;
            the ``start`` event carries the opened Optuna study as ``handle``.
        run_fold: the fold runner (default :func:`offroadseg.experiments.cv.run_fold`; tests may pass another).
        progress: ``progress(description)`` makes the callback of a fold's step before its first epoch
            (class weights, a feature-store build); descriptions lead with ``"trial #n fold i/k"``.

    Returns:
        ``study`` name, ``handle`` (the Optuna study), ``trials_counted``, ``stopped`` (why),
        ``failed_recovered`` (the trials of dead workers this run marked failed).
    """
    import optuna  # noqa: PLC0415
    from optuna.trial import TrialState  # noqa: PLC0415

    from offroadseg.experiments import cv  # noqa: PLC0415

    run_fold = run_fold or cv.run_fold
    emit = on_event or (lambda event: None)
    base_cfg = config_from_dict(base, source="config")
    if opts.trials < 1:
        raise ConfigError(f"--trials {opts.trials} must be at least 1")
    for flag, value in (("--minutes", opts.minutes), ("--stop-after", opts.stop_after)):
        if value is not None and not value >= 0:
            raise ConfigError(f"{flag} {value:g} must be a number of minutes >= 0")
    if opts.folds < 2:
        raise ConfigError(f"--folds {opts.folds} must be at least 2 (grouped cross-validation)")
    folds = cv.plan_folds(base_cfg, opts.folds, source="config")  # refuses the duality layout, too few groups
    store_blocks = space_store_blocks(base, params)
    study = open_study(
        opts.storage,
        opts.study,
        fingerprint=fingerprint(base, params, opts.folds, opts.exclude),
        seed=opts.seed,
        pruner=opts.pruner,
    )
    recovered = recover_trials(study)
    names = {p.key for p in params}
    for point in opts.enqueue:
        unknown = sorted(set(point) - names)
        if unknown:
            raise ConfigError(
                f"--enqueue: {unknown} are not keys of the space; fix: use only {sorted(names)}"
            )
        study.enqueue_trial({k: encode_choice(v) for k, v in point.items()}, skip_if_exists=True)
    start = time.perf_counter()
    trial_times: list[float] = []
    emit(
        {
            "kind": "start",
            "study": opts.study,
            "handle": study,
            "trials": opts.trials,
            "recovered": recovered["failed"],
            "requeued": recovered["requeued"],
            "at_limit": recovered["at_limit"],
            "max_retries": MAX_RETRIES,
            "done": trials_counted(study),
            "store_blocks": store_blocks,
        }
    )

    current: list[int] = []
    quiet = _QuietControlFlow()  # the trials our control-flow exceptions end

    def past(minutes: float | None) -> bool:
        """``minutes`` (--minutes, --stop-after) given and passed since this run started."""
        return minutes is not None and time.perf_counter() - start >= minutes * 60

    def objective(trial) -> float:
        current.append(trial.number)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("pid_start", process_start(os.getpid()))  # a later process may get the pid
        earlier = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.number < trial.number and (counted(t) or t.state == TrialState.RUNNING)
        ]
        if len(earlier) >= opts.trials:
            trial.set_user_attr("surplus", True)
            quiet.trials.add(trial.number)
            raise _Surplus()
        values = _suggest(trial, params)
        t0 = time.perf_counter()
        run_root = trial_root(opts, trial.number)
        try:
            cfg = trial_config(base, values, store_blocks, run_root)
        except ConfigError as exc:
            trial.set_user_attr("infeasible", str(exc))
            raise optuna.TrialPruned(f"infeasible: {exc}") from None
        rows: list[dict] = []
        scores: list[float] = []
        reused = finished_folds(study, trial)  # a retry keeps the folds its predecessor finished
        if reused:
            inherit_rungs(study, trial)  # ... and the rungs it passed
        emit(
            {
                "kind": "begin",
                "trial": trial.number,
                "values": decode_values(values),
                "retry_of": trial.user_attrs.get("retry_of"),
                "kept_folds": sorted(reused),
            }
        )
        reused_s = 0.0
        carried_s = 0.0  # the epochs a resumed fold's predecessor trained before it stopped
        for fold in folds:
            done = reused.get(fold.index + 1)
            if done is not None and (
                not opts.keep_checkpoints or Path(str(done.get("model_checkpoint"))).is_file()
            ):
                row, value = {**done, "reused_from": trial.user_attrs["retry_of"]}, done["objective"]
                reused_s += float(done.get("total_s") or 0.0)
            else:
                fold_dir, resumed = run_root / f"fold{fold.index + 1}", None
                point = resume_point(study, trial, cfg, fold, opts)
                if point is not None:
                    if isinstance(point["epochs"], int):
                        fold_dir, resumed = Path(point["dir"]), point["epochs"]
                    emit({"kind": "resume", "trial": trial.number, "fold": fold.index + 1, **point})
                # where this fold runs: a retry of this trial continues it from there (resume_point)
                trial.set_user_attr(
                    "fold_dirs",
                    {**(trial.user_attrs.get("fold_dirs") or {}), str(fold.index + 1): str(fold_dir)},
                )
                try:
                    row = run_fold(
                        cfg,
                        fold,
                        opts.folds,
                        fold_dir,
                        resume_after=resumed,
                        keep_checkpoints=opts.keep_checkpoints,
                        on_epoch=partial(
                            cv.epoch_event,
                            emit,
                            kind="epoch",
                            trial=trial.number,
                            fold=fold.index + 1,
                            folds=opts.folds,
                        ),
                        progress=labelled(
                            progress, f"trial #{trial.number} fold {fold.index + 1}/{opts.folds}"
                        ),
                    )
                except ConfigError as exc:  # a combination the model refuses (e.g. LoRA on cached blocks)
                    trial.set_user_attr("infeasible", str(exc))
                    raise optuna.TrialPruned(f"infeasible: {exc}") from None
                carried_s += float(row.get("resumed_epochs_s") or 0.0)
                value = fold_objective(row, opts.exclude)
            if value is None or math.isnan(value):
                raise OffroadsegError(f"trial {trial.number} fold {fold.index + 1}: no class scored")
            scores.append(value)
            rows.append(_slim(row, value))
            trial.set_user_attr("fold_rows", rows)
            trial.set_user_attr("cost_s", time.perf_counter() - t0 + reused_s + carried_s)
            running = sum(scores) / len(scores)
            trial.report(running, step=len(scores))
            emit(
                {
                    "kind": "fold",
                    "trial": trial.number,
                    "fold": fold.index + 1,
                    "folds": opts.folds,
                    "value": value,
                    "running": running,
                    "values": values,
                    "reused_from": row.get("reused_from"),
                }
            )
            # a reused fold's rung was passed by the predecessor: judged again against the trials that
            # reached it since, a retry would be pruned on folds it already cleared (only new folds are)
            if len(scores) < len(folds) and row.get("reused_from") is None and trial.should_prune():
                trial.set_user_attr("pruned_after_folds", len(scores))
                raise optuna.TrialPruned(f"after {len(scores)} folds: {running:.4f}")
            if len(scores) < len(folds) and row.get("reused_from") is None and past(opts.stop_after):
                trial.set_user_attr("stopped_after_folds", len(scores))
                quiet.trials.add(trial.number)
                raise _StopAfter()
        return sum(scores) / len(scores)

    stopped = "trials"
    failures_in_a_row = 0
    while True:
        trials = study.get_trials(deepcopy=False)
        done = sum(counted(t) for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if done >= opts.trials:
            stopped = "trials"
            break
        if done + running >= opts.trials and running:
            stopped = "other workers hold the remaining trials"
            break
        if past(opts.minutes):
            stopped = "minutes"
            break
        if past(opts.stop_after):
            stopped = f"--stop-after {opts.stop_after:g} min passed"
            break
        if failures_in_a_row >= 3:
            stopped = "three trials in a row failed"
            break
        t0 = time.perf_counter()
        handlers = logging.getLogger("optuna").handlers  # a filter acts where a record is handled
        for handler in handlers:
            handler.addFilter(quiet)
        try:
            study.optimize(
                objective,
                n_trials=1,
                catch=(_Surplus, _StopAfter, RuntimeError, ValueError, OSError, OffroadsegError),
            )
        finally:
            for handler in handlers:
                handler.removeFilter(quiet)
        last = study.get_trials(deepcopy=False)[current[-1]] if current else None
        if last is None:
            continue
        if last.user_attrs.get("surplus"):
            stopped = "trials"
            break
        failures_in_a_row = failures_in_a_row + 1 if last.state == TrialState.FAIL else 0
        trial_times.append(time.perf_counter() - t0)
        done = trials_counted(study)
        best = _best(study)
        left = max(0, opts.trials - done)
        emit(
            {
                "kind": "trial",
                "trial": last.number,
                "state": last.state.name,
                "value": last.value,
                "done": done,
                "trials": opts.trials,
                "best": best,
                "elapsed_s": time.perf_counter() - start,
                "eta_s": (sum(trial_times) / len(trial_times)) * left,
                "pruned_after": last.user_attrs.get("pruned_after_folds"),
                "stopped_after": last.user_attrs.get("stopped_after_folds"),
                "infeasible": last.user_attrs.get("infeasible"),
                "params": decode_values(last.params),
            }
        )
        if last.user_attrs.get("stopped_after_folds"):
            stopped = (
                f"--stop-after {opts.stop_after:g} min passed: trial #{last.number} stopped after fold "
                f"{last.user_attrs['stopped_after_folds']}, its folds kept; the same command continues it"
            )
            break
    emit({"kind": "stop", "why": stopped})
    return {
        "study": opts.study,
        "handle": study,
        "trials_counted": trials_counted(study),
        "stopped": stopped,
        "failed_recovered": recovered["failed"],
    }


def trial_root(opts: TuneOptions, number: int) -> Path:
    """The folder of trial ``number``'s fold runs: ``<work-dir>/<study>/trial<n>`` (``fold<i>`` in it)."""
    return Path(opts.work_dir) / opts.study / f"trial{number:04d}"


def resume_point(study, trial, cfg: Config, fold, opts: TuneOptions) -> dict | None:
    """Where the failed trial a retry repeats (same values) left ``fold`` unfinished, to continue.

    A worker killed mid-fold (kill -9, a session's end, a lost machine) leaves the fold's ``last.ckpt``,
    written at the end of each epoch: its retry continues the fold from there, as ``train --resume`` does,
    instead of from the start. The predecessor's folder is the one it recorded for the fold (a fold resumed
    once runs in its first trial's folder), else its own ``trial<n>/fold<i>``; on another machine's disk
    there is nothing to continue.

    Returns:
        None when there is nothing to continue; else ``dir``, ``from_trial`` and ``epochs``: the epochs the
        checkpoint finished, or the one-line reason it cannot be continued (the fold then runs from the
        start in the retry's own folder).
    """
    from offroadseg.experiments.cv import fold_resume_point  # noqa: PLC0415

    origin = predecessor(study, trial)
    if origin is None:
        return None
    number = fold.index + 1
    recorded = (origin.user_attrs.get("fold_dirs") or {}).get(str(number))
    run_dir = Path(recorded) if recorded else trial_root(opts, origin.number) / f"fold{number}"
    epochs = fold_resume_point(cfg, fold, run_dir) if run_dir.is_dir() else None
    if epochs is None:
        return None
    return {"dir": str(run_dir), "from_trial": origin.number, "epochs": epochs}


def _best(study) -> dict | None:
    from optuna.trial import TrialState  # noqa: PLC0415

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        return None
    top = max(complete, key=lambda t: t.value)
    return {"trial": top.number, "value": top.value}


def _slim(row: dict, value: float) -> dict:
    """What a trial keeps of a fold row (the confusion matrix stays in the fold's folder)."""
    return {
        "fold": row["fold"],
        "objective": value,
        "miou": row.get("miou"),
        "per_class_iou": row.get("per_class_iou"),
        "val_frames": row.get("val_frames"),
        "epochs": row.get("epochs"),
        "train_s": row.get("train_s"),
        "cache_build_s": row.get("cache_build_s"),
        "total_s": row.get("total_s"),
        "scored_with": row.get("scored_with"),
        "model_checkpoint": row.get("model_checkpoint"),
        **({"reused_from": row["reused_from"]} if row.get("reused_from") is not None else {}),
        # continued from an interrupted run's checkpoint: train_s/total_s count the epochs after it only
        **(
            {"resumed_after_epochs": row["resumed_after_epochs"], "resumed_epochs_s": row["resumed_epochs_s"]}
            if row.get("resumed_after_epochs")
            else {}
        ),
    }


def ensemble_cv(study, top: int, *, exclude: Sequence[str] = (), device: str = "auto", on_fold=None) -> dict:
    """Grouped-CV figure of the ensemble of the ``top`` best complete trials (mean of their softmaxes).

    Each fold's ensemble is the members' checkpoints of that fold (kept with ``--keep-checkpoints``),
    scored on the fold's held-out frames exactly as a trial's fold is (the members' own TTA setting).

    Raises:
        ConfigError: fewer than two complete trials whose fold checkpoints are all on disk.
    """
    from optuna.trial import TrialState  # noqa: PLC0415

    from offroadseg.inference.checkpoint import load_checkpoint  # noqa: PLC0415
    from offroadseg.inference.evaluate import evaluate_loaded  # noqa: PLC0415

    if top < 2:
        raise ConfigError(f"--ensemble-top {top}: an ensemble needs at least 2 members")
    usable = []
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: -t.value):
        rows = t.user_attrs.get("fold_rows") or []
        if rows and all(r.get("model_checkpoint") and Path(r["model_checkpoint"]).is_file() for r in rows):
            usable.append(t)
    members = usable[:top]
    if len(members) < 2:
        raise ConfigError(
            f"--ensemble-top {top}: {len(members)} complete trial(s) have their fold checkpoints on disk; fix: "
            f"run the study with --keep-checkpoints (at least 2 complete trials)"
        )
    folds = len(members[0].user_attrs["fold_rows"])
    values = []
    for f in range(folds):
        loaded = [load_checkpoint(t.user_attrs["fold_rows"][f]["model_checkpoint"]) for t in members]
        scores = evaluate_loaded(loaded, split=loaded[0].config.data.val_split, device=device).scores
        value = fold_objective(scores, exclude)
        values.append(value)
        if on_fold is not None:
            on_fold(f + 1, folds, value)
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
    return {
        "members": [t.number for t in members],
        "member_cv": [t.value for t in members],
        "fold_values": values,
        "cv_mean": mean,
        "cv_std": std,
    }

"""Train, then score the chosen model the way a user would: the one home of "train, then re-score with TTA".

Shared by cross-validation folds (:mod:`offroadseg.experiments.cv`, ``tune``) and the YCOR benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from offroadseg.config import Config
from offroadseg.devices import accelerator_device
from offroadseg.progress import StepProgress
from offroadseg.training.run import TrainResult, train

__all__ = ["ScoredRun", "train_and_score"]


@dataclass
class ScoredRun:
    """A finished run and the scores of the model ``train.checkpoint`` selects."""

    result: TrainResult
    scores: dict | None  # SegmentationScores.to_dict of the val split (with TTA when eval.tta says so)
    scores_no_tta: dict | None  # the in-loop validation of that model (no TTA)
    scored_with: str
    fit_s: float
    eval_s: float


def train_and_score(
    cfg: Config,
    *,
    on_epoch: Callable[[dict], None] | None = None,
    progress: StepProgress | None = None,
    resume: bool = False,
) -> ScoredRun:
    """``train(cfg)``; with ``eval.tta`` other than ``none``, the selected checkpoint scored again on the
    val split with that TTA, on the device training used (the loaded config carries the split file).
    ``on_epoch`` gets every validation epoch's history row and ``progress`` makes the callbacks of the
    steps before the first epoch (class weights, cache builds; see :func:`offroadseg.training.run.train`);
    ``resume`` continues ``<run.dir>/checkpoints/last.ckpt`` (``train --resume``)."""
    start = time.perf_counter()
    result = train(cfg, resume=resume, on_epoch=on_epoch, progress=progress)
    fit_s = time.perf_counter() - start
    mode = cfg.train.checkpoint
    scores = no_tta = result.val_scores
    scored_with = f"{mode} checkpoint, in-loop validation (no TTA)"
    eval_s = 0.0
    if cfg.eval.tta != "none" and result.model_checkpoint is not None:
        from offroadseg.inference.checkpoint import load_checkpoint  # noqa: PLC0415
        from offroadseg.inference.evaluate import evaluate_loaded  # noqa: PLC0415

        t0 = time.perf_counter()
        loaded = load_checkpoint(result.model_checkpoint)
        scores = evaluate_loaded(
            loaded, split=cfg.data.val_split, device=accelerator_device(cfg.train.accelerator)
        ).scores
        eval_s = time.perf_counter() - t0
        scored_with = f"{mode} checkpoint ({result.model_checkpoint.name}), {cfg.eval.tta} TTA"
    return ScoredRun(result, scores, no_tta, scored_with, fit_s, eval_s)

"""``bench adapt-cv``: does adaptation to a held-out place's **images** pay, on real data (issue #17, YCOR)?

For each fold of the grouped folds ``offroadseg cv`` uses (:func:`~offroadseg.experiments.cv.plan_folds`):

1. the fold's model is trained on its train frames (:func:`~offroadseg.experiments.cv.run_fold`, checkpoint
   kept), with ``eval.tta=none`` so nothing but the model differs between before and after;
2. :func:`~offroadseg.experiments.adapt.adapt` adapts that checkpoint to the held-out frames' images (no
   labels); its labelled source is the checkpoint config's train split, i.e. the fold's train frames
   (checked: never a held-out frame);
3. the unadapted and the adapted checkpoints are scored on the held-out frames' masks by one scorer
   (adapt's ``--gt`` path: the ``predict`` predictor, one confusion matrix at the mask's resolution).

A record per fold (before, after, gain in points, seconds for training, adaptation and scoring, target
frames, adaptation frames/min) is written atomically to ``<out>/adapt_cv.json`` after every fold; a
rerun with the same ``out`` and the same setup skips the folds already recorded, keeps the finished
training of a fold whose adaptation or scoring was interrupted, and continues an interrupted training from
its last epoch (``cv.run_or_keep_fold``).

The summary checks the issue's targets from the numbers: mean gain >= +2 points, no fold below -1
point, and 1000 target frames adapted in <= 30 min (a linear extrapolation of the measured frames/min).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from offroadseg.atomic import atomic_write_text
from offroadseg.config import Config
from offroadseg.errors import ConfigError, DataError, OffroadsegError

__all__ = [
    "MEAN_GAIN_TARGET",
    "MINUTES_TARGET",
    "RESULT_NAME",
    "WORST_GAIN_FLOOR",
    "bench_adapt_cv",
    "markdown",
    "parse_fold_list",
    "select_folds",
    "summarize",
]

MEAN_GAIN_TARGET = 2.0  # points of mIoU: the mean gain over the folds must reach this
WORST_GAIN_FLOOR = -1.0  # points: no fold may lose more than this
FRAMES_TARGET = 1000  # target frames ...
MINUTES_TARGET = 30.0  # ... adapted within this many minutes (ViT-S, 2 cores)
RESULT_NAME = "adapt_cv.json"  # the resumable record file inside --out
SCORED_WITH = (
    "no TTA; predict's predictor at the mask's resolution, one confusion matrix over the held-out frames"
)


def parse_fold_list(text: str) -> list[int]:
    """``"1,3"`` -> ``[1, 3]`` (1-based fold numbers, duplicates dropped, order kept)."""
    out: list[int] = []
    for part in text.split(","):
        try:
            n = int(part.strip())
        except ValueError:
            raise ConfigError(
                f"--only-folds {text!r}: {part.strip()!r} is not a fold number; fix: e.g. --only-folds 1,3"
            ) from None
        if n not in out:
            out.append(n)
    return out


def select_folds(k: int, only: Sequence[int] | None) -> list[int]:
    """The 1-based fold numbers to run: ``only`` (checked against ``1..k``) or all ``k``."""
    if not only:
        return list(range(1, k + 1))
    bad = [n for n in only if not 1 <= n <= k]
    if bad:
        raise ConfigError(
            f"--only-folds {','.join(map(str, only))}: fold {bad[0]} does not exist (the folds are 1..{k}); "
            f"fix: e.g. --only-folds 1"
        )
    return list(only)


def _plan(cfg: Config, k: int, *, gap: int | None, seed: int, source: str):
    from offroadseg.experiments.cv import plan_folds

    try:
        return plan_folds(cfg, k, gap=gap, seed=seed, source=source)
    except DataError as exc:
        raise ConfigError(
            f"{source}: its data cannot be read ({exc}); fix: set data.root=<the dataset folder>"
        ) from None


def _held_out_samples(fcfg: Config, names: Sequence[str]):
    from offroadseg.data.datasets import list_samples

    samples = list_samples(fcfg.data, fcfg.data.val_split)
    if sorted(s.name for s in samples) != sorted(names):
        raise OffroadsegError(
            f"the fold's split file {fcfg.data.split_file} does not hold its held-out frames"
        )
    return samples


def _check_source(checkpoint: Path, fold) -> int:
    """The adaptation source (the checkpoint config's train split) must be the fold's train frames."""
    from offroadseg.config import config_from_dict
    from offroadseg.data.datasets import list_samples
    from offroadseg.inference.checkpoint import read_checkpoint

    data = config_from_dict(read_checkpoint(checkpoint)["hyper_parameters"]["config"]).data
    names = {s.name for s in list_samples(data, data.train_split)}
    if names & set(fold.val) or names != set(fold.train):
        raise OffroadsegError(
            f"{checkpoint}: its train split is not fold {fold.index + 1}'s train frames "
            f"({len(names & set(fold.val))} held-out frames in it); adapting on it would leak labels"
        )
    return len(names)


def _gt_folder(folder: Path, samples) -> Path:
    """A folder of links ``<name><mask suffix>`` -> each held-out mask: adapt's scorer matches by name."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for s in samples:
        (folder / f"{s.name}{s.label.suffix}").symlink_to(Path(s.label).resolve())
    return folder


def _score(checkpoints: dict[str, Path], samples, gt_dir: Path, device) -> dict:
    """mIoU of each checkpoint on the held-out frames, all through adapt's ``--gt`` scorer."""
    from offroadseg.experiments.adapt import scores_on_gt
    from offroadseg.experiments.adapt_frames import Frames
    from offroadseg.inference.checkpoint import load_checkpoint

    frames = Frames([s.name for s in samples], np.empty((0,)), paths=[Path(s.image) for s in samples])
    models = {label: load_checkpoint(path, device=device) for label, path in checkpoints.items()}
    scores = scores_on_gt(models, frames, gt_dir, device)
    if scores["frames"] != len(samples):
        raise OffroadsegError(f"scored {scores['frames']} of {len(samples)} held-out frames ({gt_dir})")
    return scores


def _train_fold(cfg: Config, fold, k: int, fold_dir: Path, say: Callable[[str], None]) -> dict:
    """``run_fold``'s row in ``fold_dir/train``; a training an earlier invocation finished there with the
    same config and frames is kept (``kept``, so an interrupted adaptation does not cost the training
    again) and one it left unfinished is continued from its last epoch (``cv.run_or_keep_fold``)."""
    from offroadseg.experiments.cv import run_or_keep_fold

    n = fold.index + 1
    label = f"fold {n}/{k}: training on {len(fold.train)} frames ({len(fold.val)} held out)"
    row = run_or_keep_fold(
        cfg, fold, k, fold_dir / "train", keep_checkpoints=True, say=lambda m: say(f"{label}: {m}")
    )
    if not row["model_checkpoint"]:
        raise OffroadsegError(f"fold {n}: training wrote no checkpoint in {fold_dir / 'train'}")
    return row


def run_adapt_fold(
    cfg: Config, fold, k: int, fold_dir: Path, settings, *, say: Callable[[str], None]
) -> dict:
    """Train (or reuse the training of an interrupted invocation), adapt and score one fold; its record."""
    from offroadseg.devices import accelerator_device
    from offroadseg.experiments.adapt import adapt
    from offroadseg.experiments.cv import fold_config

    n = fold.index + 1
    row = _train_fold(cfg, fold, k, fold_dir, say)
    train_s = row["wall_s"]
    checkpoint = Path(row["model_checkpoint"])
    samples = _held_out_samples(fold_config(cfg, fold, fold_dir / "train"), fold.val)
    source_frames = _check_source(checkpoint, fold)
    device = accelerator_device(cfg.train.accelerator)
    say(f"fold {n}/{k}: adapting on the {len(samples)} held-out images (labels withheld)")
    t = time.perf_counter()
    res = adapt(
        checkpoint,
        [str(s.image) for s in samples],
        fold_dir / "adapted",
        settings=settings,
        device=device,
        overwrite=True,
        say=lambda m: say(f"fold {n}/{k}: {m}"),
    )
    adapt_s = time.perf_counter() - t
    say(f"fold {n}/{k}: scoring the unadapted and the adapted model on the held-out masks")
    t = time.perf_counter()
    gt = _score(
        {"before": checkpoint, "after": res.checkpoint}, samples, _gt_folder(fold_dir / "gt", samples), device
    )
    score_s = time.perf_counter() - t
    before, after = gt["before"]["miou"], gt["after"]["miou"]
    return {
        "fold": n,
        "folds": k,
        "train_frames": len(fold.train),
        "source_frames": res.summary["source_frames"],
        "source_split_frames": source_frames,
        "target_frames": len(samples),
        "val_groups": list(fold.val_groups),
        "checkpoint": str(checkpoint),
        "adapted_checkpoint": str(res.checkpoint),
        "report": str(res.report),
        "before": before,
        "after": after,
        "gain_points": 100.0 * (after - before),
        "in_loop_miou_no_tta": row["miou_no_tta"],
        "per_class_before": gt["before"]["per_class_iou"],
        "per_class_after": gt["after"]["per_class_iou"],
        "collapsed": list(res.collapsed),
        "shipped_round": res.shipped_round,
        "scored_with": SCORED_WITH,
        "training_reused": bool(row.get("kept")),
        "seconds": {
            "train": train_s,
            "cache_build": row["cache_build_s"],
            "adapt": adapt_s,
            "adapt_backbone_pass": res.summary["seconds"]["backbone_pass"],
            "score": score_s,
        },
        "adapt_frames_per_min": 60.0 * len(samples) / adapt_s if adapt_s > 0 else None,
    }


def summarize(records: Sequence[dict], k: int) -> dict:
    """Mean and worst gain, the issue's two quality checks and the 1000-frame time check, from the records.

    A check over fewer than ``k`` folds says so (``folds_done`` < ``folds``): it is met *so far*.
    """
    recs = sorted(records, key=lambda r: r["fold"])
    gains = [r["gain_points"] for r in recs]
    adapt_s = sum(r["seconds"]["adapt"] for r in recs)
    frames = sum(r["target_frames"] for r in recs)
    per_min = 60.0 * frames / adapt_s if adapt_s > 0 else None
    minutes = FRAMES_TARGET / per_min if per_min else None
    worst = min(recs, key=lambda r: r["gain_points"]) if recs else None
    mean = float(np.mean(gains)) if gains else None
    return {
        "folds": k,
        "folds_done": len(recs),
        "complete": len(recs) == k,
        "before_mean": float(np.mean([r["before"] for r in recs])) if recs else None,
        "after_mean": float(np.mean([r["after"] for r in recs])) if recs else None,
        "mean_gain_points": mean,
        "worst_gain_points": worst["gain_points"] if worst else None,
        "worst_fold": worst["fold"] if worst else None,
        "adapt_frames_per_min": per_min,
        "minutes_for_1000_frames": minutes,
        "checks": {
            "mean_gain": {
                "target": f"mean gain >= +{MEAN_GAIN_TARGET:.1f} points",
                "value": mean,
                "met": None if mean is None else mean >= MEAN_GAIN_TARGET,
            },
            "worst_fold": {
                "target": f"no fold below {WORST_GAIN_FLOOR:+.1f} point",
                "value": worst["gain_points"] if worst else None,
                "met": None if worst is None else worst["gain_points"] >= WORST_GAIN_FLOOR,
            },
            "adapt_time": {
                "target": f"{FRAMES_TARGET} frames adapted in <= {MINUTES_TARGET:.0f} min (extrapolated)",
                "value": minutes,
                "met": None if minutes is None else minutes <= MINUTES_TARGET,
            },
        },
    }


def _verdict(check: dict) -> str:
    return "n/a" if check["met"] is None else ("met" if check["met"] else "NOT met")


def markdown(records: Sequence[dict], summary: dict) -> str:
    """The per-fold table and the checks, as markdown."""
    lines = [
        "| fold | target frames | mIoU unadapted | mIoU adapted | gain (points) | collapse | train | adapt "
        "| score | adapt frames/min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: r["fold"]):
        s = r["seconds"]
        lines.append(
            f"| {r['fold']}/{r['folds']} | {r['target_frames']} | {_fmt(r['before'])} | {_fmt(r['after'])} "
            f"| {r['gain_points']:+.1f} | {'yes' if r['collapsed'] else 'no'} | {s['train']:.0f} s "
            f"| {s['adapt']:.0f} s | {s['score']:.0f} s | {_fmt(r['adapt_frames_per_min'], 1)} |"
        )
    c = summary["checks"]
    done = f"{summary['folds_done']} of {summary['folds']} folds" + (
        "" if summary["complete"] else ", so far"
    )
    lines += [
        "",
        f"- {c['mean_gain']['target']}: {_verdict(c['mean_gain'])} "
        f"(mean gain {_points(c['mean_gain']['value'])}; {done})",
        f"- {c['worst_fold']['target']}: {_verdict(c['worst_fold'])} "
        f"(worst fold {summary['worst_fold']}: {_points(c['worst_fold']['value'])}; {done})",
        f"- {c['adapt_time']['target']}: {_verdict(c['adapt_time'])} "
        f"({_fmt(summary['adapt_frames_per_min'], 1)} frames/min -> {_fmt(c['adapt_time']['value'], 1)} min)",
    ]
    return "\n".join(lines) + "\n"


def _points(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1f} points"


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _load_previous(path: Path, setup: dict) -> list[dict]:
    if not path.is_file():
        return []
    try:
        previous = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}); fix: choose another --out or remove it") from None
    if previous.get("setup") != setup:
        raise ConfigError(
            f"--out {path.parent} holds folds of another setup (config, overrides, folds, seed, gap or adapt "
            f"settings differ); fix: choose another --out, or rerun with the same arguments to resume"
        )
    return list(previous.get("records", []))


def bench_adapt_cv(
    cfg: Config,
    k: int,
    out: str | Path,
    *,
    setup: dict,
    only: Sequence[int] | None = None,
    gap: int | None = None,
    seed: int = 0,
    settings: Sequence[str] = (),
    extra: Callable[[], dict] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict:
    """Run the benchmark over the selected folds; skip those already recorded in ``<out>/adapt_cv.json``.

    Args:
        cfg: the resolved config (generic layout); its ``eval.tta`` is set to ``none``.
        k: number of folds.
        out: the folder of the fold runs and of ``adapt_cv.json``.
        setup: what identifies the benchmark (config file, overrides, ...): a rerun must give the same one.
        only: 1-based fold numbers to run (default: all).
        settings: ``key=value`` adaptation settings (:class:`~offroadseg.experiments.adapt.AdaptSettings`).
        extra: called once the inputs are checked; what it returns is written beside the records (e.g.
            the machine header, which takes a second to measure).
        say: receives the progress lines.

    Returns:
        ``setup``, ``records`` (every fold recorded so far, this invocation's and earlier ones), ``summary``
        (:func:`summarize`), ``markdown``, ``ran`` and ``skipped`` (fold numbers of this invocation).
    """
    from offroadseg.config import config_from_dict
    from offroadseg.experiments.adapt import parse_settings
    from offroadseg.metrics import json_ready

    say = say or (lambda _m: None)
    adapt_settings = parse_settings(list(settings))
    setup = {**setup, "folds": k, "seed": seed, "gap": gap, "settings": asdict(adapt_settings)}
    cfg = config_from_dict(cfg.to_dict())
    cfg.eval.tta = "none"  # before and after scored alike, and no TTA pass after training
    folds = _plan(cfg, k, gap=gap, seed=seed, source=str(setup.get("config", "config")))  # checks k >= 2
    wanted = select_folds(k, only)
    out = Path(out)
    path = out / RESULT_NAME
    records = _load_previous(path, json_ready(setup))
    extras = extra() if extra is not None else {}
    done = {r["fold"] for r in records}
    result: dict = {}

    def write() -> None:
        summary = summarize(records, k)
        result.update(
            setup=setup, **extras, records=sorted(records, key=lambda r: r["fold"]), summary=summary,
            markdown=markdown(records, summary), ran=ran, skipped=skipped,
        )  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(json_ready(result), indent=2))

    ran, skipped = [], [n for n in wanted if n in done]
    for n in skipped:
        say(f"fold {n}/{k}: already recorded in {path}; skipped")
    write()  # the setup is pinned before the first fold runs: a fold's saved training belongs to it
    for n in wanted:
        if n in done:
            continue
        records.append(run_adapt_fold(cfg, folds[n - 1], k, out / f"fold{n}", adapt_settings, say=say))
        ran.append(n)
        write()
    return result

"""``bench train``: epoch time of one config without and with each cache, in one run.

Variants (each a fresh cache folder, so build times are real):

- ``baseline``: the reference's way: no cache, ``data.num_workers=0`` (decode + backbone every step);
- ``uncached``: no cache, the configured DataLoader workers;
- ``decoded``: the decoded-data cache (backbone every step);
- ``features``: decoded + frozen-feature cache (``data.cache.views`` of the config);
- ``features-v<K>``: the same with K cached augmented views per image.

Epoch time is the wall time of an epoch's training and validation loops; checkpoint
writing (the same for every variant) is reported apart, as ``epoch_wall_s``. A cached
variant's first epoch also carries the time its caches took to build.
"""

from __future__ import annotations

import copy
import re
import shutil
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from offroadseg.config import Config
from offroadseg.devices import accelerator_device
from offroadseg.errors import ConfigError
from offroadseg.training.caches import attach_caches
from offroadseg.training.datamodule import SegDataModule, default_workers
from offroadseg.training.run import (
    CLASS_WEIGHT_MODE,
    build_module,
    build_trainer,
    compute_class_weights,
    prepare,
)

__all__ = ["DEFAULT_VARIANTS", "EpochTimer", "bench_train"]

DEFAULT_VARIANTS = ("baseline", "uncached", "decoded", "features")
_DESCRIPTIONS = {
    "baseline": "no cache, num_workers=0 (reference: decode + backbone every step)",
    "uncached": "no cache, default DataLoader workers",
    "decoded": "decoded-data cache (backbone every step)",
    "features": "decoded + frozen-feature cache",
}


class EpochTimer(L.Callback):
    """Wall time of each epoch's training and validation loops.

    ``epoch_s`` stops when validation ends, before checkpoints are written (ModelCheckpoint
    always runs after the other callbacks): writing a ViT checkpoint costs the same with or
    without a cache. ``wall_s`` runs from one epoch's start to the next (checkpoints included).
    """

    def __init__(self) -> None:
        self.epoch_s: list[float] = []
        self.wall_s: list[float] = []
        self._start: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        if self._start is not None:
            self.wall_s.append(now - self._start)
        self._start = now

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self._start is not None:
            self.epoch_s.append(time.perf_counter() - self._start)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._start is not None:
            self.wall_s.append(time.perf_counter() - self._start)
            self._start = None


@dataclass(frozen=True)
class _Variant:
    name: str
    decoded: bool
    features: bool
    views: int | None  # None: the config's
    workers: int | None  # None: the config's

    @property
    def description(self) -> str:
        if self.name.startswith("features-v"):
            return f"decoded + frozen-feature cache, {self.views} cached augmented views per image"
        return _DESCRIPTIONS[self.name]


def _variant(name: str) -> _Variant:
    if name == "baseline":
        return _Variant(name, False, False, None, 0)
    if name == "uncached":
        return _Variant(name, False, False, None, None)
    if name == "decoded":
        return _Variant(name, True, False, None, None)
    if name == "features":
        return _Variant(name, True, True, None, None)
    match = re.fullmatch(r"features-v(\d+)", name)
    if match and int(match.group(1)) >= 1:
        return _Variant(name, True, True, int(match.group(1)), None)
    raise ConfigError(
        f"unknown bench variant {name!r}; valid: baseline, uncached, decoded, features, features-v<K> (K >= 1)"
    )


def _steady(epochs: list[float]) -> float:
    """Typical epoch time after the first (the first when there is only one): the median."""
    return statistics.median(epochs[1:]) if len(epochs) > 1 else epochs[0]


def bench_train(
    cfg: Config,
    *,
    work_dir: str | Path,
    epochs: int = 3,
    limit: int | None = None,
    limit_val: int | None = None,
    variants: tuple[str, ...] | list[str] = DEFAULT_VARIANTS,
    on_variant: Callable[[str, dict], None] | None = None,
) -> dict:
    """Train ``cfg`` once per variant and compare epoch times against the baseline.

    Args:
        cfg: the resolved config (its ``data.cache`` section is overridden per variant).
        work_dir: run directories and fresh cache folders of the variants (emptied first).
        epochs: epochs per variant (>= 2 to see epochs after the first).
        limit: use the first ``limit`` training images only.
        limit_val: the first ``limit_val`` validation images (default: all).
        variants: names, ``baseline`` first (added when missing).
        on_variant: called with ``(name, result)`` after each variant.

    Returns:
        ``baseline_epoch_s`` (the baseline's fastest epoch), ``cached_epoch_s`` (median epoch
        after the first of the first feature-cached variant), ``speedup`` (their ratio), ``first_epoch_ratio``,
        ``cache_build_s``, ``cache_bytes``, and per variant its epoch times, cache report and val mIoU.
    """
    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    names = list(dict.fromkeys(["baseline", *variants]))
    specs = [_variant(n) for n in names]
    work_dir = Path(work_dir)
    weights_cache: dict[str, list[float] | None] = {}
    results: dict[str, dict] = {}
    for spec in specs:
        results[spec.name] = _run_variant(cfg, spec, work_dir, epochs, limit, limit_val, weights_cache)
        if on_variant is not None:
            on_variant(spec.name, results[spec.name])
    base = results["baseline"]
    # The baseline has no first-epoch effect (nothing is built); its fastest epoch keeps the
    # ratios conservative when background I/O (checkpoint writeback) slows one epoch down.
    baseline_epoch = min(base["epoch_s"])
    cached_name = next(
        (n for n in names if n.startswith("features") and results[n]["caches"]["features"]), None
    )
    out = {
        "epochs": epochs,
        "train_images": base["train_images"],
        "val_images": base["val_images"],
        "image_size": list(cfg.data.image_size),
        "backbone": cfg.model.backbone.name,
        "weights": cfg.model.backbone.weights,
        "head": cfg.model.head.name,
        "device": _device_name(cfg),
        "cpu_threads": torch.get_num_threads(),
        "variants": results,
        "baseline_epoch_s": baseline_epoch,
        "baseline_first_epoch_s": base["first_epoch_s"],
        "ratios": {
            n: baseline_epoch / (min(r["epoch_s"]) if n == "baseline" else _steady(r["epoch_s"]))
            for n, r in results.items()
        },
        "first_epoch_ratios": {n: r["first_epoch_s"] / baseline_epoch for n, r in results.items()},
        "cached_variant": cached_name,
        "cached_epoch_s": None,
        "speedup": None,
        "first_epoch_ratio": None,
        "cache_build_s": None,
        "cache_bytes": None,
    }
    if cached_name is not None:
        c = results[cached_name]
        out.update(
            cached_epoch_s=_steady(c["epoch_s"]),
            speedup=baseline_epoch / _steady(c["epoch_s"]),
            first_epoch_ratio=c["first_epoch_s"] / baseline_epoch,
            cache_build_s=c["caches"]["build_s"],
            cache_bytes=c["caches"]["bytes"],
        )
    return out


def _device_name(cfg: Config) -> str:
    if accelerator_device(cfg.train.accelerator).type == "cuda":
        return torch.cuda.get_device_name(0)
    return "cpu"


def _run_variant(cfg, spec: _Variant, work_dir: Path, epochs, limit, limit_val, weights_cache) -> dict:
    v = copy.deepcopy(cfg)
    v.train.epochs = epochs
    v.train.early_stopping_patience = 0
    v.run.progress = False
    v.run.dir = str(work_dir / spec.name / "run")
    v.data.cache.decoded = spec.decoded
    v.data.cache.features = spec.features
    v.data.cache.dir = str(work_dir / spec.name / "cache")
    if spec.views is not None:
        v.data.cache.views = spec.views
    if spec.workers is not None:
        v.data.num_workers = spec.workers
    shutil.rmtree(work_dir / spec.name, ignore_errors=True)
    dm = prepare(v)  # the same checks, seeding and data module as train()
    _limit(dm, limit, limit_val)
    mode = CLASS_WEIGHT_MODE.get(v.loss.class_weights)
    if mode:
        key = f"{mode}:{v.loss.max_weight}"
        if key not in weights_cache:  # the same for every variant: computed once, outside the timings
            weights_cache[key] = compute_class_weights(dm, v.loss.max_weight, mode)
        weights = weights_cache[key]
    else:
        weights = None
    module = build_module(v, dm, weights)
    start = time.perf_counter()
    report = attach_caches(v, dm, module)
    setup_s = time.perf_counter() - start
    timer = EpochTimer()
    trainer = build_trainer(v, Path(v.run.dir), extra_callbacks=[timer])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        trainer.fit(module, datamodule=dm)
    return {
        "description": spec.description,
        "num_workers": default_workers(v.data.num_workers),
        "train_images": len(dm.train_samples),
        "val_images": len(dm.val_samples),
        "epoch_s": timer.epoch_s,
        "epoch_wall_s": timer.wall_s,  # checkpoint writing included
        "steady_epoch_s": _steady(timer.epoch_s),
        "setup_s": setup_s,
        "first_epoch_s": setup_s + timer.epoch_s[0],
        "caches": report.to_dict(),
        "val_miou": [h.get("val_miou") for h in module.history],
    }


def _limit(dm: SegDataModule, limit: int | None, limit_val: int | None) -> None:
    if limit is not None:
        dm.train_samples = dm.train_samples[:limit]
        dm.train_dataset.samples = dm.train_samples
    if limit_val is not None:
        dm.val_samples = dm.val_samples[:limit_val]
        dm.val_dataset.samples = dm.val_samples

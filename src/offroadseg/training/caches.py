"""Where the decoded-data and frozen-feature caches attach to a training run.

:func:`attach_caches` swaps the datamodule's datasets for cached ones when the config
asks for it (``data.cache.decoded`` / ``data.cache.features``), and returns a
:class:`CacheReport` (what was built or reused, sizes, build time, and why a cache was
turned off). A cache that cannot be used is turned off with a :class:`CacheWarning`,
never silently.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from offroadseg.config import AugmentConfig, Config
from offroadseg.data.cache import CacheWarning, DecodedCache, cache_root, open_decoded_cache
from offroadseg.data.transforms import build_train_transform, photometric_or_geometric
from offroadseg.errors import ConfigError
from offroadseg.training.datamodule import SegDataModule, default_workers
from offroadseg.training.features import FeatureDataset, backbone_digest, feature_key, open_feature_store

__all__ = ["CacheReport", "attach_caches", "feature_cache_blockers"]


@dataclass
class CacheReport:
    """What :func:`attach_caches` did."""

    decoded: bool = False  # the decoded-data cache is in use
    features: bool = False  # the frozen-feature cache is in use
    views: int = 1  # cached views per training image
    messages: list[str] = field(default_factory=list)  # for a person: turned off, rebuilt, ...
    stores: list[dict] = field(default_factory=list)  # kind, split, path, built, build_s, bytes
    build_s: float = 0.0  # seconds spent building (0 when everything was reused)
    setup_s: float = 0.0  # seconds attach_caches took (hashing, opening, building)

    @property
    def nbytes(self) -> int:
        return sum(s["bytes"] for s in self.stores)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "bytes": self.nbytes}


def feature_cache_blockers(cfg: Config, module) -> list[str]:
    """Reasons the frozen-feature cache cannot serve this config (empty: it can)."""
    reasons = []
    b = cfg.model.backbone
    if not b.frozen or b.unfreeze_last > 0 or not module.model.backbone_frozen:
        reasons.append(
            "the backbone is trained (model.backbone.frozen=false or unfreeze_last > 0), so its features "
            "change every step"
        )
    uncached = photometric_or_geometric(cfg.data.augment)
    if uncached and cfg.data.cache.views <= 1:
        reasons.append(
            f"augmentations {', '.join(uncached)} change the image every epoch and data.cache.views=1; "
            f"fix: set data.cache.views=K (K cached augmented views per image) or turn them off"
        )
    return reasons


def _build_device(cfg: Config) -> torch.device:
    accel = cfg.train.accelerator
    if accel in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The backbone's autocast dtype while building the cache: the one training would use."""
    from offroadseg.training.run import resolve_precision  # noqa: PLC0415 (run imports this module lazily)

    precision = resolve_precision(cfg.train.precision, "gpu" if device.type == "cuda" else "cpu")
    if precision == "bf16-mixed":
        return torch.bfloat16
    if precision == "16-mixed":
        return torch.float16
    return None


def _store_row(kind: str, split: str, obj) -> dict:
    return {
        "kind": kind,
        "split": split,
        "path": str(obj.path),
        "built": bool(getattr(obj, "built", False)),
        "build_s": float(getattr(obj, "build_s", 0.0)),
        "bytes": int(obj.nbytes),
    }


def attach_caches(
    cfg: Config,
    dm: SegDataModule,
    module,
    *,
    progress: Callable[[str], Callable[[int, int], None] | None] | None = None,
) -> CacheReport:
    """Swap the datamodule's datasets for cached ones when the config asks for it.

    Args:
        cfg: the resolved config.
        dm: its datamodule (``train_dataset`` / ``val_dataset`` are replaced).
        module: the :class:`~offroadseg.training.module.SegmentationModule` (its backbone
            computes the features).
        progress: ``progress(description)`` returns a ``(done, total)`` callback, or None.
    """
    start = time.perf_counter()
    report = CacheReport()
    cc = cfg.data.cache
    if cc.views < 1:
        raise ConfigError(
            f"data.cache.views must be >= 1, got {cc.views}; fix: data.cache.views=1 (or K > 1)"
        )
    root = cache_root(cc.dir)
    size = (int(cfg.data.image_size[0]), int(cfg.data.image_size[1]))
    workers = default_workers(cfg.data.num_workers)
    full_res = bool(cfg.eval.full_resolution)
    tax = dm.taxonomy

    def bar(desc: str):
        return progress(desc) if progress is not None else None

    use_features = cc.features
    if use_features:
        blockers = feature_cache_blockers(cfg, module)
        if blockers:
            use_features = False
            for reason in blockers:
                msg = f"frozen-feature cache off: {reason}"
                report.messages.append(msg)
                warnings.warn(msg, CacheWarning, stacklevel=2)

    if cc.decoded:
        # Building must not consume the run's random numbers (a DataLoader draws a seed), so a run
        # that reuses the stores trains exactly like the one that built them.
        with warnings.catch_warnings(record=True) as caught, torch.random.fork_rng(devices=[]):
            warnings.simplefilter("always", CacheWarning)
            train_cache = open_decoded_cache(
                dm.train_samples,
                tax,
                image_size=size,
                unknown=cfg.data.unknown_values,
                root=root,
                workers=workers,
                progress=bar("decode train"),
            )
            val_cache = open_decoded_cache(
                dm.val_samples,
                tax,
                image_size=size,
                unknown=cfg.data.unknown_values,
                full_res=full_res,
                root=root,
                workers=workers,
                progress=bar("decode val"),
            )
        _relay(caught, report)
        dm.train_dataset.loader = train_cache
        dm.val_dataset.loader = val_cache
        report.decoded = True
        report.stores += [
            _store_row("decoded", "train", train_cache),
            _store_row("decoded", "val", val_cache),
        ]

    if use_features:
        with torch.random.fork_rng(devices=[]):
            _features_block(cfg, dm, module, report, root=root, size=size, bar=bar)

    device = _build_device(cfg)
    if device.type == "cuda":
        # Conv heads run faster in channels-last on tensor cores; a no-op for linear layers.
        module.model.head.to(memory_format=torch.channels_last)
    report.build_s = sum(s["build_s"] for s in report.stores)
    report.setup_s = time.perf_counter() - start
    return report


def _features_block(cfg, dm, module, report, *, root, size, bar) -> None:
    # Features are computed from the datasets' loaders: the decoded store when it is on.
    loaders = (dm.train_dataset.loader, dm.val_dataset.loader)
    _attach_features(cfg, dm, module, report, *loaders, root=root, size=size, bar=bar)


def _relay(caught, report: CacheReport) -> None:
    for w in caught:
        if issubclass(w.category, CacheWarning):
            report.messages.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _without_hflip(aug: AugmentConfig) -> AugmentConfig:
    return dataclasses.replace(aug, hflip=0.0)


def _attach_features(cfg, dm, module, report, train_loader, val_loader, *, root: Path, size, bar) -> None:
    model = module.model
    cc = cfg.data.cache
    views = cc.views
    if views > 1 and not photometric_or_geometric(cfg.data.augment):
        views = 1
        report.messages.append(
            f"data.cache.views={cc.views} but no augmentation other than hflip is on: the views would be "
            f"identical, so 1 view is cached (hflip is applied in feature space)"
        )
    device = _build_device(cfg)
    amp = _autocast_dtype(cfg, device)
    digest = backbone_digest(model.backbone)
    b = cfg.model.backbone
    common = dict(
        taxonomy=dm.taxonomy.to_dict(),
        image_size=size,
        unknown=cfg.data.unknown_values,
        backbone_name=b.name,
        weights=b.weights,
        digest=digest,
        layers=list(model.backbone.layer_indices),
        pad_mode=model.pad_mode,
        seed=cfg.train.seed,
    )
    aug_no_flip = _without_hflip(cfg.data.augment)
    transform = (
        build_train_transform(aug_no_flip, ignore_index=dm.taxonomy.ignore_index) if views > 1 else None
    )
    full_res = bool(cfg.eval.full_resolution)
    batch = 16 if device.type == "cuda" else max(1, cfg.eval.batch_size)
    # Decoded pairs come out of a memory map: no worker needed, and none competes with the backbone.
    workers = 0 if isinstance(train_loader, DecodedCache) else default_workers(cfg.data.num_workers)
    model.to(device)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CacheWarning)
            train_store = open_feature_store(
                dm.train_samples,
                train_loader,
                model,
                key=feature_key(
                    dm.train_samples,
                    views=views,
                    augment=dataclasses.asdict(aug_no_flip),
                    full_res=False,
                    **common,
                ),
                root=root,
                image_size=size,
                views=views,
                transform=transform,
                seed=cfg.train.seed,
                device=device,
                autocast_dtype=amp,
                batch_size=batch,
                workers=workers,
                progress=bar("features train"),
            )
            val_store = open_feature_store(
                dm.val_samples,
                val_loader,
                model,
                key=feature_key(dm.val_samples, views=1, augment=None, full_res=full_res, **common),
                root=root,
                image_size=size,
                full_res=full_res,
                device=device,
                autocast_dtype=amp,
                batch_size=batch,
                workers=workers,
                progress=bar("features val"),
            )
        _relay(caught, report)
    finally:
        model.to("cpu")
    ignore = dm.taxonomy.ignore_index
    dm.train_dataset = FeatureDataset(
        train_store,
        dm.train_samples,
        patch_size=model.patch_size,
        ignore_index=ignore,
        hflip=cfg.data.augment.hflip,
    )
    dm.val_dataset = FeatureDataset(
        val_store, dm.val_samples, patch_size=model.patch_size, ignore_index=ignore, full_res=full_res
    )
    report.features = True
    report.views = views
    report.stores += [_store_row("features", "train", train_store), _store_row("features", "val", val_store)]

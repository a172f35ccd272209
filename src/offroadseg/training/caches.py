"""Where the decoded-data and frozen-feature caches attach to a training run.

:func:`attach_caches` swaps the datamodule's datasets for cached ones when the config
asks for it (``data.cache.decoded`` / ``data.cache.features``), and returns a
:class:`CacheReport` (what was built or reused, sizes, build time, and why a cache was
turned off). A cache that cannot be used is turned off with a :class:`CacheWarning`,
never silently.

The feature cache is one *frame store* over train + val (see :mod:`offroadseg.training.features`).
Cross-validation builds the same store and cuts its folds from it::

    store = open_frame_store(cfg, module, samples, taxonomy=tax, progress=cb)
    train_ds, val_ds = feature_datasets(store, train_idx, val_idx, cfg, module)

``samples`` may come in any order (the store keeps them sorted by image path; ``store.samples``
is that order and ``train_idx``/``val_idx`` index it, ``store.indices_of(samples)`` maps back).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from offroadseg.config import AugmentConfig, Config
from offroadseg.data.cache import CacheWarning, cache_root, open_decoded_cache
from offroadseg.data.datasets import Sample, SegmentationDataset
from offroadseg.data.transforms import build_train_transform, photometric_or_geometric
from offroadseg.devices import accelerator_device
from offroadseg.errors import ConfigError
from offroadseg.progress import StepProgress
from offroadseg.taxonomy import Taxonomy
from offroadseg.training.datamodule import SegDataModule, default_workers
from offroadseg.training.features import (
    FeatureDataset,
    FrameStore,
    cache_digest,
    canonical_samples,
    feature_key,
    open_feature_store,
)
from offroadseg.training.hardware import backbone_precision

__all__ = [
    "CacheReport",
    "attach_caches",
    "feature_cache_blockers",
    "feature_datasets",
    "open_frame_store",
    "pass_precision",
    "stored_blocks",
]


@dataclass
class CacheReport:
    """What :func:`attach_caches` did."""

    decoded: bool = False  # the decoded-data cache is in use
    features: bool = False  # the frozen-feature cache is in use
    views: int = 1  # cached views per training image
    precision: str | None = None  # of the backbone pass that built the feature store (fp32 | bf16 | fp16)
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
    """Reasons the feature cache cannot serve this config (empty: it can).

    Raises:
        ConfigError: LoRA adapters on blocks the cache would skip (``lora.blocks > train_blocks``).
    """
    reasons = []
    backbone = module.model.backbone
    if any(p.requires_grad for p in backbone.model.embeddings.parameters()):
        reasons.append(
            f"model.backbone.train_blocks={backbone.train_blocks} trains the whole backbone (embeddings "
            f"included), so nothing before it can be cached; fix: train_blocks < {backbone.num_layers}"
        )
    elif backbone.lora_blocks > backbone.train_blocks:
        raise ConfigError(
            f"model.backbone.lora.blocks={backbone.lora_blocks} > model.backbone.train_blocks="
            f"{backbone.train_blocks}: with data.cache.features=true the adapters must sit in the blocks "
            f"that run from the cache; fix: lora.blocks <= train_blocks, train_blocks={backbone.lora_blocks}, "
            f"or data.cache.features=false"
        )
    uncached = photometric_or_geometric(cfg.data.augment)
    if uncached and cfg.data.cache.views <= 1:
        reasons.append(
            f"augmentations {', '.join(uncached)} change the image every epoch and data.cache.views=1; "
            f"fix: set data.cache.views=K (K cached augmented views per image) or turn them off"
        )
    return reasons


def _build_device(cfg: Config) -> torch.device:
    """This process's training device (under DDP each rank builds on its own GPU)."""
    device = accelerator_device(cfg.train.accelerator)
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if device.type == "cuda" else device


def pass_precision(cfg: Config, device: torch.device) -> str:
    """The backbone pass's precision while building the store: training's on a GPU; on a CPU bf16 where
    it is native and ``train.precision`` is auto (:func:`~offroadseg.training.hardware.backbone_precision`)."""
    return backbone_precision(cfg.train.precision, "gpu" if device.type == "cuda" else "cpu")


def _store_row(kind: str, split: str, obj) -> dict:
    return {
        "kind": kind,
        "split": split,
        "path": str(obj.path),
        "built": bool(getattr(obj, "built", False)),
        "build_s": float(getattr(obj, "build_s", 0.0)),
        "bytes": int(obj.nbytes),
        "precision": obj.meta.get("precision", "fp32") if kind == "features" else None,
    }


def attach_caches(
    cfg: Config,
    dm: SegDataModule,
    module,
    *,
    progress: StepProgress | None = None,
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
    _frame_views(cfg)  # refuses views < 1 before any work
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

    if cc.decoded and not use_features:  # with features on, the frame store decodes what it needs
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
            _attach_features(cfg, dm, module, report, bar=bar)

    device = _build_device(cfg)
    if device.type == "cuda":
        # Conv heads run faster in channels-last on tensor cores; a no-op for linear layers.
        module.model.head.to(memory_format=torch.channels_last)
    report.build_s = sum(s["build_s"] for s in report.stores)
    report.setup_s = time.perf_counter() - start
    return report


def _relay(caught, report: CacheReport) -> None:
    for w in caught:
        if issubclass(w.category, CacheWarning):
            report.messages.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _without_hflip(aug: AugmentConfig) -> AugmentConfig:
    return dataclasses.replace(aug, hflip=0.0)


def _frame_views(cfg: Config, report: CacheReport | None = None) -> int:
    views = cfg.data.cache.views
    if views < 1:
        raise ConfigError(f"data.cache.views must be >= 1, got {views}; fix: data.cache.views=1 (or K > 1)")
    if views > 1 and not photometric_or_geometric(cfg.data.augment):
        if report is not None:
            report.messages.append(
                f"data.cache.views={views} but no augmentation other than hflip is on: the views would be "
                f"identical, so 1 view is cached (hflip is applied in feature space)"
            )
        return 1
    return views


def open_frame_store(
    cfg: Config,
    module,
    samples: list[Sample],
    *,
    taxonomy: Taxonomy,
    progress: Callable[[int, int], None] | None = None,
    decode_progress: Callable[[int, int], None] | None = None,
) -> FrameStore:
    """The feature store of ``samples`` (any order, duplicates dropped) for this config and module.

    Reused when one with the same frames, training size, frozen backbone part, ``train_blocks``,
    views and seed exists under ``data.cache.dir``; else built on the run's device
    (``train.accelerator``), in :func:`pass_precision` (part of the store's key and metadata). Draws no random numbers
    from the caller's generators.

    Args:
        cfg: the resolved config (data, model, train sections).
        module: the :class:`~offroadseg.training.module.SegmentationModule` (its backbone computes).
        samples: the frames, e.g. train + val of a dataset.
        taxonomy: the taxonomy the masks are encoded with.
        progress: ``(done views, total views)`` while the backbone runs.
        decode_progress: ``(done, total)`` while the decoded cache is built (``data.cache.decoded``).

    Raises:
        ConfigError: the config cannot use the feature cache (the reasons are listed).
    """
    blockers = feature_cache_blockers(cfg, module)
    if blockers:
        raise ConfigError("the feature cache cannot serve this config: " + "; ".join(blockers))
    frames = canonical_samples(samples)
    size = (int(cfg.data.image_size[0]), int(cfg.data.image_size[1]))
    root = cache_root(cfg.data.cache.dir)
    full_res = bool(cfg.eval.full_resolution)
    with torch.random.fork_rng(devices=[]):
        if cfg.data.cache.decoded:
            loader = open_decoded_cache(
                frames,
                taxonomy,
                image_size=size,
                unknown=cfg.data.unknown_values,
                full_res=full_res,
                root=root,
                workers=default_workers(cfg.data.num_workers),
                progress=decode_progress,
            )
            workers = 0  # decoded pairs come out of a memory map: no worker competes with the backbone
        else:
            loader = SegmentationDataset(
                frames, taxonomy, image_size=size, unknown=cfg.data.unknown_values, full_res=True
            ).loader
            workers = default_workers(cfg.data.num_workers)
        store = _open_frames(cfg, module, frames, loader, taxonomy, workers=workers, progress=progress)
    if cfg.data.cache.decoded:
        store.decoded = loader
    return store


def _open_frames(cfg, module, frames, loader, taxonomy: Taxonomy, *, workers: int, progress) -> FrameStore:
    model = module.model
    views = _frame_views(cfg)
    device = _build_device(cfg)
    size = (int(cfg.data.image_size[0]), int(cfg.data.image_size[1]))
    full_res = bool(cfg.eval.full_resolution)
    aug_no_flip = _without_hflip(cfg.data.augment)
    transform = build_train_transform(aug_no_flip, ignore_index=taxonomy.ignore_index) if views > 1 else None
    b = cfg.model.backbone
    blocks = stored_blocks(cfg, module)
    precision = pass_precision(cfg, device)
    keyed = functools.partial(
        feature_key,
        frames,
        taxonomy=taxonomy.to_dict(),
        image_size=size,
        unknown=cfg.data.unknown_values,
        backbone_name=b.name,
        weights=b.weights,
        digest=cache_digest(model, blocks),
        blocks=blocks,
        pad_mode=model.pad_mode,
        views=views,
        augment=dataclasses.asdict(aug_no_flip),
        seed=cfg.train.seed,
        full_res=full_res,
        precision=precision,
    )
    key = keyed()

    def family_key() -> str:
        """The key without the stored blocks, over the whole backbone's weights: a store of the same
        frames and settings holding a superset of these blocks (a study's shared store) serves."""
        return keyed(blocks=[], digest=cache_digest(model, [len(model.backbone.blocks)]), family=True)

    # A batch that fits: a ViT forward in inference mode holds only one block's activations.
    batch = 16 if device.type == "cuda" else max(1, cfg.eval.batch_size)
    model.to(device)
    try:
        return open_feature_store(
            frames,
            loader,
            model,
            key=key,
            content_key=lambda: keyed(content=True),
            family_key=family_key,
            blocks=blocks,
            root=cache_root(cfg.data.cache.dir),
            image_size=size,
            views=views,
            transform=transform,
            seed=cfg.train.seed,
            full_res=full_res,
            device=device,
            precision=precision,
            batch_size=batch,
            workers=workers,
            progress=progress,
        )
    finally:
        model.to("cpu")


def stored_blocks(cfg: Config, module) -> list[int]:
    """The hidden states the frame store holds: ``data.cache.blocks`` (auto: this config's needs).

    Raises:
        ConfigError: a value other than auto or a list of indices in ``0..L``, or a list that misses
            one of this config's needs.
    """
    backbone = module.model.backbone
    needs = backbone.cache_needs()
    value = cfg.data.cache.blocks
    if isinstance(value, str):
        if value != "auto":
            raise ConfigError(
                f"data.cache.blocks={value!r} is not valid; use auto or a list of hidden-state indices "
                f"0..{backbone.num_layers} (e.g. {needs})"
            )
        return needs
    depth = backbone.num_layers
    bad = [h for h in value if not 0 <= h <= depth]
    if bad or not value:
        raise ConfigError(
            f"data.cache.blocks={list(value)}: indices must be in 0..{depth} (0 = embeddings output, "
            f"i = output of block i-1) and at least one; e.g. {needs}"
        )
    missing = sorted(set(needs) - set(value))
    if missing:
        raise ConfigError(
            f"data.cache.blocks={list(value)} lacks {missing}, which this config needs ({needs}: "
            f"model.backbone.layers={cfg.model.backbone.layers}, train_blocks={backbone.train_blocks}); "
            f"fix: add them or use data.cache.blocks=auto"
        )
    return sorted(set(value))


def feature_datasets(
    store: FrameStore, train_idx: Sequence[int], val_idx: Sequence[int], cfg: Config, module
) -> tuple[FeatureDataset, FeatureDataset]:
    """A training and a validation dataset over two index subsets of one frame store.

    Args:
        store: from :func:`open_frame_store`.
        train_idx: indices into ``store.samples`` of the training frames (random view, hflip).
        val_idx: indices of the validation frames (view 0, full-resolution masks when stored).
        cfg: the resolved config (``data.augment.hflip``, ``eval.full_resolution``).
        module: the module that will train (its head decides whether items carry the image).
    """
    model = module.model
    backbone = model.backbone
    start = backbone.cache_start
    ignore = int(getattr(module, "ignore_index", 255))
    common = dict(
        tokens_from=start if start < backbone.num_layers else None,
        early_from=[j + 1 for j in backbone.layer_indices if j < start],
        patch_size=model.patch_size,
        ignore_index=ignore,
        with_image=model.uses_image,
    )
    train_ds = FeatureDataset(store, train_idx, train=True, hflip=cfg.data.augment.hflip, **common)
    val_ds = FeatureDataset(store, val_idx, train=False, full_res=bool(cfg.eval.full_resolution), **common)
    return train_ds, val_ds


def _attach_features(cfg, dm, module, report, *, bar) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacheWarning)
        store = open_frame_store(
            cfg,
            module,
            dm.train_samples + dm.val_samples,
            taxonomy=dm.taxonomy,
            progress=bar("backbone pass (feature cache)"),
            decode_progress=bar("decode frames"),
        )
    _relay(caught, report)
    _frame_views(cfg, report)  # says so when the views were collapsed to one
    train_ds, val_ds = feature_datasets(
        store, store.indices_of(dm.train_samples), store.indices_of(dm.val_samples), cfg, module
    )
    dm.train_dataset, dm.val_dataset = train_ds, val_ds
    report.features = True
    report.decoded = bool(cfg.data.cache.decoded)  # the store was computed from the decoded cache
    report.views = store.views
    report.precision = str(store.store.meta.get("precision", "fp32"))
    if store.decoded is not None:
        report.stores.append(_store_row("decoded", "train+val", store.decoded))
    report.stores.append(_store_row("features", "train+val", store.store))

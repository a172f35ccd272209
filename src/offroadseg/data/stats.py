"""Dataset statistics and validation: pixel share per class, image-level class presence, bad files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from offroadseg.config import DataConfig
from offroadseg.data.datasets import Sample, list_samples, load_ids, load_pair, taxonomy_for
from offroadseg.errors import DataError
from offroadseg.taxonomy import Taxonomy


@dataclass
class SplitStats:
    """Pixel counts of one split, one entry per class (ignored pixels apart)."""

    split: str
    images: int
    counts: np.ndarray
    ignored: int = 0
    sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> number of images

    @property
    def share(self) -> np.ndarray:
        total = self.counts.sum()
        return self.counts / total if total else np.zeros_like(self.counts, dtype=float)


def count_pixels(
    samples: list[Sample],
    taxonomy: Taxonomy,
    *,
    unknown: str = "error",
    validate_images: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, int, dict[str, int]]:
    """Pixel count per class over the masks (and, if asked, check every image pairs up)."""
    counts = np.zeros(taxonomy.num_classes, dtype=np.int64)
    ignored = 0
    sizes: dict[str, int] = {}
    for i, sample in enumerate(samples):
        if validate_images:
            _, ids = load_pair(sample, taxonomy, unknown=unknown)
        else:
            ids = load_ids(sample, taxonomy, unknown=unknown)
        assert ids is not None
        binc = np.bincount(ids.ravel(), minlength=256)
        counts += binc[: taxonomy.num_classes]
        ignored += int(binc[taxonomy.ignore_index])
        key = f"{ids.shape[1]}x{ids.shape[0]}"
        sizes[key] = sizes.get(key, 0) + 1
        if progress:
            progress(i + 1, len(samples))
    return counts, ignored, sizes


def presence_from_ids(ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Which classes a mask contains: bool ``[K]`` (ignored and out-of-range ids left out).

    Args:
        ids: uint8 train ids, any shape (one image, or several views of one image).
        num_classes: ``K``.
    """
    return np.bincount(np.asarray(ids, dtype=np.uint8).ravel(), minlength=256)[:num_classes] > 0


def image_class_presence(
    samples: list[Sample],
    taxonomy: Taxonomy,
    *,
    unknown: str = "error",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Which classes each image's mask contains, read from the label files at their own size.

    Returns:
        bool ``[N, K]``.
    """
    out = np.zeros((len(samples), taxonomy.num_classes), dtype=bool)
    for i, sample in enumerate(samples):
        out[i] = presence_from_ids(load_ids(sample, taxonomy, unknown=unknown), taxonomy.num_classes)
        if progress:
            progress(i + 1, len(samples))
    return out


def dataset_stats(
    cfg: DataConfig,
    splits: list[str] | None = None,
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[SplitStats]:
    """Read and validate every image and mask of each split that exists.

    Raises:
        DataError: on the first bad file (missing mask, size mismatch, unreadable
            file, 8-bit mask for a 16-bit taxonomy, unknown values, empty split).
    """
    taxonomy = taxonomy_for(cfg)
    wanted = splits or [cfg.train_split, cfg.val_split, cfg.test_split]
    out = []
    for split in wanted:
        try:
            samples = list_samples(cfg, split)
        except DataError as exc:
            if splits is None and split == cfg.test_split and "not found" in str(exc):
                continue  # the test split is optional
            raise
        counts, ignored, sizes = count_pixels(
            samples,
            taxonomy,
            unknown=cfg.unknown_values,
            validate_images=True,
            progress=(lambda i, n, s=split: progress(s, i, n)) if progress else None,
        )
        out.append(SplitStats(split, len(samples), counts, ignored, sizes))
    return out

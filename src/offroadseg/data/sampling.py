"""Repeat-factor sampling: draw training images that contain rare classes more often.

LVIS-style (Gupta et al. 2019), at the image level: with ``f_c`` the fraction of training
images that contain class ``c`` and a threshold ``t``, an image is repeated

    r(image) = max over classes c in the image of max(1, sqrt(t / f_c))

times per epoch. Every epoch has the same length, ``n = round(sum(r))`` draws: the factors are
scaled by ``n / sum(r)`` (the ratios between images stay exact; the scale is 1 up to rounding)
and each scaled factor ``s`` is rounded stochastically to ``floor(s)`` or ``floor(s) + 1`` by
systematic sampling, which keeps the total at ``n`` and the expected count at ``s``. The draw is made afresh each epoch from ``seed + epoch``, so each epoch is
reproducible. A constant length matters: Lightning counts an epoch's batches once, and an epoch
one batch shorter than the first never reaches its validation.

Class presence comes from the masks: the memory-mapped ``masks`` array of a decoded or
feature store when the training dataset is that whole store (the training-size masks the loss
sees), else the label files, read once (:func:`offroadseg.data.stats.image_class_presence`,
~2 ms a YCOR mask). A feature store is usually built for train + val and the training set is a
subset of it, so the label files are what a run reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from offroadseg.data.datasets import Sample
from offroadseg.data.stats import image_class_presence, presence_from_ids
from offroadseg.taxonomy import Taxonomy

__all__ = ["RepeatFactorSampler", "dataset_class_presence", "repeat_factors"]


def repeat_factors(presence: np.ndarray, threshold: float) -> np.ndarray:
    """Per-image repeat factors ``r`` from image-level class presence.

    Args:
        presence: bool ``[N, K]``, whether image ``i`` contains class ``c``.
        threshold: ``t``; classes in fewer than a fraction ``t`` of the images are
            oversampled. 0 gives every image factor 1.

    Returns:
        float64 ``[N]``, each ``>= 1`` (1 for an image without any labelled class).
    """
    presence = np.asarray(presence, dtype=bool)
    if presence.ndim != 2:
        raise ValueError(f"presence must be [N, K], got shape {presence.shape}")
    if threshold < 0:
        raise ValueError(f"repeat-factor threshold must be >= 0, got {threshold}")
    n = presence.shape[0]
    if n == 0 or threshold == 0:
        return np.ones(n)
    freq = presence.mean(axis=0)  # f_c
    with np.errstate(divide="ignore"):
        class_r = np.where(freq > 0, np.sqrt(threshold / np.maximum(freq, 1e-300)), 1.0)
    class_r = np.maximum(class_r, 1.0)
    # max over the classes present in each image (1 where none is).
    return np.where(presence, class_r[None, :], 1.0).max(axis=1, initial=1.0)


def dataset_class_presence(
    dataset: Dataset, samples: list[Sample], taxonomy: Taxonomy, *, unknown: str = "error"
) -> np.ndarray:
    """bool ``[N, K]`` class presence of a training dataset's images.

    Uses the ``masks`` array of the dataset's feature store (``dataset.arrays``, ``V`` rows
    per image, views merged) or decoded store (``dataset.loader.arrays``) when there is one;
    otherwise reads the label files.
    """
    k = taxonomy.num_classes
    for holder in (dataset, getattr(dataset, "loader", None)):
        arrays = getattr(holder, "arrays", None) if holder is not None else None
        if isinstance(arrays, dict) and "masks" in arrays:
            masks = arrays["masks"]
            views = int(getattr(holder, "views", 1) or 1)
            if masks.shape[0] == len(samples) * views:
                return np.stack(
                    [presence_from_ids(masks[i * views : (i + 1) * views], k) for i in range(len(samples))]
                ).reshape(len(samples), k)
    return image_class_presence(samples, taxonomy, unknown=unknown)


def fixed_length_repeats(factors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Integer repeat counts summing to ``n = round(sum(factors))``, with expectation ``r * n / sum(r)``.

    The factors are scaled to sum ``n`` exactly (the LVIS ratios between images are kept); each
    item gets the floor of its scaled factor, and the ``m`` remaining draws go to distinct items
    by systematic sampling (a random order, one random start, unit steps over the cumulated
    fractional parts, which sum to ``m``): item ``i`` gets one more with probability equal to its
    fractional part.
    """
    factors = factors.to(torch.float64)
    total = max(1, int(round(float(factors.sum()))))
    scaled = factors * (total / float(factors.sum()))
    reps = scaled.floor().long()
    m = total - int(reps.sum())
    if m <= 0:
        return reps
    order = torch.randperm(len(factors), generator=generator)
    edges = torch.cumsum((scaled - scaled.floor())[order], 0)
    start = float(torch.rand(1, generator=generator, dtype=torch.float64))
    points = torch.arange(m, dtype=torch.float64) + start
    hit = torch.searchsorted(edges, points, right=True).clamp(max=len(factors) - 1)
    reps[order[hit]] += 1
    return reps


class RepeatFactorSampler(DistributedSampler):
    """Indices of one epoch with image ``i`` repeated ``r_i`` times (stochastic rounding), shuffled.

    The epoch's list is drawn from ``seed + epoch`` (call :meth:`set_epoch`, as Lightning
    does), identically in every process; under DDP it is padded to a multiple of
    ``num_replicas`` (with its own first indices, as ``DistributedSampler`` pads) and
    process ``rank`` takes every ``num_replicas``-th entry, so the shards are disjoint
    and equally long. A ``DistributedSampler`` subclass, so Lightning keeps it as is.

    Args:
        dataset: The training dataset (``len`` must match ``factors``).
        factors: Repeat factor per image, ``[N]``, each ``>= 1``.
        seed: Base seed of the per-epoch draws.
        num_replicas: Number of processes (1 without DDP).
        rank: This process's rank.
    """

    def __init__(
        self, dataset: Dataset, factors: np.ndarray, *, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.factors = torch.as_tensor(np.asarray(factors, dtype=np.float64))
        if self.factors.ndim != 1 or len(self.factors) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(f"need one repeat factor per item: {len(self.factors)} for {len(dataset)} items")  # type: ignore[arg-type]
        if (self.factors < 1).any():
            raise ValueError("repeat factors must be >= 1")
        self._cache: tuple[int, list[int]] | None = None

    def epoch_indices(self) -> list[int]:
        """Every process's indices of the current epoch, before sharding (padded)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        g = torch.Generator().manual_seed(int(self.seed) + int(self.epoch))
        reps = fixed_length_repeats(self.factors, g)
        indices = torch.repeat_interleave(torch.arange(len(self.factors)), reps)
        indices = indices[torch.randperm(len(indices), generator=g)].tolist()
        total = math.ceil(len(indices) / self.num_replicas) * self.num_replicas
        while len(indices) < total:  # pad (DDP): every rank gets as many batches
            indices += indices[: total - len(indices)]
        self._cache = (self.epoch, indices)
        return indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return len(self.epoch_indices()) // self.num_replicas

    @property
    def expected_length(self) -> float:
        """Expected number of draws per epoch over all processes, ``sum(r_i)`` (before padding)."""
        return float(self.factors.sum())

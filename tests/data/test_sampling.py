"""Tests for offroadseg.data.sampling (repeat-factor sampling)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from offroadseg.data.sampling import RepeatFactorSampler, dataset_class_presence, repeat_factors


class _Items:
    """A dataset of n items, optionally with a feature-store-like ``masks`` array."""

    def __init__(self, n: int, masks: np.ndarray | None = None, views: int = 1) -> None:
        self.n = n
        self.views = views
        if masks is not None:
            self.arrays = {"masks": masks}

    def __len__(self) -> int:
        return self.n


def test_repeat_factors_known_answer() -> None:
    # 4 images, 3 classes: class 0 in all, class 1 in one (f 0.25), class 2 in two (f 0.5).
    presence = np.array(
        [[1, 0, 0], [1, 1, 0], [1, 0, 1], [1, 0, 1]],
        dtype=bool,
    )
    r = repeat_factors(presence, threshold=1.0)
    # class factors: max(1, sqrt(1/1)) = 1, sqrt(1/0.25) = 2, sqrt(1/0.5) = 1.414
    np.testing.assert_allclose(r, [1.0, 2.0, math.sqrt(2), math.sqrt(2)])
    # t = 0.3: only class 1 (f 0.25 < 0.3) is oversampled.
    np.testing.assert_allclose(repeat_factors(presence, threshold=0.3), [1, math.sqrt(0.3 / 0.25), 1, 1])
    np.testing.assert_allclose(repeat_factors(presence, threshold=0.0), np.ones(4))
    # An image without any labelled class keeps factor 1.
    np.testing.assert_allclose(
        repeat_factors(np.array([[0, 0], [0, 1]], dtype=bool), 1.0), [1.0, math.sqrt(2)]
    )


def test_sampler_counts_match_the_factors() -> None:
    factors = np.array([1.0, 2.5, 1.0, 3.0, 1.2])
    sampler = RepeatFactorSampler(_Items(5), factors, seed=7)
    totals = Counter()
    epochs = 400
    scaled = factors * 9 / factors.sum()  # n = round(8.7) = 9 draws every epoch
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        drawn = Counter(list(sampler))
        assert len(list(sampler)) == len(sampler) == 9  # the same length every epoch
        # Stochastic rounding of the scaled factor: floor(s) or floor(s) + 1 draws, nothing else.
        for i, s in enumerate(scaled):
            assert drawn[i] in (math.floor(s), math.ceil(s)), (i, drawn[i])
        totals.update(drawn)
    means = np.array([totals[i] / epochs for i in range(5)])
    # The mean count converges to s (binomial std of the fractional part / sqrt(400) < 0.025).
    np.testing.assert_allclose(means, scaled, atol=0.1)
    assert totals[3] > 2.5 * totals[0]


def test_sampler_is_reproducible_per_epoch_and_changes_across_epochs() -> None:
    factors = np.array([1.0, 1.5, 2.0, 1.0, 1.7, 1.1])
    a = RepeatFactorSampler(_Items(6), factors, seed=1)
    b = RepeatFactorSampler(_Items(6), factors, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)


@pytest.mark.parametrize("factors", [[1.0, 1.0, 1.0, 1.0, 1.0, 2.449], [1.3] * 7 + [4.9, 1.01], [1.0] * 5])
def test_sampler_length_is_the_same_every_epoch(factors: list[float]) -> None:
    """Lightning counts an epoch's batches once: a shorter epoch would never reach validation."""
    sampler = RepeatFactorSampler(_Items(len(factors)), np.array(factors), seed=3)
    lengths = set()
    for epoch in range(60):
        sampler.set_epoch(epoch)
        lengths.add(len(list(sampler)))
    assert lengths == {round(sum(factors))}


@pytest.mark.parametrize("world", [2, 3])
def test_sampler_shards_under_ddp(world: int) -> None:
    factors = np.array([1.0, 2.5, 1.0, 3.0, 1.2, 1.0, 1.0])
    shards = [
        RepeatFactorSampler(_Items(7), factors, seed=0, num_replicas=world, rank=r) for r in range(world)
    ]
    for s in shards:
        s.set_epoch(2)
    lists = [list(s) for s in shards]
    assert len({len(x) for x in lists}) == 1  # equal shares: every rank runs as many steps
    full = shards[0].epoch_indices()
    assert len(full) % world == 0
    merged = [lists[j % world][j // world] for j in range(len(full))]
    assert merged == full  # disjoint positions of one shared epoch list


def test_frames_with_a_rare_class_from_store_masks() -> None:
    """Presence from a feature store's masks (2 views per image, merged); ignore (255) is no class."""
    masks = np.zeros((8, 4, 4), dtype=np.uint8)  # 4 images x 2 views
    masks[3, 0, 0] = 2  # image 1, view 1: the rare class 2
    masks[6:8] = 1  # image 3: class 1 only (both views)
    masks[7, :2] = 255
    from offroadseg.taxonomy import load_taxonomy

    tax = load_taxonomy("duality")
    samples = [object()] * 4
    presence = dataset_class_presence(_Items(4, masks, views=2), samples, tax)  # type: ignore[arg-type]
    assert presence.shape == (4, tax.num_classes)
    assert presence[:, :3].tolist() == [
        [True, False, False],
        [True, False, True],
        [True, False, False],
        [False, True, False],
    ]
    r = repeat_factors(presence, threshold=0.5)
    # f_2 = 1/4 -> sqrt(2) for image 1; f_1 = 1/4 -> sqrt(2) for image 3; class 0 in 3/4 -> 1.
    np.testing.assert_allclose(r, [1.0, math.sqrt(2), 1.0, math.sqrt(2)])


def test_sampler_rejects_mismatched_factors() -> None:
    with pytest.raises(ValueError, match="one repeat factor per item"):
        RepeatFactorSampler(_Items(3), np.ones(2))
    with pytest.raises(ValueError, match=">= 1"):
        RepeatFactorSampler(_Items(2), np.array([1.0, 0.5]))

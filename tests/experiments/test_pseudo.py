"""Pseudo-labels: class-balanced thresholds, the ignored case, the collapse guard (known answers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offroadseg.experiments.pseudo import (
    class_thresholds,
    confidence_stats,
    detect_collapse,
    pixel_shares,
    pseudo_label_loss,
    pseudo_labels,
)

IGNORE = 255


def _map() -> tuple[np.ndarray, np.ndarray]:
    """A hand-made 2x5 map: class 0 dominant and sure, class 1 rare and unsure, class 2 never predicted."""
    pred = np.array([[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]])
    conf = np.array([[0.99, 0.98, 0.97, 0.96, 0.95], [0.94, 0.93, 0.92, 0.60, 0.40]])
    return conf, pred


def test_class_balanced_thresholds_keep_the_rare_class():
    conf, pred = _map()
    thr = class_thresholds(conf, pred, 3, keep=0.5)
    # class 0: 8 values 0.92..0.99, lower 0.5-quantile is the 4th smallest = 0.95
    # class 1: values [0.40, 0.60], lower 0.5-quantile = 0.40; class 2: no pixel -> 1.0
    np.testing.assert_allclose(thr, [0.95, 0.40, 1.0])
    labels = pseudo_labels(_probs(conf, pred, 3), thr, ignore_index=IGNORE)
    kept = labels[labels != IGNORE]
    assert (kept == 1).sum() == 2  # the rare class keeps both of its pixels
    assert (kept == 0).sum() == 5  # 0.99, 0.98, 0.97, 0.96, 0.95
    # one global threshold at the same overall keep rate would have dropped class 1 entirely
    global_thr = np.quantile(conf, 0.5, method="lower")
    assert not ((torch.from_numpy(pred) == 1) & (torch.from_numpy(conf) >= global_thr)).any()


def test_class_thresholds_cap_and_keep_all():
    conf, pred = _map()
    np.testing.assert_allclose(class_thresholds(conf, pred, 3, keep=0.5, cap=0.9), [0.9, 0.40, 0.9])
    np.testing.assert_allclose(class_thresholds(conf, pred, 3, keep=1.0), [0.92, 0.40, 1.0])
    with pytest.raises(ValueError):
        class_thresholds(conf, pred, 3, keep=0.0)


def _probs(conf: np.ndarray, pred: np.ndarray, k: int) -> torch.Tensor:
    """[1, K, H, W] probabilities whose max is ``conf`` at class ``pred`` (rest spread evenly)."""
    h, w = conf.shape
    probs = np.zeros((k, h, w))
    for c in range(k):
        probs[c] = np.where(pred == c, conf, (1 - conf) / (k - 1))
    return torch.from_numpy(probs).float()[None]


def test_all_below_threshold_gives_no_target_loss():
    conf, pred = _map()
    probs = _probs(conf, pred, 3)
    labels = pseudo_labels(probs, np.array([1.0, 1.0, 1.0]), ignore_index=IGNORE)
    assert (labels == IGNORE).all()
    logits = torch.randn(1, 3, 2, 5, requires_grad=True)
    loss = pseudo_label_loss(logits, labels, ignore_index=IGNORE)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_pseudo_label_loss_is_mean_over_kept_pixels():
    logits = torch.zeros(1, 4, 1, 3)  # uniform: CE = log 4 on each pixel
    labels = torch.tensor([[[2, IGNORE, 0]]])
    loss = pseudo_label_loss(logits, labels, ignore_index=IGNORE)
    assert loss.item() == pytest.approx(np.log(4))


def test_shares_and_confidence():
    np.testing.assert_allclose(
        pixel_shares(np.array([0, 0, 1, IGNORE]), 3, ignore_index=IGNORE), [2 / 3, 1 / 3, 0]
    )
    uniform = torch.full((1, 4, 2, 2), 0.25)
    conf, entropy = confidence_stats(uniform)
    assert conf == pytest.approx(0.25) and entropy == pytest.approx(1.0)
    onehot = torch.zeros(1, 4, 2, 2)
    onehot[:, 1] = 1.0
    assert confidence_stats(onehot) == pytest.approx((1.0, 0.0))


NAMES = ["sand", "rock", "sky"]


def test_collapse_guard_healthy():
    source, before = [0.5, 0.2, 0.3], [0.6, 0.1, 0.3]
    assert detect_collapse(source, before, [0.55, 0.15, 0.30], NAMES) == []
    # a class the source lacks may vanish; a class that already dominated may keep dominating
    assert detect_collapse([0.7, 0.0, 0.3], [0.6, 0.1, 0.3], [0.7, 0.0, 0.3], NAMES) == []
    assert detect_collapse([0.95, 0.0, 0.05], [0.95, 0.0, 0.05], [0.96, 0.0, 0.04], NAMES) == []


def test_collapse_guard_vanished_class():
    msgs = detect_collapse([0.5, 0.2, 0.3], [0.6, 0.1, 0.3], [0.695, 0.005, 0.3], NAMES)
    assert len(msgs) == 1 and "'rock' vanished" in msgs[0]


def test_collapse_guard_swallowed_image():
    msgs = detect_collapse([0.5, 0.2, 0.3], [0.6, 0.1, 0.3], [0.93, 0.05, 0.02], NAMES)
    assert any("'sand' swallows the image" in m for m in msgs)
    assert any("'sky' vanished" in m for m in msgs)

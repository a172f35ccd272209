"""Pseudo-labels for self-training, as pure functions.

- :func:`class_thresholds`: one confidence threshold per class (CBST, Zou et al. 2018): the
  ``1 - keep`` quantile of the max-probability of the pixels predicted as that class, so each
  class keeps its most confident ``keep`` share of pixels and a rare class is not drowned by a
  single global threshold that only the dominant class passes.
- :func:`pseudo_labels`: the teacher's argmax where its confidence reaches its class's threshold,
  the ignore index elsewhere.
- :func:`pseudo_label_loss`: cross-entropy over the kept pixels only; exactly 0 (and a zero
  gradient) when no pixel is kept.
- :func:`pixel_shares`, :func:`confidence_stats`: the label-free health figures.
- :func:`detect_collapse`: the guard that stops adaptation when a class the source has vanishes
  from the target predictions or one class swallows the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "class_thresholds",
    "confidence_stats",
    "detect_collapse",
    "pixel_shares",
    "pseudo_label_loss",
    "pseudo_labels",
]


def class_thresholds(
    max_prob: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    *,
    keep: float,
    cap: float | None = None,
) -> np.ndarray:
    """Class-balanced confidence thresholds.

    Args:
        max_prob: the teacher's max softmax probability per pixel (any shape).
        pred: the teacher's argmax per pixel, the same shape.
        num_classes: K.
        keep: share of each class's predicted pixels to keep, in (0, 1]: the threshold of class c
            is the ``1 - keep`` quantile of ``max_prob`` over the pixels predicted as c.
        cap: a threshold never exceeds this (a class the teacher is sure of everywhere still
            keeps every pixel above ``cap``); None: no cap.

    Returns:
        float64 ``[K]``; a class no pixel is predicted as gets ``cap`` (1.0 without one).
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep={keep} must lie in (0, 1]")
    max_prob = np.asarray(max_prob, dtype=np.float64).ravel()
    pred = np.asarray(pred).ravel()
    if max_prob.shape != pred.shape:
        raise ValueError(f"max_prob {max_prob.shape} and pred {pred.shape} differ in size")
    empty = 1.0 if cap is None else float(cap)
    out = np.full(num_classes, empty, dtype=np.float64)
    order = np.argsort(pred, kind="stable")
    bounds = np.searchsorted(pred[order], np.arange(num_classes + 1))
    for c in range(num_classes):
        values = max_prob[order[bounds[c] : bounds[c + 1]]]
        if values.size:
            q = float(np.quantile(values, 1.0 - keep, method="lower"))
            out[c] = q if cap is None else min(q, float(cap))
    return out


def pseudo_labels(probs: Tensor, thresholds: Tensor | np.ndarray, *, ignore_index: int) -> Tensor:
    """The argmax of ``probs`` ``[B, K, H, W]`` where its probability reaches its class's threshold,
    ``ignore_index`` elsewhere; int64 ``[B, H, W]``."""
    thr = torch.as_tensor(np.asarray(thresholds), dtype=probs.dtype, device=probs.device)
    conf, pred = probs.max(dim=1)
    return torch.where(conf >= thr[pred], pred, torch.full_like(pred, ignore_index))


def pseudo_label_loss(logits: Tensor, labels: Tensor, *, ignore_index: int) -> Tensor:
    """Mean cross-entropy over the pixels whose label is not ``ignore_index``.

    Unlike ``F.cross_entropy`` (0 / 0 = NaN when every pixel is ignored), a batch with no kept
    pixel gives exactly 0 and a zero gradient.

    Args:
        logits: ``[B, K, H, W]``.
        labels: int64 ``[B, H, W]``.
    """
    per_pixel = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    kept = (labels != ignore_index).sum()
    return per_pixel.sum() / kept.clamp(min=1)


def pixel_shares(
    pred: Tensor | np.ndarray, num_classes: int, *, ignore_index: int | None = None
) -> np.ndarray:
    """Share of pixels per class (sums to 1 over the counted pixels; all 0 when none is counted)."""
    ids = np.asarray(pred.cpu() if isinstance(pred, Tensor) else pred).ravel().astype(np.int64)
    if ignore_index is not None:
        ids = ids[ids != ignore_index]
    counts = np.bincount(ids[ids < num_classes], minlength=num_classes).astype(np.float64)
    total = counts.sum()
    return counts / total if total else counts


def confidence_stats(probs: Tensor) -> tuple[float, float]:
    """(mean max probability, mean entropy normalised by log K, in [0, 1]) of ``[B, K, H, W]`` probabilities."""
    k = probs.shape[1]
    conf = probs.max(dim=1).values.mean()
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1).mean() / np.log(k)
    return float(conf), float(entropy)


def detect_collapse(
    source: Sequence[float],
    before: Sequence[float],
    after: Sequence[float],
    names: Sequence[str],
    *,
    min_share: float = 0.01,
    vanish_ratio: float = 0.1,
    swallow_share: float = 0.9,
) -> list[str]:
    """Signs that self-training collapsed, one sentence each (empty: healthy).

    A class *vanishes* when the source has it (share >= ``min_share``), the unadapted model
    predicted it on the target (share >= ``min_share``) and the adapted model gives it less than
    ``vanish_ratio`` of that share. A class *swallows the image* when it takes at least
    ``swallow_share`` of the target pixels after adaptation but did not before.

    Args:
        source: per-class pixel shares of the source labels.
        before: per-class shares of the unadapted model's predictions on the target.
        after: the same for the adapted model.
        names: class names, for the messages.
    """
    msgs = []
    for c, name in enumerate(names):
        s, b, a = float(source[c]), float(before[c]), float(after[c])
        if s >= min_share and b >= min_share and a < vanish_ratio * b:
            msgs.append(
                f"class {name!r} vanished: {a:.2%} of target pixels after adaptation, {b:.2%} before "
                f"(source {s:.2%})"
            )
        if a >= swallow_share and b < swallow_share:
            msgs.append(
                f"class {name!r} swallows the image: {a:.2%} of target pixels after adaptation, {b:.2%} before"
            )
    return msgs

"""Segmentation losses: pure functions first, thin ``nn.Module`` wrappers after.

Shapes used throughout: ``logits`` ``[B, K, H, W]`` (any float dtype), ``target``
``[B, H, W]`` integer class ids in ``[0, K)`` or ``ignore_index``. Every loss drops
ignored pixels entirely: whatever the logits hold there changes neither the value
nor the gradient of the loss.

When a batch holds no valid pixel at all, every loss returns 0 (connected to the
graph) instead of NaN, so one fully ignored crop cannot poison a training run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offroadseg.errors import ConfigError, close_matches

__all__ = [
    "LOSSES",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "class_weights_from_counts",
    "create_loss",
    "cross_entropy",
    "dice_loss",
    "focal_loss",
]


def class_weights_from_counts(
    counts: Sequence[float] | np.ndarray | Tensor, *, max_weight: float = 5.0
) -> Tensor:
    """Inverse-frequency class weights, scaled so the largest weight is ``max_weight``.

    ``w_c = total / (K * count_c)``, then every weight is multiplied by
    ``max_weight / max(w)``. A class with count 0 gets weight 0: it never appears as
    a target, so its weight is never used by a per-pixel loss, and an infinite
    weight would only break the rescaling of the others.

    Args:
        counts: Pixel count per class, ``[K]``.
        max_weight: Value of the largest weight after scaling.

    Returns:
        float32 weights ``[K]``.

    Raises:
        ValueError: On negative counts or when every count is zero.
    """
    c = torch.as_tensor(np.asarray(counts, dtype=np.float64))
    if c.ndim != 1:
        raise ValueError(f"counts must be one value per class, got shape {tuple(c.shape)}")
    if (c < 0).any():
        raise ValueError(f"class counts must be non-negative, got {c.tolist()}")
    if not (c > 0).any():
        raise ValueError("every class count is zero: no pixel to derive class weights from")
    present = c > 0
    w = torch.zeros_like(c)
    w[present] = c.sum() / (len(c) * c[present])
    w = w * (max_weight / w.max())
    return w.to(torch.float32)


def _valid_mask(target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """``(valid [B, H, W] bool, target with ignored pixels set to class 0 [B, H, W] int64)``."""
    target = target.long()
    valid = target != ignore_index
    return valid, torch.where(valid, target, torch.zeros_like(target))


def cross_entropy(
    logits: Tensor, target: Tensor, *, weight: Tensor | None = None, ignore_index: int = 255
) -> Tensor:
    """Mean pixel cross-entropy (wraps ``F.cross_entropy``).

    The mean follows PyTorch: the sum of ``weight[target] * -log p_target`` over valid
    pixels divided by the sum of ``weight[target]`` over valid pixels (the number of
    valid pixels when ``weight`` is None). Returns 0 when no pixel is valid.

    Args:
        logits: ``[B, K, H, W]``.
        target: ``[B, H, W]`` class ids or ``ignore_index``.
        weight: Optional class weights ``[K]``.
        ignore_index: Label value to ignore.

    Returns:
        Scalar loss.
    """
    per_pixel = F.cross_entropy(
        logits.float(), target.long(), weight=weight, ignore_index=ignore_index, reduction="none"
    )
    valid, safe = _valid_mask(target, ignore_index)
    if weight is None:
        denom = valid.sum().clamp(min=1)
    else:
        denom = (weight.to(per_pixel)[safe] * valid).sum().clamp(min=torch.finfo(per_pixel.dtype).tiny)
    # clamp instead of a data-dependent branch: no host sync, and 0 / clamp = 0 when all ignored.
    return per_pixel.sum() / denom


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    ignore_index: int = 255,
) -> Tensor:
    """Focal loss ``-alpha_t * (1 - p_t)^gamma * log p_t`` (Lin et al. 2017).

    ``alpha_t = weight[target]`` (1 when ``weight`` is None). Reduction: the sum of
    the per-pixel terms over valid pixels divided by the *number* of valid pixels (not
    by the sum of weights as weighted cross-entropy does), so class weights scale the
    loss up or down rather than only re-balancing it. With ``gamma=0`` and no weight
    it equals :func:`cross_entropy`.

    Args:
        logits: ``[B, K, H, W]``.
        target: ``[B, H, W]`` class ids or ``ignore_index``.
        gamma: Focusing parameter; 0 gives cross-entropy.
        weight: Optional class weights ``[K]``.
        ignore_index: Label value to ignore.

    Returns:
        Scalar loss.
    """
    ce = F.cross_entropy(logits.float(), target.long(), ignore_index=ignore_index, reduction="none")
    valid, safe = _valid_mask(target, ignore_index)
    term = ce
    if gamma != 0:
        pt = torch.exp(-ce)
        term = (1.0 - pt).clamp(min=0.0).pow(gamma) * ce
    if weight is not None:
        term = term * weight.to(term)[safe]
    # Ignored pixels already have ce == 0, hence term == 0.
    return term.sum() / valid.sum().clamp(min=1)


def dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = 255,
    smooth: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Soft Dice loss over softmax probabilities.

    For each class ``c``, over all valid pixels of the whole batch:
    ``dice_c = (2 * sum(p_c * y_c) + smooth) / (sum(p_c) + sum(y_c) + smooth)`` where
    ``y`` is the one-hot target; ignored pixels are removed from both ``p`` and ``y``.
    The loss is the mean of ``1 - dice_c`` over the classes *present in the target
    batch* (weighted by ``weight[c]`` when given). Absent classes are left out: with
    ``smooth`` their dice only rewards pushing probabilities to 0, which cross-entropy
    or focal already do, and including them would dilute the rare classes the loss is
    meant to help. Returns 0 when no class is present (every pixel ignored).

    Args:
        logits: ``[B, K, H, W]``.
        target: ``[B, H, W]`` class ids or ``ignore_index``.
        ignore_index: Label value to ignore.
        smooth: Added to numerator and denominator.
        weight: Optional class weights ``[K]`` for the mean over classes.

    Returns:
        Scalar loss.
    """
    num_classes = logits.shape[1]
    valid, safe = _valid_mask(target, ignore_index)
    probs = logits.float().softmax(dim=1)
    mask = valid.unsqueeze(1)  # [B, 1, H, W]
    # torch.where rather than multiplying: a NaN/inf logit at an ignored pixel must not leak.
    probs = torch.where(mask, probs, torch.zeros_like(probs))
    # sum(p_c * y_c) is the target class's probability summed per class: gathered and
    # index-added rather than multiplied by a [B, K, H, W] one-hot (several times faster).
    p_target = probs.gather(1, safe.unsqueeze(1)).reshape(-1)
    intersection = probs.new_zeros(num_classes).index_add(0, safe.reshape(-1), p_target)
    target_count = torch.bincount(safe[valid], minlength=num_classes).to(probs)
    cardinality = probs.sum((0, 2, 3)) + target_count
    dice = (2.0 * intersection + smooth) / (cardinality + smooth)
    present = (target_count > 0).to(dice)
    w = present if weight is None else present * weight.to(dice)
    return ((1.0 - dice) * w).sum() / w.sum().clamp(min=torch.finfo(dice.dtype).tiny)


class CrossEntropyLoss(nn.Module):
    """Module wrapper of :func:`cross_entropy`; ``weight`` is a buffer (moves with ``.to``)."""

    weight: Tensor | None

    def __init__(self, *, weight: Tensor | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        self.register_buffer(
            "weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        )
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Scalar loss for logits ``[B, K, H, W]`` and target ``[B, H, W]``."""
        return cross_entropy(logits, target, weight=self.weight, ignore_index=self.ignore_index)


class FocalLoss(nn.Module):
    """Module wrapper of :func:`focal_loss`."""

    weight: Tensor | None

    def __init__(self, *, gamma: float = 2.0, weight: Tensor | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        self.register_buffer(
            "weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        )
        self.gamma = gamma
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Scalar loss for logits ``[B, K, H, W]`` and target ``[B, H, W]``."""
        return focal_loss(
            logits, target, gamma=self.gamma, weight=self.weight, ignore_index=self.ignore_index
        )


class DiceLoss(nn.Module):
    """Module wrapper of :func:`dice_loss`."""

    weight: Tensor | None

    def __init__(self, *, ignore_index: int = 255, smooth: float = 1.0, weight: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer(
            "weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        )
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Scalar loss for logits ``[B, K, H, W]`` and target ``[B, H, W]``."""
        return dice_loss(
            logits, target, ignore_index=self.ignore_index, smooth=self.smooth, weight=self.weight
        )


class CombinedLoss(nn.Module):
    """Weighted sum of losses: ``sum(w_i * loss_i(logits, target))``.

    Args:
        terms: ``(weight, loss module)`` pairs.
    """

    def __init__(self, terms: Sequence[tuple[float, nn.Module]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("CombinedLoss needs at least one term")
        self.weights = [float(w) for w, _ in terms]
        self.losses = nn.ModuleList(m for _, m in terms)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Scalar loss for logits ``[B, K, H, W]`` and target ``[B, H, W]``."""
        total = logits.new_zeros((), dtype=torch.float32)
        for w, loss in zip(self.weights, self.losses, strict=True):
            total = total + w * loss(logits, target)
        return total


def _ce(*, class_weights: Tensor | None, ignore_index: int, **_: object) -> nn.Module:
    return CrossEntropyLoss(weight=class_weights, ignore_index=ignore_index)


def _focal(*, class_weights: Tensor | None, ignore_index: int, focal_gamma: float, **_: object) -> nn.Module:
    return FocalLoss(gamma=focal_gamma, weight=class_weights, ignore_index=ignore_index)


def _dice(*, class_weights: Tensor | None, ignore_index: int, **_: object) -> nn.Module:
    # Alone, dice is the only place class weights can go: they weight its class mean.
    return DiceLoss(weight=class_weights, ignore_index=ignore_index)


def _focal_dice(*, ignore_index: int, dice_weight: float, **kw: object) -> nn.Module:
    return CombinedLoss(
        [(1.0, _focal(ignore_index=ignore_index, **kw)), (dice_weight, DiceLoss(ignore_index=ignore_index))]
    )


def _ce_dice(*, ignore_index: int, dice_weight: float, **kw: object) -> nn.Module:
    return CombinedLoss(
        [(1.0, _ce(ignore_index=ignore_index, **kw)), (dice_weight, DiceLoss(ignore_index=ignore_index))]
    )


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": _ce,
    "focal": _focal,
    "dice": _dice,
    "focal+dice": _focal_dice,
    "ce+dice": _ce_dice,
}


def create_loss(
    name: str,
    *,
    num_classes: int,
    class_weights: Tensor | None = None,
    ignore_index: int = 255,
    focal_gamma: float = 2.0,
    dice_weight: float = 0.5,
) -> nn.Module:
    """Build a loss by name.

    Names: ``ce``, ``focal``, ``dice``, ``focal+dice`` (focal + ``dice_weight`` * dice),
    ``ce+dice`` (cross-entropy + ``dice_weight`` * dice). In the combined losses the
    class weights go to the cross-entropy/focal term only; the dice term is already
    balanced across classes. For ``dice`` alone they weight its mean over classes.

    Args:
        name: A key of :data:`LOSSES`.
        num_classes: Number of classes ``K`` (checked against ``class_weights``).
        class_weights: Optional ``[K]`` weights, e.g. from :func:`class_weights_from_counts`.
        ignore_index: Label value to ignore.
        focal_gamma: Focusing parameter of the focal term.
        dice_weight: Weight of the dice term in the combined losses.

    Raises:
        ConfigError: On an unknown name or class weights of the wrong length.
    """
    if name not in LOSSES:
        valid = list(LOSSES)
        raise ConfigError(
            f"unknown loss {name!r}{close_matches(name, valid)}; valid losses: {', '.join(valid)}"
        )
    if class_weights is not None:
        class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
        if class_weights.shape != (num_classes,):
            raise ConfigError(
                f"class_weights has shape {tuple(class_weights.shape)} but there are {num_classes} classes; "
                "give one weight per class"
            )
    return LOSSES[name](
        class_weights=class_weights,
        ignore_index=ignore_index,
        focal_gamma=focal_gamma,
        dice_weight=dice_weight,
    )

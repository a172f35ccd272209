"""Segmentation metrics from one dataset-level confusion matrix.

The standard numbers (IoU, Dice, accuracy) are computed once from a ``K x K``
confusion matrix summed over the whole dataset: rows are ground truth, columns are
predictions, ignored pixels are dropped. A class absent from both labels and
predictions has no defined IoU/Dice (NaN) and is left out of the means.

The reference pipeline instead averaged per-batch IoU over batches, which depends on
the batch size and over-weights classes that happen to appear in few batches.
:func:`reference_batch_iou` and :class:`BatchMeanIoU` reproduce that figure for
comparison only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from offroadseg.class_ids import class_ids

__all__ = [
    "BatchMeanIoU",
    "ConfusionMatrixMetric",
    "SegmentationScores",
    "best_epoch",
    "confusion_matrix",
    "finite_or_none",
    "json_ready",
    "reference_batch_iou",
    "scores_from_confusion",
]


def _as_long(x: Tensor | np.ndarray) -> Tensor:
    if isinstance(x, np.ndarray):
        # via int64 numpy: torch has limited support for uint16 masks.
        return torch.from_numpy(x.astype(np.int64, copy=False))
    return x.long()


def _to_ids(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Class ids from ``pred``: argmax over dim 1 when it is float logits ``[B, K, ...]``."""
    if isinstance(pred, Tensor) and pred.is_floating_point() and pred.ndim == np.ndim(target) + 1:
        return class_ids(pred)
    return pred


def confusion_matrix(
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int = 255,
    *,
    validate: bool = True,
) -> Tensor:
    """Confusion matrix of class ids (rows = ground truth, columns = prediction).

    Args:
        pred: Predicted ids, any shape (e.g. ``[B, H, W]``).
        target: Ground-truth ids or ``ignore_index``, same shape as ``pred``.
        num_classes: Number of classes ``K``.
        ignore_index: Label value whose pixels are dropped.
        validate: Check that every kept id lies in ``[0, K)``. The check reads the
            data back to the host; pass False in a hot loop whose ids are known good.

    Returns:
        int64 ``[K, K]`` on the device of ``target``.

    Raises:
        ValueError: On a shape mismatch or an id outside ``[0, K)`` (other than
            ``ignore_index`` in ``target``).
    """
    p, t = _as_long(pred), _as_long(target)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {tuple(p.shape)} does not match target shape {tuple(t.shape)}")
    p, t = p.reshape(-1).to(t.device), t.reshape(-1)
    keep = t != ignore_index
    p, t = p[keep], t[keep]
    if validate and t.numel():
        for name, ids in (("prediction", p), ("label", t)):
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= num_classes:
                bad = ids[(ids < 0) | (ids >= num_classes)].unique()[:10].tolist()
                raise ValueError(
                    f"{name} ids must lie in [0, {num_classes}), found {bad}; "
                    f"labels may also be the ignore index {ignore_index}"
                )
    # One bincount over the flat (row, col) index: O(N) and a single kernel.
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float, or None when it is None, NaN, infinite or not a number.

    The one NaN -> None rule: JSON has no NaN, and an undefined score (a class absent from
    the split) is written as ``null`` and shown as absent.
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def json_ready(obj: Any) -> Any:
    """``obj`` with every float passed through :func:`finite_or_none` (dicts, lists and tuples
    walked), arrays and tensors as lists and paths as strings, so ``json.dumps`` writes valid JSON."""
    if isinstance(obj, Mapping):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return json_ready(obj.tolist())
    if isinstance(obj, float):
        return finite_or_none(obj)
    return obj


def best_epoch(
    history: Sequence[Mapping[str, Any]], key: str = "val_miou"
) -> tuple[int | float, float] | None:
    """(epoch, value) of the highest finite ``key`` in a training history, or None.

    The first such row wins on ties. The epoch is the row's ``epoch`` (an int when whole), else
    its 1-based position.
    """
    best: tuple[int | float, float] | None = None
    for i, row in enumerate(history):
        value = finite_or_none(row.get(key))
        if value is None or (best is not None and value <= best[1]):
            continue
        epoch = finite_or_none(row.get("epoch"))
        if epoch is None:
            epoch = i + 1
        elif epoch.is_integer():
            epoch = int(epoch)
        best = (epoch, value)
    return best


def _finite_list(values: Tensor) -> list[float | None]:
    return [finite_or_none(v) for v in values.tolist()]


@dataclass(frozen=True)
class SegmentationScores:
    """Scores derived from one confusion matrix.

    Per-class tensors are float64 ``[K]``. IoU and Dice are NaN for a class absent
    from both labels and predictions; accuracy (recall) is NaN for a class absent
    from the labels. Means skip NaN (``nanmean``) and are NaN when every class is NaN.

    Attributes:
        per_class_iou: ``TP / (TP + FP + FN)``.
        miou: Mean IoU over classes present in labels or predictions.
        per_class_dice: ``2 TP / (2 TP + FP + FN)``.
        mean_dice: Mean Dice over the same classes as ``miou``.
        pixel_accuracy: Correct pixels / labelled pixels.
        per_class_accuracy: ``TP / (TP + FN)`` (recall).
        mean_accuracy: Mean of ``per_class_accuracy`` over classes in the labels.
        confusion_matrix: int64 ``[K, K]``, rows = ground truth.
    """

    per_class_iou: Tensor
    miou: float
    per_class_dice: Tensor
    mean_dice: float
    pixel_accuracy: float
    per_class_accuracy: Tensor
    mean_accuracy: float
    confusion_matrix: Tensor

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready dict; NaN becomes None, per-class values are keyed by class name.

        Args:
            class_names: One name per class; defaults to ``"0"``, ``"1"``, ...
        """
        k = len(self.per_class_iou)
        names = [str(i) for i in range(k)] if class_names is None else list(class_names)
        if len(names) != k:
            raise ValueError(f"got {len(names)} class names for {k} classes")
        return {
            "miou": finite_or_none(self.miou),
            "per_class_iou": dict(zip(names, _finite_list(self.per_class_iou), strict=True)),
            "pixel_accuracy": finite_or_none(self.pixel_accuracy),
            "mean_dice": finite_or_none(self.mean_dice),
            "per_class_dice": dict(zip(names, _finite_list(self.per_class_dice), strict=True)),
            "mean_accuracy": finite_or_none(self.mean_accuracy),
            "per_class_accuracy": dict(zip(names, _finite_list(self.per_class_accuracy), strict=True)),
            "confusion_matrix": self.confusion_matrix.tolist(),
        }


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with NaN where ``den == 0``."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, math.nan))


def _nanmean(x: Tensor) -> float:
    return float(x.nanmean()) if bool((~x.isnan()).any()) else math.nan


def scores_from_confusion(cm: Tensor | np.ndarray) -> SegmentationScores:
    """IoU, Dice and accuracy from a confusion matrix.

    Args:
        cm: ``[K, K]`` counts, rows = ground truth, columns = prediction.
    """
    cm64 = torch.as_tensor(cm).detach().cpu().to(torch.int64)
    if cm64.ndim != 2 or cm64.shape[0] != cm64.shape[1]:
        raise ValueError(f"confusion matrix must be square [K, K], got {tuple(cm64.shape)}")
    m = cm64.to(torch.float64)
    tp = m.diagonal()
    gt = m.sum(dim=1)
    pr = m.sum(dim=0)
    iou = _ratio(tp, gt + pr - tp)
    dice = _ratio(2 * tp, gt + pr)
    acc = _ratio(tp, gt)
    total = m.sum()
    return SegmentationScores(
        per_class_iou=iou,
        miou=_nanmean(iou),
        per_class_dice=dice,
        mean_dice=_nanmean(dice),
        pixel_accuracy=float(tp.sum() / total) if total > 0 else math.nan,
        per_class_accuracy=acc,
        mean_accuracy=_nanmean(acc),
        confusion_matrix=cm64,
    )


class ConfusionMatrixMetric(Metric):
    """Dataset-level confusion matrix, summed across batches and processes.

    Our own ``Metric`` around :func:`confusion_matrix` rather than torchmetrics'
    ``MulticlassConfusionMatrix``: identical counts (tested), but it also accepts
    numpy masks and returns the raw int64 matrix that :func:`scores_from_confusion`
    expects, with a single validation path shared with offline evaluation.

    Args:
        num_classes: Number of classes ``K``.
        ignore_index: Label value whose pixels are dropped.
        validate: Check ids are in range on every update (costs a host sync).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    confmat: Tensor

    def __init__(self, num_classes: int, ignore_index: int = 255, *, validate: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.validate = validate
        self.add_state(
            "confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.int64), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: ``preds`` logits ``[B, K, H, W]`` or ids ``[B, H, W]``; ``target`` ``[B, H, W]``."""
        ids = _to_ids(preds, target)
        self.confmat += confusion_matrix(
            ids, target, self.num_classes, self.ignore_index, validate=self.validate
        ).to(self.confmat.device)

    def compute(self) -> Tensor:
        """The accumulated int64 ``[K, K]`` matrix (rows = ground truth)."""
        return self.confmat

    def scores(self) -> SegmentationScores:
        """:func:`scores_from_confusion` of the accumulated matrix."""
        return scores_from_confusion(self.compute())


def reference_batch_iou(
    pred: Tensor | np.ndarray, target: Tensor | np.ndarray, num_classes: int, ignore_index: int = 255
) -> float:
    """The reference pipeline's per-batch IoU figure (comparison only).

    For each class, intersection / union over this batch's pixels (NaN when the union
    is empty), then the mean over non-NaN classes. Ignored pixels are dropped (the
    reference had none).

    Args:
        pred: Logits ``[B, K, H, W]`` or ids ``[B, H, W]``.
        target: Ids ``[B, H, W]``.
        num_classes: Number of classes ``K``.
        ignore_index: Label value whose pixels are dropped.
    """
    cm = confusion_matrix(_to_ids(pred, target), target, num_classes, ignore_index)
    return scores_from_confusion(cm).miou


class BatchMeanIoU(Metric):
    """Reference batch-mean IoU (comparison only): the mean over batches of
    :func:`reference_batch_iou`.

    This is what the reference pipeline reported as "mIoU". It depends on the batch
    size and is not the dataset-level mIoU; report it only beside
    :func:`scores_from_confusion`'s ``miou``. Batches with no labelled pixel (NaN)
    are skipped.

    Args:
        num_classes: Number of classes ``K``.
        ignore_index: Label value whose pixels are dropped.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    total: Tensor
    count: Tensor

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch: ``preds`` logits ``[B, K, H, W]`` or ids ``[B, H, W]``; ``target`` ``[B, H, W]``."""
        value = reference_batch_iou(preds, target, self.num_classes, self.ignore_index)
        if not math.isnan(value):
            self.total += value
            self.count += 1

    def compute(self) -> Tensor:
        """Mean of the per-batch figures (NaN before any valid batch)."""
        if self.count == 0:
            return torch.tensor(math.nan, dtype=torch.float64)
        return self.total / self.count


def full_resolution_predictions(logits: Tensor, batch: dict) -> tuple[list[Tensor], list[Tensor]]:
    """Predictions and targets at the label's own size when the batch carries full masks.

    Logits are upsampled bilinearly (never the masks downsampled), so the score is the
    one the label defines. Without ``full_mask`` the training-size mask is used.
    """
    full = batch.get("full_mask")
    if full is None:
        return [class_ids(logits)], [batch["mask"]]
    if isinstance(full, Tensor):
        if tuple(full.shape[-2:]) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=full.shape[-2:], mode="bilinear", align_corners=False)
        return [class_ids(logits)], [full]
    preds, targets = [], []
    for i, mask in enumerate(full):
        up = F.interpolate(logits[i : i + 1], size=mask.shape[-2:], mode="bilinear", align_corners=False)
        preds.append(class_ids(up)[0])
        targets.append(mask)
    return preds, targets

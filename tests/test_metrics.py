"""Known-answer tests for offroadseg.metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from offroadseg.class_ids import class_ids
from offroadseg.metrics import (
    BatchMeanIoU,
    ConfusionMatrixMetric,
    best_epoch,
    confusion_matrix,
    finite_or_none,
    json_ready,
    reference_batch_iou,
    scores_from_confusion,
)

# (target, pred) pairs: (0,0) (0,0) (0,1) (1,1) (1,2) (2,2) (2,2) (2,0), last pixel ignored.
TARGET = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 255])
PRED = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0, 1])
CM = [[2, 1, 0], [0, 1, 1], [1, 0, 2]]


def test_confusion_matrix_known_answer() -> None:
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == CM
    # numpy input, uint16 masks and 2-D shapes work the same
    cm_np = confusion_matrix(PRED.numpy().reshape(3, 3), TARGET.numpy().astype(np.uint16).reshape(3, 3), 3)
    assert cm_np.tolist() == CM


def test_scores_known_answer() -> None:
    s = scores_from_confusion(confusion_matrix(PRED, TARGET, 3))
    # gt = pr = [3, 2, 3], tp = [2, 1, 2]
    torch.testing.assert_close(s.per_class_iou, torch.tensor([2 / 4, 1 / 3, 2 / 4], dtype=torch.float64))
    assert s.miou == pytest.approx(4 / 9)
    torch.testing.assert_close(s.per_class_dice, torch.tensor([4 / 6, 2 / 4, 4 / 6], dtype=torch.float64))
    assert s.mean_dice == pytest.approx(11 / 18)
    assert s.pixel_accuracy == pytest.approx(5 / 8)
    torch.testing.assert_close(s.per_class_accuracy, torch.tensor([2 / 3, 1 / 2, 2 / 3], dtype=torch.float64))


def test_absent_class_is_nan_and_excluded() -> None:
    s = scores_from_confusion(confusion_matrix(PRED, TARGET, 4))
    assert math.isnan(s.per_class_iou[3]) and math.isnan(s.per_class_dice[3])
    assert math.isnan(s.per_class_accuracy[3])
    assert s.miou == pytest.approx(4 / 9)
    assert s.mean_dice == pytest.approx(11 / 18)
    d = s.to_dict(["a", "b", "c", "d"])
    assert d["per_class_iou"]["d"] is None and d["per_class_dice"]["d"] is None
    assert d["per_class_iou"]["b"] == pytest.approx(1 / 3)
    assert d["confusion_matrix"][0] == [2, 1, 0, 0]
    json.dumps(d, allow_nan=False)


def test_class_only_predicted_has_zero_iou() -> None:
    # Class 1 never in the labels but predicted once: IoU 0 (counts in the mean), accuracy NaN.
    s = scores_from_confusion(confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 0]), 2))
    assert s.per_class_iou.tolist() == [0.5, 0.0]
    assert s.miou == pytest.approx(0.25)
    assert math.isnan(s.per_class_accuracy[1])


def test_ignore_index_honoured() -> None:
    target = torch.tensor([0, 1, 7, 7])
    pred = torch.tensor([0, 1, 0, 1])
    assert confusion_matrix(pred, target, 2, ignore_index=7).tolist() == [[1, 0], [0, 1]]


def test_out_of_range_ids_raise() -> None:
    with pytest.raises(ValueError, match=r"prediction ids .*\[3\]"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="label ids"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 5]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1, 2]), 3)


def test_empty_matrix_gives_nan() -> None:
    s = scores_from_confusion(torch.zeros(3, 3, dtype=torch.int64))
    assert math.isnan(s.miou) and math.isnan(s.pixel_accuracy)
    assert s.to_dict()["miou"] is None


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_metric_accumulates_logits_and_ids_and_matches_torchmetrics() -> None:
    g = torch.Generator().manual_seed(0)
    metric = ConfusionMatrixMetric(5)
    reference = MulticlassConfusionMatrix(5, ignore_index=255)
    total = torch.zeros(5, 5, dtype=torch.int64)
    for i in range(3):
        logits = torch.randn(2, 5, 4, 6, generator=g)
        target = torch.randint(0, 5, (2, 4, 6), generator=g)
        target[:, 0] = 255
        preds = logits if i % 2 == 0 else logits.argmax(1)
        metric.update(preds, target)
        reference.update(logits.argmax(1), target)
        total += confusion_matrix(logits.argmax(1), target, 5)
    assert torch.equal(metric.compute(), total)
    assert torch.equal(metric.compute(), reference.compute().long())
    assert metric.scores().miou == scores_from_confusion(total).miou
    metric.reset()
    assert metric.compute().sum() == 0


def test_batch_mean_iou_differs_from_dataset_miou() -> None:
    # Batch 1: all class 0, predicted right -> batch IoU 1.0 (class 1 NaN, skipped).
    # Batch 2: target [0, 1, 1, 1], pred all 1 -> IoU0 = 0, IoU1 = 3/4 -> 0.375.
    batches = [
        (torch.tensor([[0, 0, 0, 0]]), torch.tensor([[0, 0, 0, 0]])),
        (torch.tensor([[1, 1, 1, 1]]), torch.tensor([[0, 1, 1, 1]])),
    ]
    assert reference_batch_iou(*batches[0], 2) == 1.0
    assert reference_batch_iou(*batches[1], 2) == pytest.approx(0.375)
    batch_mean = BatchMeanIoU(2)
    dataset = ConfusionMatrixMetric(2)
    for pred, target in batches:
        batch_mean.update(pred, target)
        dataset.update(pred, target)
    assert batch_mean.compute().item() == pytest.approx((1.0 + 0.375) / 2)  # 0.6875
    # Dataset level: IoU0 = 4/5, IoU1 = 3/4 -> 0.775.
    assert dataset.scores().miou == pytest.approx((4 / 5 + 3 / 4) / 2)
    assert batch_mean.compute().item() != pytest.approx(dataset.scores().miou)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_batch_mean_iou_skips_fully_ignored_batches() -> None:
    metric = BatchMeanIoU(2)
    assert math.isnan(metric.compute())
    metric.update(torch.tensor([0, 1]), torch.tensor([255, 255]))
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert metric.compute().item() == 1.0


def test_finite_or_none() -> None:
    assert finite_or_none(0.25) == 0.25 and finite_or_none(np.float32(0.5)) == 0.5
    assert finite_or_none(torch.tensor(2)) == 2.0 and finite_or_none("0.5") == 0.5
    for bad in (None, math.nan, math.inf, -math.inf, True, "n/a", [1.0]):
        assert finite_or_none(bad) is None, bad


def test_json_ready_writes_valid_json(tmp_path) -> None:
    payload = {
        "miou": math.nan,
        "rows": [(1, np.float64(math.nan)), {"x": np.array([0.5, math.inf])}],
        "cm": torch.tensor([[1, 2]]),
        "path": tmp_path / "a",
        "ok": 0.75,
        "flag": True,
        "name": "x",
    }
    out = json.loads(json.dumps(json_ready(payload), allow_nan=False))
    assert out == {
        "miou": None,
        "rows": [[1, None], {"x": [0.5, None]}],
        "cm": [[1, 2]],
        "path": str(tmp_path / "a"),
        "ok": 0.75,
        "flag": True,
        "name": "x",
    }


def test_best_epoch_first_of_the_highest() -> None:
    history = [
        {"epoch": 1, "val_miou": 0.2, "other": 0.9},
        {"epoch": 2, "val_miou": math.nan},
        {"epoch": 3, "val_miou": 0.4},
        {"epoch": 4, "val_miou": 0.4},
        {"epoch": 5, "val_miou": None},
    ]
    best = best_epoch(history)
    assert best == (3, 0.4) and isinstance(best[0], int)
    assert best_epoch(history, "other") == (1, 0.9)
    assert best_epoch(history, "missing") is None and best_epoch([]) is None
    assert best_epoch([{"val_miou": 0.1}, {"val_miou": 0.3}]) == (2, 0.3)  # position when no epoch
    assert best_epoch([{"epoch": 1.5, "val_miou": 0.1}]) == (1.5, 0.1)


def test_class_ids_is_the_argmax_first_maximum_on_ties():
    logits = torch.tensor([[[[1.0, 2.0]], [[3.0, 2.0]], [[3.0, 0.0]]]])  # [1, 3, 1, 2]: ties at both pixels
    assert class_ids(logits).tolist() == [[[1, 0]]]  # the first of the tied maxima, as argmax
    assert class_ids(logits[0], dim=0).tolist() == [[1, 0]]
    nan = logits.clone()
    nan[0, 2, 0, 1] = float("nan")  # NaN counts as the maximum, as in argmax
    assert class_ids(nan).tolist() == nan.argmax(1).tolist() == [[[1, 2]]]
    rng = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 8, 17, 23, generator=rng).to(dtype)
        assert torch.equal(class_ids(x), x.argmax(1)) and torch.equal(class_ids(x[0], dim=0), x[0].argmax(0))

"""Known-answer tests for offroadseg.losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from offroadseg import losses as losses_module
from offroadseg.errors import ConfigError
from offroadseg.losses import (
    LOSSES,
    CombinedLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    OhemCrossEntropyLoss,
    class_weights_from_counts,
    create_loss,
    cross_entropy,
    dice_loss,
    focal_loss,
    lovasz_grad,
    lovasz_softmax,
    lovasz_softmax_flat,
    ohem_cross_entropy,
)

# Every single loss and the combinations a YAML file would name.
ALL_NAMES = [*sorted(LOSSES), "ce+dice", "focal+dice", "ce+lovasz", "ohem+lovasz", "focal+dice+lovasz"]

K = 4


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, K, 5, 6, generator=g)
    target = torch.randint(0, K, (2, 5, 6), generator=g)
    target[0, 0, :3] = 255
    target[1, 4, 2] = 255
    return logits, target


def _logits_from_probs(p0: list[float]) -> torch.Tensor:
    """2-class logits [1, 2, 2, 2] whose softmax gives p(class 0) = p0 (row-major)."""
    p = torch.tensor(p0, dtype=torch.float64).reshape(1, 2, 2)
    return torch.stack([p.log(), (1 - p).log()], dim=1)


# class weights


def test_class_weights_known_answer() -> None:
    # total 100, K 4: total/(K*count) = 2.5, 0.8333, 0.41667, (count 0 -> 0); x2 puts the max at 5.
    w = class_weights_from_counts(np.array([10, 30, 60, 0]))
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, torch.tensor([5.0, 5 / 3, 5 / 6, 0.0]))
    torch.testing.assert_close(class_weights_from_counts([1, 1], max_weight=2.0), torch.tensor([2.0, 2.0]))


def test_sqrt_class_weights_known_answer() -> None:
    # total 100, K 4: total/(K*count) = 2.5, 0.8333, 0.41667, 25 (count 1); sqrt, then capped at 3.
    w = class_weights_from_counts(np.array([10, 30, 59, 1]), max_weight=3.0, mode="sqrt")
    expected = [math.sqrt(2.5), math.sqrt(100 / 120), math.sqrt(100 / 236), 3.0]
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float32))
    # An absent class gets 0; a balanced set gets 1 everywhere (no rescaling, unlike 'inverse').
    torch.testing.assert_close(
        class_weights_from_counts([5, 0, 15], mode="sqrt"),
        torch.tensor([math.sqrt(20 / 15), 0.0, math.sqrt(20 / 45)], dtype=torch.float32),
    )
    torch.testing.assert_close(class_weights_from_counts([7, 7], mode="sqrt"), torch.ones(2))
    with pytest.raises(ValueError, match="mode"):
        class_weights_from_counts([1, 2], mode="log")


def test_class_weights_reject_bad_counts() -> None:
    with pytest.raises(ValueError, match="zero"):
        class_weights_from_counts([0, 0])
    with pytest.raises(ValueError, match="non-negative"):
        class_weights_from_counts([3, -1])


# cross-entropy and focal


def test_cross_entropy_matches_torch() -> None:
    logits, target = _batch()
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    torch.testing.assert_close(
        cross_entropy(logits, target), F.cross_entropy(logits, target, ignore_index=255)
    )
    torch.testing.assert_close(
        cross_entropy(logits, target, weight=w), F.cross_entropy(logits, target, weight=w, ignore_index=255)
    )


def test_focal_gamma0_equals_cross_entropy() -> None:
    logits, target = _batch()
    assert torch.equal(focal_loss(logits, target, gamma=0.0), cross_entropy(logits, target))
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target, ignore_index=255)
    )


def test_focal_known_answer() -> None:
    # Pixel 0: p_t = 0.8 (target 0); pixel 1: p_t = 0.6 (target 1); pixel 2 ignored; pixel 3: p_t = 0.5.
    logits = _logits_from_probs([0.8, 0.4, 0.1, 0.5])
    target = torch.tensor([[[0, 1], [255, 0]]])
    w = torch.tensor([2.0, 1.0])
    terms = [2.0 * 0.2**2 * -math.log(0.8), 1.0 * 0.4**2 * -math.log(0.6), 2.0 * 0.5**2 * -math.log(0.5)]
    expected = sum(terms) / 3  # divided by the number of valid pixels, not the weight sum
    got = focal_loss(logits, target, gamma=2.0, weight=w)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_focal_down_weights_easy_pixels() -> None:
    logits, target = _batch()
    assert focal_loss(logits, target, gamma=2.0) < cross_entropy(logits, target)


# dice


def test_dice_hand_computed_two_class() -> None:
    # p(class 0) = [0.8, 0.4, 0.1, 0.5], target [0, 0, 1, 1], smooth 1.
    # class 0: I = 1.2, sum p = 1.8, sum y = 2 -> dice = 3.4 / 4.8
    # class 1: I = 1.4, sum p = 2.2, sum y = 2 -> dice = 3.8 / 5.2
    logits = _logits_from_probs([0.8, 0.4, 0.1, 0.5])
    target = torch.tensor([[[0, 0], [1, 1]]])
    expected = ((1 - 3.4 / 4.8) + (1 - 3.8 / 5.2)) / 2
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_dice_ignored_pixel_and_absent_class() -> None:
    # Pixel 2 ignored: valid pixels 0, 1, 3.
    # class 0: I = 0.8 + 0.4 = 1.2, sum p = 0.8 + 0.4 + 0.5 = 1.7, sum y = 2 -> dice = 3.4 / 4.7
    # class 1: I = 0.5, sum p = 0.2 + 0.6 + 0.5 = 1.3, sum y = 1 -> dice = 2.0 / 3.3
    logits = _logits_from_probs([0.8, 0.4, 0.1, 0.5])
    target = torch.tensor([[[0, 0], [255, 1]]])
    expected = ((1 - 3.4 / 4.7) + (1 - 2.0 / 3.3)) / 2
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # Only class 0 present (pixels 0, 1): I = 1.2, sum p = 1.2, sum y = 2; class 1 is left out.
    target = torch.tensor([[[0, 0], [255, 255]]])
    assert dice_loss(logits, target).item() == pytest.approx(1 - 3.4 / 4.2, rel=1e-6)


def test_dice_perfect_prediction_is_zero() -> None:
    target = torch.randint(0, K, (2, 6, 6))
    logits = F.one_hot(target, K).permute(0, 3, 1, 2).float() * 100.0
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_class_weights() -> None:
    logits = _logits_from_probs([0.8, 0.4, 0.1, 0.5])
    target = torch.tensor([[[0, 0], [1, 1]]])
    w = torch.tensor([3.0, 1.0])
    expected = (3 * (1 - 3.4 / 4.8) + 1 * (1 - 3.8 / 5.2)) / 4
    assert dice_loss(logits, target, weight=w).item() == pytest.approx(expected, rel=1e-6)


# shared behaviour of every loss


@pytest.mark.parametrize("name", ALL_NAMES)
def test_ignored_pixels_with_garbage_logits_change_nothing(name: str) -> None:
    loss = create_loss(name, num_classes=K, class_weights=torch.tensor([1.0, 2.0, 0.5, 3.0]))
    logits, target = _batch()
    ignored = (target == 255).unsqueeze(1).expand_as(logits)
    garbage = torch.where(ignored, torch.randn_like(logits) * 1e3, logits)
    a_in, b_in = logits.clone().requires_grad_(), garbage.clone().requires_grad_()
    a, b = loss(a_in, target), loss(b_in, target)
    assert torch.equal(a, b)
    a.backward()
    b.backward()
    assert torch.equal(a_in.grad, b_in.grad)
    assert (a_in.grad[ignored] == 0).all()


@pytest.mark.parametrize("name", ALL_NAMES)
def test_all_ignored_gives_zero_not_nan(name: str) -> None:
    loss = create_loss(name, num_classes=K)
    logits = torch.randn(1, K, 3, 3, requires_grad=True)
    value = loss(logits, torch.full((1, 3, 3), 255))
    assert value.item() == 0.0
    value.backward()


# OHEM


def _two_class_logits(p0: list[float]) -> torch.Tensor:
    """2-class logits ``[1, 2, 1, P]`` whose softmax gives p(class 0) = p0."""
    p = torch.tensor(p0, dtype=torch.float64).reshape(1, 1, -1)
    return torch.stack([p.log(), (1 - p).log()], dim=1)


def test_ohem_known_answer() -> None:
    # True-class probabilities 0.9, 0.5, 0.2, 0.95 (all targets class 0).
    logits = _two_class_logits([0.9, 0.5, 0.2, 0.95])
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    # thresh 0.7: the two pixels below it are kept.
    got = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=1)
    assert got.item() == pytest.approx((-math.log(0.5) - math.log(0.2)) / 2)
    # min_kept 3 > 2 hard pixels: the 3 lowest probabilities are kept.
    got = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=3)
    assert got.item() == pytest.approx((-math.log(0.5) - math.log(0.2) - math.log(0.9)) / 3)
    # min_kept above the pixel count keeps every pixel: plain cross-entropy.
    torch.testing.assert_close(
        ohem_cross_entropy(logits, target, thresh=0.0, min_kept=100), cross_entropy(logits, target)
    )


def test_ohem_class_weights_and_ignore() -> None:
    logits = _two_class_logits([0.9, 0.5, 0.2, 0.4])
    target = torch.tensor([[[0, 0, 1, 255]]])
    # p(true): 0.9, 0.5, 0.8 -> only pixel 1 is below 0.7; min_kept 2 adds pixel 2 (0.8) not pixel 0.
    w = torch.tensor([1.0, 3.0])
    got = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=2, weight=w)
    expected = (1.0 * -math.log(0.5) + 3.0 * -math.log(0.8)) / (1.0 + 3.0)
    assert got.item() == pytest.approx(expected)


# Lovasz-softmax


def test_lovasz_grad_known_answer() -> None:
    # gt sorted by decreasing error [0, 1]: jaccard [0.5, 1.0] -> grad [0.5, 0.5].
    torch.testing.assert_close(lovasz_grad(torch.tensor([0.0, 1.0])), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(lovasz_grad(torch.tensor([1.0, 0.0])), torch.tensor([1.0, 0.0]))


def test_lovasz_hand_computed_two_class() -> None:
    # Pixel a: target 0, p0 0.8; pixel b: target 1, p0 0.3 (p1 0.7).
    # Class 0: errors [0.2, 0.3] -> sorted [b, a], gt [0, 1], grad [0.5, 0.5] -> 0.25.
    # Class 1: errors [0.2, 0.3] -> sorted [b, a], gt [1, 0], grad [1, 0] -> 0.3. Mean 0.275.
    logits = _two_class_logits([0.8, 0.3])
    target = torch.tensor([[[0, 1]]])
    assert lovasz_softmax(logits, target).item() == pytest.approx(0.275)


def test_lovasz_at_one_hot_is_one_minus_iou_of_present_classes() -> None:
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (40,), generator=g)  # classes 0..2 present, class 3 absent
    pred = torch.randint(0, K, (40,), generator=g)
    probs = F.one_hot(pred, K).double()
    ious = []
    for c in range(3):
        inter = ((pred == c) & (labels == c)).sum().item()
        union = ((pred == c) | (labels == c)).sum().item()
        ious.append(inter / union)
    expected = sum(1 - i for i in ious) / 3
    assert lovasz_softmax_flat(probs, labels).item() == pytest.approx(expected)


def _lovasz_one_class_at_a_time(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    losses = []
    for c in labels.unique():
        fg = (labels == c).to(probs.dtype)
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = errors.sort(descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("chunk_classes", [1, 2, 100])
def test_lovasz_classes_sorted_together_equal_one_class_at_a_time(monkeypatch, chunk_classes) -> None:
    # the rows of one [classes, pixels] sort, in chunks of classes, give the per-class definition's
    # value and gradient (class 2 absent: left out of the mean, as before)
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, K, (300,), generator=g)
    labels[labels == 2] = 1
    logits = torch.randn(300, K, generator=g, dtype=torch.float64)
    monkeypatch.setattr(losses_module, "_LOVASZ_CHUNK", chunk_classes * labels.numel())
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    got = lovasz_softmax_flat(a.softmax(1), labels)
    want = _lovasz_one_class_at_a_time(b.softmax(1), labels)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(a.grad, b.grad)


def test_lovasz_per_image_is_the_mean_of_images() -> None:
    logits, target = _batch()
    per_image = lovasz_softmax(logits, target, per_image=True)
    each = [lovasz_softmax(logits[i : i + 1], target[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(per_image, sum(each) / 2)
    assert not torch.allclose(per_image, lovasz_softmax(logits, target))


def test_lovasz_perfect_prediction_is_zero() -> None:
    target = torch.tensor([[[0, 1], [2, 1]]])
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert lovasz_softmax(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_create_loss_combinations() -> None:
    logits, target = _batch()
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    fd = create_loss("focal+dice", num_classes=K, class_weights=w, focal_gamma=1.5, dice_weight=0.25)
    expected = focal_loss(logits, target, gamma=1.5, weight=w) + 0.25 * dice_loss(logits, target)
    torch.testing.assert_close(fd(logits, target), expected)
    cd = create_loss("ce+dice", num_classes=K, class_weights=w)
    expected = cross_entropy(logits, target, weight=w) + 0.5 * dice_loss(logits, target)
    torch.testing.assert_close(cd(logits, target), expected)
    assert isinstance(create_loss("ce", num_classes=K), CrossEntropyLoss)
    assert isinstance(create_loss("focal", num_classes=K), FocalLoss)
    assert isinstance(create_loss("dice", num_classes=K), DiceLoss)
    assert isinstance(fd, CombinedLoss)
    cl = create_loss("ohem+lovasz", num_classes=K, class_weights=w, lovasz_weight=0.7, ohem_min_kept=5)
    expected = ohem_cross_entropy(logits, target, min_kept=5, weight=w) + 0.7 * lovasz_softmax(logits, target)
    torch.testing.assert_close(cl(logits, target), expected)
    assert isinstance(create_loss("ohem", num_classes=K), OhemCrossEntropyLoss)
    assert isinstance(create_loss("lovasz", num_classes=K), LovaszSoftmaxLoss)
    lp = create_loss("lovasz", num_classes=K, lovasz_per_image=True)
    torch.testing.assert_close(lp(logits, target), lovasz_softmax(logits, target, per_image=True))


def test_create_loss_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean: focal") as info:
        create_loss("focl", num_classes=K)
    for name in LOSSES:
        assert name in str(info.value)
    with pytest.raises(
        ConfigError, match="unknown loss 'lovaz' in loss.name='ce\\+lovaz'.*did you mean: lovasz"
    ):
        create_loss("ce+lovaz", num_classes=K)
    with pytest.raises(ConfigError, match="at most one of ce, focal, ohem"):
        create_loss("ce+focal", num_classes=K)
    with pytest.raises(ConfigError, match="once"):
        create_loss("ce+dice+dice", num_classes=K)
    with pytest.raises(ConfigError, match="per-pixel loss first"):
        create_loss("lovasz+ce", num_classes=K)
    with pytest.raises(ConfigError, match="one weight per class"):
        create_loss("ce", num_classes=K, class_weights=torch.ones(3))


def test_class_weights_are_buffers() -> None:
    loss = create_loss("focal", num_classes=K, class_weights=torch.ones(K))
    assert "weight" in dict(loss.named_buffers())
    assert "weight" in loss.state_dict()

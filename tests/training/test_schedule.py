import pytest

from offroadseg.training.schedule import lr_curve, lr_factor


def test_constant():
    assert lr_factor(0, total_steps=10) == 1.0
    assert lr_factor(9, total_steps=10) == 1.0


def test_linear_warmup_then_cosine_known_values():
    kw = {"total_steps": 12, "warmup_steps": 3, "schedule": "cosine", "min_ratio": 0.0}
    assert [lr_factor(s, **kw) for s in range(3)] == pytest.approx([0.25, 0.5, 0.75])
    assert lr_factor(3, **kw) == pytest.approx(1.0)
    assert lr_factor(3 + 9 // 2, **kw) == pytest.approx(
        0.5 * (1 + __import__("math").cos(__import__("math").pi * 4 / 9))
    )
    assert lr_factor(12, **kw) == pytest.approx(0.0)


def test_cosine_floor():
    curve = lr_curve(5e-4, total_steps=100, schedule="cosine", min_lr=1e-6)
    assert curve[0] == pytest.approx(5e-4)
    assert min(curve) >= 1e-6
    assert curve == sorted(curve, reverse=True)

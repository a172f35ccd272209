"""Choosing an inference engine: argmax agreement and the choice rule, on known answers."""

from __future__ import annotations

import pytest
import torch

from offroadseg.inference.engines import EngineTrial, argmax_agreement, choose_engine


def _logits(classes: list[list[int]], k: int = 3) -> torch.Tensor:
    """[1, K, H, W] logits whose argmax is ``classes``."""
    idx = torch.tensor(classes)
    return torch.nn.functional.one_hot(idx, k).permute(2, 0, 1)[None].float()


def test_argmax_agreement_known_answer() -> None:
    a = _logits([[0, 1], [2, 2]])
    b = _logits([[0, 1], [2, 0]])  # one pixel of four differs
    assert argmax_agreement(a, a) == 1.0
    assert argmax_agreement(a, b) == pytest.approx(0.75)
    # over several frames it is the share of all their pixels, not a mean of per-frame shares
    c = _logits([[0, 0, 0, 0, 0, 0]])
    d = _logits([[0, 0, 0, 0, 0, 1]])
    assert argmax_agreement([a, c], [b, d]) == pytest.approx((3 + 5) / (4 + 6))
    with pytest.raises(ValueError, match="different shapes"):
        argmax_agreement(a, c)


def test_choose_the_fastest_faithful_engine_never_a_slower_one() -> None:
    eager = EngineTrial("eager", ms=100.0, agreement=1.0)
    fast_but_wrong = EngineTrial("onnxruntime_int8", ms=30.0, agreement=0.990)  # under 99.5 %
    faithful = EngineTrial("openvino_bf16", ms=50.0, agreement=0.997)
    slower = EngineTrial("onnxruntime", ms=120.0, agreement=1.0)
    assert choose_engine([eager, fast_but_wrong, faithful, slower]).engine == "openvino_bf16"
    # within the 3 % timing margin, or only slower ones: eager stays
    assert choose_engine([eager, EngineTrial("bf16", ms=98.0, agreement=1.0)]).engine == "eager"
    assert choose_engine([eager, slower, fast_but_wrong]).engine == "eager"
    # an engine that could not be built (no time) is never chosen
    assert choose_engine([eager, EngineTrial("openvino", note="not installed")]).engine == "eager"
    with pytest.raises(ValueError, match="baseline"):
        choose_engine([faithful])

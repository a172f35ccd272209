"""Choosing an inference engine: argmax agreement and the choice rule, on known answers."""

from __future__ import annotations

import pytest
import torch

from offroadseg.errors import ConfigError
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


def _const_forward(classes: list[list[int]], ms: float = 0.0):
    """A forward returning logits whose argmax is ``classes`` whatever the input (sleeps ``ms``)."""
    import time

    logits = _logits(classes)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if ms:
            time.sleep(ms / 1000.0)
        return logits

    return forward


def test_try_engines_times_each_and_measures_agreement_against_eager() -> None:
    from offroadseg.inference.engines import EngineUnavailable, try_engines

    built: list[str] = []

    def builder(name, loaded, **kwargs):
        built.append(name)
        if name == "openvino":
            raise EngineUnavailable("engine openvino needs OpenVINO")
        if name == "onnxruntime":
            raise RuntimeError("export broke")
        if name == "bf16":
            return _const_forward([[0, 1], [2, 0]])  # one pixel of four differs from eager
        return _const_forward([[0, 1], [2, 2]])

    x = [torch.zeros(1, 3, 2, 2)] * 2
    trials, forwards = try_engines(
        None, ["bf16", "openvino", "onnxruntime"], size=(2, 2), calibration=x, check=x, builder=builder
    )
    assert built == ["eager", "bf16", "openvino", "onnxruntime"]  # eager first, as the reference
    by = {t.engine: t for t in trials}
    assert by["eager"].agreement == 1.0 and by["bf16"].agreement == pytest.approx(0.75)
    assert by["openvino"].ms is None and by["openvino"].note.startswith("skipped: engine openvino needs")
    assert by["onnxruntime"].ms is None and "RuntimeError: export broke" in by["onnxruntime"].note
    assert set(forwards) == {"eager", "bf16"}
    assert all(by[e].ms is not None and by[e].ms >= 0 for e in forwards)
    with pytest.raises(ConfigError, match="unknown engine 'tensorrt'"):
        try_engines(None, ["tensorrt"], size=(2, 2), calibration=x, check=x, builder=builder)


def test_try_engines_timing_orders_engines_as_their_speed() -> None:
    from offroadseg.inference.engines import try_engines

    def builder(name, loaded, **kwargs):
        return _const_forward([[0, 1]], ms={"eager": 20.0, "onnxruntime": 2.0}[name])

    x = [torch.zeros(1, 3, 1, 2)] * 2
    trials, _ = try_engines(None, ["onnxruntime"], size=(1, 2), calibration=x, check=x, builder=builder)
    assert trials[0].ms > 15.0 and trials[1].ms < 10.0
    assert choose_engine(trials).engine == "onnxruntime"


def test_split_frames_keeps_calibration_and_check_disjoint() -> None:
    from offroadseg.inference.engines import split_frames

    frames = [torch.full((1,), float(i)) for i in range(5)]
    calib, check, note = split_frames(frames)
    assert [int(f) for f in calib] == [0, 2, 4] and [int(f) for f in check] == [1, 3]
    assert "3 frames" in note and "2 others" in note
    one, same, note = split_frames(frames[:1])
    assert one == same and "same frame" in note


def test_bf16_engine_refused_on_a_cpu_without_native_bf16(monkeypatch) -> None:
    import offroadseg.inference.engines as engines

    monkeypatch.setattr(engines, "cpu_info", lambda: {"native_bf16": False, "model": "Old CPU"})
    with pytest.raises(engines.EngineUnavailable, match="Old CPU has none"):
        engines.build_forward("bf16", None, size=(14, 14), workdir=".", device="cpu")

"""The predictor's backbone precision: bf16 under ``train.precision: auto`` on a CPU with native bf16,
fp32 on any other CPU or when the config asks for fp32."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from offroadseg import machine
from offroadseg.inference.checkpoint import load_checkpoint
from offroadseg.inference.predictor import Predictor, TTAConfig


def _with_precision(loaded, precision: str):
    cfg = dataclasses.replace(
        loaded.config, train=dataclasses.replace(loaded.config.train, precision=precision)
    )
    return dataclasses.replace(loaded, config=cfg)


def _predictions(loaded, images) -> np.ndarray:
    predictor = Predictor.from_loaded(loaded, tta=TTAConfig(tta="none"), device="cpu")
    return np.stack(predictor.predict(images)), predictor


@pytest.mark.skipif(not machine.cpu_info()["native_bf16"], reason="this CPU has no native bf16")
def test_auto_runs_the_backbone_in_bf16_on_a_bf16_cpu(toy_checkpoint) -> None:
    loaded = load_checkpoint(toy_checkpoint)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (60, 90, 3), dtype=np.uint8) for _ in range(3)]
    fp32, p32 = _predictions(_with_precision(loaded, "32"), images)
    bf16, p16 = _predictions(_with_precision(loaded, "auto"), images)
    assert p32.precision == "fp32" and p16.precision == "bf16"
    assert (bf16 == fp32).mean() >= 0.99  # argmax agreement with the fp32 backbone
    assert {p.dtype.itemsize for p in loaded.model.parameters()} == {4}  # the loaded model stays fp32


def test_auto_stays_fp32_on_a_cpu_without_bf16(toy_checkpoint, monkeypatch) -> None:
    avx2 = {"model": "AVX2 only", "flags": ["avx2", "fma"], "native_bf16": False}
    monkeypatch.setattr(machine, "cpu_info", lambda text=None: avx2)
    loaded = _with_precision(load_checkpoint(toy_checkpoint), "auto")
    predictor = Predictor.from_loaded(loaded, tta=TTAConfig(tta="none"), device="cpu")
    assert predictor.precision == "fp32"

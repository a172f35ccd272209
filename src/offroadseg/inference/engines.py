"""Inference engines: one model run by eager PyTorch, bf16, ONNX Runtime (fp32, int8) or OpenVINO
(fp32, bf16, int8), and the choice of the fastest that still agrees with eager fp32.

Every engine is a forward function (normalised float32 ``[B, 3, H, W]`` -> float32 logits
``[B, K, H, W]``) at one fixed input size, so a :class:`Predictor` runs any of them unchanged:

- ``eager``: PyTorch fp32; ``bf16``: PyTorch with the frozen backbone in bf16 (autocast);
- ``onnxruntime``: the model exported to ONNX, run by ONNX Runtime; ``onnxruntime_int8``: static QDQ
  int8 (per-channel weights, activations calibrated on frames); ``onnxruntime_int8_dynamic``: dynamic
  int8 (no calibration);
- ``openvino`` / ``openvino_bf16``: the ONNX graph converted to OpenVINO, f32 or bf16 inference
  precision; ``openvino_int8``: NNCF post-training quantization calibrated on frames.

:func:`choose_engine` keeps the fastest engine whose argmax agrees with eager fp32 on at least
:data:`MIN_AGREEMENT` of the pixels, and eager itself unless another is clearly faster, so its choice
is never slower than eager on the frames timed (the rule ``predict --engine auto`` is to use; that flag is
not wired yet).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from offroadseg.data.datasets import normalize, resize_image
from offroadseg.errors import ConfigError, ModelError
from offroadseg.machine import cpu_info

__all__ = [
    "ENGINES",
    "MIN_AGREEMENT",
    "EngineTrial",
    "EngineUnavailable",
    "argmax_agreement",
    "build_forward",
    "choose_engine",
    "prepare_inputs",
]

ENGINES = (
    "eager",
    "bf16",
    "onnxruntime",
    "onnxruntime_int8",
    "onnxruntime_int8_dynamic",
    "openvino",
    "openvino_bf16",
    "openvino_int8",
)
MIN_AGREEMENT = 0.995
# Another engine replaces eager only when its median is at least this much lower (timing noise).
MARGIN = 0.03
_PIP_ONNX = "pip install 'offroadseg[onnx]'"

Forward = Callable[[Tensor], Tensor]


class EngineUnavailable(ModelError):
    """An engine this machine or installation cannot run (a missing package, no native bf16)."""


@dataclass
class EngineTrial:
    """One engine timed on calibration frames."""

    engine: str
    ms: float | None = None  # median forward time per frame
    agreement: float | None = None  # share of pixels whose argmax equals eager fp32's
    setup_s: float | None = None  # export, quantization, compilation
    note: str = ""


def argmax_agreement(a: Sequence[Tensor] | Tensor, b: Sequence[Tensor] | Tensor) -> float:
    """Share of pixels whose argmax class is the same in two sets of logits (``[B, K, H, W]`` each)."""
    a = [a] if isinstance(a, Tensor) else list(a)
    b = [b] if isinstance(b, Tensor) else list(b)
    if len(a) != len(b) or not a:
        raise ValueError(
            f"argmax_agreement needs two equal, non-empty lists of logits, got {len(a)} and {len(b)}"
        )
    same = total = 0
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            raise ValueError(f"logits of different shapes: {tuple(x.shape)} and {tuple(y.shape)}")
        same += int((x.argmax(1) == y.argmax(1)).sum())
        total += x.shape[0] * x.shape[-2] * x.shape[-1]
    return same / total


def choose_engine(
    trials: Sequence[EngineTrial],
    *,
    baseline: str = "eager",
    min_agreement: float = MIN_AGREEMENT,
    margin: float = MARGIN,
) -> EngineTrial:
    """The fastest trial with ``agreement >= min_agreement``; the baseline unless one beats it by ``margin``.

    Raises:
        ValueError: the baseline was not timed.
    """
    base = next((t for t in trials if t.engine == baseline and t.ms is not None), None)
    if base is None:
        raise ValueError(f"the baseline engine {baseline!r} was not timed")
    eligible = [
        t
        for t in trials
        if t.ms is not None
        and t.engine != baseline
        and t.agreement is not None
        and t.agreement >= min_agreement
    ]
    best = min(eligible, key=lambda t: t.ms, default=None)
    if best is None or best.ms > base.ms * (1.0 - margin):
        return base
    return best


def prepare_inputs(images: Sequence[np.ndarray], size: tuple[int, int]) -> list[Tensor]:
    """uint8 RGB images -> normalised ``[1, 3, H, W]`` tensors at ``size``, as ``predict`` feeds them."""
    return [normalize(resize_image(im, size))[None] for im in images]


def _require_onnxruntime(engine: str) -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise EngineUnavailable(f"engine {engine} needs onnxruntime and onnx; fix: {_PIP_ONNX}") from None


def _onnx_file(loaded, workdir: Path, size: tuple[int, int]) -> Path:
    """The fp32 ONNX export at ``size`` in ``workdir`` (written once, shared by the ONNX engines)."""
    from offroadseg.inference.onnx import export_onnx

    path = workdir / f"model_{size[0]}x{size[1]}.onnx"
    if not path.is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(loaded, path, height=size[0], width=size[1])
    return path


def build_forward(
    engine: str,
    loaded,
    *,
    size: tuple[int, int],
    workdir: str | Path,
    calibration: Sequence[Tensor] = (),
    device: torch.device | str = "cpu",
    threads: int | None = None,
) -> Forward:
    """The forward function of ``engine`` for ``loaded``'s model at input ``size``.

    Args:
        engine: one of :data:`ENGINES`.
        loaded: a :class:`~offroadseg.inference.checkpoint.LoadedModel`.
        size: ``(H, W)`` the exported engines take (PyTorch takes any size).
        workdir: folder for the exported files (the engine no longer needs it once built).
        calibration: normalised ``[1, 3, H, W]`` inputs at ``size`` for the int8 engines.
        device: where PyTorch runs (ONNX Runtime and OpenVINO run on the CPU).
        threads: ONNX Runtime / OpenVINO threads (default: theirs).

    Raises:
        EngineUnavailable: a package is missing, or the CPU lacks what the engine needs.
        ConfigError: an unknown engine, or an int8 engine without calibration inputs.
    """
    from offroadseg.inference.predictor import torch_forward

    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r} is not one of auto, {', '.join(ENGINES)}")
    dev = torch.device(device)
    workdir = Path(workdir)
    if engine in ("eager", "bf16"):
        return torch_forward(loaded.model.to(dev).eval(), dev, "fp32" if engine == "eager" else "bf16")
    if engine in ("onnxruntime_int8", "openvino_int8") and not calibration:
        raise ConfigError(f"engine {engine} needs calibration frames; fix: give it a few typical images")
    calib = [np.ascontiguousarray(x.numpy(), dtype=np.float32) for x in calibration]
    if engine.startswith("onnxruntime"):
        _require_onnxruntime(engine)
        from offroadseg.inference.onnx import OnnxRunner
        from offroadseg.inference.quantize import quantize_onnx

        path = _onnx_file(loaded, workdir, size)
        if engine != "onnxruntime":
            int8 = workdir / f"{engine}.onnx"
            if engine == "onnxruntime_int8":
                quantize_onnx(path, int8, mode="static", calibration=calib)
            else:
                quantize_onnx(path, int8, mode="dynamic")
            path = int8
        return OnnxRunner(path, device="cuda" if dev.type == "cuda" else "cpu", threads=threads)
    from offroadseg.inference.openvino import (
        OpenVinoRunner,
        onnx_to_openvino,
        openvino_available,
        quantize_openvino,
    )

    if not openvino_available():
        from offroadseg.inference.openvino import PIP_OPENVINO

        raise EngineUnavailable(f"engine {engine} needs OpenVINO; fix: {PIP_OPENVINO}")
    if engine == "openvino_bf16" and not cpu_info()["native_bf16"]:
        raise EngineUnavailable(
            f"engine {engine} needs a CPU with native bf16 (AVX512-BF16 or AMX); this "
            f"{cpu_info()['model']} has none; fix: use openvino or openvino_int8"
        )
    _require_onnxruntime(engine)  # the graph comes from the ONNX export
    model = onnx_to_openvino(_onnx_file(loaded, workdir, size))
    if engine == "openvino_int8":
        model = quantize_openvino(model, calib)
    return OpenVinoRunner(model, precision="bf16" if engine == "openvino_bf16" else "fp32", threads=threads)

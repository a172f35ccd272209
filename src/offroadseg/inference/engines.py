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

:func:`try_engines` builds and times each candidate on a few frames, with its argmax agreement
against eager fp32; :func:`choose_engine` keeps the fastest engine whose argmax agrees with eager fp32 on
at least :data:`MIN_AGREEMENT` of the pixels, and eager itself unless another is clearly faster, so
``predict --engine auto`` never picks an engine slower than eager on the frames it timed.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from offroadseg.class_ids import class_ids
from offroadseg.data.datasets import normalize, resize_image
from offroadseg.errors import ConfigError, ModelError
from offroadseg.machine import cpu_info

__all__ = [
    "AUTO_CANDIDATES",
    "ENGINES",
    "MIN_AGREEMENT",
    "EngineTrial",
    "EngineUnavailable",
    "argmax_agreement",
    "build_forward",
    "choose_engine",
    "engine_predictor",
    "prepare_inputs",
    "select_engine",
    "split_frames",
    "spread",
    "trials_record",
    "try_engines",
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
# What ``auto`` tries: the engines that kept >= 99.5 % agreement where measured (docs/benchmarks.md,
# "Inference engines on real frames"); the int8 engines are tried only when named (--engine-candidates).
AUTO_CANDIDATES = ("eager", "bf16", "onnxruntime", "openvino", "openvino_bf16")
# The engines that take any input size (PyTorch); the exported ones take only the size they were built at.
ANY_SIZE = ("eager", "bf16")
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
        same += int((class_ids(x) == class_ids(y)).sum())
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


def spread(items: Sequence, n: int) -> list:
    """``n`` items evenly spaced over ``items``, first and last included (all of them when there are fewer)."""
    items = list(items)
    if n >= len(items):
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


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
    if engine == "bf16" and dev.type == "cpu" and not cpu_info()["native_bf16"]:
        raise EngineUnavailable(
            f"engine bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this {cpu_info()['model']} "
            f"has none (it would emulate bf16, slower than fp32); fix: use eager or onnxruntime"
        )
    if engine in ANY_SIZE:
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


def _workdir(workdir: str | Path | None):
    """``workdir`` as is, or a temporary folder removed on exit (the context manager of both)."""
    if workdir is None:
        return tempfile.TemporaryDirectory(prefix="offroadseg-engines-")
    return contextlib.nullcontext(workdir)


def _time_forward(forward: Forward, inputs: Sequence[Tensor], *, repeats: int) -> tuple[float, list[Tensor]]:
    """Median ms per input over ``repeats`` timed passes (after one untimed pass), and the logits."""
    outputs = [forward(x).float().cpu() for x in inputs]  # also the warm-up
    times = []
    for _ in range(max(1, repeats)):
        for x in inputs:
            start = time.perf_counter()
            forward(x)
            times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times), outputs


def try_engines(
    loaded,
    engines: Sequence[str],
    *,
    size: tuple[int, int],
    calibration: Sequence[Tensor],
    check: Sequence[Tensor],
    workdir: str | Path | None = None,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    repeats: int = 2,
    builder: Callable[..., Forward] = build_forward,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[EngineTrial], dict[str, Forward]]:
    """Build and time each engine on the ``check`` inputs, with its argmax agreement against ``eager``.

    ``eager`` is always tried first (the reference). An engine that cannot be built is a trial with
    no time and the reason in its note.

    Args:
        workdir: where the exported files go (default: a temporary folder, removed once the engines
            are built: they hold their models in memory).

    Returns:
        The trials, and the built forward functions by engine name.
    """
    names = ["eager"] + [e for e in dict.fromkeys(engines) if e != "eager"]
    unknown = [e for e in names if e not in ENGINES]
    if unknown:
        raise ConfigError(f"unknown engine {unknown[0]!r}; valid: {', '.join(ENGINES)}")
    trials: list[EngineTrial] = []
    forwards: dict[str, Forward] = {}
    reference: list[Tensor] | None = None
    # the built engines hold their models in memory: a temporary folder can go once they are built
    with _workdir(workdir) as work:
        for name in names:
            if progress:
                progress(name)
            start = time.perf_counter()
            try:
                forward = builder(
                    name,
                    loaded,
                    size=size,
                    workdir=work,
                    calibration=calibration,
                    device=device,
                    threads=threads,
                )
            except EngineUnavailable as exc:
                trials.append(EngineTrial(name, note=f"skipped: {exc}"))
                continue
            except Exception as exc:  # noqa: BLE001 - an engine that fails to build is reported, not fatal
                if name == "eager":
                    raise
                trials.append(EngineTrial(name, note=f"failed: {type(exc).__name__}: {str(exc)[:160]}"))
                continue
            setup = time.perf_counter() - start
            ms, outputs = _time_forward(forward, check, repeats=repeats)
            agreement = 1.0 if reference is None else argmax_agreement(outputs, reference)
            reference = outputs if reference is None else reference
            trials.append(EngineTrial(name, ms=ms, agreement=agreement, setup_s=setup))
            forwards[name] = forward
    return trials, forwards


def split_frames(frames: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], str]:
    """Calibration and check frames, disjoint when there are two or more (even / odd positions)."""
    frames = list(frames)
    if len(frames) < 2:
        return frames, frames, "one frame: calibrated and checked on the same frame"
    calib, check = frames[0::2], frames[1::2]
    return calib, check, f"int8 calibrated on {len(calib)} frames, timed and checked on {len(check)} others"


def trials_record(trials: Sequence[EngineTrial]) -> list[dict]:
    """The trials as JSON-ready dicts."""
    return [asdict(t) for t in trials]


def engine_predictor(
    loaded,
    forward: Forward,
    engine: str,
    *,
    tta=None,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    exclude: Sequence[int] = (),
):
    """A :class:`Predictor` running ``forward`` (built by :func:`build_forward` at the model's size).

    The exported engines take only the training size, so the predictor refuses multi-scale TTA for them.
    """
    from offroadseg.inference.predictor import Predictor, TTAConfig

    size = (int(loaded.config.data.image_size[0]), int(loaded.config.data.image_size[1]))
    torch_engine = engine in ANY_SIZE
    return Predictor(
        forward,
        taxonomy=loaded.taxonomy,
        image_size=size,
        patch_size=loaded.model.patch_size,
        tta=tta or TTAConfig.from_eval(loaded.config.eval),
        device=device if torch_engine else "cpu",
        batch_size=batch_size or loaded.config.eval.batch_size,
        fixed_size=None if torch_engine else size,
        runtime="pytorch" if torch_engine else engine,
        exclude=exclude,
        precision="bf16" if engine in ("bf16", "openvino_bf16") else ("int8" if "int8" in engine else "fp32"),
    )


@dataclass
class EngineChoice:
    """The engine a predictor runs, and how it was chosen (``trials`` empty when it was named)."""

    engine: str
    requested: str
    trials: list[EngineTrial]
    note: str = ""

    def record(self) -> dict:
        return {
            "engine": self.engine,
            "requested": self.requested,
            "note": self.note,
            "min_agreement": MIN_AGREEMENT,
            "trials": trials_record(self.trials),
        }


def select_engine(
    loaded,
    engine: str,
    frames: Sequence[np.ndarray],
    *,
    candidates: Sequence[str] = AUTO_CANDIDATES,
    tta=None,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    exclude: Sequence[int] = (),
    workdir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
):
    """A predictor running ``engine`` for ``loaded`` (``auto``: the one :func:`choose_engine` picks).

    Args:
        engine: ``auto`` or one of :data:`ENGINES`.
        frames: uint8 RGB images typical of the inputs: ``auto`` times the candidates on half of them
            and checks their agreement there, the int8 engines calibrate on the other half (a named
            engine other than int8 needs none).
        candidates: what ``auto`` tries (eager always).
        tta: the predictor's TTA; multi-scale TTA leaves only the PyTorch engines (the exported ones
            take one input size).
        workdir: where exported files go (default: a temporary folder, removed once the engines are
            built).

    Returns:
        ``(predictor, EngineChoice)``.

    Raises:
        ConfigError: an unknown engine, ``auto`` without frames, an int8 engine without frames.
        EngineUnavailable: a named engine this machine or installation cannot run.
    """
    from offroadseg.devices import pick_device
    from offroadseg.inference.predictor import TTAConfig

    tta = tta or TTAConfig.from_eval(loaded.config.eval)
    dev = pick_device(device)
    size = (int(loaded.config.data.image_size[0]), int(loaded.config.data.image_size[1]))
    valid = ("auto", *ENGINES)
    if engine not in valid:
        raise ConfigError(f"--engine {engine!r} is not one of {', '.join(valid)}")
    bad = [c for c in candidates if c not in ENGINES]
    if bad:
        raise ConfigError(f"--engine-candidates: unknown engine {bad[0]!r}; valid: {', '.join(ENGINES)}")
    inputs = prepare_inputs(frames, size)
    calibration, check, split_note = split_frames(inputs)
    settings = {"tta": tta, "device": dev, "batch_size": batch_size, "exclude": exclude}
    if engine != "auto":
        with _workdir(workdir) as work:
            forward = build_forward(
                engine, loaded, size=size, workdir=work, calibration=calibration, device=dev
            )
        return engine_predictor(loaded, forward, engine, **settings), EngineChoice(engine, engine, [])
    multi_scale = any(s != 1.0 for s, _ in tta.views)
    names = [c for c in candidates if c in ANY_SIZE or not multi_scale]
    note = split_note + ("; multi-scale TTA: only the PyTorch engines" if multi_scale else "")
    if dev.type != "cpu":
        names, note = ["eager"], f"on {dev.type}: eager (the other engines are CPU engines)"
    if not inputs:
        raise ConfigError("--engine auto needs at least one readable image to time the engines on")
    trials, forwards = try_engines(
        loaded,
        names,
        size=size,
        calibration=calibration,
        check=check,
        workdir=workdir,
        device=dev,
        progress=progress,
    )
    chosen = choose_engine(trials)
    predictor = engine_predictor(loaded, forwards[chosen.engine], chosen.engine, **settings)
    return predictor, EngineChoice(chosen.engine, "auto", trials, note)

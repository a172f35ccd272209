"""Inference speed of one model in several runtimes, with ratios against eager fp32 from the same run.

Modes (each skipped with a note where the machine cannot run it):

- ``eager_fp32``: ``model(x)`` under ``torch.no_grad`` -- the baseline;
- ``inference_mode``: ``torch.inference_mode`` (no autograd bookkeeping at all);
- ``channels_last``: inference mode with channels-last memory (helps the conv head);
- ``bf16_autocast``: bf16 autocast (fast on CPUs with AVX512-BF16/AMX and on GPUs);
- ``fp16_autocast``: fp16 autocast (CUDA only);
- ``compile``: ``torch.compile`` in inference mode (compile time reported apart);
- ``onnxruntime``: the model exported to ONNX (fixed size) and run by ONNX Runtime;
- ``onnxruntime_int8``: the same export quantised to int8 (``export --quantize int8``, dynamic
  mode: no calibration data needed), run by ONNX Runtime;
- ``onnxruntime_int8_static``: static QDQ int8 (per-channel weights, activations calibrated on
  frames of ``agreement_data``), run by ONNX Runtime;
- ``openvino_fp32`` / ``openvino_bf16`` / ``openvino_int8``: the ONNX graph run by OpenVINO in f32,
  bf16 (CPUs with native bf16 only) or int8 (NNCF post-training quantization on calibration frames);
  optional extra ``offroadseg[openvino]``.

Latency is per forward pass at ``batch_size`` (median and p90 over ``iters`` timed runs after
``warmup`` runs); throughput is ``batch_size`` / mean latency. Without ``agreement_data`` the input
is one random tensor and agreement is measured on it; with it, the timed input is the first real
frame, and each mode's argmax agreement with eager fp32 (and, where the frames have masks in the
model's taxonomy, the dataset-level mIoU and its change) is measured over up to ``agreement_frames``
frames. Calibration frames for the int8 modes come from the same folder, disjoint from the scored
ones (the ``train`` frames when a ``split.tsv`` names ``val`` ones).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from offroadseg.data.io import IMAGE_SUFFIXES, read_image, read_label
from offroadseg.errors import ConfigError, DataError
from offroadseg.machine import cpu_info, machine_report

__all__ = ["MODES", "ModeResult", "bench_inference", "load_bench_model", "machine_info"]

MODES = (
    "eager_fp32",
    "inference_mode",
    "channels_last",
    "bf16_autocast",
    "fp16_autocast",
    "compile",
    "onnxruntime",
    "onnxruntime_int8",
    "onnxruntime_int8_static",
    "openvino_fp32",
    "openvino_bf16",
    "openvino_int8",
)
BASELINE = "eager_fp32"
# Modes that are an engine of offroadseg.inference.engines (built the way predict --engine builds them).
ENGINE_OF_MODE = {
    "onnxruntime": "onnxruntime",
    "onnxruntime_int8": "onnxruntime_int8_dynamic",
    "onnxruntime_int8_static": "onnxruntime_int8",
    "openvino_fp32": "openvino",
    "openvino_bf16": "openvino_bf16",
    "openvino_int8": "openvino_int8",
}


@dataclass
class ModeResult:
    mode: str
    ok: bool
    median_ms: float | None = None
    p90_ms: float | None = None
    mean_ms: float | None = None
    images_per_s: float | None = None
    ratio: float | None = None  # eager fp32 median / this median (>1: faster)
    max_abs_diff: float | None = None  # largest |logit - eager fp32 logit|
    agreement: float | None = None  # share of pixels whose argmax class equals eager fp32's
    miou: float | None = None  # dataset-level over the agreement frames with masks
    miou_change: float | None = None  # this mode's mIoU - eager fp32's (fraction, not points)
    setup_s: float | None = None  # compile or export + session time
    note: str = ""


def machine_info(device: torch.device) -> dict:
    """The bench header (:func:`offroadseg.machine.machine_report`), the device timed, library versions."""
    info = {
        **machine_report(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info


def load_bench_model(path: str | Path, overrides: list[str] | None = None):
    """A :class:`LoadedModel` from a checkpoint, or an untrained one from a YAML config.

    Args:
        path: a ``.ckpt`` file or a ``.yaml`` config (its weights source may be overridden,
            e.g. ``model.backbone.weights=random``).
        overrides: dotted ``key=value`` overrides for a config.
    """
    from offroadseg.inference.checkpoint import LoadedModel, load_checkpoint

    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        if overrides:
            raise ConfigError(f"overrides {overrides} only apply to a YAML config, not to checkpoint {path}")
        return load_checkpoint(path)
    from offroadseg.config import load_config
    from offroadseg.data.datasets import taxonomy_for
    from offroadseg.models.factory import build_segmentor

    cfg = load_config(path, overrides)
    taxonomy = taxonomy_for(cfg.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_segmentor(cfg.model, taxonomy.num_classes).eval()
    return LoadedModel(model, cfg, taxonomy, path)


def _time(
    fn: Callable[[], torch.Tensor], *, iters: int, warmup: int, sync: Callable[[], None]
) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        times.append(1000.0 * (time.perf_counter() - start))
    return times


def _p90(times: list[float]) -> float:
    return float(np.percentile(np.asarray(times), 90))


@dataclass
class AgreementFrames:
    """Real frames to measure agreement on, and disjoint ones to calibrate int8 on."""

    images: list[Path]
    labels: list[Path | None]
    calibration: list[Path]
    note: str


def agreement_frames(root: str | Path, n: int, *, calibration: int | None = None) -> AgreementFrames:
    """Frames of a dataset root (``images/`` + ``labels/``, Duality ``Color_Images/`` + ``Segmentation/``)
    or of a plain image folder: up to ``n`` to score, evenly spaced, and ``calibration`` (default ``n``)
    others to calibrate on. A ``split.tsv`` beside ``images/`` puts the scored frames in ``val`` and the
    calibration frames in ``train``.

    Raises:
        ConfigError: ``root`` is not a folder, holds no images, or ``n`` < 1.
    """
    from offroadseg.inference.engines import spread

    root = Path(root)
    if n < 1:
        raise ConfigError(f"--agreement-frames {n}: must be >= 1; fix: e.g. --agreement-frames 20")
    if not root.is_dir():
        raise ConfigError(
            f"--agreement-data {root} is not a folder; fix: give a dataset root or an image folder"
        )
    image_dir, label_dir = root, None
    for images, labels in (("images", "labels"), ("Color_Images", "Segmentation")):
        if (root / images).is_dir():
            image_dir, label_dir = root / images, root / labels
            break
    files = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(
            f"--agreement-data {root}: no images in {image_dir}; fix: point it at a folder of frames"
        )
    scored_pool, calib_pool = files, files
    split = root / "split.tsv"
    if split.is_file():
        from offroadseg.data.datasets import read_split_table

        table = read_split_table(split)
        val = [p for p in files if table.get(p.stem, ("",))[0] == "val"]
        train = [p for p in files if table.get(p.stem, ("",))[0] == "train"]
        if val:
            scored_pool, calib_pool = val, train or files
    images = spread(scored_pool, n)
    chosen = set(images)
    rest = [p for p in calib_pool if p not in chosen]
    calib = spread(rest, calibration or n)
    note = f"{len(images)} frames of {image_dir}"
    if calib:
        note += f"; int8 calibrated on {len(calib)} other frames"
    else:
        calib = images
        note += "; int8 calibrated on the same frames (no others in the folder)"
    labels = []
    for p in images:
        label = label_dir / f"{p.stem}.png" if label_dir is not None else None
        labels.append(label if label is not None and label.is_file() else None)
    return AgreementFrames(images, labels, calib, note)


def _truth(frames: AgreementFrames, taxonomy) -> tuple[list[torch.Tensor | None], str]:
    """The frames' masks as train ids (None where a frame has none), or none with the reason."""
    out: list[torch.Tensor | None] = []
    for label in frames.labels:
        if label is None:
            out.append(None)
            continue
        try:
            ids = taxonomy.encode(read_label(label, taxonomy), source=str(label))
        except DataError as exc:
            return [None] * len(frames.labels), f"masks not scored: {str(exc)[:160]}"
        out.append(torch.from_numpy(ids.astype(np.int64)))
    return out, ""


def _miou(logits: list[torch.Tensor], truth: list[torch.Tensor | None], taxonomy) -> float | None:
    """Dataset-level mIoU of the logits' argmax, upsampled to each mask's size."""
    from offroadseg.metrics import confusion_matrix, full_resolution_predictions, scores_from_confusion

    k = taxonomy.num_classes
    cm = torch.zeros(k, k, dtype=torch.int64)
    scored = 0
    for out, ids in zip(logits, truth, strict=True):
        if ids is None:
            continue
        (pred,), (target,) = full_resolution_predictions(out.float(), {"full_mask": [ids]})
        cm += confusion_matrix(pred, target, k, ignore_index=taxonomy.ignore_index)
        scored += 1
    return float(scores_from_confusion(cm).miou) if scored else None


def bench_inference(
    loaded,
    *,
    height: int | None = None,
    width: int | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 1,
    iters: int = 10,
    warmup: int = 2,
    modes: tuple[str, ...] | list[str] | None = None,
    threads: int | None = None,
    agreement_data: str | Path | None = None,
    agreement_frames_n: int = 20,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Time the modes on one input of ``[batch_size, 3, height, width]`` and compare their outputs.

    Args:
        loaded: a :class:`LoadedModel` (see :func:`load_bench_model`).
        height, width: input size (default: the config's ``data.image_size``).
        device: ``auto`` | ``cpu`` | ``cuda``.
        modes: subset of :data:`MODES` (``eager_fp32`` is always run first, as the baseline).
        threads: torch and ONNX Runtime intra-op threads (default: torch's setting).
        agreement_data: a dataset root or image folder (see :func:`agreement_frames`): time on its
            first frame and measure agreement (and mIoU with masks) on up to ``agreement_frames_n``;
            default: one random tensor.
        progress: called with each mode's name before it runs.

    Returns:
        JSON-ready dict: ``machine``, ``model``, ``input``, ``settings``, ``agreement_data``,
        ``results`` (one :class:`ModeResult` dict per mode) and ``best``.
    """
    from offroadseg.devices import pick_device
    from offroadseg.inference.engines import argmax_agreement, prepare_inputs

    wanted = list(modes or MODES)
    unknown = [m for m in wanted if m not in MODES]
    if unknown:
        raise ConfigError(f"unknown bench modes {unknown}; valid: {', '.join(MODES)}")
    wanted = [BASELINE] + [m for m in wanted if m != BASELINE]
    dev = pick_device(device)
    if threads:
        torch.set_num_threads(int(threads))
    cfg = loaded.config
    h = int(height or cfg.data.image_size[0])
    w = int(width or cfg.data.image_size[1])
    model = loaded.model.to(dev).eval()
    frames, truth, data_info = None, None, None
    calibration: list[torch.Tensor] = []
    if agreement_data is not None:
        frames = agreement_frames(agreement_data, agreement_frames_n)
        inputs = prepare_inputs([read_image(p) for p in frames.images], (h, w))
        calibration = prepare_inputs([read_image(p) for p in frames.calibration], (h, w))
        truth, truth_note = _truth(frames, loaded.taxonomy)
        scored = sum(t is not None for t in truth)
        data_info = {
            "root": str(agreement_data),
            "frames": [p.name for p in frames.images],
            "calibration_frames": [p.name for p in frames.calibration],
            "frames_with_masks": scored,
            "note": frames.note + (f"; {truth_note}" if truth_note else ""),
        }
        x = inputs[0].repeat(batch_size, 1, 1, 1).to(dev)
    else:
        x = torch.randn(batch_size, 3, h, w, generator=torch.Generator().manual_seed(0)).to(dev)
        inputs = [x]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    results: list[ModeResult] = []
    reference: list[torch.Tensor] | None = None

    def record(
        mode: str, fn: Callable[[torch.Tensor], torch.Tensor], setup_s: float | None, note: str
    ) -> None:
        nonlocal reference
        outs = [fn(xi.to(dev)).float().detach().cpu() for xi in inputs]
        sync()
        times = _time(lambda: fn(x), iters=iters, warmup=max(0, warmup - 1), sync=sync)
        result = ModeResult(mode, True, setup_s=setup_s, note=note)
        if reference is None:
            reference = outs
        else:
            result.max_abs_diff = max(
                float((o - r).abs().max()) for o, r in zip(outs, reference, strict=True)
            )
            result.agreement = argmax_agreement(outs, reference)
        if truth is not None:
            result.miou = _miou(outs, truth, loaded.taxonomy)
        med = statistics.median(times)
        result.median_ms, result.p90_ms, result.mean_ms = med, _p90(times), statistics.fmean(times)
        result.images_per_s = 1000.0 * batch_size / statistics.fmean(times)
        results.append(result)

    with tempfile.TemporaryDirectory(prefix="offroadseg-bench-") as work:
        for mode in wanted:
            if progress:
                progress(mode)
            try:
                start = time.perf_counter()
                fn, note = _mode_forward(
                    mode,
                    model,
                    x,
                    dev,
                    loaded=loaded,
                    threads=threads,
                    workdir=Path(work),
                    calibration=calibration,
                )
                record(mode, fn, None if mode in _NO_SETUP else time.perf_counter() - start, note)
            except _Skip as skip:
                results.append(ModeResult(mode, False, note=str(skip)))
            except Exception as exc:  # noqa: BLE001 - a failing optional mode is reported, not fatal
                if mode == BASELINE:
                    raise
                results.append(
                    ModeResult(mode, False, note=f"failed: {type(exc).__name__}: {str(exc)[:160]}")
                )
    base = results[0]
    for r in results:
        if r.ok and base.median_ms and r.median_ms:
            r.ratio = base.median_ms / r.median_ms
        if r.ok and r.miou is not None and base.miou is not None:
            r.miou_change = r.miou - base.miou
    ok = [r for r in results if r.ok]
    best = max(ok, key=lambda r: r.ratio or 0.0)
    return {
        "machine": machine_info(dev),
        "model": {
            "source": str(loaded.path),
            "backbone": cfg.model.backbone.name,
            "head": cfg.model.head.name,
            "classes": loaded.taxonomy.num_classes,
        },
        "input": {"batch_size": batch_size, "height": h, "width": w},
        "settings": {"iters": iters, "warmup": warmup, "threads": torch.get_num_threads()},
        "agreement_data": data_info,
        "results": [asdict(r) for r in results],
        "best": {"mode": best.mode, "ratio": best.ratio},
    }


class _Skip(Exception):
    """A mode this machine cannot run (reported as skipped)."""


_NO_SETUP = ("eager_fp32", "inference_mode", "channels_last", "bf16_autocast", "fp16_autocast")


def _mode_forward(
    mode: str, model, x, dev, *, loaded, threads, workdir: Path, calibration: list[torch.Tensor]
) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """The forward function of a mode (input -> logits) and a note for the table."""
    cuda = dev.type == "cuda"
    if mode == "eager_fp32":

        def eager(xi):
            with torch.no_grad():
                return model(xi)

        return eager, ""
    if mode == "inference_mode":

        def inference(xi):
            with torch.inference_mode():
                return model(xi)

        return inference, ""
    if mode == "channels_last":
        m = copy.deepcopy(model).to(memory_format=torch.channels_last)

        def channels_last(xi):
            with torch.inference_mode():
                return m(xi.contiguous(memory_format=torch.channels_last))

        return channels_last, ""
    if mode in ("bf16_autocast", "fp16_autocast"):
        dtype = torch.bfloat16 if mode == "bf16_autocast" else torch.float16
        if dtype == torch.float16 and not cuda:
            raise _Skip("fp16 autocast needs CUDA")
        if dtype == torch.bfloat16 and cuda and not torch.cuda.is_bf16_supported():
            raise _Skip("this GPU has no bf16")

        def autocast(xi):
            with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype):
                return model(xi)

        note = (
            "" if cuda or cpu_info()["native_bf16"] else "CPU has no native bf16 (AVX512-BF16/AMX): emulated"
        )
        return autocast, note
    if mode == "compile":
        compiled = torch.compile(model, dynamic=False)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled(x)

        def run_compiled(xi):
            with torch.inference_mode():
                return compiled(xi)

        return run_compiled, ""
    from offroadseg.inference.engines import EngineUnavailable, build_forward

    engine = ENGINE_OF_MODE[mode]
    if engine in ("onnxruntime_int8", "openvino_int8") and not calibration:
        raise _Skip("needs calibration frames: pass --agreement-data DIR")
    if engine.startswith("openvino") and cuda:
        raise _Skip("OpenVINO runs on the CPU here; use --device cpu")
    try:
        forward = build_forward(
            engine,
            loaded,
            size=(x.shape[2], x.shape[3]),
            workdir=workdir,
            calibration=calibration,
            device=dev,
            threads=threads,
        )
    except EngineUnavailable as exc:
        raise _Skip(str(exc)) from None
    providers = getattr(forward, "providers", None)
    note = providers[0].replace("ExecutionProvider", "") if providers else ""
    if engine in ("onnxruntime_int8", "openvino_int8"):
        note = (note + ", " if note else "") + f"calibrated on {len(calibration)} frames"
    return (lambda xi: forward(xi.cpu())), note

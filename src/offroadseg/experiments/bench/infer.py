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
  mode: no calibration data needed), run by ONNX Runtime.

Latency is per forward pass at ``batch_size`` (median and p90 over ``iters`` timed runs after
``warmup`` runs); throughput is ``batch_size`` / mean latency.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from offroadseg.errors import ConfigError
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
)
BASELINE = "eager_fp32"


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
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Time the modes on one random input of ``[batch_size, 3, height, width]``.

    Args:
        loaded: a :class:`LoadedModel` (see :func:`load_bench_model`).
        height, width: input size (default: the config's ``data.image_size``).
        device: ``auto`` | ``cpu`` | ``cuda``.
        modes: subset of :data:`MODES` (``eager_fp32`` is always run first, as the baseline).
        threads: torch and ONNX Runtime intra-op threads (default: torch's setting).
        progress: called with each mode's name before it runs.

    Returns:
        JSON-ready dict: ``machine``, ``model``, ``input``, ``settings``, ``results`` (one
        :class:`ModeResult` dict per mode) and ``best``.
    """
    from offroadseg.devices import pick_device

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
    x = torch.randn(batch_size, 3, h, w, generator=torch.Generator().manual_seed(0)).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    results: list[ModeResult] = []
    reference: torch.Tensor | None = None

    def record(
        mode: str, fn: Callable[[], torch.Tensor], *, setup_s: float | None = None, note: str = ""
    ) -> None:
        nonlocal reference
        out = fn().float()
        sync()
        times = _time(fn, iters=iters, warmup=max(0, warmup - 1), sync=sync)
        diff = agree = None
        if reference is None:
            reference = out.detach().cpu()
        else:
            diff = float((out.detach().cpu() - reference).abs().max())
            agree = float((out.detach().cpu().argmax(1) == reference.argmax(1)).float().mean())
        med = statistics.median(times)
        results.append(
            ModeResult(
                mode,
                True,
                median_ms=med,
                p90_ms=_p90(times),
                mean_ms=statistics.fmean(times),
                images_per_s=1000.0 * batch_size / statistics.fmean(times),
                max_abs_diff=diff,
                agreement=agree,
                setup_s=setup_s,
                note=note,
            )
        )

    for mode in wanted:
        if progress:
            progress(mode)
        try:
            _run_mode(mode, model, x, dev, record, loaded=loaded, threads=threads)
        except _Skip as skip:
            results.append(ModeResult(mode, False, note=str(skip)))
        except Exception as exc:  # noqa: BLE001 - a failing optional mode is reported, not fatal
            if mode == BASELINE:
                raise
            results.append(ModeResult(mode, False, note=f"failed: {type(exc).__name__}: {str(exc)[:160]}"))
    base = results[0].median_ms
    for r in results:
        if r.ok and base and r.median_ms:
            r.ratio = base / r.median_ms
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
        "results": [asdict(r) for r in results],
        "best": {"mode": best.mode, "ratio": best.ratio},
    }


class _Skip(Exception):
    """A mode this machine cannot run (reported as skipped)."""


def _run_mode(mode: str, model, x, dev, record, *, loaded, threads) -> None:
    cuda = dev.type == "cuda"
    if mode == "eager_fp32":

        def fn():
            with torch.no_grad():
                return model(x)

        record(mode, fn)
    elif mode == "inference_mode":

        def fn():
            with torch.inference_mode():
                return model(x)

        record(mode, fn)
    elif mode == "channels_last":
        m = model.to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)

        def fn():
            with torch.inference_mode():
                return m(xc)

        try:
            record(mode, fn)
        finally:
            model.to(memory_format=torch.contiguous_format)
    elif mode in ("bf16_autocast", "fp16_autocast"):
        dtype = torch.bfloat16 if mode == "bf16_autocast" else torch.float16
        if dtype == torch.float16 and not cuda:
            raise _Skip("fp16 autocast needs CUDA")
        if dtype == torch.bfloat16 and cuda and not torch.cuda.is_bf16_supported():
            raise _Skip("this GPU has no bf16")

        def fn():
            with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype):
                return model(x)

        note = (
            "" if cuda or cpu_info()["native_bf16"] else "CPU has no native bf16 (AVX512-BF16/AMX): emulated"
        )
        record(mode, fn, note=note)
    elif mode == "compile":
        start = time.perf_counter()
        compiled = torch.compile(model, dynamic=False)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled(x)
        setup = time.perf_counter() - start

        def fn():
            with torch.inference_mode():
                return compiled(x)

        record(mode, fn, setup_s=setup)
    elif mode in ("onnxruntime", "onnxruntime_int8"):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise _Skip('onnxruntime not installed (pip install "offroadseg[onnx]")') from None
        from offroadseg.inference.onnx import OnnxRunner, export_onnx
        from offroadseg.inference.quantize import quantize_onnx

        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            path = Path(tmp) / "model.onnx"
            export_onnx(loaded, path, height=x.shape[2], width=x.shape[3])
            if mode == "onnxruntime_int8":
                path = Path(tmp) / "model.int8.onnx"
                quantize_onnx(Path(tmp) / "model.onnx", path, mode="dynamic")
            runner = OnnxRunner(path, device="cuda" if cuda else "cpu", threads=threads)
            setup = time.perf_counter() - start
            xn = x.detach().cpu().numpy()
            note = ",".join(p.replace("ExecutionProvider", "") for p in runner.providers[:1])
            record(mode, lambda: torch.from_numpy(runner.run(xn)), setup_s=setup, note=note)
            del runner

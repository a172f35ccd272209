"""``bench cache``: the frozen-feature store built at fp32 and at the precision ``auto`` picks, in one run.

Both builds use the same frames (the first N of train + val in the store's canonical order), the same
module (same weights) and fresh cache folders under a temporary directory; the decoded frames are
prepared before the clock starts, so each timing is the store build itself: the backbone pass, the
fp16 conversion and the writes. Reported:

- ``ratio``: fp32 build seconds / auto build seconds (> 1: auto is faster);
- ``cosine_mean``: the per-token cosine similarity of the stored hidden states, auto vs fp32, averaged
  over every stored token of every frame and hidden state (``cosine_min`` beside it);
- ``precision``: what auto chose (``training.hardware.backbone_precision``);
- ``gflops_per_s``: the backbone pass's floating-point operations (counted by
  ``torch.utils.flop_counter`` on one frame, attention included) over the auto build's seconds;
- ``percent_of_peak``: that against the measured GEMM peak of the chosen precision
  (:func:`offroadseg.machine.gemm_peaks`, same threads); None on a GPU (no peak measured there).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from offroadseg.config import Config
from offroadseg.data.datasets import list_samples, taxonomy_for
from offroadseg.devices import accelerator_device
from offroadseg.errors import ConfigError
from offroadseg.machine import gemm_peaks
from offroadseg.training.caches import open_frame_store, stored_blocks
from offroadseg.training.features import canonical_samples
from offroadseg.training.module import SegmentationModule

__all__ = ["bench_cache", "pass_gflop", "token_cosine"]


def token_cosine(a: np.ndarray, b: np.ndarray, *, chunk: int = 4096) -> tuple[float, float]:
    """Mean and minimum cosine similarity of matching tokens (the last axis) of two arrays.

    Args:
        a, b: ``[..., C]`` of the same shape (e.g. fp16 ``[rows, tokens, C]`` from two stores).

    Returns:
        ``(mean, min)`` over every token; a pair of zero vectors counts as 1 (identical), one zero
        vector against a non-zero one as 0.
    """
    if a.shape != b.shape:
        raise ValueError(f"token_cosine: shapes differ, {a.shape} vs {b.shape}")
    x = a.reshape(-1, a.shape[-1])
    y = b.reshape(-1, b.shape[-1])
    total, lowest, count = 0.0, 1.0, 0
    for start in range(0, len(x), chunk):
        u = np.asarray(x[start : start + chunk], dtype=np.float64)
        v = np.asarray(y[start : start + chunk], dtype=np.float64)
        nu, nv = np.linalg.norm(u, axis=1), np.linalg.norm(v, axis=1)
        both_zero = (nu == 0) & (nv == 0)
        cos = np.where(both_zero, 1.0, (u * v).sum(axis=1) / np.maximum(nu * nv, 1e-300))
        total += float(cos.sum())
        lowest = min(lowest, float(cos.min()))
        count += len(cos)
    return (total / count if count else float("nan")), lowest


def pass_gflop(model, image_size: tuple[int, int], blocks: list[int]) -> float:
    """GFLOP of one frame's backbone pass up to ``max(blocks)`` (matmuls, convolutions and attention)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    x = torch.zeros(1, 3, *model.padded_size(*image_size))
    counter = FlopCounterMode(display=False)
    # the math attention decomposes into counted matmuls (the fused CPU kernel is not counted)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
        model.forward_hidden(x, blocks)
    return counter.get_total_flops() / 1e9


def _frames(cfg: Config, n: int | None) -> list:
    samples = list_samples(cfg.data, cfg.data.train_split) + list_samples(cfg.data, cfg.data.val_split)
    frames = canonical_samples(samples)
    if n is not None:
        if n < 1:
            raise ConfigError(f"--frames must be >= 1, got {n}")
        frames = frames[:n]
    return frames


def bench_cache(
    cfg: Config,
    *,
    frames: int | None = 64,
    work_dir: str | Path | None = None,
    peaks: dict | None = None,
    on_build=None,
) -> dict:
    """Build the store of the first ``frames`` frames at fp32 and at ``train.precision: auto``; compare.

    Args:
        cfg: the resolved config (its data, model and cache settings; its precision is overridden).
        frames: how many frames (None: all of train + val).
        work_dir: where the two temporary cache folders go (default: the system's temporary folder);
            they are removed afterwards.
        peaks: measured GEMM peaks (:func:`offroadseg.machine.gemm_peaks`; measured here when None).
        on_build: called with ``(label, seconds)`` after each build.

    Returns:
        ``ratio``, ``cosine_mean``, ``cosine_min``, ``precision``, ``gflops_per_s``, ``percent_of_peak``,
        the two build times, frames, views, the GFLOP per frame and the peak used.
    """
    samples = _frames(cfg, frames)
    taxonomy = taxonomy_for(cfg.data)
    module = SegmentationModule(cfg.to_dict(), taxonomy.names, ignore_index=taxonomy.ignore_index)
    module.eval()
    blocks = stored_blocks(cfg, module)
    device = accelerator_device(cfg.train.accelerator)
    size = (int(cfg.data.image_size[0]), int(cfg.data.image_size[1]))
    builds: dict[str, dict] = {}
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)  # a new folder is made, as the other benches do
    with tempfile.TemporaryDirectory(prefix="bench_cache_", dir=work_dir) as tmp:
        for label, precision in (("fp32", "32"), ("auto", "auto")):
            run = copy.deepcopy(cfg)
            run.train.precision = precision
            run.data.cache.dir = str(Path(tmp) / label)
            run.data.cache.decoded = True  # frames decoded before the timed build
            store = open_frame_store(run, module, samples, taxonomy=taxonomy)
            if not store.store.built:
                raise RuntimeError(f"bench cache: the {label} store in a fresh folder was reused")
            builds[label] = {
                "seconds": float(store.store.build_s),
                "precision": str(store.store.meta.get("precision", "fp32")),
                "arrays": {n: a for n, a in store.store.arrays.items() if n.startswith("hidden")},
                "views": store.views,
            }
            if on_build is not None:
                on_build(label, builds[label]["seconds"])
        means, mins = [], []
        for name, a in builds["fp32"]["arrays"].items():
            mean, low = token_cosine(a, builds["auto"]["arrays"][name])
            means.append((mean, a.shape[0] * a.shape[1]))
            mins.append(low)
        for b in builds.values():
            b.pop("arrays")  # the memory maps close before the folder goes
    tokens = sum(w for _, w in means)
    fp32_s, auto_s = builds["fp32"]["seconds"], builds["auto"]["seconds"]
    chosen = builds["auto"]["precision"]
    views = builds["auto"]["views"]
    gflop = pass_gflop(module.model, size, blocks)
    rate = gflop * len(samples) * views / auto_s
    peak = None
    if device.type == "cpu":
        peaks = peaks or gemm_peaks()
        peak = peaks["bf16_gflops"] if chosen == "bf16" else peaks["fp32_gflops"]
    return {
        "ratio": fp32_s / auto_s,
        "cosine_mean": sum(m * w for m, w in means) / tokens,
        "cosine_min": min(mins),
        "precision": chosen,
        "gflops_per_s": rate,
        "percent_of_peak": None if peak is None else 100.0 * rate / peak,
        "fp32_s": fp32_s,
        "auto_s": auto_s,
        "frames": len(samples),
        "views": views,
        "blocks": blocks,
        "image_size": list(size),
        "gflop_per_frame": gflop,
        "peak_gflops": peak,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }

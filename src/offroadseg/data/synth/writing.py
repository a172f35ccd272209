"""Synthetic scenes: one scene from a seed, and a whole dataset in the Duality layout (atomic, with a README)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from offroadseg.atomic import atomic_save, atomic_write_text
from offroadseg.data.io import write_png
from offroadseg.data.synth.biomes import (
    _RAW_LUT,
    _SPLIT_ID,
    _TAX,
    BIOMES,
    SPLITS,
    _biome,
)
from offroadseg.data.synth.drawing import (
    _render,
)
from offroadseg.errors import ConfigError, DataError


def _size(size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ConfigError(
            f"size {size!r} is not (height, width); fix: give two integers, e.g. (540, 960)"
        ) from None
    if h < 32 or w < 32:
        raise ConfigError(f"size {size!r} is too small; fix: use at least 32 x 32 pixels")
    return h, w


def generate_scene(
    rng: np.random.Generator, *, size: tuple[int, int] = (540, 960), biome: str = "desert"
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene.

    Args:
        rng: the generator that draws everything (same state -> same scene).
        size: (height, width) in pixels.
        biome: a key of :data:`BIOMES`.

    Returns:
        RGB uint8 [H, W, 3] and the raw mask uint16 [H, W] holding Duality raw values.
    """
    spec = _biome(biome)
    h, w = _size(size)
    rgb, ids = _render(rng, h, w, spec)
    return rgb, cv2.LUT(ids, _RAW_LUT)


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synthetic_dataset` wrote."""

    out: Path
    seed: int
    size: tuple[int, int]
    biomes: dict[str, str]  # split -> biome
    counts: dict[str, int]  # split -> images
    class_share: dict[str, float]  # class name -> share of all pixels written
    seconds: float
    images_per_s: float

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _default_test_biome(biome: str) -> str:
    return next(b for b in ("scrubland", "desert", "canyon", *BIOMES) if b != biome)


def write_synthetic_dataset(
    out: str | Path,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    size: tuple[int, int] = (540, 960),
    biome: str = "desert",
    test_biome: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SynthSummary:
    """Write a synthetic set as ``<out>/{train,val,test}/{Color_Images,Segmentation}/<name>.png``.

    Images are RGB PNGs, masks 16-bit PNGs of Duality raw values under the same name.
    Train and val use ``biome``; test uses ``test_biome`` (by default a different biome,
    as the challenge tests on an unseen desert). ``<out>/README.txt`` records the seed,
    biomes and counts. Image ``i`` of a split is drawn from ``default_rng([seed,
    split_id, i])``, so the set is reproducible and the splits are independent.

    Args:
        out: the dataset root; must be absent or empty unless ``overwrite``.
        overwrite: replace the split folders (train/val/test) in a non-empty ``out``;
            nothing else there is touched.
        progress: called as ``progress(done, total)`` after each image.
    """
    out = Path(out)
    counts = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    for split, n in counts.items():
        if n < 0:
            raise ConfigError(f"n_{split} is {n}; fix: give a count of 0 or more")
    if sum(counts.values()) == 0:
        raise ConfigError(
            "nothing to write: n_train, n_val and n_test are all 0; fix: ask for at least one image"
        )
    h, w = _size(size)
    test_biome = _default_test_biome(biome) if test_biome is None else test_biome
    biomes = {"train": biome, "val": biome, "test": test_biome}
    specs = {split: _biome(b) for split, b in biomes.items()}
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder; fix: choose another path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(
                f"output folder {out} is not empty; fix: choose an empty or new folder, or pass --overwrite "
                f"(overwrite=True) to replace its train/val/test folders"
            )
        for split in SPLITS:
            if (out / split).is_dir():
                shutil.rmtree(out / split)
            elif (out / split).exists():
                (out / split).unlink()

    total = sum(counts.values())
    pixels = np.zeros(11, np.int64)
    done = 0
    t0 = time.perf_counter()
    for split in SPLITS:
        img_dir, seg_dir = out / split / "Color_Images", out / split / "Segmentation"
        img_dir.mkdir(parents=True, exist_ok=True)
        seg_dir.mkdir(parents=True, exist_ok=True)
        for i in range(counts[split]):
            rng = np.random.default_rng([int(seed), _SPLIT_ID[split], i])
            rgb, ids = _render(rng, h, w, specs[split])
            pixels += np.bincount(ids.ravel(), minlength=11)
            name = f"synth_{split}_{i:06d}.png"
            _write_rgb_png(img_dir / name, rgb)
            write_png(seg_dir / name, cv2.LUT(ids, _RAW_LUT))
            done += 1
            if progress is not None:
                progress(done, total)
    seconds = time.perf_counter() - t0
    share = {c.name: float(p) / max(int(pixels.sum()), 1) for c, p in zip(_TAX.classes, pixels, strict=True)}
    summary = SynthSummary(
        out=out,
        seed=int(seed),
        size=(h, w),
        biomes=biomes,
        counts=counts,
        class_share=share,
        seconds=seconds,
        images_per_s=total / seconds if seconds > 0 else float("inf"),
    )
    atomic_write_text(out / "README.txt", _readme(summary))
    return summary


def _write_rgb_png(path: Path, rgb: np.ndarray) -> None:
    """An RGB PNG at zlib level 1: grainy images barely compress better at the default
    level 6, which takes about four times as long."""
    img = Image.fromarray(np.ascontiguousarray(rgb))
    atomic_save(path, lambda tmp: img.save(tmp, format="PNG", compress_level=1))


def _readme(s: SynthSummary) -> str:
    lines = [
        "Synthetic desert scenes generated by offroadseg (offroadseg.data.synth).",
        "Layout as the Duality dataset: <split>/Color_Images/<name>.png (RGB) and",
        "<split>/Segmentation/<name>.png (16-bit raw values: 0 Background, 100 Trees, 200 Lush Bushes,",
        "300 Dry Grass, 500 Dry Bushes, 550 Ground Clutter, 600 Flowers, 700 Logs, 800 Rocks,",
        "7100 Landscape, 10000 Sky).",
        "",
        f"seed: {s.seed}",
        f"size: {s.size[0]}x{s.size[1]} (height x width)",
    ]
    for split in SPLITS:
        lines.append(
            f"{split}: {s.counts[split]} images, biome {s.biomes[split]} ({BIOMES[s.biomes[split]].description})"
        )
    lines += ["", "class share of pixels:"]
    lines += [f"  {name}: {share * 100:.2f}%" for name, share in s.class_share.items()]
    lines.append(f"\nwritten in {s.seconds:.1f} s ({s.images_per_s:.1f} images/s)")
    return "\n".join(lines) + "\n"

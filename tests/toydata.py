"""A tiny generated dataset in the Duality layout, for tests and smoke runs.

Each image is a few flat colour regions (one per class) with noise, so a head on even a
random backbone can learn something in a few steps. Masks are uint16 raw values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from offroadseg.atomic import atomic_save
from offroadseg.data.io import write_png
from offroadseg.taxonomy import Taxonomy, load_taxonomy


def make_toy_dataset(
    root: str | Path,
    *,
    n_train: int = 6,
    n_val: int = 3,
    n_test: int = 0,
    size: tuple[int, int] = (56, 84),
    taxonomy: Taxonomy | None = None,
    classes: tuple[int, ...] = (0, 3, 9, 10),
    seed: int = 0,
) -> Path:
    """Write ``root/{train,val[,test]}/{Color_Images,Segmentation}`` and return ``root``.

    Args:
        classes: the train ids drawn (their raw values are written); the layout is bands
            of these classes with a random boundary, coloured by the taxonomy's colours.
    """
    tax = taxonomy or load_taxonomy("duality")
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for i in range(n):
            ids = np.zeros((h, w), dtype=np.uint8)
            cuts = np.sort(rng.integers(h // 8, h - h // 8, size=len(classes) - 1))
            rows = np.arange(h)[:, None] + rng.integers(-3, 4, size=(1, w))
            band = np.searchsorted(cuts, rows)
            ids[:] = np.array(classes, dtype=np.uint8)[band]
            rgb = tax.colors[ids].astype(np.int16) + rng.integers(-20, 21, size=(h, w, 3))
            rgb = np.clip(rgb, 0, 255).astype(np.uint8)
            name = f"{split}_{i:04d}"
            write_png(root / split / "Color_Images" / f"{name}.png", rgb)
            write_png(root / split / "Segmentation" / f"{name}.png", tax.decode(ids).astype(np.uint16))
    return root


def toy_config(root: str | Path, run_dir: str | Path, *, overrides: list[str] | None = None):
    """A config that trains the tiny random ViT on a toy set in seconds (tests, smoke runs)."""
    from offroadseg.config import config_from_dict

    h, w = 56, 84
    data = {
        "data": {"root": str(root), "image_size": [h, w], "num_workers": 0},
        "model": {"backbone": {"name": "dinov2_test", "weights": "random"}, "head": {"name": "conv"}},
        # cpu, explicitly: "auto" would pick a GPU where there is one and change what tests check
        "train": {"epochs": 2, "batch_size": 2, "lr": 1e-3, "optimizer": "adamw", "accelerator": "cpu"},
        "run": {"dir": str(run_dir), "progress": False},
    }
    return config_from_dict(data, overrides)


def write_image(path: str | Path, rgb: np.ndarray, *, quality: int = 92) -> None:
    """Write a uint8 RGB image (PNG or JPEG by suffix), atomically."""
    img = Image.fromarray(np.ascontiguousarray(rgb))
    fmt = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"
    kwargs = {"quality": quality} if fmt == "JPEG" else {}
    atomic_save(path, lambda tmp: img.save(tmp, format=fmt, **kwargs))

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


# A YCOR-like set (palette-index labels, split.tsv, classes.tsv) and the overrides that shrink a ycor config
# to the 2-block test arch.
CLASSES = [
    ("background/void", (255, 255, 255)),
    ("smooth_trail", (178, 176, 153)),
    ("traversable_grass", (128, 255, 0)),
    ("rough_trail", (156, 76, 30)),
    ("puddle", (255, 0, 128)),
    ("obstacle", (255, 0, 0)),
    ("non_traversable_low_vegetation", (0, 160, 0)),
    ("high_vegetation", (40, 80, 0)),
    ("sky", (1, 88, 255)),
]
TINY = [
    "model.backbone.name=dinov2_test",
    "model.backbone.weights=random",
    "model.backbone.layers=2",  # the test arch has 2 blocks (the ycor configs read up to block 11)
    "data.cache.blocks=auto",  # the configs name ViT-S hidden states shared by the CV rows
    "data.num_workers=0",
    "data.image_size=[28, 42]",
    "run.progress=false",
    "train.batch_size=2",
]
# configs/ycor.yaml on the test arch: its UPerNet head needs 4 backbone blocks and the test arch has 2,
# so the runs that start from it use the linear head (the head is not what those tests check).
YCOR_TINY = [*TINY, "model.head.name=linear"]


def make_ycor_like(
    root: Path,
    n_train: int = 4,
    n_val: int = 2,
    size: tuple[int, int] = (34, 64),
    frame_ids: list[int] | None = None,
) -> Path:
    """A YCOR-like set: images/*.jpg, palette-index labels/*.png, split.tsv, classes.tsv.

    ``frame_ids``: the frames' trailing ids (default ``0 .. n_train + n_val - 1``, one gap group).
    """
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    h, w = size
    palette = [c for _, rgb in CLASSES for c in rgb]
    lines = []
    for i in range(n_train + n_val):
        name = f"iid{(frame_ids[i] if frame_ids else i):06d}"
        ids = np.full((h, w), 8, dtype=np.uint8)  # sky on top
        ids[h // 3 :] = rng.integers(1, 8)  # one ground class below
        ids[h // 3 :, : w // 4] = 7  # trees on the left
        ids[-4:, -6:] = 4 + i % 2  # a puddle or an obstacle
        ids[0, 0] = 0  # a void pixel
        colors = np.array([rgb for _, rgb in CLASSES], dtype=np.uint8)
        image = colors[ids].astype(np.int16) + rng.integers(-20, 20, (h, w, 3))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / f"{name}.jpg", quality=90)
        label = Image.fromarray(ids, mode="P")
        label.putpalette(palette)
        label.save(root / "labels" / f"{name}.png")
        lines.append(f"{name}\t{'train' if i < n_train else 'val'}")
    (root / "split.tsv").write_text("\n".join(lines) + "\n")
    rows = ["id\tname\tR\tG\tB"] + [f"{i}\t{n}\t{r}\t{g}\t{b}" for i, (n, (r, g, b)) in enumerate(CLASSES)]
    (root / "classes.tsv").write_text("\n".join(rows) + "\n")
    return root

"""Folder datasets: the Duality layout and a generic image/label layout.

Images are resized with area/linear interpolation, masks only ever with nearest, so no
class id is invented at an edge. A sample is read as (uint8 RGB, uint8 train ids) by
:func:`load_pair`; the decoded-data cache stores exactly that pair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from offroadseg.config import DataConfig
from offroadseg.data.io import IMAGE_SUFFIXES, read_image, read_label
from offroadseg.errors import DataError
from offroadseg.taxonomy import Taxonomy, load_taxonomy

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

DUALITY_IMAGES = "Color_Images"
DUALITY_LABELS = "Segmentation"
DUALITY_TEST_DIR = "Offroad_Segmentation_testImages"


@dataclass(frozen=True)
class Sample:
    """One image and its label file (None when the split has no labels)."""

    name: str
    image: Path
    label: Path | None


def taxonomy_for(cfg: DataConfig) -> Taxonomy:
    """The taxonomy a data config names, with its encoding and ignore values applied."""
    spec = cfg.taxonomy
    if not Path(spec).is_absolute() and not Path(spec).exists() and (Path(cfg.root) / spec).exists():
        spec = str(Path(cfg.root) / spec)  # a taxonomy file shipped beside the data
    return load_taxonomy(spec, encoding=cfg.label_encoding, ignore_values=cfg.ignore_values)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _duality_split_dir(root: Path, split: str) -> Path:
    candidates = [root / split]
    if split == "test":
        candidates += [root / DUALITY_TEST_DIR, root.parent / DUALITY_TEST_DIR]
    for c in candidates:
        if (c / DUALITY_IMAGES).is_dir():
            return c
    raise DataError(
        f"split {split!r} not found: no {candidates[0] / DUALITY_IMAGES}; fix: point data.root at the "
        f"folder that holds {split}/{DUALITY_IMAGES} and {split}/{DUALITY_LABELS}"
    )


def read_split_table(path: Path) -> dict[str, tuple[str, str | None]]:
    """``<name><tab><split>[<tab><group>]`` lines -> ``{name: (split, group or None)}``.

    The optional group column names the recording/sequence a frame belongs to, for grouped
    cross-validation (:mod:`offroadseg.data.folds`); training ignores it.
    """
    if not path.is_file():
        raise DataError(f"split file {path} does not exist; fix: check data.split_file")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.replace(",", "\t").split()
        if len(parts) not in (2, 3):
            raise DataError(f"{path}:{n}: {line!r} is not '<name><tab><split>[<tab><group>]'; fix that line")
        out[parts[0]] = (parts[1], parts[2] if len(parts) == 3 else None)
    return out


def _read_split_file(path: Path) -> dict[str, str]:
    return {name: split for name, (split, _) in read_split_table(path).items()}


def split_file_path(cfg: DataConfig) -> Path | None:
    """The generic layout's split file (relative to ``data.root`` unless absolute), or None."""
    if not cfg.split_file:
        return None
    path = Path(cfg.split_file)
    return path if path.is_absolute() else Path(cfg.root) / path


def split_assignments(cfg: DataConfig) -> dict[str, str] | None:
    """name -> split from the generic layout's ``data.split_file`` (relative to the root), or None
    without one (then every image is in every split)."""
    path = split_file_path(cfg)
    return None if path is None else _read_split_file(path)


def split_parts(split: str) -> list[str]:
    """``"train+val"`` -> ``["train", "val"]``: a split name joined by ``+`` is the union of its parts
    (``data.train_split: train+val`` trains the final model on every labelled frame)."""
    parts = [p.strip() for p in str(split).split("+")]
    if any(not p for p in parts):
        raise DataError(f"split {split!r} has an empty part; fix: name splits joined by '+', e.g. train+val")
    return parts


def val_in_train(cfg: DataConfig) -> bool:
    """True when the validation split shares a split with the training one (``train_split: train+val``):
    its figures are then not held out."""
    return bool(set(split_parts(cfg.val_split)) & set(split_parts(cfg.train_split)))


def list_samples(cfg: DataConfig, split: str, *, require_labels: bool = True) -> list[Sample]:
    """The samples of one split, each image paired with its mask by name; ``a+b`` is the union of the
    splits ``a`` and ``b`` (:func:`split_parts`).

    Raises:
        DataError: the split folder is missing or empty, an image has no mask (when
            ``require_labels``), or two splits of a union hold different images of one name.
    """
    parts = split_parts(split)
    if len(parts) > 1:
        seen: dict[str, Sample] = {}
        for part in parts:
            for sample in list_samples(cfg, part, require_labels=require_labels):
                other = seen.setdefault(sample.name, sample)
                if other.image != sample.image:
                    raise DataError(
                        f"split {split!r}: two images are named {sample.name!r} ({other.image} and "
                        f"{sample.image}); fix: rename one, or train on one split"
                    )
        return list(seen.values())
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist; fix: set data.root=<folder with the dataset>")
    if cfg.layout == "duality":
        split_dir = _duality_split_dir(root, split)
        image_dir, label_dir = split_dir / DUALITY_IMAGES, split_dir / DUALITY_LABELS
        images = _images_in(image_dir)
        label_suffix = ".png"
    else:
        image_dir, label_dir = root / cfg.image_dir, root / cfg.label_dir
        if not image_dir.is_dir():
            raise DataError(f"image folder {image_dir} does not exist; fix: set data.image_dir")
        images = _images_in(image_dir)
        split_path = split_file_path(cfg)
        if split_path is not None:
            splits = _read_split_file(split_path)
            images = [p for p in images if splits.get(p.stem) == split]
        label_suffix = cfg.label_suffix
    if not images:
        raise DataError(
            f"split {split!r} is empty: no images in {image_dir}; fix: check data.root and the split name"
        )
    samples = []
    for img in images:
        label = label_dir / f"{img.stem}{label_suffix}"
        if not label.is_file():
            if require_labels:
                raise DataError(
                    f"image {img} has no mask: expected {label}; fix: add the mask or remove the image"
                )
            label = None
        samples.append(Sample(img.stem, img, label))
    return samples


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> [h, w, 3]; area when shrinking (no aliasing), linear when growing."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Masks are only ever resized with nearest: no invented class ids."""
    h, w = size
    if mask.shape[:2] == (h, w):
        return mask
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)


def load_ids(sample: Sample, taxonomy: Taxonomy, *, unknown: str = "error") -> np.ndarray:
    """The sample's mask as uint8 train ids at the label's own resolution."""
    assert sample.label is not None
    return taxonomy.encode(read_label(sample.label, taxonomy), unknown=unknown, source=str(sample.label))


def load_pair(
    sample: Sample, taxonomy: Taxonomy, *, unknown: str = "error"
) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 RGB [H, W, 3], uint8 ids [H, W] or None) at full resolution, sizes checked."""
    image = read_image(sample.image)
    if sample.label is None:
        return image, None
    ids = load_ids(sample, taxonomy, unknown=unknown)
    if ids.shape[:2] != image.shape[:2]:
        raise DataError(
            f"mask {sample.label} is {ids.shape[1]}x{ids.shape[0]} but image {sample.image} is "
            f"{image.shape[1]}x{image.shape[0]}; fix: re-export the mask at the image's size"
        )
    return image, ids


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] with ImageNet mean/std (what DINOv2 expects)."""
    x = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


# A loader returns the sample's (image, ids, full-resolution ids or None) already resized to
# the training size; the decoded-data cache provides one with the same signature.
PairLoader = Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray | None]]


class SegmentationDataset(Dataset):
    """Resized, optionally augmented, normalised samples.

    Items are dicts: ``image`` float32 [3, H, W], ``mask`` int64 [H, W] at the training
    size, ``full_mask`` int64 [H0, W0] at the label's own size (when ``full_res``),
    ``name`` and ``index``.
    """

    def __init__(
        self,
        samples: list[Sample],
        taxonomy: Taxonomy,
        *,
        image_size: tuple[int, int],
        transform: Callable | None = None,
        unknown: str = "error",
        full_res: bool = False,
        loader: PairLoader | None = None,
    ) -> None:
        self.samples = samples
        self.taxonomy = taxonomy
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.transform = transform
        self.unknown = unknown
        self.full_res = full_res
        self.loader = loader or self._load

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        image, ids = load_pair(self.samples[index], self.taxonomy, unknown=self.unknown)
        if ids is None:
            raise DataError(f"image {self.samples[index].image} has no mask")
        return resize_image(image, self.image_size), resize_mask(ids, self.image_size), ids

    def __getitem__(self, index: int) -> dict:
        image, ids, full_ids = self.loader(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=ids)
            image, ids = out["image"], out["mask"]
        item = {
            "image": normalize(image),
            "mask": torch.from_numpy(np.ascontiguousarray(ids)).long(),
            "name": self.samples[index].name,
            "index": index,
        }
        if self.full_res and full_ids is not None:
            item["full_mask"] = torch.from_numpy(np.ascontiguousarray(full_ids)).long()
        return item


def collate(batch: list[dict]) -> dict:
    """Stack a batch; full-resolution masks stay a list when their sizes differ."""
    out = {
        "image": torch.stack([b["image"] for b in batch]),
        "mask": torch.stack([b["mask"] for b in batch]),
        "name": [b["name"] for b in batch],
        "index": torch.tensor([b["index"] for b in batch]),
    }
    if "full_mask" in batch[0]:
        masks = [b["full_mask"] for b in batch]
        same = all(m.shape == masks[0].shape for m in masks)
        out["full_mask"] = torch.stack(masks) if same else masks
    return out

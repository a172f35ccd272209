"""Frozen-feature cache: backbone features computed once per image (and view), stored in fp16.

A frozen backbone maps the same image to the same features every epoch, so a head can
train from features computed once. Per split the store holds one float16 array per
returned layer ``feat<i> [N * V, C, h, w]``, the training-size masks ``masks [N * V, H, W]``
and, for validation at full resolution, the label-resolution ids. ``V`` is the number of
cached augmented views per image (``data.cache.views``): view ``v`` of image ``i`` is the
configured augmentation pipeline (without hflip) seeded with ``seed + i * V + v``.

Horizontal flip is applied in feature space when an item is read: the maps are flipped
along W and the mask with them. Where the training width is not a multiple of the patch
size the image was padded on the right, so the flipped map has its padding on the left;
the mask is flipped in padded coordinates and the padded columns are ignored, so every
logit stays aligned with its label.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from offroadseg.data.cache import (
    MappedStore,
    Store,
    file_fingerprints,
    hash_key,
    open_or_build_store,
)
from offroadseg.data.datasets import Sample, normalize
from offroadseg.data.io import image_size as read_image_size
from offroadseg.errors import DataError
from offroadseg.models.segmentor import Segmentor
from offroadseg.models.weights.digest import state_digest

__all__ = [
    "FeatureDataset",
    "backbone_digest",
    "feature_key",
    "hflip_features",
    "hflip_mask",
    "open_feature_store",
]

FEATURE_DTYPE = np.float16


def backbone_digest(backbone: torch.nn.Module) -> str:
    """sha256 of the backbone's parameters and buffers: the weights the features come from.

    Covers every source, random weights (which depend on the seed) and local files included.
    """
    return state_digest(backbone.state_dict())


def feature_key(
    samples: list[Sample],
    *,
    taxonomy: dict,
    image_size: tuple[int, int],
    unknown: str,
    backbone_name: str,
    weights: str | None,
    digest: str,
    layers: list[int],
    pad_mode: str,
    views: int,
    augment: dict | None,
    seed: int,
    full_res: bool,
) -> str:
    """What a feature store depends on: the data, the resize, the backbone and the views."""
    return hash_key(
        {
            "kind": "features",
            "files": file_fingerprints(samples),
            "order": [s.name for s in samples],
            "image_size": [int(image_size[0]), int(image_size[1])],
            "taxonomy": taxonomy,
            "unknown": unknown,
            "backbone": backbone_name,
            "weights": weights,
            "digest": digest,
            "layers": list(layers),
            "pad_mode": pad_mode,
            "dtype": np.dtype(FEATURE_DTYPE).str,
            "views": int(views),
            "augment": augment if views > 1 else None,
            "seed": int(seed) if views > 1 else None,
            "full_res": bool(full_res),
        }
    )


def hflip_features(features: list[Tensor]) -> list[Tensor]:
    """Flip feature maps ``[..., h, w]`` along W."""
    return [f.flip(-1) for f in features]


def hflip_mask(mask: np.ndarray, padded_width: int, ignore_index: int) -> np.ndarray:
    """The mask that matches flipped feature maps of a right-padded image.

    Args:
        mask: ``[H, W]`` ids at the training size.
        padded_width: ``w * patch_size`` of the feature maps (``>= W``).
        ignore_index: id for pixels that came from padding.
    """
    width = mask.shape[-1]
    if padded_width == width:
        return np.ascontiguousarray(mask[..., ::-1])
    padded = np.full((*mask.shape[:-1], padded_width), ignore_index, dtype=mask.dtype)
    padded[..., :width] = mask
    return np.ascontiguousarray(padded[..., ::-1][..., :width])


class _ViewJobs(Dataset):
    """(row, normalised image, mask, full-resolution ids) of every view; picklable for workers."""

    def __init__(self, loader: Callable, n: int, views: int, transform: Any, seed: int) -> None:
        self.loader, self.n, self.views, self.transform, self.seed = loader, n, views, transform, seed

    def __len__(self) -> int:
        return self.n * self.views

    def __getitem__(self, row: int):
        index = row // self.views
        image, ids, full = self.loader(index)
        if self.transform is not None:
            self.transform.set_random_seed(self.seed + row)
            out = self.transform(image=image, mask=ids)
            image, ids = out["image"], out["mask"]
        return row, normalize(image), np.ascontiguousarray(ids), full


def _collate_views(batch):
    rows = [b[0] for b in batch]
    return rows, torch.stack([b[1] for b in batch]), [b[2] for b in batch], [b[3] for b in batch]


def open_feature_store(
    samples: list[Sample],
    loader: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    model: Segmentor,
    *,
    key: str,
    root: str | Path,
    image_size: tuple[int, int],
    views: int = 1,
    transform: Any = None,
    seed: int = 0,
    full_res: bool = False,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    batch_size: int = 4,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Store:
    """The feature store of ``samples`` for this backbone: reused when it matches, else built.

    Args:
        loader: ``index -> (image uint8 [H, W, 3], ids [H, W], full ids or None)`` at the training
            size (the dataset's own loader or the decoded cache).
        model: the segmentor whose (frozen) backbone computes the features.
        key: from :func:`feature_key`; the store lives in ``<root>/features/<key>``.
        transform: the augmentation pipeline of the views (hflip excluded), used when ``views > 1``.
        autocast_dtype: bf16/fp16 autocast for the backbone (None: full precision).
        batch_size: images per backbone call.
    """
    n, size = len(samples), (int(image_size[0]), int(image_size[1]))
    rows = n * views
    path = Path(root) / "features" / key[:32]
    padded = model.padded_size(*size)
    grid = (padded[0] // model.patch_size, padded[1] // model.patch_size)
    channels = list(model.backbone.out_channels)
    shapes: list[tuple[int, int]] = []

    def specs():
        out: dict[str, tuple[tuple[int, ...], Any]] = {
            f"feat{i}": ((rows, c, *grid), FEATURE_DTYPE) for i, c in enumerate(channels)
        }
        out["masks"] = ((rows, *size), np.uint8)
        if full_res:
            shapes[:] = [read_image_size(s.label) for s in samples]
            out.update(
                full_flat=((sum(h * w for h, w in shapes),), np.uint8),
                full_offsets=((n + 1,), np.int64),
                full_shapes=((n, 2), np.int32),
            )
        return out

    def fill(arrays: dict[str, np.ndarray]) -> dict:
        offsets = None
        if full_res:
            offsets = np.zeros(n + 1, dtype=np.int64)
            offsets[1:] = np.cumsum([h * w for h, w in shapes])
            arrays["full_offsets"][:] = offsets
            arrays["full_shapes"][:] = np.array(shapes, dtype=np.int32).reshape(n, 2)
        jobs = DataLoader(
            _ViewJobs(loader, n, views, transform if views > 1 else None, seed),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_collate_views,
            pin_memory=torch.device(device).type == "cuda",
        )
        dev = torch.device(device)
        amp = (
            torch.autocast(dev.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        done = 0
        with torch.inference_mode(), amp:
            for batch_rows, images, masks, fulls in jobs:
                feats = model.forward_features(images.to(dev, non_blocking=True))
                for i, f in enumerate(feats):
                    arrays[f"feat{i}"][batch_rows[0] : batch_rows[-1] + 1] = f.to(torch.float16).cpu().numpy()
                for row, mask, full in zip(batch_rows, masks, fulls, strict=True):
                    arrays["masks"][row] = mask
                    if full_res and row % views == 0:
                        index = row // views
                        if full is None or tuple(full.shape) != shapes[index]:
                            raise DataError(
                                f"mask {samples[index].label} has no full-resolution ids or changed size"
                            )
                        arrays["full_flat"][offsets[index] : offsets[index + 1]] = full.reshape(-1)
                done += len(batch_rows)
                if progress is not None:
                    progress(done, rows)
        return {"samples": n, "views": views, "grid": list(grid), "channels": channels}

    was_training = model.training
    model.eval()
    try:
        return open_or_build_store(path, key, specs, fill)
    finally:
        model.train(was_training)


class FeatureDataset(MappedStore, Dataset):
    """Items from a feature store, in the shape the LightningModule reads.

    Items: ``features`` (list of float16 ``[C, h, w]``), ``mask`` int64 ``[H, W]``,
    ``full_mask`` int64 (when stored), ``name``, ``index``. Each read draws one of the
    ``views`` cached views and flips it (features and mask) with probability ``hflip``.
    Picklable for DataLoader workers: the memory maps are reopened in each process.
    """

    # An item is a copy out of a memory map: worker processes cost more (start-up, IPC of
    # megabyte feature maps, CPU taken from the head) than they save.
    loader_workers = 0
    kind = "feature cache"

    def __init__(
        self,
        store: Store,
        samples: list[Sample],
        *,
        patch_size: int,
        ignore_index: int = 255,
        hflip: float = 0.0,
        full_res: bool = False,
    ) -> None:
        self.path, self.key = store.path, store.key
        self.samples = samples
        self.views = int(store.meta.get("views", 1))
        self.layers = sum(1 for name in store.arrays if name.startswith("feat"))
        self.patch_size = patch_size
        self.ignore_index = ignore_index
        self.hflip = float(hflip)
        self.full_res = full_res and "full_flat" in store.arrays
        self.nbytes = store.nbytes
        self._arrays: dict[str, np.ndarray] | None = store.arrays

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        a = self.arrays
        view = int(torch.randint(self.views, ()).item()) if self.views > 1 else 0
        row = index * self.views + view
        feats = [np.array(a[f"feat{i}"][row]) for i in range(self.layers)]
        mask = np.array(a["masks"][row])
        if self.hflip > 0 and float(torch.rand(())) < self.hflip:
            padded_width = feats[0].shape[-1] * self.patch_size
            feats = [np.ascontiguousarray(f[..., ::-1]) for f in feats]
            mask = hflip_mask(mask, padded_width, self.ignore_index)
        item = {
            "features": [torch.from_numpy(f) for f in feats],
            "mask": torch.from_numpy(mask).long(),
            "name": self.samples[index].name,
            "index": index,
        }
        if self.full_res:
            start, stop = (int(v) for v in a["full_offsets"][index : index + 2])
            h, w = (int(v) for v in a["full_shapes"][index])
            item["full_mask"] = torch.from_numpy(np.array(a["full_flat"][start:stop]).reshape(h, w)).long()
        return item

    @staticmethod
    def collate(batch: list[dict]) -> dict:
        out = {
            "features": [
                torch.stack([b["features"][i] for b in batch]) for i in range(len(batch[0]["features"]))
            ],
            "mask": torch.stack([b["mask"] for b in batch]),
            "name": [b["name"] for b in batch],
            "index": torch.tensor([b["index"] for b in batch]),
        }
        if "full_mask" in batch[0]:
            masks = [b["full_mask"] for b in batch]
            out["full_mask"] = torch.stack(masks) if all(m.shape == masks[0].shape for m in masks) else masks
        return out

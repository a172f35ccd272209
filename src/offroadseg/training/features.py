"""Feature cache: pre-norm hidden states of the frozen backbone, once per frame and view, in fp16.

A backbone whose first ``L - k`` blocks are frozen (``model.backbone.train_blocks: k``) maps the
same image to the same tokens entering block ``L - k`` every epoch, so training can start there.
Hidden state ``h`` is the pre-norm token sequence entering block ``h`` (0: the embeddings'
output, ``L``: the last block's output). A config needs (``DinoBackbone.cache_needs``) hidden
``L - k`` when ``k > 0`` and ``j + 1`` for every block ``j < L - k`` its head reads; the frozen
final norm is applied on read, so ``k = 0`` is the same code path with no tokens to run.

A *frame store* holds, for every frame ``i`` of a sample set and every view ``v`` (row ``i * V + v``):

- ``hidden<h> [rows, P + h*w, C]`` fp16 for each stored index ``h`` (P class + register tokens,
  then the patch grid row-major): the config's needs (``data.cache.blocks: auto``) or an explicit
  set (``data.cache.blocks: [...]``) that several configs share when their needs are subsets;
- ``images [rows, H, W, 3]`` uint8 and ``masks [rows, H, W]`` uint8 at the training size;
- the label-resolution ids of every frame (``full_*``) when validation scores at full resolution.

View 0 of every frame is the un-augmented image (validation reads it); views ``1..V-1`` are the
configured augmentation pipeline without hflip, seeded with ``seed + i * V + v``. Frames are kept
in a canonical order (sorted by image path), so any caller that names the same frames gets the
same store: cross-validation builds one store over train + val and makes any number of
train/val datasets from index subsets of it (:class:`FeatureDataset` with ``indices``), and
``offroadseg train`` afterwards reuses that store.

Horizontal flip is applied in token space when a training item is read: the patch grid is
flipped along W (prefix tokens kept in place), the image and mask with it. Where the training
width is not a multiple of the patch size the image was padded on the right, so the flipped grid
has its padding on the left; the mask is flipped in padded coordinates and the padded columns are
ignored, and the image is delivered padded, so every logit stays aligned with its label.

Precision (``tests/training/test_adapt.py::test_cached_path_agrees_with_uncached``): on the tiny
4-block test arch with the same weights, the fp16 cached path agrees with the uncached one on 100 %
of argmax pixels for ``train_blocks`` 1 and 2 (the test asserts >= 99.9 %); the largest logit
difference measured is 1.2e-4 (k=1) and 7.8e-5 (k=2) (the test asserts <= 1e-3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from offroadseg.data.cache import (
    Family,
    FullLabels,
    MappedStore,
    Store,
    file_fingerprints,
    hash_key,
    open_or_build_store,
    read_full_labels,
    taxonomy_payload,
)
from offroadseg.data.datasets import Sample, normalize
from offroadseg.errors import ConfigError, DataError
from offroadseg.models.precision import frozen_pass
from offroadseg.models.segmentor import Segmentor
from offroadseg.models.weights.digest import state_digest

__all__ = [
    "FeatureDataset",
    "FrameStore",
    "cache_digest",
    "canonical_samples",
    "feature_key",
    "hflip_mask",
    "hflip_tokens",
    "open_feature_store",
]

FEATURE_DTYPE = np.float16


def cache_digest(model: Segmentor, blocks: Sequence[int]) -> str:
    """sha256 of the weights hidden states ``blocks`` come from: the embeddings and blocks ``[0, max)``.

    Covers every source, random weights (which depend on the seed) and local files included. Call it
    before training: the blocks a config trains may lie below ``max(blocks)`` of a shared store.
    """
    backbone = model.backbone
    parts = {"embeddings": backbone.model.embeddings}
    parts.update({f"block{i}": backbone.blocks[i] for i in range(max(blocks, default=0))})
    return state_digest(
        {
            f"{part_name}.{name}": t
            for part_name, part in parts.items()
            for name, t in part.state_dict().items()
        }
    )


def canonical_samples(samples: Sequence[Sample]) -> list[Sample]:
    """Unique samples sorted by image path: the row order of a frame store."""
    unique = {str(Path(s.image).resolve()): s for s in samples}
    return [unique[k] for k in sorted(unique)]


def feature_key(
    samples: list[Sample],
    *,
    taxonomy: dict,
    image_size: tuple[int, int],
    unknown: str,
    backbone_name: str,
    weights: str | None,
    digest: str,
    blocks: list[int],
    pad_mode: str,
    views: int,
    augment: dict | None,
    seed: int,
    full_res: bool,
    precision: str = "fp32",
    content: bool = False,
    family: bool = False,
) -> str:
    """What a frame store depends on: the frames, the resize, the stored hidden states and their weights,
    the views, the precision of the backbone pass; not the head's layers nor ``train_blocks`` (a store
    serves every config it covers). An fp32 pass adds no field, so stores keyed before the field existed
    (fp32 on the CPU) stay valid; a bf16- or fp16-built store has a key of its own. ``content``: the
    frames by content and name instead of path and mtime (see :func:`~offroadseg.data.cache.adopt_store`).
    ``family``: the key without the stored hidden states (:class:`~offroadseg.data.cache.Family`; pass
    the digest of the whole backbone, so that every store of the family has the same weights)."""
    extra = {} if precision == "fp32" else {"precision": precision}
    if family:
        extra["family"] = True
    return hash_key(
        {
            **extra,
            "kind": "frames",
            "files": file_fingerprints(samples, content=content),
            "order": [s.name if content else str(Path(s.image).resolve()) for s in samples],
            "image_size": [int(image_size[0]), int(image_size[1])],
            "taxonomy": taxonomy_payload(taxonomy, content=content),
            "unknown": unknown,
            "backbone": backbone_name,
            "weights": weights,
            "digest": digest,
            "blocks": None if family else sorted(int(b) for b in blocks),
            "pad_mode": pad_mode,
            "dtype": np.dtype(FEATURE_DTYPE).str,
            "views": int(views),
            "augment": augment if views > 1 else None,
            "seed": int(seed) if views > 1 else None,
            "full_res": bool(full_res),
        }
    )


def hflip_tokens(tokens: np.ndarray, grid: tuple[int, int], prefix: int = 0) -> np.ndarray:
    """Flip a token sequence ``[..., prefix + h*w, C]`` along the grid's W; prefix tokens stay first."""
    h, w = grid
    patches = tokens[..., prefix:, :].reshape(*tokens.shape[:-2], h, w, tokens.shape[-1])
    flipped = patches[..., ::-1, :].reshape(*tokens.shape[:-2], h * w, tokens.shape[-1])
    return np.ascontiguousarray(np.concatenate([tokens[..., :prefix, :], flipped], axis=-2))


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
    """(row, uint8 image, mask, full-resolution ids) of every view; picklable for workers."""

    def __init__(self, loader: Callable, n: int, views: int, transform: Any, seed: int) -> None:
        self.loader, self.n, self.views, self.transform, self.seed = loader, n, views, transform, seed

    def __len__(self) -> int:
        return self.n * self.views

    def __getitem__(self, row: int):
        index = row // self.views
        image, ids, full = self.loader(index)
        if self.transform is not None and row % self.views:  # view 0 stays the plain image
            self.transform.set_random_seed(self.seed + row)
            out = self.transform(image=image, mask=ids)
            image, ids = out["image"], out["mask"]
        return row, np.ascontiguousarray(image), np.ascontiguousarray(ids), full


def _collate_views(batch):
    rows = [b[0] for b in batch]
    images = [b[1] for b in batch]
    return (
        rows,
        torch.stack([normalize(i) for i in images]),
        images,
        [b[2] for b in batch],
        [b[3] for b in batch],
    )


@dataclass
class FrameStore:
    """A frame store and the frames of its rows (canonical order)."""

    store: Store
    samples: list[Sample]
    decoded: Any = None  # the DecodedCache the frames were read from (None: decoded on the fly)

    @property
    def views(self) -> int:
        return int(self.store.meta.get("views", 1))

    @property
    def path(self) -> Path:
        return self.store.path

    def indices_of(self, samples: Sequence[Sample]) -> list[int]:
        """Store indices of ``samples`` (each must be one of the store's frames)."""
        where = {str(Path(s.image).resolve()): i for i, s in enumerate(self.samples)}
        try:
            return [where[str(Path(s.image).resolve())] for s in samples]
        except KeyError as exc:
            raise DataError(f"image {exc.args[0]} is not in the feature store {self.path}") from None


def open_feature_store(
    samples: list[Sample],
    loader: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    model: Segmentor,
    *,
    key: str,
    content_key: Callable[[], str] | None = None,
    family_key: Callable[[], str] | None = None,
    blocks: Sequence[int],
    root: str | Path,
    image_size: tuple[int, int],
    views: int = 1,
    transform: Any = None,
    seed: int = 0,
    full_res: bool = False,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    batch_size: int = 4,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> FrameStore:
    """The frame store of ``samples`` for this backbone: reused when it matches, else built.

    Args:
        samples: the frames, in canonical order (:func:`canonical_samples`).
        loader: ``index -> (image uint8 [H, W, 3], ids [H, W], full ids or None)`` at the training
            size (a dataset's own loader or the decoded cache), indexed like ``samples``.
        model: the segmentor whose backbone computes the hidden states.
        key: from :func:`feature_key`; the store lives in ``<root>/features/<key>``.
        content_key: computes the key of the same inputs by content (``feature_key(..., content=True)``):
            on a miss, a store built from identical files elsewhere or before a copy is re-keyed, not rebuilt.
        family_key: computes ``feature_key(..., family=True)`` (it hashes the whole backbone: only on a
            miss, or once for a store without a family): on a miss, a store of the same frames and
            settings that holds a superset of ``blocks`` is read instead of building one (e.g. a study's).
        blocks: the hidden-state indices to store (``0..L``).
        transform: the augmentation pipeline of views ``1..V-1`` (hflip excluded).
        precision: of the backbone pass, ``fp32`` | ``bf16`` | ``fp16`` (see
            :func:`offroadseg.models.precision.frozen_pass`); part of ``key``, recorded in the metadata.
        batch_size: images per backbone call.
        progress: called with ``(done views, total views)`` while building.
    """
    n, size = len(samples), (int(image_size[0]), int(image_size[1]))
    rows = n * views
    path = Path(root) / "features" / key[:32]
    padded = model.padded_size(*size)
    grid = (padded[0] // model.patch_size, padded[1] // model.patch_size)
    backbone = model.backbone
    blocks = sorted({int(b) for b in blocks})
    channels = backbone.hidden_size
    seq = backbone.num_prefix_tokens + grid[0] * grid[1]
    full: list[FullLabels] = []  # made when building: reading every label's size costs a pass

    def specs():
        out: dict[str, tuple[tuple[int, ...], Any]] = {
            f"hidden{h}": ((rows, seq, channels), FEATURE_DTYPE) for h in blocks
        }
        out["images"] = ((rows, *size, 3), np.uint8)
        out["masks"] = ((rows, *size), np.uint8)
        if full_res:
            full[:] = [FullLabels(samples)]
            out.update(full[0].specs())
        return out

    def fill(arrays: dict[str, np.ndarray]) -> dict:
        if full_res:
            full[0].write_index(arrays)
        jobs = DataLoader(
            _ViewJobs(loader, n, views, transform if views > 1 else None, seed),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_collate_views,
            pin_memory=torch.device(device).type == "cuda",
        )
        dev = torch.device(device)
        runner, amp = frozen_pass(model, precision, dev.type)
        done = 0
        with torch.inference_mode(), amp:
            for batch_rows, images, raw, masks, fulls in jobs:
                hidden = runner.forward_hidden(images.to(dev, non_blocking=True), blocks)
                span = slice(batch_rows[0], batch_rows[-1] + 1)
                for h, tokens in hidden.items():
                    arrays[f"hidden{h}"][span] = tokens.to(torch.float16).cpu().numpy()
                for row, image, mask, full_ids in zip(batch_rows, raw, masks, fulls, strict=True):
                    arrays["images"][row] = image
                    arrays["masks"][row] = mask
                    if full_res and row % views == 0:
                        full[0].put(arrays, row // views, full_ids)
                done += len(batch_rows)
                if progress is not None:
                    progress(done, rows)
        return {
            "samples": n,
            "views": views,
            "grid": list(grid),
            "channels": channels,
            "blocks": blocks,
            "prefix_tokens": backbone.num_prefix_tokens,
            "pad_mode": model.pad_mode,
            "precision": precision,
        }

    was_training = model.training
    model.eval()
    try:
        family = (lambda: Family(family_key(), tuple(int(b) for b in blocks))) if family_key else None
        return FrameStore(open_or_build_store(path, key, specs, fill, content_key, family), list(samples))
    finally:
        model.train(was_training)


class FeatureDataset(MappedStore, Dataset):
    """Training or validation items from a frame store, in the shape the LightningModule reads.

    Items: ``early`` (list of float16 ``[h*w, C]``, hidden states ``early_from`` without their prefix
    tokens), ``tokens`` float16 ``[P + h*w, C]`` (hidden state ``tokens_from``, when given),
    ``mask`` int64 ``[H, W]``, ``image`` float32 ``[3, h*p, w*p]`` (normalised,
    padded like the model pads; only with ``with_image``), ``full_mask`` int64 (validation, when
    stored), ``name``, ``index`` (position in this dataset). A training item draws one of the
    store's views and flips it with probability ``hflip``; a validation item reads view 0 (the
    plain image). Picklable for DataLoader workers: the memory maps are reopened in each process.

    Args:
        store: the frame store.
        indices: the store's frames this dataset serves (default: all), e.g. one CV fold.
        tokens_from: the hidden state the trained blocks start from (None: ``train_blocks = 0``).
        early_from: the hidden states of the returned blocks before it (``j + 1`` for block ``j``).
        train: training items (random view, hflip) or validation items (view 0, full masks).
        patch_size: the model's patch size (for the padded width).
        with_image: also deliver the image (for a head with ``uses_image``).
    """

    # An item is a copy out of a memory map: worker processes cost more (start-up, IPC of
    # megabyte feature maps, CPU taken from the head) than they save.
    loader_workers = 0
    kind = "feature cache"

    def __init__(
        self,
        store: FrameStore,
        indices: Sequence[int] | None = None,
        *,
        tokens_from: int | None,
        early_from: Sequence[int],
        train: bool,
        patch_size: int,
        ignore_index: int = 255,
        hflip: float = 0.0,
        full_res: bool = False,
        with_image: bool = False,
    ) -> None:
        self.path, self.key = store.store.path, store.store.key
        self.frames = list(range(len(store.samples))) if indices is None else [int(i) for i in indices]
        bad = [i for i in self.frames if not 0 <= i < len(store.samples)]
        if bad:
            raise IndexError(f"frame indices {bad[:5]} outside the store's {len(store.samples)} frames")
        self.samples = [store.samples[i] for i in self.frames]
        meta = store.store.meta
        self.views = int(meta.get("views", 1))
        self.grid = tuple(int(v) for v in meta["grid"])
        self.prefix = int(meta.get("prefix_tokens", 1))
        stored = [int(b) for b in meta.get("blocks", [])]
        wanted = sorted({*early_from, *([] if tokens_from is None else [tokens_from])})
        missing = [h for h in wanted if h not in stored]
        if missing:
            raise ConfigError(
                f"the feature store {store.path} holds hidden states {stored}, this config needs {wanted} "
                f"(missing {missing}); fix: data.cache.blocks=auto or a list that includes {wanted}"
            )
        self.tokens_from = tokens_from
        self.early_from = [int(h) for h in early_from]
        self.train = train
        self.patch_size = patch_size
        self.ignore_index = ignore_index
        self.hflip = float(hflip) if train else 0.0
        self.full_res = full_res and not train and "full_flat" in store.store.arrays
        self.with_image = with_image
        self.pad_mode = str(meta.get("pad_mode", "replicate"))
        self.nbytes = store.store.nbytes
        self._arrays: dict[str, np.ndarray] | None = store.store.arrays

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict:
        a = self.arrays
        frame = self.frames[index]
        view = int(torch.randint(self.views, ()).item()) if self.train and self.views > 1 else 0
        row = frame * self.views + view
        early = [np.array(a[f"hidden{h}"][row, self.prefix :]) for h in self.early_from]
        tokens = np.array(a[f"hidden{self.tokens_from}"][row]) if self.tokens_from is not None else None
        mask = np.array(a["masks"][row])
        padded = (self.grid[0] * self.patch_size, self.grid[1] * self.patch_size)
        image = _padded(np.array(a["images"][row]), padded, self.pad_mode) if self.with_image else None
        if self.hflip > 0 and float(torch.rand(())) < self.hflip:
            early = [hflip_tokens(e, self.grid) for e in early]
            tokens = hflip_tokens(tokens, self.grid, self.prefix) if tokens is not None else None
            mask = hflip_mask(mask, padded[1], self.ignore_index)
            image = image.flip(-1) if image is not None else None
        item: dict[str, Any] = {
            "early": [torch.from_numpy(e) for e in early],
            "mask": torch.from_numpy(mask).long(),
            "name": self.samples[index].name,
            "index": index,
        }
        if tokens is not None:
            item["tokens"] = torch.from_numpy(tokens)
        if image is not None:
            item["image"] = image
        if self.full_res:
            item["full_mask"] = torch.from_numpy(read_full_labels(a, frame)).long()
        return item

    @staticmethod
    def collate(batch: list[dict]) -> dict:
        out = {
            "early": [torch.stack([b["early"][j] for b in batch]) for j in range(len(batch[0]["early"]))],
            "mask": torch.stack([b["mask"] for b in batch]),
            "name": [b["name"] for b in batch],
            "index": torch.tensor([b["index"] for b in batch]),
        }
        for name in ("tokens", "image"):
            if name in batch[0]:
                out[name] = torch.stack([b[name] for b in batch])
        if "full_mask" in batch[0]:
            masks = [b["full_mask"] for b in batch]
            out["full_mask"] = torch.stack(masks) if all(m.shape == masks[0].shape for m in masks) else masks
        return out


def _padded(image: np.ndarray, size: tuple[int, int], pad_mode: str) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> normalised ``[3, *size]``, padded at the bottom/right as the model pads."""
    x = normalize(image)
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    return F.pad(x[None], (0, size[1] - w, 0, size[0] - h), mode=pad_mode)[0]

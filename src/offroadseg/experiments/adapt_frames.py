"""``offroadseg adapt``'s frames: target images and video frames, the source frames, their stored frozen
features, and the logits / probabilities / views computed from them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from offroadseg.class_ids import class_ids
from offroadseg.config import Config
from offroadseg.data.datasets import list_samples, load_ids, normalize, resize_image, resize_mask
from offroadseg.data.io import IMAGE_SUFFIXES, read_image
from offroadseg.errors import ConfigError, DataError
from offroadseg.experiments.pseudo import (
    confidence_stats,
    pixel_shares,
)
from offroadseg.inference.video import is_video, read_video_frames
from offroadseg.models.segmentor import Segmentor


@dataclass
class Frames:
    """Frames at the model's training size and what the frozen backbone computed for them.

    Attributes:
        names: one per frame.
        images: uint8 ``[N, H, W, 3]``.
        masks: uint8 train ids ``[N, H, W]`` (source) or None (target).
        paths: the image file of each frame (None for a video frame).
        tokens: fp16 ``[N, P + h*w, C]`` entering the first trained block, or None when no block trains.
        early: fp16 ``[N, h*w, C]`` per returned block before it.
    """

    names: list[str]
    images: np.ndarray
    masks: np.ndarray | None = None
    paths: list[Path | None] = field(default_factory=list)
    tokens: Tensor | None = None
    early: list[Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


def load_target_frames(specs: Sequence[str], size: Sequence[int], *, every: int = 1) -> Frames:
    """Target frames from image files, folders, glob patterns and videos (every ``every``-th frame),
    resized to ``size`` as ``predict`` resizes them.

    Raises:
        DataError: an input that does not exist, an unreadable image or video, or no image at all.
    """
    from offroadseg.inference.outputs import collect_inputs

    if every < 1:
        raise ConfigError(f"--every {every}: must be >= 1; fix: e.g. --every 10")
    size = (int(size[0]), int(size[1]))
    videos = [Path(s) for s in specs if is_video(s) and Path(s).is_file()]
    others = [s for s in specs if not (is_video(s) and Path(s).is_file())]
    names, images, paths = [], [], []
    for path in collect_inputs(others) if others else []:
        names.append(path.stem)
        images.append(resize_image(read_image(path), size))
        paths.append(path)
    for video in videos:
        for name, rgb in read_video_frames(video, every):
            names.append(name)
            images.append(resize_image(rgb, size))
            paths.append(None)
    if not images:
        raise DataError(
            f"no readable target image in {', '.join(specs)}; fix: give image files, folders, glob patterns "
            f"({', '.join(IMAGE_SUFFIXES)}) or videos"
        )
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"two target frames share the name {dup!r}; fix: give them distinct file names")
    return Frames(names, np.stack(images), paths=paths)


def load_source_frames(cfg: Config, taxonomy, checkpoint: Path, *, max_frames: int, seed: int) -> Frames:
    """The checkpoint's own training split at its training size, with its labels.

    Raises:
        ConfigError: the source data cannot be read here (with how to pass ``--data``).
    """
    data = cfg.data
    try:
        samples = list_samples(data, data.train_split)
    except DataError as exc:
        raise ConfigError(
            f"the source data of {checkpoint} (data.root={data.root}, split {data.train_split!r}) cannot be "
            f"read here ({exc}); fix: pass its training data with --data SOURCE_ROOT"
        ) from None
    if max_frames and len(samples) > max_frames:
        pick = np.random.default_rng(seed).choice(len(samples), size=max_frames, replace=False)
        samples = [samples[i] for i in sorted(pick)]
    size = (int(data.image_size[0]), int(data.image_size[1]))
    images, masks = [], []
    for s in samples:
        images.append(resize_image(read_image(s.image), size))
        masks.append(resize_mask(load_ids(s, taxonomy, unknown=data.unknown_values), size))
    return Frames([s.name for s in samples], np.stack(images), np.stack(masks), [s.image for s in samples])


# ---- the frozen part, once per frame ---------------------------------------------------------------
def encode_frames(model: Segmentor, frames: Frames, *, device: torch.device, batch_size: int = 4) -> None:
    """Run the frozen part of the backbone once per frame; keep its outputs (fp16, on the CPU)."""
    backbone = model.backbone
    needs = backbone.cache_needs()
    tokens, early = [], []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(frames), batch_size):
            x = torch.stack([normalize(im) for im in frames.images[start : start + batch_size]]).to(device)
            t, e = backbone.split_cached(model.forward_hidden(x, needs))
            if t is not None:
                tokens.append(t.to(torch.float16).cpu())
            early.append([m.to(torch.float16).cpu() for m in e])
    frames.tokens = torch.cat(tokens) if tokens else None
    frames.early = [torch.cat([batch[i] for batch in early]) for i in range(len(early[0]))] if early else []


def _flip_grid(x: Tensor, grid: tuple[int, int], prefix: int) -> Tensor:
    """Flip ``[B, P + h*w, C]`` tokens along the grid's width, the P prefix tokens kept in place."""
    b, _, c = x.shape
    h, w = grid
    patches = x[:, prefix:].reshape(b, h, w, c).flip(2).reshape(b, h * w, c)
    return torch.cat([x[:, :prefix], patches], dim=1) if prefix else patches


def frame_logits(
    model: Segmentor, frames: Frames, index: Sequence[int], flip: bool, *, device: torch.device
) -> Tensor:
    """Logits ``[B, K, H, W]`` of frames ``index`` from their stored features, in the frames' own
    orientation (with ``flip`` the model sees the mirrored frame and its logits are mirrored back)."""
    idx = torch.as_tensor(list(index))
    tokens = frames.tokens[idx].to(device).float() if frames.tokens is not None else None
    early = [e[idx].to(device).float() for e in frames.early]
    image = None
    if model.uses_image:
        image = torch.stack([normalize(frames.images[i]) for i in index]).to(device)
    size = tuple(int(s) for s in frames.images.shape[1:3])
    return features_logits(model, tokens, early, size, flip, image=image)


def token_grid(model: Segmentor, size: tuple[int, int]) -> tuple[int, int]:
    """The patch grid ``(h, w)`` of frames of ``size`` (padded to patch multiples)."""
    padded = model.padded_size(*size)
    return padded[0] // model.patch_size, padded[1] // model.patch_size


def features_logits(
    model: Segmentor,
    tokens: Tensor | None,
    early: list[Tensor],
    size: tuple[int, int],
    flip: bool,
    *,
    image: Tensor | None = None,
) -> Tensor:
    """Logits ``[B, K, H, W]`` from stored features (``tokens`` ``[B, P + h*w, C]`` or None, ``early``
    ``[B, h*w, C]`` each, float, on the device) of frames of ``size``; with ``flip`` the model sees the
    mirrored token grid and its logits are mirrored back. ``image``: the normalised frames, for a head
    that reads the image."""
    grid = token_grid(model, size)
    padded = (grid[0] * model.patch_size, grid[1] * model.patch_size)
    if flip:
        prefix = model.backbone.num_prefix_tokens
        tokens = _flip_grid(tokens, grid, prefix) if tokens is not None else None
        early = [_flip_grid(e, grid, 0) for e in early]
    features = model.features_from_cache(tokens, early, size)
    if not flip:
        return model.forward_head(features, size, image=image)
    # the mirrored padded grid: logits at the padded size, mirrored back, then the padding cut off
    return model.forward_head(features, padded, image=image).flip(-1)[..., : size[0], : size[1]]


def frame_probs(
    model: Segmentor, frames: Frames, index: Sequence[int], *, flip: bool, device: torch.device
) -> Tensor:
    """Softmax probabilities ``[B, K, H, W]``, averaged over both orientations with ``flip``."""
    with torch.no_grad():
        probs = frame_logits(model, frames, index, False, device=device).float().softmax(1)
        if flip:
            probs = (probs + frame_logits(model, frames, index, True, device=device).float().softmax(1)) / 2
    return probs


def _batches(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


@dataclass
class TargetView:
    """One model's label-free view of the target: argmax ``[N, H, W]`` uint8, confidence and entropy."""

    pred: np.ndarray
    confidence: float
    entropy: float

    def shares(self, k: int) -> np.ndarray:
        return pixel_shares(self.pred, k)


def view_target(
    model: Segmentor, frames: Frames, *, flip: bool, device: torch.device, batch_size: int
) -> TargetView:
    model.eval()
    preds, conf, ent = [], 0.0, 0.0
    for index in _batches(len(frames), batch_size):
        probs = frame_probs(model, frames, index, flip=flip, device=device)
        c, e = confidence_stats(probs)
        conf, ent = conf + c * len(index), ent + e * len(index)
        preds.append(class_ids(probs).to(torch.uint8).cpu().numpy())
    return TargetView(np.concatenate(preds), conf / len(frames), ent / len(frames))


def per_flip_logits(flips: Sequence[bool], logits_of: Callable[[list[int], bool], Tensor]) -> Tensor:
    """Logits of a batch whose frames are each seen mirrored or not (``flips[j]``): one call of
    ``logits_of(positions, flip)`` per orientation, the rows put back in batch order."""
    out: list[Tensor | None] = [None] * len(flips)
    for flip in (False, True):
        where = [j for j, f in enumerate(flips) if f == flip]
        if where:
            logits = logits_of(where, flip)
            for row, j in enumerate(where):
                out[j] = logits[row]
    return torch.stack(out)  # type: ignore[arg-type]

"""ClassMix (Olsson et al. 2021, as DACS uses it) on the token grid, for ``offroadseg adapt``.

A mixed frame takes the pixels of half the classes of a **source** frame (with their true labels)
and pastes them onto a **target** frame (with the teacher's pseudo-labels). Adaptation trains from
the stored outputs of the frozen backbone (one token per patch), so mixing happens on the **token
grid**: the mask is patch-level. A patch comes from the source frame when at least half of its
pixels (inside the image; padding does not count) belong to the chosen classes, and every pixel
of that patch then takes the source's label, so the labels follow the features they are learned
from. The prefix tokens (class / register) stay the target's.

The pure parts (:func:`choose_classes`, :func:`patch_mask`, :func:`pixel_mask`, :func:`mix_tokens`,
:func:`mix_labels`) are tested on hand-made arrays; :func:`classmix_logits` joins them for one
training step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from offroadseg.data.datasets import normalize
from offroadseg.experiments.adapt_frames import Frames, features_logits, per_flip_logits, token_grid
from offroadseg.models.segmentor import Segmentor

__all__ = ["choose_classes", "classmix_logits", "mix_labels", "mix_tokens", "patch_mask", "pixel_mask"]


def choose_classes(mask: np.ndarray, rng: np.random.Generator, *, ignore_index: int) -> np.ndarray:
    """Half the classes present in ``mask`` (rounded up; the ignore index never counts), drawn at
    random, sorted; empty when no class is present."""
    present = np.unique(mask)
    present = present[present != ignore_index]
    if present.size == 0:
        return present
    return np.sort(rng.choice(present, size=(present.size + 1) // 2, replace=False))


def patch_mask(mask: np.ndarray, classes: np.ndarray, *, patch: int, grid: tuple[int, int]) -> np.ndarray:
    """bool ``[h, w]``: True for a patch of which at least half the in-image pixels have a label in
    ``classes``.

    Args:
        mask: train ids ``[H, W]``.
        classes: the chosen class ids.
        patch: the patch size in pixels.
        grid: ``(h, w)``, with ``h * patch >= H`` and ``w * patch >= W`` (bottom/right padding).
    """
    h, w = grid
    height, width = mask.shape
    chosen = np.zeros((h * patch, w * patch), dtype=np.int64)
    inside = np.zeros_like(chosen)
    chosen[:height, :width] = np.isin(mask, classes)
    inside[:height, :width] = 1
    per_patch = chosen.reshape(h, patch, w, patch).sum(axis=(1, 3))
    pixels = inside.reshape(h, patch, w, patch).sum(axis=(1, 3))
    return (pixels > 0) & (2 * per_patch >= pixels)


def pixel_mask(mask: Tensor, *, patch: int, size: tuple[int, int]) -> Tensor:
    """A patch-level mask ``[..., h, w]`` as pixels ``[..., H, W]`` (each patch repeated, padding cut)."""
    full = mask.repeat_interleave(patch, dim=-2).repeat_interleave(patch, dim=-1)
    return full[..., : size[0], : size[1]]


def mix_tokens(source: Tensor, target: Tensor, mask: Tensor, *, prefix: int) -> Tensor:
    """Tokens ``[B, P + h*w, C]``: patch ``i`` from ``source`` where ``mask`` ``[B, h, w]`` is True, from
    ``target`` elsewhere; the ``prefix`` leading tokens are the target's."""
    pick = mask.flatten(1)[..., None].to(source.device)
    patches = torch.where(pick, source[:, prefix:], target[:, prefix:])
    return torch.cat([target[:, :prefix], patches], dim=1) if prefix else patches


def mix_labels(source: Tensor, target: Tensor, mask: Tensor, *, patch: int) -> Tensor:
    """Labels ``[B, H, W]``: the source's on the pixels of the patches ``mask`` ``[B, h, w]`` takes from
    the source, the target's elsewhere."""
    full = pixel_mask(mask, patch=patch, size=tuple(source.shape[-2:])).to(source.device)
    return torch.where(full, source, target)


def classmix_logits(
    model: Segmentor,
    source: Frames,
    s_idx: Sequence[int],
    target: Frames,
    t_idx: Sequence[int],
    target_labels: Tensor,
    flips: Sequence[bool],
    rng: np.random.Generator,
    *,
    ignore_index: int,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """The student's logits on the mixed frames (source frame ``s_idx[j]`` pasted onto target frame
    ``t_idx[j]``, the source frames reused in turn when fewer, seen mirrored where ``flips[j]``) and their labels (source labels where pasted, the
    target's pseudo-labels ``target_labels`` ``[B, H, W]`` elsewhere), both in the frames' orientation."""
    s_idx = [s_idx[j % len(s_idx)] for j in range(len(t_idx))]  # fewer source frames: reuse them
    size = tuple(int(s) for s in target.images.shape[1:3])
    grid, patch = token_grid(model, size), model.patch_size
    masks = torch.from_numpy(
        np.stack(
            [
                patch_mask(source.masks[s], choose_classes(source.masks[s], rng, ignore_index=ignore_index),
                           patch=patch, grid=grid)
                for s in s_idx
            ]
        )
    )  # fmt: skip
    s_sel, t_sel = torch.as_tensor(list(s_idx)), torch.as_tensor(list(t_idx))
    tokens = None
    if target.tokens is not None:
        tokens = mix_tokens(
            source.tokens[s_sel].float(), target.tokens[t_sel].float(), masks,
            prefix=model.backbone.num_prefix_tokens,
        ).to(device)  # fmt: skip
    early = [mix_tokens(s[s_sel].float(), t[t_sel].float(), masks, prefix=0).to(device)
             for s, t in zip(source.early, target.early, strict=True)]  # fmt: skip
    image = None
    if model.uses_image:
        pixels = pixel_mask(masks, patch=patch, size=size)[:, None]
        s_img = torch.stack([normalize(source.images[i]) for i in s_idx])
        t_img = torch.stack([normalize(target.images[i]) for i in t_idx])
        image = torch.where(pixels, s_img, t_img).to(device)

    def logits_of(where: list[int], flip: bool) -> Tensor:
        sel = torch.as_tensor(where, device=device)
        return features_logits(
            model,
            tokens[sel] if tokens is not None else None,
            [e[sel] for e in early],
            size,
            flip,
            image=image[sel] if image is not None else None,
        )

    logits = per_flip_logits(flips, logits_of)
    labels = mix_labels(
        torch.from_numpy(source.masks[list(s_idx)]).long().to(device), target_labels.to(device), masks,
        patch=patch,
    )  # fmt: skip
    return logits, labels

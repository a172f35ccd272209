"""Sliding-window inference: tile an image larger than the network's input, average the overlaps.

Windows have the training size and cover the image at its own resolution, so fine detail
that a resize to the training size would lose is kept. Overlapping logits are averaged
(mmsegmentation's ``slide`` mode). An image side shorter than the window is padded at the
bottom/right by repeating its border (as :class:`~offroadseg.models.segmentor.Segmentor`
pads), so every window has exactly the window size and a fixed-size ONNX model runs them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sliding_logits", "window_starts"]

# Normalised images [B, 3, h, w] (CPU) -> logits [B, K, h, w] (any device).
ForwardFn = Callable[[Tensor], Tensor]


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows of ``window`` pixels covering ``length`` pixels.

    Neighbours share about ``overlap`` of a window; the last window ends at the edge.

    Raises:
        ValueError: ``overlap`` outside ``[0, 1)`` or a non-positive window.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"window overlap must be in [0, 1), got {overlap}")
    if window < 1:
        raise ValueError(f"window must be >= 1 pixel, got {window}")
    if length <= window:
        return [0]
    stride = max(1, int(round(window * (1.0 - overlap))))
    starts = list(range(0, length - window, stride))
    starts.append(length - window)
    return starts


def sliding_logits(
    forward: ForwardFn,
    images: Tensor,
    *,
    window: tuple[int, int],
    overlap: float,
    batch_size: int = 4,
) -> Tensor:
    """Logits of ``images`` computed window by window and averaged where windows overlap.

    Args:
        forward: runs the network on a batch of windows ``[N, 3, wh, ww]``.
        images: normalised ``[B, 3, H, W]`` (CPU).
        window: ``(wh, ww)``, the network's input size.
        overlap: fraction of a window shared with its neighbour, in ``[0, 1)``.
        batch_size: windows per forward call.

    Returns:
        Logits ``[B, K, H, W]`` (float32, on the device ``forward`` returns).
    """
    b, _, h, w = images.shape
    wh, ww = int(window[0]), int(window[1])
    ph, pw = max(h, wh), max(w, ww)
    if (ph, pw) != (h, w):
        images = F.pad(images, (0, pw - w, 0, ph - h), mode="replicate")
    boxes = [(y, x) for y in window_starts(ph, wh, overlap) for x in window_starts(pw, ww, overlap)]
    total: Tensor | None = None
    count: Tensor | None = None
    crops = [(i, y, x) for i in range(b) for (y, x) in boxes]
    for start in range(0, len(crops), max(1, batch_size)):
        chunk = crops[start : start + batch_size]
        batch = torch.stack([images[i, :, y : y + wh, x : x + ww] for i, y, x in chunk])
        logits = forward(batch).float()
        if total is None:
            total = logits.new_zeros((b, logits.shape[1], ph, pw))
            count = logits.new_zeros((b, 1, ph, pw))
        for (i, y, x), out in zip(chunk, logits, strict=True):
            total[i, :, y : y + wh, x : x + ww] += out
            count[i, :, y : y + wh, x : x + ww] += 1
    assert total is not None and count is not None
    return (total / count)[..., :h, :w]

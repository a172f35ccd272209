"""Segment a video file: an overlay video (same fps and size) and optional per-frame masks.

Decoding and encoding are OpenCV's (``VideoCapture`` / ``VideoWriter`` with the ``mp4v``
codec), so any container and codec the installed OpenCV reads is accepted and nothing here
touches codec details. With ``every = N`` the model runs on every N-th frame and the frames in
between are drawn with the latest mask, so the output keeps the input's frame count and timing.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offroadseg.data.io import write_png
from offroadseg.errors import DataError, OffroadsegError
from offroadseg.inference.outputs import overlay

__all__ = ["VIDEO_SUFFIXES", "VideoSummary", "is_video", "predict_video", "read_video_frames"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video file by its suffix."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def read_video_frames(path: Path, every: int, *, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """Every ``every``-th frame of a video as ``(name, uint8 RGB)`` (at most ``limit`` of them);
    names are ``<stem>_<frame index>``.

    Raises:
        DataError: no frame could be decoded.
    """
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames: list[tuple[str, np.ndarray]] = []
    try:
        index = 0
        ok, frame = capture.read() if capture.isOpened() else (False, None)
        while ok and frame is not None and (limit is None or len(frames) < limit):
            if index % every == 0:
                frames.append((f"{path.stem}_{index:06d}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
            index += 1
            ok, frame = capture.read()
    finally:
        capture.release()
    if not frames:
        raise DataError(
            f"video {path} could not be read (no frame decoded: not a video, damaged, or a codec this OpenCV "
            f"lacks); fix: re-encode it, e.g. ffmpeg -i {path.name} -c:v libx264 out.mp4"
        )
    return frames


@dataclass
class VideoSummary:
    """What :func:`predict_video` wrote."""

    source: Path
    output: Path
    frames: int  # frames read and written
    predicted: int  # frames the model ran on
    fps: float  # of the input (and the output)
    size: tuple[int, int]  # (H, W)
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


def predict_video(
    predictor,
    source: str | Path,
    out_dir: str | Path,
    *,
    alpha: float = 0.5,
    every: int = 1,
    write_masks: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> VideoSummary:
    """Run ``predictor`` over the frames of ``source``.

    Writes ``<out_dir>/<stem>_overlay.mp4`` and, with ``write_masks``, ``<out_dir>/<stem>_masks/
    <frame:06d>.png`` (dataset encoding) for each predicted frame. The video is written to a
    temporary file and renamed when complete: a failure leaves no half video.

    Args:
        predictor: a :class:`~offroadseg.inference.predictor.Predictor`.
        every: run the model on every ``every``-th frame (1: all).

    Raises:
        DataError: the file cannot be opened or has no readable frame.
        OffroadsegError: bad ``every``/``alpha``, or outputs exist and ``overwrite`` is off.
    """
    import cv2

    source, out_dir = Path(source), Path(out_dir)
    if every < 1:
        raise OffroadsegError(f"--every {every}: must be >= 1; fix: e.g. --every 1 (every frame)")
    if not 0.0 <= alpha <= 1.0:
        raise OffroadsegError(f"--alpha {alpha} is outside [0, 1]; fix: e.g. --alpha 0.5")
    if not source.is_file():
        raise DataError(f"video {source} does not exist; fix: check the path")
    output = out_dir / f"{source.stem}_overlay.mp4"
    mask_dir = out_dir / f"{source.stem}_masks"
    if not overwrite and (output.exists() or (write_masks and mask_dir.exists())):
        raise OffroadsegError(f"{output} already exists; fix: pass --overwrite or choose another --out")
    capture = cv2.VideoCapture(str(source))
    try:
        ok, frame = capture.read() if capture.isOpened() else (False, None)
        if not ok or frame is None:
            raise DataError(
                f"video {source} could not be read (no frame decoded: not a video, damaged, or a codec "
                f"this OpenCV lacks); fix: re-encode it, e.g. ffmpeg -i {source.name} -c:v libx264 out.mp4"
            )
        fps = float(capture.get(cv2.CAP_PROP_FPS)) or 25.0  # some containers carry no rate
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or 0
        height, width = frame.shape[:2]
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=".mp4", dir=out_dir)
        os.close(fd)
        tmp = Path(tmp_name)
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            tmp.unlink(missing_ok=True)
            raise OffroadsegError(
                f"OpenCV cannot write {output} (mp4v codec unavailable); fix: reinstall opencv"
            )
        start = time.perf_counter()
        frames = predicted = 0
        color = None
        try:
            while ok:
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                if frames % every == 0 or color is None:
                    ids = predictor.predict_one(rgb)
                    color = predictor.taxonomy.colorize(ids)
                    predicted += 1
                    if write_masks:
                        write_png(mask_dir / f"{frames:06d}.png", predictor.taxonomy.decode(ids))
                writer.write(cv2.cvtColor(overlay(rgb, color, alpha), cv2.COLOR_RGB2BGR))
                frames += 1
                if progress:
                    progress(frames, max(total, frames))
                ok, frame = capture.read()
            writer.release()
            os.replace(tmp, output)
        finally:
            writer.release()
            tmp.unlink(missing_ok=True)
    finally:
        capture.release()
    return VideoSummary(source, output, frames, predicted, fps, (height, width), time.perf_counter() - start)

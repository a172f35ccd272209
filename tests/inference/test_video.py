"""``offroadseg predict`` on a video: an overlay video of the same size, fps and frame count."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from offroadseg.cli import main


def _clip(path, frames=5, size=(56, 84), fps=12.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size[1], size[0]))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))
    writer.release()
    return path


def _read(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    ok, frame = cap.read()
    while ok:
        frames.append(frame)
        ok, frame = cap.read()
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


@pytest.mark.parametrize("every", [1, 2])
def test_video_overlay_keeps_frames_size_and_fps(toy_checkpoint, tmp_path, capsys, every):
    clip = _clip(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    args = ["predict", str(toy_checkpoint), str(clip), "--out", str(out), "--every", str(every)]
    assert main([*args, "--video-masks"]) == 0
    frames, fps = _read(out / "clip_overlay.mp4")
    assert len(frames) == 5 and frames[0].shape == (56, 84, 3) and fps == pytest.approx(12.0)
    masks = sorted((out / "clip_masks").glob("*.png"))
    assert len(masks) == (5 if every == 1 else 3)
    assert "frames/s" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["clip_masks", "clip_overlay.mp4"]


def test_unreadable_and_empty_videos_are_one_line(toy_checkpoint, tmp_path, capsys):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    out = tmp_path / "out"
    assert main(["predict", str(toy_checkpoint), str(junk), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "could not be read" in err and len(err.strip().splitlines()) == 1
    empty = _clip(tmp_path / "empty.mp4", frames=0)
    assert main(["predict", str(toy_checkpoint), str(empty), "--out", str(out)]) == 2
    assert "could not be read" in capsys.readouterr().err
    assert not list(out.glob("*.mp4"))
    assert main(["predict", str(toy_checkpoint), str(junk), "--out", str(out), "--every", "0"]) == 2

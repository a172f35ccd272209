"""``offroadseg adapt``: the run directory, the cached path, bn, the collapse stop, --gt, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from offroadseg.cli import main
from offroadseg.data.datasets import normalize
from offroadseg.data.io import read_image, write_png
from offroadseg.experiments import adapt as adapt_mod
from offroadseg.experiments.adapt import Frames, encode_frames, frame_logits, parse_settings
from offroadseg.inference.checkpoint import load_checkpoint

FAST = ["--set", "rounds=2", "--set", "steps=2", "--set", "batch_size=2", "--set", "gallery=2"]


def _trained(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".adapting-" in p.name or ".replaced-" in p.name]


def test_adapt_writes_a_loadable_run(ppm_checkpoint, adapt_toy_root, tmp_path, capsys):
    out = tmp_path / "adapted"
    target = adapt_toy_root / "test" / "Color_Images"
    assert main(["adapt", str(ppm_checkpoint), str(target), "--out", str(out), *FAST]) == 0
    for name in ("config.yaml", "adapt.yaml", "history.json", "adapt_report.html", "adapt_report.json",
                 "class_shares.png", "adapt_rounds.png", "checkpoints/last.ckpt"):  # fmt: skip
        assert (out / name).is_file(), name
    before, after = load_checkpoint(ppm_checkpoint), load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert after.config.run.dir == str(out)
    changed = [n for n, t in _trained(after.model).items() if not torch.equal(t, _trained(before.model)[n])]
    assert changed, "adaptation changed no trained weight"
    assert any(n.startswith("backbone.") for n in changed)  # the trained block adapts too
    report = json.loads((out / "adapt_report.json").read_text())
    assert [h["round"] for h in report["history"]] == [1, 2]
    assert report["shipped_round"] == 2 and report["collapsed"] == []
    for key in ("agreement", "kept_share", "confidence", "entropy", "thresholds", "shares"):
        assert report["history"][0][key] is not None
    assert sum(report["before"]["shares"]) == pytest.approx(1.0)
    assert sum(report["source_shares"]) == pytest.approx(1.0)
    assert "WARNING" not in (out / "adapt_report.html").read_text()
    # the adapted checkpoint serves the other commands
    pred = tmp_path / "pred"
    assert main(["predict", str(out / "checkpoints" / "last.ckpt"), str(target), "--out", str(pred)]) == 0
    assert len(list((pred / "masks").iterdir())) == 3
    assert _leftovers(tmp_path) == []


def test_cached_logits_equal_the_model_and_flip_lines_up(linear_checkpoint, ppm_checkpoint, adapt_toy_root):
    """The stored-feature path gives the model's own logits; with a per-pixel head (linear) on a frozen
    backbone, the mirrored view flipped back equals the plain view, padding included (84 -> 84, 80 -> 84)."""
    images = np.stack(
        [read_image(p)[:, :80] for p in sorted((adapt_toy_root / "val" / "Color_Images").iterdir())]
    )
    for ckpt in (ppm_checkpoint, linear_checkpoint):
        model = load_checkpoint(ckpt).model.eval()
        frames = Frames([str(i) for i in range(len(images))], images)
        encode_frames(model, frames, device=torch.device("cpu"))
        with torch.no_grad():
            direct = model(torch.stack([normalize(im) for im in images]))
            cached = frame_logits(model, frames, [0, 1, 2], False, device=torch.device("cpu"))
            assert cached.shape == direct.shape and direct.shape[-2:] == (56, 80)
            assert torch.allclose(cached, direct, atol=1e-2)  # fp16 storage
            if ckpt == linear_checkpoint:
                flipped = frame_logits(model, frames, [0, 1, 2], True, device=torch.device("cpu"))
                assert torch.allclose(flipped, cached, atol=1e-4)


def test_bn_method_reestimates_statistics(linear_checkpoint, adapt_toy_root, tmp_path):
    out = tmp_path / "bn"
    target = adapt_toy_root / "test" / "Color_Images"
    assert main(["adapt", str(linear_checkpoint), str(target), "--out", str(out), "--method", "bn"]) == 0
    before = load_checkpoint(linear_checkpoint).model.head.norm
    after = load_checkpoint(out / "checkpoints" / "last.ckpt").model.head.norm
    assert not torch.allclose(before.running_mean, after.running_mean)
    report = json.loads((out / "adapt_report.json").read_text())
    assert report["settings"]["method"] == "bn" and report["history"][0]["bn_layers"] == 1


def test_bn_method_without_batch_norm_is_one_line(ppm_checkpoint, adapt_toy_root, tmp_path, capsys):
    out = tmp_path / "bn"
    rc = main(["adapt", str(ppm_checkpoint), str(adapt_toy_root / "test" / "Color_Images"), "--out", str(out),
               "--method", "bn"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--method self" in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_collapse_stops_and_ships_the_last_healthy_model(
    ppm_checkpoint, adapt_toy_root, tmp_path, monkeypatch, capsys
):
    calls = []

    def guard(*args, **kwargs):
        calls.append(1)
        return ["class 'Trees' vanished: 0.00% of target pixels after adaptation"]

    monkeypatch.setattr(adapt_mod, "detect_collapse", guard)
    out = tmp_path / "collapsed"
    rc = main(
        [
            "adapt",
            str(ppm_checkpoint),
            str(adapt_toy_root / "test" / "Color_Images"),
            "--out",
            str(out),
            *FAST,
        ]
    )
    assert rc == 3 and len(calls) == 1  # stopped after the first round
    assert "collapsed" in capsys.readouterr().err
    report = json.loads((out / "adapt_report.json").read_text())
    assert report["shipped_round"] == 0 and len(report["history"]) == 1
    assert "WARNING: adaptation collapsed" in (out / "adapt_report.html").read_text()
    shipped, original = load_checkpoint(out / "checkpoints" / "last.ckpt"), load_checkpoint(ppm_checkpoint)
    for name, t in _trained(original.model).items():
        assert torch.equal(t, _trained(shipped.model)[name])


def test_gt_scores_before_match_predict(ppm_checkpoint, adapt_toy_root, tmp_path):
    target, gt = adapt_toy_root / "val" / "Color_Images", adapt_toy_root / "val" / "Segmentation"
    out = tmp_path / "gt"
    assert main(["adapt", str(ppm_checkpoint), str(target), "--out", str(out), "--gt", str(gt), *FAST]) == 0
    scored = json.loads((out / "adapt_report.json").read_text())["gt"]
    assert scored["frames"] == 3
    pred = tmp_path / "pred"
    assert main(["predict", str(ppm_checkpoint), str(target), "--out", str(pred), "--gt", str(gt)]) == 0
    assert scored["before"]["miou"] == pytest.approx(json.loads((pred / "metrics.json").read_text())["miou"])
    assert "mIoU on the --gt frames" in (out / "adapt_report.html").read_text()


def test_target_of_another_size_works(ppm_checkpoint, adapt_toy_root, tmp_path):
    target = tmp_path / "small"
    for i, p in enumerate(sorted((adapt_toy_root / "test" / "Color_Images").iterdir())):
        write_png(target / f"s{i}.png", read_image(p)[::2, ::3])
    out = tmp_path / "out"
    assert main(["adapt", str(ppm_checkpoint), str(target), "--out", str(out), *FAST]) == 0


def _one_line_error(capsys, argv: list[str], *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_bad_input_is_one_line_and_leaves_nothing(ppm_checkpoint, adapt_toy_root, tmp_path, capsys):
    ckpt, out = str(ppm_checkpoint), tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no image here")
    _one_line_error(capsys, ["adapt", ckpt, str(empty), "--out", str(out)], "no readable target image")
    video = tmp_path / "drive.mp4"
    video.write_bytes(b"not a video at all")
    _one_line_error(capsys, ["adapt", ckpt, str(video), "--out", str(out)], "drive.mp4", "could not be read")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    _one_line_error(capsys, ["adapt", ckpt, str(broken), "--out", str(out)], "broken.png")
    target = str(adapt_toy_root / "test" / "Color_Images")
    _one_line_error(
        capsys,
        ["adapt", ckpt, target, "--out", str(out), "--data", str(tmp_path / "gone")],
        "--data SOURCE_ROOT",
    )
    _one_line_error(capsys, ["adapt", ckpt, target, "rounds=0", "--out", str(out)], "rounds=0")
    _one_line_error(capsys, ["adapt", ckpt, target, "kep=0.3", "--out", str(out)], "keep")
    assert not out.exists() and _leftovers(tmp_path) == []
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    _one_line_error(capsys, ["adapt", ckpt, target, "--out", str(out)], "--overwrite")
    assert (out / "precious.txt").read_text() == "keep me"


def test_source_data_moved_needs_data(ppm_checkpoint, adapt_toy_root, tmp_path, capsys):
    """A checkpoint whose training data is gone: one line naming --data; with --data it runs."""
    ckpt = torch.load(ppm_checkpoint, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["config"]["data"]["root"] = str(tmp_path / "was_here")
    moved_ckpt = tmp_path / "moved.ckpt"
    torch.save(ckpt, moved_ckpt)
    out, target = tmp_path / "out", str(adapt_toy_root / "test" / "Color_Images")
    _one_line_error(
        capsys, ["adapt", str(moved_ckpt), target, "--out", str(out)], "was_here", "--data SOURCE_ROOT"
    )
    assert not out.exists()
    assert (
        main(["adapt", str(moved_ckpt), target, "--out", str(out), "--data", str(adapt_toy_root), *FAST]) == 0
    )


def test_settings_parse():
    s = parse_settings(["adapt.keep=0.3", "rounds=2", "flip=false"], method="bn")
    assert (s.keep, s.rounds, s.flip, s.method) == (0.3, 2, False, "bn")

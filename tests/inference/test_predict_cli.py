"""``offroadseg predict`` and ``offroadseg export`` end to end on the toy set."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from offroadseg.cli import main
from offroadseg.data.io import read_image
from offroadseg.errors import DataError
from offroadseg.inference.outputs import collect_inputs, overlay


def _masks(folder):
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((folder / "masks").glob("*.png"))}


def test_predict_writes_every_output_and_scores(toy_checkpoint, toy_root, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    gt = toy_root / "val" / "Segmentation"
    code = main(
        ["predict", str(toy_checkpoint), str(inputs), "--out", str(out), "--gt", str(gt), "--alpha", "0.3"]
    )
    assert code == 0
    names = sorted(p.stem for p in inputs.iterdir())
    for sub in ("masks", "color", "overlay", "comparison"):
        assert sorted(p.stem for p in (out / sub).glob("*.png")) == names
    mask = Image.open(out / "masks" / f"{names[0]}.png")
    image = read_image(inputs / f"{names[0]}.png")
    assert mask.size == (image.shape[1], image.shape[0])
    raw = np.asarray(mask)
    assert raw.dtype == np.uint16 and set(np.unique(raw)) <= {
        0,
        100,
        200,
        300,
        500,
        550,
        600,
        700,
        800,
        7100,
        10000,
    }
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("miou", "per_class_iou", "pixel_accuracy", "mean_dice", "confusion_matrix"):
        assert key in metrics
    assert set(metrics["per_class_iou"]) >= {"Background", "Sky"}
    cm = np.array(metrics["confusion_matrix"])
    assert cm.sum() == sum(read_image(p).shape[0] * read_image(p).shape[1] for p in inputs.iterdir())
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert [r["name"] for r in rows] and sorted(r["name"] for r in rows) == names
    mious = [float(r["miou"]) for r in rows]
    assert mious == sorted(mious)  # worst first
    printed = capsys.readouterr().out
    assert "images/s" in printed and "ms/image" in printed

    # predict's masks score the same as the score command on them
    assert main(["score", str(out / "masks"), str(gt), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["confusion_matrix"] == metrics["confusion_matrix"]


def test_bad_inputs_are_skipped_and_reported(toy_checkpoint, inputs, tmp_path, capsys):
    (inputs / "broken.png").write_bytes(b"not a png")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    out = tmp_path / "out"
    code = main(
        ["predict", str(toy_checkpoint), str(inputs), str(notes), "--out", str(out), "--batch-size", "2"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "notes.txt" in err
    assert len(list((out / "masks").glob("*.png"))) == 3


def test_earlier_results_need_overwrite(toy_checkpoint, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(toy_checkpoint), str(inputs), "--out", str(out)]) == 0
    (out / "masks" / "stale.png").write_bytes(b"x")
    assert main(["predict", str(toy_checkpoint), str(inputs), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["predict", str(toy_checkpoint), str(inputs), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "masks" / "stale.png").exists()


def test_not_a_checkpoint_is_a_clear_error(inputs, tmp_path, capsys):
    fake = tmp_path / "model.ckpt"
    fake.write_text("nope")
    assert main(["predict", str(fake), str(inputs), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.ckpt" in err and "fix:" in err


def test_tta_and_sliding_flags(toy_checkpoint, inputs, tmp_path):
    big = np.random.default_rng(0).integers(0, 256, size=(90, 150, 3), dtype=np.uint8)
    Image.fromarray(big).save(inputs / "big.png")
    out = tmp_path / "out"
    args = ["predict", str(toy_checkpoint), str(inputs), "--out", str(out)]
    assert main([*args, "--sliding-window", "--overlap", "0.5", "--batch-size", "3"]) == 0
    assert np.asarray(Image.open(out / "masks" / "big.png")).shape == (90, 150)
    assert main([*args, "--tta", "flip+scales", "--scales", "0,1", "--overwrite"]) == 2


def test_export_and_predict_with_onnx(toy_checkpoint, inputs, tmp_path):
    model = tmp_path / "model.onnx"
    assert main(["export", str(toy_checkpoint), "--format", "onnx", "--out", str(model)]) == 0
    assert main(["export", str(toy_checkpoint), "--out", str(model)]) == 2  # exists
    assert main(["predict", str(model), str(inputs), "--out", str(tmp_path / "onnx")]) == 0
    assert main(["predict", str(toy_checkpoint), str(inputs), "--out", str(tmp_path / "torch")]) == 0
    a, b = _masks(tmp_path / "onnx"), _masks(tmp_path / "torch")
    assert a.keys() == b.keys()
    agree = sum(int((a[k] == b[k]).sum()) for k in a) / sum(a[k].size for k in a)
    assert agree >= 0.999
    assert main(["predict", str(model), str(inputs), "--out", str(tmp_path / "s"), "--tta", "scales"]) == 2


def test_collect_inputs(inputs, tmp_path):
    assert len(collect_inputs([str(inputs)])) == 3
    assert len(collect_inputs([str(inputs / "*.png")])) == 3
    with pytest.raises(DataError, match="does not exist"):
        collect_inputs([str(tmp_path / "nothing")])
    with pytest.raises(DataError, match="matches no image"):
        collect_inputs([str(tmp_path / "*.jpg")])
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(next(inputs.iterdir()), other)
    with pytest.raises(DataError, match="share the name"):
        collect_inputs([str(inputs), str(other)])


def test_overlay_alpha():
    image = np.full((2, 2, 3), 100, np.uint8)
    color = np.full((2, 2, 3), 200, np.uint8)
    assert (overlay(image, color, 0.0) == image).all()
    assert (overlay(image, color, 1.0) == color).all()
    assert (overlay(image, color, 0.5) == 150).all()

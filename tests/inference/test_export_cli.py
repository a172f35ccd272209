"""``offroadseg export``: ckpt packaging, int8 with its agreement report, and clean refusals."""

from __future__ import annotations

import pytest

from offroadseg.cli import main
from offroadseg.inference.checkpoint import load_checkpoint, read_checkpoint
from offroadseg.inference.onnx import read_onnx_metadata


def test_export_ckpt_embedded_and_slim(toy_checkpoint, tmp_path, capsys):
    packed = tmp_path / "packed.ckpt"
    assert (
        main(["export", str(toy_checkpoint), "--format", "ckpt", "--embed-backbone", "--out", str(packed)])
        == 0
    )
    assert "self-contained" in capsys.readouterr().out
    ckpt = read_checkpoint(packed)
    assert ckpt["offroadseg"]["backbone"]["embedded"]
    assert any(k.startswith("model.backbone.") for k in ckpt["state_dict"])
    assert "optimizer_states" not in ckpt
    load_checkpoint(packed)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_export_int8_reports_agreement_and_miou(toy_checkpoint, toy_root, tmp_path, capsys, mode):
    images = toy_root / "val" / "Color_Images"
    out = tmp_path / "int8.onnx"
    args = ["export", str(toy_checkpoint), "--quantize", "int8", "--quant-mode", mode, "--out", str(out)]
    args += ["--calibration", str(images), "--check-gt", str(toy_root / "val" / "Segmentation")]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "int8 vs fp32 on 3 images:" in text and "% of pixels agree; mIoU" in text
    meta = read_onnx_metadata(out)
    assert meta["precision"] == "int8" and meta["quantization"] == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]  # the fp32 step is gone
    pred = tmp_path / "pred"
    assert main(["predict", str(out), str(images), "--out", str(pred)]) == 0
    assert len(list((pred / "masks").glob("*.png"))) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "ckpt", "--quantize", "int8"], "cannot be quantized"),
        (["--format", "tflite"], "--format 'tflite' is not supported"),
        (["--embed-backbone"], "--embed-backbone is for --format ckpt"),
        (["--quantize", "int8", "--quant-mode", "static"], "static int8 needs calibration images"),
    ],
)
def test_bad_export_requests_are_one_line(toy_checkpoint, tmp_path, capsys, extra, message):
    out = tmp_path / "x.out"
    assert main(["export", str(toy_checkpoint), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_unexpected_error_is_one_line_unless_debug(monkeypatch, capsys, toy_checkpoint, tmp_path):
    import offroadseg.cli.export as export_cli

    def boom(*a, **k):
        raise ZeroDivisionError("deep inside")

    monkeypatch.setattr(export_cli, "_export_fp32", boom)
    args = ["export", str(toy_checkpoint), "--out", str(tmp_path / "m.onnx")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "offroadseg export: unexpected error: ZeroDivisionError: deep inside" in err
    )
    with pytest.raises(ZeroDivisionError):
        main([*args, "--debug"])
    monkeypatch.setenv("OFFROADSEG_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(args)

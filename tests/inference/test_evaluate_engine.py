"""``offroadseg evaluate --engine``: the accuracy of the engine a robot will run, scored like eager."""

from __future__ import annotations

import json

import pytest

from offroadseg.cli import main


def _evaluate(checkpoint, out, *extra) -> dict:
    assert main(["evaluate", str(checkpoint), "--tta", "none", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_an_engine_is_scored_on_the_split_like_eager(toy_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    eager = _evaluate(toy_checkpoint, tmp_path / "eager.json", "--engine", "eager")
    ort = _evaluate(toy_checkpoint, tmp_path / "ort.json", "--engine", "onnxruntime")
    assert eager["engine"]["engine"] == "eager" and ort["engine"]["engine"] == "onnxruntime"
    assert ort["images"] == eager["images"] > 0
    # the same model in ONNX Runtime: the same scores up to float rounding at a few pixels
    assert ort["miou"] == pytest.approx(eager["miou"], abs=0.01)
    assert ort["pixel_accuracy"] == pytest.approx(eager["pixel_accuracy"], abs=0.01)
    plain = _evaluate(toy_checkpoint, tmp_path / "plain.json")
    assert plain["engine"] is None


def test_auto_times_on_training_frames_not_the_scored_split(toy_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    report = _evaluate(
        toy_checkpoint,
        tmp_path / "auto.json",
        "--engine",
        "auto",
        "--engine-candidates",
        "onnxruntime",
        "--engine-frames",
        "2",
        "--device",
        "cpu",
    )
    printed = capsys.readouterr().out
    assert "engine frames: 2 of split 'train'" in printed
    assert [t["engine"] for t in report["engine"]["trials"]] == ["eager", "onnxruntime"]
    assert report["engine"]["requested"] == "auto" and f"engine: {report['engine']['engine']}" in printed


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--engine", "tensorrt"], "--engine 'tensorrt' is not one of auto"),
        (["--engine", "auto", "--engine-frames", "0"], "--engine-frames 0: must be >= 1"),
        (["--engine", "eager", "--ensemble", "SELF"], "not an ensemble"),
    ],
)
def test_bad_engine_arguments_are_one_line_exit_2(toy_checkpoint, tmp_path, capsys, extra, message):
    out = tmp_path / "e.json"
    extra = [str(toy_checkpoint) if a == "SELF" else a for a in extra]
    assert main(["evaluate", str(toy_checkpoint), "--json", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()

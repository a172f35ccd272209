"""``offroadseg predict --engine``: a named engine, and ``auto``'s choice written to OUT/engine.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from offroadseg.cli import main
from offroadseg.inference.engines import MARGIN, MIN_AGREEMENT


def _masks(folder) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((folder / "masks").glob("*.png"))}


def test_named_engine_matches_eager_and_records_the_engine(toy_checkpoint, inputs, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    eager, ort = tmp_path / "eager", tmp_path / "ort"
    assert main(["predict", str(toy_checkpoint), str(inputs), "--out", str(eager), "--engine", "eager"]) == 0
    assert (
        main(["predict", str(toy_checkpoint), str(inputs), "--out", str(ort), "--engine", "onnxruntime"]) == 0
    )
    a, b = _masks(eager), _masks(ort)
    assert a.keys() == b.keys() and a
    same = sum(int((a[k] == b[k]).sum()) for k in a) / sum(a[k].size for k in a)
    assert same > 0.99  # the same model in ONNX Runtime
    record = json.loads((ort / "engine.json").read_text())
    assert record["engine"] == "onnxruntime" and record["requested"] == "onnxruntime"
    assert record["trials"] == []  # named, not chosen
    assert "(onnxruntime, cpu" in capsys.readouterr().out  # the run line names the runtime
    # engine.json belongs to the folder's results: a later run without --engine replaces it, not keeps it stale
    assert main(["predict", str(toy_checkpoint), str(inputs), "--out", str(ort), "--overwrite"]) == 0
    assert not (ort / "engine.json").exists() and _masks(ort)


def test_auto_times_the_candidates_and_keeps_the_rule(toy_checkpoint, inputs, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "auto"
    args = ["predict", str(toy_checkpoint), str(inputs), "--out", str(out), "--engine", "auto"]
    assert (
        main([*args, "--engine-candidates", "onnxruntime,onnxruntime_int8_dynamic", "--device", "cpu"]) == 0
    )
    record = json.loads((out / "engine.json").read_text())
    trials = {t["engine"]: t for t in record["trials"]}
    assert list(trials) == ["eager", "onnxruntime", "onnxruntime_int8_dynamic"]
    assert all(t["ms"] is not None and t["ms"] > 0 for t in trials.values())
    assert trials["eager"]["agreement"] == 1.0
    assert trials["onnxruntime"]["agreement"] > 0.99
    chosen = trials[record["engine"]]
    eager_ms = trials["eager"]["ms"]
    if record["engine"] == "eager":  # nothing faithful was clearly faster
        assert not any(
            t["agreement"] >= MIN_AGREEMENT and t["ms"] <= eager_ms * (1 - MARGIN)
            for e, t in trials.items()
            if e != "eager"
        )
    else:  # the fastest faithful one, clearly faster than eager
        assert chosen["agreement"] >= MIN_AGREEMENT and chosen["ms"] <= eager_ms * (1 - MARGIN)
        faithful = [t["ms"] for t in trials.values() if t["agreement"] >= MIN_AGREEMENT]
        assert chosen["ms"] == min(faithful)
    printed = capsys.readouterr().out
    assert f"engine: {record['engine']}, chosen by auto" in printed
    assert len(_masks(out)) == len(list(inputs.iterdir()))


def test_auto_with_multi_scale_tta_tries_only_pytorch_engines(toy_checkpoint, inputs, tmp_path):
    out = tmp_path / "scales"
    args = ["predict", str(toy_checkpoint), str(inputs), "--out", str(out), "--engine", "auto"]
    assert (
        main([*args, "--tta", "scales", "--scales", "1,1.25", "--engine-candidates", "eager,onnxruntime"])
        == 0
    )
    record = json.loads((out / "engine.json").read_text())
    assert [t["engine"] for t in record["trials"]] == ["eager"]
    assert "multi-scale TTA" in record["note"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--engine", "tensorrt"], "--engine 'tensorrt' is not one of auto"),
        (["--engine", "auto", "--engine-candidates", "eager,fast"], "unknown engine 'fast'"),
        (["--engine", "auto", "--engine-frames", "0"], "--engine-frames 0: must be >= 1"),
    ],
)
def test_bad_engine_arguments_are_one_line_exit_2(toy_checkpoint, inputs, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert main(["predict", str(toy_checkpoint), str(inputs), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (out / "engine.json").exists()


def test_engine_refuses_an_onnx_file_and_an_ensemble(toy_checkpoint, inputs, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "m.onnx"
    assert main(["export", str(toy_checkpoint), "--out", str(model)]) == 0
    capsys.readouterr()
    assert main(["predict", str(model), str(inputs), "--out", str(tmp_path / "o"), "--engine", "auto"]) == 2
    assert "runs one .ckpt checkpoint" in capsys.readouterr().err
    ens = ["--ensemble", str(toy_checkpoint), "--engine", "eager"]
    assert main(["predict", str(toy_checkpoint), str(inputs), "--out", str(tmp_path / "e"), *ens]) == 2
    assert "not an ensemble" in capsys.readouterr().err

"""OpenVINO (optional extra): ``export --format openvino``, ``predict model.xml`` and the OpenVINO engines.

Skipped where the ``openvino`` package is not installed (``pip install 'offroadseg[openvino]'``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from offroadseg.cli import main

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")


def _masks(folder) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((folder / "masks").glob("*.png"))}


def _same(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return sum(int((a[k] == b[k]).sum()) for k in a) / sum(a[k].size for k in a)


@pytest.fixture(scope="module")
def eager_masks(toy_checkpoint, toy_root, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("eager")
    images = str(toy_root / "val" / "Color_Images")
    assert main(["predict", str(toy_checkpoint), images, "--out", str(out), "--overwrite"]) == 0
    return _masks(out)


def test_export_openvino_then_predict_the_xml(toy_checkpoint, toy_root, eager_masks, tmp_path, capsys):
    xml = tmp_path / "model.xml"
    assert main(["export", str(toy_checkpoint), "--format", "openvino", "--out", str(xml)]) == 0
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    out = tmp_path / "pred"
    gt = toy_root / "val" / "Segmentation"
    assert (
        main(
            ["predict", str(xml), str(toy_root / "val" / "Color_Images"), "--out", str(out), "--gt", str(gt)]
        )
        == 0
    )
    assert "(openvino, cpu" in capsys.readouterr().out
    assert _same(_masks(out), eager_masks) > 0.99  # the same model, in OpenVINO f32
    assert "miou" in json.loads((out / "metrics.json").read_text())
    # the .bin is part of the model: without it, one line and exit 2
    xml.with_suffix(".bin").unlink()
    assert (
        main(["predict", str(xml), str(toy_root / "val" / "Color_Images"), "--out", str(tmp_path / "x")]) == 2
    )
    assert "needs the .xml and its .bin" in capsys.readouterr().err


def test_a_foreign_xml_is_refused_in_one_line(toy_root, tmp_path, capsys):
    xml = tmp_path / "other.xml"
    xml.write_text("<net/>")
    xml.with_suffix(".bin").write_bytes(b"")
    assert (
        main(["predict", str(xml), str(toy_root / "val" / "Color_Images"), "--out", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other.xml" in err[0]


@pytest.mark.parametrize("engine", ["openvino", "openvino_int8"])
def test_openvino_engines_in_predict(toy_checkpoint, toy_root, eager_masks, tmp_path, engine):
    out = tmp_path / engine
    images = str(toy_root / "val" / "Color_Images")
    assert main(["predict", str(toy_checkpoint), images, "--out", str(out), "--engine", engine]) == 0
    same = _same(_masks(out), eager_masks)
    # f32 is the same computation; int8 (NNCF, calibrated on the inputs) is close, not equal
    assert same > (0.99 if engine == "openvino" else 0.5)
    assert json.loads((out / "engine.json").read_text())["engine"] == engine


def test_openvino_bf16_runs_or_is_refused_by_the_cpu(toy_checkpoint, toy_root, tmp_path, capsys):
    from offroadseg.machine import cpu_info

    out = tmp_path / "bf16"
    images = str(toy_root / "val" / "Color_Images")
    code = main(["predict", str(toy_checkpoint), images, "--out", str(out), "--engine", "openvino_bf16"])
    if cpu_info()["native_bf16"]:
        assert code == 0 and len(_masks(out)) == 3
    else:
        assert code == 2 and "needs a CPU with native bf16" in capsys.readouterr().err

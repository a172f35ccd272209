"""--exclude-classes: logits masked before upsampling/softmax/argmax, in PyTorch, evaluate and ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from offroadseg.cli import main
from offroadseg.data.io import read_image
from offroadseg.errors import ConfigError
from offroadseg.inference.checkpoint import load_checkpoint
from offroadseg.inference.predictor import (
    EXCLUDED_LOGIT,
    ExcludeClasses,
    Predictor,
    TTAConfig,
    mask_excluded,
    parse_excluded_classes,
)
from offroadseg.taxonomy import load_taxonomy

TAX = load_taxonomy("duality")


@pytest.fixture(scope="module")
def loaded(toy_checkpoint):
    return load_checkpoint(toy_checkpoint)


def _images(toy_root) -> list[np.ndarray]:
    images = [read_image(p) for p in sorted((toy_root / "val" / "Color_Images").glob("*.png"))]
    rng = np.random.default_rng(0)
    return images + [rng.integers(0, 256, size=(90, 150, 3), dtype=np.uint8)]


def _most_predicted(preds: list[np.ndarray]) -> int:
    return int(np.bincount(np.concatenate([p.ravel() for p in preds])).argmax())


def test_names_are_parsed_against_the_taxonomy() -> None:
    names = TAX.names
    assert parse_excluded_classes(f"{names[3]},{names[1]}", TAX) == (1, 3)
    assert parse_excluded_classes([names[2].upper()], TAX) == (2,)
    assert parse_excluded_classes(None, TAX) == ()
    with pytest.raises(ConfigError, match=r"unknown class 'Puddel'.*valid names: " + names[0]):
        parse_excluded_classes("Puddel", TAX)
    with pytest.raises(ConfigError, match="every class"):
        parse_excluded_classes(",".join(names), TAX)


def test_mask_and_module_agree_and_keep_other_logits() -> None:
    logits = torch.randn(2, 5, 3, 4)
    masked = mask_excluded(logits, (1, 3))
    assert (masked[:, [1, 3]] == EXCLUDED_LOGIT).all()
    assert torch.equal(masked[:, [0, 2, 4]], logits[:, [0, 2, 4]])
    module = ExcludeClasses(torch.nn.Identity(), (1, 3), 5)
    assert torch.equal(module(logits), masked)
    assert torch.equal(mask_excluded(logits, ()), logits)


@pytest.mark.parametrize("tta", ["none", "flip+scales"])
def test_excluded_class_never_predicted_others_unchanged(loaded, toy_root, tta) -> None:
    images = _images(toy_root)
    t = TTAConfig(tta=tta)
    base = Predictor.from_loaded(loaded, tta=t, device="cpu").predict(images)
    excluded = _most_predicted(base)
    predictor = Predictor.from_loaded(loaded, tta=t, device="cpu", exclude=(excluded,))
    preds = predictor.predict(images)
    for before, after in zip(base, preds, strict=True):
        assert not (after == excluded).any()
        kept = before != excluded
        assert kept.any() and (~kept).any()
        if tta == "none":  # logits of the other classes untouched: the same argmax
            np.testing.assert_array_equal(after[kept], before[kept])
    # Scores: the excluded class has zero probability under TTA averaging.
    if tta != "none":
        assert float(predictor.scores(images[:1])[0][excluded].max()) == 0.0


def test_evaluate_with_excluded_classes(toy_checkpoint, loaded, tmp_path, capsys) -> None:
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(toy_checkpoint), "--split", "val", "--json", str(out)]) == 0
    plain = json.loads(out.read_text())
    confusion = np.array(plain["confusion_matrix"])
    excluded = int(confusion.sum(axis=0).argmax())  # the most predicted class
    name = loaded.taxonomy.names[excluded]
    assert main(["evaluate", str(toy_checkpoint), "--exclude-classes", name, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["excluded_classes"] == [name]
    assert np.array(result["confusion_matrix"]).sum(axis=0)[excluded] == 0
    assert "excluded classes (no pixel predicted): " + name in capsys.readouterr().out


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_unknown_class_is_one_line_and_exit_2(toy_checkpoint, toy_root, tmp_path, capsys, command) -> None:
    args = {
        "predict": [
            "predict",
            str(toy_checkpoint),
            str(toy_root / "val" / "Color_Images"),
            "--out",
            str(tmp_path),
        ],
        "evaluate": ["evaluate", str(toy_checkpoint)],
        "export": ["export", str(toy_checkpoint), "--out", str(tmp_path / "m.onnx")],
    }[command]
    assert main([*args, "--exclude-classes", "Puddel"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown class 'Puddel'" in err[0] and "valid names:" in err[0]
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_export_masks_inside_the_graph(loaded, toy_root, tmp_path) -> None:
    from offroadseg.inference.onnx import export_onnx, load_onnx_predictor, read_onnx_metadata

    images = _images(toy_root)[:3]  # training-size images: the static model's size
    base = Predictor.from_loaded(loaded, device="cpu").predict(images)
    excluded = _most_predicted(base)
    path = tmp_path / "excl.onnx"
    export_onnx(loaded, path, exclude=(excluded,))
    assert read_onnx_metadata(path)["excluded_classes"] == [loaded.taxonomy.names[excluded]]
    onnx_preds = load_onnx_predictor(path, device="cpu").predict(images)  # no exclusion asked at run time
    torch_preds = Predictor.from_loaded(loaded, device="cpu", exclude=(excluded,)).predict(images)
    agree = sum(int((a == b).sum()) for a, b in zip(onnx_preds, torch_preds, strict=True))
    assert agree / sum(p.size for p in onnx_preds) > 0.999
    assert not any((p == excluded).any() for p in onnx_preds)

"""Checkpoint ensembles: mean softmax probabilities in predict, evaluate and ONNX export."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from offroadseg.cli import main
from offroadseg.data.io import read_image
from offroadseg.errors import ConfigError
from offroadseg.inference.checkpoint import load_checkpoint, save_inference_checkpoint
from offroadseg.inference.ensemble import EnsemblePredictor, mean_probabilities
from offroadseg.inference.evaluate import evaluate_loaded
from offroadseg.inference.predictor import Predictor, TTAConfig
from offroadseg.taxonomy import taxonomy_from_dict

TAX = taxonomy_from_dict(
    {
        "name": "three",
        "classes": [
            {"values": [0], "name": "ground", "color": [0, 0, 0]},
            {"values": [1], "name": "bush", "color": [0, 255, 0]},
            {"values": [2], "name": "sky", "color": [0, 0, 255]},
        ],
    }
)


def _variant(source, path, *, seed=None, image_size=None, rename=None):
    """A copy of a checkpoint: head perturbed (``seed``), trained at another size, or a class renamed."""
    loaded = load_checkpoint(source)
    loaded.hyper_parameters = copy.deepcopy(loaded.hyper_parameters)
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in loaded.model.head.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    if image_size is not None:
        loaded.hyper_parameters["config"]["data"]["image_size"] = list(image_size)
    if rename is not None:
        loaded.hyper_parameters["taxonomy"]["classes"][0]["name"] = rename
    save_inference_checkpoint(loaded, path, embed_backbone=False)
    return path


@pytest.fixture(scope="module")
def ckpts(toy_checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ensemble")
    return {
        "a": toy_checkpoint,
        "b": _variant(toy_checkpoint, tmp / "b.ckpt", seed=1),
        "big": _variant(toy_checkpoint, tmp / "big.ckpt", seed=2, image_size=(70, 112)),
        "other": _variant(toy_checkpoint, tmp / "other.ckpt", rename="Ground"),
    }


@pytest.fixture(scope="module")
def members(ckpts):
    return {k: load_checkpoint(v) for k, v in ckpts.items()}


def _images(toy_root):
    images = [read_image(p) for p in sorted((toy_root / "val" / "Color_Images").glob("*.png"))]
    rng = np.random.default_rng(3)
    return images + [rng.integers(0, 256, size=(45, 61, 3), dtype=np.uint8)]


def _constant(logits):
    """A forward function whose logits are ``logits`` at every pixel."""
    values = torch.tensor(logits, dtype=torch.float32).view(1, -1, 1, 1)

    def forward(images):
        return values.expand(images.shape[0], -1, *images.shape[-2:]).clone()

    return forward


def _fake(logits, tta="none", exclude=()):
    return Predictor(
        _constant(logits), taxonomy=TAX, image_size=(28, 28), tta=TTAConfig(tta=tta), exclude=exclude
    )


# ---- the averaging itself ----------------------------------------------------------------------
def test_mean_probabilities_known_answer():
    a = torch.tensor([0.0, 0.0]).view(2, 1, 1)  # p = (1/2, 1/2)
    b = torch.tensor([math.log(3.0), 0.0]).view(2, 1, 1)  # p = (3/4, 1/4)
    mean = mean_probabilities([a, b])
    torch.testing.assert_close(mean.flatten(), torch.tensor([0.625, 0.375]), rtol=0, atol=1e-7)
    probs = [torch.tensor([0.2, 0.8]).view(2, 1, 1), torch.tensor([0.6, 0.4]).view(2, 1, 1)]
    torch.testing.assert_close(
        mean_probabilities(probs, probabilities=True).flatten(), torch.tensor([0.4, 0.6])
    )
    with pytest.raises(ValueError):
        mean_probabilities([])


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_two_members_with_controlled_logits_give_the_mean_softmax(tta):
    # the logit mean (-1, 0, -1) would pick class 1; the probability mean (.061, .442, .498) picks 2
    la, lb = [-4.0, -4.0, 2.0], [2.0, 4.0, -4.0]
    ensemble = EnsemblePredictor([_fake(la, tta), _fake(lb, tta)])
    image = np.zeros((28, 42, 3), dtype=np.uint8)
    scores = ensemble.scores([image])[0]
    expected = (torch.tensor(la).softmax(0) + torch.tensor(lb).softmax(0)) / 2
    assert scores.shape == (3, 28, 42)
    torch.testing.assert_close(scores, expected.view(3, 1, 1).expand(3, 28, 42), rtol=0, atol=1e-6)
    assert int(expected.argmax()) == 2
    assert (ensemble.predict_one(image) == 2).all()


def test_excluded_class_has_zero_mean_probability_and_others_renormalise():
    ensemble = EnsemblePredictor([_fake([6.0, 0.0, 0.0], exclude=(0,)), _fake([0.0, 4.0, 0.0], exclude=(0,))])
    scores = ensemble.scores([np.zeros((28, 28, 3), dtype=np.uint8)])[0][:, 0, 0]
    expected = (torch.tensor([0.5, 0.5]) + torch.tensor([4.0, 0.0]).softmax(0)) / 2
    assert float(scores[0]) == 0.0
    torch.testing.assert_close(scores[1:], expected, rtol=0, atol=1e-6)


def test_members_must_share_taxonomy_tta_and_exclusions():
    other = taxonomy_from_dict(
        {
            **TAX.to_dict(),
            "classes": [*TAX.to_dict()["classes"][:2], {"values": [3], "name": "sky", "color": [0, 0, 255]}],
        }
    )
    b = Predictor(_constant([0.0, 0.0, 0.0]), taxonomy=other, image_size=(28, 28))
    with pytest.raises(
        ConfigError, match=r"different taxonomies \(class 'sky' has label values \[2\] vs \[3\]\)"
    ):
        EnsemblePredictor([_fake([0.0, 0.0, 0.0]), b], sources=["a.ckpt", "b.ckpt"])
    with pytest.raises(ConfigError, match="one TTA mode"):
        EnsemblePredictor([_fake([0.0, 0.0, 0.0]), _fake([0.0, 0.0, 0.0], tta="flip")])
    with pytest.raises(ConfigError, match="at least one"):
        EnsemblePredictor([])


# ---- real checkpoints ----------------------------------------------------------------------------
def test_one_member_is_the_checkpoint_bit_for_bit(members, toy_root):
    images = _images(toy_root)
    for tta in ("none", "flip"):
        t = TTAConfig(tta=tta)
        alone = Predictor.from_loaded(members["a"], tta=t, device="cpu")
        ensemble = EnsemblePredictor.from_checkpoints([members["a"]], tta=t, device="cpu")
        for x, y in zip(alone.scores(images), ensemble.scores(images), strict=True):
            assert torch.equal(x, y)
    # the same checkpoint twice: exactly its softmax probabilities
    twice = EnsemblePredictor.from_checkpoints([members["a"], members["a"]], device="cpu")
    alone = Predictor.from_loaded(members["a"], device="cpu")
    for x, y in zip(alone.scores(images), twice.scores(images), strict=True):
        assert torch.equal(x.softmax(0), y)
    # evaluate: one member is evaluate_loaded itself
    assert (
        evaluate_loaded([members["a"]], device="cpu").scores
        == evaluate_loaded(members["a"], device="cpu").scores
    )


def test_members_of_different_training_sizes_each_run_at_their_own(members, toy_root):
    images = _images(toy_root)
    a, big = members["a"], members["big"]
    ensemble = EnsemblePredictor.from_checkpoints([a, big], device="cpu", tta=TTAConfig(tta="flip"))
    assert [m.image_size for m in ensemble.members] == [(56, 84), (70, 112)]
    sa = Predictor.from_loaded(a, device="cpu", tta=TTAConfig(tta="flip")).scores(images)
    sb = Predictor.from_loaded(big, device="cpu", tta=TTAConfig(tta="flip")).scores(images)
    for image, x, y, got in zip(images, sa, sb, ensemble.scores(images), strict=True):
        assert got.shape[-2:] == image.shape[:2]
        torch.testing.assert_close(got, (x + y) / 2, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.sum(0), torch.ones(image.shape[:2]), rtol=0, atol=1e-5)


def _masks(folder):
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((folder / "masks").glob("*.png"))}


def test_predict_and_evaluate_cli_agree_on_the_ensemble(ckpts, members, toy_root, inputs, tmp_path, capsys):
    out = tmp_path / "pred"
    gt = toy_root / "val" / "Segmentation"
    ens = ["--ensemble", str(ckpts["b"]), "--ensemble", str(ckpts["big"])]
    assert main(["predict", str(ckpts["a"]), str(inputs), "--out", str(out), "--gt", str(gt), *ens]) == 0
    printed = capsys.readouterr().out
    assert "an ensemble of 3 checkpoints" in printed and "input 56x84, 70x112" in printed
    # masks in the dataset's own encoding, equal to the ensemble predictor's ids
    ensemble = EnsemblePredictor.from_checkpoints(
        [members["a"], members["b"], members["big"]], device="cpu", batch_size=1
    )
    for name, mask in _masks(out).items():
        ids = ensemble.predict_one(read_image(inputs / f"{name}.png"))
        np.testing.assert_array_equal(mask, members["a"].taxonomy.decode(ids))
    report = tmp_path / "eval.json"
    assert main(["evaluate", str(ckpts["a"]), *ens, "--json", str(report)]) == 0
    assert "evaluating ensemble of 3 checkpoints: " in capsys.readouterr().out
    result = json.loads(report.read_text())
    assert result["checkpoints"] == [str(ckpts[k]) for k in ("a", "b", "big")]
    predicted = json.loads((out / "metrics.json").read_text())
    assert result["confusion_matrix"] == predicted["confusion_matrix"]
    single = tmp_path / "single.json"
    assert main(["evaluate", str(ckpts["a"]), "--json", str(single)]) == 0
    assert json.loads(single.read_text())["confusion_matrix"] != result["confusion_matrix"]


def test_tta_and_exclusion_apply_to_the_ensemble(members, toy_root):
    images = _images(toy_root)
    ensemble = EnsemblePredictor.from_checkpoints(
        [members["a"], members["b"]], device="cpu", tta=TTAConfig(tta="flip"), exclude=(0, 3)
    )
    for image, scores in zip(images, ensemble.scores(images), strict=True):
        assert float(scores[[0, 3]].abs().max()) == 0.0
        torch.testing.assert_close(scores.sum(0), torch.ones(image.shape[:2]), rtol=0, atol=1e-5)
    assert not any(np.isin(ids, [0, 3]).any() for ids in ensemble.predict(images))


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_other_taxonomy_is_refused_in_one_line(command, ckpts, inputs, tmp_path, capsys):
    args = {
        "predict": ["predict", str(ckpts["a"]), str(inputs), "--out", str(tmp_path / "o")],
        "evaluate": ["evaluate", str(ckpts["a"])],
        "export": ["export", str(ckpts["a"]), "--out", str(tmp_path / "m.onnx")],
    }[command]
    assert main([*args, "--ensemble", str(ckpts["other"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different taxonomies" in err[0] and "other.ckpt" in err[0] and "fix:" in err[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.onnx").exists()


def test_ensemble_of_onnx_files_or_into_a_ckpt_is_refused(ckpts, inputs, tmp_path, capsys):
    fake = tmp_path / "m.onnx"
    fake.write_bytes(b"x")
    assert (
        main(["predict", str(fake), str(inputs), "--out", str(tmp_path / "o"), "--ensemble", str(ckpts["b"])])
        == 2
    )
    assert "export the ensemble into one file" in capsys.readouterr().err
    out = tmp_path / "m.ckpt"
    assert (
        main(
            ["export", str(ckpts["a"]), "--format", "ckpt", "--out", str(out), "--ensemble", str(ckpts["b"])]
        )
        == 2
    )
    assert "one ONNX graph" in capsys.readouterr().err and not out.exists()


# ---- ONNX ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dynamic", [False, True])
def test_onnx_ensemble_is_one_graph_that_matches_pytorch(members, ckpts, toy_root, tmp_path, dynamic, capsys):
    import onnxruntime as ort

    from offroadseg.inference.onnx import load_onnx_predictor, read_onnx_metadata

    path = tmp_path / "ens.onnx"
    args = ["export", str(ckpts["a"]), "--ensemble", str(ckpts["b"]), "--out", str(path)]
    assert main([*args, *(["--dynamic"] if dynamic else [])]) == 0
    assert "ensemble of 2 checkpoints in one graph" in capsys.readouterr().out
    meta = read_onnx_metadata(path)
    assert [m["source"] for m in meta["ensemble"]] == [ckpts["a"].name, "b.ckpt"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert len(session.get_inputs()) == 1 and len(session.get_outputs()) == 1
    x = torch.randn(3, 3, 56, 84, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = mean_probabilities([members[k].model(x) for k in ("a", "b")])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0]).softmax(1)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert float((got - expected).abs().max()) < 1e-4
    # through the predictors, on images of the export size: the same masks
    images = _images(toy_root)[:-1]
    onnx_ids = load_onnx_predictor(path, device="cpu").predict(images)
    torch_ids = EnsemblePredictor.from_checkpoints([members["a"], members["b"]], device="cpu").predict(images)
    for a, b in zip(onnx_ids, torch_ids, strict=True):
        np.testing.assert_array_equal(a, b)


def test_onnx_ensemble_sizes_and_exclusion(members, ckpts, tmp_path, capsys):
    import onnxruntime as ort

    path = tmp_path / "mixed.onnx"
    args = ["export", str(ckpts["a"]), "--ensemble", str(ckpts["big"]), "--out", str(path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "trained at different sizes" in err and "--height" in err and "\n" not in err and not path.exists()
    assert main([*args, "--height", "56", "--width", "84", "--exclude-classes", "Background,Sky"]) == 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 56, 84, generator=torch.Generator().manual_seed(1))
    excl = [members["a"].taxonomy.names.index(n) for n in ("Background", "Sky")]
    with torch.no_grad():
        logits = [members[k].model(x) for k in ("a", "big")]
    for lg in logits:
        lg[:, excl] = -1e4
    expected = mean_probabilities(logits)
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert float(got.softmax(1)[:, excl].max()) == 0.0
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert float((got.softmax(1) - expected).abs().max()) < 1e-4


# ---- predict carries on past bad inputs (issue 19) ------------------------------------------------
def test_predict_carries_on_past_bad_and_missing_inputs(ckpts, inputs, tmp_path, capsys, monkeypatch):
    from PIL import Image as PILImage

    big = np.zeros((200, 200, 3), dtype=np.uint8)
    PILImage.fromarray(big).save(inputs / "bomb.png")
    (inputs / "truncated.png").write_bytes((inputs / "bomb.png").read_bytes()[:60])
    monkeypatch.setenv("OFFROADSEG_MAX_IMAGE_PIXELS", "10000")  # 200x200 is over the limit
    out = tmp_path / "out"
    missing = tmp_path / "nope.png"
    code = main(
        ["predict", str(ckpts["a"]), str(inputs), str(missing), "--out", str(out), "--batch-size", "2"]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    skipped = [line for line in err if line.startswith("skipped ")]
    assert len(skipped) == 3
    assert any(
        "bomb.png is 200x200 = 40,000 pixels" in s and "OFFROADSEG_MAX_IMAGE_PIXELS" in s for s in skipped
    )
    assert any("truncated.png" in s for s in skipped) and any("nope.png" in s for s in skipped)
    assert err[-1].startswith("3 of 6 inputs failed")
    assert len(list((out / "masks").glob("*.png"))) == 3


def test_predict_with_only_missing_inputs_is_one_line(ckpts, tmp_path, capsys):
    assert main(["predict", str(ckpts["a"]), str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nope.png does not exist" in err

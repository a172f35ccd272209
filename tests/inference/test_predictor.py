"""Predictor: resizing, TTA, sliding windows, upsampling to the input size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from offroadseg.data.datasets import normalize, resize_image
from offroadseg.errors import ConfigError
from offroadseg.inference.checkpoint import load_checkpoint
from offroadseg.inference.predictor import Predictor, TTAConfig
from offroadseg.inference.sliding import sliding_logits, window_starts
from offroadseg.taxonomy import load_taxonomy


@pytest.fixture(scope="module")
def loaded(toy_checkpoint):
    return load_checkpoint(toy_checkpoint)


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [(56, 84), (40, 60), (90, 150), (90, 70)]
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_window_starts_cover_the_length_and_end_at_the_edge():
    assert window_starts(50, 56, 0.33) == [0]
    starts = window_starts(250, 84, 0.33)
    assert starts[0] == 0 and starts[-1] == 250 - 84
    assert all(b - a <= 84 for a, b in zip(starts, starts[1:], strict=False))
    assert window_starts(168, 84, 0.0) == [0, 84]
    with pytest.raises(ValueError, match="overlap"):
        window_starts(100, 10, 1.0)


def test_sliding_equals_a_full_pass_for_a_pointwise_network():
    conv = torch.nn.Conv2d(3, 5, kernel_size=1)
    x = torch.randn(2, 3, 70, 150)
    with torch.no_grad():
        full = conv(x)
        tiled = sliding_logits(conv, x, window=(28, 56), overlap=0.4, batch_size=3)
        small = sliding_logits(conv, x[..., :20, :40], window=(28, 56), overlap=0.4)  # padded window
    torch.testing.assert_close(tiled, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(small, full[..., :20, :40], rtol=1e-5, atol=1e-5)


def test_predict_without_tta_matches_the_model_on_the_resized_image(loaded):
    predictor = Predictor.from_loaded(loaded, tta=TTAConfig(), device="cpu")
    image = _images()[2]
    with torch.no_grad():
        logits = loaded.model(normalize(resize_image(image, (56, 84)))[None])
        expected = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False).argmax(
            1
        )[0]
    ids = predictor.predict_one(image)
    assert ids.dtype == np.uint8 and ids.shape == image.shape[:2]
    np.testing.assert_array_equal(ids, expected.numpy())


@pytest.mark.parametrize(
    ("tta", "sliding"),
    [
        ("none", False),
        ("flip", False),
        ("scales", False),
        ("flip+scales", False),
        ("none", True),
        pytest.param("flip+scales", True, marks=pytest.mark.slow),
    ],
)
def test_every_mode_returns_ids_at_each_input_size(loaded, tta, sliding):
    predictor = Predictor.from_loaded(loaded, tta=TTAConfig(tta, (0.5, 1.0), sliding, 0.25), device="cpu")
    images = _images()
    out = predictor.predict(images)
    assert [o.shape for o in out] == [im.shape[:2] for im in images]
    assert all(o.max() < loaded.taxonomy.num_classes for o in out)
    if tta != "none":
        scores = predictor.scores(images[:1])[0]
        torch.testing.assert_close(scores.sum(0), torch.ones(scores.shape[1:]), rtol=1e-4, atol=1e-4)


def test_flip_tta_is_the_mean_of_both_softmaxes(loaded):
    predictor = Predictor.from_loaded(loaded, tta=TTAConfig("flip"), device="cpu")
    image = _images()[0]
    x = normalize(image)[None]
    with torch.no_grad():
        a = loaded.model(x).softmax(1)
        b = loaded.model(x.flip(-1)).softmax(1).flip(-1)
    torch.testing.assert_close(predictor.scores([image])[0], ((a + b) / 2)[0], rtol=1e-5, atol=1e-5)


def test_sliding_window_only_tiles_images_larger_than_the_training_size(loaded):
    predictor = Predictor.from_loaded(loaded, tta=TTAConfig(sliding_window=True), device="cpu")
    assert predictor.uses_sliding(90, 150) and not predictor.uses_sliding(56, 84)
    assert not Predictor.from_loaded(loaded, tta=TTAConfig(), device="cpu").uses_sliding(90, 150)


def test_scaled_sizes_are_patch_multiples(loaded):
    predictor = Predictor.from_loaded(loaded, device="cpu")
    assert predictor.scaled_size(1.0) == (56, 84)
    for s in (0.5, 0.75, 1.25, 2.0):
        assert all(v % 14 == 0 and v >= 14 for v in predictor.scaled_size(s))


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="tta"):
        TTAConfig("mirror")
    with pytest.raises(ConfigError, match="scales"):
        TTAConfig("scales", (0.0, 1.0))
    with pytest.raises(ConfigError, match="overlap"):
        TTAConfig(window_overlap=1.5)
    tax = load_taxonomy("duality")
    with pytest.raises(ConfigError, match="--dynamic"):
        Predictor(
            lambda x: x, taxonomy=tax, image_size=(56, 84), tta=TTAConfig("scales"), fixed_size=(56, 84)
        )


def test_evaluate_uses_the_predictor_for_tta(loaded, toy_root):
    from offroadseg.inference.evaluate import evaluate_loaded

    plain = evaluate_loaded(loaded, data_root=str(toy_root), device="cpu")
    flip = evaluate_loaded(loaded, data_root=str(toy_root), device="cpu", tta=TTAConfig("flip"))
    same = evaluate_loaded(loaded, data_root=str(toy_root), device="cpu", tta=TTAConfig(sliding_window=True))
    assert flip.images == plain.images == 3
    assert 0.0 <= flip.scores["miou"] <= 1.0
    # toy images have the training size: sliding is not used and the scores are the plain ones
    assert same.scores["confusion_matrix"] == plain.scores["confusion_matrix"]


def test_tta_config_from_eval_settings_and_overrides():
    from offroadseg.config import EvalConfig

    ev = EvalConfig(tta="flip", scales=[0.5, 1.0], sliding_window=True, window_overlap=0.25)
    assert TTAConfig.from_eval(ev) == TTAConfig("flip", (0.5, 1.0), True, 0.25)
    assert TTAConfig.from_eval(vars(ev)) == TTAConfig("flip", (0.5, 1.0), True, 0.25)
    assert TTAConfig.from_eval({}) == TTAConfig()  # e.g. an ONNX file without eval metadata
    over = TTAConfig.from_eval(ev, tta="scales", scales=None, sliding_window=False, window_overlap=None)
    assert over == TTAConfig("scales", (0.5, 1.0), False, 0.25)

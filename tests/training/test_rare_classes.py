"""Rare-class training options end to end: repeat-factor sampling, sqrt weights, OHEM + Lovász, uper."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from toydata import make_toy_dataset, toy_config

from offroadseg.data.datasets import read_label
from offroadseg.data.io import write_png
from offroadseg.data.sampling import RepeatFactorSampler
from offroadseg.data.stats import image_class_presence
from offroadseg.errors import ConfigError
from offroadseg.taxonomy import load_taxonomy
from offroadseg.training.caches import attach_caches
from offroadseg.training.datamodule import SegDataModule
from offroadseg.training.features import FeatureDataset
from offroadseg.training.run import build_module, train

RARE = 9  # a class painted into one training image only
N_TRAIN = 6


@pytest.fixture(scope="module")
def rare_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_toy_dataset(
        tmp_path_factory.mktemp("rare"), n_train=N_TRAIN, n_val=2, n_test=0, classes=(0, 3)
    )
    tax = load_taxonomy("duality")
    label = root / "train" / "Segmentation" / "train_0002.png"
    ids = tax.encode(read_label(label, tax))
    ids[10:30, 20:50] = RARE
    write_png(label, tax.decode(ids).astype(np.uint16))
    return root


def _cfg(root: Path, run_dir: Path, extra: list[str] | None = None):
    overrides = [
        f"data.cache.dir={run_dir / 'cache'}",
        "data.cache.features=true",
        "data.repeat_factor_threshold=1.0",
        "loss.name=ohem+lovasz",
        "loss.class_weights=sqrt",
        "loss.ohem_min_kept=100",
        "train.epochs=1",
    ]
    return toy_config(root, run_dir, overrides=overrides + (extra or []))


def test_feature_cache_training_draws_the_rare_frame_more_often(rare_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(rare_root, tmp_path)
    dm = SegDataModule(cfg)
    module = build_module(cfg, dm, None)
    attach_caches(cfg, dm, module)
    assert isinstance(dm.train_dataset, FeatureDataset)
    loader = dm.train_dataloader()
    sampler = loader.sampler
    assert isinstance(sampler, RepeatFactorSampler)
    # Presence read from the feature store's masks is the one the label files give.
    from_labels = image_class_presence(dm.train_samples, dm.taxonomy)
    np.testing.assert_array_equal(dm.train_presence, from_labels)
    rare_index = [s.name for s in dm.train_samples].index("train_0002")
    expected = np.ones(N_TRAIN)
    expected[rare_index] = math.sqrt(1.0 / (1 / N_TRAIN))  # f_rare = 1/6, t = 1
    np.testing.assert_allclose(sampler.factors.numpy(), expected)
    counts = np.zeros(N_TRAIN)
    for epoch in range(50):
        sampler.set_epoch(epoch)
        counts += np.bincount(list(sampler), minlength=N_TRAIN)
    # Every epoch draws round(5 + sqrt(6)) = 7 frames; the rare frame sqrt(6) times as often as the others.
    assert counts.sum() == 50 * 7
    common = np.delete(counts, rare_index)
    assert counts[rare_index] / common.mean() == pytest.approx(math.sqrt(6), rel=0.08)


def test_negative_threshold_is_refused(rare_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.repeat_factor_threshold=-0.1 must be a finite number >= 0"):
        SegDataModule(_cfg(rare_root, tmp_path, ["data.repeat_factor_threshold=-0.1"]))


@pytest.mark.slow
def test_uper_trains_from_the_feature_cache_with_the_rare_class_recipe(
    rare_root: Path, tmp_path: Path
) -> None:
    cfg = _cfg(
        rare_root,
        tmp_path,
        [
            "model.backbone.name=dinov2_vits14",
            "model.backbone.layers=[2, 5, 8, 11]",
            "model.head.name=uper",
            "model.head.channels=16",
            "data.image_size=[28, 42]",
        ],
    )
    result = train(cfg)
    assert result.caches["features"]
    assert len(result.history) == 1 and math.isfinite(result.history[0]["train_loss"])
    w = result.class_weights
    assert w is not None and len(w) == 11
    # sqrt weights: the rare class gets the largest weight, capped at max_weight; absent classes 0.
    assert w[RARE] == max(w) and w[RARE] <= cfg.loss.max_weight and w[1] == 0.0


def test_every_epoch_validates_with_repeat_factor_sampling(rare_root: Path, tmp_path: Path) -> None:
    """5 epochs of repeat-factor sampling (one frame per batch): 5 validations, 5 history rows."""
    cfg = _cfg(
        rare_root,
        tmp_path,
        # seed 1: the old sampler drew 8 frames in epoch 1 and 7 in the others (validation then never ran)
        ["train.epochs=5", "train.batch_size=1", "train.seed=1", "loss.name=ce", "loss.class_weights=none"],
    )
    reported: list[dict] = []
    result = train(cfg, on_epoch=reported.append)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5]
    assert all(h.get("val_miou") is not None for h in result.history)
    # the progress hook of cv/tune folds saw each validation epoch once, as its history row
    assert [{k: v for k, v in r.items() if k != "epochs"} for r in reported] == result.history
    assert {r["epochs"] for r in reported} == {5}
    import json

    assert len(json.loads((tmp_path / "history.json").read_text())) == 5

"""App fixtures: a tiny trained checkpoint, a second one with a renamed class, a running app."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the app tests need the [app] extra (gradio)")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def app_data(tmp_path_factory) -> Path:
    """A toy Duality-layout set: 4 train, 4 val images of 56x84 (val: the browsed split)."""
    from toydata import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("app-toy"), n_train=4, n_val=4)


@pytest.fixture(scope="session")
def app_checkpoint(app_data, tmp_path_factory) -> Path:
    """The tiny random ViT + conv head, one epoch on the toy set (a few seconds on CPU)."""
    from toydata import toy_config

    from offroadseg.training.run import train

    cfg = toy_config(
        app_data,
        tmp_path_factory.mktemp("app-run"),
        overrides=["train.epochs=1", "train.accelerator=cpu", "data.num_workers=0"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(cfg)
    assert result.best_checkpoint is not None
    return Path(result.best_checkpoint)


@pytest.fixture(scope="session")
def other_taxonomy_checkpoint(app_checkpoint, tmp_path_factory) -> Path:
    """The same weights with one class renamed: a checkpoint of another taxonomy."""
    import torch

    from offroadseg.inference.checkpoint import read_checkpoint

    ckpt = read_checkpoint(app_checkpoint)
    ckpt["hyper_parameters"]["taxonomy"]["classes"][6]["name"] = "Cacti"
    path = tmp_path_factory.mktemp("other") / "cacti.ckpt"
    torch.save(ckpt, path)
    return path


def scene(seed: int, size: tuple[int, int] = (60, 90)) -> np.ndarray:
    """A generated uint8 RGB test image: horizontal colour bands that differ with the seed."""
    from offroadseg.taxonomy import load_taxonomy

    rng = np.random.default_rng(seed)
    tax = load_taxonomy("duality")
    h, w = size
    classes = rng.choice([0, 3, 9, 10], size=3, replace=False)
    band = np.minimum(np.arange(h) * 3 // h, 2)
    ids = np.repeat(classes[band][:, None], w, axis=1)
    rgb = tax.colors[ids].astype(np.int16) + rng.integers(-20, 21, size=(h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)

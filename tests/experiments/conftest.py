"""Tiny trained checkpoints for the adaptation tests (random test ViT, one epoch on the toy set)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from toydata import make_toy_dataset, toy_config


@pytest.fixture(scope="session")
def adapt_toy_root(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("adapt_toy"), n_train=4, n_val=3, n_test=3)


def _train(root: Path, run_dir: Path, overrides: list[str]) -> Path:
    from offroadseg.training.run import train

    cfg = toy_config(root, run_dir, overrides=["train.epochs=1", *overrides])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(cfg)
    assert result.best_checkpoint is not None
    return Path(result.best_checkpoint)


@pytest.fixture(scope="session")
def ppm_checkpoint(adapt_toy_root, tmp_path_factory) -> Path:
    """PPM head (GroupNorm), the last backbone block trained: the cached-tokens path."""
    run = tmp_path_factory.mktemp("ppm_run")
    return _train(
        adapt_toy_root,
        run,
        ["model.head.name=ppm", "model.head.channels=16", "model.backbone.train_blocks=1"],
    )


@pytest.fixture(scope="session")
def linear_checkpoint(adapt_toy_root, tmp_path_factory) -> Path:
    """Linear head (batch norm), frozen backbone: the --method bn path."""
    return _train(adapt_toy_root, tmp_path_factory.mktemp("linear_run"), ["model.head.name=linear"])

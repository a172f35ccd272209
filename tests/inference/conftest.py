"""A tiny trained checkpoint (random test ViT + PPM head, one epoch on the toy set), built once."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
from toydata import make_toy_dataset

from offroadseg.config import config_from_dict

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (real images for checks; may be absent)."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), n_train=4, n_val=3)


@pytest.fixture(scope="session")
def toy_checkpoint(toy_root, tmp_path_factory) -> Path:
    from offroadseg.training.run import train

    run_dir = tmp_path_factory.mktemp("run")
    cfg = config_from_dict(
        {
            "data": {"root": str(toy_root), "image_size": [56, 84], "num_workers": 0},
            "model": {
                "backbone": {"name": "dinov2_test", "weights": "random"},
                "head": {"name": "ppm", "channels": 32},
            },
            # precision 32: the tests compare runtimes exactly; auto would run the predictor's backbone in
            # bf16 on a CPU with native bf16 (tests/inference/test_predictor_precision.py)
            "train": {
                "epochs": 1,
                "batch_size": 2,
                "lr": 1e-3,
                "optimizer": "adamw",
                "accelerator": "cpu",
                "precision": "32",
            },
            "run": {"dir": str(run_dir), "progress": False},
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(cfg)
    assert result.best_checkpoint is not None
    return Path(result.best_checkpoint)


@pytest.fixture()
def inputs(toy_root, tmp_path) -> Path:
    """A writable copy of the toy set's validation images (tests add bad files to it)."""
    folder = tmp_path / "images"
    shutil.copytree(toy_root / "val" / "Color_Images", folder)
    return folder

"""Shared fixtures: the toy dataset, the tiny-model config, and the optional real data."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    # Keep caches (converted weights, decoded data, features) out of the user's home during tests,
    # but share them across the session.
    os.environ.setdefault("OFFROADSEG_CACHE_DIR", str(REPO / ".pytest_cache" / "offroadseg-cache"))
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated dataset in the Duality layout (read-only for tests)."""
    from toydata import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy"), n_train=6, n_val=3, n_test=2)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a clean skip when this checkout has no shared folder."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.cuda`` tests need a CUDA GPU: skipped, with the reason, where there is none."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible); scripts/gpu_check.sh runs these")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

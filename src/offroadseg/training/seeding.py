"""Reproducible runs: every random draw of a training run comes from ``train.seed``.

Where the randomness is and what seeds it:

- model init, DataLoader shuffling (``RandomSampler`` draws from torch's global generator),
  feature-cache view and flip draws (``FeatureDataset`` uses torch's global generator in the
  main process): :func:`seed_run` (Lightning's ``seed_everything``);
- albumentations: a ``Compose`` keeps its own generators, which global seeds do not reach.
  :class:`TransformSeeder` reseeds the main process's pipeline at each epoch from
  ``(seed, epoch, rank)``; :func:`seed_worker` reseeds each DataLoader worker's copy from
  the worker's torch seed (itself drawn from the main generator), so workers differ;
- torch flags (``train.deterministic``): deterministic algorithms (warn where none exists),
  cuDNN autotuning off; Lightning's ``Trainer(deterministic=...)`` sets them;
- resume: :class:`RngState` saves the python, numpy, torch (and CUDA) generators in every
  checkpoint and restores them, so the epochs after a resume draw what an uninterrupted
  run draws. A ``DistributedSampler`` needs nothing saved: it shuffles from ``seed + epoch``.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import get_worker_info

__all__ = ["RngState", "TransformSeeder", "derive_seed", "seed_run", "seed_worker"]


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from integers (``SeedSequence``: close inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def seed_run(seed: int) -> None:
    """Seed python, numpy and torch, and tell DataLoader workers to seed themselves."""
    L.seed_everything(seed, workers=True, verbose=False)


def _reseed_transform(dataset: Any, seed: int) -> None:
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Lightning's worker seeding, plus the worker's own
    albumentations stream (without it every worker repeats the parent's draws)."""
    pl_worker_init_function(worker_id)
    info = get_worker_info()
    if info is not None:
        _reseed_transform(info.dataset, torch.initial_seed() & 0xFFFFFFFF)


class TransformSeeder(L.Callback):
    """Reseeds the training augmentation pipeline at the start of every epoch from
    ``(seed, epoch, rank)``: a resumed epoch draws the same augmentations as the first time."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if dm is not None:
            seed = derive_seed(self.seed, trainer.current_epoch, trainer.global_rank)
            _reseed_transform(getattr(dm, "train_dataset", None), seed)


def _numpy_state_plain() -> tuple:
    """numpy's global generator state with its key array as a tensor: checkpoints are read with
    ``weights_only=True``, which refuses pickled numpy arrays."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


class RngState(L.Callback):
    """Saves the global random generators in every checkpoint and restores them on resume.

    Checkpoints are written at the end of an epoch, after validation; the next epoch's
    shuffle, augmentations and feature-view draws all come from these generators.
    """

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": _numpy_state_plain(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        name, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            cuda = state_dict["cuda"]
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)

"""DataModule: datasets and loaders for a config (workers and pinned memory by default)."""

from __future__ import annotations

import os

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from offroadseg.config import Config
from offroadseg.data.datasets import Sample, SegmentationDataset, collate, list_samples, taxonomy_for
from offroadseg.data.sampling import RepeatFactorSampler, dataset_class_presence, repeat_factors
from offroadseg.data.transforms import build_train_transform
from offroadseg.errors import ConfigError
from offroadseg.taxonomy import Taxonomy
from offroadseg.training.seeding import seed_worker


def default_workers(requested: int) -> int:
    """-1 means: leave one core for the main process, at most 4 workers."""
    if requested >= 0:
        return requested
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class UnpaddedDistributedSampler(DistributedSampler):
    """Each process takes every world_size-th sample, none repeated.

    torch's DistributedSampler pads the split so every process gets as many samples as
    the others, which counts some validation images twice in the confusion matrix.
    Validation needs no equal shares (no gradient sync), so it gets exact shards.
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.indices = list(range(rank, len(dataset), num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class IgnoredItems(Dataset):
    """The items of ``dataset`` with every label pixel set to ``ignore_index``.

    A placeholder shard for a process that has no validation image of its own (fewer images
    than processes): it runs the validation loop, and so joins the metric sync and the
    checkpoint barrier, while adding nothing to the confusion matrix, loss or batch IoU.
    """

    def __init__(self, dataset: Dataset, ignore_index: int) -> None:
        self.dataset, self.ignore_index = dataset, ignore_index
        self.collate = getattr(dataset, "collate", collate)
        self.loader_workers = getattr(dataset, "loader_workers", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        for key in ("mask", "full_mask"):
            if key in item:
                item[key] = torch.full_like(item[key], self.ignore_index)
        return item


class SegDataModule(L.LightningDataModule):
    """Train and val loaders of a config.

    ``train_dataset`` / ``val_dataset`` may be replaced before ``fit`` (the caches do).
    """

    def __init__(self, cfg: Config, taxonomy: Taxonomy | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        t = cfg.data.repeat_factor_threshold
        if t < 0:
            raise ConfigError(
                f"data.repeat_factor_threshold={t} must be >= 0; fix: 0 (off) or e.g. 0.1 "
                "(classes in fewer than 10% of the training images are oversampled)"
            )
        self.taxonomy = taxonomy or taxonomy_for(cfg.data)
        self.train_samples: list[Sample] = list_samples(cfg.data, cfg.data.train_split)
        self.val_samples: list[Sample] = list_samples(cfg.data, cfg.data.val_split)
        size = tuple(cfg.data.image_size)
        self.train_dataset: Dataset = SegmentationDataset(
            self.train_samples,
            self.taxonomy,
            image_size=size,
            transform=build_train_transform(cfg.data.augment, ignore_index=self.taxonomy.ignore_index),
            unknown=cfg.data.unknown_values,
        )
        self.val_dataset: Dataset = SegmentationDataset(
            self.val_samples,
            self.taxonomy,
            image_size=size,
            unknown=cfg.data.unknown_values,
            full_res=cfg.eval.full_resolution,
        )

    def repeat_factor_sampler(self) -> RepeatFactorSampler | None:
        """The training sampler for ``data.repeat_factor_threshold > 0`` (None when it is 0).

        Class presence is computed once per training dataset (the caches may replace it).
        """
        t = self.cfg.data.repeat_factor_threshold
        if t == 0:
            return None
        dataset = self.train_dataset
        if getattr(self, "_presence_of", None) is not dataset:
            self.train_presence = dataset_class_presence(
                dataset, self.train_samples, self.taxonomy, unknown=self.cfg.data.unknown_values
            )
            self._presence_of = dataset
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return RepeatFactorSampler(
            dataset,
            repeat_factors(self.train_presence, t),
            seed=self.cfg.train.seed,
            num_replicas=world,
            rank=rank,
        )

    def _loader(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        shuffle: bool,
        exact_shards: bool = False,
        sampler: Sampler | None = None,
    ) -> DataLoader:
        trainer = self.trainer
        if sampler is not None:
            shuffle = False  # the sampler shuffles
        elif exact_shards and trainer is not None and trainer.world_size > 1:
            sampler = UnpaddedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank
            )
            if len(sampler) == 0 and len(dataset) > 0:
                dataset = IgnoredItems(dataset, self.taxonomy.ignore_index)
                sampler.indices = [0]
        workers = getattr(dataset, "loader_workers", None)  # a cached dataset may know better
        workers = default_workers(self.cfg.data.num_workers) if workers is None else workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            # deterministic runs restart workers each epoch: their seeds then come from the main
            # generator, which a checkpoint saves, so a resumed epoch draws what the first run drew
            persistent_workers=workers > 0 and not self.cfg.train.deterministic,
            worker_init_fn=seed_worker if workers > 0 else None,
            collate_fn=getattr(dataset, "collate", collate),
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(
            self.train_dataset,
            batch_size=self.cfg.train.batch_size,
            shuffle=True,
            sampler=self.repeat_factor_sampler(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(
            self.val_dataset, batch_size=self.cfg.eval.batch_size, shuffle=False, exact_shards=True
        )

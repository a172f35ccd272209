"""Frozen-feature cache: same scores as the uncached path, reuse, invalidation, failures, flips."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from toydata import make_toy_dataset

from offroadseg.config import config_from_dict
from offroadseg.data.cache import CacheWarning
from offroadseg.data.datasets import collate
from offroadseg.machine import cpu_info
from offroadseg.metrics import ConfusionMatrixMetric, full_resolution_predictions
from offroadseg.models.segmentor import Segmentor
from offroadseg.training.caches import attach_caches
from offroadseg.training.datamodule import SegDataModule
from offroadseg.training.features import FeatureDataset, hflip_mask
from offroadseg.training.module import SegmentationModule
from offroadseg.training.run import train

SIZE = [42, 70]  # 70 is a multiple of 14, 42 too


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return make_toy_dataset(tmp_path / "toy", n_train=4, n_val=2, size=(48, 80))


def _cfg(root: Path, cache_dir: Path, *, size=SIZE, augment=None, backbone=None, **cache):
    return config_from_dict(
        {
            "data": {
                "root": str(root),
                "image_size": list(size),
                "num_workers": 0,
                "augment": augment or {},
                "cache": {"dir": str(cache_dir), **cache},
            },
            "model": {
                "backbone": {"name": "dinov2_test", "weights": "random", **(backbone or {})},
                "head": {"name": "conv"},
            },
            "train": {"epochs": 1, "batch_size": 2, "lr": 0.01},
            "eval": {"batch_size": 2},
            "run": {"dir": str(cache_dir.parent / "run"), "progress": False},
        }
    )


def _setup(cfg, seed: int = 0):
    L.seed_everything(seed, verbose=False)
    dm = SegDataModule(cfg)
    module = SegmentationModule(cfg.to_dict(), dm.taxonomy.names, ignore_index=dm.taxonomy.ignore_index)
    return dm, module


def _val_confusion(module, dataset) -> torch.Tensor:
    cm = ConfusionMatrixMetric(module.num_classes, ignore_index=255)
    module.eval()
    collate_fn = getattr(dataset, "collate", collate)
    with torch.no_grad():
        for start in range(0, len(dataset), 2):
            batch = collate_fn([dataset[i] for i in range(start, min(start + 2, len(dataset)))])
            preds, targets = full_resolution_predictions(module._logits(batch).float(), batch)
            for p, t in zip(preds, targets, strict=True):
                cm.update(p, t)
    return cm.compute()


@pytest.mark.parametrize("size", [SIZE, [40, 64]])  # multiple of the patch, and padded
def test_cached_val_scores_equal_uncached(toy: Path, tmp_path: Path, size) -> None:
    """Same weights: val confusion from cached fp16 features vs the backbone run every step.

    Tolerance: fp16 storage moves a few logits across an argmax tie; at most 0.5 % of the
    pixels may change class (observed: 0 on this set).
    """
    cfg = _cfg(toy, tmp_path / "c", size=size, decoded=True, features=True)
    dm, module = _setup(cfg)
    plain = _val_confusion(module, dm.val_dataset)
    report = attach_caches(cfg, dm, module)
    assert report.features and report.decoded and isinstance(dm.val_dataset, FeatureDataset)
    cached = _val_confusion(module, dm.val_dataset)
    assert int(cached.sum()) == int(plain.sum()) == 2 * 48 * 80  # full-resolution masks
    changed = (plain - cached).abs().sum().item() / 2
    assert changed <= 0.005 * plain.sum().item()


def test_decoded_only_val_scores_identical(toy: Path, tmp_path: Path) -> None:
    cfg = _cfg(toy, tmp_path / "c", decoded=True)
    dm, module = _setup(cfg)
    plain = _val_confusion(module, dm.val_dataset)
    attach_caches(cfg, dm, module)
    assert torch.equal(_val_confusion(module, dm.val_dataset), plain)


def test_reuse_does_not_run_backbone(toy: Path, tmp_path: Path, backbone_calls) -> None:
    calls = backbone_calls
    cfg = _cfg(toy, tmp_path / "c", features=True)
    dm, module = _setup(cfg)
    first = attach_caches(cfg, dm, module)
    assert calls[0] == 4 + 2 and all(s["built"] for s in first.stores) and len(first.stores) == 1
    assert first.build_s > 0 and first.nbytes > 0
    dm, module = _setup(cfg)
    second = attach_caches(cfg, dm, module)
    assert calls[0] == 6 and not any(s["built"] for s in second.stores)
    assert [s["path"] for s in second.stores] == [s["path"] for s in first.stores]


@pytest.mark.parametrize(
    "change",
    [
        {"backbone": {"weights": "random:1"}},  # other random weights: the backbone digest changes
        {"backbone": {"name": "dinov2_test_reg"}},
        {"backbone": {"layers": 2}},
        {"size": [28, 56]},
    ],
)
def test_invalidated_by_backbone_or_size(toy: Path, tmp_path: Path, backbone_calls, change) -> None:
    calls = backbone_calls
    cfg = _cfg(toy, tmp_path / "c", features=True)
    dm, module = _setup(cfg)
    attach_caches(cfg, dm, module)
    assert calls[0] == 6
    cfg2 = _cfg(toy, tmp_path / "c", features=True, **change)
    dm, module = _setup(cfg2)
    report = attach_caches(cfg2, dm, module)
    assert calls[0] == 12 and all(s["built"] for s in report.stores)


def test_changed_file_invalidates(toy: Path, tmp_path: Path, backbone_calls) -> None:
    calls = backbone_calls
    cfg = _cfg(toy, tmp_path / "c", features=True)
    attach_caches(cfg, *_setup(cfg))
    make_toy_dataset(toy, n_train=4, n_val=2, size=(48, 80), seed=5)  # new content, new mtimes
    report = attach_caches(cfg, *_setup(cfg))
    assert calls[0] == 12 and all(s["built"] for s in report.stores)


def test_a_copied_dataset_reuses_the_feature_store_without_the_backbone(
    toy: Path, tmp_path: Path, backbone_calls
) -> None:
    """A dataset copied to another place (new paths, new mtimes, same bytes) finds its store by content:
    re-keyed and moved, not rebuilt (a YCOR store is 4.8-9.2 GiB and minutes of backbone on a CPU)."""
    import shutil

    calls = backbone_calls
    cfg = _cfg(toy, tmp_path / "c", features=True)
    dm1, module1 = _setup(cfg)
    first = attach_caches(cfg, dm1, module1)
    assert calls[0] == 6
    built = _store_features(dm1)
    copy = tmp_path / "copy"
    shutil.copytree(toy, copy, copy_function=shutil.copy)  # shutil.copy: new mtimes
    cfg2 = _cfg(copy, tmp_path / "c", features=True)
    dm, module = _setup(cfg2)
    second = attach_caches(cfg2, dm, module)
    assert calls[0] == 6 and not any(s["built"] for s in second.stores)
    assert [s["path"] for s in second.stores] != [s["path"] for s in first.stores]
    assert len(list((tmp_path / "c" / "features").iterdir())) == 1
    reused = _store_features(dm)
    assert built.keys() == reused.keys() and all(np.array_equal(built[k], reused[k]) for k in built)


def test_truncated_feature_array_is_rebuilt(toy: Path, tmp_path: Path, backbone_calls) -> None:
    calls = backbone_calls
    cfg = _cfg(toy, tmp_path / "c", features=True)
    first = attach_caches(cfg, *_setup(cfg))
    feat = Path(first.stores[0]["path"]) / "hidden2.npy"
    with feat.open("r+b") as f:
        f.truncate(feat.stat().st_size // 2)
    with pytest.warns(CacheWarning, match="not usable"):
        report = attach_caches(cfg, *_setup(cfg))
    assert report.stores[0]["built"]
    assert calls[0] == 6 + 6
    assert any("not usable" in m for m in report.messages)


def test_failure_mid_build_leaves_no_store(toy: Path, tmp_path: Path, monkeypatch) -> None:
    real = Segmentor.forward_hidden
    calls = [0]

    def failing(self, images, indices):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("simulated crash while writing the cache")
        return real(self, images, indices)

    monkeypatch.setattr(Segmentor, "forward_hidden", failing)
    cfg = _cfg(toy, tmp_path / "c", features=True)
    with pytest.raises(RuntimeError, match="simulated"):
        attach_caches(cfg, *_setup(cfg))
    assert list((tmp_path / "c" / "features").iterdir()) == []


def test_augmentations_turn_feature_cache_off_with_message(toy: Path, tmp_path: Path) -> None:
    cfg = _cfg(toy, tmp_path / "c", augment={"hflip": 0.5, "blur": 0.2}, decoded=True, features=True)
    dm, module = _setup(cfg)
    with pytest.warns(CacheWarning, match="blur"):
        report = attach_caches(cfg, dm, module)
    assert not report.features and report.decoded
    assert "data.cache.views" in report.messages[0]


def test_full_fine_tuning_turns_feature_cache_off(toy: Path, tmp_path: Path) -> None:
    cfg = _cfg(toy, tmp_path / "c", backbone={"train_blocks": 2}, features=True)
    dm, module = _setup(cfg)
    with pytest.warns(CacheWarning, match="train_blocks=2 trains the whole backbone"):
        report = attach_caches(cfg, dm, module)
    assert not report.features and report.stores == []


def test_views_store_augmented_copies(toy: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        toy, tmp_path / "c", augment={"hflip": 0.5, "brightness_contrast": 1.0}, features=True, views=3
    )
    dm, module = _setup(cfg)
    report = attach_caches(cfg, dm, module)
    assert report.features and report.views == 3
    feats = dm.train_dataset.arrays["hidden2"]
    images = dm.train_dataset.arrays["images"]
    assert feats.shape[0] == (4 + 2) * 3  # every frame of train + val, 3 views each
    assert not np.array_equal(feats[0], feats[1])  # views of one image differ
    assert not np.array_equal(images[0], images[1])
    # View 0 is the plain image: the one the uncached validation would see.
    store_sample = dm.val_dataset.samples[0]
    plain = SegDataModule(cfg).val_dataset.loader(0)[0]
    assert store_sample == dm.val_samples[0]
    assert np.array_equal(images[dm.val_dataset.frames[0] * 3], plain)
    # Seeded: a second build (other cache folder) writes the same views.
    cfg2 = _cfg(
        toy, tmp_path / "c2", augment={"hflip": 0.5, "brightness_contrast": 1.0}, features=True, views=3
    )
    dm2, module2 = _setup(cfg2)
    attach_caches(cfg2, dm2, module2)
    assert np.array_equal(dm2.train_dataset.arrays["hidden2"], feats)


def test_hflip_mask_aligns_with_padded_feature_flip() -> None:
    """Flipping a right-padded image's features moves the padding left: the mask follows."""
    mask = np.arange(2 * 5, dtype=np.uint8).reshape(2, 5)
    assert (hflip_mask(mask, 5, 255) == mask[:, ::-1]).all()
    flipped = hflip_mask(mask, 7, 255)  # padded to 7: columns 0-1 of the flipped crop were padding
    assert (flipped[:, :2] == 255).all()
    assert (flipped[:, 2:] == mask[:, ::-1][:, :3]).all()


def test_feature_hflip_matches_image_hflip_for_a_flip_symmetric_backbone(toy: Path, tmp_path: Path) -> None:
    """With flip-symmetric position embeddings the feature-space flip is exact up to fp16."""
    cfg = _cfg(toy, tmp_path / "c", features=True)
    dm, module = _setup(cfg)
    emb = module.model.backbone.model.embeddings
    with torch.no_grad():
        emb.patch_embeddings.projection.weight.copy_(
            (emb.patch_embeddings.projection.weight + emb.patch_embeddings.projection.weight.flip(-1)) / 2
        )
        pos = emb.position_embeddings
        grid = pos[:, 1:].reshape(1, 4, 4, -1)
        pos[:, 1:] = ((grid + grid.flip(2)) / 2).reshape(1, 16, -1)
    image = dm.val_dataset[0]["image"][None]
    direct = module.model.forward_features(image.flip(-1))[0]
    via_cache = module.model.forward_features(image)[0].half().float().flip(-1)
    cos = torch.nn.functional.cosine_similarity(direct, via_cache, dim=1).mean()
    assert cos > 0.999


def test_train_end_to_end_with_caches(toy: Path, tmp_path: Path) -> None:
    cfg = _cfg(toy, tmp_path / "c", augment={"hflip": 0.5}, decoded=True, features=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = train(cfg)
        cfg.run.dir = str(tmp_path / "run2")
        second = train(cfg)
    assert first.caches["features"] and first.caches["build_s"] > 0
    assert not any(s["built"] for s in second.caches["stores"])
    # Reusing the stores trains exactly like building them (the build draws no random numbers).
    assert first.history[-1]["val_miou"] == second.history[-1]["val_miou"]
    assert first.history[-1]["train_loss"] == second.history[-1]["train_loss"]
    assert first.best_checkpoint is not None and first.best_checkpoint.is_file()


def _store_features(dm) -> dict[str, np.ndarray]:
    arrays = dm.train_dataset.arrays  # the frame store's memory maps
    return {n: np.asarray(a, dtype=np.float32) for n, a in arrays.items() if n.startswith("hidden")}


@pytest.mark.skipif(
    not cpu_info()["native_bf16"], reason="this CPU has no native bf16 (AVX512-BF16 / AMX-BF16)"
)
def test_bf16_store_on_a_bf16_cpu_has_its_own_key_and_matches_fp32(
    toy: Path, tmp_path: Path, backbone_calls
) -> None:
    """train.precision auto on a bf16 CPU: the store is built in bf16 (recorded in the report and the
    metadata), under a key of its own, and its fp16 features agree with the fp32 build per token."""
    cfg32 = _cfg(toy, tmp_path / "c", features=True)
    cfg32.train.precision = "32"
    dm, module = _setup(cfg32)
    fp32 = attach_caches(cfg32, dm, module)
    a = _store_features(dm)
    cfg = _cfg(toy, tmp_path / "c", features=True)  # train.precision: auto
    dm, module = _setup(cfg)
    bf16 = attach_caches(cfg, dm, module)
    b = _store_features(dm)
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert backbone_calls[0] == 12 and all(s["built"] for s in bf16.stores)  # not the fp32 store
    assert bf16.stores[0]["path"] != fp32.stores[0]["path"] and bf16.stores[0]["precision"] == "bf16"
    assert bf16.to_dict()["precision"] == "bf16"
    assert a.keys() == b.keys() and a
    for name in a:
        cosine = torch.nn.functional.cosine_similarity(
            torch.from_numpy(b[name]), torch.from_numpy(a[name]), dim=-1
        )
        assert cosine.mean() > 0.999 and not np.array_equal(a[name], b[name]), name


def test_a_store_holding_more_blocks_serves_a_config_that_needs_fewer(
    toy: Path, tmp_path: Path, backbone_calls
) -> None:
    """A study's store (``data.cache.blocks`` a superset) serves ``train``/``cv`` of a config whose own
    blocks it covers: no backbone pass, no second store; other backbone weights build their own."""
    from offroadseg.training.caches import stored_blocks

    calls = backbone_calls
    small = _cfg(toy, tmp_path / "c", features=True)
    needs = stored_blocks(small, _setup(small)[1])
    wide = _cfg(toy, tmp_path / "c", features=True, blocks=sorted({0, *needs}))
    dm, module = _setup(wide)
    first = attach_caches(wide, dm, module)
    assert calls[0] == 6 and all(s["built"] for s in first.stores)
    dm, module = _setup(small)
    second = attach_caches(small, dm, module)
    assert calls[0] == 6 and not any(s["built"] for s in second.stores)
    assert [s["path"] for s in second.stores] == [s["path"] for s in first.stores]
    assert len(list((tmp_path / "c" / "features").iterdir())) == 1
    assert torch.isfinite(_val_confusion(module, dm.val_dataset)).all()
    other = _cfg(toy, tmp_path / "c", features=True, backbone={"weights": "random:1"})
    third = attach_caches(other, *_setup(other))
    assert calls[0] == 12 and all(s["built"] for s in third.stores)

"""Backbone adaptation from the feature cache: train_blocks, LoRA, per-frame stores, token flips."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from toydata import make_toy_dataset

from offroadseg.cli import main
from offroadseg.config import config_from_dict, dump_config
from offroadseg.data.datasets import collate
from offroadseg.errors import ConfigError
from offroadseg.models.archs import ARCHS
from offroadseg.training.caches import attach_caches, feature_datasets, open_frame_store
from offroadseg.training.datamodule import SegDataModule
from offroadseg.training.features import FeatureDataset, hflip_mask, hflip_tokens
from offroadseg.training.module import SegmentationModule

pytestmark = pytest.mark.filterwarnings("ignore::offroadseg.models.weights.RandomWeightsWarning")

ARCH = "dinov2_test4"  # the tiny test arch with 4 blocks, so 0 < k < L covers k = 1 and 2


@pytest.fixture(autouse=True)
def _deep_arch(monkeypatch):
    spec = ARCHS["dinov2_test"]
    monkeypatch.setitem(
        ARCHS, ARCH, dataclasses.replace(spec, config={**spec.config, "num_hidden_layers": 4})
    )


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return make_toy_dataset(tmp_path / "toy", n_train=4, n_val=2, size=(48, 80))


def _cfg(root: Path, tmp: Path, *, size=(40, 64), backbone=None, head="conv", augment=None, **cache):
    return config_from_dict(
        {
            "data": {
                "root": str(root),
                "image_size": list(size),
                "num_workers": 0,
                "augment": augment or {},
                "cache": {"dir": str(tmp / "cache"), "features": True, **cache},
            },
            "model": {
                "backbone": {"name": ARCH, "weights": "random", "layers": [0, 2, 3], **(backbone or {})},
                "head": {"name": head},
            },
            "train": {"epochs": 1, "batch_size": 2, "lr": 0.05, "backbone_lr_mult": 1.0},
            "eval": {"batch_size": 2},
            "run": {"dir": str(tmp / "run"), "progress": False},
        }
    )


def _setup(cfg, seed: int = 0):
    L.seed_everything(seed, verbose=False)
    dm = SegDataModule(cfg)
    module = SegmentationModule(cfg.to_dict(), dm.taxonomy.names, ignore_index=dm.taxonomy.ignore_index)
    return dm, module


@pytest.mark.parametrize("k", [1, 2])
def test_cached_path_agrees_with_uncached(toy: Path, tmp_path: Path, k: int) -> None:
    """Same weights: logits from the fp16 cache (blocks L-k.. run per step) vs the whole backbone.

    Measured on this set: argmax agreement 100 %, max |logit difference| 1.2e-4 (k=1) and 7.8e-5
    (k=2), from the fp16 storage of the tokens entering block L-k; asserted: >= 99.9 % and <= 1e-3.
    """
    cfg = _cfg(toy, tmp_path, backbone={"train_blocks": k})
    cfg.train.precision = "32"  # the fp16 storage alone (a bf16 CPU's auto pass: test_feature_cache.py)
    dm, module = _setup(cfg)
    plain_items = [dm.val_dataset[i] for i in range(len(dm.val_dataset))]
    report = attach_caches(cfg, dm, module)
    assert report.features and isinstance(dm.val_dataset, FeatureDataset)
    model = module.model
    assert model.backbone.cache_start == 4 - k
    # The cache holds only what comes before block L-k: changing the trained part afterwards
    # must change cached and uncached logits alike.
    with torch.no_grad():
        for p in [*model.backbone.blocks[4 - k :].parameters(), *model.head.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    module.eval()
    with torch.no_grad():
        plain = model(collate(plain_items)["image"])
        cached_batch = FeatureDataset.collate([dm.val_dataset[i] for i in range(len(dm.val_dataset))])
        assert cached_batch["tokens"].dtype == torch.float16 and len(cached_batch["early"]) == 4 - k - 1
        cached = module._logits(cached_batch)
    assert cached.shape == plain.shape == (2, module.num_classes, 40, 64)
    agree = (cached.argmax(1) == plain.argmax(1)).float().mean().item()
    diff = (cached - plain).abs().max().item()
    assert agree >= 0.999, agree
    assert diff <= 1e-3, diff
    assert plain.abs().max().item() > 0.1  # not trivially small logits


def test_store_key_changes_with_train_blocks_and_a_store_holding_the_needs_serves(
    toy: Path, tmp_path: Path
) -> None:
    """layers [0, 2, 3] of 4 blocks: k = 0 stores hidden states 1, 3, 4; k = 1 needs 1, 3 (served by it);
    k = 2 needs 1, 2 (built: no store holds 2); k = 1 again: the k = 0 store."""
    rows = []
    for k in (0, 1, 2, 1):
        cfg = _cfg(toy, tmp_path, backbone={"train_blocks": k})
        (row,) = attach_caches(cfg, *_setup(cfg)).stores
        rows.append(row)
    assert [r["built"] for r in rows] == [True, False, True, False]
    assert rows[0]["path"] == rows[1]["path"] == rows[3]["path"] != rows[2]["path"]


def test_hflip_tokens_known_answer() -> None:
    prefix = np.array([[100.0], [101.0]])  # class + one register token
    grid = np.arange(6, dtype=np.float64).reshape(6, 1)  # h=2, w=3: rows [0 1 2], [3 4 5]
    tokens = np.concatenate([prefix, grid])
    flipped = hflip_tokens(tokens, (2, 3), prefix=2)
    assert flipped[:, 0].tolist() == [100, 101, 2, 1, 0, 5, 4, 3]
    assert hflip_tokens(grid, (2, 3))[:, 0].tolist() == [2, 1, 0, 5, 4, 3]


@pytest.mark.parametrize("k", [0, 1])
def test_token_flip_aligns_logits_with_the_flipped_mask(toy: Path, tmp_path: Path, k: int) -> None:
    """Blocks after the embeddings treat tokens as a set, so flipping the grid entering them flips
    their output exactly; with a per-token head the flipped item's logit at each pixel is the plain
    item's at the mirrored pixel (in padded coordinates), and the flipped mask follows the same map."""
    cfg = _cfg(toy, tmp_path, head="linear", backbone={"train_blocks": k}, augment={"hflip": 1.0})
    dm, module = _setup(cfg)
    attach_caches(cfg, dm, module)
    store_ds = dm.train_dataset
    reads = dict(tokens_from=store_ds.tokens_from, early_from=store_ds.early_from)
    plain_ds = FeatureDataset(
        _store_of(store_ds), store_ds.frames, **reads, train=True, patch_size=14, hflip=0.0, with_image=True
    )
    flip_ds = FeatureDataset(
        _store_of(store_ds), store_ds.frames, **reads, train=True, patch_size=14, hflip=1.0, with_image=True
    )
    plain, flipped = plain_ds[0], flip_ds[0]
    padded_w = 70  # 64 padded to 5 patches
    assert torch.equal(
        flipped["mask"], torch.from_numpy(hflip_mask(plain["mask"].numpy(), padded_w, 255)).long()
    )
    assert torch.equal(flipped["image"], plain["image"].flip(-1)) and plain["image"].shape == (3, 42, 70)
    module.eval()
    with torch.no_grad():
        lp = _padded_logits(module, plain)
        lf = _padded_logits(module, flipped)
    torch.testing.assert_close(lf, lp.flip(-1), atol=1e-4, rtol=1e-4)


def _store_of(ds: FeatureDataset):
    from offroadseg.data.cache import check_store
    from offroadseg.training.features import FrameStore

    store = check_store(ds.path, ds.key)
    frames = [None] * len(store.arrays["masks"])
    for f, s in zip(ds.frames, ds.samples, strict=True):
        frames[f] = s
    return FrameStore(store, frames)


def _padded_logits(module, item) -> torch.Tensor:
    batch = FeatureDataset.collate([item])
    tokens = batch.get("tokens")
    feats = module.model.features_from_cache(
        tokens.float() if tokens is not None else None, [e.float() for e in batch["early"]], (40, 64)
    )
    return module.model.forward_head(feats, (42, 70))


def test_frame_store_serves_any_two_disjoint_folds(toy: Path, tmp_path: Path, backbone_calls) -> None:
    cfg = _cfg(
        toy,
        tmp_path,
        backbone={"train_blocks": 1},
        augment={"hflip": 0.5, "brightness_contrast": 1.0},
        views=2,
    )
    dm, module = _setup(cfg)
    calls = backbone_calls
    samples = list(reversed(dm.val_samples + dm.train_samples))  # any order gives the same store
    store = open_frame_store(cfg, module, samples, taxonomy=dm.taxonomy)
    assert len(store.samples) == 6 and store.views == 2 and calls[0] == 12
    folds = [([0, 1, 2, 3], [4, 5]), ([2, 3, 4, 5], [0, 1]), ([0, 1, 4, 5], [2, 3])]
    for train_idx, val_idx in folds:
        train_ds, val_ds = feature_datasets(store, train_idx, val_idx, cfg, module)
        assert [s.name for s in train_ds.samples] == [store.samples[i].name for i in train_idx]
        assert len(val_ds) == 2 and "full_mask" in val_ds[0] and "full_mask" not in train_ds[0]
        # Validation reads view 0, the plain image: its tokens never change between reads.
        assert torch.equal(val_ds[1]["tokens"], val_ds[1]["tokens"])
        assert torch.equal(
            val_ds[1]["tokens"], torch.from_numpy(np.array(store.store.arrays["hidden3"][val_idx[1] * 2]))
        )
    # The train path over train + val finds the same store.
    report = attach_caches(cfg, dm, module)
    assert calls[0] == 12 and not report.stores[0]["built"] and report.stores[0]["path"] == str(store.path)
    assert dm.train_dataset.frames == store.indices_of(dm.train_samples)


class _ImageHead(nn.Module):
    """A head that reads the image, as an image-guided refinement head does."""

    uses_image = True

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, classes, 1)
        self.seen: list[torch.Size] = []

    def forward(self, features, image):
        self.seen.append(image.shape)
        logits = self.conv(features[-1])
        return logits + image.mean() * 0


def test_image_reaches_a_head_that_uses_it(toy: Path, tmp_path: Path) -> None:
    cfg = _cfg(toy, tmp_path, backbone={"train_blocks": 1})
    dm, module = _setup(cfg)
    head = _ImageHead(48, module.num_classes)
    module.model.head = head
    plain = collate([dm.val_dataset[0]])
    attach_caches(cfg, dm, module)
    item = dm.val_dataset[0]
    assert item["image"].shape == (3, 42, 70)  # padded like the model pads
    torch.testing.assert_close(item["image"][:, :40, :64], plain["image"][0])
    module.eval()
    with torch.no_grad():
        cached = module._logits(FeatureDataset.collate([item]))
        uncached = module.model(plain["image"])
    assert head.seen == [torch.Size([1, 3, 42, 70])] * 2
    assert (cached.argmax(1) == uncached.argmax(1)).float().mean() >= 0.999
    with pytest.raises(ValueError, match="uses the image"):
        module.model.forward_head([torch.zeros(1, 48, 3, 5)], (40, 64))


def _fit(cfg, dm, module) -> None:
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)


@pytest.mark.parametrize("cached", [True, False])
def test_lora_trains_only_adapter_weights(toy: Path, tmp_path: Path, cached: bool) -> None:
    pytest.importorskip("peft")
    lora = {"rank": 4, "alpha": 8, "blocks": 1 if cached else 3}
    cfg = _cfg(toy, tmp_path, backbone={"train_blocks": 1, "lora": lora}, features=cached)
    dm, module = _setup(cfg)
    if cached:
        assert attach_caches(cfg, dm, module).features
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    _fit(cfg, dm, module)
    after = dict(module.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    adapters = {n for n in before if "lora_" in n}
    assert changed, "nothing trained"
    assert changed <= adapters | {n for n in before if n.startswith(("head.", "backbone.model.layernorm."))}
    assert any("lora_" in n for n in changed) and any(n.startswith("head.") for n in changed)
    blocks_with_adapters = {int(n.split("encoder.layer.")[1].split(".")[0]) for n in adapters}
    assert blocks_with_adapters == ({3} if cached else {1, 2, 3})


def test_train_blocks_train_the_last_blocks_from_the_cache(toy: Path, tmp_path: Path) -> None:
    cfg = _cfg(toy, tmp_path, backbone={"train_blocks": 2})
    dm, module = _setup(cfg)
    assert attach_caches(cfg, dm, module).features
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    _fit(cfg, dm, module)
    changed = {n for n, p in module.model.named_parameters() if not torch.equal(before[n], p)}
    blocks = {int(n.split("encoder.layer.")[1].split(".")[0]) for n in changed if "encoder.layer." in n}
    assert blocks == {2, 3} and any("layernorm" in n for n in changed)
    assert not any("embeddings" in n for n in changed)


def test_bad_adaptation_settings(toy: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.backbone\.train_blocks=5 .*0\.\.4"):
        _setup(_cfg(toy, tmp_path, backbone={"train_blocks": 5}))
    with pytest.raises(
        ConfigError, match=r"unfreeze_last=1 was removed; fix: use model\.backbone\.train_blocks"
    ):
        config_from_dict({"model": {"backbone": {"unfreeze_last": 1}}})
    # Configs saved by earlier versions (run directories, checkpoints) carry the inert default: they load.
    assert config_from_dict({"model": {"backbone": {"unfreeze_last": 0}}}).model.backbone.train_blocks == 0
    with pytest.raises(ConfigError, match="frozen=false means train_blocks=4"):
        _setup(_cfg(toy, tmp_path, backbone={"frozen": False, "train_blocks": 2}))
    assert _setup(_cfg(toy, tmp_path, backbone={"frozen": False}))[1].model.backbone.train_blocks == 4
    cfg = _cfg(toy, tmp_path, backbone={"train_blocks": 1, "lora": {"rank": 4, "blocks": 2}})
    dm, module = _setup(cfg)
    with pytest.raises(ConfigError, match=r"lora\.blocks=2 > model\.backbone\.train_blocks=1"):
        attach_caches(cfg, dm, module)


def test_cli_train_blocks_out_of_range_is_one_line(toy: Path, tmp_path: Path, capsys) -> None:
    cfg = _cfg(toy, tmp_path, backbone={"name": "dinov2_test", "layers": 2})
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    code = main(["train", str(path), "model.backbone.train_blocks=3"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("offroadseg: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert "model.backbone.train_blocks=3" in lines[0] and "0..2" in lines[0]


def test_train_reports_cache_build_progress(toy: Path, tmp_path: Path) -> None:
    from offroadseg.training.run import train

    cfg = _cfg(toy, tmp_path, backbone={"train_blocks": 1}, decoded=True)
    calls: dict[str, list[tuple[int, int]]] = {}

    def factory(desc: str):
        return lambda done, total: calls.setdefault(desc, []).append((done, total))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(cfg, progress=factory)
    assert result.caches["features"] and result.history
    backbone = calls["backbone pass (feature cache)"]
    assert backbone[-1] == (6, 6) and len(backbone) == 3  # 6 frames in batches of eval.batch_size=2
    assert calls["decode frames"][-1] == (6, 6)


@pytest.mark.slow
def test_lora_checkpoint_loads_and_exports(toy: Path, tmp_path: Path) -> None:
    """A LoRA run's checkpoint rebuilds the same adapters, and the ONNX graph gives the same logits."""
    pytest.importorskip("peft")
    pytest.importorskip("onnxruntime")
    from offroadseg.inference.checkpoint import load_checkpoint
    from offroadseg.inference.onnx import OnnxRunner, export_onnx
    from offroadseg.training.run import train

    cfg = _cfg(toy, tmp_path, backbone={"train_blocks": 1, "lora": {"rank": 2, "alpha": 4, "blocks": 1}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(cfg)
    loaded = load_checkpoint(result.best_checkpoint)
    lora_b = [p for n, p in loaded.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained adapters came back
    export_onnx(loaded, tmp_path / "m.onnx", dynamic=True)
    x = torch.randn(1, 3, 42, 70)
    with torch.no_grad():
        expected = loaded.model(x).numpy()
    np.testing.assert_allclose(OnnxRunner(tmp_path / "m.onnx").run(x.numpy()), expected, atol=1e-3)


def test_explicit_block_set_is_shared_by_configs_it_covers(toy: Path, tmp_path: Path, backbone_calls) -> None:
    """Configs that differ in layers and train_blocks share one backbone pass via data.cache.blocks."""
    shared = [1, 2, 3, 4]
    variants = [
        {"layers": [0, 2, 3], "train_blocks": 1},  # needs hidden 3 (tokens) and 1, 3 (early)
        {"layers": [3], "train_blocks": 2},  # needs hidden 2
        {"layers": [0, 2, 3], "train_blocks": 0},  # needs 1, 3, 4
    ]
    paths = []
    for i, backbone in enumerate(variants):
        cfg = _cfg(toy, tmp_path, backbone=backbone, blocks=shared)
        dm, module = _setup(cfg)
        plain = collate([dm.val_dataset[j] for j in range(len(dm.val_dataset))])
        (row,) = attach_caches(cfg, dm, module).stores
        paths.append(row["path"])
        assert row["built"] == (i == 0)
        module.eval()
        with torch.no_grad():
            cached = module._logits(FeatureDataset.collate([dm.val_dataset[j] for j in range(2)]))
            uncached = module.model(plain["image"])
        assert (cached.argmax(1) == uncached.argmax(1)).float().mean() >= 0.999
    assert backbone_calls[0] == 6 and len(set(paths)) == 1  # one pass over the 6 frames
    auto = _cfg(
        toy, tmp_path, backbone=variants[1]
    )  # blocks auto: needs hidden 2, which the shared store holds
    (row,) = attach_caches(auto, *_setup(auto)).stores
    assert not row["built"] and row["path"] == paths[0] and backbone_calls[0] == 6


def test_block_set_that_misses_a_need_is_refused(toy: Path, tmp_path: Path) -> None:
    cfg = _cfg(toy, tmp_path, backbone={"layers": [0, 2, 3], "train_blocks": 0}, blocks=[1, 2])
    with pytest.raises(ConfigError, match=r"data\.cache\.blocks=\[1, 2\] lacks \[3, 4\]"):
        attach_caches(cfg, *_setup(cfg))
    cfg = _cfg(toy, tmp_path, blocks=[1, 9])
    with pytest.raises(ConfigError, match=r"indices must be in 0\.\.4"):
        attach_caches(cfg, *_setup(cfg))
    cfg = _cfg(toy, tmp_path, blocks="all")
    with pytest.raises(ConfigError, match="use auto or a list"):
        attach_caches(cfg, *_setup(cfg))

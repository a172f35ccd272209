"""Slim, safe checkpoints: trained tensors + backbone source and digest; loading never runs code."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from offroadseg.config import config_from_dict
from offroadseg.errors import ModelError
from offroadseg.inference.checkpoint import load_checkpoint, read_checkpoint, save_inference_checkpoint
from offroadseg.models.checkpoint_state import source_digest, trained_keys
from offroadseg.models.factory import build_segmentor


def _rewrite(src: Path, dst: Path, edit) -> Path:
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def test_checkpoint_holds_only_trained_tensors(toy_checkpoint):
    ckpt = read_checkpoint(toy_checkpoint)
    keys = list(ckpt["state_dict"])
    assert keys and all(k.startswith("model.head.") for k in keys if k.startswith("model."))
    assert "optimizer_states" not in ckpt and "loops" not in ckpt  # best.ckpt is for inference
    record = ckpt["offroadseg"]["backbone"]
    assert record["source"] == "random" and len(record["digest"]) == 64 and not record["embedded"]
    loaded = load_checkpoint(toy_checkpoint)
    head = {k: v for k, v in loaded.model.state_dict().items() if k.startswith("head.")}
    for key, value in head.items():
        assert torch.equal(value, ckpt["state_dict"]["model." + key])
    assert source_digest(loaded.model) == record["digest"]


def test_random_source_rebuilds_the_same_weights():
    cfg = config_from_dict({"model": {"backbone": {"name": "dinov2_test", "weights": "random"}}}).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(1)
        a = source_digest(build_segmentor(cfg, 3))
        torch.manual_seed(2)
        b = source_digest(build_segmentor(cfg, 3))
        cfg.backbone.weights = "random:7"
        c = source_digest(build_segmentor(cfg, 3))
    assert a == b != c


def test_trained_blocks_are_kept():
    cfg = config_from_dict(
        {"model": {"backbone": {"name": "dinov2_test", "weights": "random", "train_blocks": 1}}}
    ).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_segmentor(cfg, 3)
    keys = trained_keys(model)
    assert any(k.startswith("backbone.model.encoder.layer.1.") for k in keys)
    assert not any(k.startswith("backbone.model.encoder.layer.0.") for k in keys)
    assert not any(k.startswith("backbone.model.embeddings.") for k in keys)
    assert all(k in keys for k in model.state_dict() if k.startswith("head."))


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    with evil.open("wb") as f:
        pickle.dump({"offroadseg": Payload()}, f)
    torch.save({"state_dict": {}, "offroadseg": Payload()}, tmp_path / "evil2.ckpt")
    for path in (evil, tmp_path / "evil2.ckpt"):
        with pytest.raises(ModelError, match="could run code: refused|not a readable checkpoint"):
            read_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_foreign_files(tmp_path, toy_checkpoint):
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(toy_checkpoint.read_bytes()[:5000])
    with pytest.raises(ModelError, match="not a readable checkpoint"):
        read_checkpoint(truncated)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ModelError, match="not an offroadseg checkpoint"):
        read_checkpoint(foreign)


def test_old_format_gets_a_clear_message(tmp_path, toy_checkpoint):
    old = _rewrite(toy_checkpoint, tmp_path / "old.ckpt", lambda c: c["offroadseg"].update(format=1))
    with pytest.raises(ModelError, match="old-format offroadseg checkpoint .*retrain"):
        load_checkpoint(old)


def test_other_weights_or_missing_source(tmp_path, toy_checkpoint):
    def other_seed(ckpt):
        ckpt["hyper_parameters"]["config"]["model"]["backbone"]["weights"] = "random:7"

    with pytest.raises(ModelError, match="now gives different weights.*--embed-backbone"):
        load_checkpoint(_rewrite(toy_checkpoint, tmp_path / "seed.ckpt", other_seed))

    def missing(ckpt):
        ckpt["hyper_parameters"]["config"]["model"]["backbone"]["weights"] = str(tmp_path / "gone.pth")

    with pytest.raises(ModelError, match="needs its backbone weights source .*--embed-backbone"):
        load_checkpoint(_rewrite(toy_checkpoint, tmp_path / "gone.ckpt", missing))


def test_embedded_backbone_loads_without_the_source(tmp_path, toy_checkpoint):
    loaded = load_checkpoint(toy_checkpoint)
    out = tmp_path / "packed.ckpt"
    meta = save_inference_checkpoint(loaded, out, embed_backbone=True)
    assert meta["backbone"]["embedded"]

    def missing(ckpt):
        ckpt["hyper_parameters"]["config"]["model"]["backbone"]["weights"] = str(tmp_path / "gone.pth")
        ckpt["offroadseg"]["backbone"]["source"] = "random:0"  # what the record names is reported

    packed = load_checkpoint(_rewrite(out, tmp_path / "packed2.ckpt", missing))
    assert packed.model.backbone.source == "random:0" and packed.model.backbone.is_random
    images = torch.randn(1, 3, 56, 84)
    with torch.no_grad():
        assert torch.equal(packed.model(images), loaded.model(images))

    def damage(ckpt):
        key = next(k for k in ckpt["state_dict"] if "embeddings.cls_token" in k)
        ckpt["state_dict"][key] = ckpt["state_dict"][key] + 1

    with pytest.raises(ModelError, match="altered or damaged"):
        load_checkpoint(_rewrite(out, tmp_path / "damaged.ckpt", damage))


def test_slim_export_is_smaller_than_embedded(tmp_path, toy_checkpoint):
    loaded = load_checkpoint(toy_checkpoint)
    save_inference_checkpoint(loaded, tmp_path / "slim.ckpt", embed_backbone=False)
    save_inference_checkpoint(loaded, tmp_path / "full.ckpt", embed_backbone=True)
    assert (tmp_path / "slim.ckpt").stat().st_size < (tmp_path / "full.ckpt").stat().st_size
    again = load_checkpoint(tmp_path / "slim.ckpt")
    images = torch.randn(1, 3, 56, 84)
    with torch.no_grad():
        assert torch.equal(again.model(images), loaded.model(images))

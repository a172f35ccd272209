"""``offroadseg bench train``: every variant runs, the ratios are computed and written as JSON."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml
from toydata import make_toy_dataset

from offroadseg.cli import main
from offroadseg.errors import ConfigError


@pytest.fixture
def config(tmp_path: Path) -> Path:
    root = make_toy_dataset(tmp_path / "toy", n_train=4, n_val=2, size=(48, 80))
    cfg = {
        "data": {"root": str(root), "image_size": [42, 70], "num_workers": 0, "augment": {"hflip": 0.5}},
        "model": {"backbone": {"name": "dinov2_test", "weights": "random"}, "head": {"name": "conv"}},
        "train": {"batch_size": 2, "lr": 0.01, "accelerator": "cpu"},
        "run": {"progress": False},
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_bench_train_cli_writes_ratios(config: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "train", str(config), "--epochs", "2", "--limit", "3", "--work-dir", str(tmp_path / "w")]
    argv += ["--variants", "baseline,decoded,features", "--json", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "speedup" in printed and "1st/base" in printed and printed.startswith("machine: ")
    res = json.loads(out.read_text())
    assert res["machine"]["gemm"]["fp32_gflops"] > 0 and "native_bf16" in res["machine"]["cpu"]
    assert res["speedup"] == pytest.approx(res["baseline_epoch_s"] / res["cached_epoch_s"])
    assert res["first_epoch_ratio"] > 0 and res["cache_bytes"] > 0 and res["cache_build_s"] > 0
    assert res["train_images"] == 3 and res["val_images"] == 2
    assert set(res["variants"]) == {"baseline", "decoded", "features"}
    base, feat = res["variants"]["baseline"], res["variants"]["features"]
    assert len(base["epoch_s"]) == 2 and base["num_workers"] == 0 and base["caches"]["stores"] == []
    assert (
        feat["caches"]["features"] and len(feat["caches"]["stores"]) == 2
    )  # decoded + features, one store each over train + val
    assert (
        res["variants"]["decoded"]["caches"]["decoded"]
        and not res["variants"]["decoded"]["caches"]["features"]
    )
    assert all(len(r["val_miou"]) == 2 for r in res["variants"].values())


def test_unknown_variant_is_refused(config: Path, tmp_path: Path) -> None:
    from offroadseg.config import load_config
    from offroadseg.experiments.bench.train import bench_train

    with pytest.raises(ConfigError, match="features-v<K>"):
        bench_train(load_config(config), work_dir=tmp_path, variants=["fast"])

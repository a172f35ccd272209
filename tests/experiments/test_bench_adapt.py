"""``offroadseg bench adapt`` end to end on a tiny recipe (random test ViT, a few synthetic scenes)."""

from __future__ import annotations

import json

import pytest

from offroadseg.cli import main
from offroadseg.errors import ConfigError
from offroadseg.experiments.bench.adapt import parse_pair

TINY = [
    "model.backbone.name=dinov2_test", "model.backbone.weights=random", "model.backbone.layers=1",
    "model.head.channels=16", "data.image_size=[56,98]", "train.epochs=1", "train.accelerator=cpu",
    "rounds=1", "steps=2", "batch_size=2", "gallery=1",
]  # fmt: skip


def test_bench_adapt_reports_before_and_after(tmp_path, capsys):
    out = tmp_path / "res.json"
    argv = [
        "bench",
        "adapt",
        *TINY,
        "--pair",
        "desert:canyon",
        "--n-train",
        "3",
        "--n-val",
        "2",
        "--n-test",
        "2",
    ]
    assert main([*argv, "--work-dir", str(tmp_path / "runs"), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["train_biome"], row["test_biome"]) == ("desert", "canyon")
    assert row["gain_points"] == pytest.approx(100 * (row["test_miou_after"] - row["test_miou_before"]))
    assert 0.0 <= row["test_miou_before"] <= 1.0 and 0.0 <= row["test_miou_after"] <= 1.0
    printed = capsys.readouterr().out
    assert "| desert | canyon |" in printed and "target >= +5.0 points" in printed


def test_parse_pair():
    assert parse_pair("desert:canyon") == ("desert", "canyon")
    with pytest.raises(ConfigError):
        parse_pair("desert")

"""``offroadseg bench cache``: fp32 vs auto store builds in one run; the cosine helper's known answers."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from toydata import make_toy_dataset

from offroadseg.cli import main
from offroadseg.experiments.bench.cache import token_cosine

KEYS = {"ratio", "cosine_mean", "precision", "gflops_per_s", "percent_of_peak"}


def test_token_cosine_known_answers() -> None:
    a = np.array([[[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]], dtype=np.float16)
    b = np.array([[[0.0, 2.0], [3.0, 3.0], [0.0, 0.0]]], dtype=np.float16)
    # orthogonal: 0; parallel (any length): 1; two zero tokens: identical, 1
    mean, low = token_cosine(a, b, chunk=2)  # a chunk boundary inside the tokens
    assert mean == pytest.approx(2 / 3) and low == 0.0
    opposite, low = token_cosine(a[:, :2], -a[:, :2])
    assert opposite == pytest.approx(-1.0) and low == pytest.approx(-1.0)
    c = np.array([[[3.0, 4.0]]])
    d = np.array([[[4.0, 3.0]]])
    assert token_cosine(c, d)[0] == pytest.approx(24 / 25)  # (12 + 12) / (5 * 5)
    with pytest.raises(ValueError, match="shapes differ"):
        token_cosine(a, b[:, :2])


def test_bench_cache_cli_writes_the_keys(tmp_path: Path, capsys) -> None:
    root = make_toy_dataset(tmp_path / "toy", n_train=3, n_val=2, size=(48, 80))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{root: {root}, image_size: [42, 70], num_workers: 0, cache: {{features: true}}}}\n"
        "model: {backbone: {name: dinov2_test, weights: random, layers: 2}, head: {name: linear}}\n"
    )
    out = tmp_path / "cache.json"
    work = tmp_path / "new" / "work"  # not there yet: made, as the other benches make theirs
    argv = ["bench", "cache", str(cfg), "--frames", "4", "--json", str(out), "--work-dir", str(work)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("machine: ") and "ratio" in printed and "cosine mean" in printed
    res = json.loads(out.read_text())
    assert set(res) >= KEYS and res["frames"] == 4 and res["machine"]["gemm"]["fp32_gflops"] > 0
    native = res["machine"]["cpu"]["native_bf16"]
    assert res["precision"] == ("bf16" if native else "fp32")
    assert res["ratio"] == pytest.approx(res["fp32_s"] / res["auto_s"])
    assert 0.99 < res["cosine_mean"] <= 1.0 + 1e-9 and res["cosine_min"] <= res["cosine_mean"]
    if not native:  # the same fp32 pass twice: the same stored features
        assert res["cosine_mean"] == pytest.approx(1.0)
    assert res["gflop_per_frame"] > 0 and res["gflops_per_s"] > 0
    peak = res["machine"]["gemm"]["bf16_gflops" if native else "fp32_gflops"]
    assert res["percent_of_peak"] == pytest.approx(100 * res["gflops_per_s"] / peak)
    assert work.is_dir() and not list(work.glob("bench_cache_*"))  # the temporary stores are gone


def test_bench_cache_refuses_zero_frames(tmp_path: Path, capsys) -> None:
    root = make_toy_dataset(tmp_path / "toy", n_train=2, n_val=1, size=(48, 80))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{root: {root}}}\nmodel: {{backbone: {{name: dinov2_test, weights: random}}}}\n")
    assert main(["bench", "cache", str(cfg), "--frames", "0"]) == 2
    assert "--frames must be >= 1, got 0" in capsys.readouterr().err

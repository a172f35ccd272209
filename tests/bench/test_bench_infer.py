"""``offroadseg bench infer`` on a tiny untrained model built from a config."""

from __future__ import annotations

import json

import pytest

from offroadseg.cli import main
from offroadseg.errors import ConfigError
from offroadseg.experiments.bench.infer import bench_inference, load_bench_model

CONFIG = """\
data: {image_size: [56, 84]}
model:
  backbone: {name: dinov2_test, weights: facebook/dinov2-small}
  head: {name: ppm, channels: 16}
"""


@pytest.fixture()
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG)
    return path


def test_bench_reports_every_mode_against_eager(config):
    loaded = load_bench_model(config, ["model.backbone.weights=random"])
    report = bench_inference(
        loaded,
        height=42,
        width=70,
        device="cpu",
        iters=2,
        warmup=1,
        modes=[
            "inference_mode",
            "channels_last",
            "bf16_autocast",
            "fp16_autocast",
            "onnxruntime",
            "onnxruntime_int8",
        ],
    )
    results = {r["mode"]: r for r in report["results"]}
    assert list(results)[0] == "eager_fp32" and results["eager_fp32"]["ratio"] == pytest.approx(1.0)
    assert report["input"] == {"batch_size": 1, "height": 42, "width": 70}
    for mode in ("inference_mode", "channels_last", "onnxruntime"):
        r = results[mode]
        assert r["ok"], r["note"]
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] and r["images_per_s"] > 0
        assert r["max_abs_diff"] < 1e-3 and r["agreement"] >= 0.99
    int8 = results["onnxruntime_int8"]
    assert int8["ok"], int8["note"]
    assert 0.0 <= int8["agreement"] <= 1.0 and int8["median_ms"] > 0
    assert not results["fp16_autocast"]["ok"] and "CUDA" in results["fp16_autocast"]["note"]
    assert report["best"]["mode"] in results
    with pytest.raises(ConfigError, match="unknown bench modes"):
        bench_inference(loaded, modes=["warp"], device="cpu")


def test_bench_infer_cli_prints_a_table_and_writes_json(config, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "infer",
            str(config),
            "model.backbone.weights=random",
            "--height",
            "28",
            "--width",
            "42",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--modes",
            "eager_fp32,onnxruntime",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| eager_fp32 |" in printed and "| onnxruntime |" in printed and "vs eager fp32" in printed
    data = json.loads(out.read_text())
    assert [r["mode"] for r in data["results"]] == ["eager_fp32", "onnxruntime"]
    assert data["machine"]["torch"] and data["machine"]["gemm"]["bf16_gflops"] > 0
    assert "flags that matter" in printed


def test_overrides_only_apply_to_configs(tmp_path):
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_text("")
    with pytest.raises(ConfigError, match="YAML"):
        load_bench_model(ckpt, ["model.backbone.weights=random"])


def test_agreement_miou_is_scored_at_the_masks_size() -> None:
    """Known answer: logits at half the mask's size, upsampled, match it exactly; frames without a mask
    are left out; no mask at all is no figure."""
    import torch

    from offroadseg.experiments.bench.infer import _miou
    from offroadseg.taxonomy import load_taxonomy

    tax = load_taxonomy("duality")
    small = torch.zeros(1, tax.num_classes, 2, 4)
    small[0, 1, :, :2] = 5.0  # left half class 1
    small[0, 2, :, 2:] = 5.0  # right half class 2
    mask = torch.ones(4, 8, dtype=torch.int64)
    mask[:, 4:] = 2
    assert _miou([small, small], [mask, None], tax) == 1.0
    wrong = mask.clone()
    wrong[:, :4] = 2  # class 1 never labelled: IoU(1) 0 counted (predicted), IoU(2) 0.5
    assert _miou([small], [wrong], tax) == 0.25
    assert _miou([small], [None], tax) is None

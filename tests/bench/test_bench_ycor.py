"""``offroadseg bench ycor``: trains each config on a YCOR-like set and reports val mIoU, per-class
IoU and wall time; the shipped ycor configs load; the real YCOR folder reads (or skips)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from toydata import CLASSES, TINY, make_ycor_like

from offroadseg.cli import main
from offroadseg.errors import OffroadsegError

REPO = Path(__file__).resolve().parents[2]
REAL_YCOR = REPO.parent / "shared" / "data" / "ycor"
YCOR_CONFIGS = (
    "ycor_linear",
    "ycor_conv",
    "ycor_ppm",
    "ycor",
    "ycor_baseline",
    "ycor_spread",
    "ycor_adapt",
    "ycor_combo",
)


def test_bench_ycor_on_a_ycor_like_set(tmp_path: Path, capsys) -> None:
    root = make_ycor_like(tmp_path / "ycor")
    out = tmp_path / "ycor.json"
    configs = [str(REPO / "configs" / "ycor_linear.yaml"), str(REPO / "configs" / "ycor_rare.yaml")]
    argv = ["bench", "ycor", *configs, "--data", str(root), "--epochs", "1", "--json", str(out)]
    argv += ["--work-dir", str(tmp_path / "runs")]
    for override in TINY:
        argv += ["--set", override]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "per-class IoU of the best" in printed and "ycor_linear" in printed
    res = json.loads(out.read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert list(rows) == ["ycor_linear", "ycor_rare"] and res["best"] in rows
    lin, best = rows["ycor_linear"], rows["ycor_rare"]
    assert Path(lin["run_dir"]) == tmp_path / "runs" / "ycor_linear"
    assert lin["head"] == best["head"] == "linear" and best["layers"] == "last 2"
    assert lin["epochs"] == 1 and len(lin["history_val_miou"]) == 1 and lin["val_frames"] == 2
    assert "YCOR val (" in printed and ", 2 frames)" in printed
    assert res["machine"]["gemm"]["fp32_gflops"] > 0 and isinstance(res["machine"]["cpu"]["flags"], list)
    assert printed.startswith("machine: ") and "flags that matter" in printed
    assert lin["image_size"] == [28, 42] and lin["cache_features"]
    # void (0) is ignored: the scored classes are the 8 named ones
    assert set(lin["per_class_iou"]) == {n for n, _ in CLASSES[1:]}
    assert 0.0 <= lin["val_miou"] <= 1.0 and lin["tta"] == "none" and lin["eval_s"] == 0.0
    assert best["tta"] == "flip" and best["eval_s"] > 0 and best["val_miou_no_tta"] is not None
    assert 0.0 <= lin["val_miou_present"] <= 1.0 and best["val_miou_present"] is not None
    assert "sky" not in lin["absent_classes"]  # every generated frame has sky
    assert set(lin["absent_classes"]) <= set(lin["per_class_iou"])
    assert lin["train_s"] > 0 and lin["total_s"] >= lin["train_s"]


def test_bench_ycor_function_with_overrides(tmp_path: Path) -> None:
    from offroadseg.experiments.bench.ycor import bench_ycor

    root = make_ycor_like(tmp_path / "ycor", n_train=2, n_val=1)
    res = bench_ycor(
        [REPO / "configs" / "ycor_ppm.yaml"],
        data_root=root,
        overrides=[*TINY, "model.head.channels=16"],
        epochs=1,
        work_dir=tmp_path / "runs",
    )
    (row,) = res["rows"]
    assert row["name"] == "ycor_ppm" and row["loss"] == "focal+dice" and res["best"] == "ycor_ppm"
    assert row["val_miou"] is not None and row["cache_build_s"] >= 0


def test_bench_ycor_resume_keeps_finished_runs_of_the_same_config(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import offroadseg.experiments.bench.ycor as bench

    root = make_ycor_like(tmp_path / "ycor", n_train=2, n_val=1)
    config = str(REPO / "configs" / "ycor_linear.yaml")
    argv = [
        "bench",
        "ycor",
        config,
        "--data",
        str(root),
        "--epochs",
        "1",
        "--work-dir",
        str(tmp_path / "runs"),
    ]
    for override in TINY:
        argv += ["--set", override]
    out = tmp_path / "a.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*argv, "--json", str(out)]) == 0
    first = json.loads(out.read_text())["rows"][0]
    record = tmp_path / "runs" / "ycor_linear" / bench.BENCH_ROW_NAME
    assert record.is_file() and "kept" not in first

    trained = []
    real_run_one = bench._run_one
    monkeypatch.setattr(
        bench, "_run_one", lambda path, cfg, **kw: trained.append(path) or real_run_one(path, cfg, **kw)
    )
    capsys.readouterr()
    assert main([*argv, "--resume", "--json", str(out)]) == 0  # the same config: kept, not trained
    kept = json.loads(out.read_text())["rows"][0]
    assert trained == [] and kept["kept"] is True
    assert kept["val_miou"] == first["val_miou"] and kept["per_class_iou"] == first["per_class_iou"]
    assert "kept from an earlier run (--resume)" in capsys.readouterr().out

    with warnings.catch_warnings():  # another recipe (a learning rate): neither kept nor continued
        warnings.simplefilter("ignore")
        assert main([*argv, "--resume", "--set", "train.lr=0.002", "--json", str(out)]) == 0
    other = json.loads(out.read_text())["rows"][0]
    assert trained == [config] and "kept" not in other and "resumed_after_epochs" not in other
    assert "train.lr" in other["resume_refused"]

    # more epochs of that recipe: its run goes on from the end of its epoch 1
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*argv, "--resume", "--set", "train.lr=0.002", "--epochs", "2", "--json", str(out)]) == 0
    more = json.loads(out.read_text())["rows"][0]
    assert more["resumed_after_epochs"] == 1 and len(more["history_val_miou"]) == 2
    assert more["history_val_miou"][0] == other["history_val_miou"][0] and len(trained) == 2
    assert "continued after epoch 1 (--resume)" in capsys.readouterr().out

    record.write_text("{not json")  # a damaged record: trained again, and rewritten
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*argv, "--json", str(out)]) == 0  # without --resume: a note says how to keep them
    assert len(trained) == 3 and json.loads(record.read_text())["row"]["name"] == "ycor_linear"
    printed = capsys.readouterr().out
    assert "holds runs an earlier invocation made for ycor_linear" in printed and "--resume" in printed


@pytest.mark.parametrize("name", YCOR_CONFIGS)
def test_shipped_ycor_configs_load(name: str) -> None:
    from offroadseg.config import load_config

    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    d = cfg.data
    assert d.layout == "generic" and d.root == "../shared/data/ycor"
    assert (d.image_dir, d.label_dir, d.split_file, d.taxonomy) == (
        "images",
        "labels",
        "split.tsv",
        "classes.tsv",
    )
    assert d.ignore_values == [0] and d.cache.features
    assert cfg.model.backbone.name == "dinov2_vits14" and cfg.model.backbone.weights == "offline:dinov2-small"
    assert cfg.train.optimizer == "adamw" and cfg.train.scheduler == "cosine"
    assert cfg.model.backbone.train_blocks in (
        0,
        1,
        3,
    )  # the shared store serves each (tokens entering 11 / 9)
    # one shared frozen-feature cache: same size and views for every ycor config; the CV rows (and the
    # preset chosen by them) name the hidden states any of them reads, so one backbone pass serves all
    assert d.image_size == [238, 448] and d.cache.views == 1
    if name not in ("ycor_linear", "ycor_conv", "ycor_ppm"):
        assert d.cache.blocks == [3, 6, 9, 10, 11, 12]


def test_present_miou_ignores_classes_absent_from_the_ground_truth() -> None:
    from offroadseg.experiments.bench.ycor import absent_classes, present_miou

    # rows = ground truth, columns = prediction; class c has no ground truth but 10 predicted pixels
    cm = [[90, 0, 10], [0, 100, 0], [0, 0, 0]]
    scores = {"confusion_matrix": cm, "per_class_iou": {"a": 0.9, "b": 1.0, "c": 0.0}}
    assert present_miou(scores) == pytest.approx((0.9 + 1.0) / 2)
    assert absent_classes(scores) == ["c"] and present_miou(None) is None


def test_missing_root_is_a_clear_error(tmp_path: Path, capsys) -> None:
    from offroadseg.experiments.bench.ycor import bench_ycor

    missing = tmp_path / "nowhere"
    with pytest.raises(OffroadsegError, match="YCOR not found at .*nowhere.*fix: --data PATH"):
        bench_ycor([REPO / "configs" / "ycor_linear.yaml"], data_root=missing)
    assert main(["bench", "ycor", "--data", str(missing)]) == 2
    assert "YCOR not found at" in capsys.readouterr().err


def test_real_ycor_lists_and_loads() -> None:
    if not REAL_YCOR.is_dir():
        pytest.skip(f"real YCOR data not present at {REAL_YCOR}")
    from offroadseg.config import load_config
    from offroadseg.data.datasets import list_samples, load_pair, taxonomy_for

    cfg = load_config(REPO / "configs" / "ycor_linear.yaml", [f"data.root={REAL_YCOR}"])
    train, val = list_samples(cfg.data, "train"), list_samples(cfg.data, "val")
    assert (len(train), len(val)) == (931, 70)
    tax = taxonomy_for(cfg.data)
    assert tax.num_classes == 8 and "puddle" in tax.names and "sky" in tax.names
    for sample in (train[0], val[-1]):
        image, ids = load_pair(sample, tax, unknown=cfg.data.unknown_values)
        assert image.shape == (544, 1024, 3) and ids.shape == (544, 1024)
        assert set(np.unique(ids)) <= set(range(tax.num_classes)) | {tax.ignore_index}


@pytest.mark.slow
def test_bench_ycor_folds_adds_cross_validation_to_the_table(tmp_path: Path, capsys) -> None:
    root = make_ycor_like(tmp_path / "ycor", n_train=4, n_val=2, frame_ids=[0, 1, 10, 11, 20, 21])
    out, md = tmp_path / "ycor.json", tmp_path / "ycor.md"
    configs = [str(REPO / "configs" / "ycor_linear.yaml"), str(REPO / "configs" / "ycor_rare.yaml")]
    argv = ["bench", "ycor", *configs, "--data", str(root), "--epochs", "1", "--folds", "2"]
    argv += ["--json", str(out), "--markdown", str(md), "--work-dir", str(tmp_path / "runs")]
    for override in [*TINY, "eval.tta=none"]:
        argv += ["--set", override]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[4/4] ycor_rare fold 2/2" in printed and "best by CV" in printed
    res = json.loads(out.read_text())
    assert "partial" not in res and [r["name"] for r in res["rows"]] == ["ycor_linear", "ycor_rare"]
    cv = {c["name"]: c for c in res["cv"]["configs"]}
    assert list(cv) == ["ycor_linear", "ycor_rare"] and res["best_cv"] in cv
    for name, c in cv.items():
        assert len(c["fold_rows"]) == 2 and sum(c["fold_sizes"]) == 6
        assert c["miou_mean"] == pytest.approx(sum(r["miou"] for r in c["fold_rows"]) / 2)
        assert all(Path(r["run_dir"]).parent == tmp_path / "runs" / "cv" / name for r in c["fold_rows"])
    # the val runs built the store over train ∪ val; every fold reused it
    assert not any(r["cache_built"] for c in cv.values() for r in c["fold_rows"])
    table = md.read_text()
    assert "CV mIoU (2-fold, mean ± std)" in table and "val mIoU (2 frames)" in table  # the real val count
    lin = next(line for line in table.splitlines() if line.startswith("| ycor_linear |"))
    assert f"{cv['ycor_linear']['miou_mean']:.4f} ± {cv['ycor_linear']['miou_std']:.4f}" in lin
    assert f"{res['rows'][0]['val_miou']:.4f}" in lin


def test_bench_ycor_too_many_folds_fails_before_training(tmp_path: Path, capsys) -> None:
    root = make_ycor_like(tmp_path / "ycor", n_train=2, n_val=1, frame_ids=[0, 1, 2])
    argv = ["bench", "ycor", str(REPO / "configs" / "ycor_linear.yaml"), "--data", str(root), "--folds", "2"]
    argv += ["--work-dir", str(tmp_path / "runs")]
    assert main(argv) == 2
    assert "--folds 2 is more than the 1 group of neighbouring frames" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()

"""``offroadseg cv``: grouped K-fold runs, per-fold dataset-level scores, mean ± std, bad input."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from toydata import YCOR_TINY, make_ycor_like

from offroadseg.cli import main
from offroadseg.errors import ConfigError
from offroadseg.experiments.cv import summarize_folds
from offroadseg.metrics import scores_from_confusion

REPO = Path(__file__).resolve().parents[2]

IDS = [0, 1, 10, 11, 20, 21]  # three gap-5 groups of two neighbouring frames


def _row(fold: int, cm: list[list[int]], names=("a", "b", "c")) -> dict:
    scores = scores_from_confusion(np.array(cm)).to_dict(list(names))
    return {
        **scores,
        "fold": fold,
        "train_s": 10.0 * fold,
        "cache_build_s": 0.0,
        "eval_s": 0.0,
        "total_s": 1.0,
    }


def test_summary_known_answer() -> None:
    # fold 1: c absent from labels and predictions (no IoU); fold 2: c labelled, never predicted (IoU 0)
    f1 = _row(1, [[8, 2, 0], [0, 10, 0], [0, 0, 0]])
    f2 = _row(2, [[10, 0, 0], [0, 5, 5], [0, 5, 0]])
    assert f1["per_class_iou"] == {"a": 0.8, "b": 10 / 12, "c": None}
    s = summarize_folds([f1, f2])
    m1, m2 = (0.8 + 10 / 12) / 2, (1.0 + 5 / 15 + 0.0) / 3  # c counts in fold 2 only
    assert s["miou_mean"] == pytest.approx((m1 + m2) / 2)
    assert s["miou_std"] == pytest.approx(abs(m1 - m2) / np.sqrt(2))  # ddof=1 over 2 folds
    assert s["per_class_mean_iou"]["c"] == 0.0 and s["per_class_folds"] == {"a": 2, "b": 2, "c": 1}
    assert s["per_class_mean_iou"]["b"] == pytest.approx((10 / 12 + 5 / 15) / 2)
    # the least-labelled class is reported per fold: 5 px labelled in fold 2, 5 predicted (wrongly)
    assert s["rare"]["class"] == "c"
    assert s["rare"]["per_fold"][1] == {
        "fold": 2,
        "iou": 0.0,
        "labelled_px": 5,
        "predicted_px": 5,
        "correct_px": 0,
    }
    assert s["rare"]["per_fold"][0]["iou"] is None and s["train_s_mean"] == 15.0
    assert summarize_folds([f1, f2], rare_class="a")["rare"]["class"] == "a"
    with pytest.raises(ConfigError, match="--rare-class 'x' is not a class"):
        summarize_folds([f1], rare_class="x")


def _argv(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    argv = [
        "cv",
        str(REPO / "configs" / "ycor.yaml"),
        f"data.root={root}",
        *YCOR_TINY,
        "train.epochs=1",
        "model.backbone.train_blocks=1",
    ]
    return argv + ["--work-dir", str(tmp_path / "runs"), *extra]


@pytest.mark.slow
def test_cv_cli_runs_grouped_folds(tmp_path: Path, capsys) -> None:
    root = make_ycor_like(tmp_path / "ycor", n_train=4, n_val=2, frame_ids=IDS)
    out, md = tmp_path / "cv.json", tmp_path / "cv.md"
    argv = _argv(root, tmp_path, "--set", "train.checkpoint=last", "--folds", "3", "--set", "eval.tta=none")
    # a cache of its own: another test's store of the same generated frames would be found by content
    argv += ["--set", f"data.cache.dir={tmp_path / 'cache'}", "--json", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*argv, "--markdown", str(md)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "[1/3] ycor fold 1/3" in printed and "ETA" in printed and "[3/3]" in printed
    res = json.loads(out.read_text())
    assert "partial" not in res and res["folds"] == 3 and res["best"] == "ycor"
    (entry,) = res["configs"]
    rows = entry["fold_rows"]
    assert [r["fold"] for r in rows] == [1, 2, 3] and entry["fold_sizes"] == [2, 2, 2]
    groups = {"iid000000": {"iid000000", "iid000001"}, "iid000010": {"iid000010", "iid000011"}}
    groups["iid000020"] = {"iid000020", "iid000021"}
    held_out = []
    for r in rows:
        # the fold trained on the other groups and was scored on its own, from one confusion matrix
        (group,) = r["val_groups"]
        split = dict(
            line.split("\t") for line in (Path(r["run_dir"]) / "cv_split.tsv").read_text().splitlines()
        )
        assert {n for n, s in split.items() if s == "val"} == groups[group]
        assert {n for n, s in split.items() if s == "train"} == set().union(*groups.values()) - groups[group]
        held_out.append(group)
        assert r["miou"] == pytest.approx(scores_from_confusion(np.array(r["confusion_matrix"])).miou)
        assert r["scored_with"].startswith("last checkpoint") and r["epochs"] == 1
        assert not (Path(r["run_dir"]) / "checkpoints").exists()  # removed after scoring
        # one progress line per validation epoch: 1 epoch, scored without TTA -> the fold's own figure
        # (the epoch's time is a figure: an event without the history row's epoch_time_s printed "n/a")
        line = f"ycor fold {r['fold']}/3 epoch 1/1: val mIoU {r['miou']:.4f} "
        assert re.search(re.escape(line) + r"\((\d+ s|\d+\.\d min) an epoch\)\n", printed)
    assert sorted(held_out) == sorted(groups)
    # one feature store over train ∪ val serves every fold: only the first fold runs the backbone
    assert [r["cache_built"] for r in rows] == [True, False, False]
    # the steps before a fold's first epoch report progress, named by fold (a log gets plain lines):
    # the store is built in fold 1 only, the class weights are counted in every fold
    assert re.search(
        r"^ycor fold 1/3: backbone pass \(feature cache\): \d+/\d+ img done in ", captured.err, re.M
    )
    assert "fold 2/3: backbone pass" not in captured.err and "fold 3/3: backbone pass" not in captured.err
    for fold in (1, 2, 3):
        assert re.search(rf"^ycor fold {fold}/3: class weights: 4/4 img done in ", captured.err, re.M)
    mious = [r["miou"] for r in rows]
    assert entry["miou_mean"] == pytest.approx(np.mean(mious))
    assert entry["miou_std"] == pytest.approx(np.std(mious, ddof=1))
    assert entry["rare"]["class"] in entry["per_class_mean_iou"] and len(entry["rare"]["per_fold"]) == 3
    assert entry["train_s_mean"] > 0 and entry["checkpoint"] == "last"
    assert "| ycor | last | none |" in md.read_text()


class _Stopped(Exception):
    """The invocation's end mid-epoch (a kill leaves the same files)."""


@pytest.mark.slow
def test_cv_resume_keeps_finished_folds_and_continues_the_interrupted_one(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """cv stopped in fold 2's second (last) epoch; `--resume` keeps fold 1, runs fold 2's epoch 2 only (from
    epoch 1's checkpoint) and fold 3, and every fold scores what an uninterrupted cv scores."""
    from offroadseg.experiments import cv as cv_module

    root = make_ycor_like(tmp_path / "ycor", n_train=4, n_val=2, frame_ids=IDS)
    common = ["--folds", "3", "--set", "eval.tta=none", "--set", f"data.cache.dir={tmp_path / 'cache'}"]
    common += ["--set", "train.epochs=2", "--set", "train.checkpoint=last"]
    real = cv_module.run_fold

    def stopping(cfg, fold, k, run_dir, *, on_epoch, **kw):
        def report(row):
            on_epoch(row)
            if fold.index == 1 and row["epoch"] == 2:  # epoch 1's last.ckpt is on disk, epoch 2's is not yet
                raise _Stopped

        return real(cfg, fold, k, run_dir, on_epoch=report, **kw)

    from offroadseg.config import load_config
    from offroadseg.experiments.cv import fold_resume_point, kept_fold_row, plan_folds

    overrides = [o for o in _argv(root, tmp_path)[2:] if "=" in o]  # the config's, then --set's
    cfg = load_config(REPO / "configs" / "ycor.yaml", overrides + [o for o in common if "=" in o])
    cfg.run.progress = False
    folds = plan_folds(cfg, 3)
    monkeypatch.setattr(cv_module, "run_fold", stopping)
    out = tmp_path / "cv.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*_argv(root, tmp_path, *common), "--json", str(out)]) == 1
        fold_dir = tmp_path / "runs" / "ycor"
        assert (fold_dir / "fold1" / "fold_row.json").is_file() and not (
            fold_dir / "fold2" / "fold_row.json"
        ).exists()
        # fold 2's checkpoint continues fold 2, not a fold of other frames (a split file names the same path)
        assert fold_resume_point(cfg, folds[1], fold_dir / "fold2") == 1
        assert "another split of the frames" in fold_resume_point(cfg, folds[0], fold_dir / "fold2")
        assert fold_resume_point(cfg, folds[1], fold_dir / "fold2") == 1  # the refusal left it as it was
        monkeypatch.setattr(cv_module, "run_fold", real)
        capsys.readouterr()
        assert main([*_argv(root, tmp_path, *common), "--json", str(out), "--resume"]) == 0
        printed = capsys.readouterr().out
        reference = tmp_path / "whole.json"
        whole = [*_argv(root, tmp_path / "whole", *common), "--json", str(reference)]
        assert main(whole) == 0
        assert "note:" not in capsys.readouterr().out  # a fresh work dir: nothing to say
        # without --resume, a work dir with an earlier invocation's folds says how to keep them
        assert main(_argv(root, tmp_path, *common)) == 0
        again = capsys.readouterr().out
        assert "cv: note: " in again and "holds folds an earlier invocation ran for ycor" in again
        assert "add --resume" in again and "kept from an earlier run" not in again
    assert "ycor fold 1/3: mIoU" in printed and "kept from an earlier run (--resume)" in printed
    assert re.search(
        r"ycor fold 2/3: mIoU \S+ on 2 frames \(1 group\), train \d+ s after epoch 1 \(--resume\); ", printed
    )
    epochs = re.findall(r"ycor fold (\d)/3 epoch (\d)/2", printed)
    assert epochs == [("2", "2"), ("3", "1"), ("3", "2")]  # fold 1 kept, fold 2 from its epoch 2
    (entry,) = json.loads(out.read_text())["configs"]
    rows = entry["fold_rows"]
    assert [r.get("kept", False) for r in rows] == [True, False, False]
    assert [r.get("resumed_after_epochs") for r in rows] == [None, 1, None] and [
        r["epochs"] for r in rows
    ] == [2] * 3
    (ref,) = json.loads(reference.read_text())["configs"]
    assert [r["miou"] for r in rows] == pytest.approx([r["miou"] for r in ref["fold_rows"]], abs=1e-6)
    assert entry["miou_mean"] == pytest.approx(ref["miou_mean"], abs=1e-6)
    # a finished fold is kept only for the same frames and config (how it ran aside)
    fold = folds[0]
    assert kept_fold_row(cfg, folds[1], fold_dir / "fold1") is None
    assert kept_fold_row(cfg, fold, fold_dir / "fold1")["miou"] == rows[0]["miou"]
    cfg.data.num_workers = 3  # how it runs
    assert kept_fold_row(cfg, fold, fold_dir / "fold1") is not None
    cfg.train.lr *= 2  # what it trains
    assert kept_fold_row(cfg, fold, fold_dir / "fold1") is None


@pytest.mark.slow
def test_cv_scores_with_the_configs_tta(tmp_path: Path) -> None:
    from offroadseg.config import load_config
    from offroadseg.experiments.cv import cross_validate

    root = make_ycor_like(tmp_path / "ycor", n_train=3, n_val=1, frame_ids=IDS[:4])
    cfg = load_config(
        REPO / "configs" / "ycor.yaml",
        [f"data.root={root}", *YCOR_TINY, "train.epochs=1", "model.backbone.train_blocks=1"],
    )
    assert cfg.eval.tta == "flip"
    seen = []
    res = cross_validate(
        [("ycor", cfg)],
        2,
        seed=1,
        work_dir=tmp_path / "runs",
        keep_checkpoints=True,
        on_fold=lambda p, so_far: seen.append((p["done"], len(so_far["configs"][0]["fold_rows"]))),
    )
    assert seen == [(1, 1), (2, 2)]  # partial results grow fold by fold
    for r in res["configs"][0]["fold_rows"]:
        # configs/ycor.yaml keeps the last epoch (train.checkpoint: last)
        assert r["scored_with"] == "last checkpoint (last.ckpt), flip TTA" and r["eval_s"] > 0
        assert r["miou_no_tta"] is not None and (Path(r["run_dir"]) / "checkpoints" / "last.ckpt").is_file()


def test_more_folds_than_groups_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    root = make_ycor_like(tmp_path / "ycor", n_train=4, n_val=2, frame_ids=IDS)
    assert main(_argv(root, tmp_path, "--folds", "4")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--folds 4 is more than the 3 groups" in err
    assert not (tmp_path / "runs").exists()


def test_duality_layout_is_refused(toy_root: Path, tmp_path: Path, capsys) -> None:
    from toydata import toy_config

    from offroadseg.experiments.cv import plan_folds

    with pytest.raises(ConfigError, match="cross-validation needs data.layout=generic"):
        plan_folds(toy_config(toy_root, tmp_path / "r"), 2)


def test_a_base_that_trains_on_train_plus_val_never_trains_on_a_folds_held_out_frames(tmp_path: Path) -> None:
    from offroadseg.config import config_from_dict
    from offroadseg.data.datasets import list_samples
    from offroadseg.experiments.cv import fold_config, plan_folds

    root = make_ycor_like(tmp_path / "ycor", n_train=4, n_val=2, frame_ids=[0, 10, 20, 30, 40, 50])
    cfg = config_from_dict(
        {
            "data": {
                "root": str(root),
                "layout": "generic",
                "split_file": "split.tsv",
                "taxonomy": str(root / "classes.tsv"),
                "train_split": "train+val",
            }
        }
    )
    folds = plan_folds(cfg, 3)
    for i, fold in enumerate(folds):
        out = fold_config(cfg, fold, tmp_path / f"fold{i}")
        trained = {s.name for s in list_samples(out.data, out.data.train_split)}
        scored = {s.name for s in list_samples(out.data, out.data.val_split)}
        assert trained == set(fold.train) and scored == set(fold.val) and not trained & scored


def test_epoch_line_known_answer() -> None:
    """Epoch 3 of 5 at 383.5 s an epoch: 2 epochs, 767 s, left; the last epoch says nothing of what is left."""
    from offroadseg.cli.cv import epoch_line

    row = {"epoch": 3, "epochs": 5, "val_miou": 0.31586, "epoch_time_s": 383.49, "fold": 2, "folds": 5}
    assert epoch_line("trial #28", row) == (
        "    trial #28 fold 2/5 epoch 3/5: val mIoU 0.3159 (6.4 min an epoch; training ends in ~12.8 min)"
    )
    assert epoch_line("ycor", {**row, "epoch": 5, "epoch_time_s": 90.0}) == (
        "    ycor fold 2/5 epoch 5/5: val mIoU 0.3159 (90 s an epoch)"
    )

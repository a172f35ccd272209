"""``offroadseg bench adapt-cv``: per-fold before/after on a tiny YCOR-like set, resuming, the source frames
given to adapt, the checks' verdicts from hand-made records, bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from toydata import TINY, make_ycor_like

import offroadseg.experiments.adapt as adapt_module
import offroadseg.experiments.cv as cv_module
from offroadseg.cli import main
from offroadseg.errors import ConfigError, OffroadsegError
from offroadseg.experiments.bench.adapt_cv import markdown, parse_fold_list, select_folds, summarize

REPO = Path(__file__).resolve().parents[2]
IDS = [0, 1, 10, 11, 20, 21]  # three gap-5 groups of two neighbouring frames
GROUPS = {"iid000000": {"iid000000", "iid000001"}, "iid000010": {"iid000010", "iid000011"}}
GROUPS["iid000020"] = {"iid000020", "iid000021"}
ADAPT = ["--adapt", "rounds=1", "--adapt", "steps=1", "--adapt", "batch_size=2", "--adapt", "gallery=1"]


def _argv(root: Path, out: Path, *extra: str) -> list[str]:
    config = str(REPO / "configs" / "ycor_quick.yaml")
    tiny = [*TINY, "train.epochs=1", "train.accelerator=cpu", "model.backbone.train_blocks=1"]
    return [
        "bench",
        "adapt-cv",
        config,
        f"data.root={root}",
        *tiny,
        "--folds",
        "3",
        "--out",
        str(out),
        *extra,
    ]


def _run(argv: list[str]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(argv)


@pytest.fixture
def ycor_root(tmp_path: Path) -> Path:
    return make_ycor_like(tmp_path / "ycor", n_train=4, n_val=2, frame_ids=IDS)


class _Interrupted(OffroadsegError):
    pass


def test_records_per_fold_then_resumes(ycor_root, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "bench"
    sources: list[set[str]] = []
    real_source, real_adapt = adapt_module.load_source_frames, adapt_module.adapt

    def spy_source(cfg, tax, checkpoint, **kw):
        frames = real_source(cfg, tax, checkpoint, **kw)
        sources.append(set(frames.names))
        return frames

    def adapt_fails_on_fold2(checkpoint, *a, **kw):
        if "fold2" in str(checkpoint):
            raise _Interrupted("interrupted")
        return real_adapt(checkpoint, *a, **kw)

    monkeypatch.setattr(adapt_module, "load_source_frames", spy_source)
    monkeypatch.setattr(adapt_module, "adapt", adapt_fails_on_fold2)
    # fold 1 is recorded; fold 2 trains, then its adaptation is interrupted: no record for it
    assert _run(_argv(ycor_root, out, *ADAPT, "--only-folds", "1,2")) == 2
    assert [r["fold"] for r in json.loads((out / "adapt_cv.json").read_text())["records"]] == [1]
    assert (out / "fold2" / "train" / "fold_row.json").is_file()

    # the rerun skips fold 1 and reuses fold 2's finished training: training again would fail
    def no_training(*_a, **_k):
        raise AssertionError("a finished training ran again")

    monkeypatch.setattr(cv_module, "run_fold", no_training)
    monkeypatch.setattr(adapt_module, "adapt", real_adapt)
    capsys.readouterr()
    assert _run(_argv(ycor_root, out, *ADAPT, "--only-folds", "2,1", "--json", str(tmp_path / "r.json"))) == 0
    printed = capsys.readouterr().out
    assert (
        "fold 1/3: already recorded" in printed
        and "fold 2/3: training on 4 frames (2 held out): kept, finished earlier" in printed
    )
    assert "| 1/3 | 2 |" in printed and "| 2/3 | 2 |" in printed
    res = json.loads((out / "adapt_cv.json").read_text())
    assert json.loads((tmp_path / "r.json").read_text())["records"] == res["records"]
    assert res["ran"] == [2] and res["skipped"] == [1]
    recs = res["records"]
    assert [r["fold"] for r in recs] == [1, 2] and [r["training_reused"] for r in recs] == [False, True]
    assert len(sources) == 2
    for r, source in zip(recs, sources, strict=True):
        held_out = GROUPS[r["val_groups"][0]]
        # adapt's labelled source is exactly the fold's train frames: no held-out frame
        assert source == set().union(*GROUPS.values()) - held_out
        assert r["target_frames"] == 2 and r["train_frames"] == 4 and r["source_frames"] == 4
        assert 0.0 <= r["before"] <= 1.0 and 0.0 <= r["after"] <= 1.0
        assert r["gain_points"] == pytest.approx(100 * (r["after"] - r["before"]))
        assert r["adapt_frames_per_min"] == pytest.approx(60 * 2 / r["seconds"]["adapt"])
        assert min(r["seconds"][k] for k in ("train", "adapt", "score")) > 0
        assert Path(r["adapted_checkpoint"]).is_file() and Path(r["checkpoint"]).is_file()
    s = res["summary"]
    assert s["folds_done"] == 2 and not s["complete"]
    assert s["mean_gain_points"] == pytest.approx((recs[0]["gain_points"] + recs[1]["gain_points"]) / 2)

    # all recorded: nothing runs; another setup in the same --out is refused, nothing lost
    assert _run(_argv(ycor_root, out, *ADAPT, "--only-folds", "1,2")) == 0
    assert json.loads((out / "adapt_cv.json").read_text())["ran"] == []
    assert _run(_argv(ycor_root, out, "--adapt", "rounds=2", "--only-folds", "3")) == 2
    assert "another setup" in capsys.readouterr().err
    assert json.loads((out / "adapt_cv.json").read_text())["records"] == recs


def _rec(fold: int, before: float, after: float, frames: int = 100, adapt_s: float = 60.0) -> dict:
    return {
        "fold": fold,
        "folds": 3,
        "target_frames": frames,
        "before": before,
        "after": after,
        "gain_points": 100 * (after - before),
        "collapsed": [],
        "adapt_frames_per_min": 60 * frames / adapt_s,
        "seconds": {"train": 1.0, "adapt": adapt_s, "score": 1.0},
    }


def test_checks_follow_the_numbers() -> None:
    # gains +3, +4, -0.5 points: mean +2.17 (met), worst -0.5 (met); 300 frames in 3 min -> 10 min / 1000
    ok = summarize([_rec(1, 0.40, 0.43), _rec(2, 0.50, 0.54), _rec(3, 0.45, 0.445)], 3)
    assert ok["mean_gain_points"] == pytest.approx(13 / 6) and ok["worst_fold"] == 3
    assert ok["worst_gain_points"] == pytest.approx(-0.5) and ok["complete"]
    assert ok["adapt_frames_per_min"] == pytest.approx(100.0) and ok[
        "minutes_for_1000_frames"
    ] == pytest.approx(10)
    assert {k: c["met"] for k, c in ok["checks"].items()} == {
        "mean_gain": True,
        "worst_fold": True,
        "adapt_time": True,
    }
    # mean +3.0 but one fold -1.5: the second check fails; 100 frames in 40 min -> 400 min / 1000
    bad = summarize([_rec(1, 0.40, 0.475, adapt_s=2400.0), _rec(2, 0.50, 0.485, adapt_s=2400.0)], 3)
    assert bad["mean_gain_points"] == pytest.approx(3.0) and bad["worst_gain_points"] == pytest.approx(-1.5)
    assert {k: c["met"] for k, c in bad["checks"].items()} == {
        "mean_gain": True,
        "worst_fold": False,
        "adapt_time": False,
    }
    assert not bad["complete"] and bad["minutes_for_1000_frames"] == pytest.approx(400.0)
    # mean +1.0 is under +2 although no fold loses
    low = summarize([_rec(1, 0.40, 0.41), _rec(2, 0.50, 0.51)], 2)
    assert low["checks"]["mean_gain"]["met"] is False and low["checks"]["worst_fold"]["met"] is True
    text = markdown([_rec(1, 0.40, 0.475), _rec(2, 0.50, 0.485)], bad)
    assert "| 2/3 | 100 | 0.5000 | 0.4850 | -1.5 |" in text and "no fold below -1.0 point: NOT met" in text
    assert "2 of 3 folds, so far" in text
    assert summarize([], 3)["checks"]["mean_gain"]["met"] is None


def test_fold_lists() -> None:
    assert parse_fold_list("1, 3,1") == [1, 3] and select_folds(5, [3, 1]) == [3, 1]
    assert select_folds(3, None) == [1, 2, 3]
    with pytest.raises(ConfigError, match="fold 6 does not exist"):
        select_folds(5, [1, 6])
    with pytest.raises(ConfigError, match="'x' is not a fold number"):
        parse_fold_list("1,x")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--only-folds", "4"], "fold 4 does not exist (the folds are 1..3)"),
        (["--only-folds", "one"], "is not a fold number"),
        (["--folds", "1"], "--folds must be >= 2"),
    ],
)
def test_bad_input_one_line(ycor_root, tmp_path, capsys, extra, message) -> None:
    assert _run(_argv(ycor_root, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "adapt_cv.json").exists()


def test_missing_data_one_line(tmp_path, capsys) -> None:
    assert _run(_argv(tmp_path / "nowhere", tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert "its data cannot be read" in err and "data.root" in err and len(err.splitlines()) == 1

"""``offroadseg demo --adapt``: the adaptation step writes both test figures and the health summary into
the report (the tiny random backbone standing in for DINOv2-S)."""

import json

import pytest

from offroadseg.cli import main
from offroadseg.experiments.demo import adapt_section

TINY = [
    "--n-train", "4", "--n-val", "2", "--n-test", "2",
    "model.backbone.name=dinov2_test", "model.backbone.layers=2", "model.backbone.weights=random",
    "model.head.channels=16", "data.image_size=[56,98]", "train.epochs=1", "run.progress=false",
]  # fmt: skip


def test_demo_with_adapt_reports_before_and_after(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--adapt", "--out", str(out), "--json", str(tmp_path / "d.json"), *TINY]
    argv += ["adapt.rounds=1", "adapt.steps=2", "adapt.batch_size=2", "adapt.gallery=1"]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    result = json.loads((tmp_path / "d.json").read_text())
    a = result["adapt"]
    # the unadapted figure is the one the demo's own prediction step scored
    assert a["test_miou_before"] == pytest.approx(result["test_miou"])
    assert 0.0 <= a["test_miou_after"] <= 1.0 and a["gt_frames"] == 2
    assert a["settings"]["rounds"] == 1 and a["settings"]["steps"] == 2
    assert "1/5" in captured.out and "4/5 adapting" in captured.out
    assert f"({100 * (a['test_miou_after'] - a['test_miou_before']):+.1f} points" in captured.out
    # adaptation was given the test images only; the labels went to scoring
    adapt_json = json.loads((out / "adapted" / "adapt_report.json").read_text())
    assert adapt_json["targets"] == [str(out / "data" / "test" / "Color_Images")]
    html = (out / "report.html").read_text()
    for needle in (
        "Adaptation to the unseen biome (its test images; labels withheld)",
        f"test mIoU, unadapted model</th><td>{a['test_miou_before']:.3f}",
        f"test mIoU, adapted model</th><td>{a['test_miou_after']:.3f}",
        "health (label-free)",
        "collapse guard",
        "Adaptation rounds (label-free)",
        "test IoU per class, unadapted -&gt; adapted",
        f"offroadseg app {out / 'run' / 'checkpoints' / 'best.ckpt'} {out / 'adapted' / 'checkpoints' / 'last.ckpt'} "
        f"--data {out / 'data'} --split test",
    ):
        assert needle in html, needle
    assert (out / "adapted" / "checkpoints" / "last.ckpt").is_file()


def test_adapt_settings_without_adapt_is_one_line(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "d"), *TINY, "adapt.rounds=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--adapt" in err
    assert not (tmp_path / "d").exists()


def _figures(**changes) -> dict:
    base = {
        "test_miou_before": 0.4318,
        "test_miou_after": 0.4518,
        "gt_frames": 20,
        "confidence": [0.919, 0.946],
        "entropy": [0.134, 0.088],
        "kept_share": 0.82,
        "agreement": 0.992,
        "rounds": 3,
        "shipped_round": 3,
        "collapsed": [],
        "settings": {"method": "self", "rounds": 3, "steps": 50, "keep": 0.5, "classmix": False},
        "report": "r.html",
        "checkpoint": "c.ckpt",
        "per_class_iou": [
            {"Trees": 0.5531, "Rocks": None, "Sky": 0.9},
            {"Trees": 0.5811, "Rocks": 0.1, "Sky": 0.8996},
        ],
        "app_command": "offroadseg app a.ckpt b.ckpt --data d --split test",
    }
    return {**base, **changes}


def test_adapt_section_known_answers():
    (rows,) = adapt_section(_figures()).values()
    assert rows["test mIoU, unadapted model"] == "0.432"
    assert rows["test mIoU, adapted model"] == "0.452 (+2.0 points)"
    assert rows["health (label-free)"] == (
        "confidence 0.919 -> 0.946, entropy 0.134 -> 0.088; last round: 82% of target pixels pseudo-labelled, "
        "teacher-student agreement 99.2%"
    )
    assert rows["collapse guard"] == "no collapse; the checkpoint holds round 3 of 3"
    assert "classmix off" in rows["method"]
    assert rows["test IoU per class, unadapted -> adapted"] == "Trees 0.553 -> 0.581; Sky 0.900 -> 0.900"
    (rows,) = adapt_section(
        _figures(collapsed=["class 'Trees' vanished"], shipped_round=0, test_miou_after=0.4318)
    ).values()
    assert rows["test mIoU, adapted model"] == "0.432 (+0.0 points)"
    assert rows["collapse guard"].startswith("COLLAPSED and stopped (class 'Trees' vanished)")
    assert "the UNADAPTED model" in rows["collapse guard"]


def test_bad_adapt_setting_fails_before_anything_runs(tmp_path, capsys):
    rc = main(["demo", "--adapt", "--out", str(tmp_path / "d"), *TINY, "adapt.round=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "'round'" in err and "rounds" in err
    assert not (tmp_path / "d").exists()

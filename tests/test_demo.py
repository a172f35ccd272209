"""The demo end to end, with the tiny random backbone standing in for DINOv2-S."""

import json
from pathlib import Path

from offroadseg.cli import main


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--out",
            str(out),
            "--n-train",
            "4",
            "--n-val",
            "2",
            "--n-test",
            "2",
            "--json",
            str(tmp_path / "d.json"),
            "model.backbone.name=dinov2_test",
            "model.backbone.layers=2",
            "model.backbone.weights=random",
            "model.head.channels=16",
            "data.image_size=[56,98]",
            "train.epochs=1",
            "run.progress=false",
        ]
    )
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.err[-2000:]
    assert "report:" in printed and "majority-class baseline" in printed
    app_line = next(
        ln for ln in printed.splitlines() if ln.startswith("try it in a browser: offroadseg app ")
    )
    assert Path(app_line.split()[7]).is_file() and Path(app_line.split()[-1]).is_dir()  # checkpoint, data
    result = json.loads((tmp_path / "d.json").read_text())
    assert 0.0 <= result["val_miou"] <= 1.0 and 0.0 <= result["test_miou"] <= 1.0
    assert 0.0 < result["majority_val_miou"] < 1.0
    html = (out / "report.html").read_text()
    assert "offroadseg app " in html  # how to open the app on the demo's checkpoint
    for needle in (
        "Per-class",
        "Best test images",
        "Worst test images",
        "majority-class baseline",
        "data:image/png;base64",
    ):
        assert needle in html, needle
    assert len(list((out / "predictions" / "masks").iterdir())) == 2
    assert (out / "data" / "test" / "Segmentation").is_dir()

"""Each bad input gets one line naming the file, the value and the fix, exit status 2, no traceback."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from offroadseg.cli import main
from offroadseg.data.io import write_png


@pytest.fixture
def data(toy_root, tmp_path):
    return shutil.copytree(toy_root, tmp_path / "data")


def _first(root, split, kind):
    return sorted((root / split / kind).iterdir())[0]


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("offroadseg: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_stats_on_good_data(capsys, data, tmp_path):
    code, out, _ = _run(capsys, "stats", data, "--json", tmp_path / "s.json")
    assert code == 0 and "all images and masks read and valid" in out
    payload = json.loads((tmp_path / "s.json").read_text())
    assert set(payload["splits"]) == {"train", "val", "test"}
    assert max(payload["class_weights"].values()) == pytest.approx(5.0)


def test_missing_mask(capsys, data):
    victim = _first(data, "train", "Segmentation")
    victim.unlink()
    code, _, err = _run(capsys, "stats", data)
    line = _one_error_line(err)
    assert code == 2 and victim.name in line and "fix:" in line


def test_size_mismatch(capsys, data):
    write_png(_first(data, "val", "Segmentation"), np.zeros((10, 12), dtype=np.uint16))
    code, _, err = _run(capsys, "stats", data)
    assert code == 2 and "is 12x10 but image" in _one_error_line(err)


def test_truncated_image(capsys, data):
    victim = _first(data, "train", "Color_Images")
    victim.write_bytes(victim.read_bytes()[:100])
    code, _, err = _run(capsys, "stats", data)
    line = _one_error_line(err)
    assert code == 2 and victim.name in line and "unreadable or truncated" in line


def test_eight_bit_mask(capsys, data):
    victim = _first(data, "train", "Segmentation")
    Image.fromarray(np.zeros((56, 84), dtype=np.uint8)).save(victim)
    code, _, err = _run(capsys, "stats", data)
    line = _one_error_line(err)
    assert code == 2 and victim.name in line and "8-bit" in line and "10000" in line


def test_values_outside_taxonomy_listed_with_counts(capsys, data):
    victim = _first(data, "train", "Segmentation")
    mask = np.zeros((56, 84), dtype=np.uint16)
    mask[0, :3] = 4242
    write_png(victim, mask)
    code, _, err = _run(capsys, "stats", data)
    line = _one_error_line(err)
    assert code == 2 and "4242 (3 px)" in line and victim.name in line


def test_empty_split(capsys, data):
    for p in (data / "val" / "Color_Images").iterdir():
        p.unlink()
    code, _, err = _run(capsys, "stats", data)
    assert code == 2 and "split 'val' is empty" in _one_error_line(err)


def _config(tmp_path, data, **extra):
    text = (
        f"data: {{root: {data}, image_size: [56, 84], num_workers: 0}}\n"
        "model: {backbone: {name: dinov2_test, weights: random}, head: {name: conv}}\n"
        f"train: {{epochs: 1, batch_size: 2, accelerator: cpu}}\nrun: {{dir: {tmp_path / 'run'}, progress: false}}\n"
    )
    f = tmp_path / "c.yaml"
    f.write_text(text)
    return f


def test_unknown_config_key(capsys, data, tmp_path):
    code, _, err = _run(capsys, "train", _config(tmp_path, data), "train.batchsize=4")
    line = _one_error_line(err)
    assert code == 2 and "train.batchsize" in line and "train.batch_size" in line


def test_unknown_backbone_and_head(capsys, data, tmp_path):
    cfg = _config(tmp_path, data)
    code, _, err = _run(capsys, "train", cfg, "model.backbone.name=dinov2_vitx14")
    line = _one_error_line(err)
    assert code == 2 and "dinov2_vits14" in line and "dinov2_vitx14" in line
    code, _, err = _run(capsys, "train", cfg, "model.head.name=upernet")
    line = _one_error_line(err)
    assert code == 2 and "linear" in line and "ppm" in line


def test_failed_train_keeps_earlier_results(capsys, data, tmp_path):
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    (run / "best.ckpt").write_bytes(b"earlier")
    _first(data, "train", "Segmentation").unlink()
    code, _, _ = _run(capsys, "train", _config(tmp_path, data))
    assert code == 2 and (run / "best.ckpt").read_bytes() == b"earlier"


def test_train_evaluate_score_roundtrip(capsys, data, tmp_path):
    cfg = _config(tmp_path, data)
    code, out, _ = _run(capsys, "train", cfg, "--json", tmp_path / "t.json")
    assert code == 0 and "mIoU" in out
    result = json.loads((tmp_path / "t.json").read_text())
    # run.progress: false shows no bar: a line per validation epoch says where training is
    line = f"    train epoch 1/1: val mIoU {result['history'][0]['val_miou']:.4f} ("
    assert line in out, out
    code, out, _ = _run(
        capsys, "evaluate", result["best_checkpoint"], "--split", "val", "--json", tmp_path / "e.json"
    )
    assert code == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["miou"] == pytest.approx(result["best_val_miou"], abs=1e-6)
    assert {
        "miou",
        "per_class_iou",
        "pixel_accuracy",
        "mean_dice",
        "confusion_matrix",
        "batch_mean_iou",
    } <= set(ev)
    code, _, _ = _run(
        capsys, "evaluate", result["best_checkpoint"], "--tta", "flip", "--json", tmp_path / "f.json"
    )
    flipped = json.loads((tmp_path / "f.json").read_text())
    assert code == 0 and 0.0 <= flipped["miou"] <= 1.0
    gt = data / "val" / "Segmentation"
    code, _, _ = _run(capsys, "score", gt, gt, "--json", tmp_path / "s.json")
    sc = json.loads((tmp_path / "s.json").read_text())
    assert code == 0 and sc["miou"] == 1.0 and sc["per_class_iou"]["Flowers"] is None
    assert sum(map(sum, sc["confusion_matrix"])) == 3 * 56 * 84


def test_train_on_train_plus_val_says_val_is_not_held_out(capsys, data, tmp_path):
    cfg = _config(tmp_path, data)
    code, out, _ = _run(capsys, "train", cfg, "data.train_split=train+val", "--json", tmp_path / "t.json")
    result = json.loads((tmp_path / "t.json").read_text())
    assert code == 0 and result["val_held_out"] is False
    assert "not held out" in out and "validation (NOT held out):" in out
    code, out, _ = _run(capsys, "train", cfg, "--json", tmp_path / "h.json")
    assert code == 0 and json.loads((tmp_path / "h.json").read_text())["val_held_out"] is True
    assert "not held out" not in out.lower()


def test_subprocess_error_has_no_traceback(data, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "offroadseg", "train", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("offroadseg: error: config file") and "Traceback" not in proc.stderr


def test_an_error_raised_in_a_dataloader_worker_is_one_line(monkeypatch, capsys):
    """torch re-raises a worker's DataError with its traceback as the message: the CLI shows the original."""
    from torch._utils import ExceptionWrapper

    from offroadseg.cli import common
    from offroadseg.errors import DataError, user_message

    message = "mask labels/a.png is 1024x544 but image images/a.jpg is 448x238; fix: re-export the mask"
    try:
        raise DataError(message)
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as caught:
        wrapped.reraise()
    assert "Original Traceback" in str(caught.value)
    assert user_message(caught.value) == message
    assert user_message(DataError("plain")) == "plain"

    def boom(args):
        wrapped.reraise()

    real = common.register_commands

    def register(sub, modules):
        real(sub, modules)
        sub.choices["doctor"].set_defaults(func=boom)

    monkeypatch.setattr("offroadseg.cli.register_commands", register)
    assert main(["doctor", "."]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"offroadseg: error: {message}"


def test_every_command_and_bench_prints_its_help():
    """``--help`` of every command and sub-command formats (a bare ``%`` in a help text is a TypeError
    in argparse, found in ``bench --help``)."""
    import argparse
    import contextlib
    import io

    from offroadseg.cli import build_parser

    def walk(parser, path):
        yield path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*path, name])

    paths = list(walk(build_parser(), []))
    assert ["bench", "cache"] in paths and ["tune"] in paths
    for path in paths:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
            build_parser().parse_args([*path, "--help"])
        assert done.value.code == 0 and out.getvalue().startswith("usage: "), path

"""`offroadseg doctor`: every problem of a dataset listed in one pass, with the right exit status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from toydata import write_image

from offroadseg.cli import main
from offroadseg.config import DataConfig
from offroadseg.data.doctor import examine
from offroadseg.data.io import write_png

YCOR_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ycor.yaml"
H, W = 28, 42
CLASSES_TSV = "id\tname\tR\tG\tB\n0\tvoid\t0\t0\t0\n1\tsand\t200\t180\t120\n2\trock\t120\t120\t120\n3\tsky\t90\t150\t250\n"
GENERIC = [
    "--layout",
    "generic",
    "--split-file",
    "split.tsv",
    "--taxonomy",
    "classes.tsv",
    "--ignore-values",
    "0",
]


def _make_generic(root, counts=(("train", 4), ("val", 2)), seed=0):
    """Random-noise images (perceptual hashes far apart) and masks holding every class."""
    rng = np.random.default_rng(seed)
    lines = []
    for split, n in counts:
        for i in range(n):
            name = f"{split}{i}"
            write_image(root / "images" / f"{name}.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
            mask = rng.integers(0, 4, (H, W), dtype=np.uint8)
            mask[0, :4] = [0, 1, 2, 3]
            write_png(root / "labels" / f"{name}.png", mask)
            lines.append(f"{name}\t{split}")
    (root / "split.tsv").write_text("\n".join(lines) + "\n")
    (root / "classes.tsv").write_text(CLASSES_TSV)
    return root


def _cfg(root) -> DataConfig:
    return DataConfig(
        root=str(root),
        layout="generic",
        split_file="split.tsv",
        taxonomy="classes.tsv",
        ignore_values=[0],
    )


def _doctor(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _checks(report, level):
    return {f.check for f in report.findings if f.level == level}


@pytest.fixture
def generic(tmp_path):
    return _make_generic(tmp_path / "ds")


def test_clean_dataset_counts_and_exit_zero(generic, capsys, tmp_path):
    report = examine(_cfg(generic))
    assert report.findings == [] and report.exit_code(strict=True) == 0
    assert [(s.split, s.images, s.masks) for s in report.splits] == [("train", 4, 4), ("val", 2, 2)]
    assert report.files_read == 12
    masks = [np.asarray(Image.open(generic / "labels" / f"train{i}.png")) for i in range(4)]
    train = report.splits[0]
    assert train.class_pixels == {
        n: sum(int((m == v).sum()) for m in masks) for v, n in ((1, "sand"), (2, "rock"), (3, "sky"))
    }
    assert train.ignored_pixels == sum(int((m == 0).sum()) for m in masks)
    assert train.image_sizes == {f"{W}x{H}": 4} and train.mask_depths == {"8-bit": 4}

    code, out, _ = _doctor(capsys, "doctor", generic, *GENERIC, "--strict", "--json", tmp_path / "d.json")
    assert code == 0 and "no errors, no warnings" in out
    payload = json.loads((tmp_path / "d.json").read_text())
    assert payload["errors"] == 0 and payload["exit_code"] == 0 and payload["splits"][1]["images"] == 2


def test_broken_copy_lists_every_error(generic, capsys, tmp_path):
    (generic / "labels" / "train0.png").unlink()  # image without a mask
    write_png(generic / "labels" / "stray.png", np.zeros((H, W), np.uint8))  # mask without an image
    truncated = generic / "images" / "train1.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    write_png(generic / "labels" / "train2.png", np.ones((H + 2, W), np.uint8))  # size mismatch
    bad = np.ones((H, W), np.uint8)
    bad[0, :5] = 77
    write_png(generic / "labels" / "train3.png", bad)  # 5 px of a value outside the taxonomy
    shutil.copy(generic / "images" / "train3.png", generic / "images" / "val0.png")  # leakage
    with (generic / "split.tsv").open("a") as fh:
        fh.write("ghost\tval\n")  # listed, no image

    report = examine(_cfg(generic))
    assert _checks(report, "error") == {
        "missing_mask",
        "missing_image",
        "unreadable",
        "size_mismatch",
        "unknown_values",
        "exact_duplicate",
    }
    by_check = {f.check: f for f in report.errors}
    assert by_check["missing_mask"].files == ["images/train0.png"]
    assert by_check["unreadable"].files == ["images/train1.png"]
    assert "77 (5 px in 1 mask(s))" in by_check["unknown_values"].message
    assert set(by_check["exact_duplicate"].files) == {"images/train3.png", "images/val0.png"}
    orphans = [f.files for f in report.errors if f.check == "missing_image"]
    assert sorted(orphans) == [["ghost"], ["labels/stray.png"]]
    assert "near_duplicate" not in _checks(report, "warning")  # an exact copy is not counted twice

    code, out, err = _doctor(capsys, "doctor", generic, *GENERIC, "--json", tmp_path / "d.json")
    assert code == 1 and "fix the errors before training" in out and "Traceback" not in err
    assert json.loads((tmp_path / "d.json").read_text())["errors"] == 7


def test_near_duplicates_warn_unless_strict(generic, capsys):
    img = np.asarray(Image.open(generic / "images" / "train2.png")).astype(np.int16)
    write_image(generic / "images" / "val1.png", np.clip(img + 6, 0, 255).astype(np.uint8))  # brighter copy
    report = examine(_cfg(generic))
    assert report.errors == [] and _checks(report, "warning") == {"near_duplicate"}
    assert [(n.a, n.b) for n in report.near_duplicates] == [("val/val1", "train/train2")]
    assert report.near_duplicates[0].distance <= 2
    assert examine(_cfg(generic), near_distance=-1).findings == []

    code, out, _ = _doctor(capsys, "doctor", generic, *GENERIC)
    assert code == 0 and "[near_duplicate] 1 image(s) in 'val'" in out
    code, _, _ = _doctor(capsys, "doctor", generic, *GENERIC, "--strict")
    assert code == 1


def test_warnings_for_missing_class_mixed_depth_and_loose_images(generic):
    write_png(generic / "labels" / "val0.png", np.ones((H, W), np.uint16))  # 16-bit, only sand
    write_png(generic / "labels" / "val1.png", np.ones((H, W), np.uint8))
    write_image(generic / "images" / "extra.png", np.zeros((H, W, 3), np.uint8))
    write_png(generic / "labels" / "extra.png", np.ones((H, W), np.uint8))
    report = examine(_cfg(generic))
    assert report.errors == []
    assert _checks(report, "warning") == {"missing_class", "mixed_depth", "no_split"}
    missing = next(f for f in report.warnings if f.check == "missing_class")
    assert "'val'" in missing.message and "rock, sky" in missing.message


def test_duality_layout_from_synth(tmp_path, capsys):
    root = tmp_path / "synth"
    assert (
        main(["synth", str(root), "--n-train", "3", "--n-val", "2", "--n-test", "0", "--size", "56x84"]) == 0
    )
    report = examine(DataConfig(root=str(root)))
    assert report.errors == [] and [s.split for s in report.splits] == ["train", "val"]
    assert report.splits[0].mask_depths == {"16-bit": 3}
    # an 8-bit export of a 16-bit taxonomy: named, not silently truncated
    victim = sorted((root / "val" / "Segmentation").iterdir())[0]
    Image.fromarray(np.zeros((56, 84), np.uint8)).save(victim)
    code, out, _ = _doctor(capsys, "doctor", root)
    assert code == 1 and "8-bit" in out and victim.name in out


@pytest.mark.parametrize("layout", ["duality", "generic"])
def test_not_a_dataset_is_one_line_exit_2(tmp_path, capsys, layout):
    (tmp_path / "empty").mkdir()
    code, _, err = _doctor(capsys, "doctor", tmp_path / "empty", "--layout", layout)
    lines = [line for line in err.splitlines() if line.startswith("offroadseg: error:")]
    assert code == 2 and len(lines) == 1 and "is not a dataset" in lines[0] and "fix:" in lines[0]
    assert "Traceback" not in err
    code, _, err = _doctor(capsys, "doctor", tmp_path / "nowhere")
    assert code == 2 and "is not a folder" in err


def test_missing_val_split_is_an_error(generic):
    lines = (generic / "split.tsv").read_text().replace("\tval", "\ttrain")
    (generic / "split.tsv").write_text(lines)
    report = examine(_cfg(generic))
    assert _checks(report, "error") == {"missing_split"} and report.exit_code() == 1


@pytest.mark.shared_data
def test_ycor_config_finds_real_near_duplicates(shared_data, tmp_path, capsys):
    # A few YCOR frames through configs/ycor.yaml's data section; val iid000955 was filmed on the
    # same stretch of trail as train iid000646 (checked by eye).
    train = ["iid000646", "iid000001", "iid000300", "iid000500"]
    val = ["iid000955", "iid000840"]
    split = tmp_path / "split.tsv"
    split.write_text("".join(f"{n}\ttrain\n" for n in train) + "".join(f"{n}\tval\n" for n in val))
    root = shared_data / "ycor"
    code, out, _ = _doctor(
        capsys,
        "doctor",
        "--config",
        YCOR_CONFIG,
        root,
        f"data.split_file={split}",
        "--json",
        tmp_path / "d.json",
    )
    payload = json.loads((tmp_path / "d.json").read_text())
    assert code == 0 and payload["errors"] == 0, out
    assert [s["images"] for s in payload["splits"]] == [4, 2] and payload["files_read"] == 12
    pairs = {(n["a"], n["b"]) for n in payload["near_duplicates"]}
    assert ("val/iid000955", "train/iid000646") in pairs
    assert {f["check"] for f in payload["findings"]} >= {"near_duplicate", "no_split"}

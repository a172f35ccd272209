"""Plots, the evaluation text and the HTML report."""

from __future__ import annotations

import base64
import math
import re

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from offroadseg.metrics import best_epoch
from offroadseg.reporting.plots import (
    DPI,
    evaluation_text,
    plot_confusion_matrix,
    plot_curves,
    plot_lr_schedule,
    plot_per_class_iou,
    row_normalise,
)
from offroadseg.reporting.report import GalleryItem, make_strip, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ["Background", "Trees", "Flowers", "Sky"]
COLORS = np.array([[0, 0, 0], [34, 139, 34], [255, 105, 180], [135, 206, 235]], dtype=np.uint8)


def _history(n: int = 6) -> list[dict]:
    rows = []
    for e in range(1, n + 1):
        rows.append(
            {
                "epoch": e,
                "train_loss": 1.0 / e,
                "val_loss": 1.2 / e,
                "train_miou": 0.5 + 0.04 * e,
                "val_miou": 0.45 + 0.03 * e if e != 4 else 0.9,  # best at epoch 4
                "train_dice": 0.6 + 0.03 * e,
                "val_dice": None if e == 2 else 0.55 + 0.03 * e,
                "train_acc": 0.8,
                "val_acc": 0.78,
                "lr": 1e-3 / e,
                "val_batch_mean_iou": 0.6 + 0.02 * e,
                "epoch_time_s": 12.5,
            }
        )
    return rows


def _scores(names: list[str] = NAMES) -> dict:
    k = len(names)
    cm = np.diag(np.arange(1, k + 1) * 100).astype(int)
    cm[0, 1] = 30
    cm[k - 1, 0] = 5
    cm[2] = 0
    cm[:, 2] = 0  # class 2 absent from labels and predictions
    iou = {n: (None if i == 2 else 0.5 + 0.1 * i) for i, n in enumerate(names)}
    dice = {n: (None if v is None else min(1.0, v + 0.1)) for n, v in iou.items()}
    return {
        "miou": 0.61234,
        "per_class_iou": iou,
        "pixel_accuracy": 0.9321,
        "mean_dice": 0.7012,
        "per_class_dice": dice,
        "confusion_matrix": cm.tolist(),
    }


def _assert_png(path, *, min_size: tuple[int, int]) -> Image.Image:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG"
        w, h = img.size
    assert w >= min_size[0] and h >= min_size[1], (w, h)
    return img


# ---- plots ---------------------------------------------------------------------------------------
def test_plot_curves_writes_png(tmp_path):
    path = tmp_path / "curves.png"
    plot_curves(_history(), path)
    _assert_png(path, min_size=(11 * DPI - 10, 7 * DPI))


@pytest.mark.parametrize(
    "history",
    [[], [{"epoch": 1}], [{"epoch": 1, "train_loss": 0.5, "val_miou": None}], [{"val_miou": float("nan")}]],
)
def test_plot_curves_tolerates_missing_values(tmp_path, history):
    path = tmp_path / "curves.png"
    plot_curves(history, path)
    _assert_png(path, min_size=(200, 200))


def test_best_epoch_uses_val_miou():
    assert best_epoch(_history()) == (4, 0.9)
    assert best_epoch([{"epoch": 1, "val_miou": None}]) is None
    assert best_epoch([{"val_miou": 0.2}, {"val_miou": 0.3}]) == (2.0, 0.3)  # epoch from position


def test_plot_lr_schedule_writes_png(tmp_path):
    lrs = [1e-4 * (1 + math.cos(math.pi * s / 100)) / 2 for s in range(100)]
    plot_lr_schedule(lrs, tmp_path / "lr_steps.png")
    plot_lr_schedule(lrs, tmp_path / "lr_epochs.png", steps_per_epoch=10)
    plot_lr_schedule([], tmp_path / "lr_empty.png")
    for name in ("lr_steps.png", "lr_epochs.png", "lr_empty.png"):
        _assert_png(tmp_path / name, min_size=(8 * DPI - 10, 4 * DPI - 10))


def test_plot_per_class_iou_writes_png(tmp_path):
    plot_per_class_iou(_scores(), tmp_path / "a.png", colors=COLORS)
    plot_per_class_iou(_scores(), tmp_path / "b.png")
    plot_per_class_iou({}, tmp_path / "c.png")
    for name in ("a.png", "b.png", "c.png"):
        _assert_png(tmp_path / name, min_size=(8 * DPI - 10, 3 * DPI - 10))


@pytest.mark.parametrize("k", [4, 20])
def test_plot_confusion_matrix_writes_png(tmp_path, k):
    names = NAMES if k == 4 else [f"class {i}" for i in range(k)]
    path = tmp_path / "cm.png"
    plot_confusion_matrix(_scores(names), path)
    _assert_png(path, min_size=(5 * DPI, 5 * DPI))


def test_row_normalise():
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    out = row_normalise(cm)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out[0], [0.75, 0.25, 0.0])
    assert np.isnan(out[1]).all()
    np.testing.assert_allclose(out[[0, 2]].sum(axis=1), 1.0)
    np.testing.assert_allclose(out[2], [0.25, 0.25, 0.5])
    with pytest.raises(ValueError, match="square"):
        row_normalise([[1, 2, 3]])


def test_failed_save_leaves_no_partial_file_and_keeps_existing(tmp_path, monkeypatch):
    path = tmp_path / "curves.png"
    path.write_bytes(b"old contents")

    def boom(self, fname, *args, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_curves(_history(), path)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_confusion_matrix(_scores(), tmp_path / "new.png")
    assert path.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]


# ---- evaluation text -----------------------------------------------------------------------------
def test_evaluation_text_contents():
    text = evaluation_text(_history(), _scores(), title="run alpha")
    assert "run alpha" in text
    for name in NAMES:
        assert name in text
    assert "0.6123" in text  # mIoU, 4 decimals
    assert "0.9321" in text and "0.7012" in text
    assert "mIoU: dataset-level, from one confusion matrix over the split" in text
    assert "batch-mean IoU: the reference pipeline's figure" in text
    assert "for comparison only" in text
    flowers = next(line for line in text.splitlines() if line.startswith("Flowers"))
    assert "absent" in flowers
    epoch_rows = [line for line in text.splitlines() if re.match(r"^\d+\b", line)]
    assert len(epoch_rows) == 6
    assert epoch_rows[3].startswith("4 *")  # best val mIoU
    assert "Best val mIoU:" in text and "(epoch 4)" in text


def test_evaluation_text_without_history_or_scores():
    text = evaluation_text([], None, title="empty")
    assert "empty" in text and "mIoU:" in text


# ---- report --------------------------------------------------------------------------------------
def _gallery(n: int = 4) -> list[GalleryItem]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        ids = rng.integers(0, len(COLORS), (30, 40))
        img = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
        truth = COLORS[ids].repeat(4, 0).repeat(4, 1)
        items.append(GalleryItem(f"img_{i}.png", img, truth, truth[::-1].copy(), miou=0.2 * i, caption="c"))
    items.append(GalleryItem("nolabel.png", items[0].image, None, items[0].prediction, miou=None))
    return items


def test_write_report_self_contained_html(tmp_path):
    plot_curves(_history(), tmp_path / "curves.png")
    plot_per_class_iou(_scores(), tmp_path / "per_class.png", colors=COLORS)
    names = [*NAMES[:3], "<script>alert(1)</script>"]
    scores = _scores(names)
    out = write_report(
        tmp_path / "report.html",
        title="Run <beta> & co",
        summary={"model": "vit-s <14>", "val mIoU": 0.61234, "epochs": 6},
        history=_history(),
        scores=scores,
        test_scores=_scores(names),
        figures={"curves": tmp_path / "curves.png", "per-class IoU": tmp_path / "per_class.png"},
        gallery=_gallery(),
        notes=["first note", "x < y"],
        colors=COLORS,
    )
    assert out == tmp_path / "report.html"
    doc = out.read_text()
    assert doc.startswith("<!DOCTYPE html>")
    assert "Run &lt;beta&gt; &amp; co" in doc
    assert "<script>" not in doc
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in doc
    for name in NAMES[:3]:
        assert name in doc
    assert "0.6123" in doc
    assert "Best test images" in doc and "Worst test images" in doc
    assert "x &lt; y" in doc
    # self-contained: no external resources, images inline
    assert not re.search(r'(src|href)="(?!data:)', doc)
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", doc)
    jpegs = re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", doc)
    assert len(pngs) == 2
    assert base64.b64decode(pngs[0])[:8] == PNG_SIGNATURE
    assert len(jpegs) == 3 * 4 + 2  # 4 rows with truth, one without
    assert all(base64.b64decode(j)[:2] == b"\xff\xd8" for j in jpegs)
    # best section lists the best image first, worst section the worst first
    best_at = doc.index("Best test images")
    worst_at = doc.index("Worst test images")
    assert best_at < doc.index("img_3.png") < worst_at < doc.index("img_0.png")


def test_write_report_minimal_and_missing_figure(tmp_path):
    out = write_report(
        tmp_path / "sub" / "r.html",
        title="t",
        summary={},
        history=None,
        scores=None,
        figures={"gone": tmp_path / "missing.png"},
    )
    doc = out.read_text()
    assert "<h1>t</h1>" in doc and "was not found" in doc


def test_write_report_failure_keeps_existing(tmp_path, monkeypatch):
    import offroadseg.reporting.report as report

    path = tmp_path / "r.html"
    path.write_text("old")

    def boom(*args, **kwargs):
        raise RuntimeError("encoder broke")

    monkeypatch.setattr(report, "_jpeg_b64", boom)
    with pytest.raises(RuntimeError):
        write_report(path, title="t", summary={}, history=None, scores=None, gallery=_gallery(1))
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


# ---- strips --------------------------------------------------------------------------------------
def test_make_strip_shapes():
    img = np.zeros((100, 200, 3), np.uint8)
    mask = np.full((50, 100, 3), 7, np.uint8)
    strip = make_strip(img, mask, mask, height=60)
    assert strip.dtype == np.uint8 and strip.shape == (60, 120 * 3 + 2 * 4, 3)
    assert set(np.unique(strip[:, 124:244])) == {7}  # nearest resize: no invented colours
    assert (strip[:, 120:124] == 255).all()
    no_truth = make_strip(img, None, mask, height=60)
    assert no_truth.shape == (60, 120 * 2 + 4, 3)
    with pytest.raises(ValueError, match="uint8"):
        make_strip(img.astype(np.float32), None, mask)

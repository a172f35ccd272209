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
# Each plot is checked for what it draws, read back from the returned figure, and for the colours
# of that drawing in the PNG: a blank or empty figure fails both.
def _pixels_of(path, colour: str, tol: int = 12) -> int:
    """How many pixels of the PNG are within ``tol`` (per channel) of ``colour`` (#rrggbb)."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB")).astype(int)
    return int((np.abs(arr - rgb).max(axis=-1) <= tol).sum())


def _data_lines(ax) -> dict[str, tuple[list[float], list[float]]]:
    """The labelled data lines of an axes: label -> (x, y)."""
    return {
        line.get_label(): (list(map(float, line.get_xdata())), list(map(float, line.get_ydata())))
        for line in ax.get_lines()
        if not line.get_label().startswith("_")
    }


def test_plot_curves_draws_each_series_and_the_best_epoch(tmp_path):
    from offroadseg.reporting.plots import BATCH_MEAN_LABEL, BEST_COLOR, TRAIN_COLOR, VAL_COLOR

    history = _history()
    path = tmp_path / "curves.png"
    fig = plot_curves(history, path)
    _assert_png(path, min_size=(11 * DPI - 10, 7 * DPI))
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["Loss", "Mean IoU", "Mean Dice", "Pixel accuracy"]
    epochs = [float(r["epoch"]) for r in history]
    loss = _data_lines(axes[0])
    assert loss["train"] == (epochs, [r["train_loss"] for r in history])
    assert loss["val"] == (epochs, [r["val_loss"] for r in history])
    iou = _data_lines(axes[1])
    assert iou["val"][1] == [r["val_miou"] for r in history]
    assert iou[BATCH_MEAN_LABEL][1] == [r["val_batch_mean_iou"] for r in history]
    assert iou["best val mIoU 0.9000 (epoch 4)"] == ([4.0], [0.9])
    dice = _data_lines(axes[2])  # epoch 2 has no val Dice: skipped, not drawn as 0
    assert dice["val"][0] == [1.0, 3.0, 4.0, 5.0, 6.0]
    for ax in axes:  # the best epoch marked on every panel
        assert [4.0, 4.0] in [list(map(float, ln.get_xdata())) for ln in ax.get_lines()]
    assert fig.get_suptitle() == "Training curves (6 epochs)"
    for colour, least in ((TRAIN_COLOR, 1000), (VAL_COLOR, 1000), (BEST_COLOR, 100)):  # best: dotted
        assert _pixels_of(path, colour) > least, colour


@pytest.mark.parametrize(
    "history",
    [[], [{"epoch": 1}], [{"epoch": 1, "train_loss": 0.5, "val_miou": None}], [{"val_miou": float("nan")}]],
)
def test_plot_curves_tolerates_missing_values(tmp_path, history):
    path = tmp_path / "curves.png"
    fig = plot_curves(history, path)
    _assert_png(path, min_size=(200, 200))
    drawn = {ax.get_title(): _data_lines(ax) for ax in fig.axes}
    has_loss = any("train_loss" in r for r in history)
    assert drawn["Loss"] == ({"train": ([1.0], [0.5])} if has_loss else {})
    assert drawn["Mean IoU"] == {}  # None and NaN are not points
    no_data = [ax.get_title() for ax in fig.axes if any(t.get_text() == "no data" for t in ax.texts)]
    assert no_data == (
        ["Mean IoU", "Mean Dice", "Pixel accuracy"] if has_loss else [a.get_title() for a in fig.axes]
    )


def test_best_epoch_uses_val_miou():
    assert best_epoch(_history()) == (4, 0.9)
    assert best_epoch([{"epoch": 1, "val_miou": None}]) is None
    assert best_epoch([{"val_miou": 0.2}, {"val_miou": 0.3}]) == (2.0, 0.3)  # epoch from position


def test_plot_lr_schedule_draws_the_rates(tmp_path):
    from offroadseg.reporting.plots import TRAIN_COLOR

    lrs = [1e-4 * (1 + math.cos(math.pi * s / 100)) / 2 for s in range(100)]
    by_step = plot_lr_schedule(lrs, tmp_path / "lr_steps.png")
    by_epoch = plot_lr_schedule(lrs, tmp_path / "lr_epochs.png", steps_per_epoch=10)
    empty = plot_lr_schedule([], tmp_path / "lr_empty.png")
    for name in ("lr_steps.png", "lr_epochs.png", "lr_empty.png"):
        _assert_png(tmp_path / name, min_size=(8 * DPI - 10, 4 * DPI - 10))
    (line,) = by_step.axes[0].get_lines()
    np.testing.assert_allclose(line.get_ydata(), lrs)
    np.testing.assert_allclose(line.get_xdata(), np.arange(100))
    (line,) = by_epoch.axes[0].get_lines()
    np.testing.assert_allclose(line.get_xdata(), np.arange(100) / 10)
    assert by_epoch.axes[0].get_xlabel() == "epoch (10 steps per epoch)"
    assert [t.get_text() for t in by_step.axes[0].texts] == ["peak 1.00e-04"]
    assert len(empty.axes[0].get_lines()) == 0 and [t.get_text() for t in empty.axes[0].texts] == ["no data"]
    assert _pixels_of(tmp_path / "lr_steps.png", TRAIN_COLOR) > 300
    assert _pixels_of(tmp_path / "lr_empty.png", TRAIN_COLOR) == 0


def test_plot_per_class_iou_draws_one_bar_per_present_class(tmp_path):
    scores = _scores()
    fig = plot_per_class_iou(scores, tmp_path / "a.png", colors=COLORS)
    plain = plot_per_class_iou(scores, tmp_path / "b.png")
    empty = plot_per_class_iou({}, tmp_path / "c.png")
    for name in ("a.png", "b.png", "c.png"):
        _assert_png(tmp_path / name, min_size=(8 * DPI - 10, 3 * DPI - 10))
    ax = fig.axes[0]
    bars = ax.patches
    present = sorted(((v, n) for n, v in scores["per_class_iou"].items() if v is not None), reverse=True)
    assert [b.get_width() for b in bars] == pytest.approx([v for v, _ in present])  # best on top
    assert [b.get_y() + b.get_height() / 2 for b in bars] == sorted(
        (b.get_y() + b.get_height() / 2 for b in bars), reverse=True
    )
    index = {n: i for i, n in enumerate(NAMES)}
    for bar, (_, name) in zip(bars, present, strict=True):
        assert bar.get_facecolor()[:3] == pytest.approx(tuple(COLORS[index[name]] / 255.0))
    assert [t.get_text() for t in ax.get_yticklabels()] == [n for _, n in present] + ["Flowers"]
    assert "absent" in [t.get_text() for t in ax.texts]
    (miou_line,) = ax.get_lines()
    assert list(miou_line.get_xdata()) == [scores["miou"]] * 2
    assert len(plain.axes[0].patches) == 3 and len(empty.axes[0].patches) == 0
    trees = "#%02x%02x%02x" % tuple(COLORS[1])  # noqa: UP031 - a colour, not a message
    assert _pixels_of(tmp_path / "a.png", trees, tol=2) > 1000
    assert _pixels_of(tmp_path / "c.png", trees, tol=2) == 0


@pytest.mark.parametrize("k", [4, 20])
def test_plot_confusion_matrix_draws_the_normalised_rows(tmp_path, k):
    names = NAMES if k == 4 else [f"class {i}" for i in range(k)]
    scores = _scores(names)
    path = tmp_path / "cm.png"
    fig = plot_confusion_matrix(scores, path)
    _assert_png(path, min_size=(5 * DPI, 5 * DPI))
    ax = fig.axes[0]
    (image,) = ax.get_images()
    expected = row_normalise(scores["confusion_matrix"])
    drawn = np.ma.filled(image.get_array().astype(float), np.nan)
    np.testing.assert_allclose(drawn, expected)  # NaN rows (no pixels) included
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    cells = [t.get_text() for t in ax.texts]
    if k == 4:
        assert cells.count("no pixels") == 1 and len(cells) == 3 * 4 + 1
        assert f"{expected[0, 0]:.2f}" in cells and f"{expected[0, 1]:.2f}" in cells
    else:
        assert cells == []  # too many classes for numbers
    with Image.open(path) as img:  # the diagonal's dark blue is in the picture
        dark = (np.asarray(img.convert("RGB")).astype(int).sum(-1) < 250).sum()
    assert dark > 500
    empty = plot_confusion_matrix({}, tmp_path / "none.png")
    assert len(empty.axes[0].get_images()) == 0 and [t.get_text() for t in empty.axes[0].texts] == ["no data"]


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

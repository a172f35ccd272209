"""Figures and the plain-text evaluation table of a run.

Every figure is drawn on its own :class:`~matplotlib.figure.Figure` with an Agg
canvas (no pyplot, no global state, no display needed) and written atomically, so a
crash never leaves a half-written PNG in a run directory. Each ``plot_*`` returns its
figure, so what was drawn (lines, bars, cells) can be read back, not only the PNG.

Two IoU figures appear side by side and must not be confused: ``miou`` is the
dataset-level mean IoU from one confusion matrix over the whole split; the
reference pipeline's ``val_batch_mean_iou`` (mean over batches of per-batch IoU) is
drawn dashed, for comparison only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from offroadseg.atomic import atomic_save
from offroadseg.metrics import best_epoch, finite_or_none

DPI = 120
TITLE_SIZE = 12
LABEL_SIZE = 10
TICK_SIZE = 9
LEGEND_SIZE = 8

TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#d62728"
REFERENCE_COLOR = "#7f7f7f"
BEST_COLOR = "#2ca02c"

BATCH_MEAN_LABEL = "val batch-mean IoU (reference, comparison only)"
METRIC_NOTE = (
    "mIoU: dataset-level, from one confusion matrix over the split; batch-mean IoU: the reference "
    "pipeline's figure (mean over batches of per-batch IoU), for comparison only"
)

__all__ = [
    "BATCH_MEAN_LABEL",
    "DPI",
    "METRIC_NOTE",
    "evaluation_text",
    "plot_confusion_matrix",
    "plot_curves",
    "plot_lr_schedule",
    "plot_per_class_iou",
    "row_normalise",
]


# ---- helpers -------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path, *, tight: bool = False) -> Figure:
    # tight: the constrained layout can misjudge long tick labels beside an equal-aspect image
    kwargs = {"bbox_inches": "tight", "pad_inches": 0.15} if tight else {}
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, **kwargs))
    return fig


def _epochs(history: Sequence[Mapping[str, Any]]) -> list[float]:
    """The epoch of each row (its ``epoch`` key, else its 1-based position)."""
    out = []
    for i, row in enumerate(history):
        e = finite_or_none(row.get("epoch"))
        out.append(e if e is not None else float(i + 1))
    return out


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the rows where ``key`` holds a finite number."""
    xs, ys = [], []
    for epoch, row in zip(_epochs(history), history, strict=True):
        v = finite_or_none(row.get(key))
        if v is not None:
            xs.append(epoch)
            ys.append(v)
    return xs, ys


def _style_axes(ax, *, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=TITLE_SIZE, fontweight="bold")
    ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    ax.tick_params(labelsize=TICK_SIZE)
    ax.grid(True, alpha=0.3, linestyle="-", linewidth=0.6)


def _no_data(ax, text: str = "no data") -> None:
    ax.text(
        0.5, 0.5, text, ha="center", va="center", fontsize=LABEL_SIZE, color="0.5", transform=ax.transAxes
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _fmt(value: Any, spec: str = ".4f") -> str:
    v = finite_or_none(value)
    return "-" if v is None else format(v, spec)


# ---- curves --------------------------------------------------------------------------------------
_PANELS = (
    ("Loss", "loss", "train_loss", "val_loss"),
    ("Mean IoU", "mIoU", "train_miou", "val_miou"),
    ("Mean Dice", "Dice", "train_dice", "val_dice"),
    ("Pixel accuracy", "accuracy", "train_acc", "val_acc"),
)


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> Figure:
    """Training curves, 2x2: loss, mIoU, Dice and pixel accuracy, train and val.

    The IoU panel also shows the reference batch-mean IoU (dashed, comparison only).
    The epoch of the best val mIoU is marked on every panel. Missing keys or values
    are skipped; a panel with nothing to draw says so.
    """
    fig = _figure(11, 7.5)
    axes = fig.subplots(2, 2).ravel()
    best = best_epoch(history)
    epochs = _epochs(history)
    n = len(history)
    marker = "o" if n <= 40 else None
    for ax, (title, ylabel, train_key, val_key) in zip(axes, _PANELS, strict=True):
        drawn = False
        for key, label, color in ((train_key, "train", TRAIN_COLOR), (val_key, "val", VAL_COLOR)):
            xs, ys = _series(history, key)
            if ys:
                ax.plot(xs, ys, color=color, label=label, linewidth=1.8, marker=marker, markersize=3.5)
                drawn = True
        if val_key == "val_miou":
            xs, ys = _series(history, "val_batch_mean_iou")
            if ys:
                ax.plot(
                    xs,
                    ys,
                    color=REFERENCE_COLOR,
                    linestyle="--",
                    linewidth=1.4,
                    marker=marker,
                    markersize=2.5,
                    label=BATCH_MEAN_LABEL,
                )
                drawn = True
        if not drawn:
            ax.set_title(title, fontsize=TITLE_SIZE, fontweight="bold")
            _no_data(ax)
            continue
        _style_axes(ax, title=title, xlabel="epoch", ylabel=ylabel)
        if best is not None:
            ax.axvline(best[0], color=BEST_COLOR, linestyle=":", linewidth=1.2, alpha=0.9)
            if val_key == "val_miou":
                ax.plot(
                    [best[0]],
                    [best[1]],
                    marker="*",
                    markersize=14,
                    color=BEST_COLOR,
                    markeredgecolor="black",
                    markeredgewidth=0.6,
                    linestyle="none",
                    label=f"best val mIoU {best[1]:.4f} (epoch {best[0]:g})",
                    zorder=5,
                )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(set(epochs)) == 1:
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        ax.legend(fontsize=LEGEND_SIZE, loc="best", framealpha=0.85)
    if n == 0:
        fig.suptitle("Training curves (empty history)", fontsize=TITLE_SIZE + 1)
    else:
        fig.suptitle(f"Training curves ({n} epoch{'s' if n != 1 else ''})", fontsize=TITLE_SIZE + 1)
    return _save(fig, path)


# ---- learning rate -------------------------------------------------------------------------------
def plot_lr_schedule(lrs: Sequence[float], path: str | Path, *, steps_per_epoch: int | None = None) -> Figure:
    """Learning rate per optimizer step; x in epochs when ``steps_per_epoch`` is given."""
    fig = _figure(8, 4)
    ax = fig.subplots()
    values = [finite_or_none(v) for v in lrs]
    pts = [(i, v) for i, v in enumerate(values) if v is not None]
    if not pts:
        ax.set_title("Learning-rate schedule", fontsize=TITLE_SIZE, fontweight="bold")
        _no_data(ax)
        return _save(fig, path)
    steps = np.array([p[0] for p in pts], dtype=float)
    ys = np.array([p[1] for p in pts], dtype=float)
    if steps_per_epoch:
        xs = steps / float(steps_per_epoch)
        xlabel = f"epoch ({steps_per_epoch} steps per epoch)"
    else:
        xs = steps
        xlabel = "optimizer step"
    ax.plot(xs, ys, color=TRAIN_COLOR, linewidth=1.8, marker="o" if len(xs) <= 40 else None, markersize=3)
    _style_axes(ax, title="Learning-rate schedule", xlabel=xlabel, ylabel="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.yaxis.get_offset_text().set_fontsize(TICK_SIZE)
    i_max = int(np.argmax(ys))
    ax.annotate(
        f"peak {ys[i_max]:.2e}",
        xy=(xs[i_max], ys[i_max]),
        xytext=(6, 4),
        textcoords="offset points",
        fontsize=LEGEND_SIZE,
        va="bottom",
    )
    ax.set_ylim(min(0.0, float(ys.min())), float(ys.max()) * 1.15 if ys.max() > 0 else None)
    return _save(fig, path)


# ---- per-class IoU -------------------------------------------------------------------------------
def _bar_color(colors: np.ndarray | None, index: int) -> tuple[float, float, float]:
    if colors is None or index >= len(colors):
        return (0.35, 0.55, 0.8)
    r, g, b = (int(c) for c in np.asarray(colors)[index][:3])
    return (r / 255.0, g / 255.0, b / 255.0)


def plot_per_class_iou(
    scores: Mapping[str, Any], path: str | Path, *, colors: np.ndarray | None = None
) -> Figure:
    """Horizontal bars of per-class IoU, best at the top, value on each bar.

    Classes whose IoU is None (absent from labels and predictions) are listed at the
    bottom as "absent" with no bar. A dashed line marks the mIoU.

    Args:
        scores: ``SegmentationScores.to_dict(names)`` output.
        colors: uint8 ``[K, 3]`` class colours in the same order as ``per_class_iou``.
    """
    per_class = dict(scores.get("per_class_iou") or {})
    items = [(name, finite_or_none(v), i) for i, (name, v) in enumerate(per_class.items())]
    present = sorted((it for it in items if it[1] is not None), key=lambda it: -it[1])
    absent = [it for it in items if it[1] is None]
    ordered = present + absent
    k = len(ordered)
    fig = _figure(8, max(3.0, 0.42 * k + 1.4))
    ax = fig.subplots()
    if not ordered:
        ax.set_title("Per-class IoU", fontsize=TITLE_SIZE, fontweight="bold")
        _no_data(ax)
        return _save(fig, path)
    ypos = np.arange(k)[::-1]  # first item on top
    for y, (_, value, idx) in zip(ypos, ordered, strict=True):
        if value is None:
            ax.text(
                0.01, y, "absent", va="center", ha="left", fontsize=TICK_SIZE, style="italic", color="0.45"
            )
            continue
        ax.barh(y, value, color=_bar_color(colors, idx), edgecolor="0.25", linewidth=0.7, height=0.7)
        ax.text(
            value + 0.01,
            y,
            f"{value:.3f}",
            va="center",
            ha="left",
            fontsize=TICK_SIZE,
            zorder=4,
            bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
        )
    ax.set_yticks(ypos)
    ax.set_yticklabels([it[0] for it in ordered])
    ax.set_xlim(0, 1.1)
    ax.set_ylim(-0.6, k - 0.4)
    ax.set_xticks(np.linspace(0, 1, 6))
    miou = finite_or_none(scores.get("miou"))
    title = "Per-class IoU" + (f" (mIoU {miou:.4f})" if miou is not None else "")
    _style_axes(ax, title=title, xlabel="IoU (dataset level)", ylabel="")
    ax.grid(True, axis="x", alpha=0.3)
    ax.grid(False, axis="y")
    if miou is not None:
        ax.axvline(miou, color="black", linestyle="--", linewidth=1.2, label=f"mIoU {miou:.4f}", zorder=3)
        ax.legend(fontsize=LEGEND_SIZE, loc="lower right", framealpha=0.9)
    return _save(fig, path)


# ---- confusion matrix ----------------------------------------------------------------------------
def row_normalise(cm: Any) -> np.ndarray:
    """Each ground-truth row divided by its sum (float64); rows with no pixels are NaN."""
    arr = np.asarray(cm, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"confusion matrix must be square [K, K], got shape {arr.shape}")
    sums = arr.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = arr / sums
    out[(sums == 0).ravel()] = np.nan
    return out


def plot_confusion_matrix(scores: Mapping[str, Any], path: str | Path) -> Figure:
    """Row-normalised confusion matrix (rows = ground truth, columns = prediction).

    Rows of classes with no labelled pixels are grey. Cells carry their value when
    there are at most 12 classes.
    """
    cm = scores.get("confusion_matrix")
    names = list((scores.get("per_class_iou") or {}).keys())
    if cm is None or len(cm) == 0:
        fig = _figure(6, 5)
        ax = fig.subplots()
        ax.set_title("Confusion matrix", fontsize=TITLE_SIZE, fontweight="bold")
        _no_data(ax)
        return _save(fig, path)
    norm = row_normalise(cm)
    k = norm.shape[0]
    if len(names) != k:
        names = [str(i) for i in range(k)]
    side = min(max(5.5, (0.62 if k <= 12 else 0.4) * k + 2.8), 22.0)
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    cmap = ListedColormap(_blues(256)).with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45, ha="right", rotation_mode="anchor", fontsize=TICK_SIZE)
    ax.set_yticklabels(names, fontsize=TICK_SIZE)
    ax.set_xlabel("prediction", fontsize=LABEL_SIZE)
    ax.set_ylabel("ground truth", fontsize=LABEL_SIZE)
    ax.set_title("Confusion matrix (each ground-truth row sums to 1)", fontsize=TITLE_SIZE, fontweight="bold")
    ax.set_xticks(np.arange(k + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(k + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    if k <= 12:
        size = 8 if k > 8 else 9
        for r in range(k):
            if np.isnan(norm[r]).all():
                ax.text(k / 2 - 0.5, r, "no pixels", ha="center", va="center", fontsize=size, color="0.35")
                continue
            for c in range(k):
                v = norm[r, c]
                text = "0" if v == 0 else ("<.01" if v < 0.005 else f"{v:.2f}")
                ax.text(
                    c, r, text, ha="center", va="center", fontsize=size, color="white" if v > 0.55 else "0.15"
                )
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cbar.ax.tick_params(labelsize=TICK_SIZE)
    cbar.set_label("share of the ground-truth row", fontsize=LABEL_SIZE)
    return _save(fig, path, tight=True)


def _blues(n: int) -> np.ndarray:
    """A white-to-dark-blue ramp (so "0" cells are white, not pale blue)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    start = np.array([1.0, 1.0, 1.0])
    mid = np.array([0.42, 0.68, 0.84])
    end = np.array([0.03, 0.19, 0.42])
    lo = start + (mid - start) * np.clip(t * 2, 0, 1)
    rgb = np.where(t < 0.5, lo, mid + (end - mid) * np.clip(t * 2 - 1, 0, 1))
    return np.concatenate([rgb, np.ones((n, 1))], axis=1)


# ---- evaluation text -----------------------------------------------------------------------------
_EPOCH_COLUMNS = (
    ("train_loss", "Train Loss", ".4f"),
    ("val_loss", "Val Loss", ".4f"),
    ("train_miou", "Train mIoU", ".4f"),
    ("val_miou", "Val mIoU", ".4f"),
    ("val_batch_mean_iou", "Val BatchIoU(ref)", ".4f"),
    ("train_dice", "Train Dice", ".4f"),
    ("val_dice", "Val Dice", ".4f"),
    ("train_acc", "Train Acc", ".4f"),
    ("val_acc", "Val Acc", ".4f"),
    ("lr", "LR", ".2e"),
    ("epoch_time_s", "Time (s)", ".1f"),
)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> list[str]:
    """Aligned plain-text table; the first ``left`` columns are left-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    return out


def evaluation_text(
    history: Sequence[Mapping[str, Any]] | None, scores: Mapping[str, Any] | None, *, title: str
) -> str:
    """A plain-text evaluation report (the run's ``evaluation_metrics.txt``).

    Holds the per-epoch metrics table, the final per-class IoU/Dice table and the
    overall scores, with a line saying how mIoU differs from the reference's
    batch-mean IoU.
    """
    history = list(history or [])
    scores = dict(scores or {})
    rule = "=" * 78
    lines = [rule, title, rule, "", METRIC_NOTE + ".", ""]

    lines += ["Overall (final evaluation)", "-" * 26]
    overall = (
        ("mIoU", scores.get("miou")),
        ("Mean Dice", scores.get("mean_dice")),
        ("Pixel accuracy", scores.get("pixel_accuracy")),
        ("Mean class accuracy", scores.get("mean_accuracy")),
    )
    shown = [(label, v) for label, v in overall if label != "Mean class accuracy" or v is not None]
    for label, v in shown:
        lines.append(f"  {label + ':':<21}{_fmt(v)}")
    best = best_epoch(history)
    if best is not None:
        lines.append(f"  {'Best val mIoU:':<21}{best[1]:.4f} (epoch {best[0]:g})")
    bm = best_epoch(history, "val_batch_mean_iou")
    if bm is not None:
        lines.append(
            f"  {'Best val batch-mean IoU (reference, comparison only):'} {bm[1]:.4f} (epoch {bm[0]:g})"
        )
    lines.append("")

    iou = dict(scores.get("per_class_iou") or {})
    dice = dict(scores.get("per_class_dice") or {})
    acc = dict(scores.get("per_class_accuracy") or {})
    names = list(dict.fromkeys([*iou, *dice]))
    if names:
        header = ["Class", "IoU", "Dice"] + (["Accuracy"] if acc else [])
        rows = []
        for name in names:
            row = [str(name), _fmt(iou.get(name)), _fmt(dice.get(name))]
            if acc:
                row.append(_fmt(acc.get(name)))
            if finite_or_none(iou.get(name)) is None and finite_or_none(dice.get(name)) is None:
                row[1] = row[2] = "absent"
            rows.append(row)
        lines += ["Per-class scores", "-" * 16, *_table(header, rows), ""]
        lines.append(
            "absent: the class is in neither the labels nor the predictions (left out of the means)."
        )
        lines.append("")

    if history:
        cols = [c for c in _EPOCH_COLUMNS if any(finite_or_none(r.get(c[0])) is not None for r in history)]
        header = ["Epoch"] + [c[1] for c in cols]
        rows = []
        for epoch, row in zip(_epochs(history), history, strict=True):
            mark = " *" if best is not None and epoch == best[0] else ""
            rows.append([f"{epoch:g}{mark}"] + [_fmt(row.get(key), spec) for key, _, spec in cols])
        lines += ["Per-epoch history", "-" * 17, *_table(header, rows), ""]
        notes = []
        if best is not None:
            notes.append("'*' after an epoch: best val mIoU.")
        if any(c[0] == "val_batch_mean_iou" for c in cols):
            notes.append("Val BatchIoU(ref): the reference pipeline's batch-mean IoU, for comparison only.")
        lines += notes
    return "\n".join(lines).rstrip() + "\n"

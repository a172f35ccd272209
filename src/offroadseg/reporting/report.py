"""A run report as one self-contained HTML file.

The file needs nothing beside itself: the CSS is inline and every figure and
gallery image is embedded as base64 (PNG for figures, small JPEGs for the gallery),
so it opens offline in any browser and can be mailed alone. All text is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from offroadseg.atomic import atomic_write_text
from offroadseg.metrics import best_epoch, finite_or_none
from offroadseg.reporting.plots import METRIC_NOTE

GALLERY_WIDTH = 320
SEPARATOR = 4

__all__ = ["GalleryItem", "make_strip", "write_report"]


@dataclass
class GalleryItem:
    """One gallery row: an image, its colourised truth (if any) and prediction.

    Attributes:
        name: file name or id shown above the row.
        image: uint8 RGB ``[H, W, 3]``.
        truth: uint8 RGB ``[H, W, 3]`` colourised ground truth, or None.
        prediction: uint8 RGB ``[H, W, 3]`` colourised prediction.
        miou: the image's mIoU, or None when it has no ground truth.
        caption: free text shown under the row.
    """

    name: str
    image: np.ndarray
    truth: np.ndarray | None
    prediction: np.ndarray
    miou: float | None
    caption: str = ""


# ---- images --------------------------------------------------------------------------------------
def _rgb(array: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8, got {arr.dtype}; fix: colourise or convert it first")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"{what} must be [H, W, 3] RGB, got shape {arr.shape}")
    return np.ascontiguousarray(arr[..., :3])


def _resize(
    arr: np.ndarray, *, width: int | None = None, height: int | None = None, nearest: bool
) -> np.ndarray:
    h, w = arr.shape[:2]
    if height is not None:
        size = (max(1, round(w * height / h)), height)
    else:
        assert width is not None
        size = (width, max(1, round(h * width / w)))
    if size == (w, h):
        return arr
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(arr).resize(size, resample))


def make_strip(
    image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray, *, height: int = 180
) -> np.ndarray:
    """image | truth | prediction side by side at one height, with thin white separators.

    Masks are resized with nearest neighbour (no invented colours at class edges).

    Args:
        image: uint8 RGB ``[H, W, 3]`` (grey ``[H, W]`` is accepted).
        truth: colourised ground truth, uint8 RGB, or None to leave it out.
        prediction: colourised prediction, uint8 RGB.
        height: the strip's height in pixels.

    Returns:
        uint8 ``[height, W', 3]``.
    """
    if height < 1:
        raise ValueError(f"height must be >= 1, got {height}")
    panels = [_resize(_rgb(image, "image"), height=height, nearest=False)]
    if truth is not None:
        panels.append(_resize(_rgb(truth, "truth"), height=height, nearest=True))
    panels.append(_resize(_rgb(prediction, "prediction"), height=height, nearest=True))
    sep = np.full((height, SEPARATOR, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for i, p in enumerate(panels):
        if i:
            parts.append(sep)
        parts.append(p)
    return np.concatenate(parts, axis=1)


def _jpeg_b64(
    arr: np.ndarray, *, width: int = GALLERY_WIDTH, nearest: bool = False, quality: int = 85
) -> str:
    arr = _rgb(arr, "gallery image")
    if arr.shape[1] > width:
        arr = _resize(arr, width=width, nearest=nearest)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ---- html pieces ---------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
main{max-width:1120px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:1.7em;margin:0.2em 0 0.6em}
h2{font-size:1.25em;margin:1.8em 0 0.6em;padding-bottom:4px;border-bottom:2px solid #d5dae1}
h3{font-size:1.05em;margin:1.2em 0 0.5em}
table{border-collapse:collapse;background:#fff;font-size:0.92em;margin:0.4em 0}
th,td{padding:5px 12px;border:1px solid #dde2e8;text-align:left}
th{background:#eef1f5;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.absent{color:#8a929c;font-style:italic;text-align:right}
tr.best td{background:#eaf6ea}
tfoot td{font-weight:600;background:#f3f5f8}
.swatch{display:inline-block;width:12px;height:12px;border:1px solid #555;margin-right:6px;vertical-align:-1px}
figure{margin:1em 0;background:#fff;border:1px solid #dde2e8;padding:10px;display:inline-block;max-width:100%}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:0.88em;color:#4a525c;margin-top:6px}
.gallery-row{background:#fff;border:1px solid #dde2e8;padding:8px 10px;margin:10px 0}
.gallery-row .head{font-size:0.9em;margin-bottom:6px}
.gallery-row .cells{display:flex;gap:6px;flex-wrap:wrap}
.gallery-row .cell{display:flex;flex-direction:column;font-size:0.78em;color:#5a636e}
.gallery-row img{width:320px;max-width:100%;height:auto;image-rendering:auto}
.note{color:#4a525c;font-size:0.9em}
details summary{cursor:pointer;margin:0.6em 0}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    f = float(value)
    if not math.isfinite(f):
        return str(f)
    return f"{f:.4f}" if f == 0 or 1e-3 <= abs(f) < 1e4 else f"{f:.3e}"


def _score_cell(value: Any) -> str:
    v = finite_or_none(value)
    return '<td class="absent">absent</td>' if v is None else f'<td class="num">{v:.4f}</td>'


def _table_html(title: str, rows: Mapping[str, Any]) -> str:
    if not rows:
        return ""
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_format_value(v))}</td></tr>" for k, v in rows.items())
    return f"<h2>{_e(title)}</h2><table>{body}</table>"


def _per_class_html(
    scores: Mapping[str, Any] | None, test_scores: Mapping[str, Any] | None, colors: Any
) -> str:
    splits = [(label, s) for label, s in (("val", scores), ("test", test_scores)) if s]
    if not splits:
        return ""
    names: list[str] = []
    for _, s in splits:
        names.extend(s.get("per_class_iou") or {})
        names.extend(s.get("per_class_dice") or {})
    names = list(dict.fromkeys(names))
    if not names:
        return ""
    color_arr = None if colors is None else np.asarray(colors)
    head = (
        "<tr><th>class</th>"
        + "".join(f"<th>{label} IoU</th><th>{label} Dice</th>" for label, _ in splits)
        + "</tr>"
    )
    body = []
    for i, name in enumerate(names):
        swatch = ""
        if color_arr is not None and i < len(color_arr):
            r, g, b = (int(c) for c in color_arr[i][:3])
            swatch = f'<span class="swatch" style="background:rgb({r},{g},{b})"></span>'
        cells = "".join(
            _score_cell((s.get("per_class_iou") or {}).get(name))
            + _score_cell((s.get("per_class_dice") or {}).get(name))
            for _, s in splits
        )
        body.append(f"<tr><td>{swatch}{_e(name)}</td>{cells}</tr>")
    foot = []
    for label, key_iou, key_dice in (("mean", "miou", "mean_dice"),):
        cells = "".join(_score_cell(s.get(key_iou)) + _score_cell(s.get(key_dice)) for _, s in splits)
        foot.append(f"<tr><td>{label} (mIoU / mean Dice)</td>{cells}</tr>")
    acc_cells = "".join(_score_cell(s.get("pixel_accuracy")) + "<td></td>" for _, s in splits)
    foot.append(f"<tr><td>pixel accuracy</td>{acc_cells}</tr>")
    return (
        "<h2>Per-class scores</h2>"
        f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody><tfoot>{''.join(foot)}</tfoot></table>"
        f'<p class="note">absent: the class is in neither the labels nor the predictions of that split '
        f"(left out of the means). {_e(METRIC_NOTE)}.</p>"
    )


_HISTORY_COLUMNS = (
    ("train_loss", "train loss", ".4f"),
    ("val_loss", "val loss", ".4f"),
    ("train_miou", "train mIoU", ".4f"),
    ("val_miou", "val mIoU", ".4f"),
    ("val_batch_mean_iou", "val batch-mean IoU (ref.)", ".4f"),
    ("train_dice", "train Dice", ".4f"),
    ("val_dice", "val Dice", ".4f"),
    ("train_acc", "train acc", ".4f"),
    ("val_acc", "val acc", ".4f"),
    ("lr", "lr", ".2e"),
    ("epoch_time_s", "time (s)", ".1f"),
)


def _history_html(history: Sequence[Mapping[str, Any]] | None) -> str:
    if not history:
        return ""
    cols = [c for c in _HISTORY_COLUMNS if any(finite_or_none(r.get(c[0])) is not None for r in history)]
    best = best_epoch(history)
    head = "<tr><th>epoch</th>" + "".join(f"<th>{_e(label)}</th>" for _, label, _ in cols) + "</tr>"
    rows = []
    for i, row in enumerate(history):
        epoch = finite_or_none(row.get("epoch"))
        epoch = float(i + 1) if epoch is None else epoch
        cls = ' class="best"' if best is not None and epoch == best[0] else ""
        cells = "".join(
            '<td class="num">-</td>'
            if finite_or_none(row.get(k)) is None
            else f'<td class="num">{format(finite_or_none(row.get(k)), spec)}</td>'
            for k, _, spec in cols
        )
        rows.append(f'<tr{cls}><td class="num">{epoch:g}</td>{cells}</tr>')
    best_line = ""
    if best is not None:
        best_line = f'<p class="note">Best val mIoU {best[1]:.4f} at epoch {best[0]:g} (highlighted).</p>'
    return (
        f"<h2>Training history</h2>{best_line}"
        f"<details><summary>Per-epoch metrics ({len(history)} epochs)</summary>"
        f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></details>"
    )


def _figures_html(figures: Mapping[str, str | Path] | None) -> str:
    if not figures:
        return ""
    parts = ["<h2>Figures</h2>"]
    for name, fig_path in figures.items():
        p = Path(fig_path)
        if not p.is_file():
            parts.append(f'<p class="note">Figure {_e(name)}: file {_e(p)} was not found.</p>')
            continue
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        mime = "image/jpeg" if p.suffix.lower() in (".jpg", ".jpeg") else "image/png"
        parts.append(
            f'<figure><img src="data:{mime};base64,{data}" alt="{_e(name)}">'
            f"<figcaption>{_e(name)}</figcaption></figure>"
        )
    return "".join(parts)


def _gallery_row(item: GalleryItem) -> str:
    cells = [("image", _jpeg_b64(item.image, nearest=False))]
    if item.truth is not None:
        cells.append(("ground truth", _jpeg_b64(item.truth, nearest=True)))
    cells.append(("prediction", _jpeg_b64(item.prediction, nearest=True)))
    miou = finite_or_none(item.miou)
    score = f" &middot; mIoU {miou:.4f}" if miou is not None else ""
    cells_html = "".join(
        f'<div class="cell"><img src="data:image/jpeg;base64,{b64}" alt="{_e(label)}: {_e(item.name)}">'
        f"<span>{_e(label)}</span></div>"
        for label, b64 in cells
    )
    caption = f'<div class="note">{_e(item.caption)}</div>' if item.caption else ""
    return (
        f'<div class="gallery-row"><div class="head"><b>{_e(item.name)}</b>{score}</div>'
        f'<div class="cells">{cells_html}</div>{caption}</div>'
    )


def _split_gallery(
    gallery: Sequence[GalleryItem],
) -> tuple[list[GalleryItem], list[GalleryItem], list[GalleryItem]]:
    """(best, worst, unscored): scored items sorted by mIoU, the better half first, worst first."""
    scored = sorted((g for g in gallery if finite_or_none(g.miou) is not None), key=lambda g: -float(g.miou))
    unscored = [g for g in gallery if finite_or_none(g.miou) is None]
    half = (len(scored) + 1) // 2
    return scored[:half], scored[half:][::-1], unscored


def _gallery_html(gallery: Sequence[GalleryItem] | None) -> str:
    if not gallery:
        return ""
    best, worst, unscored = _split_gallery(gallery)
    parts = ["<h2>Gallery</h2>", '<p class="note">Each row: image | ground truth | prediction.</p>']
    for title, items in (
        ("Best test images", best),
        ("Worst test images", worst),
        ("Other images", unscored),
    ):
        if items or title != "Other images":
            parts.append(f"<h3>{_e(title)}</h3>")
            parts.extend(_gallery_row(g) for g in items)
            if not items:
                parts.append('<p class="note">none</p>')
    return "".join(parts)


def _notes_html(notes: Sequence[str] | None) -> str:
    if not notes:
        return ""
    return "<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"


# ---- entry point ---------------------------------------------------------------------------------
def write_report(
    path: str | Path,
    *,
    title: str,
    summary: Mapping[str, str | float],
    history: Sequence[Mapping[str, Any]] | None,
    scores: Mapping[str, Any] | None,
    test_scores: Mapping[str, Any] | None = None,
    figures: Mapping[str, str | Path] | None = None,
    gallery: Sequence[GalleryItem] | None = None,
    notes: Sequence[str] | None = None,
    colors: np.ndarray | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write a self-contained HTML run report, atomically.

    Args:
        path: where to write the ``.html`` file.
        title: page title and heading.
        summary: key/value pairs shown first (floats get 4 decimals).
        history: per-epoch dicts (see :func:`~offroadseg.reporting.plots.plot_curves`).
        scores: validation ``SegmentationScores.to_dict(names)``.
        test_scores: the same for the test split, shown beside it.
        figures: caption -> PNG path, embedded in order.
        gallery: items split by their mIoU into "Best test images" (better half,
            best first) and "Worst test images" (the rest, worst first); items
            without an mIoU go under "Other images".
        notes: free-text lines listed at the end.
        colors: optional uint8 ``[K, 3]`` class colours, shown as swatches in the
            per-class table (same order as the scores' classes).
        sections: title -> key/value pairs, each a titled table shown after the summary.

    Returns:
        The path written.
    """
    path = Path(path)
    body = "".join(
        [
            f"<h1>{_e(title)}</h1>",
            _table_html("Summary", summary),
            *(_table_html(title, rows) for title, rows in (sections or {}).items()),
            _per_class_html(scores, test_scores, colors),
            _history_html(history),
            _figures_html(figures),
            _gallery_html(gallery),
            _notes_html(notes),
        ]
    )
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
    atomic_write_text(path, doc)
    return path

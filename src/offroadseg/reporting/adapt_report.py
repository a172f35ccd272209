"""The label-free health report of ``offroadseg adapt``: ``adapt_report.html`` + ``adapt_report.json``.

A user adapting to unlabeled images has no labels to check the result with, so the report shows
what can be measured without them: per-class pixel shares on the target before/after beside the
source's, mean confidence and entropy before/after, teacher-student agreement per round, and a
gallery of target frames before | after. A collapse is a red banner at the top. Scores against
labels appear only when ``--gt`` gave some, and are labelled as such.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from offroadseg.atomic import atomic_save, atomic_write_text
from offroadseg.metrics import json_ready
from offroadseg.reporting.report import make_strip

__all__ = ["plot_class_shares", "plot_rounds", "write_adapt_report"]

_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
    ".alarm{background:#c62828;color:#fff;padding:1em;font-size:1.15em;border-radius:4px}"
    ".ok{background:#e8f5e9;padding:.6em;border-radius:4px}img{max-width:100%}"
    ".swatch{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:middle}"
)


def _e(x: Any) -> str:
    return html.escape(str(x))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def plot_class_shares(summary: Mapping[str, Any], path: Path):
    """Grouped bars per class: source labels, target before, target after. Returns the figure's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = summary["classes"]
    series = {
        "source (labels)": summary["source_shares"],
        "target before": summary["before"]["shares"],
        "target after": summary["after"]["shares"],
    }
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names)), 3.6))
    for j, (label, values) in enumerate(series.items()):
        ax.bar(x + (j - 1) * 0.27, np.asarray(values) * 100, width=0.27, label=label)
    ax.set_xticks(x, names, rotation=40, ha="right")
    ax.set_ylabel("pixel share (%)")
    ax.legend()
    ax.set_title("per-class pixel share: source labels vs target predictions")
    return _save_figure(fig, path)


def plot_rounds(history: Sequence[Mapping[str, Any]], path: Path):
    """Per round: teacher-student agreement, pseudo-labelled share, confidence and entropy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [h["round"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for key, label in (
        ("agreement", "teacher-student agreement"),
        ("kept_share", "pseudo-labelled share"),
        ("confidence", "mean confidence"),
        ("entropy", "mean entropy / log K"),
    ):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ax.plot(rounds, [np.nan if v is None else v for v in values], marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(rounds)
    ax.legend(fontsize=8)
    ax.set_title("adaptation rounds (target, no labels)")
    return _save_figure(fig, path)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{_e(path.name)}">'


def _jpeg(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=85)
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _class_table(summary: Mapping[str, Any], colors: np.ndarray | None) -> str:
    rows = []
    gt = summary.get("gt") or {}
    has_gt = bool(gt)
    for c, name in enumerate(summary["classes"]):
        swatch = ""
        if colors is not None:
            r, g, b = (int(v) for v in colors[c])
            swatch = f'<span class="swatch" style="background:rgb({r},{g},{b})"></span>'
        cells = [
            _pct(summary["source_shares"][c]),
            _pct(summary["before"]["shares"][c]),
            _pct(summary["after"]["shares"][c]),
        ]
        if has_gt:
            cells += [
                _num(gt["before"]["per_class_iou"].get(name)),
                _num(gt["after"]["per_class_iou"].get(name)),
            ]
        rows.append(f"<tr><td>{swatch}{_e(name)}</td>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    head = "<tr><th>class</th><th>source share (labels)</th><th>target share before</th><th>target share after</th>"
    if has_gt:
        head += "<th>IoU before (--gt)</th><th>IoU after (--gt)</th>"
    return f"<table>{head}</tr>{''.join(rows)}</table>"


def _rounds_table(history: Sequence[Mapping[str, Any]]) -> str:
    keys = [
        ("round", "round", lambda v: str(v)),
        ("source_loss", "source loss", _num),
        ("target_loss", "target loss", _num),
        ("kept_share", "pseudo-labelled", _pct),
        ("agreement", "teacher-student agreement", _pct),
        ("confidence", "confidence", _num),
        ("entropy", "entropy", _num),
        ("seconds", "seconds", lambda v: _num(v, 0)),
    ]
    shown = [k for k in keys if any(h.get(k[0]) is not None for h in history)]
    head = "".join(f"<th>{_e(label)}</th>" for _, label, _ in shown) + "<th>health</th>"
    rows = []
    for h in history:
        health = "collapse: " + "; ".join(h["collapsed"]) if h.get("collapsed") else "ok"
        cells = "".join(f"<td>{fmt(h.get(key))}</td>" for key, _, fmt in shown)
        rows.append(f"<tr>{cells}<td>{_e(health)}</td></tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _gallery(rows: Sequence[Mapping[str, Any]]) -> str:
    out = []
    for row in rows:
        strip = make_strip(row["image"], row["before"], row["after"], height=200)  # image | before | after
        out.append(
            f"<h3>{_e(row['name'])}</h3>{_jpeg(strip)}"
            f"<p>image | before | after; {_pct(row['changed'])} of its pixels changed class</p>"
        )
    return "".join(out)


def write_adapt_report(
    run_dir: str | Path,
    summary: Mapping[str, Any],
    *,
    gallery: Sequence[Mapping[str, Any]] = (),
    colors: np.ndarray | None = None,
) -> Path:
    """Write ``adapt_report.json``, the two plots and ``adapt_report.html`` into ``run_dir``.

    Args:
        run_dir: the adaptation run directory.
        summary: what :func:`offroadseg.experiments.adapt.adapt` measured (the JSON's content): classes,
            source_shares, before/after (shares, confidence, entropy), history, collapsed,
            shipped_round, gt (or None), settings, seconds.
        gallery: rows with ``name``, ``image``, ``before``, ``after`` (uint8 RGB) and ``changed``.
        colors: uint8 ``[K, 3]`` class colours for the table's swatches.

    Returns:
        The HTML file's path.
    """
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "adapt_report.json", json.dumps(json_ready(dict(summary)), indent=2))
    shares_png = plot_class_shares(summary, run_dir / "class_shares.png")
    rounds_png = plot_rounds(summary["history"], run_dir / "adapt_rounds.png") if summary["history"] else None
    settings = summary["settings"]
    collapsed = summary["collapsed"]
    parts = [
        f"<h1>offroadseg adapt: {_e(settings['method'])} on {summary['target_frames']} target frames</h1>"
    ]
    if collapsed:
        shipped = summary["shipped_round"]
        kept = f"round {shipped}'s model" if shipped else "the UNADAPTED model (no healthy round)"
        parts.append(
            '<div class="alarm"><b>WARNING: adaptation collapsed and was stopped.</b><br>'
            + "<br>".join(_e(m) for m in collapsed)
            + f"<br>checkpoints/last.ckpt holds {_e(kept)}, not the collapsed one.</div>"
        )
    else:
        parts.append('<div class="ok">no collapse detected (every class the source and the unadapted model '
                     "had kept a share on the target; no class swallowed the image)</div>")  # fmt: skip
    before, after = summary["before"], summary["after"]
    facts = {
        "checkpoint (before)": summary["checkpoint"],
        "target": f"{', '.join(summary['targets'])} ({summary['target_frames']} frames, no labels used)",
        "source (labelled)": f"{summary['source_root']} ({summary['source_frames']} training frames)",
        "mean confidence before -> after": f"{_num(before['confidence'])} -> {_num(after['confidence'])}",
        "mean entropy / log K before -> after": f"{_num(before['entropy'])} -> {_num(after['entropy'])}",
        "rounds run / shipped": f"{len(summary['history'])} / {summary['shipped_round']}",
        "time": ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items()),
    }
    gt = summary.get("gt")
    if gt:
        facts["mIoU on the --gt frames, before -> after (labels used only to score)"] = (
            f"{_num(gt['before']['miou'], 4)} -> {_num(gt['after']['miou'], 4)} ({gt['frames']} labelled frames)"
        )
    parts.append(
        "<table>"
        + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts.items())
        + "</table>"
    )
    parts += ["<h2>Per-class pixel share</h2>", _class_table(summary, colors), _img(shares_png)]
    if summary["history"]:
        parts += ["<h2>Rounds</h2>", _rounds_table(summary["history"])]
    if rounds_png is not None:
        parts.append(_img(rounds_png))
    if gallery:
        parts += ["<h2>Target frames: before | after</h2>", _gallery(gallery)]
    parts.append(
        "<h2>Notes</h2><ul><li>Shares, confidence and entropy are measured on the target frames at the "
        "model's training size, without labels: they show whether the model changed sanely, not whether it "
        "is right.</li><li>Settings: " + _e(", ".join(f"{k}={v}" for k, v in settings.items())) + "</li></ul>"
    )
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>offroadseg adapt report</title>'
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    path = run_dir / "adapt_report.html"
    atomic_write_text(path, doc)
    return path

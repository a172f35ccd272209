"""The Gradio page: a thin layer that wires components to :mod:`offroadseg.app.service`.

Every handler turns an :class:`~offroadseg.errors.OffroadsegError` into ``gr.Error``, which
the page shows as a message (and ``gradio_client`` raises with the same text). Per-session
results live in ``gr.State``, so moving the opacity slider re-blends without running the
model again and two sessions never see each other's images.
"""

from __future__ import annotations

import functools
import html
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from offroadseg.app.browse import SplitBrowser
from offroadseg.app.service import (
    AppLimits,
    ImageResult,
    ModelSet,
    check_alpha,
    difference_map,
    image_scores,
    latency_text,
    legend_rows,
    names_of,
    predict_image,
    read_upload,
    render_overlays,
    write_downloads,
)
from offroadseg.data.io import IMAGE_SUFFIXES
from offroadseg.errors import DataError, OffroadsegError, user_message
from offroadseg.inference.outputs import overlay
from offroadseg.inference.predictor import TTA_MODES

ALL_CLASSES = "(all classes)"
DOWNLOAD_MAX_AGE_S = 600.0  # request folders of downloads older than this are removed
IMAGE_FORMAT = "png"  # lossless, so what the page shows is what the model predicted


def _user_errors(fn: Callable) -> Callable:
    """Show an :class:`OffroadsegError` as a message in the page (no traceback in the log)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OffroadsegError as exc:
            raise gr.Error(user_message(exc), print_exception=False) from None

    return wrapper


def legend_html(rows: list[list], columns: list[str]) -> str:
    """A legend table: colour swatch, class and each share column (in %)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["", "class", *columns])
    body = []
    for name, color, *shares in rows:
        swatch = f'<span style="display:inline-block;width:1em;height:1em;background:{color}"></span>'
        cells = "".join(f"<td>{s:.2f} %</td>" for s in shares)
        body.append(f"<tr><td>{swatch}</td><td>{html.escape(name)}</td>{cells}</tr>")
    return f'<table class="offroadseg-legend"><tr>{head}</tr>{"".join(body)}</table>'


class AppUI:
    """Builds the page for loaded models and an optional split browser.

    Args:
        models: model A (and B), loaded once.
        limits: upload limits and concurrency.
        browser: the ``--data`` split, or None.
        title: shown at the top of the page.
    """

    def __init__(
        self, models: ModelSet, limits: AppLimits, browser: SplitBrowser | None = None, *, title: str = ""
    ):
        self.models = models
        self.limits = limits
        self.browser = browser
        self.title = title or "offroadseg: see a model work"
        self.taxonomy = models.taxonomy
        self._tmp = tempfile.TemporaryDirectory(prefix="offroadseg-app-")
        self.download_dir = Path(self._tmp.name)

    @property
    def has_b(self) -> bool:
        return "B" in self.models.names

    def close(self) -> None:
        self._tmp.cleanup()

    # ---- upload ------------------------------------------------------------------------------
    def segment(
        self, files: list[str] | None, tta: str, alpha: float, exclude: list[str] | None = None
    ) -> tuple:
        """Predict every uploaded image (``exclude``: class names that get no pixel); show the first."""
        if not files:
            raise DataError("no image uploaded; fix: drop one or more images on the upload box")
        if len(files) > self.limits.max_images:
            raise DataError(
                f"{len(files)} images uploaded, the limit is {self.limits.max_images} per request; fix: "
                f"upload fewer or start the app with a larger --max-images"
            )
        check_alpha(alpha)
        names = names_of(files)
        images = [read_upload(f, self.limits, name=n) for f, n in zip(files, names, strict=True)]
        results = [
            predict_image(self.models, n, im, tta=tta, exclude=exclude)
            for n, im in zip(names, images, strict=True)
        ]
        shown = gr.Dropdown(choices=names, value=names[0], visible=len(names) > 1)
        return (results, shown, *self._render_upload(results, names[0], alpha))

    def rerender(self, results: list[ImageResult] | None, name: str, alpha: float) -> tuple:
        """Show another uploaded image, or the same at another opacity (no new prediction)."""
        if not results:
            return self._empty_upload()
        return self._render_upload(results, name, check_alpha(alpha))

    def _empty_upload(self) -> tuple:
        return (None, None, None, None, "", "", None)

    def _render_upload(self, results: list[ImageResult], name: str, alpha: float) -> tuple:
        result = next((r for r in results if r.name == name), results[0])
        overlays = render_overlays(result, self.taxonomy, alpha)
        color = self.taxonomy.colorize(result.ids["A"])
        columns = ["A"] + (["B"] if self.has_b else [])
        rows = sorted(legend_rows(result, self.taxonomy), key=lambda r: -r[2])  # most of the image first
        legend = legend_html(rows, [f"pixels {c}" for c in columns])
        info = latency_text(result, self.models)
        diff = None
        if self.has_b:
            diff, share = difference_map(result.image, result.ids["A"], result.ids["B"])
            info += f"; A and B differ on {100.0 * share:.2f} % of the pixels"
        files = self._downloads(result, alpha)
        return (overlays["A"], color, overlays.get("B"), diff, legend, info, files)

    def _downloads(self, result: ImageResult, alpha: float) -> list[str]:
        # Gradio copies returned files into its own cache, so older request folders can go.
        prune_older_than(self.download_dir, DOWNLOAD_MAX_AGE_S)
        return [str(p) for p in write_downloads(result, self.taxonomy, alpha, self.download_dir)]

    # ---- browse --------------------------------------------------------------------------------
    def filter_class(self, class_name: str, progress=gr.Progress()) -> Any:
        """Samples holding a class; indexes the split's masks on first use."""
        assert self.browser is not None
        wanted = None if class_name in (None, "", ALL_CLASSES) else class_name
        if wanted and not self.browser.class_index_ready:
            progress(0, desc="indexing the split's masks by class (once)")
        names = self.browser.with_class(wanted, progress=_progress_fn(progress, "indexing masks"))
        return gr.Dropdown(choices=names, value=names[0] if names else None)

    def random_pick(self, class_name: str, step: int, progress=gr.Progress()) -> tuple[Any, int]:
        """The next seeded random sample (among those holding the chosen class)."""
        assert self.browser is not None
        wanted = None if class_name in (None, "", ALL_CLASSES) else class_name
        names = self.browser.with_class(wanted, progress=_progress_fn(progress, "indexing masks"))
        return gr.Dropdown(choices=names, value=self.browser.random_pick(names, step)), step + 1

    def show_sample(self, name: str, tta: str, alpha: float, exclude: list[str] | None = None) -> tuple:
        """Ground truth beside the prediction(s), per-image scores, chart and rank."""
        assert self.browser is not None
        if not name:  # e.g. a class no image of the split holds: nothing to show, not an error
            return (None, None, None, None, None, None, "no image chosen (or none holds this class)", None)
        alpha = check_alpha(alpha)
        image, truth = self.browser.load(name)
        result = predict_image(self.models, name, image, tta=tta, truth=truth, exclude=exclude)
        tax = self.taxonomy
        overlays = render_overlays(result, tax, alpha)
        gt_overlay = None if truth is None else _overlay_truth(image, truth, tax, alpha)
        table, chart, summary = self._scores(result)
        diff = None
        if self.has_b:
            diff, share = difference_map(image, result.ids["A"], result.ids["B"])
            summary += f"  \nA and B differ on {100.0 * share:.2f} % of the pixels."
        summary = f"{self._rank_text(name)}  \n{summary}\n\n{latency_text(result, self.models)}"
        files = self._downloads(result, alpha)
        return (gt_overlay, overlays["A"], overlays.get("B"), diff, table, chart, summary, files)

    def _scores(self, result: ImageResult) -> tuple[pd.DataFrame, pd.DataFrame, str]:
        tax = self.taxonomy
        rows = {c.name: {"class": c.name} for c in tax.classes}
        chart = []
        parts = []
        for m, ids in result.ids.items():
            s = image_scores(ids, result.truth, tax)
            for c in tax.names:
                rows[c][f"IoU {m}"] = s["per_class_iou"][c]
                rows[c][f"Dice {m}"] = s["per_class_dice"][c]
                if s["per_class_iou"][c] is not None:
                    # One bar per class and model: Gradio stacks bars that share an x value.
                    x = c if len(result.ids) == 1 else f"{c} ({m})"
                    chart.append({"class": x, "IoU": s["per_class_iou"][c], "model": m})
            parts.append(f"{m}: mIoU {_pct(s['miou'])}, mean Dice {_pct(s['mean_dice'])}")
        shares = legend_rows(result, tax)
        for row, (_, _, *pct) in zip(rows.values(), shares, strict=True):
            row["truth %"] = pct[-1]
            for m, p in zip(result.ids, pct, strict=False):
                row[f"pixels {m} %"] = p
        table = pd.DataFrame(list(rows.values())).round(4)
        return table, pd.DataFrame(chart, columns=["class", "IoU", "model"]), "; ".join(parts)

    def _rank_text(self, name: str) -> str:
        assert self.browser is not None
        rank = self.browser.rank_of(name)
        if rank is None:
            if self.browser.ranking_ready:
                return f"{name} is not in the ranking"
            return f"{name}: rank not computed yet (press 'Rank the split')"
        i, n, miou = rank
        return f"{name}: rank {i} of {n} in split '{self.browser.split}', worst first (model A, mIoU {_pct(miou)})"

    def rank_split(self, name: str | None, progress=gr.Progress()) -> str:
        """Score the whole split once with model A (``predict --gt``'s code), then show the rank."""
        assert self.browser is not None
        if not self.browser.ranking_ready:
            progress(0, desc=f"ranking {len(self.browser.names)} images (once)")
        predictor = self.models.predictor("A", self.models.default_tta)
        ranking = self.browser.ranking(predictor, progress=_progress_fn(progress, "ranking the split"))
        worst = ", ".join(f"{r['name']} ({_pct(r['miou'])})" for r in ranking[:3])
        head = self._rank_text(name) if name else ""
        return f"{head}  \nworst in the split: {worst}"

    # ---- page ----------------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        tax = self.taxonomy
        b = self.has_b
        paths = ", ".join(f"{n}: `{p}`" for n, p in self.models.paths.items())
        with gr.Blocks(title="offroadseg", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
            gr.Markdown(f"## {html.escape(self.title)}\n{paths} ({self.models.describe()})")
            with gr.Row():
                tta = gr.Radio(list(TTA_MODES), value=self.models.default_tta, label="Test-time augmentation")
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity")
                exclude = gr.CheckboxGroup(
                    tax.names,
                    value=[],
                    label="Exclude classes",
                    info="classes absent where you deploy: they get no pixel (as predict --exclude-classes)",
                    elem_id="exclude",
                )
            with gr.Tab("Upload"):
                files = gr.File(
                    file_count="multiple", file_types=list(IMAGE_SUFFIXES), label="Images", elem_id="upload"
                )
                run = gr.Button("Segment", variant="primary", elem_id="segment")
                shown = gr.Dropdown(choices=[], label="Showing", visible=False, interactive=True)
                with gr.Row():
                    ov_a = gr.Image(label="Overlay (A)", format=IMAGE_FORMAT, elem_id="overlay-a")
                    mask_a = gr.Image(label="Colour mask (A)", format=IMAGE_FORMAT, elem_id="mask-a")
                with gr.Row(visible=b):
                    ov_b = gr.Image(label="Overlay (B)", format=IMAGE_FORMAT)
                    diff = gr.Image(label="Difference A vs B (magenta)", format=IMAGE_FORMAT)
                with gr.Row():
                    legend = gr.HTML(label="Legend")
                    with gr.Column():
                        info = gr.Markdown(elem_id="latency")
                        downloads = gr.File(label="Downloads (mask in the dataset's encoding, overlay)")
                results = gr.State([])
                outs = [ov_a, mask_a, ov_b, diff, legend, info, downloads]
                run.click(
                    _user_errors(self.segment),
                    [files, tta, alpha, exclude],
                    [results, shown, *outs],
                    api_name="segment",
                )
                rerender = _user_errors(self.rerender)
                shown.change(rerender, [results, shown, alpha], outs, api_name=False)
                alpha.release(rerender, [results, shown, alpha], outs, api_name=False)
            if self.browser is not None:
                self._browse_tab(tta, alpha, exclude)
        return page

    def _browse_tab(self, tta, alpha, exclude) -> None:
        assert self.browser is not None
        br = self.browser
        with gr.Tab(f"Browse {br.split}"):
            with gr.Row():
                cls = gr.Dropdown([ALL_CLASSES, *self.taxonomy.names], value=ALL_CLASSES, label="Class")
                sample = gr.Dropdown(br.names, value=None, label=f"Image ({len(br.names)} in {br.split})")
                pick = gr.Button("Random pick")
                rank = gr.Button("Rank the split")
            summary = gr.Markdown(
                "ranking read from " + br.scores_source if br.scores_source else "", elem_id="summary"
            )
            with gr.Row():
                gt = gr.Image(label="Ground truth", format=IMAGE_FORMAT)
                pa = gr.Image(label="Prediction (A)", format=IMAGE_FORMAT)
                pb = gr.Image(label="Prediction (B)", format=IMAGE_FORMAT, visible=self.has_b)
                dm = gr.Image(label="Difference A vs B (magenta)", format=IMAGE_FORMAT, visible=self.has_b)
            with gr.Row():
                table = gr.Dataframe(label="This image: IoU / Dice per class")
                chart = gr.BarPlot(
                    x="class", y="IoU", color="model", y_lim=[0, 1], label="Per-class IoU", x_label_angle=-45
                )
            downloads = gr.File(label="Downloads (mask in the dataset's encoding, overlay)")
            step = gr.State(0)
            outs = [gt, pa, pb, dm, table, chart, summary, downloads]
            show = _user_errors(self.show_sample)
            cls.change(_user_errors(self.filter_class), [cls], [sample], api_name="filter_class")
            pick.click(_user_errors(self.random_pick), [cls, step], [sample, step], api_name="random_pick")
            sample.change(show, [sample, tta, alpha, exclude], outs, api_name="show_sample")
            rank.click(_user_errors(self.rank_split), [sample], [summary], api_name="rank_split")


def _overlay_truth(image: np.ndarray, truth: np.ndarray, tax, alpha: float) -> np.ndarray:
    return overlay(image, tax.colorize(truth), alpha)


def prune_older_than(folder: Path, seconds: float) -> None:
    """Remove the sub-folders of ``folder`` last changed more than ``seconds`` ago."""
    cutoff = time.time() - seconds
    for sub in folder.iterdir():
        if sub.is_dir() and sub.stat().st_mtime < cutoff:
            shutil.rmtree(sub, ignore_errors=True)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _progress_fn(progress, desc: str):
    def update(done: int, total: int) -> None:
        progress((done, total), desc=desc)

    return update

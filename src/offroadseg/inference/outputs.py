"""A prediction run on files: inputs, output folders, scores against ground truth.

``<out>/masks/<name>.png`` holds each prediction in the dataset's own encoding (uint16 raw
values for Duality), at the input's size; ``color/`` the colourised prediction,
``overlay/`` it blended over the image. With ground truth: ``comparison/`` (image | truth |
prediction), ``metrics.json`` (the ``score`` command's keys) and ``per_image.csv``, worst
image first. Every file is written atomically.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from offroadseg.atomic import atomic_write_text
from offroadseg.data.io import IMAGE_SUFFIXES, read_image, read_label, write_png
from offroadseg.errors import DataError, OffroadsegError
from offroadseg.inference.predictor import Predictor
from offroadseg.metrics import confusion_matrix, finite_or_none, json_ready, scores_from_confusion
from offroadseg.reporting.report import make_strip
from offroadseg.taxonomy import Taxonomy

__all__ = ["OutputWriter", "PredictSummary", "collect_inputs", "overlay", "predict_files"]

SUBDIRS = ("masks", "color", "overlay", "comparison")
FILES = ("metrics.json", "per_image.csv", "engine.json")  # engine.json: predict --engine
COMPARISON_MAX_HEIGHT = 540


def collect_inputs(specs: Sequence[str], *, missing: list[tuple[str, str]] | None = None) -> list[Path]:
    """Image paths from files, folders (their image files, sorted) and glob patterns.

    A file named explicitly is kept whatever its suffix, so a wrong file is reported when
    it is read rather than silently dropped; folders and globs give image files only.

    Args:
        specs: files, folders and glob patterns.
        missing: when given, a path that does not exist or a pattern that matches nothing is
            appended to it as ``(spec, one-line reason)`` instead of stopping the run (so the
            result may be empty when nothing exists).

    Raises:
        DataError: a path does not exist or a pattern matches nothing (unless ``missing`` is
            given), no image file at all, or two inputs share a name (their outputs would
            overwrite each other).
    """
    paths: list[Path] = []

    def not_found(spec: str, message: str) -> None:
        if missing is None:
            raise DataError(message)
        missing.append((spec, message))

    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        elif glob.has_magic(spec):
            found = sorted(Path(p) for p in glob.glob(spec, recursive=True))
            found = [p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                not_found(
                    spec, f"pattern {spec!r} matches no image file; fix: check the pattern and quote it"
                )
            paths += found
        else:
            not_found(spec, f"input {spec} does not exist; fix: give image files, folders or glob patterns")
    paths = list(dict.fromkeys(paths))
    if not paths and missing:
        return []  # nothing exists: the caller reports each missing input
        raise DataError(
            f"no image files in {', '.join(specs)}; fix: point INPUT at images ({', '.join(IMAGE_SUFFIXES)})"
        )
    seen: dict[str, Path] = {}
    for p in paths:
        if p.stem in seen:
            raise DataError(
                f"inputs {seen[p.stem]} and {p} share the name {p.stem!r}, so their masks would overwrite "
                f"each other; fix: predict them into separate --out folders"
            )
        seen[p.stem] = p
    return paths


def overlay(image: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha`` * colourised prediction + (1 - ``alpha``) * image, uint8 RGB."""
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * color.astype(np.float32)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


class OutputWriter:
    """Writes one prediction's files into the output folder.

    Args:
        out_dir: the output folder.
        taxonomy: encodes masks and colours.
        alpha: the prediction's weight in the overlay, in ``[0, 1]``.
        overwrite: replace earlier results (they are removed first so no stale file remains).

    Raises:
        OffroadsegError: ``out_dir`` holds earlier results and ``overwrite`` is not set.
    """

    def __init__(
        self, out_dir: str | Path, taxonomy: Taxonomy, *, alpha: float = 0.5, overwrite: bool = False
    ):
        if not 0.0 <= alpha <= 1.0:
            raise OffroadsegError(f"--alpha {alpha} is outside [0, 1]; fix: e.g. --alpha 0.5")
        self.out_dir = Path(out_dir)
        self.taxonomy = taxonomy
        self.alpha = alpha
        earlier = [self.out_dir / n for n in SUBDIRS + FILES if (self.out_dir / n).exists()]
        if earlier and not overwrite:
            raise OffroadsegError(
                f"output folder {self.out_dir} already holds results ({', '.join(p.name for p in earlier)}); "
                f"fix: pass --overwrite to replace them, or choose another --out"
            )
        for p in earlier:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, image: np.ndarray, ids: np.ndarray, truth: np.ndarray | None = None) -> None:
        """Write mask, colour, overlay (and comparison when ``truth`` ids are given)."""
        color = self.taxonomy.colorize(ids)
        write_png(self.out_dir / "masks" / f"{name}.png", self.taxonomy.decode(ids))
        write_png(self.out_dir / "color" / f"{name}.png", color)
        write_png(self.out_dir / "overlay" / f"{name}.png", overlay(image, color, self.alpha))
        if truth is not None:
            height = min(image.shape[0], COMPARISON_MAX_HEIGHT)
            strip = make_strip(image, self.taxonomy.colorize(truth), color, height=height)
            write_png(self.out_dir / "comparison" / f"{name}.png", strip)

    def write_scores(self, scores: dict, per_image: list[dict], *, images: int) -> None:
        """``metrics.json`` (dataset-level scores) and ``per_image.csv`` (worst mIoU first)."""
        payload = {**scores, "images": images}
        atomic_write_text(self.out_dir / "metrics.json", json.dumps(json_ready(payload), indent=2))
        rows = sorted(per_image, key=lambda r: (math.inf if r["miou"] is None else r["miou"], r["name"]))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["name", "miou", "pixel_accuracy"], lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r[k] is None else r[k] for k in ("name", "miou", "pixel_accuracy")})
        atomic_write_text(self.out_dir / "per_image.csv", buf.getvalue())


@dataclass
class PredictSummary:
    """What a prediction run did."""

    images: int  # predicted and written
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, one-line reason)
    seconds: float = 0.0
    scored: int = 0  # images scored against ground truth
    no_truth: list[str] = field(default_factory=list)  # inputs with no ground-truth mask in --gt
    scores: dict | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.seconds / self.images if self.images else 0.0


def _index_truth(gt_dir: Path) -> dict[str, Path]:
    if not gt_dir.is_dir():
        raise DataError(f"ground-truth folder {gt_dir} does not exist; fix: point --gt at the mask folder")
    return {p.stem: p for p in sorted(gt_dir.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def predict_files(
    predictor: Predictor,
    paths: Sequence[Path],
    writer: OutputWriter,
    *,
    gt_dir: str | Path | None = None,
    batch_size: int = 1,
    unknown: str = "error",
    progress: Callable[[int, int], None] | None = None,
) -> PredictSummary:
    """Predict every image, write its outputs, and score it when ground truth is given.

    An input that cannot be read or written (or a bad ground-truth mask) is recorded in
    ``failed`` with a one-line reason and skipped; the run goes on with the others. Files are
    read and written on a small thread pool while the model runs.

    Args:
        gt_dir: folder of ground-truth masks named like the inputs (``<name>.png``).
        batch_size: images per forward call.
        unknown: ``error`` | ``ignore``, for ground-truth values not in the taxonomy.
        progress: ``(done, total)`` callback.
    """
    tax = predictor.taxonomy
    truth_index = _index_truth(Path(gt_dir)) if gt_dir is not None else None
    summary = PredictSummary(images=0)
    k = tax.num_classes
    total_cm = np.zeros((k, k), dtype=np.int64)
    per_image: list[dict] = []
    batch_size = max(1, int(batch_size))

    def load(path: Path) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
        try:
            image = read_image(path)
        except DataError as exc:
            return None, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad file (a decompression bomb...) must not stop the others
            return (
                None,
                None,
                f"image file {path} could not be read ({type(exc).__name__}: {exc}); fix: check or remove it",
            )
        if truth_index is None or path.stem not in truth_index:
            return image, None, None
        gt_path = truth_index[path.stem]
        try:
            truth = tax.encode(read_label(gt_path, tax), unknown=unknown, source=str(gt_path))
        except DataError as exc:
            return image, None, str(exc)
        if truth.shape != image.shape[:2]:
            return (
                image,
                None,
                (
                    f"ground truth {gt_path} is {truth.shape[1]}x{truth.shape[0]} but image {path} is "
                    f"{image.shape[1]}x{image.shape[0]}; fix: give masks at the images' size"
                ),
            )
        return image, truth, None

    start = time.perf_counter()
    batches = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
    done = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: list[tuple[Path, Future]] = []
        loading = [pool.submit(load, p) for p in batches[0]] if batches else []
        for b, batch in enumerate(batches):
            loaded = [f.result() for f in loading]
            if b + 1 < len(batches):  # read the next batch while this one runs
                loading = [pool.submit(load, p) for p in batches[b + 1]]
            ok = []
            for path, (image, truth, error) in zip(batch, loaded, strict=True):
                if image is None:
                    summary.failed.append((str(path), error or "unreadable"))
                    continue
                if error:
                    summary.failed.append((str(path), error))
                elif truth_index is not None and truth is None:
                    summary.no_truth.append(str(path))
                ok.append((path, image, truth))
            if ok:
                ids_list = predictor.predict([im for _, im, _ in ok])
                for (path, image, truth), ids in zip(ok, ids_list, strict=True):
                    pending.append((path, pool.submit(writer.write, path.stem, image, ids, truth)))
                    summary.images += 1
                    if truth is not None:
                        cm = np.asarray(confusion_matrix(ids, truth, k, ignore_index=tax.ignore_index))
                        total_cm += cm
                        s = scores_from_confusion(cm)
                        per_image.append(
                            {
                                "name": path.stem,
                                "miou": finite_or_none(s.miou),
                                "pixel_accuracy": finite_or_none(s.pixel_accuracy),
                            }
                        )
            done += len(batch)
            if progress:
                progress(done, len(paths))
        for path, f in pending:
            try:
                f.result()
            except OSError as exc:  # e.g. a name the file system refuses: the other outputs still count
                summary.failed.append(
                    (str(path), f"its outputs could not be written to {writer.out_dir} ({exc})")
                )
                summary.images -= 1
    summary.seconds = time.perf_counter() - start
    if truth_index is not None:
        summary.scored = len(per_image)
        if per_image:
            summary.scores = scores_from_confusion(total_cm).to_dict(tax.names)
            writer.write_scores(summary.scores, per_image, images=summary.scored)
    return summary

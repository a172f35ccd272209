"""What the app does with one image, without any web framework.

The models are loaded once (:func:`load_models`); each request gets its own arrays, so
concurrent requests never share mutable state. Prediction goes through
:class:`~offroadseg.inference.predictor.Predictor`, colours through the taxonomy, the
overlay through :func:`offroadseg.inference.outputs.overlay` and per-image scores through
:mod:`offroadseg.metrics`, exactly as ``offroadseg predict --gt`` does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from offroadseg.data.io import (
    IMAGE_SUFFIXES,
    MAX_PIXELS_ENV,
    ImageTooLargeError,
    image_size,
    read_image,
    write_png,
)
from offroadseg.errors import DataError, ModelError
from offroadseg.inference.outputs import overlay
from offroadseg.inference.predictor import TTA_MODES, Predictor, TTAConfig, parse_excluded_classes
from offroadseg.metrics import confusion_matrix, scores_from_confusion
from offroadseg.taxonomy import Taxonomy

__all__ = [
    "AppLimits",
    "ImageResult",
    "ModelSet",
    "class_shares",
    "difference_map",
    "image_scores",
    "load_models",
    "read_upload",
]

# Where the two models disagree: magenta over a dimmed image.
DISAGREE_COLOR = (255, 0, 255)


@dataclass(frozen=True)
class AppLimits:
    """What the app accepts from a browser.

    Attributes:
        max_upload_mb: largest uploaded file, in MiB (also Gradio's own upload limit).
        max_megapixels: largest image, width x height / 1e6 (read from the header, before decoding).
        max_images: images per request.
        concurrency: requests served at once (each runs the model in its own thread).
    """

    max_upload_mb: float = 20.0
    max_megapixels: float = 40.0
    max_images: int = 8
    concurrency: int = 2

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "max_megapixels", "max_images", "concurrency"):
            if getattr(self, name) <= 0:
                raise DataError(
                    f"--{name.replace('_', '-')} {getattr(self, name)} must be positive; fix: give a number > 0"
                )


@dataclass
class ModelSet:
    """One or two loaded models sharing a taxonomy, with a predictor per TTA mode.

    Attributes:
        predictors: ``predictors[name][tta]`` for name ``A`` (and ``B``), built once at start-up;
            the TTA variants share the model's weights.
        paths: checkpoint path per name.
        unknown: how ground-truth values outside the taxonomy are treated (``data.unknown_values``).
        data_config: model A's data config (layout and taxonomy of ``--data``).
    """

    predictors: dict[str, dict[str, Predictor]]
    paths: dict[str, Path]
    unknown: str
    data_config: object
    default_tta: str = "none"

    @property
    def names(self) -> list[str]:
        return list(self.predictors)

    @property
    def taxonomy(self) -> Taxonomy:
        return self.predictors["A"][self.default_tta].taxonomy

    def predictor(self, name: str, tta: str) -> Predictor:
        if tta not in TTA_MODES:
            raise DataError(f"TTA {tta!r} is not valid; fix: choose one of {', '.join(TTA_MODES)}")
        return self.predictors[name][tta]

    def describe(self) -> str:
        p = self.predictors["A"][self.default_tta]
        return (
            f"{p.runtime} on {p.device}, input {p.image_size[1]}x{p.image_size[0]}, "
            f"{p.taxonomy.num_classes} classes ({p.taxonomy.name})"
        )


def _class_table(tax: Taxonomy) -> list[tuple[str, tuple[int, ...]]]:
    return [(c.name, c.values) for c in tax.classes]


def load_models(
    checkpoint: str | Path, checkpoint_b: str | Path | None = None, *, device: str = "auto"
) -> ModelSet:
    """Load model A (and B) once, through the checkpoint loader ``predict`` uses.

    Raises:
        ModelError: a checkpoint cannot be loaded, or B's taxonomy differs from A's (both
            class lists are named).
    """
    from offroadseg.inference.checkpoint import load_checkpoint

    loaded = {"A": load_checkpoint(checkpoint)}
    if checkpoint_b is not None:
        loaded["B"] = load_checkpoint(checkpoint_b)
        ta, tb = loaded["A"].taxonomy, loaded["B"].taxonomy
        if _class_table(ta) != _class_table(tb) or ta.encoding != tb.encoding:
            raise ModelError(
                f"checkpoint B {checkpoint_b} predicts other classes than checkpoint A {checkpoint}: "
                f"A ({ta.name}): {_show_classes(ta)}; B ({tb.name}): {_show_classes(tb)}; fix: compare "
                f"two checkpoints trained on the same taxonomy"
            )
    predictors: dict[str, dict[str, Predictor]] = {}
    for name, lm in loaded.items():
        ev = lm.config.eval
        predictors[name] = {
            mode: Predictor.from_loaded(
                lm,
                tta=TTAConfig(mode, tuple(ev.scales), ev.sliding_window, ev.window_overlap),
                device=device,
            )
            for mode in TTA_MODES
        }
    a = loaded["A"]
    return ModelSet(
        predictors=predictors,
        paths={n: lm.path for n, lm in loaded.items()},
        unknown=a.config.data.unknown_values,
        data_config=a.config.data,
        default_tta=a.config.eval.tta,
    )


def _show_classes(tax: Taxonomy) -> str:
    return "[" + ", ".join(f"{c.values[0]}={c.name}" for c in tax.classes) + "]"


def read_upload(path: str | Path, limits: AppLimits, *, name: str | None = None) -> np.ndarray:
    """An uploaded file as uint8 RGB ``[H, W, 3]``, after checking type, size and megapixels.

    The header is read first, so a huge image is refused before it is decoded.

    Args:
        path: where the server stored the upload.
        name: the name the user knows it by (default: the file's name).

    Raises:
        DataError: not an image, truncated, larger than ``max_upload_mb`` or ``max_megapixels``.
    """
    path = Path(path)
    name = name or path.name
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(
            f"{name} is not an image file (type {path.suffix or 'none'}); fix: upload one of "
            f"{', '.join(IMAGE_SUFFIXES)}"
        )
    mib = path.stat().st_size / 2**20
    if mib > limits.max_upload_mb:
        raise DataError(
            f"{name} is {mib:.1f} MiB, above the {limits.max_upload_mb:g} MiB upload limit; fix: upload a "
            f"smaller file or start the app with a larger --max-upload-mb"
        )
    try:
        h, w = image_size(path)
    except ImageTooLargeError as exc:  # the server's limit on every image it decodes
        (h, w), limit = exc.size, exc.limit
        raise DataError(
            f"{name} is {w}x{h} = {h * w:,} pixels, above the server's limit of {limit:,} pixels per "
            f"image; fix: downscale it, or start the app with "
            f"{MAX_PIXELS_ENV} set higher"
        ) from None
    except DataError:
        raise DataError(
            f"{name} is not a readable image; fix: upload a PNG or JPEG photo ({', '.join(IMAGE_SUFFIXES)})"
        ) from None
    mp = h * w / 1e6
    if mp > limits.max_megapixels:
        raise DataError(
            f"{name} is {w}x{h} = {mp:.1f} megapixels, above the {limits.max_megapixels:g} MP limit; fix: "
            f"downscale it or start the app with a larger --max-megapixels"
        )
    try:
        return read_image(path)
    except DataError:
        raise DataError(
            f"{name} is truncated or corrupt and cannot be decoded; fix: upload the complete file"
        ) from None


def class_shares(ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of each class among the labelled pixels of ``ids`` (uint8 ``[H, W]``) -> float ``[K]``.

    Pixels with an id >= ``num_classes`` (ignored) are left out; all zeros when none is labelled.
    """
    counts = np.bincount(np.asarray(ids, dtype=np.uint8).ravel(), minlength=256)[:num_classes]
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def image_scores(pred: np.ndarray, truth: np.ndarray, taxonomy: Taxonomy) -> dict:
    """One image's scores, as ``predict --gt`` computes them (its confusion matrix).

    Returns:
        ``SegmentationScores.to_dict(names)``: ``miou``, ``per_class_iou``, ``per_class_dice``, ...
    """
    k = taxonomy.num_classes
    cm = np.asarray(confusion_matrix(pred, truth, k, ignore_index=taxonomy.ignore_index))
    return scores_from_confusion(cm).to_dict(taxonomy.names)


def difference_map(image: np.ndarray, ids_a: np.ndarray, ids_b: np.ndarray) -> tuple[np.ndarray, float]:
    """Where two predictions differ: magenta over the image dimmed to 35 %.

    Args:
        image: uint8 RGB ``[H, W, 3]``.
        ids_a, ids_b: uint8 ``[H, W]`` class ids of the same image.

    Returns:
        uint8 RGB ``[H, W, 3]`` and the share of pixels whose class differs.
    """
    differ = ids_a != ids_b
    out = (image.astype(np.float32) * 0.35).astype(np.uint8)
    out[differ] = DISAGREE_COLOR
    return out, float(differ.mean()) if differ.size else 0.0


@dataclass
class ImageResult:
    """One image and each model's prediction of it.

    Attributes:
        name: the image's name (upload file name or sample name).
        image: uint8 RGB ``[H, W, 3]``.
        ids: model name -> uint8 ``[H, W]`` class ids at the image's size.
        seconds: model name -> prediction wall time.
        truth: uint8 ``[H, W]`` ground-truth ids, when known.
        tta: the test-time augmentation the predictions used.
        exclude: the class names the predictions were not allowed to use.
    """

    name: str
    image: np.ndarray
    tta: str = "none"
    exclude: tuple[str, ...] = ()
    ids: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    truth: np.ndarray | None = None


def predict_image(
    models: ModelSet,
    name: str,
    image: np.ndarray,
    *,
    tta: str,
    truth: np.ndarray | None = None,
    exclude: Sequence[str] | None = None,
) -> ImageResult:
    """Run every model on one image and time each.

    ``exclude``: class names that get no pixel (their logits masked before the argmax and TTA
    averaging, as ``predict --exclude-classes`` does).
    """
    result = ImageResult(name, image, tta=tta, truth=truth, exclude=tuple(exclude or ()))
    ids = parse_excluded_classes(exclude, models.taxonomy)
    for m in models.names:
        predictor = models.predictor(m, tta)
        start = time.perf_counter()
        result.ids[m] = predictor.predict_one(image, exclude=ids)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize(predictor.device)
        result.seconds[m] = time.perf_counter() - start
    return result


def legend_rows(result: ImageResult, taxonomy: Taxonomy) -> list[list]:
    """Rows ``[class, colour hex, share of model A (%), (share of B), (share of truth)]`` per class."""
    k = taxonomy.num_classes
    shares = [class_shares(result.ids[m], k) for m in result.ids]
    if result.truth is not None:
        shares.append(class_shares(result.truth, k))
    rows = []
    for i, c in enumerate(taxonomy.classes):
        hexcol = "#{:02x}{:02x}{:02x}".format(*c.color)
        rows.append([c.name, hexcol, *[round(100.0 * float(s[i]), 2) for s in shares]])
    return rows


def write_downloads(result: ImageResult, taxonomy: Taxonomy, alpha: float, folder: str | Path) -> list[Path]:
    """Each model's mask in the dataset's own encoding (uint16 raw for Duality) and its overlay.

    Files go into a fresh sub-folder of ``folder`` (one per request, so two requests for
    images with one name never overwrite each other), written atomically.
    """
    out = Path(folder) / uuid.uuid4().hex
    stem = Path(result.name).stem
    paths = []
    for m, ids in result.ids.items():
        suffix = "" if len(result.ids) == 1 else f"_{m}"
        mask = out / f"{stem}_mask{suffix}.png"
        ov = out / f"{stem}_overlay{suffix}.png"
        write_png(mask, taxonomy.decode(ids))
        write_png(ov, overlay(result.image, taxonomy.colorize(ids), alpha))
        paths += [mask, ov]
    return paths


def render_overlays(result: ImageResult, taxonomy: Taxonomy, alpha: float) -> dict[str, np.ndarray]:
    """Model name -> overlay of its colourised prediction at opacity ``alpha`` (uint8 RGB)."""
    return {m: overlay(result.image, taxonomy.colorize(ids), alpha) for m, ids in result.ids.items()}


def latency_text(result: ImageResult, models: ModelSet) -> str:
    """One line: image size, TTA and each model's prediction time."""
    h, w = result.image.shape[:2]
    parts = [f"{m} {1000.0 * s:.0f} ms" for m, s in result.seconds.items()]
    device = models.predictor("A", result.tta).device
    excluded = f", excluded: {', '.join(result.exclude)}" if result.exclude else ""
    return f"{result.name}: {w}x{h}, TTA {result.tta}{excluded}, {device}: " + ", ".join(parts)


def check_alpha(alpha: float) -> float:
    if not 0.0 <= float(alpha) <= 1.0:
        raise DataError(f"opacity {alpha} is outside [0, 1]; fix: give a value between 0 and 1")
    return float(alpha)


def names_of(paths: Sequence[str | Path]) -> list[str]:
    """File names of uploads, made unique (``a.png``, ``a (2).png``) so the page can tell them apart."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        n = Path(p).name
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{Path(n).stem} ({seen[n]}){Path(n).suffix}")
    return out

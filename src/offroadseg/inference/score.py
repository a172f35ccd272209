"""Score masks on disk against ground truth (any tool's output, in the dataset's encoding)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offroadseg.data.io import IMAGE_SUFFIXES, read_label
from offroadseg.errors import DataError
from offroadseg.metrics import confusion_matrix, finite_or_none, scores_from_confusion
from offroadseg.taxonomy import Taxonomy


@dataclass
class FolderScore:
    scores: dict  # SegmentationScores.to_dict
    per_image: list[dict]  # name, miou, pixel_accuracy
    images: int


def _index(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist; fix: check the path")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def score_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    taxonomy: Taxonomy,
    *,
    unknown: str = "error",
    progress: Callable[[int, int], None] | None = None,
) -> FolderScore:
    """Dataset-level scores of predicted masks against ground-truth masks, paired by name.

    Raises:
        DataError: a ground-truth mask has no prediction, sizes differ, or a file is bad.
    """
    preds, gts = _index(Path(pred_dir)), _index(Path(gt_dir))
    if not gts:
        raise DataError(f"no masks in {gt_dir}; fix: point GT_DIR at the ground-truth mask folder")
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise DataError(
            f"{len(missing)} ground-truth masks have no prediction in {pred_dir} (e.g. {missing[:3]}); "
            f"fix: predict every image, or score a folder pair that matches"
        )
    k = taxonomy.num_classes
    total = np.zeros((k, k), dtype=np.int64)
    per_image = []
    for i, (name, gt_path) in enumerate(gts.items()):
        gt = taxonomy.encode(read_label(gt_path, taxonomy), unknown=unknown, source=str(gt_path))
        pred = taxonomy.encode(read_label(preds[name], taxonomy), unknown="error", source=str(preds[name]))
        if pred.shape != gt.shape:
            raise DataError(
                f"prediction {preds[name]} is {pred.shape[1]}x{pred.shape[0]} but ground truth {gt_path} is "
                f"{gt.shape[1]}x{gt.shape[0]}; fix: write predictions at the label's size"
            )
        pred = np.where(pred == taxonomy.ignore_index, 0, pred)
        cm = np.asarray(confusion_matrix(pred, gt, k, ignore_index=taxonomy.ignore_index))
        total += cm
        s = scores_from_confusion(cm)
        per_image.append(
            {"name": name, "miou": finite_or_none(s.miou), "pixel_accuracy": finite_or_none(s.pixel_accuracy)}
        )
        if progress:
            progress(i + 1, len(gts))
    scores = scores_from_confusion(total).to_dict(taxonomy.names)
    return FolderScore(scores, per_image, len(gts))

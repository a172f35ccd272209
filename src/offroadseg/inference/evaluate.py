"""Evaluate a checkpoint (or an ensemble of them) on a dataset split: dataset-level scores at the
label's resolution."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from offroadseg.data.datasets import SegmentationDataset, collate, list_samples
from offroadseg.devices import pick_device
from offroadseg.inference.checkpoint import LoadedModel
from offroadseg.inference.ensemble import EnsemblePredictor
from offroadseg.inference.predictor import Predictor, TTAConfig, mask_excluded
from offroadseg.metrics import (
    BatchMeanIoU,
    ConfusionMatrixMetric,
    full_resolution_predictions,
    scores_from_confusion,
)


@dataclass
class EvalResult:
    split: str
    images: int
    scores: dict  # SegmentationScores.to_dict
    batch_mean_iou: float  # the reference pipeline's figure, for comparison only


@torch.no_grad()
def evaluate_loaded(
    loaded: LoadedModel | Sequence[LoadedModel],
    *,
    data_root: str | None = None,
    split: str = "val",
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: Callable[[int, int], None] | None = None,
    tta=None,
    exclude: tuple[int, ...] = (),
) -> EvalResult:
    """Run the model over a split and score it from one confusion matrix.

    ``tta`` (a :class:`~offroadseg.inference.predictor.TTAConfig`, default: the config's ``eval``
    section) switches to the predictor's TTA / sliding-window path on full-resolution images.
    ``exclude``: class ids whose logits are masked before the argmax (they get no pixel; where
    the labels hold them they count as misses).

    ``loaded`` may be a list of checkpoints of one taxonomy: an ensemble, scored from the mean of
    their softmax probabilities through the shared predictor on full-resolution images (each member
    at its own training size, logits upsampled to the label's size; see
    :mod:`offroadseg.inference.ensemble`). The split, data settings and default TTA are the first
    member's; a list of one is that checkpoint alone.

    Raises:
        ConfigError: ensemble members of different taxonomies.
    """
    members = list(loaded) if isinstance(loaded, list | tuple) else [loaded]
    loaded = members[0]
    cfg = loaded.config
    data_cfg = _data_config(loaded, data_root)
    samples = list_samples(data_cfg, split)
    if len(members) > 1:
        predictor = EnsemblePredictor.from_checkpoints(
            members, tta=tta, device=device, batch_size=batch_size, exclude=exclude
        )
        return _evaluate_with_predictor(predictor, loaded, samples, split, batch_size, progress)
    if tta is None:
        tta = TTAConfig.from_eval(cfg.eval)
    if tta.tta != "none" or tta.sliding_window:
        predictor = Predictor.from_loaded(
            loaded, tta=tta, device=device, batch_size=batch_size, exclude=exclude
        )
        return _evaluate_with_predictor(predictor, loaded, samples, split, batch_size, progress)
    dataset = SegmentationDataset(
        samples,
        loaded.taxonomy,
        image_size=tuple(data_cfg.image_size),
        unknown=data_cfg.unknown_values,
        full_res=cfg.eval.full_resolution,
    )
    loader = DataLoader(dataset, batch_size=batch_size or cfg.eval.batch_size, collate_fn=collate)
    dev = pick_device(device)
    model = loaded.model.to(dev).eval()
    k = loaded.taxonomy.num_classes
    cm = ConfusionMatrixMetric(k, ignore_index=loaded.taxonomy.ignore_index).to(dev)
    batch_iou = BatchMeanIoU(k, ignore_index=loaded.taxonomy.ignore_index).to(dev)
    done = 0
    for batch in loader:
        logits = mask_excluded(model(batch["image"].to(dev)).float(), exclude)
        moved = {key: _to(value, dev) for key, value in batch.items()}
        preds, targets = full_resolution_predictions(logits, moved)
        for pred, target in zip(preds, targets, strict=True):
            cm.update(pred, target)
            batch_iou.update(pred, target)
        done += len(batch["name"])
        if progress:
            progress(done, len(dataset))
    scores = scores_from_confusion(cm.compute()).to_dict(loaded.taxonomy.names)
    return EvalResult(split, len(dataset), scores, float(batch_iou.compute()))


def evaluate_predictor(
    predictor,
    loaded: LoadedModel,
    *,
    data_root: str | None = None,
    split: str = "val",
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Score any predictor (e.g. an ONNX Runtime or OpenVINO engine built from ``loaded``) on a split of
    ``loaded``'s dataset, from full-resolution predictions, as :func:`evaluate_loaded` scores TTA."""
    data_cfg = _data_config(loaded, data_root)
    samples = list_samples(data_cfg, split)
    return _evaluate_with_predictor(predictor, loaded, samples, split, batch_size, progress)


def calibration_images(
    loaded: LoadedModel, n: int, *, data_root: str | None = None, split: str = "val"
) -> tuple[str, list]:
    """``(split, images)``: up to ``n`` RGB frames, evenly spread, for an engine to time or calibrate on:
    the training split's, so that an int8 engine is not calibrated on the frames it is scored on; the
    scored ``split``'s when the dataset has no training split there."""
    from offroadseg.data.io import read_image
    from offroadseg.errors import DataError
    from offroadseg.inference.engines import spread

    data_cfg = _data_config(loaded, data_root)
    source = loaded.config.data.train_split
    try:
        samples = list_samples(data_cfg, source, require_labels=False)
    except DataError:
        source, samples = split, list_samples(data_cfg, split)
    return source, [read_image(s.image) for s in spread(samples, n)]


def _evaluate_with_predictor(predictor, loaded, samples, split, batch_size, progress) -> EvalResult:
    """Score full-resolution predictions of the shared predictor (TTA, sliding window, ensembles)."""
    from offroadseg.data.datasets import load_pair

    k = loaded.taxonomy.num_classes
    cm = ConfusionMatrixMetric(k, ignore_index=loaded.taxonomy.ignore_index)
    batch_iou = BatchMeanIoU(k, ignore_index=loaded.taxonomy.ignore_index)
    step = batch_size or loaded.config.eval.batch_size
    for start in range(0, len(samples), step):
        pairs = [
            load_pair(s, loaded.taxonomy, unknown=loaded.config.data.unknown_values)
            for s in samples[start : start + step]
        ]
        preds = predictor.predict([image for image, _ in pairs])
        for pred, (_, ids) in zip(preds, pairs, strict=True):
            pred_t, ids_t = torch.from_numpy(pred).long(), torch.from_numpy(ids).long()
            cm.update(pred_t, ids_t)
            batch_iou.update(pred_t, ids_t)
        if progress:
            progress(min(start + step, len(samples)), len(samples))
    scores = scores_from_confusion(cm.compute()).to_dict(loaded.taxonomy.names)
    return EvalResult(split, len(samples), scores, float(batch_iou.compute()))


def _data_config(loaded: LoadedModel, data_root: str | None):
    """The checkpoint's data settings, on ``data_root`` when one is given (``--data``)."""
    return dataclasses.replace(loaded.config.data, root=data_root) if data_root else loaded.config.data


def _to(value, dev):
    if isinstance(value, torch.Tensor):
        return value.to(dev)
    if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
        return [v.to(dev) for v in value]
    return value

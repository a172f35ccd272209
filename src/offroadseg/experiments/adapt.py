"""Adapt a trained model to where it is deployed, from unlabeled images (``offroadseg adapt``).

Method ``self`` (self-training with a mean teacher, as in DACS / DAFormer, thresholds from CBST):

1. the student is the checkpoint's model; the teacher an exponential moving average of it;
2. the frozen part of the backbone runs **once** per frame: its outputs (the hidden states the
   trained blocks and the head read, fp16) are kept in memory for the source and target frames,
   and every step runs only the trained blocks and the head; the horizontal flip is applied to
   the token grid (as the training feature cache does) and the logits flipped back;
3. each round starts with class-balanced confidence thresholds computed from the teacher's
   predictions on every target frame (the ``1 - keep`` quantile of each predicted class's
   confidences, :func:`~offroadseg.experiments.pseudo.class_thresholds`);
4. each step mixes a labelled source batch (the checkpoint's own training split, its own loss)
   with a target batch whose pseudo-labels are the teacher's flip-averaged prediction where it
   clears its class's threshold (the rest ignored): flip consistency, since the student sees a
   random flip of the frame the teacher labelled in both orientations; with ``classmix`` the target
   frame first gets half the classes of the source frame pasted on it, on the token grid
   (:mod:`~offroadseg.experiments.classmix`);
5. after each round the label-free health figures are computed; when a class collapses
   (:func:`~offroadseg.experiments.pseudo.detect_collapse`) adaptation stops and the last healthy
   round's teacher is written (the unadapted model when the first round collapsed).

Method ``bn``: the cheap baseline, batch-norm statistics re-estimated on the target frames (only
for heads that have batch norm: the ``linear`` head; DINOv2 itself uses LayerNorm).

Everything is written into a temporary sibling of ``--out`` and renamed into place at the end, so
an error leaves nothing half-written.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from offroadseg.atomic import atomic_write_text
from offroadseg.config import Config, dump_config
from offroadseg.data.io import IMAGE_SUFFIXES, read_image, read_label
from offroadseg.errors import ConfigError, DataError, OffroadsegError
from offroadseg.experiments.adapt_frames import (
    Frames,
    TargetView,
    _batches,
    encode_frames,
    frame_logits,
    frame_probs,
    load_source_frames,
    load_target_frames,
    per_flip_logits,
    view_target,
)
from offroadseg.experiments.adapt_settings import (
    METHODS,
    AdaptSettings,
    parse_settings,
)
from offroadseg.experiments.classmix import classmix_logits
from offroadseg.experiments.pseudo import (
    class_thresholds,
    detect_collapse,
    pixel_shares,
    pseudo_label_loss,
    pseudo_labels,
)
from offroadseg.inference.checkpoint import LoadedModel, load_checkpoint, save_inference_checkpoint
from offroadseg.metrics import confusion_matrix, json_ready, scores_from_confusion
from offroadseg.models.segmentor import Segmentor

__all__ = [
    "METHODS",
    "AdaptResult",
    "AdaptSettings",
    "Frames",
    "adapt",
    "encode_frames",
    "frame_logits",
    "load_target_frames",
    "parse_settings",
    "reestimate_bn",
    "scores_on_gt",
]


def round_thresholds(
    teacher: Segmentor, frames: Frames, settings: AdaptSettings, *, device: torch.device, num_classes: int
) -> np.ndarray:
    """Class-balanced thresholds from the teacher's flip-averaged predictions on every target frame
    (every 2nd pixel in each direction: quantiles need no more)."""
    teacher.eval()
    confs, preds = [], []
    for index in _batches(len(frames), settings.batch_size):
        probs = frame_probs(teacher, frames, index, flip=settings.flip, device=device)[..., ::2, ::2]
        conf, pred = probs.max(1)
        confs.append(conf.cpu().numpy())
        preds.append(pred.cpu().numpy())
    return class_thresholds(
        np.concatenate(confs), np.concatenate(preds), num_classes, keep=settings.keep, cap=settings.cap
    )


# ---- one adaptation ----------------------------------------------------------------------------------
@dataclass
class AdaptResult:
    """What :func:`adapt` wrote and measured."""

    run_dir: Path
    checkpoint: Path
    report: Path
    history: list[dict]
    collapsed: list[str]  # collapse messages (empty: healthy)
    shipped_round: int  # the round whose teacher is in the checkpoint (0: the unadapted model)
    summary: dict  # adapt_report.json's content


def _source_criterion(cfg: Config, source: Frames, num_classes: int, ignore_index: int) -> nn.Module:
    from offroadseg.losses import class_weights_from_counts, create_loss
    from offroadseg.training.run import CLASS_WEIGHT_MODE

    weights = None
    mode = CLASS_WEIGHT_MODE.get(cfg.loss.class_weights)
    if mode:
        counts = np.bincount(source.masks.ravel(), minlength=256)[:num_classes]
        weights = class_weights_from_counts(counts, max_weight=cfg.loss.max_weight, mode=mode).float()
    return create_loss(
        cfg.loss.name,
        num_classes=num_classes,
        class_weights=weights,
        ignore_index=ignore_index,
        focal_gamma=cfg.loss.focal_gamma,
        dice_weight=cfg.loss.dice_weight,
        lovasz_weight=cfg.loss.lovasz_weight,
        lovasz_per_image=cfg.loss.lovasz_per_image,
        ohem_thresh=cfg.loss.ohem_thresh,
        ohem_min_kept=cfg.loss.ohem_min_kept,
    )


@torch.no_grad()
def _ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        if s.requires_grad:
            t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


def _mixed_flip_logits(
    model: Segmentor, frames: Frames, index: list[int], flips: list[bool], device: torch.device
) -> Tensor:
    """Logits of frames ``index`` (in that order), each seen mirrored or not as ``flips`` says."""
    return per_flip_logits(
        flips, lambda where, flip: frame_logits(model, frames, [index[j] for j in where], flip, device=device)
    )


def _flip_draws(rng: np.random.Generator, n: int, flip: bool) -> list[bool]:
    return [bool(x) for x in rng.integers(0, 2, size=n)] if flip else [False] * n


def _train_round(
    student: Segmentor,
    teacher: Segmentor,
    opt: torch.optim.Optimizer,
    criterion: nn.Module,
    source: Frames,
    target: Frames,
    thresholds: np.ndarray,
    settings: AdaptSettings,
    rng: np.random.Generator,
    *,
    ignore_index: int,
    device: torch.device,
) -> dict:
    """``settings.steps`` steps of source + pseudo-labelled target; returns the mean losses and kept share."""
    b = settings.batch_size
    sums = {"source_loss": 0.0, "target_loss": 0.0, "kept_share": 0.0}
    for _ in range(settings.steps):
        student.train()
        teacher.eval()
        s_idx = rng.choice(len(source), size=min(b, len(source)), replace=False).tolist()
        logits = _mixed_flip_logits(
            student, source, s_idx, _flip_draws(rng, len(s_idx), settings.flip), device
        )
        s_loss = criterion(logits.float(), torch.from_numpy(source.masks[s_idx]).long().to(device))
        t_idx = rng.choice(len(target), size=min(b, len(target)), replace=False).tolist()
        labels = pseudo_labels(
            frame_probs(teacher, target, t_idx, flip=settings.flip, device=device),
            thresholds,
            ignore_index=ignore_index,
        )
        flips = _flip_draws(rng, len(t_idx), settings.flip)
        if settings.classmix:  # source classes pasted onto the target frames (experiments/classmix.py)
            logits, mixed = classmix_logits(
                student, source, s_idx, target, t_idx, labels, flips, rng,
                ignore_index=ignore_index, device=device,
            )  # fmt: skip
        else:
            logits, mixed = _mixed_flip_logits(student, target, t_idx, flips, device), labels
        t_loss = pseudo_label_loss(logits.float(), mixed, ignore_index=ignore_index)
        loss = s_loss + settings.target_weight * t_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _ema_update(teacher, student, settings.ema_decay)
        sums["source_loss"] += float(s_loss.detach())
        sums["target_loss"] += float(t_loss.detach())
        sums["kept_share"] += float((labels != ignore_index).float().mean())
    return {k: v / settings.steps for k, v in sums.items()}


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def reestimate_bn(model: Segmentor, frames: Frames, settings: AdaptSettings, *, device: torch.device) -> int:
    """Replace every batch-norm layer's running statistics by the target frames' (cumulative average
    over every frame, both orientations with ``flip``); returns the number of layers.

    Raises:
        ConfigError: the model has no batch-norm layer.
    """
    layers = _bn_layers(model)
    if not layers:
        raise ConfigError(
            "adapt --method bn: this model has no batch-norm layer whose statistics could be re-estimated "
            "(DINOv2 uses LayerNorm; of the heads only 'linear' has batch norm); fix: use --method self"
        )
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    with torch.no_grad():
        for index in _batches(len(frames), settings.batch_size):
            for flip in (False, True) if settings.flip else (False,):
                frame_logits(model, frames, index, flip, device=device)
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    return len(layers)


def scores_on_gt(models: dict[str, LoadedModel], target: Frames, gt_dir: Path, device: torch.device) -> dict:
    """mIoU of each model on the target frames that have a mask in ``gt_dir`` (matched by name), scored
    at the mask's own size through the same predictor ``predict`` uses."""
    from offroadseg.inference.predictor import Predictor

    if not gt_dir.is_dir():
        raise DataError(f"--gt folder {gt_dir} does not exist; fix: point --gt at the target's mask folder")
    truth = {
        p.stem: p for p in sorted(gt_dir.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }
    pairs = [
        (path, truth[n])
        for n, path in zip(target.names, target.paths, strict=True)
        if path is not None and n in truth
    ]
    if not pairs:
        raise DataError(
            f"--gt {gt_dir}: no mask is named like a target image (e.g. {target.names[0]}.png); fix: point --gt "
            f"at the masks of the target images"
        )
    out = {"frames": len(pairs)}
    for label, loaded in models.items():
        predictor = Predictor.from_loaded(loaded, device=device)
        tax = loaded.taxonomy
        k = tax.num_classes
        cm = np.zeros((k, k), dtype=np.int64)
        for image_path, mask_path in pairs:
            ids = tax.encode(read_label(mask_path, tax), source=str(mask_path))
            pred = predictor.predict_one(read_image(image_path))
            if pred.shape != ids.shape:
                raise DataError(
                    f"mask {mask_path} is {ids.shape[1]}x{ids.shape[0]} but image {image_path} is "
                    f"{pred.shape[1]}x{pred.shape[0]}; fix: give masks at the images' size"
                )
            cm += np.asarray(confusion_matrix(pred, ids, k, ignore_index=tax.ignore_index))
        out[label] = scores_from_confusion(cm).to_dict(tax.names)
    return out


def _prepare_out(out: Path, overwrite: bool) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OffroadsegError(
            f"--out {out} already exists and is not empty; fix: choose another --out or pass --overwrite"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.adapting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _move_into_place(tmp: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def adapt(
    checkpoint: str | Path,
    targets: Sequence[str],
    out: str | Path,
    *,
    settings: AdaptSettings | None = None,
    data_root: str | None = None,
    every: int = 1,
    gt_dir: str | Path | None = None,
    device: str | torch.device = "auto",
    overwrite: bool = False,
    say: Callable[[str], None] | None = None,
) -> AdaptResult:
    """Adapt ``checkpoint`` to the ``targets`` frames; write a run directory at ``out``.

    Args:
        checkpoint: a ``.ckpt`` written by ``train`` (or ``export --format ckpt``).
        targets: image files, folders, glob patterns, videos (no labels).
        out: the run directory to write (config.yaml, checkpoints/last.ckpt, history.json, plots,
            adapt_report.html/.json).
        settings: method and hyper-parameters (default :class:`AdaptSettings`).
        data_root: the source data (default: the checkpoint config's ``data.root``).
        every: every N-th frame of a video.
        gt_dir: masks of (some of) the target images, named like them: scores before/after.
        device: auto | cpu | cuda.
        overwrite: replace an existing non-empty ``out``.
        say: receives one progress line per stage and round.
    """
    from offroadseg.devices import pick_device
    from offroadseg.reporting.adapt_report import write_adapt_report

    settings = settings or AdaptSettings()
    settings.check()
    say = say or (lambda _m: None)
    out, checkpoint = Path(out), Path(checkpoint)
    dev = pick_device(device)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    started = time.perf_counter()

    loaded = load_checkpoint(checkpoint, device=dev)
    cfg, tax = loaded.config, loaded.taxonomy
    if data_root is not None:
        cfg.data.root = str(data_root)
    k, ignore = tax.num_classes, tax.ignore_index
    target = load_target_frames(targets, cfg.data.image_size, every=every)
    source = load_source_frames(cfg, tax, checkpoint, max_frames=settings.max_source, seed=settings.seed)
    if gt_dir is not None and not Path(gt_dir).is_dir():
        raise DataError(f"--gt folder {gt_dir} does not exist; fix: point --gt at the target's mask folder")
    tmp = _prepare_out(out, overwrite)
    try:
        student = loaded.model
        if student.uses_image and settings.flip:
            settings = dataclasses.replace(settings, flip=False)  # an image-reading head has no token flip
        say(f"frozen backbone pass: {len(source)} source + {len(target)} target frames (once each)")
        t = time.perf_counter()
        encode_frames(student, source, device=dev, batch_size=settings.batch_size)
        encode_frames(student, target, device=dev, batch_size=settings.batch_size)
        encode_s = time.perf_counter() - t
        original = copy.deepcopy(student).eval()
        source_shares = pixel_shares(source.masks, k, ignore_index=ignore)
        before = view_target(original, target, flip=settings.flip, device=dev, batch_size=settings.batch_size)
        history: list[dict] = []
        collapsed: list[str] = []
        shipped = copy.deepcopy(original)
        shipped_round = 0
        if settings.method == "bn":
            t = time.perf_counter()
            n = reestimate_bn(student, target, settings, device=dev)
            after = view_target(
                student, target, flip=settings.flip, device=dev, batch_size=settings.batch_size
            )
            collapsed = _collapse(source_shares, before, after, tax.names, settings, k)
            history.append(
                _round_record(1, after, None, k, time.perf_counter() - t, collapsed, extra={"bn_layers": n})
            )
            say(_round_line(history[-1], settings))
            if not collapsed:
                shipped, shipped_round = student, 1
        else:
            teacher = copy.deepcopy(student).eval()
            trained = [p for p in student.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(trained, lr=settings.lr, weight_decay=settings.weight_decay)
            criterion = _source_criterion(cfg, source, k, ignore).to(dev)
            for r in range(1, settings.rounds + 1):
                t = time.perf_counter()
                thresholds = round_thresholds(teacher, target, settings, device=dev, num_classes=k)
                losses = _train_round(
                    student, teacher, opt, criterion, source, target, thresholds, settings, rng,
                    ignore_index=ignore, device=dev,
                )  # fmt: skip
                view_t = view_target(
                    teacher, target, flip=settings.flip, device=dev, batch_size=settings.batch_size
                )
                view_s = view_target(student, target, flip=False, device=dev, batch_size=settings.batch_size)
                collapsed = _collapse(source_shares, before, view_t, tax.names, settings, k)
                record = _round_record(
                    r, view_t, view_s, k, time.perf_counter() - t, collapsed,
                    extra={**losses, "thresholds": thresholds.tolist()},
                )  # fmt: skip
                history.append(record)
                say(_round_line(record, settings))
                if collapsed:
                    break
                shipped, shipped_round = copy.deepcopy(teacher).eval(), r
            del teacher
        after_view = (
            view_target(shipped, target, flip=settings.flip, device=dev, batch_size=settings.batch_size)
            if shipped_round
            else before
        )
        run_cfg = copy.deepcopy(cfg)
        run_cfg.run.dir = str(out)
        hp = dict(loaded.hyper_parameters or {})
        hp["config"] = run_cfg.to_dict()
        adapted = LoadedModel(
            shipped.cpu(), run_cfg, tax, out / "checkpoints" / "last.ckpt", hyper_parameters=hp
        )
        save_inference_checkpoint(adapted, tmp / "checkpoints" / "last.ckpt", embed_backbone=False)
        atomic_write_text(tmp / "config.yaml", dump_config(run_cfg))
        atomic_write_text(tmp / "adapt.yaml", yaml.safe_dump(dataclasses.asdict(settings), sort_keys=False))
        atomic_write_text(tmp / "history.json", json.dumps(json_ready(history), indent=2))
        gt = None
        if gt_dir is not None:
            say(f"scoring before/after on the labelled target frames in {gt_dir}")
            original_loaded = LoadedModel(
                original.cpu(), cfg, tax, checkpoint, hyper_parameters=loaded.hyper_parameters
            )
            gt = scores_on_gt({"before": original_loaded, "after": adapted}, target, Path(gt_dir), dev)
        summary = {
            "checkpoint": str(checkpoint),
            "targets": list(targets),
            "target_frames": len(target),
            "source_root": cfg.data.root,
            "source_frames": len(source),
            "settings": dataclasses.asdict(settings),
            "classes": tax.names,
            "source_shares": source_shares.tolist(),
            "before": {
                "shares": before.shares(k).tolist(),
                "confidence": before.confidence,
                "entropy": before.entropy,
            },
            "after": {
                "shares": after_view.shares(k).tolist(),
                "confidence": after_view.confidence,
                "entropy": after_view.entropy,
            },
            "history": history,
            "collapsed": collapsed,
            "shipped_round": shipped_round,
            "gt": gt,
            "seconds": {"backbone_pass": encode_s, "total": time.perf_counter() - started},
        }
        gallery = _gallery_rows(target, before, after_view, tax, settings.gallery)
        report = write_adapt_report(tmp, summary, gallery=gallery, colors=tax.colors)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return AdaptResult(
        run_dir=out,
        checkpoint=out / "checkpoints" / "last.ckpt",
        report=out / report.name,
        history=history,
        collapsed=collapsed,
        shipped_round=shipped_round,
        summary=summary,
    )


def _collapse(source_shares, before: TargetView, after: TargetView, names, settings: AdaptSettings, k: int):
    return detect_collapse(
        source_shares,
        before.shares(k),
        after.shares(k),
        names,
        min_share=settings.min_share,
        vanish_ratio=settings.vanish_ratio,
        swallow_share=settings.swallow_share,
    )


def _round_record(
    r: int, teacher: TargetView, student: TargetView | None, k: int, seconds: float, collapsed, *, extra: dict
) -> dict:
    agreement = float((teacher.pred == student.pred).mean()) if student is not None else None
    return {
        "round": r,
        **extra,
        "agreement": agreement,
        "confidence": teacher.confidence,
        "entropy": teacher.entropy,
        "shares": teacher.shares(k).tolist(),
        "collapsed": list(collapsed),
        "seconds": seconds,
    }


def _round_line(rec: dict, settings: AdaptSettings) -> str:
    if settings.method == "bn":
        head = f"batch norm re-estimated ({rec['bn_layers']} layers)"
    else:
        head = (
            f"round {rec['round']}/{settings.rounds}: source loss {rec['source_loss']:.3f}, target loss "
            f"{rec['target_loss']:.3f}, pseudo-labelled {rec['kept_share']:.0%} of target pixels, "
            f"teacher-student agreement {rec['agreement']:.1%}"
        )
    tail = f"; confidence {rec['confidence']:.3f}, entropy {rec['entropy']:.3f}, {rec['seconds']:.0f} s"
    return head + tail + ("; COLLAPSE: " + "; ".join(rec["collapsed"]) if rec["collapsed"] else "")


def _gallery_rows(target: Frames, before: TargetView, after: TargetView, tax, n: int) -> list[dict]:
    if n == 0:
        return []
    picks = np.unique(np.linspace(0, len(target) - 1, num=min(n, len(target))).round().astype(int))
    return [
        {
            "name": target.names[i],
            "image": target.images[i],
            "before": tax.colorize(before.pred[i]),
            "after": tax.colorize(after.pred[i]),
            "changed": float((before.pred[i] != after.pred[i]).mean()),
        }
        for i in picks
    ]

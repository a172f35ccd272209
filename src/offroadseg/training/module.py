"""The LightningModule: loss, optimiser, schedule and dataset-level metrics.

Lightning owns the loop (AMP, accumulation, clipping, DDP, checkpoints); this module
only says what one step computes. Metrics accumulate one confusion matrix per split
and epoch (synchronised across processes), so the reported mIoU is the dataset-level
figure, with the reference's batch-mean IoU logged beside it for comparison.
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from offroadseg import __version__
from offroadseg.class_ids import class_ids
from offroadseg.config import Config, config_from_dict
from offroadseg.losses import create_loss
from offroadseg.metrics import (
    BatchMeanIoU,
    ConfusionMatrixMetric,
    best_epoch,
    finite_or_none,
    full_resolution_predictions,
    scores_from_confusion,
)
from offroadseg.models.checkpoint_state import (
    CHECKPOINT_FORMAT,
    restore_checkpoint,
    slim_checkpoint,
    source_digest,
)
from offroadseg.models.factory import build_segmentor
from offroadseg.training.optim import param_groups
from offroadseg.training.schedule import lr_factor


class SegmentationModule(L.LightningModule):
    """Segmentor + loss + metrics.

    Args:
        config: the resolved config as a plain dict (stored in the checkpoint).
        class_names: names of the K classes, in id order.
        class_weights: loss weights per class, or None.
        ignore_index: train id of ignored pixels.
        for_checkpoint: skip loading backbone weights (a checkpoint will overwrite them).
    """

    def __init__(
        self,
        config: dict,
        class_names: list[str],
        class_weights: list[float] | None = None,
        ignore_index: int = 255,
        taxonomy: dict | None = None,
        for_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["for_checkpoint"])
        self.cfg: Config = config_from_dict(config)
        self.num_classes = len(class_names)
        self.ignore_index = ignore_index
        self.model = build_segmentor(self.cfg.model, self.num_classes, for_checkpoint=for_checkpoint)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.criterion = create_loss(
            self.cfg.loss.name,
            num_classes=self.num_classes,
            class_weights=weights,
            ignore_index=ignore_index,
            focal_gamma=self.cfg.loss.focal_gamma,
            dice_weight=self.cfg.loss.dice_weight,
            lovasz_weight=self.cfg.loss.lovasz_weight,
            lovasz_per_image=self.cfg.loss.lovasz_per_image,
            ohem_thresh=self.cfg.loss.ohem_thresh,
            ohem_min_kept=self.cfg.loss.ohem_min_kept,
        )
        k = self.num_classes
        self.train_cm = ConfusionMatrixMetric(k, ignore_index=ignore_index)
        self.val_cm = ConfusionMatrixMetric(k, ignore_index=ignore_index)
        self.val_batch_iou = BatchMeanIoU(k, ignore_index=ignore_index)
        self.train_loss_mean = MeanMetric()
        self.val_loss_mean = MeanMetric()
        self.last_val_scores = None
        self.last_train_scores = None
        self.best_val_scores = None
        self.steps_per_epoch: int | None = None
        self.history: list[dict] = []
        self._epoch_start = time.perf_counter()
        self._source_digest: str | None = None  # of the frozen weights; they never change

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def _logits(self, batch: dict) -> Tensor:
        if "early" in batch:  # from the feature cache (fp16): run the trained blocks, the norm, the head
            size = tuple(batch["mask"].shape[-2:])
            tokens = batch.get("tokens")
            features = self.model.features_from_cache(
                tokens.float() if tokens is not None else None, [e.float() for e in batch["early"]], size
            )
            return self.model.forward_head(features, size, image=batch.get("image"))
        return self.model(batch["image"])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self._logits(batch)
        loss = self.criterion(logits.float(), batch["mask"])
        self.train_cm.update(class_ids(logits.detach()), batch["mask"])
        self.train_loss_mean.update(loss.detach(), weight=len(batch["mask"]))
        self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(batch["mask"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self._logits(batch).float()
        # A batch without a labelled pixel (a DDP placeholder shard) has no loss: it adds weight 0,
        # but still counts as an update, so every process joins the metric sync at the epoch end.
        labelled = bool((batch["mask"] != self.ignore_index).any())
        loss = self.criterion(logits, batch["mask"]) if labelled else logits.new_zeros(())
        self.val_loss_mean.update(loss, weight=len(batch["mask"]) if labelled else 0)
        preds, targets = full_resolution_predictions(logits, batch)
        for pred, target in zip(preds, targets, strict=True):
            self.val_cm.update(pred, target)
            self.val_batch_iou.update(pred, target)

    # ---- epoch ends -----------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def on_validation_epoch_end(self) -> None:
        """Close the epoch: validation runs after the last training batch, before
        ``on_train_epoch_end``, so the train metrics of this epoch are complete here."""
        cm = self.val_cm.compute()
        batch_iou = float(self.val_batch_iou.compute())
        val_loss = float(self.val_loss_mean.compute()) if self.val_loss_mean.update_count else math.nan
        for m in (self.val_cm, self.val_batch_iou, self.val_loss_mean):
            m.reset()
        if self.trainer.sanity_checking or int(cm.sum()) == 0:
            return
        scores = scores_from_confusion(cm)
        self.last_val_scores = scores
        best = best_epoch(self.history)
        if self.best_val_scores is None or _nz(scores.miou) > (best[1] if best else -1.0):
            self.best_val_scores = scores
        record = {
            "epoch": self.current_epoch + 1,
            "val_loss": val_loss,
            "val_miou": finite_or_none(scores.miou),
            "val_dice": finite_or_none(scores.mean_dice),
            "val_acc": finite_or_none(scores.pixel_accuracy),
            "val_batch_mean_iou": finite_or_none(batch_iou),
        }
        if self.train_loss_mean.update_count:
            train = scores_from_confusion(self.train_cm.compute())
            self.last_train_scores = train
            record.update(
                train_loss=float(self.train_loss_mean.compute()),
                train_miou=finite_or_none(train.miou),
                train_dice=finite_or_none(train.mean_dice),
                train_acc=finite_or_none(train.pixel_accuracy),
            )
        self.train_cm.reset()
        self.train_loss_mean.reset()
        opt = self.optimizers(use_pl_optimizer=False) if self._trainer is not None else None
        record["lr"] = (
            float(opt.param_groups[0]["lr"]) if opt is not None and not isinstance(opt, list) else None
        )
        record["epoch_time_s"] = time.perf_counter() - self._epoch_start
        self.history.append(record)
        self.log_dict(
            {
                k: (math.nan if v is None else v)
                for k, v in record.items()
                if k not in ("epoch", "lr", "val_miou")
            },
            prog_bar=False,
        )
        self.log("val_miou", _nz(scores.miou), prog_bar=True)

    # ---- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        t = self.cfg.train
        # Head at lr, backbone at lr * backbone_lr_mult with layer-wise decay (training/optim.py).
        params = param_groups(
            self.model,
            lr=t.lr,
            backbone_lr_mult=t.backbone_lr_mult,
            layer_decay=t.layer_decay,
            weight_decay=t.weight_decay,
        )
        if t.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, math.ceil(total / max(1, t.epochs)))
        self.steps_per_epoch = per_epoch
        warmup = int(round(t.warmup_epochs * per_epoch))
        ratio = t.min_lr / t.lr if t.lr else 0.0

        def factor(step: int) -> float:
            return lr_factor(
                step, total_steps=total, warmup_steps=warmup, schedule=t.scheduler, min_ratio=ratio
            )

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["offroadseg"] = {
            "version": __version__,
            "format": CHECKPOINT_FORMAT,
            "history": self.history,
            # the best epoch's confusion matrix: a resumed run reports the best epoch's scores
            "best_val_confusion": (
                self.best_val_scores.confusion_matrix.tolist() if self.best_val_scores is not None else None
            ),
            # ... and the last epoch's: a resume with no epoch left to run reports the last model's scores
            "last_val_confusion": (
                self.last_val_scores.confusion_matrix.tolist() if self.last_val_scores is not None else None
            ),
        }
        if self._source_digest is None:
            self._source_digest = source_digest(self.model)
        slim_checkpoint(checkpoint, self.model, digest=self._source_digest)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("offroadseg", {})
        self.history = list(saved.get("history", []))
        best = saved.get("best_val_confusion")
        if best is not None:
            self.best_val_scores = scores_from_confusion(torch.tensor(best, dtype=torch.int64))
        last = saved.get("last_val_confusion")
        if last is not None:
            self.last_val_scores = scores_from_confusion(torch.tensor(last, dtype=torch.int64))
        restore_checkpoint(checkpoint, self.model, origin="the --resume checkpoint")


def _nz(x: float) -> float:
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

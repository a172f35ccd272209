import csv
import json
import math
import warnings

import lightning as L
import pytest
import torch
from toydata import toy_config

from offroadseg.errors import ConfigError
from offroadseg.inference.checkpoint import load_checkpoint
from offroadseg.inference.evaluate import evaluate_loaded
from offroadseg.training.run import train

RUN_FILES = [
    "config.yaml",
    "history.json",
    "history.csv",
    "evaluation_metrics.txt",
    "metrics.json",
    "curves.png",
    "lr_schedule.png",
    "per_class_iou.png",
    "confusion_matrix.png",
    "checkpoints/best.ckpt",
    "checkpoints/last.ckpt",
]


@pytest.fixture(scope="module")
def trained(toy_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = toy_config(
        toy_root, run_dir, overrides=["train.epochs=3", "model.head.name=ppm", "model.head.channels=32"]
    )
    return cfg, train(cfg)


def test_run_directory_is_complete(trained):
    cfg, result = trained
    for name in RUN_FILES:
        assert (result.run_dir / name).is_file(), name
    history = json.loads((result.run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for key in (
        "train_loss",
        "val_loss",
        "train_miou",
        "val_miou",
        "val_dice",
        "val_acc",
        "val_batch_mean_iou",
        "lr",
    ):
        assert all(h[key] is not None and math.isfinite(h[key]) for h in history), key
    assert result.best_val_miou == max(h["val_miou"] for h in history)
    text = (result.run_dir / "evaluation_metrics.txt").read_text()
    assert "Sky" in text and "batch-mean" in text


def test_checkpoint_rebuilds_the_model_and_reproduces_best_val(trained):
    cfg, result = trained
    loaded = load_checkpoint(result.best_checkpoint)
    assert loaded.taxonomy.num_classes == 11 and loaded.config.model.head.name == "ppm"
    ev = evaluate_loaded(loaded, split="val", device="cpu")
    assert ev.scores["miou"] == pytest.approx(result.best_val_miou, abs=1e-6)
    # Flowers is absent from the toy labels: IoU 0 if the model predicts it somewhere, else n/a (None)
    assert ev.scores["per_class_iou"]["Flowers"] in (None, 0.0)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["val"]["miou"] == pytest.approx(ev.scores["miou"], abs=1e-6)


def test_head_learns_on_toy_data(toy_root, tmp_path):
    cfg = toy_config(toy_root, tmp_path / "r", overrides=["train.epochs=4", "model.head.name=conv"])
    result = train(cfg)
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert result.best_val_miou > 0.3


def test_resume_continues_from_last(toy_root, tmp_path):
    run = tmp_path / "r"
    train(toy_config(toy_root, run, overrides=["train.epochs=1"]))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = train(toy_config(toy_root, run, overrides=["train.epochs=2"]), resume=True)
    assert [h["epoch"] for h in result.history] == [1, 2]
    # the run's folder is not empty, as a resume expects: no warning that it is (nor that logs "will be
    # deleted": Lightning's CSV writer appends, and the first run's rows stay)
    assert not [w for w in seen if "exists and is not empty" in str(w.message)]
    with open(run / "logs" / "metrics.csv") as f:
        epochs = {row["epoch"] for row in csv.DictReader(f) if row.get("val_miou")}
    assert epochs == {"0", "1"}


def test_resume_without_checkpoint_is_an_error(toy_root, tmp_path):
    with pytest.raises(ConfigError, match="last.ckpt does not exist"):
        train(toy_config(toy_root, tmp_path / "none"), resume=True)


class _StepRecorder(L.Callback):
    """What the trainer did: batches seen, the LR factor at each optimizer step, autocast dtypes."""

    def __init__(self) -> None:
        self.batches = 0
        self.factors: list[float] = []  # lr / initial lr of the head's group, at each optimizer step
        self.head_dtypes: set[torch.dtype] = set()
        self.precision: str | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.precision = trainer.precision
        pl_module.model.head.register_forward_hook(lambda m, i, out: self.head_dtypes.add(out.dtype))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        group = optimizer.param_groups[0]
        self.factors.append(group["lr"] / group["initial_lr"])


def test_weighted_focal_dice_bf16_accumulation_warmup(toy_root, tmp_path, monkeypatch):
    import offroadseg.training.run as run

    recorder = _StepRecorder()
    build = run.build_trainer
    monkeypatch.setattr(
        run,
        "build_trainer",
        lambda *a, extra_callbacks=None, **k: build(
            *a, **k, extra_callbacks=[*(extra_callbacks or []), recorder]
        ),
    )
    cfg = toy_config(
        toy_root,
        tmp_path / "r",
        overrides=[
            "loss.name=focal+dice",
            "loss.class_weights=auto",
            "train.precision=bf16",
            "train.batch_size=1",  # 6 toy training images: 6 batches per epoch
            "train.accumulate_grad_batches=2",  # -> 3 optimizer steps per epoch
            "train.warmup_epochs=1",  # -> 3 warmup steps
            "train.scheduler=cosine",
            "train.min_lr=1e-4",  # 0.1 of lr
            "train.gradient_clip=1.0",
            "train.epochs=2",
        ],
    )
    result = train(cfg)
    weights = result.class_weights
    assert max(weights) == pytest.approx(5.0) and weights[6] == 0.0  # Flowers absent from the toy set
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    # accumulation: one optimizer step per 2 batches
    assert recorder.batches == 12 and len(recorder.factors) == 6
    # warmup rises linearly over the first epoch's 3 steps (1/4, 2/4, 3/4), then the cosine runs from
    # 1 at step 3 down towards min_lr / lr = 0.1 at step 6 (progress 0, 1/3, 2/3 of its 3 steps)
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)) for p in (0, 1 / 3, 2 / 3)]
    assert recorder.factors == pytest.approx([0.25, 0.5, 0.75, *cosine])
    # the precision resolved: bf16 autocast, which the head really ran in
    assert recorder.precision == "bf16-mixed"
    assert recorder.head_dtypes == {torch.bfloat16}


def test_early_stopping(toy_root, tmp_path):
    cfg = toy_config(
        toy_root,
        tmp_path / "r",
        # an LR too small to move a float32 weight: val mIoU never improves after epoch 1
        overrides=["train.epochs=20", "train.lr=1e-30", "train.early_stopping_patience=2"],
    )
    result = train(cfg)
    assert len(result.history) == 3  # best at epoch 1, then two epochs without gain


def test_fp16_on_cpu_is_refused(toy_root, tmp_path):
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        train(toy_config(toy_root, tmp_path / "r", overrides=["train.precision=16"]))


def test_frozen_backbone_gets_no_gradient(toy_root, tmp_path):
    """Training changes the head and leaves every backbone tensor as it was built."""
    from offroadseg.training.datamodule import SegDataModule
    from offroadseg.training.run import build_module, build_trainer

    cfg = toy_config(toy_root, tmp_path / "r", overrides=["train.epochs=1", "train.lr=0.05"])
    dm = SegDataModule(cfg)
    module = build_module(cfg, dm, None)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    build_trainer(cfg, tmp_path / "r").fit(module, datamodule=dm)
    after = module.model.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    head = [k for k in before if k.startswith("head.") and before[k].is_floating_point()]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)
    assert any(not torch.equal(before[k], after[k]) for k in head)
    # the checkpoint holds the trained tensors only, and loads back onto the same backbone
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any(k.startswith("model.backbone.") for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"] and "loops" in ckpt  # last.ckpt keeps what --resume needs
    loaded = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.ckpt")
    assert all(torch.equal(loaded.model.state_dict()[k], after[k].cpu()) for k in after)

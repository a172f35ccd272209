"""train.checkpoint: EMA of the trainable weights (known answer) and last = the final epoch."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from toydata import toy_config

from offroadseg.errors import ConfigError
from offroadseg.inference.checkpoint import load_checkpoint, read_checkpoint
from offroadseg.inference.evaluate import evaluate_loaded
from offroadseg.training.averaging import EMAOfTrainable, trainable_state_names
from offroadseg.training.run import train


class Tiny(L.LightningModule):
    """A frozen 'backbone' linear layer, then a trainable linear + BatchNorm 'head'."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Linear(3, 4)
        self.backbone.requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.head(self.backbone(x)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.5)


class Recorder(L.Callback):
    """The current (not averaged) weights after each optimizer step."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_trainable_state_names_cover_the_head_only() -> None:
    averaged, synced = trainable_state_names(Tiny())
    assert averaged == [
        "head.0.weight",
        "head.0.bias",
        "head.1.weight",
        "head.1.bias",
        "head.1.running_mean",
        "head.1.running_var",
    ]
    assert synced == ["head.1.num_batches_tracked"]


def test_ema_known_answer_after_two_steps(tmp_path) -> None:
    decay = 0.7
    model = Tiny()
    frozen_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    recorder = Recorder()
    data = DataLoader(
        TensorDataset(torch.randn(8, 3, generator=torch.Generator().manual_seed(1))), batch_size=4
    )
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[recorder, EMAOfTrainable(decay)],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, data)
    w1, w2 = recorder.states
    assert not torch.equal(w1["head.0.weight"], w2["head.0.weight"])  # the two steps moved the head
    # the first update copies the weights after step 1; the second blends in step 2's
    # (on_train_end copies the average into the model)
    for name in (
        "head.0.weight",
        "head.0.bias",
        "head.1.weight",
        "head.1.running_mean",
        "head.1.running_var",
    ):
        expected = decay * w1[name] + (1 - decay) * w2[name]
        torch.testing.assert_close(model.state_dict()[name], expected, rtol=0, atol=1e-6, msg=name)
    assert int(model.head[1].num_batches_tracked) == int(w2["head.1.num_batches_tracked"]) == 2
    for k, v in model.backbone.state_dict().items():  # the frozen part is never averaged: bit-identical
        assert torch.equal(v, frozen_before[k]), k


def test_bad_ema_decay_is_refused_before_any_work(toy_root, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"train.ema_decay=1.0 must lie in \(0, 1\)"):
        train(toy_config(toy_root, tmp_path / "r", overrides=["train.checkpoint=ema", "train.ema_decay=1.0"]))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("mode", ["last", "ema"])
def test_chosen_checkpoint_is_the_final_epoch_and_is_what_was_scored(toy_root, tmp_path, mode) -> None:
    cfg = toy_config(
        toy_root,
        tmp_path / mode,
        overrides=["train.epochs=2", f"train.checkpoint={mode}", "train.ema_decay=0.5", "train.lr=0.05"],
    )
    result = train(cfg)
    assert result.model_checkpoint == result.run_dir / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(result.model_checkpoint)
    assert ckpt["epoch"] == 1  # zero-based: the second, final epoch
    # the chosen weights reproduce the final epoch's validation (not the best epoch's)
    ev = evaluate_loaded(load_checkpoint(result.model_checkpoint), split="val", device="cpu")
    assert ev.scores["miou"] == pytest.approx(result.history[-1]["val_miou"], abs=1e-6)
    assert result.val_scores["miou"] == pytest.approx(result.history[-1]["val_miou"], abs=1e-6)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["checkpoint"] == mode and metrics["model_checkpoint"].endswith("last.ckpt")
    current = ckpt.get("current_model_state")
    if mode == "ema":  # the saved model is the average, the raw weights travel beside it for --resume
        head = [k for k in ckpt["state_dict"] if k.startswith("model.head.") and k.endswith("weight")]
        assert head and any(not torch.equal(ckpt["state_dict"][k], current[k]) for k in head)
        # slim checkpoints: the frozen backbone is not in the file (rebuilt from its source), so the
        # average can only have covered the trained tensors
        assert not [k for k in ckpt["state_dict"] if k.startswith("model.backbone.")]
    else:
        assert current is None

"""last.ckpt, resume and crash safety: every epoch's state on disk, resumes checked, bad losses stopped."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from toydata import toy_config

from offroadseg.cli import main
from offroadseg.config import dump_config
from offroadseg.errors import ConfigError, ModelError, TrainingError
from offroadseg.training.module import SegmentationModule
from offroadseg.training.resume import check_resume
from offroadseg.training.run import train


def _epoch(path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])


@pytest.fixture(scope="module")
def one_epoch(toy_root, tmp_path_factory):
    """A finished 1-epoch run (read-only: tests copy it)."""
    run = tmp_path_factory.mktemp("one") / "run"
    train(toy_config(toy_root, run, overrides=["train.epochs=1"]))
    return run


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_last_ckpt_is_the_last_epoch_not_the_best(toy_root, tmp_path):
    # lr=1e-30 (0 is refused): val mIoU never improves after epoch 1, so best.ckpt stays at epoch 1 while last moves on
    cfg = toy_config(
        toy_root, tmp_path / "r", overrides=["train.epochs=3", "train.lr=1e-30", "run.logger=tensorboard"]
    )
    result = train(cfg)
    assert _epoch(result.best_checkpoint) == 0
    assert _epoch(result.last_checkpoint) == 2
    assert list((result.run_dir / "logs").glob("events.out.tfevents.*")), (
        "run.logger=tensorboard wrote no events"
    )


def test_resume_against_a_changed_config_is_refused_unless_forced(toy_root, one_epoch, tmp_path):
    last = one_epoch / "checkpoints" / "last.ckpt"
    changed = toy_config(
        toy_root, one_epoch, overrides=["train.epochs=3", "train.lr=0.002", "loss.name=focal"]
    )
    with pytest.raises(ConfigError) as err:
        check_resume(changed, last)
    message = str(err.value)
    assert "train.lr (0.001 -> 0.002)" in message and "loss.name ('ce' -> 'focal')" in message
    assert "train.epochs" not in message and "--force" in message
    check_resume(changed, last, force=True)
    check_resume(toy_config(toy_root, one_epoch, overrides=["train.epochs=3"]), last)  # more epochs: fine


def test_resume_without_or_with_a_corrupt_checkpoint_is_one_line(toy_root, one_epoch, tmp_path, capsys):
    run = _copy(one_epoch, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    cfg = toy_config(toy_root, run)
    last.write_bytes(data[: len(data) // 2])  # a write cut off by a crash or a full disk
    with pytest.raises(ModelError, match="is not a readable checkpoint"):
        check_resume(cfg, last)
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text(dump_config(cfg))  # run.dir: the copy
    for content in (b"not a checkpoint", None):
        if content is None:
            last.unlink()
        else:
            last.write_bytes(content)
        code = main(["train", str(yaml_path), "--resume"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert ("is not a readable checkpoint" if content else "last.ckpt does not exist") in err[0]


def test_resume_restores_the_best_scores(toy_root, one_epoch, tmp_path, monkeypatch):
    run = _copy(one_epoch, tmp_path)
    step = SegmentationModule.training_step

    def ascent(self, batch, batch_idx):  # after the resume, every step makes the model worse
        return -step(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationModule, "training_step", ascent)
    result = train(toy_config(toy_root, run, overrides=["train.epochs=3"]), resume=True)
    h = result.history
    assert [r["epoch"] for r in h] == [1, 2, 3]
    assert max(h[1]["val_miou"], h[2]["val_miou"]) < h[0]["val_miou"]  # the test's premise
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and metrics["val"]["miou"] == pytest.approx(h[0]["val_miou"], abs=1e-9)
    # the run folder was copied elsewhere before the resume: best.ckpt must still be epoch 1's
    assert _epoch(run / "checkpoints" / "best.ckpt") == 0


def test_nan_loss_stops_the_run_naming_step_and_files(toy_root, one_epoch, tmp_path, monkeypatch):
    run = _copy(one_epoch, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    step = SegmentationModule.training_step

    def poisoned(self, batch, batch_idx):
        loss = step(self, batch, batch_idx)
        return loss * float("nan") if batch_idx == 1 else loss

    monkeypatch.setattr(SegmentationModule, "training_step", poisoned)
    cfg = toy_config(toy_root, run, overrides=["train.epochs=2"])
    with pytest.raises(TrainingError) as err:
        train(cfg, resume=True)
    message = str(err.value)
    assert "loss is nan" in message and "optimizer step 4, epoch 2, batch 1" in message
    assert (
        str(toy_root) in message
        and ".png" in message
        and "last.ckpt keeps the last finished epoch" in message
    )
    assert last.read_bytes() == before  # the last good state, untouched
    state = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("mode", ["best", "last"])
def test_resuming_a_run_with_no_epoch_left_reports_its_scores(toy_root, one_epoch, tmp_path, mode):
    """A run stopped after its last epoch's checkpoint but before its metrics (or resumed once more) has
    nothing left to train: the resume still reports the scores of the model ``train.checkpoint`` selects."""
    run = _copy(one_epoch, tmp_path)
    before = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    cfg = toy_config(toy_root, run, overrides=["train.epochs=1", f"train.checkpoint={mode}"])
    result = train(cfg, resume=True, force=True)  # force: the fixture ran with train.checkpoint=best
    assert [r["epoch"] for r in result.history] == [1]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"] is not None and metrics["val"]["miou"] == pytest.approx(
        before["val"]["miou"], abs=1e-9
    )

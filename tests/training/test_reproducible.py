"""train.deterministic: same seed, same history; a run killed with SIGKILL resumes to the same end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from toydata import toy_config

from offroadseg.training.run import train

AUGMENT = [  # phase 2's augmentations: albumentations draws, geometric and photometric
    "data.augment.hflip=0.5",
    "data.augment.vflip=0.1",
    "data.augment.shift_scale_rotate=0.5",
    "data.augment.brightness_contrast=0.5",
    "data.augment.hue_saturation=0.3",
]
TIMINGS = ("epoch_time_s",)


def _without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMINGS} for h in history]


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant",
    [
        ["data.num_workers=1"],  # augmentations in a DataLoader worker
        ["data.cache.decoded=true", "data.cache.features=true", "data.cache.views=2"],  # view + flip draws
    ],
    ids=["workers", "feature-cache"],
)
def test_same_seed_same_history(toy_root, tmp_path, variant):
    histories = []
    for i in range(2):
        overrides = [*AUGMENT, *variant, "train.deterministic=true", "train.epochs=2", "train.seed=7"]
        overrides.append(f"data.cache.dir={tmp_path / 'cache'}")
        histories.append(train(toy_config(toy_root, tmp_path / f"r{i}", overrides=overrides)).history)
    assert len(histories[0]) == 2
    assert _without_timings(histories[0]) == _without_timings(histories[1])


EPOCHS = 8  # enough that an idle fast CPU is still mid-run when the kill lands


def _config_file(toy_root: Path, tmp_path: Path, name: str) -> Path:
    cfg = toy_config(
        toy_root, tmp_path / name, overrides=[*AUGMENT, "train.deterministic=true", f"train.epochs={EPOCHS}"]
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def _train(config: Path, *extra: str) -> subprocess.Popen:
    # One thread each: the runs share the cores, and a parallel reduction split by however many threads
    # the load leaves changes the last bits of the weights (a 7th-digit difference in ~1 run of 3).
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "offroadseg", "train", str(config), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_ends_like_an_uninterrupted_run(toy_root, tmp_path):
    reference = _train(_config_file(toy_root, tmp_path, "reference"))
    victim_cfg = _config_file(toy_root, tmp_path, "victim")
    victim = _train(victim_cfg)
    last = tmp_path / "victim" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not last.exists():  # written by rename at the end of epoch 1: complete when it appears
        assert victim.poll() is None, victim.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.05)
    time.sleep(0.1)  # into epoch 2
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    killed_at = int(torch.load(last, map_location="cpu", weights_only=False)["epoch"])
    assert killed_at < EPOCHS - 1, "the run finished before it was killed"
    assert not (tmp_path / "victim" / "metrics.json").exists()

    resumed = _train(victim_cfg, "--resume")
    for proc in (reference, resumed):
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    ref_hist = json.loads((tmp_path / "reference" / "history.json").read_text())
    res_hist = json.loads((tmp_path / "victim" / "history.json").read_text())
    assert [h["epoch"] for h in res_hist] == list(range(1, EPOCHS + 1))
    assert _without_timings(res_hist) == _without_timings(ref_hist)
    ref_metrics = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    res_metrics = json.loads((tmp_path / "victim" / "metrics.json").read_text())
    for m in (ref_metrics, res_metrics):  # the checkpoint paths name each run's own folder
        m["model_checkpoint"] = Path(m["model_checkpoint"]).name
    assert res_metrics == ref_metrics  # best epoch's val block included

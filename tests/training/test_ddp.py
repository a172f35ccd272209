"""Two DDP processes on CPU (gloo), launched the way a user launches them: the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _train_ddp(tmp_path: Path, root: Path, *, size: tuple[int, int], backbone: str = "") -> dict:
    """Train the tiny backbone for 2 epochs in 2 gloo processes; the CLI's JSON result."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{root: {root}, image_size: [{size[0]}, {size[1]}], num_workers: 0}}\n"
        f"model: {{backbone: {{name: dinov2_test, weights: random{backbone}}}, head: {{name: conv}}}}\n"
        "train: {epochs: 2, batch_size: 1, accelerator: cpu, devices: 2, strategy: ddp}\n"
        f"run: {{dir: {tmp_path / 'run'}, progress: false}}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "offroadseg", "train", str(cfg), "--json", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["world_size"] == 2
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    return result


@pytest.mark.slow
def test_two_process_ddp_on_cpu(toy_root, tmp_path):
    result = _train_ddp(tmp_path, toy_root, size=(56, 84))
    # val images are split across the 2 processes and the confusion matrix is summed: all pixels counted
    assert sum(map(sum, result["val"]["confusion_matrix"])) == 3 * 56 * 84
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.slow
def test_ddp_trains_the_whole_backbone_with_fewer_val_images_than_processes(tmp_path):
    from toydata import make_toy_dataset

    root = make_toy_dataset(tmp_path / "toy", n_train=4, n_val=1, n_test=0, size=(28, 42))
    # before: "parameters that were not used in producing its loss" (embeddings.mask_token), and
    # "DataLoader within local rank has zero length" on rank 1 (1 val image, 2 processes)
    result = _train_ddp(tmp_path, root, size=(28, 42), backbone=", frozen: false")
    # the single val image counted once: rank 1's placeholder shard adds nothing
    assert sum(map(sum, result["val"]["confusion_matrix"])) == 28 * 42

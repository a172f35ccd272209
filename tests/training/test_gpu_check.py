"""scripts/gpu_check.sh parses and plans every step (it runs for real only on a GPU machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh"


def test_gpu_check_script_parses_and_plans_every_step(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for step in ("cuda_tests", "synth", "phase3", "bench_train", "bench_infer"):
        assert f"== {step} " in out, step
    assert "-m cuda" in out and "train.precision=bf16" in out and "--device cuda" in out
    assert not (tmp_path / "phase3").exists()  # a dry run runs nothing


def test_gpu_check_refuses_unknown_arguments():
    proc = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown argument --fast" in proc.stderr

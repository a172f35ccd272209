"""Precision, device count and TF32: what the hardware allows, refused in one line when it does not."""

from __future__ import annotations

import pytest
import torch

from offroadseg.errors import ConfigError
from offroadseg.training import hardware
from offroadseg.training.hardware import backbone_precision, check_devices, resolve_precision


def _fake_gpus(monkeypatch, count: int, *, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(hardware, "_bf16_on_gpu", lambda: bf16)


def test_auto_precision_follows_the_hardware(monkeypatch):
    _fake_gpus(monkeypatch, 0, bf16=False)
    assert resolve_precision("auto", "auto") == "32-true"
    assert resolve_precision("auto", "cpu") == "32-true"
    _fake_gpus(monkeypatch, 1, bf16=True)  # Ampere and later
    assert resolve_precision("auto", "auto") == "bf16-mixed"
    assert resolve_precision("auto", "cpu") == "32-true"  # the config asks for the CPU
    _fake_gpus(monkeypatch, 1, bf16=False)  # Turing, Volta: fp16 with loss scaling
    assert resolve_precision("auto", "gpu") == "16-mixed"
    assert resolve_precision("amp", "gpu") == "16-mixed"  # the alias
    assert resolve_precision("32", "gpu") == "32-true" and resolve_precision("bf16", "cpu") == "bf16-mixed"


AVX2_ONLY = ["avx2", "fma"]
BF16_CPU = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8"]


def test_backbone_pass_precision_follows_the_cpu_flags(monkeypatch):
    _fake_gpus(monkeypatch, 0, bf16=False)
    # a light model trains in fp32 on any CPU under auto; the frozen pass uses native bf16 where there is one
    assert resolve_precision("auto", "cpu") == "32-true"
    assert backbone_precision("auto", "cpu", cpu_flags=AVX2_ONLY) == "fp32"
    assert backbone_precision("auto", "auto", cpu_flags=BF16_CPU) == "bf16"
    assert backbone_precision("32", "cpu", cpu_flags=BF16_CPU) == "fp32"  # asked for fp32
    assert backbone_precision("bf16", "cpu", cpu_flags=AVX2_ONLY) == "bf16"  # asked for bf16
    with pytest.raises(ConfigError, match="train.precision='fp8' is not valid"):
        backbone_precision("fp8", "cpu", cpu_flags=BF16_CPU)
    _fake_gpus(monkeypatch, 1, bf16=False)  # on a GPU the pass follows training, whatever the CPU has
    assert backbone_precision("auto", "gpu", cpu_flags=BF16_CPU) == "fp16"
    _fake_gpus(monkeypatch, 1, bf16=True)
    assert backbone_precision("auto", "auto", cpu_flags=AVX2_ONLY) == "bf16"
    assert backbone_precision("32", "gpu", cpu_flags=BF16_CPU) == "fp32"


def test_auto_trains_heavy_models_in_bf16_on_a_native_bf16_cpu(monkeypatch):
    from offroadseg.config import BackboneConfig, HeadConfig, ModelConfig

    _fake_gpus(monkeypatch, 0, bf16=False)

    def model(blocks: int, head: str = "linear", frozen: bool = True) -> ModelConfig:
        return ModelConfig(BackboneConfig(train_blocks=blocks, frozen=frozen), HeadConfig(name=head))

    def auto(m: ModelConfig | None, flags: list[str]) -> str:
        return resolve_precision("auto", "cpu", model=m, cpu_flags=flags)

    assert auto(model(3), BF16_CPU) == "bf16-mixed"  # 3 adapted blocks: matmuls dominate
    assert auto(model(0, "dpt"), BF16_CPU) == "bf16-mixed"  # the DPT head alone is heavy
    assert auto(model(1, "uper"), BF16_CPU) == "bf16-mixed"
    assert auto(model(0, frozen=False), BF16_CPU) == "bf16-mixed"  # full fine-tuning
    assert auto(model(1), BF16_CPU) == "32-true"  # one block + linear: bf16 measured slower
    assert auto(model(0, "conv"), BF16_CPU) == "32-true"
    assert auto(None, BF16_CPU) == "32-true"  # no model given: the light default
    assert auto(model(3), AVX2_ONLY) == "32-true"  # emulated bf16 is slower than fp32
    assert resolve_precision("32", "cpu", model=model(3), cpu_flags=BF16_CPU) == "32-true"  # asked for
    assert resolve_precision("amp", "cpu", model=model(3), cpu_flags=BF16_CPU) == "bf16-mixed"
    _fake_gpus(monkeypatch, 1, bf16=False)  # a GPU decides by itself, whatever the CPU
    assert resolve_precision("auto", "gpu", model=model(3), cpu_flags=BF16_CPU) == "16-mixed"


def test_fp16_without_cuda_and_unknown_precision_are_refused(monkeypatch):
    _fake_gpus(monkeypatch, 0, bf16=False)
    with pytest.raises(ConfigError, match="train.precision=16 .*needs a CUDA GPU"):
        resolve_precision("16", "auto")
    with pytest.raises(ConfigError, match="train.precision='fp8' is not valid.*auto"):
        resolve_precision("fp8", "cpu")


def test_devices_beyond_the_machine_are_refused(monkeypatch):
    _fake_gpus(monkeypatch, 0, bf16=False)
    check_devices("cpu", 2)  # CPU devices are processes
    check_devices("auto", "auto")
    with pytest.raises(ConfigError, match="train.accelerator=gpu but no CUDA GPU is visible"):
        check_devices("gpu", 1)
    _fake_gpus(monkeypatch, 2, bf16=True)
    check_devices("gpu", 2)
    check_devices("auto", [0, 1])
    with pytest.raises(ConfigError, match="asks for 4 GPUs but this machine has 2; fix: train.devices=2"):
        check_devices("auto", 4)
    with pytest.raises(ConfigError, match=r"GPU ids \[3\] do not exist"):
        check_devices("gpu", [0, 3])
    with pytest.raises(ConfigError, match="must be >= 1"):
        check_devices("gpu", 0)
    with pytest.raises(ConfigError, match="not valid"):
        check_devices("gpu", "many")


def test_cli_refuses_bad_precision_and_devices_in_one_line(toy_root, tmp_path, capsys, monkeypatch):
    from offroadseg.cli import main

    _fake_gpus(monkeypatch, 1, bf16=True)  # refused before anything touches the (fake) GPU

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{root: {toy_root}, image_size: [28, 28], num_workers: 0}}\n"
        "model: {backbone: {name: dinov2_test, weights: random}}\n"
        f"run: {{dir: {tmp_path / 'run'}, progress: false}}\n"
    )
    for override, expected in (
        ("train.precision=fp8", "train.precision='fp8' is not valid"),
        ("train.devices=64", "train.devices=64 asks for 64 GPUs but this machine has 1"),
    ):
        extra = ["train.accelerator=gpu"] if "devices" in override else []
        code = main(["train", str(cfg), override, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.cuda
def test_auto_precision_on_this_gpu_is_bf16_from_ampere_on():
    major, _ = torch.cuda.get_device_capability(0)
    assert resolve_precision("auto", "auto") == ("bf16-mixed" if major >= 8 else "16-mixed")


@pytest.mark.cuda
def test_bf16_training_step_on_cuda(toy_root, tmp_path):
    from toydata import toy_config

    from offroadseg.training.run import train

    cfg = toy_config(
        toy_root,
        tmp_path / "r",
        overrides=["train.accelerator=gpu", "train.devices=1", "train.precision=auto", "train.epochs=1"],
    )
    result = train(cfg)
    loss = result.history[0]["train_loss"]
    assert loss is not None and torch.isfinite(torch.tensor(loss))
    assert torch.backends.cuda.matmul.allow_tf32  # set by the run for fp32 matmuls
    ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0

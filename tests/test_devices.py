"""The one device resolver."""

from __future__ import annotations

import pytest
import torch

from offroadseg.devices import accelerator_device, pick_device
from offroadseg.errors import ConfigError

CUDA = torch.cuda.is_available()


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if CUDA else "cpu")
    with pytest.raises(ConfigError, match="not valid"):
        pick_device("tpu7")


@pytest.mark.skipif(CUDA, reason="checks the refusal without a GPU")
def test_pick_device_refuses_cuda_without_gpu() -> None:
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        pick_device("cuda")


def test_accelerator_device() -> None:
    assert accelerator_device("cpu") == torch.device("cpu")
    for accel in ("auto", "gpu"):
        assert accelerator_device(accel).type == ("cuda" if CUDA else "cpu")

"""``frozen_pass``: the backbone forward in bf16 without touching the caller's fp32 model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from offroadseg.config import ModelConfig
from offroadseg.models.factory import build_segmentor
from offroadseg.models.precision import frozen_pass


def _model():
    torch.manual_seed(0)
    cfg = ModelConfig()
    cfg.backbone.name, cfg.backbone.weights, cfg.head.name = "dinov2_test", "random", "linear"
    return build_segmentor(cfg, 5).eval()


def test_fp32_is_the_model_itself() -> None:
    model = _model()
    runner, _ = frozen_pass(model, "fp32", "cpu")
    assert runner is model


def test_bf16_on_cpu_runs_a_bf16_copy_and_leaves_the_model_fp32() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 28, 42, generator=torch.Generator().manual_seed(1))
    runner, amp = frozen_pass(model, "bf16", "cpu")
    assert runner is not model
    assert {p.dtype for p in runner.backbone.parameters()} == {torch.bfloat16}
    with torch.inference_mode():
        ref = model.forward_hidden(x, [1, 2])
        with amp:
            low = runner.forward_hidden(x, [1, 2])
            logits = runner(x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert logits.shape == (2, 5, 28, 42)
    for h in (1, 2):
        assert low[h].dtype == torch.bfloat16
        cosine = F.cosine_similarity(low[h].float(), ref[h], dim=-1).mean()
        assert cosine > 0.999, f"hidden state {h}: cosine {cosine:.5f} to fp32"


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one of fp32, bf16, fp16"):
        frozen_pass(_model(), "int4", "cpu")

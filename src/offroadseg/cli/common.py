"""Helpers shared by the command modules: JSON output, number formatting, progress (re-exported)."""

from __future__ import annotations

import importlib
import json
import math

from offroadseg.progress import progress  # noqa: F401 (the commands' progress callbacks)


def write_json(path: str | None, payload: dict) -> None:
    if not path:
        return
    from offroadseg.data.io import atomic_write_text
    from offroadseg.metrics import json_ready

    atomic_write_text(path, json.dumps(json_ready(payload), indent=2))
    print(f"wrote {path}")


def fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def print_scores(scores: dict, *, header: str) -> None:
    print(header)
    names = list(scores["per_class_iou"])
    width = max(len(n) for n in names) + 2
    print(f"  {'class':<{width}} {'IoU':>7} {'Dice':>7}")
    for name in names:
        iou = scores["per_class_iou"][name]
        dice = scores["per_class_dice"][name]
        print(f"  {name:<{width}} {fmt(iou):>7} {fmt(dice):>7}" + ("   (absent)" if iou is None else ""))
    print(
        f"  mIoU {fmt(scores['miou'])}   mean Dice {fmt(scores['mean_dice'])}   "
        f"pixel accuracy {fmt(scores['pixel_accuracy'])}"
    )


def register_commands(sub, module_names: tuple[str, ...]) -> None:
    """Let each ``offroadseg.cli.<name>`` module add its parser(s) to ``sub``."""
    for name in module_names:
        importlib.import_module(f"offroadseg.cli.{name}").register(sub)

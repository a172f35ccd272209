"""Helpers shared by the command modules: JSON output, number formatting, progress bars."""

from __future__ import annotations

import importlib
import json
import math
import sys
import time
from pathlib import Path


def write_json(path: str | None, payload: dict) -> None:
    if not path:
        return
    from offroadseg.data.io import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2, default=nan_none))
    print(f"wrote {path}")


def nan_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)


def fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _bar(desc: str, total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)


def progress(desc: str):
    """A (done, total) callback: a tqdm bar on a terminal, else a line every 10 % or 30 s (logs)."""
    if not sys.stderr.isatty():
        return _progress_lines(desc)
    state: dict = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = _bar(desc, total)
        bar = state["bar"]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _progress_lines(desc: str, *, every_s: float = 30.0):
    """One line per 10 % step or ``every_s`` seconds, and one at the end, for output that is not a terminal."""
    state = {"step": -1, "time": time.monotonic(), "start": time.monotonic()}

    def update(done: int, total: int) -> None:
        step = 10 * done // max(1, total)
        now = time.monotonic()
        if done < total and step == state["step"] and now - state["time"] < every_s:
            return
        state.update(step=step, time=now)
        took = now - state["start"]
        print(
            f"{desc}: {done}/{total} ({100 * done / max(1, total):.0f} %, {took:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    return update


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

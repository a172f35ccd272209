"""Helpers shared by the command modules: JSON output, number formatting, progress (re-exported)."""

from __future__ import annotations

import argparse
import importlib
import json
import math
from pathlib import Path

from offroadseg.errors import ConfigError
from offroadseg.progress import ProgressFn, progress


def quiet_progress(desc: str) -> ProgressFn:
    """Progress of a long step where no training bar is shown (``cv``, ``tune``, ``train`` with
    ``run.progress=false``): class weights, a feature-store build. A bar on a terminal, one line a minute in
    a log (a study's log runs for hours; a store build for minutes)."""
    return progress(desc, every_s=60.0)


def write_json(path: str | None, payload: dict) -> None:
    if not path:
        return
    from offroadseg.atomic import atomic_write_text
    from offroadseg.metrics import json_ready

    atomic_write_text(path, json.dumps(json_ready(payload), indent=2))
    print(f"wrote {path}")


def add_set_option(p: argparse.ArgumentParser, *, help_text: str = "dotted override (repeatable)") -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``: overrides placed anywhere on the line."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def elapsed_lines(start: float):
    """A ``say(message)`` that prints ``[  N s] message``, N the seconds since ``start`` (perf_counter)."""
    import time

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {message}", flush=True)

    return say


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


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """ROOT, --config with dotted overrides, and the layout/taxonomy flags of a dataset command."""
    p.add_argument("root", nargs="?", default=None, help="dataset root (with --config: overrides data.root)")
    p.add_argument("--config", help="read the data section of this config (e.g. configs/ycor.yaml)")
    p.add_argument(
        "overrides", nargs="*", default=[], help="dotted overrides for --config, e.g. data.root=..."
    )
    p.add_argument("--taxonomy", default=None, help="built-in name or .yaml/.tsv file (default: duality)")
    p.add_argument("--layout", default=None, choices=["duality", "generic"], help="default: duality")
    p.add_argument("--image-dir", default=None, help="generic layout: image folder under ROOT")
    p.add_argument("--label-dir", default=None, help="generic layout: mask folder under ROOT")
    p.add_argument("--label-suffix", default=None, help="generic layout: mask file ending (default .png)")
    p.add_argument("--split-file", default=None, help="generic layout: '<name><tab><split>' lines")
    p.add_argument("--ignore-values", type=int, nargs="*", default=None, help="raw values to ignore (void)")


_DATA_FLAGS = ("taxonomy", "layout", "image_dir", "label_dir", "label_suffix", "split_file", "ignore_values")


def data_config_from_args(args: argparse.Namespace):
    """The :class:`~offroadseg.config.DataConfig` of :func:`add_data_arguments`'s flags: the config's
    data section (or the defaults), then ROOT, then every flag given."""
    from offroadseg.config import DataConfig, load_config

    root, overrides = args.root, list(args.overrides)
    if args.config and root and "=" in root and not Path(root).exists():
        root, overrides = None, [root, *overrides]  # `--config c.yaml key=value`: no ROOT given
    if not root and not args.config:
        raise ConfigError(
            f"{args.command} needs ROOT or --config; fix: offroadseg {args.command} /path/to/data"
        )
    if overrides and not args.config:
        raise ConfigError(f"overrides {overrides} need --config; fix: give --config or use the flags")
    data = load_config(args.config, overrides).data if args.config else DataConfig()
    if root:
        data.root = root
    for flag in _DATA_FLAGS:
        value = getattr(args, flag, None)
        if value is not None:
            setattr(data, flag, value)
    return data


def register_commands(sub, module_names: tuple[str, ...]) -> None:
    """Let each ``offroadseg.cli.<name>`` module add its parser(s) to ``sub``."""
    for name in module_names:
        importlib.import_module(f"offroadseg.cli.{name}").register(sub)

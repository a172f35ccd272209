"""Command line: parse -> config -> call one function -> print for a person.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its parser.
Every :class:`~offroadseg.errors.OffroadsegError` becomes one line on stderr and exit
status 2, with no traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from offroadseg import __version__
from offroadseg.cli.common import register_commands
from offroadseg.errors import OffroadsegError

# Command modules, in the order their commands are listed in --help.
COMMAND_MODULES = ("core", "doctor", "cv", "synth", "predict", "export", "bench", "demo", "app")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offroadseg",
        description="Train, evaluate and serve semantic segmentation of off-road scenes (frozen DINOv2 + heads).",
    )
    parser.add_argument("--version", action="version", version=f"offroadseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_commands(sub, COMMAND_MODULES)
    return parser


def _quiet_lightning() -> None:
    """Lightning's start-up chatter (accelerator lines, tips) buries the progress a person reads."""
    import logging

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_lightning()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
            warnings.filterwarnings("ignore", message=".*litlogger.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            return int(args.func(args) or 0)
    except OffroadsegError as exc:
        print(f"offroadseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("offroadseg: interrupted", file=sys.stderr)
        return 130

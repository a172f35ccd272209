"""Command line: parse -> config -> call one function -> print for a person.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its parser.
Every :class:`~offroadseg.errors.OffroadsegError` becomes one line on stderr and exit
status 2, with no traceback. Anything else is a bug: one line naming the command and the
exception, exit status 1, and the full traceback with ``--debug`` (anywhere on the command
line) or ``OFFROADSEG_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from offroadseg import __version__
from offroadseg.cli.common import register_commands
from offroadseg.errors import OffroadsegError, user_message

# Command modules, in the order their commands are listed in --help.
COMMAND_MODULES = (
    "core",
    "doctor",
    "cv",
    "tune",
    "adapt",
    "synth",
    "predict",
    "export",
    "bench",
    "cache",
    "demo",
    "app",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offroadseg",
        description="Train, evaluate and serve semantic segmentation of off-road scenes (frozen DINOv2 + heads).",
    )
    parser.add_argument("--version", action="version", version=f"offroadseg {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an unexpected error (or set OFFROADSEG_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_commands(sub, COMMAND_MODULES)
    return parser


def _quiet_lightning() -> None:
    """Lightning's start-up chatter (accelerator lines, tips) buries the progress a person reads."""
    import logging

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``--debug`` may follow the command (``offroadseg train cfg.yaml --debug``): take it out."""
    debug = os.environ.get("OFFROADSEG_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    rest = [a for a in argv if a != "--debug"]
    return rest, debug or len(rest) != len(argv)


def main(argv: list[str] | None = None) -> int:
    argv, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
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
        print(f"offroadseg: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("offroadseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place a bug meets a person
        if debug:
            raise
        reason = " ".join(str(exc).split())[:300] or "(no message)"
        print(
            f"offroadseg {args.command}: unexpected error: {type(exc).__name__}: {reason} "
            "(this is a bug or an unchecked input; rerun with --debug or OFFROADSEG_DEBUG=1 for the full "
            "traceback)",
            file=sys.stderr,
        )
        return 1

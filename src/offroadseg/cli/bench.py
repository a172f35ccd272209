"""``offroadseg bench train|infer|ycor``: speed and quality benchmarks, ratios against a baseline
measured in the same run."""

from __future__ import annotations

import importlib

BENCH_MODULES = ("bench_train", "bench_infer", "bench_ycor")


def register(sub) -> None:
    parser = sub.add_parser(
        "bench", help="benchmarks: train | infer | ycor (ratios against a same-run baseline)"
    )
    bench_sub = parser.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    for name in BENCH_MODULES:
        try:
            module = importlib.import_module(f"offroadseg.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"offroadseg.cli.{name}":
                continue
            raise
        module.register(bench_sub)

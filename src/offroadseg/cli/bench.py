"""``offroadseg bench train|infer|ycor|adapt``: speed and quality benchmarks, ratios against a baseline
measured in the same run."""

from __future__ import annotations

from offroadseg.cli.common import register_commands

BENCH_MODULES = ("bench_train", "bench_infer", "bench_ycor", "bench_adapt")


def register(sub) -> None:
    parser = sub.add_parser(
        "bench", help="benchmarks: train | infer | ycor | adapt (ratios against a same-run baseline)"
    )
    bench_sub = parser.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    register_commands(bench_sub, BENCH_MODULES)

"""``offroadseg bench train|infer|ycor|adapt|adapt-cv|cache``: speed and quality benchmarks, ratios against
a baseline measured in the same run; every table and JSON starts with the machine (CPU flags, GEMM peaks,
GPU)."""

from __future__ import annotations

from offroadseg.cli.common import register_commands

BENCH_MODULES = ("bench_train", "bench_infer", "bench_ycor", "bench_adapt", "bench_adapt_cv", "bench_cache")


def machine_header() -> dict:
    """Measure and print the machine (:func:`offroadseg.machine.machine_report`); the JSON's ``machine``."""
    from offroadseg.machine import header_lines, machine_report

    rep = machine_report()
    print("\n".join(header_lines(rep)), flush=True)
    return rep


def register(sub) -> None:
    parser = sub.add_parser(
        "bench",
        help="benchmarks: train | infer | ycor | adapt | adapt-cv | cache (ratios against a same-run "
        "baseline)",
    )
    bench_sub = parser.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    register_commands(bench_sub, BENCH_MODULES)

"""``offroadseg bench adapt [--pair TRAIN:TEST ...] [--n-train N] [--json FILE] [key=value ...]``: test mIoU
of the demo recipe on an unseen synthetic biome before and after ``adapt`` on that biome's images."""

from __future__ import annotations

import argparse
import time

from offroadseg.cli.bench import machine_header
from offroadseg.cli.common import add_set_option, elapsed_lines, fmt, write_json


def markdown(res: dict) -> str:
    lines = [
        "| train biome | test biome (unseen) | val mIoU | test mIoU unadapted | test mIoU adapted | gain (points) "
        "| collapse | train | adapt |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['train_biome']} | {r['test_biome']} | {fmt(r['val_miou'])} | {fmt(r['test_miou_before'])} "
            f"| {fmt(r['test_miou_after'])} | {r['gain_points']:+.1f} | {'yes' if r['collapsed'] else 'no'} "
            f"| {r['seconds']['train']:.0f} s | {r['seconds']['adapt']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def cmd_bench_adapt(args: argparse.Namespace) -> int:
    from offroadseg.experiments.bench.adapt import DEFAULT_PAIRS, bench_adapt, parse_pair

    machine = machine_header()
    pairs = [parse_pair(p) for p in args.pair] if args.pair else list(DEFAULT_PAIRS)
    items = list(args.items) + list(args.overrides)
    settings = [i for i in items if i.split("=", 1)[0].split(".")[0] not in _RECIPE_SECTIONS]
    overrides = [i for i in items if i not in settings]
    start = time.perf_counter()

    say = elapsed_lines(start)

    print(f"bench adapt: pairs {', '.join(f'{a}->{b}' for a, b in pairs)}; runs under {args.work_dir}")
    res = bench_adapt(
        args.work_dir,
        pairs=pairs,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        seed=args.seed,
        overrides=overrides,
        settings=settings,
        say=say,
    )
    gains = [r["gain_points"] for r in res["rows"]]
    print("\n" + markdown(res))
    print(
        f"target >= +5.0 points on every pair: {'met' if all(g >= 5.0 for g in gains) else 'NOT met'} "
        f"(gains {', '.join(f'{g:+.1f}' for g in gains)}); total {time.perf_counter() - start:.0f} s"
    )
    write_json(args.json, {"machine": machine, **res})
    return 0


# dotted keys of these sections change the demo recipe; anything else is an adaptation setting
_RECIPE_SECTIONS = ("data", "model", "loss", "train", "eval", "run")


def register(bench_sub) -> None:
    p = bench_sub.add_parser(
        "adapt",
        help="synthetic unseen biome: demo recipe's test mIoU before/after adapt on the test images",
    )
    p.add_argument(
        "items",
        nargs="*",
        metavar="KEY=VALUE",
        help="recipe overrides (train.epochs=4) and adaptation settings (rounds=3 steps=50)",
    )
    p.add_argument("--pair", action="append", default=[], help="TRAIN:TEST biomes (repeatable; default "
                   "desert:canyon and desert:scrubland)")  # fmt: skip
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-val", type=int, default=20)
    p.add_argument("--n-test", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default="runs/bench_adapt")
    p.add_argument("--json", help="write the results as JSON to this file")
    add_set_option(p, help_text="recipe override or adaptation setting (repeatable)")
    p.set_defaults(func=cmd_bench_adapt)

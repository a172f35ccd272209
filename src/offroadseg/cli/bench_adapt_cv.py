"""``offroadseg bench adapt-cv CONFIG [KEY=VALUE ...] --folds K [--only-folds 1,3] --out DIR [--json FILE]
[--adapt KEY=VALUE ...]``: grouped CV where each held-out fold's images are the adaptation target; mIoU on
the held-out masks before and after ``adapt``, per fold, resumable (a rerun with the same --out skips the
folds recorded in DIR/adapt_cv.json)."""

from __future__ import annotations

import argparse
import time

from offroadseg.cli.bench import machine_header
from offroadseg.cli.common import add_set_option, elapsed_lines, write_json
from offroadseg.cli.cv import split_positionals


def cmd_bench_adapt_cv(args: argparse.Namespace) -> int:
    from offroadseg.config import load_config
    from offroadseg.errors import ConfigError
    from offroadseg.experiments.bench.adapt_cv import RESULT_NAME, bench_adapt_cv, parse_fold_list

    configs, overrides = split_positionals(args.items)
    overrides += args.overrides
    if len(configs) != 1:
        raise ConfigError(
            f"bench adapt-cv takes one config file (got {len(configs)}: {' '.join(configs) or 'none'}); fix: "
            f"offroadseg bench adapt-cv configs/ycor_quick.yaml --folds 5 --out runs/adapt_cv"
        )
    only = parse_fold_list(args.only_folds) if args.only_folds else None
    cfg = load_config(configs[0], overrides)
    cfg.run.progress = False
    setup = {"config": configs[0], "overrides": overrides}
    print(
        f"bench adapt-cv: {configs[0]}, {args.folds} grouped folds (no TTA); runs and {RESULT_NAME} under "
        f"{args.out}"
    )
    res = bench_adapt_cv(
        cfg,
        args.folds,
        args.out,
        setup=setup,
        only=only,
        gap=args.gap,
        seed=args.seed,
        settings=args.adapt,
        extra=lambda: {"machine": machine_header()},
        say=elapsed_lines(time.perf_counter()),
    )
    print("\n" + res["markdown"])
    write_json(args.json, res)
    return 0


def register(bench_sub) -> None:
    p = bench_sub.add_parser(
        "adapt-cv",
        help="grouped CV: each held-out fold's images are the adaptation target; mIoU before/after per fold",
        description="Per fold: train on its train frames, adapt to its held-out images (labels withheld), "
        "score both models on its held-out masks. Resumable: a rerun with the same --out skips recorded "
        "folds.",
    )
    p.add_argument(
        "items", nargs="+", metavar="CONFIG|KEY=VALUE", help="one config file, then dotted overrides"
    )
    p.add_argument("--folds", type=int, required=True, help="number of grouped folds (as offroadseg cv)")
    p.add_argument("--only-folds", default=None, metavar="1,3", help="run only these folds (1-based)")
    p.add_argument(
        "--gap", type=int, default=None, help="group gap (default: data.group_gap; as offroadseg cv)"
    )
    p.add_argument("--seed", type=int, default=0, help="fold-assignment seed (default 0; as offroadseg cv)")
    p.add_argument("--out", required=True, help="fold runs and the resumable adapt_cv.json go here")
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument(
        "--adapt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="adaptation setting (repeatable), e.g. --adapt rounds=2 --adapt steps=30",
    )
    add_set_option(p, help_text="dotted config override (repeatable)")
    p.set_defaults(func=cmd_bench_adapt_cv)

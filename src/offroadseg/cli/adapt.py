"""``offroadseg adapt CHECKPOINT TARGET... --out RUN_DIR [--data SOURCE_ROOT] [--every N] [--method self|bn]
[--gt DIR] [key=value ...]``
(settings right after the targets, or anywhere as ``--set key=value``): adapt a model to unlabeled images of where it is deployed.

Exit status 0: adapted; 2: bad input (one line); 3: adaptation collapsed and was stopped (the run
directory is written, its checkpoint holds the last healthy round, the report says why)."""

from __future__ import annotations

import argparse
import sys
import time

from offroadseg.cli.common import add_set_option, elapsed_lines, fmt

EXIT_COLLAPSED = 3


def cmd_adapt(args: argparse.Namespace) -> int:
    from offroadseg.experiments.adapt import adapt, parse_settings

    targets = [t for t in args.items if "=" not in t]
    settings = parse_settings([t for t in args.items if "=" in t] + args.overrides, method=args.method)
    start = time.perf_counter()

    say = elapsed_lines(start)

    print(f"adapt: {args.checkpoint} -> {args.out} ({settings.method}, {len(targets)} target input(s))")
    res = adapt(
        args.checkpoint,
        targets,
        args.out,
        settings=settings,
        data_root=args.data,
        every=args.every,
        gt_dir=args.gt,
        device=args.device,
        overwrite=args.overwrite,
        say=say,
    )
    s = res.summary
    print(
        f"target mean confidence {fmt(s['before']['confidence'], 3)} -> {fmt(s['after']['confidence'], 3)}, "
        f"entropy {fmt(s['before']['entropy'], 3)} -> {fmt(s['after']['entropy'], 3)}"
    )
    if s["gt"]:
        gt = s["gt"]
        print(
            f"mIoU on the {gt['frames']} --gt frames (labels used only to score): "
            f"before {fmt(gt['before']['miou'])}, after {fmt(gt['after']['miou'])}"
        )
    print(f"checkpoint: {res.checkpoint}")
    print(f"report: {res.report}")
    if res.collapsed:
        kept = f"round {res.shipped_round}'s model" if res.shipped_round else "the UNADAPTED model"
        print("WARNING: adaptation collapsed and was stopped:", file=sys.stderr)
        for msg in res.collapsed:
            print(f"  {msg}", file=sys.stderr)
        print(f"  {res.checkpoint} holds {kept}; see {res.report}", file=sys.stderr)
        return EXIT_COLLAPSED
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt a model to unlabeled images of where it is deployed (self-training, label-free report)",
        description="Self-training with an EMA teacher and class-balanced pseudo-labels, mixing labelled "
        "source batches with pseudo-labelled target batches; or --method bn (batch-norm statistics "
        "re-estimated on the target). Writes a run directory with checkpoints/last.ckpt and "
        "adapt_report.html. Exit 3 when a class collapsed (adaptation stopped).",
    )
    p.add_argument("checkpoint", help="the .ckpt to adapt (written by offroadseg train)")
    p.add_argument(
        "items",
        nargs="+",
        metavar="TARGET|KEY=VALUE",
        help="target image files, folders, glob patterns or videos (no labels), then settings such as "
        "rounds=3 steps=50 keep=0.5 lr=1e-4 (docs/adapt.md; anywhere on the line: --set KEY=VALUE)",
    )
    add_set_option(p, help_text="an adaptation setting (repeatable), e.g. --set rounds=2")
    p.add_argument(
        "--out", required=True, help="the run directory to write (must be empty unless --overwrite)"
    )
    p.add_argument(
        "--data", default=None, help="the source training data (default: the checkpoint's data.root)"
    )
    p.add_argument("--every", type=int, default=1, help="use every N-th frame of a video (default 1)")
    p.add_argument("--method", default=None, choices=["self", "bn"], help="self (default) | bn")
    p.add_argument("--gt", default=None, help="masks of some target images (same names): mIoU before/after")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=cmd_adapt)

"""``offroadseg demo``: the README's first command, end to end on built-in data, no network."""

from __future__ import annotations

import argparse
import time

from offroadseg.cli.common import elapsed_lines, fmt, progress, write_json


def cmd_demo(args: argparse.Namespace) -> int:
    from offroadseg.experiments.demo import run_demo

    start = time.perf_counter()

    stage = elapsed_lines(start)

    result = run_demo(
        args.out,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        seed=args.seed,
        overrides=args.overrides,
        stage=stage,
        progress=progress,
    )
    took = time.perf_counter() - start
    print()
    print(f"demo finished in {took / 60:.1f} min")
    print(f"  val  mIoU {fmt(result.val_miou, 3)}  (desert, dataset-level)")
    print(f"  test mIoU {fmt(result.test_miou, 3)}  (unseen scrubland biome)")
    print(
        f"  majority-class baseline val mIoU {fmt(result.majority_val_miou, 3)} (always '{result.majority_class}')"
    )
    print(f"report: {result.report.resolve()}")
    print(
        f"try it in a browser: offroadseg app {result.run_dir / 'checkpoints' / 'best.ckpt'} --data {args.out}/data"
    )
    write_json(
        args.json,
        {
            "report": str(result.report),
            "val_miou": result.val_miou,
            "test_miou": result.test_miou,
            "majority_val_miou": result.majority_val_miou,
            "seconds": result.seconds,
        },
    )
    return 0


def register(sub) -> None:
    d = sub.add_parser("demo", help="synthetic scenes -> train -> predict -> HTML report (CPU, no network)")
    d.add_argument("overrides", nargs="*", help="key=value changes to the demo preset (configs/demo.yaml)")
    d.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    d.add_argument("--n-train", type=int, default=64)
    d.add_argument("--n-val", type=int, default=20)
    d.add_argument("--n-test", type=int, default=20)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json")
    d.set_defaults(func=cmd_demo)

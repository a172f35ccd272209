"""``offroadseg demo [--adapt] [key=value ...]``: the README's first command, end to end on built-in data,
no network. ``--adapt`` adds the adaptation step (``adapt.KEY=VALUE`` items are its settings)."""

from __future__ import annotations

import argparse
import time

from offroadseg.cli.common import elapsed_lines, fmt, progress, write_json
from offroadseg.errors import ConfigError


def cmd_demo(args: argparse.Namespace) -> int:
    from offroadseg.experiments.demo import run_demo

    adapt_settings = [o for o in args.overrides if o.startswith("adapt.")]
    if adapt_settings and not args.adapt:
        raise ConfigError(
            f"demo: {adapt_settings[0]} is an adaptation setting but the adaptation step is off; "
            "fix: add --adapt"
        )
    start = time.perf_counter()

    stage = elapsed_lines(start)

    result = run_demo(
        args.out,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        seed=args.seed,
        overrides=[o for o in args.overrides if o not in adapt_settings],
        adapt=args.adapt,
        adapt_settings=adapt_settings,
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
    if result.adapted:
        a = result.adapted
        gain = 100 * (a["test_miou_after"] - a["test_miou_before"])
        print(
            f"  test mIoU after adapting to the test images (labels withheld): {fmt(a['test_miou_after'], 3)} "
            f"({gain:+.1f} points over the unadapted {fmt(a['test_miou_before'], 3)})"
        )
        if a["collapsed"]:
            print(f"  WARNING: adaptation collapsed and was stopped: {'; '.join(a['collapsed'])}")
        print(f"  adaptation health report: {a['report']}")
        print(f"  compare unadapted (A) and adapted (B) in a browser: {a['app_command']}")
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
            "adapt": result.adapted,
        },
    )
    return 0


def register(sub) -> None:
    d = sub.add_parser("demo", help="synthetic scenes -> train -> predict -> HTML report (CPU, no network)")
    d.add_argument(
        "overrides",
        nargs="*",
        help="key=value changes to the demo preset (src/offroadseg/configs/demo.yaml); with --adapt, adapt.KEY=VALUE "
        "adaptation settings (docs/adapt.md), e.g. adapt.rounds=2",
    )
    d.add_argument(
        "--adapt",
        action="store_true",
        help="after predicting, adapt the model to the unseen biome's test images (labels withheld) and "
        "report test mIoU before and after (about 1.5 min more on 2 cores)",
    )
    d.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    d.add_argument("--n-train", type=int, default=64)
    d.add_argument("--n-val", type=int, default=20)
    d.add_argument("--n-test", type=int, default=20)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json")
    d.set_defaults(func=cmd_demo)

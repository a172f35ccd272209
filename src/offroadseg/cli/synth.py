"""``offroadseg synth``: procedural desert scenes in the exact Duality layout."""

from __future__ import annotations

import argparse

from offroadseg.cli.common import progress, write_json
from offroadseg.errors import ConfigError


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r} is not HxW, e.g. 540x960") from None
    return h, w


def cmd_synth(args: argparse.Namespace) -> int:
    from offroadseg.data.synth import BIOMES, write_synthetic_dataset

    if args.biome not in BIOMES:
        raise ConfigError(f"unknown biome {args.biome!r}; valid biomes: {', '.join(BIOMES)}")
    summary = write_synthetic_dataset(
        args.out,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        seed=args.seed,
        size=args.size,
        biome=args.biome,
        test_biome=args.test_biome,
        overwrite=args.overwrite,
        progress=progress("synth"),
    )
    print(
        f"wrote {summary.total} images ({summary.counts}) to {summary.out} in {summary.seconds:.1f} s "
        f"({summary.images_per_s:.1f} images/s); biomes {summary.biomes}"
    )
    write_json(
        args.json,
        {
            "out": str(summary.out),
            "counts": summary.counts,
            "biomes": summary.biomes,
            "class_share": summary.class_share,
            "seconds": summary.seconds,
        },
    )
    return 0


def register(sub) -> None:
    s = sub.add_parser("synth", help="write a synthetic desert dataset in the Duality layout")
    s.add_argument("out", help="output folder (must be empty unless --overwrite)")
    s.add_argument("--n-train", type=int, default=100)
    s.add_argument("--n-val", type=int, default=20)
    s.add_argument("--n-test", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=_size, default=(540, 960), help="HxW, default 540x960 (the dataset's own)")
    s.add_argument("--biome", default="desert", help="desert | canyon | scrubland (train and val)")
    s.add_argument("--test-biome", default=None, help="biome of the test split (default: an unseen one)")
    s.add_argument("--overwrite", action="store_true", help="replace the splits of a non-empty folder")
    s.add_argument("--json")
    s.set_defaults(func=cmd_synth)

"""``offroadseg bench train CONFIG [key=value ...]``: epoch time without and with each cache."""

from __future__ import annotations

import argparse

from offroadseg.cli.bench import machine_header
from offroadseg.cli.common import fmt, write_json


def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return "n/a"
    return f"{nbytes / 2**20:.1f} MiB" if nbytes < 2**30 else f"{nbytes / 2**30:.2f} GiB"


def cmd_bench_train(args: argparse.Namespace) -> int:
    from offroadseg.config import load_config
    from offroadseg.experiments.bench.train import DEFAULT_VARIANTS, bench_train

    machine = machine_header()
    cfg = load_config(args.config, args.overrides)
    variants = list(args.variants.split(",")) if args.variants else list(DEFAULT_VARIANTS)
    if args.views is not None:
        variants.append(f"features-v{args.views}")
    print(
        f"bench train {args.config}: {args.epochs} epochs per variant, variants {', '.join(variants)}; "
        f"backbone {cfg.model.backbone.name} ({cfg.model.backbone.weights}), image size {cfg.data.image_size}"
    )

    def on_variant(name: str, r: dict) -> None:
        epochs = ", ".join(f"{s:.2f}" for s in r["epoch_s"])
        print(f"  {name:<12} epochs [{epochs}] s   setup {r['setup_s']:.2f} s   ({r['description']})")
        for msg in r["caches"]["messages"]:
            print(f"  {'':<12} note: {msg}")

    res = bench_train(
        cfg,
        work_dir=args.work_dir,
        epochs=args.epochs,
        limit=args.limit,
        limit_val=args.limit_val,
        variants=variants,
        on_variant=on_variant,
    )
    print(
        f"\n{res['train_images']} train / {res['val_images']} val images on {res['device']} "
        f"({res['cpu_threads']} CPU threads); epoch = train + val loops (checkpoint writes apart); ratio = baseline epoch / variant epoch"
    )
    print(
        f"  {'variant':<14} {'epoch 1 s':>10} {'later s':>9} {'speedup':>8} {'1st/base':>9} {'cache':>10} {'build s':>8}"
    )
    for name, r in res["variants"].items():
        c = r["caches"]
        print(
            f"  {name:<14} {r['first_epoch_s']:>10.2f} {r['steady_epoch_s']:>9.2f} "
            f"{res['ratios'][name]:>7.1f}x {res['first_epoch_ratios'][name]:>8.2f}x "
            f"{_size(c['bytes'] if c['stores'] else None):>10} {c['build_s']:>8.2f}"
        )
    print("  (epoch 1 of a cached variant includes building its caches)")
    if res["speedup"] is not None:
        print(
            f"speedup ({res['cached_variant']} vs baseline, epochs after the first): {res['speedup']:.1f}x; "
            f"first epoch {res['first_epoch_ratio']:.2f}x the baseline's; cache {_size(res['cache_bytes'])}, "
            f"built in {res['cache_build_s']:.1f} s"
        )
    else:
        print("no variant used the frozen-feature cache (see the notes above)")
    miou = {n: r["val_miou"][-1] if r["val_miou"] else None for n, r in res["variants"].items()}
    print("val mIoU after the last epoch: " + ", ".join(f"{n} {fmt(m)}" for n, m in miou.items()))
    write_json(args.json, {"machine": machine, **res})
    return 0


def register(bench_sub) -> None:
    p = bench_sub.add_parser(
        "train",
        help="epoch time without and with the decoded-data and frozen-feature caches (ratios vs the reference way)",
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.backbone.weights=random")
    p.add_argument("--epochs", type=int, default=3, help="epochs per variant (default 3)")
    p.add_argument("--limit", type=int, default=None, help="use the first N training images")
    p.add_argument("--limit-val", type=int, default=None, help="use the first N validation images")
    p.add_argument(
        "--variants",
        default=None,
        help="comma list of baseline, uncached, decoded, features, features-v<K> (default: the first four)",
    )
    p.add_argument(
        "--views", type=int, default=None, help="also run the feature cache with K augmented views"
    )
    p.add_argument("--work-dir", default="runs/bench_train", help="run dirs and fresh caches (emptied first)")
    p.add_argument("--json", help="write the results as JSON to this file")
    p.set_defaults(func=cmd_bench_train)

"""``offroadseg bench cache CONFIG [key=value ...] --json OUT [--frames N]``: the feature-store build at fp32
and at the precision ``auto`` picks on this machine: speed ratio, per-token cosine, GFLOP/s, % of peak."""

from __future__ import annotations

import argparse

from offroadseg.cli.bench import machine_header
from offroadseg.cli.common import write_json


def cmd_bench_cache(args: argparse.Namespace) -> int:
    import torch

    from offroadseg.config import load_config
    from offroadseg.experiments.bench.cache import bench_cache

    cfg = load_config(args.config, args.overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_header()  # after the threads are set: the peaks use the same threads
    print(
        f"bench cache {args.config}: the feature store of the first {args.frames or 'all'} frames, "
        f"built at fp32 and at auto; backbone {cfg.model.backbone.name} ({cfg.model.backbone.weights}), "
        f"image size {cfg.data.image_size}",
        flush=True,
    )
    res = bench_cache(
        cfg,
        frames=args.frames,
        work_dir=args.work_dir,
        peaks=machine["gemm"],
        on_build=lambda label, s: print(f"  {label} build: {s:.1f} s", flush=True),
    )
    pct = "n/a (GPU)" if res["percent_of_peak"] is None else f"{res['percent_of_peak']:.0f}%"
    peak = (
        ""
        if res["peak_gflops"] is None
        else f" of the {res['peak_gflops']:.0f} GFLOP/s {res['precision']} GEMM peak"
    )
    print(
        f"{res['frames']} frames x {res['views']} view(s), {res['gflop_per_frame']:.1f} GFLOP a frame, "
        f"{res['threads']} threads: fp32 {res['fp32_s']:.1f} s, auto ({res['precision']}) {res['auto_s']:.1f} s, "
        f"ratio {res['ratio']:.2f}x; cosine mean {res['cosine_mean']:.5f} (min {res['cosine_min']:.4f}); "
        f"{res['gflops_per_s']:.0f} GFLOP/s = {pct}{peak}"
    )
    write_json(args.json, {"machine": machine, "config": args.config, "overrides": args.overrides, **res})
    return 0


def register(bench_sub) -> None:
    p = bench_sub.add_parser(
        "cache",
        help="feature-store build at fp32 vs the auto precision (bf16 on CPUs that have it): ratio, cosine, "
        "%% of peak",
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.backbone.weights=random")
    p.add_argument("--frames", type=int, default=64, help="the first N frames of train + val (default 64)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's setting)")
    p.add_argument(
        "--work-dir", default=None, help="where the two temporary stores go (default: the temp folder)"
    )
    p.add_argument("--json", help="write the results as JSON to this file")
    p.set_defaults(func=cmd_bench_cache)

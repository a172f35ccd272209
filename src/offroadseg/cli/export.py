"""``offroadseg export``: a checkpoint as an ONNX file that ``predict`` and ONNX Runtime can run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from offroadseg.cli.predict import add_exclude_argument
from offroadseg.errors import ConfigError, OffroadsegError


def cmd_export(args: argparse.Namespace) -> int:
    from offroadseg.cli.predict import excluded_from_args
    from offroadseg.inference.checkpoint import load_checkpoint
    from offroadseg.inference.onnx import export_onnx

    if args.format != "onnx":
        raise ConfigError(f"--format {args.format!r} is not supported; fix: use --format onnx")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise OffroadsegError(f"{out} already exists; fix: pass --overwrite or choose another --out")
    loaded = load_checkpoint(args.checkpoint)
    exclude = excluded_from_args(args, loaded.taxonomy)
    start = time.perf_counter()
    meta = export_onnx(
        loaded,
        out,
        height=args.height,
        width=args.width,
        dynamic=args.dynamic,
        opset=args.opset,
        exclude=exclude,
    )
    h, w = meta["image_size"]
    shape = f"dynamic height/width (default {h}x{w})" if meta["dynamic"] else f"fixed {h}x{w}"
    size_mb = out.stat().st_size / 1e6
    print(
        f"wrote {out} ({size_mb:.1f} MB, {shape}, {len(meta['taxonomy']['classes'])} classes, "
        f"opset {args.opset}) in {time.perf_counter() - start:.1f} s"
    )
    if meta["excluded_classes"]:
        print("excluded classes (masked inside the graph): " + ", ".join(meta["excluded_classes"]))
    print(f"run it with: offroadseg predict {out} IMAGES... --out DIR")
    return 0


def register(sub) -> None:
    """Add ``export`` to the subcommand parser."""
    p = sub.add_parser("export", help="export a checkpoint to ONNX (taxonomy and input size inside)")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--format", default="onnx", help="onnx (the only format so far)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument(
        "--height", type=int, default=None, help="input height (default: the config's data.image_size)"
    )
    p.add_argument(
        "--width", type=int, default=None, help="input width (default: the config's data.image_size)"
    )
    p.add_argument("--dynamic", action="store_true", help="dynamic height/width (needed for --tta scales)")
    p.add_argument("--opset", type=int, default=17)
    add_exclude_argument(p)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

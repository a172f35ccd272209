"""``offroadseg app``: a local web page to try one checkpoint (or compare two) on images."""

from __future__ import annotations

import argparse


def cmd_app(args: argparse.Namespace) -> int:
    from offroadseg.app.server import import_gradio, start_app
    from offroadseg.app.service import AppLimits, load_models

    import_gradio()  # a missing extra is reported before the models load
    limits = AppLimits(
        max_upload_mb=args.max_upload_mb,
        max_megapixels=args.max_megapixels,
        max_images=args.max_images,
        concurrency=args.concurrency,
    )
    models = load_models(args.checkpoint, args.checkpoint_b, device=args.device)
    print(f"loaded {', '.join(str(p) for p in models.paths.values())} ({models.describe()})", flush=True)
    app = start_app(
        models,
        limits=limits,
        data=args.data,
        split=args.split,
        scores=args.scores,
        seed=args.seed,
        host=args.host,
        port=args.port,
    )
    print(f"offroadseg app on {app.url}  (Ctrl-C to stop)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: --host {args.host} lets other machines reach this page; it has no login", flush=True)
    try:
        app.block()
    finally:
        app.close()
    return 0


def register(sub) -> None:
    """Add ``app`` to the subcommand parser."""
    p = sub.add_parser(
        "app",
        help="a local web page to try a checkpoint on images (needs the [app] extra)",
        description="Upload images (overlay, colour mask, legend, latency, TTA) or browse a dataset split "
        "with its ground truth; with CHECKPOINT_B, both models side by side and their difference. "
        "Serves on 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .ckpt written by 'offroadseg train'")
    p.add_argument(
        "checkpoint_b", metavar="CHECKPOINT_B", nargs="?", default=None, help="a second .ckpt to compare"
    )
    p.add_argument(
        "--data", default=None, metavar="ROOT", help="dataset folder to browse (the model's layout)"
    )
    p.add_argument("--split", default="val", help="split of --data to browse (default: val)")
    p.add_argument(
        "--scores",
        default=None,
        metavar="CSV",
        help="per_image.csv from 'predict --gt' on that split: the ranking, instead of computing it",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, local only)"
    )
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860; 0 picks a free one)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MiB (default: 20)")
    p.add_argument(
        "--max-megapixels", type=float, default=40.0, help="largest image in megapixels (default: 40)"
    )
    p.add_argument("--max-images", type=int, default=8, help="images per upload (default: 8)")
    p.add_argument("--concurrency", type=int, default=2, help="requests served at once (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random picks (default: 0)")
    p.set_defaults(func=cmd_app)

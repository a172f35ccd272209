"""Core commands: train, evaluate, score, stats."""

from __future__ import annotations

import argparse
import time

from offroadseg import __version__
from offroadseg.cli.common import (
    add_data_arguments,
    data_config_from_args,
    fmt,
    print_scores,
    progress,
    quiet_progress,
    write_json,
)
from offroadseg.cli.cv import epoch_line
from offroadseg.cli.predict import (
    add_engine_arguments,
    add_ensemble_argument,
    add_exclude_argument,
    add_tta_arguments,
)


# ---- train ------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from offroadseg.config import load_config
    from offroadseg.data.datasets import val_in_train
    from offroadseg.training.run import train

    cfg = load_config(args.config, args.overrides)
    if args.epochs is not None:
        cfg.train.epochs = args.epochs
    _announce_weights(cfg.model.backbone.weights)
    print(f"offroadseg {__version__}: training {args.config} -> {cfg.run.dir}")
    held_out = not val_in_train(cfg.data)
    if not held_out:
        print(
            f"note: data.train_split={cfg.data.train_split} trains on the {cfg.data.val_split} frames too: the "
            f"validation figures below are on training frames, not held out (choose recipes with `offroadseg "
            f"cv` or `tune`; train on train+val only for the final model)"
        )
    start = time.perf_counter()
    # with Lightning's bar (run.progress) the bar shows the epochs; without it (a log, a script) a line per
    # validation epoch, and long steps report a line a minute
    quiet = not cfg.run.progress
    result = train(
        cfg,
        resume=args.resume,
        force=args.force,
        progress=quiet_progress if quiet else progress,
        on_epoch=(lambda event: print(epoch_line("train", event), flush=True)) if quiet else None,
    )
    if result.best_checkpoint is None and result.history == []:
        return 0  # a non-zero DDP rank
    took = time.perf_counter() - start
    print(f"done in {took / 60:.1f} min; run directory: {result.run_dir}")
    for message in (result.caches or {}).get("messages", []):
        print(f"cache: {message}")
    if result.val_scores:
        header = "validation (best epoch, dataset-level):" if held_out else "validation (NOT held out):"
        print_scores(result.val_scores, header=header)
    last = result.history[-1] if result.history else {}
    print(f"  reference batch-mean IoU (comparison only): {fmt(last.get('val_batch_mean_iou'))}")
    print(f"best checkpoint: {result.best_checkpoint}")
    if cfg.train.checkpoint != "best":  # the weights to predict/evaluate/export with
        print(f"model checkpoint (train.checkpoint={cfg.train.checkpoint}): {result.model_checkpoint}")
    write_json(
        args.json,
        {
            "run_dir": str(result.run_dir),
            "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
            "model_checkpoint": str(result.model_checkpoint) if result.model_checkpoint else None,
            "best_val_miou": result.best_val_miou,
            "val": result.val_scores,
            "val_held_out": held_out,
            "history": result.history,
            "seconds": took,
            "world_size": result.world_size,
            "caches": result.caches,
        },
    )
    return 0


def _announce_weights(source: str | None) -> None:
    if source and source.startswith("random"):
        print("!" * 78)
        print("!! backbone weights: RANDOM (weights=random) - for tests and smoke runs only;")
        print("!! use facebook/dinov2-*, offline:dinov2-small, a local folder or a .pth for real runs")
        print("!" * 78)


# ---- evaluate ---------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from offroadseg.cli.predict import (
        check_engine_model,
        describe_members,
        engine_predictor,
        excluded_from_args,
        load_members,
        tta_from_args,
    )
    from offroadseg.inference.evaluate import calibration_images, evaluate_loaded, evaluate_predictor

    if args.engine:
        check_engine_model(args.checkpoint, args)
    members = load_members(args.checkpoint, args)
    loaded = members[0]
    exclude = excluded_from_args(args, loaded.taxonomy)
    if len(members) > 1:
        print(f"evaluating {describe_members(members)}")
    choice = None
    if args.engine:

        def frames(n: int) -> list:
            source, images = calibration_images(loaded, n, data_root=args.data, split=args.split)
            print(f"engine frames: {len(images)} of split {source!r}", flush=True)
            return images

        predictor, choice = engine_predictor(loaded, args, frames)
        result = evaluate_predictor(
            predictor,
            loaded,
            data_root=args.data,
            split=args.split,
            batch_size=args.batch_size,
            progress=progress(f"evaluate {args.split} ({choice.engine})"),
        )
    else:
        result = evaluate_loaded(
            members,
            data_root=args.data,
            split=args.split,
            batch_size=args.batch_size,
            device=args.device,
            progress=progress(f"evaluate {args.split}"),
            tta=tta_from_args(args, vars(loaded.config.eval)),
            exclude=exclude,
        )
    if exclude:
        print(
            "excluded classes (no pixel predicted): " + ", ".join(loaded.taxonomy.names[i] for i in exclude)
        )
    print_scores(result.scores, header=f"{args.split}: {result.images} images (dataset-level scores)")
    print(f"  reference batch-mean IoU (comparison only): {fmt(result.batch_mean_iou)}")
    write_json(
        args.json,
        {
            "split": args.split,
            "images": result.images,
            **result.scores,
            "batch_mean_iou": result.batch_mean_iou,
            "excluded_classes": [loaded.taxonomy.names[i] for i in exclude],
            "checkpoints": [str(m.path) for m in members],
            "engine": choice.record() if choice is not None else None,
        },
    )
    return 0


# ---- score ------------------------------------------------------------------------------------
def cmd_score(args: argparse.Namespace) -> int:
    from offroadseg.inference.score import score_folders
    from offroadseg.taxonomy import load_taxonomy

    tax = load_taxonomy(args.taxonomy, encoding=args.label_encoding, ignore_values=args.ignore_values)
    result = score_folders(args.pred_dir, args.gt_dir, tax, progress=progress("score"))
    print_scores(result.scores, header=f"{result.images} masks scored against {args.gt_dir}")
    write_json(args.json, {**result.scores, "images": result.images, "per_image": result.per_image})
    return 0


# ---- stats ------------------------------------------------------------------------------------
def cmd_stats(args: argparse.Namespace) -> int:
    from offroadseg.data.datasets import taxonomy_for
    from offroadseg.data.stats import dataset_stats
    from offroadseg.losses import class_weights_from_counts

    data_cfg = data_config_from_args(args)
    tax = taxonomy_for(data_cfg)
    bars: dict = {}

    def on_progress(split: str, done: int, total: int) -> None:
        bars.setdefault(split, progress(f"check {split}"))(done, total)

    stats = dataset_stats(data_cfg, args.splits or None, progress=on_progress)
    payload: dict = {"root": data_cfg.root, "taxonomy": tax.name, "splits": {}}
    for s in stats:
        print(f"{s.split}: {s.images} images, sizes {s.sizes}, ignored pixels {s.ignored}")
        payload["splits"][s.split] = {
            "images": s.images,
            "pixels": dict(zip(tax.names, s.counts.tolist(), strict=True)),
            "share": dict(zip(tax.names, s.share.tolist(), strict=True)),
            "ignored": s.ignored,
            "sizes": s.sizes,
        }
    train = next((s for s in stats if s.split == data_cfg.train_split), stats[0])
    weights = class_weights_from_counts(train.counts, max_weight=args.max_weight).tolist()
    payload["class_weights"] = dict(zip(tax.names, weights, strict=True))
    print(f"\nclass share in {train.split} and the loss weights (loss.class_weights=auto) it gives:")
    width = max(len(n) for n in tax.names) + 2
    for i, name in enumerate(tax.names):
        print(f"  {name:<{width}} {100 * train.share[i]:7.2f} %   weight {weights[i]:.3f}")
    print("all images and masks read and valid.")
    write_json(args.json, payload)
    return 0


def register(sub) -> None:
    """Add train, evaluate, score and stats to the subcommand parser."""

    t = sub.add_parser("train", help="train from a YAML config (key=value overrides)")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 data.root=/data")
    t.add_argument("--resume", action="store_true", help="continue from <run.dir>/checkpoints/last.ckpt")
    t.add_argument(
        "--force", action="store_true", help="with --resume: resume even if the config differs from the run's"
    )
    t.add_argument("--epochs", type=int, default=None, help="shorthand for train.epochs=N")
    t.add_argument("--json", help="also write the result as JSON to this file")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate", help="score a checkpoint (or an ensemble: --ensemble CKPT ...) on a dataset split"
    )
    e.add_argument("checkpoint")
    add_ensemble_argument(e)
    e.add_argument("--data", help="dataset root (default: the one in the checkpoint's config)")
    e.add_argument("--split", default="val")
    e.add_argument("--batch-size", type=int, default=None)
    e.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_tta_arguments(e)
    add_exclude_argument(e)
    add_engine_arguments(e, auto_record="--json's engine", frames_from="the training split")
    e.add_argument("--json")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("score", help="score predicted masks on disk against ground truth")
    s.add_argument("pred_dir")
    s.add_argument("gt_dir")
    s.add_argument("--taxonomy", default="duality", help="built-in name or .yaml/.tsv file")
    s.add_argument("--label-encoding", default=None, choices=["value", "rgb"])
    s.add_argument("--ignore-values", type=int, nargs="*", default=None, help="raw values to ignore (void)")
    s.add_argument("--json")
    s.set_defaults(func=cmd_score)

    st = sub.add_parser("stats", help="pixel share per class and loss weights; validates every file")
    add_data_arguments(st)
    st.add_argument("--splits", nargs="*", default=None)
    st.add_argument("--max-weight", type=float, default=5.0)
    st.add_argument("--json")
    st.set_defaults(func=cmd_stats)

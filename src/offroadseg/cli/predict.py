"""``offroadseg predict``: masks, colour images, overlays (and scores with --gt) for image files."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

from offroadseg.cli.common import fmt, print_scores, progress
from offroadseg.errors import ConfigError, DataError


def parse_scales(text: str | None) -> tuple[float, ...] | None:
    """``"0.75,1,1.25"`` -> ``(0.75, 1.0, 1.25)``."""
    if text is None:
        return None
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(
            f"--scales {text!r} is not a comma-separated list of numbers; fix: e.g. 0.75,1,1.25"
        ) from None
    if not scales or any(s <= 0 for s in scales):
        raise ConfigError(f"--scales {text!r} needs positive numbers; fix: e.g. 0.75,1,1.25")
    return scales


def tta_from_args(args: argparse.Namespace, defaults: dict):
    """The TTA/tiling settings: flags over the model's own eval settings."""
    from offroadseg.inference.predictor import TTAConfig

    return TTAConfig.from_eval(
        defaults,
        tta=args.tta,
        scales=parse_scales(args.scales),
        sliding_window=args.sliding_window,
        window_overlap=args.overlap,
    )


def add_tta_arguments(p: argparse.ArgumentParser) -> None:
    """--tta, --scales, --sliding-window, --overlap (defaults: the model's eval settings)."""
    p.add_argument(
        "--tta",
        default=None,
        choices=["none", "flip", "scales", "flip+scales"],
        help="test-time augmentation (default: the model's eval.tta)",
    )
    p.add_argument("--scales", default=None, help="TTA scales, e.g. 0.75,1,1.25 (default: eval.scales)")
    p.add_argument(
        "--sliding-window",
        dest="sliding_window",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tile images larger than the training size instead of resizing them (default: eval.sliding_window)",
    )
    p.add_argument(
        "--overlap",
        type=float,
        default=None,
        help="sliding-window overlap in [0, 1) (default: eval.window_overlap)",
    )


def add_exclude_argument(p: argparse.ArgumentParser) -> None:
    """--exclude-classes NAME,... (classes known to be absent where the model is deployed)."""
    p.add_argument(
        "--exclude-classes",
        dest="exclude_classes",
        default=None,
        metavar="NAME,...",
        help="classes absent where the model is deployed: their logits are masked, so they get no pixel",
    )


def excluded_from_args(args: argparse.Namespace, taxonomy) -> tuple[int, ...]:
    """Class ids of ``--exclude-classes`` (a ConfigError listing the valid names on a bad one)."""
    from offroadseg.inference.predictor import parse_excluded_classes

    return parse_excluded_classes(getattr(args, "exclude_classes", None), taxonomy)


def add_ensemble_argument(p: argparse.ArgumentParser) -> None:
    """--ensemble CKPT (repeatable): more checkpoints whose probabilities are averaged with CHECKPOINT's."""
    p.add_argument(
        "--ensemble",
        action="append",
        default=[],
        metavar="CKPT",
        help="another checkpoint of the same taxonomy; repeat for more: the members' softmax "
        "probabilities are averaged (see docs/ensembles.md)",
    )


def load_members(first: str, args: argparse.Namespace) -> list:
    """The checkpoints of ``CHECKPOINT --ensemble ...``, loaded and checked to share one taxonomy."""
    from offroadseg.inference.checkpoint import load_checkpoint
    from offroadseg.inference.ensemble import check_same_taxonomy

    paths = [first, *getattr(args, "ensemble", [])]
    onnx = [p for p in paths if Path(p).suffix.lower() in (".onnx", ".xml")]
    if onnx and len(paths) > 1:
        raise ConfigError(
            f"--ensemble combines .ckpt checkpoints, got {onnx[0]}; fix: export the ensemble into one "
            f"file (offroadseg export A.ckpt --ensemble B.ckpt --out model.onnx) and predict with it alone"
        )
    members = [load_checkpoint(p) for p in paths]
    check_same_taxonomy([m.taxonomy for m in members], paths)
    return members


def describe_members(members: list) -> str:
    """``ensemble of 2 checkpoints: a.ckpt, b.ckpt`` (or the one checkpoint's path)."""
    if len(members) == 1:
        return str(members[0].path)
    return f"ensemble of {len(members)} checkpoints: " + ", ".join(str(m.path) for m in members)


def load_predictor(model_path: str, args: argparse.Namespace):
    """A predictor for a ``.ckpt`` (PyTorch; with ``--ensemble``, several), an ``.onnx`` (ONNX Runtime) or
    an OpenVINO ``.xml`` (exported by ``export --format openvino``)."""
    suffix = Path(model_path).suffix.lower()
    if suffix in (".onnx", ".xml") and not getattr(args, "ensemble", []):
        from offroadseg.taxonomy import taxonomy_from_dict

        if suffix == ".onnx":
            from offroadseg.inference.onnx import load_onnx_predictor, read_onnx_metadata

            meta = read_onnx_metadata(model_path)
            load = functools.partial(load_onnx_predictor, device=args.device)
        else:
            from offroadseg.inference.openvino import load_openvino_predictor, read_openvino_metadata

            ir = read_openvino_metadata(model_path)
            meta = ir[1]
            load = functools.partial(load_openvino_predictor, ir=ir)
        tta = tta_from_args(args, meta.get("eval", {}))
        exclude = excluded_from_args(args, taxonomy_from_dict(meta["taxonomy"]))
        return load(model_path, tta=tta, batch_size=args.batch_size, exclude=exclude), "error"
    from offroadseg.inference.ensemble import EnsemblePredictor
    from offroadseg.inference.predictor import Predictor

    members = load_members(model_path, args)
    first = members[0]
    tta = tta_from_args(args, vars(first.config.eval))
    exclude = excluded_from_args(args, first.taxonomy)
    settings = {"tta": tta, "device": args.device, "batch_size": args.batch_size, "exclude": exclude}
    if len(members) == 1:
        predictor = Predictor.from_loaded(first, **settings)
    else:
        predictor = EnsemblePredictor.from_checkpoints(members, **settings)
    return predictor, first.config.data.unknown_values


def engine_frames(paths: list[Path], videos: list[str], n: int) -> list:
    """Up to ``n`` input frames, evenly spread over the images (or the first video) for ``--engine``."""
    from offroadseg.data.io import read_image
    from offroadseg.inference.engines import spread
    from offroadseg.inference.video import read_video_frames

    if paths:
        return [read_image(p) for p in spread(paths, n)]
    return [rgb for _, rgb in read_video_frames(Path(videos[0]), 10, limit=n)]


def check_engine_model(model_path: str, args: argparse.Namespace) -> None:
    """``--engine`` runs one ``.ckpt``: an exported file or an ensemble is one line (ConfigError)."""
    if Path(model_path).suffix.lower() in (".onnx", ".xml") or getattr(args, "ensemble", []):
        raise ConfigError(
            f"--engine {args.engine} runs one .ckpt checkpoint, not {'an ensemble' if args.ensemble else model_path}; "
            f"fix: give a .ckpt alone, or drop --engine"
        )
    if args.engine_frames < 1:
        raise ConfigError(f"--engine-frames {args.engine_frames}: must be >= 1; fix: e.g. --engine-frames 8")


def engine_predictor(loaded, args: argparse.Namespace, frames: Callable[[int], list]):
    """``(predictor, EngineChoice)`` of ``--engine NAME|auto`` for one loaded checkpoint, the choice printed;
    ``frames(n)`` gives the input frames it times (auto) or calibrates (int8) on, read only if needed."""
    from offroadseg.inference.engines import AUTO_CANDIDATES, select_engine

    candidates = AUTO_CANDIDATES
    if args.engine_candidates:
        candidates = tuple(c.strip() for c in args.engine_candidates.split(",") if c.strip())
    needs_frames = args.engine == "auto" or "int8" in args.engine
    sample = frames(args.engine_frames) if needs_frames else []
    if args.engine == "auto":
        print(f"engine auto: timing {', '.join(candidates)} on {len(sample)} input frames ...", flush=True)
    predictor, choice = select_engine(
        loaded,
        args.engine,
        sample,
        candidates=candidates,
        tta=tta_from_args(args, vars(loaded.config.eval)),
        device=args.device,
        batch_size=args.batch_size,
        exclude=excluded_from_args(args, loaded.taxonomy),
        progress=lambda name: print(f"  engine {name} ...", flush=True),
    )
    for t in choice.trials:
        if t.ms is None:
            print(f"  {t.engine}: {t.note}")
        else:
            print(f"  {t.engine}: {t.ms:.1f} ms/frame, argmax agreement with eager {100 * t.agreement:.2f}%")
    why = f" ({choice.note})" if choice.note else ""
    print(f"engine: {choice.engine}" + (f", chosen by auto{why}" if choice.requested == "auto" else ""))
    return predictor, choice


def add_engine_arguments(p: argparse.ArgumentParser, *, auto_record: str, frames_from: str) -> None:
    """--engine, --engine-frames, --engine-candidates; ``auto_record`` says where auto's choice is written,
    ``frames_from`` which inputs it times and int8 calibrates on."""
    p.add_argument(
        "--engine",
        default=None,
        metavar="NAME",
        help="run a .ckpt with another engine: auto (time the candidates on a few inputs, keep the fastest "
        f"whose argmax agrees with eager fp32 on >= 99.5%% of pixels; written to {auto_record}), eager, "
        "bf16, onnxruntime, onnxruntime_int8, onnxruntime_int8_dynamic, openvino, openvino_bf16, "
        "openvino_int8 (default: PyTorch at the checkpoint's precision)",
    )
    p.add_argument(
        "--engine-frames",
        dest="engine_frames",
        type=int,
        default=8,
        help=f"frames of {frames_from} that --engine auto times and checks on (half) and int8 calibrates on "
        "(half)",
    )
    p.add_argument(
        "--engine-candidates",
        dest="engine_candidates",
        default=None,
        metavar="NAME,...",
        help="what --engine auto tries (default: eager,bf16,onnxruntime,openvino,openvino_bf16)",
    )


def _engine_predictor(model_path: str, args: argparse.Namespace, paths: list[Path], videos: list[str]):
    """``(predictor, unknown, EngineChoice)`` of ``--engine`` for predict: it times and calibrates on the
    inputs themselves (``paths``, else the first of ``videos``)."""
    from offroadseg.inference.checkpoint import load_checkpoint

    check_engine_model(model_path, args)
    loaded = load_checkpoint(model_path)
    predictor, choice = engine_predictor(loaded, args, lambda n: engine_frames(paths, videos, n))
    return predictor, loaded.config.data.unknown_values, choice


def _write_engine_choice(out: str, choice) -> None:
    """``OUT/engine.json``: the engine that made this folder's masks, and how it was chosen."""
    if choice is None:
        return
    from offroadseg.atomic import atomic_write_text

    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out) / "engine.json", json.dumps(choice.record(), indent=2))


def _predict_videos(
    predictor, videos: list[str], args: argparse.Namespace, *, alone: bool
) -> list[tuple[str, str]]:
    """Overlay every video; one that cannot be read is skipped (returned with its reason).

    ``alone``: the only input, so its error is the command's (one line, exit 2).
    """
    from offroadseg.errors import OffroadsegError
    from offroadseg.inference.video import predict_video

    failed = []
    for video in videos:
        try:
            summary = predict_video(
                predictor,
                video,
                args.out,
                alpha=args.alpha,
                every=args.every,
                write_masks=args.video_masks,
                overwrite=args.overwrite,
                progress=progress("video"),
            )
        except OffroadsegError as exc:
            if alone:
                raise
            failed.append((video, str(exc)))
            print(f"skipped {video}: {exc}", file=sys.stderr)
            continue
        h, w = summary.size
        masks = f" and {summary.predicted} masks in {summary.source.stem}_masks/" if args.video_masks else ""
        print(
            f"wrote {summary.output} ({summary.frames} frames, {w}x{h}, {summary.fps:.2f} fps){masks}: "
            f"model on {summary.predicted} frames, {summary.frames_per_second:.2f} frames/s"
        )
    return failed


def cmd_predict(args: argparse.Namespace) -> int:
    from offroadseg.inference.outputs import OutputWriter, collect_inputs, predict_files
    from offroadseg.inference.video import is_video

    if args.every < 1:
        raise ConfigError(f"--every {args.every}: must be >= 1; fix: e.g. --every 2 (every second frame)")
    videos = [i for i in args.inputs if is_video(i) and Path(i).is_file()]
    images = [i for i in args.inputs if i not in videos]
    missing: list[tuple[str, str]] = []  # inputs that do not exist: reported, the others still run
    paths = collect_inputs(images, missing=missing) if images else []
    if missing and not paths and not videos:
        raise DataError(missing[0][1] if len(missing) == 1 else f"none of the inputs exist ({missing[0][1]})")
    choice = None
    if args.engine:
        predictor, unknown, choice = _engine_predictor(args.model, args, paths, videos)
    else:
        predictor, unknown = load_predictor(args.model, args)
    for spec, reason in missing:
        print(f"skipped {spec}: {reason}", file=sys.stderr)
    alone = len(videos) == 1 and not paths and not missing
    failed_videos = _predict_videos(predictor, videos, args, alone=alone) if videos else []
    if videos and not paths:
        _write_engine_choice(args.out, choice)
        return _finish(len(videos), missing + failed_videos)
    writer = OutputWriter(args.out, predictor.taxonomy, alpha=args.alpha, overwrite=args.overwrite)
    _write_engine_choice(args.out, choice)  # after the writer's check of earlier results
    t = predictor.tta
    mode = f"tta={t.tta}" + (f" scales={list(t.scales)}" if "scales" in t.tta else "")
    mode += f", sliding window (overlap {t.window_overlap})" if t.sliding_window else ""
    if predictor.exclude:
        mode += ", excluded: " + ", ".join(predictor.taxonomy.names[i] for i in predictor.exclude)
    members = getattr(predictor, "members", [predictor])
    sizes = ", ".join(dict.fromkeys(f"{m.image_size[0]}x{m.image_size[1]}" for m in members))
    model = args.model
    if len(members) > 1:
        model = f"an ensemble of {len(members)} checkpoints ({', '.join(predictor.sources)})"
    print(
        f"predicting {len(paths)} images with {model} ({predictor.runtime}, {predictor.device}, "
        f"input {sizes}, {mode}) -> {args.out}"
    )
    summary = predict_files(
        predictor,
        paths,
        writer,
        gt_dir=args.gt,
        batch_size=args.batch_size,
        unknown=unknown,
        progress=progress("predict"),
    )
    for path, reason in summary.failed:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    failed = missing + failed_videos + summary.failed
    if summary.no_truth:
        print(
            f"{len(summary.no_truth)} images have no ground truth in {args.gt} and were not scored "
            f"(e.g. {summary.no_truth[0]})"
        )
    if summary.scores:
        print_scores(
            summary.scores, header=f"{summary.scored} images scored against {args.gt} (dataset-level)"
        )
        print(f"wrote {Path(args.out) / 'metrics.json'} and per_image.csv (worst first)")
    print(
        f"done: {summary.images} images{f', {len(failed)} failed' if failed else ''} in {summary.seconds:.1f} s - "
        f"{summary.images_per_second:.2f} images/s, {fmt(summary.ms_per_image, 1)} ms/image"
    )
    return _finish(len(videos) + len(paths) + len(missing), failed)


def _finish(inputs: int, failed: list[tuple[str, str]]) -> int:
    """The closing summary of failed inputs (each already reported on its own line) and the exit status."""
    if not failed:
        return 0
    names = ", ".join(Path(path).name for path, _ in failed[:5]) + (", ..." if len(failed) > 5 else "")
    print(
        f"{len(failed)} of {inputs} inputs failed and were skipped ({names}); see the lines above",
        file=sys.stderr,
    )
    return 1


def register(sub) -> None:
    """Add ``predict`` to the subcommand parser."""
    p = sub.add_parser(
        "predict",
        help="predict masks for images with a checkpoint or an exported .onnx model",
        description="Writes masks/ (dataset encoding), color/, overlay/; with --gt also comparison/, "
        "metrics.json and per_image.csv. A video writes <name>_overlay.mp4 (same fps and size). "
        "Exit status 1 when some input could not be read.",
    )
    p.add_argument(
        "model",
        metavar="CHECKPOINT",
        help="a .ckpt written by 'offroadseg train', an exported .onnx, or an exported OpenVINO .xml",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders or glob patterns, or video files (mp4/avi/mov/mkv)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--gt", default=None, help="folder of ground-truth masks named like the images: score them"
    )
    add_ensemble_argument(p)
    add_tta_arguments(p)
    add_exclude_argument(p)
    p.add_argument("--batch-size", type=int, default=1, help="images (or windows) per forward pass")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_engine_arguments(p, auto_record="OUT/engine.json", frames_from="the inputs")
    p.add_argument("--alpha", type=float, default=0.5, help="prediction opacity in overlay/ (0..1)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    p.add_argument(
        "--every",
        type=int,
        default=1,
        help="videos: run the model on every N-th frame (others reuse its mask)",
    )
    p.add_argument(
        "--video-masks",
        dest="video_masks",
        action="store_true",
        help="videos: also write each predicted frame's mask (<name>_masks/<frame>.png)",
    )
    p.set_defaults(func=cmd_predict)

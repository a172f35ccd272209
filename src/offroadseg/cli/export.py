"""``offroadseg export``: a checkpoint as an ONNX file (fp32 or int8), an OpenVINO IR, or a checkpoint to ship."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from offroadseg.cli.common import fmt, progress
from offroadseg.cli.predict import add_ensemble_argument, add_exclude_argument
from offroadseg.errors import ConfigError, OffroadsegError

FORMATS = ("onnx", "ckpt", "openvino")


def _check_args(args: argparse.Namespace, out: Path) -> None:
    if args.format not in FORMATS:
        raise ConfigError(f"--format {args.format!r} is not supported; fix: use one of {', '.join(FORMATS)}")
    if args.format == "openvino" and out.suffix.lower() != ".xml":
        raise ConfigError(
            f"--out {out}: an OpenVINO IR is a .xml file (its weights go to a .bin beside it); "
            f"fix: --out {out.with_suffix('.xml')}"
        )
    if args.format == "openvino" and (args.check or args.check_gt):
        raise ConfigError(
            "--check/--check-gt compare ONNX files; fix: measure OpenVINO with 'offroadseg bench infer "
            "--agreement-data DIR --modes openvino_int8'"
        )
    if args.format == "openvino" and args.quantize and not args.calibration:
        raise ConfigError(
            "--format openvino --quantize int8 calibrates on images; fix: add --calibration IMAGES"
        )
    if args.quantize and args.format not in ("onnx", "openvino"):
        raise ConfigError(
            f"--quantize {args.quantize} needs --format onnx (a .{args.format} cannot be quantized); "
            f"fix: export with --format onnx --quantize {args.quantize}"
        )
    if getattr(args, "exclude_classes", None) and args.format == "ckpt":
        raise ConfigError(
            "--exclude-classes is applied inside an ONNX graph; a checkpoint keeps every class "
            "(pass --exclude-classes to predict/evaluate instead); fix: --format onnx"
        )
    if args.ensemble and args.format == "ckpt":
        raise ConfigError(
            f"--ensemble is written as one ONNX graph; a .{args.format} holds one model; fix: --format onnx"
        )
    if args.embed_backbone and args.format != "ckpt":
        raise ConfigError("--embed-backbone is for --format ckpt; fix: add --format ckpt")
    if (args.calibration or args.check or args.check_gt) and not args.quantize:
        raise ConfigError(
            "--calibration/--check/--check-gt go with --quantize int8; fix: add --quantize int8"
        )
    if (
        out.exists() or (args.format == "openvino" and out.with_suffix(".bin").exists())
    ) and not args.overwrite:
        raise OffroadsegError(f"{out} already exists; fix: pass --overwrite or choose another --out")


def cmd_export(args: argparse.Namespace) -> int:
    from offroadseg.cli.predict import excluded_from_args, load_members

    out = Path(args.out)
    _check_args(args, out)
    if args.format == "openvino":
        from offroadseg.inference.openvino import require_openvino

        require_openvino("--format openvino")  # before the export work: one line naming the extra
    members = load_members(args.checkpoint, args)
    loaded = members[0]
    exclude = excluded_from_args(args, loaded.taxonomy)
    start = time.perf_counter()
    if args.format == "ckpt":
        from offroadseg.inference.checkpoint import save_inference_checkpoint

        meta = save_inference_checkpoint(loaded, out, embed_backbone=args.embed_backbone)
        what = (
            "self-contained (backbone embedded)"
            if args.embed_backbone
            else f"trained weights only (backbone rebuilt from {meta['backbone']['source']!r})"
        )
        print(
            f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {what}) in {time.perf_counter() - start:.1f} s"
        )
        return 0
    if args.format == "openvino":
        return _export_openvino(args, members, out, start, exclude)
    if args.quantize:
        return _export_int8(args, members, out, start, exclude)
    meta = _export_fp32(args, members, out, exclude)
    _report_onnx(out, meta, start)
    return 0


def _export_fp32(args: argparse.Namespace, members: list, out: Path, exclude: tuple[int, ...]) -> dict:
    from offroadseg.inference.onnx import export_onnx

    return export_onnx(
        members,
        out,
        height=args.height,
        width=args.width,
        dynamic=args.dynamic,
        opset=args.opset,
        exclude=exclude,
    )


def _export_openvino(
    args: argparse.Namespace, members: list, out: Path, start: float, exclude: tuple[int, ...]
) -> int:
    """The ONNX graph converted to an OpenVINO IR (.xml + .bin); int8 by NNCF on --calibration images."""
    from offroadseg.inference.engines import prepare_inputs
    from offroadseg.inference.openvino import onnx_to_openvino, quantize_openvino, write_openvino_ir
    from offroadseg.inference.outputs import collect_inputs

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".offroadseg-export-", dir=out.parent) as work:
        onnx_path = Path(work) / "model.onnx"
        meta = _export_fp32(args, members, onnx_path, exclude)
        model = onnx_to_openvino(onnx_path)
        precision = "fp32"
        if args.quantize:
            from offroadseg.data.io import read_image

            size = tuple(meta["image_size"])
            images = [read_image(p) for p in collect_inputs(args.calibration)]
            model = quantize_openvino(model, [x.numpy() for x in prepare_inputs(images, size)])
            precision = f"int8 (NNCF, calibrated on {len(images)} images)"
        write_openvino_ir(model, out)
    h, w = meta["image_size"]
    size_mb = (out.stat().st_size + out.with_suffix(".bin").stat().st_size) / 1e6
    print(
        f"wrote {out} and {out.with_suffix('.bin').name} ({size_mb:.1f} MB, OpenVINO IR, {precision}, "
        f"{'dynamic' if meta['dynamic'] else 'fixed'} {h}x{w}, {len(meta['taxonomy']['classes'])} classes) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _report_onnx(out: Path, meta: dict, start: float) -> None:
    h, w = meta["image_size"]
    shape = f"dynamic height/width (default {h}x{w})" if meta["dynamic"] else f"fixed {h}x{w}"
    data = out.with_name(out.name + ".data")
    size_mb = (out.stat().st_size + (data.stat().st_size if data.is_file() else 0)) / 1e6
    print(
        f"wrote {out} ({size_mb:.1f} MB, {meta.get('precision', 'fp32')}, {shape}, "
        f"{len(meta['taxonomy']['classes'])} classes, opset {meta['opset']}) in "
        f"{time.perf_counter() - start:.1f} s"
    )
    if len(meta["ensemble"]) > 1:
        print(
            f"ensemble of {len(meta['ensemble'])} checkpoints in one graph (mean softmax probabilities): "
            + ", ".join(m["source"] for m in meta["ensemble"])
        )
    if meta["excluded_classes"]:
        print("excluded classes (masked inside the graph): " + ", ".join(meta["excluded_classes"]))
    print(f"run it with: offroadseg predict {out} IMAGES... --out DIR")


def _export_int8(
    args: argparse.Namespace, members: list, out: Path, start: float, exclude: tuple[int, ...]
) -> int:
    from offroadseg.inference.outputs import collect_inputs
    from offroadseg.inference.quantize import compare_models, quantize_onnx

    calibration = collect_inputs(args.calibration) if args.calibration else []
    check = collect_inputs(args.check) if args.check else calibration
    truth = _truth_for(check, Path(args.check_gt)) if args.check_gt else None
    with tempfile.TemporaryDirectory(
        prefix=".offroadseg-export-", dir=out.parent if out.parent.is_dir() else None
    ) as work:
        fp32 = Path(work) / "fp32.onnx"
        _export_fp32(args, members, fp32, exclude)
        meta = quantize_onnx(fp32, out, mode=args.quant_mode, calibration=calibration)
        _report_onnx(out, meta, start)
        if not check:
            print("no --check or --calibration images: int8 agreement with fp32 not measured")
            return 0
        result = compare_models(
            fp32, out, check, labels=truth, taxonomy=members[0].taxonomy, progress=progress("check")
        )
    print(
        f"int8 vs fp32 on {result.images} images: {100 * result.pixel_agreement:.2f}% of pixels agree"
        + (
            f"; mIoU {fmt(result.miou_fp32)} -> {fmt(result.miou_int8)} "
            f"({100 * result.miou_change:+.2f} points)"
            if result.miou_change is not None
            else ""
        )
    )
    return 0


def _truth_for(images: list[Path], gt_dir: Path) -> list[Path | None]:
    from offroadseg.data.io import IMAGE_SUFFIXES

    if not gt_dir.is_dir():
        raise ConfigError(
            f"--check-gt {gt_dir} is not a folder; fix: point it at the masks of the --check images"
        )
    index = {p.stem: p for p in gt_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    found = [index.get(p.stem) for p in images]
    if not any(found):
        raise ConfigError(
            f"--check-gt {gt_dir} has no mask named like the check images (e.g. {images[0].stem}.png); "
            f"fix: point it at their masks"
        )
    return found


def register(sub) -> None:
    """Add ``export`` to the subcommand parser."""
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (fp32 or int8), OpenVINO IR, or a checkpoint to ship",
        description="--format onnx: a graph with the taxonomy and input size inside (--quantize int8 "
        "for CPUs; --ensemble: several checkpoints in one graph, their probabilities averaged). --format ckpt: an inference checkpoint, with --embed-backbone self-contained for "
        "machines without the backbone's weights source. --format openvino: an OpenVINO IR (.xml + .bin) "
        "converted from the ONNX graph (needs the openvino extra; --quantize int8 with --calibration: NNCF).",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    add_ensemble_argument(p)
    p.add_argument("--format", default="onnx", help="onnx | ckpt | openvino")
    p.add_argument("--out", required=True, help="the .onnx / .ckpt / .xml (OpenVINO) file to write")
    p.add_argument(
        "--height", type=int, default=None, help="input height (default: the config's data.image_size)"
    )
    p.add_argument(
        "--width", type=int, default=None, help="input width (default: the config's data.image_size)"
    )
    p.add_argument("--dynamic", action="store_true", help="dynamic height/width (needed for --tta scales)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17; 18 for register archs)")
    p.add_argument(
        "--embed-backbone",
        dest="embed_backbone",
        action="store_true",
        help="--format ckpt: carry the frozen backbone too (loads without its weights source)",
    )
    p.add_argument("--quantize", choices=["int8"], default=None, help="int8 ONNX (onnxruntime quantization)")
    p.add_argument(
        "--quant-mode",
        dest="quant_mode",
        choices=["dynamic", "static"],
        default="dynamic",
        help="dynamic (default; faster and needs no data on the CPUs measured in docs/benchmarks.md) or "
        "static: activations calibrated on --calibration images",
    )
    p.add_argument(
        "--calibration", nargs="+", default=None, metavar="INPUT", help="images to calibrate int8 on"
    )
    p.add_argument(
        "--check",
        nargs="+",
        default=None,
        metavar="INPUT",
        help="images to compare int8 with fp32 on (default: the calibration images)",
    )
    p.add_argument(
        "--check-gt",
        dest="check_gt",
        default=None,
        help="masks of the --check images: report the mIoU change",
    )
    add_exclude_argument(p)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

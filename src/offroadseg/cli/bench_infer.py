"""``offroadseg bench infer``: latency and throughput per runtime, ratios against eager fp32."""

from __future__ import annotations

import argparse

from offroadseg.cli.common import write_json


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(report: dict) -> str:
    """The results as a Markdown table (also readable in a terminal)."""
    lines = [
        "| mode | median ms | p90 ms | images/s | vs eager fp32 | max abs logit diff | argmax agreement "
        "| mIoU | mIoU change | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        if not r["ok"]:
            lines.append(f"| {r['mode']} | - | - | - | - | - | - | - | - | skipped: {r['note']} |")
            continue
        note = r["note"]
        if r["setup_s"] is not None:
            note = (note + "; " if note else "") + f"setup {r['setup_s']:.1f} s"
        ratio = "1.00x (baseline)" if r["mode"] == "eager_fp32" else f"{r['ratio']:.2f}x"
        agree, miou, change = r.get("agreement"), r.get("miou"), r.get("miou_change")
        lines.append(
            f"| {r['mode']} | {_num(r['median_ms'], '.1f')} | {_num(r['p90_ms'], '.1f')} | "
            f"{_num(r['images_per_s'], '.2f')} | {ratio} | {_num(r['max_abs_diff'], '.1e')} | "
            f"{'-' if agree is None else f'{100 * agree:.2f}%'} | {_num(miou, '.4f')} | "
            f"{'-' if change is None else f'{100 * change:+.2f} pt'} | {note} |"
        )
    return "\n".join(lines)


def cmd_bench_infer(args: argparse.Namespace) -> int:
    from offroadseg.experiments.bench.infer import MODES, bench_inference, load_bench_model
    from offroadseg.machine import header_lines

    loaded = load_bench_model(args.model, args.overrides)
    modes = list(MODES)
    if args.modes:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.no_compile and "compile" in modes:
        modes.remove("compile")
    report = bench_inference(
        loaded,
        height=args.height,
        width=args.width,
        device=args.device,
        batch_size=args.batch_size,
        iters=args.iters,
        warmup=args.warmup,
        modes=modes,
        threads=args.threads,
        agreement_data=args.agreement_data,
        agreement_frames_n=args.agreement_frames,
        progress=lambda mode: print(f"  timing {mode} ...", flush=True),
    )
    m, inp, s = report["machine"], report["input"], report["settings"]
    print("\n" + "\n".join(header_lines(m)))
    print(
        f"{report['model']['backbone']} + {report['model']['head']} head, input {inp['batch_size']}x3x"
        f"{inp['height']}x{inp['width']}, {s['iters']} timed runs after {s['warmup']} warm-up, "
        f"{s['threads']} torch threads, on {m['gpu'] or 'the CPU'} (onnxruntime {m.get('onnxruntime', '-')})"
    )
    data = report.get("agreement_data")
    print(
        f"agreement and mIoU on {data['note']} (calibration frames disjoint from them unless said)"
        if data
        else "agreement on one random input (pass --agreement-data DIR for real frames)"
    )
    print(format_table(report))
    best = report["best"]
    print(f"fastest: {best['mode']} at {best['ratio']:.2f}x eager fp32")
    write_json(args.json, report)
    return 0


def register(sub) -> None:
    """Add ``infer`` to the ``bench`` subcommand parser."""
    p = sub.add_parser("infer", help="inference latency/throughput: PyTorch modes, ONNX Runtime and OpenVINO")
    p.add_argument(
        "model", metavar="CHECKPOINT|CONFIG", help="a .ckpt, or a .yaml config (model built untrained)"
    )
    p.add_argument(
        "overrides", nargs="*", default=[], help="config overrides, e.g. model.backbone.weights=random"
    )
    p.add_argument("--height", type=int, default=None, help="input height (default: data.image_size)")
    p.add_argument("--width", type=int, default=None, help="input width (default: data.image_size)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--iters", type=int, default=10, help="timed runs per mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per mode")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for torch and ONNX Runtime")
    p.add_argument(
        "--modes", default=None, help="comma-separated subset of the modes (eager_fp32 always runs)"
    )
    p.add_argument(
        "--no-compile", action="store_true", help="skip torch.compile (slow to compile on small CPUs)"
    )
    p.add_argument(
        "--agreement-data",
        dest="agreement_data",
        default=None,
        metavar="DIR",
        help="a dataset root (images/ + labels/) or an image folder: time on real frames and measure each "
        "mode's argmax agreement with eager fp32 (with masks in the model's taxonomy also mIoU); int8 modes "
        "calibrate on other frames of it",
    )
    p.add_argument(
        "--agreement-frames",
        dest="agreement_frames",
        type=int,
        default=20,
        help="frames to measure agreement on (default 20)",
    )
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.set_defaults(func=cmd_bench_infer)

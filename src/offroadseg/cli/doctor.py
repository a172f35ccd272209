"""``offroadseg doctor``: check a dataset without training (exit 0 fit, 1 errors, 2 not a dataset)."""

from __future__ import annotations

import argparse

from offroadseg.cli.common import add_data_arguments, data_config_from_args, progress, write_json


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.machine:
        return machine_doctor(args)
    from offroadseg.data.doctor import examine

    data_cfg = data_config_from_args(args)
    near = {} if args.near_distance is None else {"near_distance": args.near_distance}
    report = examine(data_cfg, workers=args.workers, progress=progress("doctor", unit="file"), **near)
    print_report(report)
    code = report.exit_code(strict=args.strict)
    write_json(args.json, {**report.to_dict(), "strict": args.strict, "exit_code": code})
    return code


def machine_doctor(args: argparse.Namespace) -> int:
    """``doctor --machine``: the CPU, its flags that matter, measured GEMM peaks, the GPU."""
    from offroadseg.machine import header_lines, machine_report

    rep = machine_report()
    print("\n".join(header_lines(rep)))
    write_json(args.json, rep)
    return 0


def print_report(report) -> None:
    """A :class:`~offroadseg.data.doctor.DoctorReport` for a person: splits, class pixels, findings."""
    print(
        f"dataset {report.root} ({report.layout} layout, taxonomy {report.taxonomy}): "
        f"{report.files_read} files read in {report.seconds:.1f} s"
    )
    for s in report.splits:
        print(
            f"  {s.split}: {s.images} images, {s.masks} masks; sizes {_counts(s.image_sizes)}; "
            f"images {_counts(s.image_modes)}; masks {_counts(s.mask_depths)}"
        )
    labelled = [s for s in report.splits if s.masks]
    if labelled:
        names = list(labelled[0].class_pixels)
        width = max(len(n) for n in [*names, "(ignored)"]) + 2
        print("\nshare of labelled pixels per class:")
        print(f"  {'class':<{width}}" + "".join(f"{s.split:>10}" for s in labelled))
        for name in names:
            cells = "".join(_share(s.class_pixels[name], s) for s in labelled)
            print(f"  {name:<{width}}{cells}")
        print(f"  {'(ignored px)':<{width}}" + "".join(f"{s.ignored_pixels:>10}" for s in labelled))
    for title, found in (("errors", report.errors), ("warnings", report.warnings)):
        if found:
            print(f"\n{title} ({len(found)}):")
            for f in found:
                print(f"  - [{f.check}] {f.message}")
    n_err, n_warn = len(report.errors), len(report.warnings)
    if n_err:
        verdict = f"{n_err} error(s), {n_warn} warning(s): fix the errors before training"
    elif n_warn:
        verdict = f"no errors, {n_warn} warning(s): fit to train on; read the warnings"
    else:
        verdict = "no errors, no warnings: fit to train on"
    print(f"\n{verdict}")


def _counts(tally: dict[str, int], shown: int = 4) -> str:
    items = [f"{k} ({v})" for k, v in tally.items()]
    more = f", ... {len(items) - shown} more (see --json)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more or "-"


def _share(pixels: int, split) -> str:
    total = sum(split.class_pixels.values())
    if pixels == 0:
        return f"{'absent':>10}"
    return f"{100 * pixels / total:>9.2f}%"


def register(sub) -> None:
    d = sub.add_parser(
        "doctor",
        help="check a dataset without training: pairs, sizes, label values, duplicates and leakage",
        description=(
            "Read every image and mask once and list every problem. Exit status: 0 fit to train on "
            "(warnings allowed unless --strict), 1 errors found, 2 not a dataset or bad flags."
        ),
    )
    add_data_arguments(d)
    d.add_argument(
        "--near-distance",
        type=int,
        default=None,
        help="largest perceptual-hash distance (of 64 bits) counted as a near-duplicate across splits "
        "(default 6; -1 turns the check off)",
    )
    d.add_argument(
        "--machine",
        action="store_true",
        help="instead of a dataset: this machine's CPU, the flags that decide the fast path (bf16, VNNI, "
        "AMX, NEON/SVE), measured GEMM peaks fp32 / bf16 / int8, and the GPU",
    )
    d.add_argument("--workers", type=int, default=2, help="threads reading files (default 2)")
    d.add_argument("--strict", action="store_true", help="exit 1 on warnings too (e.g. near-duplicates)")
    d.add_argument("--json", help="also write the full report (every file concerned) as JSON")
    d.set_defaults(func=cmd_doctor)

"""``offroadseg bench ycor [CONFIG ...] [--data ROOT] [--json FILE] [--epochs N] [--folds K] [--resume]``: real-data
quality (YCOR val mIoU, per-class IoU, wall time) of each config in one run; with ``--folds K``
also grouped K-fold cross-validation over train ∪ val (mean ± std), in one table; ``--resume`` keeps what
an interrupted invocation finished in the same ``--work-dir``."""

from __future__ import annotations

import argparse
from pathlib import Path

from offroadseg.cli.bench import machine_header
from offroadseg.cli.common import fmt, write_json
from offroadseg.cli.cv import (
    add_cv_arguments,
    fold_line,
    mean_std,
    per_class_markdown,
    rare_text,
    write_markdown,
    write_partial,
)
from offroadseg.cli.cv import seconds as _seconds


def _res(size: list[int]) -> str:
    return f"{size[1]}x{size[0]}"


def print_table(res: dict) -> None:
    rows = res["rows"]
    frames = _frames(res["rows"]) if res["rows"] else "no rows"
    print(
        f"\nYCOR val ({res['data_root']}, {frames}), dataset-level mIoU over classes 1-8 (void ignored), "
        f"{res['device']} ({res['cpu_threads']} threads)"
    )
    print(
        f"  {'config':<12} {'head':<7} {'res':>8} {'layers':>7} {'tta':>5} {'mIoU':>7} {'no-TTA':>7} {'present':>8} "
        f"{'train':>9} {'cache build':>11} {'eval':>7} {'total':>9}"
    )
    for r in rows:
        build = (
            _seconds(r["cache_build_s"]) if r["cache_built"] else ("reused" if r["cache_features"] else "off")
        )
        print(
            f"  {r['name']:<12} {r['head']:<7} {_res(r['image_size']):>8} {r['layers']:>7} {r['tta']:>5} "
            f"{fmt(r['val_miou']):>7} {fmt(r['val_miou_no_tta']):>7} {fmt(r['val_miou_present']):>8} {_seconds(r['train_s']):>9} "
            f"{build:>11} {_seconds(r['eval_s']):>7} {_seconds(r['total_s']):>9}"
        )
    absent = sorted({c for r in rows for c in r["absent_classes"]})
    if absent:
        print(
            f"  (present = mean IoU over the classes with ground truth in val; absent from val: "
            f"{', '.join(absent)}, whose IoU is 0 in mIoU as soon as one pixel is predicted as it)"
        )
    best = next((r for r in rows if r["name"] == res["best"]), None)
    if best is None:
        return
    print(f"\nper-class IoU of the best ({best['name']}, mIoU {fmt(best['val_miou'])}):")
    for name, iou in best["per_class_iou"].items():
        print(f"  {name:<32} {fmt(iou)}" + ("   (absent from val)" if iou is None else ""))


def _frames(rows: list[dict]) -> str:
    counts = sorted({r["val_frames"] for r in rows})
    return f"{counts[0]} frames" if len(counts) == 1 else f"{'/'.join(map(str, counts))} frames by row"


def bench_markdown(res: dict) -> str:
    """One table: CV mean ± std (when run), the val figure (its frame count in the header), train and
    cache-build times."""
    cv = {c["name"]: c for c in res.get("cv", {}).get("configs", [])}
    folds = res.get("cv", {}).get("folds")
    head = "| config | head | checkpoint | TTA |"
    if cv:
        head += f" CV mIoU ({folds}-fold, mean ± std) | CV min | CV max |"
    head += f" val mIoU ({_frames(res['rows'])}) | train (val run) |"
    if cv:
        head += " train / fold |"
    head += " cache build |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in res["rows"]:
        c = cv.get(r["name"])
        line = f"| {r['name']} | {r['head']} | {r.get('checkpoint', 'best')} | {r['tta']} |"
        if cv:
            line += (
                f" {mean_std(c)} | {fmt(c.get('miou_min'))} | {fmt(c.get('miou_max'))} |" if c else " | | |"
            )
        line += f" {fmt(r['val_miou'])} | {_seconds(r['train_s'])} |"
        if cv:
            line += f" {_seconds(c['train_s_mean']) if c and c.get('train_s_mean') else 'n/a'} |"
        build = r["cache_build_s"] + (c["cache_build_s"] if c else 0.0)
        line += f" {_seconds(build)} |"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    if cv:
        text += "\nPer-class mean IoU over the CV folds where the class is labelled or predicted:\n\n"
        text += per_class_markdown(res["cv"])
        rare = rare_text(res["cv"])
        if rare:
            text += (
                "\nRare class per fold:\n\n" + "\n".join(f"- {x.strip()}" for x in rare.splitlines()) + "\n"
            )
    return text


def earlier_runs(configs: list[str], work_dir: str) -> list[str]:
    """The config stems with a val run or a fold (finished or stopped after an epoch) that an earlier
    invocation left under ``work_dir``."""
    from offroadseg.experiments.bench.ycor import BENCH_ROW_NAME
    from offroadseg.experiments.cv import left_a_run

    stems = [Path(c).stem for c in configs]
    return [
        s
        for s in stems
        if left_a_run(Path(work_dir, s), BENCH_ROW_NAME)
        or any(left_a_run(fold) for fold in Path(work_dir, "cv", s).glob("fold*"))
    ]


def cmd_bench_ycor(args: argparse.Namespace) -> int:
    from offroadseg.experiments.bench.ycor import DEFAULT_CONFIGS, DEFAULT_CV_CONFIGS, bench_ycor

    machine = machine_header()
    configs = args.configs or list(DEFAULT_CV_CONFIGS if args.folds else DEFAULT_CONFIGS)
    print(
        f"bench ycor: {len(configs)} config(s) {', '.join(configs)}; data "
        f"{args.data or '(from each config)'}; runs under {args.work_dir}/<config>"
    )
    partial: dict = {"machine": machine, "rows": []}

    if not args.resume:  # an earlier invocation's runs would be trained again: say how to keep them
        earlier = earlier_runs(configs, args.work_dir)
        if earlier:
            print(
                f"bench ycor: note: {args.work_dir} holds runs an earlier invocation made for "
                f"{', '.join(earlier)}; they run again (add --resume to keep the finished ones and continue "
                "an interrupted one)"
            )

    def on_config(path: str, row: dict) -> None:
        partial["rows"].append(row)
        note = f" (+ {row['tta']} TTA eval {_seconds(row['eval_s'])})" if row["tta"] != "none" else ""
        if row.get("kept"):
            note += ", kept from an earlier run (--resume)"
        elif row.get("resumed_after_epochs"):
            note += f", continued after epoch {row['resumed_after_epochs']} (--resume)"
        elif row.get("resume_refused"):
            note += f", from the start ({row['resume_refused']})"
        print(
            f"  {row['name']}: val mIoU {fmt(row['val_miou'])}, best epoch {row['best_epoch']}/{row['epochs']}, "
            f"train {_seconds(row['train_s'])}, cache build {_seconds(row['cache_build_s'])}{note}",
            flush=True,
        )
        for msg in row["cache_messages"]:
            print(f"    note: {msg}")
        write_partial(args.json, partial)  # partial results survive an interrupted run

    def on_fold(progress: dict, cv_so_far: dict) -> None:
        print(fold_line(progress), flush=True)
        write_partial(args.json, {**partial, "cv": cv_so_far})

    if args.folds:
        print(f"  then grouped {args.folds}-fold cross-validation of each config over train ∪ val")
    res = bench_ycor(
        configs,
        data_root=args.data,
        overrides=args.overrides,
        epochs=args.epochs,
        work_dir=args.work_dir,
        on_config=on_config,
        folds=args.folds,
        gap=args.gap,
        seed=args.seed,
        rare_class=args.rare_class,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume,
        on_fold=on_fold,
    )
    print_table(res)
    md = bench_markdown(res)
    if "cv" in res:
        cv = res["cv"]
        gap = (
            cv["gap"]
            if cv["gap"] is not None
            else "/".join(str(g) for g in sorted({c["group_gap"] for c in cv["configs"]}))
        )
        print(
            f"\ngrouped {cv['folds']}-fold CV over train ∪ val (gap {gap}, seed {cv['seed']}), dataset-level mIoU "
            f"per fold, std over folds (ddof=1); best by CV: {res['best_cv']}"
        )
        for c in cv["configs"]:
            print(f"  {c['name']}: scored with the {c.get('scored_with', '')}")
        print("\n" + md)
    write_json(args.json, {"machine": machine, **res})
    write_markdown(args.markdown, md)
    return 0


def register(bench_sub) -> None:
    p = bench_sub.add_parser(
        "ycor",
        help="real-data quality: train each config on YCOR train, val mIoU + per-class IoU + wall time",
    )
    p.add_argument(
        "configs",
        nargs="*",
        help="config files (default: configs/ycor_{linear,conv,ppm}.yaml, configs/ycor.yaml; with --folds: "
        "configs/ycor_{baseline,spread,adapt,combo}.yaml, the rows that chose the previous configs/ycor.yaml, now configs/ycor_rare.yaml)",
    )
    p.add_argument("--data", default=None, help="the YCOR folder (default: each config's data.root)")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs of every config")
    p.add_argument("--work-dir", default="runs/bench_ycor", help="runs go to <work-dir>/<config stem>")
    p.add_argument("--json", help="write the results as JSON to this file")
    add_cv_arguments(p, folds_required=False)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted bench in the same --work-dir: configs whose val run finished with the same "
        "config are kept, an interrupted one goes on from its last finished epoch, the folds go on as cv --resume",
    )
    p.set_defaults(func=cmd_bench_ycor)

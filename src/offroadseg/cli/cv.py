"""``offroadseg cv CONFIG [CONFIG ...] [KEY=VALUE ...] --folds K [--gap G] [--seed S] [--json FILE]``:
grouped K-fold cross-validation over train ∪ val, mean ± std mIoU per config.

Overrides go right after the config files (argparse takes positionals in one run) or anywhere
as ``--set KEY=VALUE``; they apply to every config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from offroadseg.atomic import atomic_write_text
from offroadseg.cli.common import add_set_option, fmt, quiet_progress, write_json
from offroadseg.metrics import json_ready


def seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def mean_std(entry: dict) -> str:
    if entry.get("miou_mean") is None:
        return "n/a"
    std = entry.get("miou_std")
    return f"{entry['miou_mean']:.4f} ± {std:.4f}" if std is not None else f"{entry['miou_mean']:.4f}"


def _groups(n: int) -> str:
    return f"{n} group" if n == 1 else f"{n} groups"


def fold_line(progress: dict) -> str:
    """One progress line per fold: its score, times and the ETA of the whole invocation."""
    row = progress["row"]
    build = f", cache build {seconds(row['cache_build_s'])}" if row["cache_built"] else ""
    tta = f" ({row['scored_with']})" if "no TTA" not in row["scored_with"] else ""  # scored again with TTA
    if row.get("kept"):
        how = "kept from an earlier run (--resume)"
    elif row.get("resumed_after_epochs"):
        how = f"train {seconds(row['train_s'])}{build} after epoch {row['resumed_after_epochs']} (--resume)"
    else:
        how = f"train {seconds(row['train_s'])}{build}"
        if row.get("resume_refused"):
            how += f" from the start ({row['resume_refused']})"
    return (
        f"  [{progress['done']}/{progress['total']}] {progress['name']} fold {progress['fold']}/{progress['folds']}: "
        f"mIoU {fmt(row['miou'])}{tta} on {row['val_frames']} frames ({_groups(len(row['val_groups']))}), "
        f"{how}; elapsed {seconds(progress['elapsed_s'])}, ETA {seconds(progress['eta_s'])}"
    )


def epoch_line(label: str, event: dict) -> str:
    """One progress line per validation epoch of a run without a bar (a ``cv`` or ``tune`` fold, ``train``
    with ``run.progress=false``): its val mIoU, the epoch's time and when training ends at that pace (early
    stopping may end it sooner). ``label`` names the run; an event with ``fold`` names the fold too."""
    epoch_s = event.get("epoch_time_s")
    left = (event["epochs"] - event["epoch"]) * epoch_s if epoch_s is not None else None
    ends = f"; training ends in ~{seconds(left)}" if left else ""
    where = f"{label} fold {event['fold']}/{event['folds']}" if "fold" in event else label
    return (
        f"    {where} epoch {event['epoch']}/{event['epochs']}: "
        f"val mIoU {fmt(event.get('val_miou'))} ({seconds(epoch_s)} an epoch{ends})"
    )


def write_partial(path: str | None, payload: dict) -> None:
    """The results so far, atomically and quietly (after every fold; the final write announces itself)."""
    if path:
        atomic_write_text(path, json.dumps(json_ready({**payload, "partial": True}), indent=2))


def split_positionals(items: list[str]) -> tuple[list[str], list[str]]:
    """Config files and ``key=value`` overrides, in any order."""
    return [i for i in items if "=" not in i], [i for i in items if "=" in i]


def cv_markdown(res: dict) -> str:
    """The CV table (one row per config) as markdown."""
    head = "| config | checkpoint | TTA | CV mIoU (mean ± std) | min | max |"
    rule = "|---|---|---|---|---|---|"
    head += " train / fold | cache build |"
    rule += "---|---|"
    lines = [head, rule]
    for c in res["configs"]:
        row = (
            f"| {c['name']} | {c['checkpoint']} | {c['tta']} | {mean_std(c)} | {fmt(c.get('miou_min'))} "
            f"| {fmt(c.get('miou_max'))} |"
        )
        row += f" {seconds(c.get('train_s_mean'))} | {seconds(c.get('cache_build_s'))} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def per_class_markdown(res: dict) -> str:
    """Per-class mean IoU over the folds where the class is labelled or predicted."""
    configs = res["configs"]
    if not configs or not configs[0].get("per_class_mean_iou"):
        return ""
    names = list(configs[0]["per_class_mean_iou"])
    lines = ["| class | " + " | ".join(c["name"] for c in configs) + " |"]
    lines.append("|---|" + "---|" * len(configs))
    for n in names:
        lines.append(f"| {n} | " + " | ".join(fmt(c["per_class_mean_iou"].get(n)) for c in configs) + " |")
    return "\n".join(lines) + "\n"


def rare_text(res: dict) -> str:
    out = []
    for c in res["configs"]:
        rare = c.get("rare")
        if not rare:
            continue
        folds = ", ".join(
            f"fold {f['fold']}: IoU {fmt(f['iou'], 3)} ({f['labelled_px']} px labelled, "
            f"{f['predicted_px']} predicted, {f['correct_px']} correct)"
            for f in rare["per_fold"]
        )
        out.append(f"  {c['name']} {rare['class']}: {folds}")
    return "\n".join(out)


def _config_gaps(res: dict) -> str:
    gaps = sorted({c["group_gap"] for c in res["configs"]})
    return f"{'/'.join(str(g) for g in gaps)} (data.group_gap)"


def print_cv(res: dict) -> str:
    """Print the tables for a person; returns the markdown written with --markdown."""
    gap = res["gap"] if res["gap"] is not None else _config_gaps(res)
    print(
        f"\ngrouped {res['folds']}-fold cross-validation over train ∪ val (gap {gap}, seed {res['seed']}): "
        f"dataset-level mIoU per fold over the classes labelled or predicted in it; std over folds (ddof=1)"
    )
    for c in res["configs"]:
        print(f"  {c['name']}: scored with the {c.get('scored_with', c['checkpoint'] + ' checkpoint')}")
    table = cv_markdown(res)
    per_class = per_class_markdown(res)
    print("\n" + table)
    if per_class:
        print("per-class mean IoU over the folds where the class is labelled or predicted:\n")
        print(per_class)
    rare = rare_text(res)
    if rare:
        print("rare class per fold:\n" + rare)
    md = table + ("\n" + per_class if per_class else "")
    return md + ("\n" + "\n".join(f"- {line.strip()}" for line in rare.splitlines()) + "\n" if rare else "")


def write_markdown(path: str | None, text: str) -> None:
    if path:
        atomic_write_text(path, text)
        print(f"wrote {path}")


def cmd_cv(args: argparse.Namespace) -> int:
    from offroadseg.config import load_config
    from offroadseg.errors import ConfigError
    from offroadseg.experiments.cv import cross_validate, left_a_run

    configs, overrides = split_positionals(args.items)
    overrides += args.overrides
    if not configs:
        raise ConfigError("cv: no config file given; fix: offroadseg cv CONFIG [CONFIG ...] --folds K")
    entries = []
    for path in configs:
        cfg = load_config(path, overrides)
        cfg.run.progress = False
        entries.append((Path(path).stem, cfg))
    print(
        f"cv: {len(entries)} config(s) x {args.folds} folds ({', '.join(configs)}); runs under "
        f"{args.work_dir}/<config>/fold<i>"
    )
    if not args.resume:  # an earlier invocation's folds would be run again: say how to keep them
        earlier = sorted(
            {
                name
                for name, _ in entries
                for fold in Path(args.work_dir, name).glob("fold*")
                if left_a_run(fold)
            }
        )
        if earlier:
            print(
                f"cv: note: {args.work_dir} holds folds an earlier invocation ran for {', '.join(earlier)}; they "
                "run again (add --resume to keep the finished ones and continue an interrupted one)"
            )

    def on_fold(progress: dict, so_far: dict) -> None:
        print(fold_line(progress), flush=True)
        for msg in progress["row"]["cache_messages"]:
            print(f"    note: {msg}")
        write_partial(args.json, so_far)  # partial results survive an interrupted run

    res = cross_validate(
        entries,
        args.folds,
        gap=args.gap,
        seed=args.seed,
        work_dir=args.work_dir,
        rare_class=args.rare_class,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume,
        on_fold=on_fold,
        on_epoch=lambda event: print(epoch_line(event["name"], event), flush=True),
        progress=quiet_progress,
    )
    md = print_cv(res)
    if res["best"]:
        print(f"\nbest by CV mean mIoU: {res['best']}")
    write_json(args.json, res)
    write_markdown(args.markdown, md)
    return 0


def add_cv_arguments(p: argparse.ArgumentParser, *, folds_required: bool) -> None:
    """--folds, --gap, --seed, --rare-class, --keep-checkpoints, --markdown, --set (shared with ``bench ycor``)."""
    p.add_argument(
        "--folds",
        type=int,
        required=folds_required,
        default=None,
        help="number of grouped folds over train ∪ val (at most the number of groups)",
    )
    p.add_argument(
        "--gap",
        type=int,
        default=None,
        help="frames whose trailing ids are at most G apart form one group (default: data.group_gap, 5); "
        "a third column in the split file overrides it",
    )
    p.add_argument("--seed", type=int, default=0, help="fold-assignment seed (default 0)")
    p.add_argument(
        "--rare-class",
        default=None,
        help="class reported per fold (default: the least-labelled one, e.g. puddle on YCOR)",
    )
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each fold's checkpoints (deleted after scoring by default: each holds the backbone)",
    )
    p.add_argument("--markdown", help="also write the table(s) as markdown to this file")
    add_set_option(
        p, help_text="dotted override for every config (repeatable), e.g. --set data.num_workers=0"
    )


def register(sub) -> None:
    p = sub.add_parser(
        "cv",
        help="grouped K-fold cross-validation over train+val: mean ± std mIoU per config",
        description="Grouped K-fold cross-validation: neighbouring frames never straddle a fold; each fold "
        "is an ordinary training run scored on its held-out groups.",
    )
    p.add_argument("items", nargs="+", metavar="CONFIG|KEY=VALUE", help="config files, then dotted overrides")
    add_cv_arguments(p, folds_required=True)
    p.add_argument("--work-dir", default="runs/cv", help="fold runs go to <work-dir>/<config stem>/fold<i>")
    p.add_argument("--json", help="write the results as JSON to this file (partial results after every fold)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted cv in the same --work-dir: folds finished with the same config are kept, "
        "a fold stopped mid-run goes on from its last finished epoch",
    )
    p.set_defaults(func=cmd_cv)

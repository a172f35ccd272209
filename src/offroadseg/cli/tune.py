"""``offroadseg tune CONFIG [KEY=VALUE ...] --space SPACE.yaml --trials N --storage URL --study NAME
[--folds K] [--minutes M] [--json OUT]``: recipe search on grouped-CV mIoU (Optuna).

Run the same command again to continue a study (after a crash too); run it on several machines
against one PostgreSQL URL to share the work. ``optuna-dashboard URL`` shows the same study live.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from offroadseg.cli.common import add_set_option, fmt, quiet_progress
from offroadseg.cli.cv import epoch_line

__all__ = ["register"]


def _minutes(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s / 60:.1f} min"


def _values_text(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()))


def _event_line(event: dict) -> str | None:
    kind = event["kind"]
    if kind == "start":
        rec = f"; trials {event['recovered']} of a dead worker marked failed" if event["recovered"] else ""
        if event.get("requeued"):
            rec += f"; failed trials {event['requeued']} queued again"
        if event.get("at_limit"):
            rec += (
                f"; {event['at_limit']} not queued again (each already retried {event['max_retries']} times "
                f"without a new fold)"
            )
        stores = "; ".join(f"{h}x{w}: hidden states {b}" for (h, w), b in event["store_blocks"].items())
        return (
            f"tune: study {event['study']}: {event['done']}/{event['trials']} trials done{rec}\n"
            f"  one feature store per image size ({stores})"
        )
    if kind == "fold":
        return (
            f"  trial #{event['trial']} fold {event['fold']}/{event['folds']} (rung {event['fold']}): "
            f"mIoU {fmt(event['value'])}, running mean {fmt(event['running'])}"
            + (f" (kept from trial #{event['reused_from']})" if event.get("reused_from") is not None else "")
        )
    if kind == "begin":
        retry = ""
        if event.get("retry_of") is not None:
            kept = event.get("kept_folds") or []
            retry = f" (retry of #{event['retry_of']}" + (f", keeps fold(s) {kept})" if kept else ")")
        return f"  trial #{event['trial']} starts{retry}: {_values_text(event['values'])}"
    if kind == "epoch":
        return epoch_line(f"trial #{event['trial']}", event)
    if kind == "resume":
        where = f"  trial #{event['trial']} fold {event['fold']}"
        if isinstance(event["epochs"], int):
            return (
                f"{where}: continues trial #{event['from_trial']}'s interrupted run after its epoch "
                f"{event['epochs']} ({event['dir']})"
            )
        return f"{where}: trial #{event['from_trial']}'s interrupted run cannot be continued, runs from the start: {event['epochs']}"
    if kind == "trial":
        best = event["best"]
        best_text = (
            f"best so far {fmt(best['value'])} (trial #{best['trial']})" if best else "no complete trial yet"
        )
        state = event["state"].lower()
        if event.get("infeasible"):
            state = f"infeasible ({event['infeasible'][:160]})"
        elif state == "pruned" and event.get("pruned_after"):
            state = f"pruned after {event['pruned_after']} fold(s)"
        elif event.get("stopped_after"):
            state = f"stopped after {event['stopped_after']} fold(s) (--stop-after; kept, continued by the next run)"
        value = f" CV {fmt(event['value'])}" if event["value"] is not None and state == "complete" else ""
        params = _values_text(event["params"])
        return (
            f"[trial {event['done']}/{event['trials']}] #{event['trial']} {state}{value}; {best_text}; "
            f"elapsed {_minutes(event['elapsed_s'])}, ETA {_minutes(event['eta_s'])}\n    {params}"
        )
    if kind == "stop":
        return f"tune: stopped ({event['why']})"
    return None


def cmd_tune(args: argparse.Namespace) -> int:
    import yaml

    from offroadseg.config import config_from_dict, read_config_dict
    from offroadseg.errors import ConfigError
    from offroadseg.experiments.leaderboard import write_outputs
    from offroadseg.experiments.space import load_space
    from offroadseg.experiments.tune import TuneOptions, open_for_report, run_tune, trials_counted

    if args.trials is None and not args.report:
        raise ConfigError(
            "tune: --trials N is required (how many trials the study should count); fix: --trials 30"
        )
    configs = [i for i in args.items if "=" not in i]
    overrides = [i for i in args.items if "=" in i] + args.overrides
    if len(configs) != 1:
        raise ConfigError(
            f"tune: give exactly one base config file (got {configs or 'none'}); fix: offroadseg tune CONFIG --space SPACE.yaml ..."
        )
    from offroadseg.config import parse_override, set_dotted

    base = read_config_dict(configs[0])
    given = dict(parse_override(text) for text in overrides)
    for key, value in given.items():
        set_dotted(base, key, value)
    config_from_dict(base, source=configs[0])  # the base itself must be a valid config
    params = load_space(args.space, base, source_config=configs[0])
    enqueue = []
    if args.enqueue:
        path = Path(args.enqueue)
        if not path.is_file():
            raise ConfigError(f"--enqueue {path} does not exist; fix: a YAML list of {{key: value}} points")
        enqueue = yaml.safe_load(path.read_text()) or []
        if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
            raise ConfigError(f"--enqueue {path}: must be a YAML list of mappings (dotted key -> value)")
    exclude = tuple(c.strip() for c in (args.exclude_classes or "").split(",") if c.strip())
    opts = TuneOptions(
        trials=args.trials or 1,
        folds=args.folds,
        storage=args.storage,
        study=args.study,
        minutes=args.minutes,
        stop_after=args.stop_after,
        work_dir=args.work_dir,
        exclude=exclude,
        pruner=args.pruner,
        seed=args.seed,
        enqueue=enqueue,
        keep_checkpoints=args.keep_checkpoints or bool(args.ensemble_top),
    )
    out = Path(args.out or Path(args.work_dir) / args.study)
    command = (  # the study's own command: a report's flag is not part of it
        "offroadseg " + " ".join(shlex.quote(a) for a in sys.argv[1:] if a != "--report")
        if sys.argv[1:2] == ["tune"]
        else "offroadseg tune"
    )
    print(
        f"tune: {configs[0]} over {len(params)} keys ({', '.join(p.key for p in params)}), {args.folds} grouped folds, "
        f"{args.pruner} pruning; study {args.study!r} in {args.storage}; outputs in {out}"
    )
    if args.report:
        study = open_for_report(base, params, opts)
        counted_now = trials_counted(study)
        print(f"tune: report only: {counted_now} trials counted; no trial runs, nothing is recovered")

    opened: dict = {}  # the study run_tune opened (its start event carries it)

    def on_event(event: dict) -> None:
        if event["kind"] == "start":
            opened["study"] = event["handle"]
        line = _event_line(event)
        if line:
            print(line, flush=True)
        if event["kind"] == "trial":  # the leaderboard after every trial: a stopped study keeps its table
            write_outputs(
                opened["study"],
                out,
                base_config=configs[0],
                command=command,
                overrides=given,
                json_path=args.json,
            )

    if not args.report:
        result = run_tune(base, params, opts, on_event=on_event, progress=quiet_progress)
        study, counted_now = result["handle"], result["trials_counted"]
    payload = write_outputs(
        study, out, base_config=configs[0], command=command, overrides=given, json_path=args.json
    )
    if args.ensemble_top:
        from offroadseg.experiments.tune import ensemble_cv

        print(f"tune: ensemble of the top {args.ensemble_top} complete trials, scored fold by fold")
        ens = ensemble_cv(
            study,
            args.ensemble_top,
            exclude=exclude,
            on_fold=lambda f, k, v: print(f"  ensemble fold {f}/{k}: mIoU {fmt(v)}", flush=True),
        )
        std = f" ± {ens['cv_std']:.4f}" if ens["cv_std"] is not None else ""
        members = ", ".join(f"#{n} ({fmt(v)})" for n, v in zip(ens["members"], ens["member_cv"], strict=True))
        print(f"ensemble CV {ens['cv_mean']:.4f}{std} of {members}")
        payload = write_outputs(
            study,
            out,
            base_config=configs[0],
            command=command,
            overrides=given,
            json_path=args.json,
            ensemble=ens,
        )
    best = payload["best"]
    print(
        f"tune: {payload['complete']} complete, {payload['pruned']} pruned, {payload['infeasible']} infeasible, "
        f"{payload['failed']} failed; {counted_now}"
        + (f"/{args.trials}" if args.trials else "")
        + " counted"
        + (f", {payload['running']} running" if payload["running"] else "")
    )
    if best:
        print(f"best: trial #{best['trial']} CV {fmt(best['cv_mean'])} -> {payload['best_config']}")
    for msg in payload["plots_skipped"]:
        print(f"  note: {msg}")
    print(
        f"wrote {out / 'leaderboard.md'}, leaderboard.csv, leaderboard.json"
        + (f", {args.json}" if args.json else "")
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="search recipes on grouped-CV mIoU (Optuna; resumable, several workers)",
        description="Recipe search: each trial is the base config plus values from the space, scored by "
        "grouped K-fold CV mean mIoU, pruned after its first folds when behind. The study lives in a "
        "database: rerun the same command to continue; several workers may share one study.",
    )
    p.add_argument(
        "items", nargs="+", metavar="CONFIG|KEY=VALUE", help="the base config, then dotted overrides"
    )
    p.add_argument("--space", required=True, help="search space YAML: dotted key -> {int|float|choice: ...}")
    p.add_argument("--trials", type=int, help="stop when N trials are complete or pruned (not with --report)")
    p.add_argument("--minutes", type=float, default=None, help="start no new trial after M minutes")
    p.add_argument(
        "--stop-after",
        type=float,
        default=None,
        metavar="MINUTES",
        help="after MINUTES, stop at the end of the fold under way (its trial keeps its folds; the same "
        "command continues it)",
    )
    p.add_argument(
        "--storage", default="sqlite:///runs/tune.db", help="study database URL (default: %(default)s)"
    )
    p.add_argument("--study", default="tune", help="study name in the database (default: %(default)s)")
    p.add_argument("--folds", type=int, default=5, help="grouped folds of the objective (default: 5)")
    p.add_argument(
        "--exclude-classes", default="", help="class names left out of the objective's mean, comma-separated"
    )
    p.add_argument(
        "--pruner",
        choices=("sha", "hyperband", "none"),
        default="sha",
        help="successive halving (default), hyperband or none",
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument(
        "--enqueue", help="YAML list of points (dotted key -> value) to try first, e.g. the current recipe"
    )
    p.add_argument(
        "--work-dir", default="runs/tune", help="trial runs go to <work-dir>/<study>/trial<n>/fold<i>"
    )
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each fold's checkpoint (deleted after scoring by default)",
    )
    p.add_argument(
        "--ensemble-top",
        type=int,
        default=0,
        metavar="K",
        help="also score the ensemble of the K best complete trials by the same folds (keeps checkpoints)",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="only write the leaderboard, plots and best.yaml of the study as it is now: no trial runs, "
        "nothing is recovered (safe while workers run)",
    )
    p.add_argument("--out", help="leaderboard, plots and best.yaml (default: <work-dir>/<study>)")
    p.add_argument("--json", help="also write the leaderboard JSON here")
    add_set_option(p)
    p.set_defaults(func=cmd_tune)

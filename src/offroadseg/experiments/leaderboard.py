"""What a study has found, as files: leaderboard (Markdown, CSV, JSON), plots, the best recipe.

Read from the study's database only, so it works on a study that is still running, one that
other machines feed, or one a crashed worker left behind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from offroadseg.atomic import atomic_save, atomic_write_text
from offroadseg.experiments.space import decode_values

__all__ = ["best_recipe_text", "leaderboard_rows", "same_folds_delta", "write_outputs"]


def _state(trial) -> str:
    if trial.user_attrs.get("surplus"):
        return "surplus"
    if trial.user_attrs.get("infeasible"):
        return "infeasible"
    if trial.user_attrs.get("dequeued_by_hand") and not trial.user_attrs.get("fold_rows"):
        return "dequeued by hand"
    name = trial.state.name.lower()
    if name == "pruned" and trial.user_attrs.get("pruned_after_folds"):
        return f"pruned after {trial.user_attrs['pruned_after_folds']} fold(s)"
    done = len(trial.user_attrs.get("fold_rows") or [])
    if name == "fail" and done:
        return f"fail after {done} fold(s)"
    return name


def _fold_scores(trial) -> dict[int, float]:
    return {
        int(f["fold"]): float(f["objective"])
        for f in trial.user_attrs.get("fold_rows") or []
        if f.get("objective") is not None and f.get("fold") is not None
    }


def same_folds_delta(scores: dict[int, float], leader: dict[int, float]) -> float | None:
    """A trial's mean over the folds it ran minus the leader's mean over those same folds: how a pruned or
    unfinished trial compares with the best complete one (a 1-fold mean against a 5-fold mean does not)."""
    shared = sorted(set(scores) & set(leader))
    if not shared:
        return None
    return float(np.mean([scores[k] for k in shared]) - np.mean([leader[k] for k in shared]))


def _chains(rows: list[dict]) -> dict[int, int]:
    """Each trial's retry chain, as the number of the chain's root: a retry names the trial whose finished
    folds it keeps (``retry_of``), itself possibly a retry, so the links are followed to the first trial."""
    parent = {r["trial"]: r["retry_of"] for r in rows}

    def root(n: int) -> int:
        seen = set()
        while parent.get(n) is not None and n not in seen:
            seen.add(n)
            n = parent[n]
        return n

    return {n: root(n) for n in parent}


def _mark_retried(rows: list[dict]) -> None:
    """Give a chain of retries one row that counts: the trial that ran the most folds (the latest on a tie).
    The chain's other finished trials have the same values and a subset of its fold figures (a retry keeps
    its predecessor's folds), so they are marked ``retried as #N`` (earlier) or ``see #N`` (a later retry
    that ran fewer folds) and ranked after every other row instead of standing as duplicates. Queued and
    running retries keep their place: they are the chain's next step."""
    chain = _chains(rows)
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(chain[r["trial"]], []).append(r)
    for members in groups.values():
        if len(members) < 2:
            continue
        rep = max(members, key=lambda r: (r["folds_run"], r["trial"]))
        for r in members:
            if r is rep or r["state"] in ("waiting", "running"):
                continue
            r["retried_as"] = rep["trial"]
            word = "retried as" if r["trial"] < rep["trial"] else "see"
            r["state"] = f"{r['state']}, {word} #{rep['trial']}"


def leaderboard_rows(study) -> list[dict]:
    """One row per trial, best first: complete trials by CV mean, then the others by their difference from
    the best complete trial on the folds both ran (by their running mean while none is complete); trials a
    later retry took over (``retried as #N``) last."""
    rows = []
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    leader = max(complete, key=lambda t: t.value) if complete else None
    for t in trials:
        folds = t.user_attrs.get("fold_rows") or []
        values = [f["objective"] for f in folds if f.get("objective") is not None]
        per_class: dict[str, list[float]] = {}
        for f in folds:
            for name, v in (f.get("per_class_iou") or {}).items():
                if v is not None:
                    per_class.setdefault(name, []).append(v)
        rows.append(
            {
                "trial": t.number,
                "state": _state(t),
                "complete": t.state.name == "COMPLETE",
                "cv_mean": float(np.mean(values)) if values else None,
                "cv_std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "folds_run": len(values),
                "fold_values": values,
                "per_class_mean_iou": {k: float(np.mean(v)) for k, v in per_class.items()},
                "cost_min": (t.user_attrs.get("cost_s") or 0.0) / 60.0,
                # the part of cost_min a retry took over from its predecessor's finished folds
                "reused_min": sum(
                    float(f.get("total_s") or 0.0) for f in folds if f.get("reused_from") is not None
                )
                / 60.0,
                # a waiting trial has no params yet: its queued (enqueued) values
                "params": decode_values(t.params or t.system_attrs.get("fixed_params") or {}),
                "leader": leader.number if leader is not None else None,
                "vs_leader_same_folds": (
                    same_folds_delta(_fold_scores(t), _fold_scores(leader))
                    if leader is not None and t.number != leader.number
                    else None
                ),
                "retry_of": t.user_attrs.get("retry_of"),
                "retried_as": None,
                "infeasible": t.user_attrs.get("infeasible"),
            }
        )
    _mark_retried(rows)

    def key(r: dict) -> tuple:
        # complete trials by CV mean; the others by how they compare with the leader on the same folds
        score = r["cv_mean"] if r["complete"] else r["vs_leader_same_folds"]
        if score is None and not r["complete"] and leader is None:
            score = r["cv_mean"]
        return (
            r["retried_as"] is not None,
            not r["complete"],
            -(score if score is not None else -math.inf),
            r["trial"],
        )

    return sorted(rows, key=key)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 else f"{v:.4f}"
    return str(v)


def _params_text(params: dict) -> str:
    return ", ".join(f"{k.removeprefix('model.')}={_fmt(v)}" for k, v in sorted(params.items()))


def _params_cell(row: dict, lead: dict | None) -> str:
    """The leader's params in full; every other trial's as its differences from the leader's."""
    if lead is None or row is lead:
        return _params_text(row["params"])
    diff = {k: v for k, v in row["params"].items() if lead["params"].get(k) != v}
    return f"as #{lead['trial']} but " + _params_text(diff) if diff else f"as #{lead['trial']}"


def leaderboard_markdown(rows: Sequence[dict], *, top: int | None = None, classes: Sequence[str] = ()) -> str:
    leader = next((r["leader"] for r in rows if r.get("leader") is not None), None)
    versus = f"vs #{leader}, same folds" if leader is not None else "vs best, same folds"
    head = f"| # | trial | state | CV mIoU (mean ± std) | folds | {versus} | cost (min) | params |"
    rule = "|---|---|---|---|---|---|---|---|"
    if classes:
        head += "".join(f" {c} |" for c in classes)
        rule += "---|" * len(classes)
    lines = [head, rule]
    lead = next((r for r in rows if leader is not None and r["trial"] == leader), None)
    for i, r in enumerate(rows[:top] if top else rows, 1):
        score = "n/a" if r["cv_mean"] is None else f"{r['cv_mean']:.4f}"
        if r["cv_std"] is not None:
            score += f" ± {r['cv_std']:.4f}"
        delta = r.get("vs_leader_same_folds")
        delta_text = "n/a" if delta is None else f"{100 * delta:+.1f} pt"
        line = (
            f"| {i} | {r['trial']} | {r['state']} | {score} | {r['folds_run']} | {delta_text} | {r['cost_min']:.1f} "
            f"| {_params_cell(r, lead)} |"
        )
        line += "".join(f" {_fmt(r['per_class_mean_iou'].get(c))} |" for c in classes)
        lines.append(line)
    return "\n".join(lines) + "\n"


def leaderboard_csv(rows: Sequence[dict]) -> str:
    keys = sorted({k for r in rows for k in r["params"]})
    classes = sorted({c for r in rows for c in r["per_class_mean_iou"]})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "trial",
            "state",
            "cv_mean",
            "cv_std",
            "folds_run",
            "vs_leader_same_folds",
            "cost_min",
            *keys,
            *[f"iou_{c}" for c in classes],
        ]
    )
    for r in rows:
        w.writerow(
            [r["trial"], r["state"], r["cv_mean"], r["cv_std"], r["folds_run"]]
            + [r.get("vs_leader_same_folds"), round(r["cost_min"], 2)]
            + [
                json.dumps(r["params"].get(k)) if isinstance(r["params"].get(k), list) else r["params"].get(k)
                for k in keys
            ]
            + [r["per_class_mean_iou"].get(c) for c in classes]
        )
    return buf.getvalue()


def best_recipe_text(base_config: str | Path, out_path: str | Path, params: dict, *, note: str) -> str:
    """A config file that is the base config plus the winning values: ``base:`` and a few keys."""
    rel = os.path.relpath(Path(base_config).resolve(), Path(out_path).resolve().parent)
    nested: dict = {}
    for key, value in sorted(params.items()):
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    header = "".join(f"# {line}\n" for line in note.splitlines())
    return header + yaml.safe_dump({"base": rel, **nested}, sort_keys=False, default_flow_style=None)


def _plots(study, out: Path) -> list[str]:
    """Optimisation history and parameter importance as PNG; returns what could not be drawn and why."""
    import warnings  # noqa: PLC0415

    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from optuna.visualization import matplotlib as ovm  # noqa: PLC0415

    skipped = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, draw in (
            ("history", ovm.plot_optimization_history),
            ("importance", ovm.plot_param_importances),
        ):
            path = out / f"{name}.png"
            try:
                ax = draw(study)
                fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
                fig.set_size_inches(8, 5)
                fig.tight_layout()
                atomic_save(path, lambda tmp, fig=fig: fig.savefig(tmp, dpi=110, format="png"))
                plt.close(fig)
            except Exception as exc:  # noqa: BLE001 - e.g. importance needs 2+ complete trials
                skipped.append(f"{name}.png not drawn: {' '.join(str(exc).split())[:160]}")
    return skipped


def write_outputs(
    study,
    out_dir: str | Path,
    *,
    base_config: str | Path,
    command: str,
    overrides: dict | None = None,
    json_path: str | None = None,
    ensemble: dict | None = None,
) -> dict:
    """Leaderboard (md/csv/json), plots and ``best.yaml`` into ``out_dir``; returns the JSON payload.

    ``overrides``: the dotted overrides the study's base had on the command line; ``best.yaml`` holds
    them beside the winning values, so it trains the same config."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = leaderboard_rows(study)
    classes = sorted({c for r in rows for c in r["per_class_mean_iou"]})
    complete = [r for r in rows if r["complete"]]
    payload = {
        "study": study.study_name,
        "command": command,
        "objective": study.user_attrs.get("objective"),
        "fingerprint": study.user_attrs.get("fingerprint"),
        "trials": len(rows),
        "complete": len(complete),
        "pruned": sum(r["state"].startswith("pruned") for r in rows),
        "infeasible": sum(r["state"] == "infeasible" for r in rows),
        "failed": sum(r["state"].startswith("fail") for r in rows),
        "dequeued": sum(r["state"].startswith("dequeued") for r in rows),
        "running": sum(r["state"] == "running" for r in rows),
        # a retry's cost includes the folds it reused, which its predecessor's cost already counts
        "study_minutes": sum(r["cost_min"] - r["reused_min"] for r in rows),
        "best": complete[0] if complete else None,
        "leaderboard": rows,
    }
    md = f"Study `{study.study_name}`, {payload['objective']}; `{command}`\n\n"
    md += leaderboard_markdown(rows, classes=classes)
    if ensemble is not None:
        payload["ensemble"] = ensemble
        std = f" ± {ensemble['cv_std']:.4f}" if ensemble["cv_std"] is not None else ""
        md += (
            f"\nEnsemble of trials {', '.join(f'#{n}' for n in ensemble['members'])} (mean softmax): "
            f"CV {ensemble['cv_mean']:.4f}{std}; per fold {', '.join(f'{v:.4f}' for v in ensemble['fold_values'])}\n"
        )
    atomic_write_text(out / "leaderboard.md", md)
    atomic_write_text(out / "leaderboard.csv", leaderboard_csv(rows))
    payload["plots_skipped"] = _plots(study, out)
    if complete:
        best = complete[0]
        std = f" ± {best['cv_std']:.4f}" if best["cv_std"] is not None else ""
        note = (
            f"offroadseg tune: trial {best['trial']} of study {study.study_name}, {payload['objective']} "
            f"{best['cv_mean']:.4f}{std} over {best['folds_run']} folds.\n{command}"
        )
        atomic_write_text(
            out / "best.yaml",
            best_recipe_text(
                base_config, out / "best.yaml", {**(overrides or {}), **best["params"]}, note=note
            ),
        )
        payload["best_config"] = str(out / "best.yaml")
    # every trial that scored a fold, as a config file: the unpruned 5-fold re-run of the finalists is
    # `offroadseg cv <these files> --folds K` (the same folds: cv and tune plan them alike)
    payload["trial_configs"] = {}
    for r in rows:
        if r["folds_run"] == 0:
            continue
        path = out / "configs" / f"trial-{r['trial']:04d}.yaml"
        path.parent.mkdir(exist_ok=True)
        note = f"offroadseg tune: trial {r['trial']} of study {study.study_name} ({r['state']}).\n{command}"
        atomic_write_text(
            path, best_recipe_text(base_config, path, {**(overrides or {}), **r["params"]}, note=note)
        )
        payload["trial_configs"][r["trial"]] = str(path)
    text = json.dumps(payload, indent=2, default=str)
    atomic_write_text(out / "leaderboard.json", text)
    if json_path:
        atomic_write_text(json_path, text)
    return payload

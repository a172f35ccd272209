"""``offroadseg tune``: the space file, the study database, pruning, crash recovery, two workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from toydata import YCOR_TINY, make_ycor_like

from offroadseg.cli import main
from offroadseg.errors import ConfigError
from offroadseg.experiments.space import apply_params, load_space, parse_space
from offroadseg.experiments.tune import fold_objective, space_store_blocks

optuna = pytest.importorskip("optuna")

REPO = Path(__file__).resolve().parents[2]

IDS = [0, 1, 10, 11, 20, 21]  # three gap-5 groups of two frames
SPACE = "train.lr: {float: [1.0e-4, 1.0e-2], log: true}\nmodel.head.name: {choice: [linear, conv]}\n"


@pytest.fixture(scope="module")
def ycor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ycor_like(tmp_path_factory.mktemp("tune") / "ycor", n_train=4, n_val=2, frame_ids=IDS)


def _argv(root: Path, tmp: Path, *extra: str, trials: int = 3, study: str = "s") -> list[str]:
    (tmp / "space.yaml").write_text(SPACE)
    argv = [
        "tune",
        str(REPO / "configs" / "ycor.yaml"),
        f"data.root={root}",
        *YCOR_TINY,
        "train.epochs=1",
        "model.backbone.train_blocks=1",
    ]
    argv += ["eval.tta=none", f"data.cache.dir={tmp / 'cache'}", "--space", str(tmp / "space.yaml")]
    argv += ["--trials", str(trials), "--folds", "2", "--storage", f"sqlite:///{tmp / 'tune.db'}"]
    return argv + ["--study", study, "--work-dir", str(tmp / "runs"), *extra]


def _tiny_base(ycor: Path) -> dict:
    """configs/ycor.yaml on the tiny generated set, one adapted block: the base of the run_tune tests."""
    from offroadseg.config import parse_override, read_config_dict, set_dotted

    base = read_config_dict(REPO / "configs" / "ycor.yaml")
    for text in [f"data.root={ycor}", *YCOR_TINY, "model.backbone.train_blocks=1"]:
        set_dotted(base, *parse_override(text))
    return base


def _fold_runner(miou: float, *, ran: list | None = None, stop_in_fold: int | None = None, total_s=None):
    """A stand-in for ``cv.run_fold``: every fold scores ``miou``; the worker stops (KeyboardInterrupt) on
    entering fold ``stop_in_fold``; the folds it runs are appended to ``ran``."""

    def run(cfg, fold, k, run_dir, *, keep_checkpoints, on_epoch=None, progress=None, resume_after=None):
        if stop_in_fold == fold.index + 1:
            raise KeyboardInterrupt
        if ran is not None:
            ran.append(fold.index + 1)
        row = {"fold": fold.index + 1, "miou": miou, "per_class_iou": {"a": miou}}
        if total_s is not None:
            row["total_s"] = total_s
        return row

    return run


def _trials(tmp: Path, study: str = "s") -> list:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{tmp / 'tune.db'}").get_trials()


# -- the space file ------------------------------------------------------------------------------------


def test_space_parses_the_three_forms() -> None:
    params = parse_space(
        {
            "model.backbone.train_blocks": {"int": [0, 6]},
            "train.lr": {"float": [1.0e-4, 1.0e-2], "log": True},
            "model.head.name": {"choice": ["linear", "uper"]},
            "data.image_size": {"choice": [[238, 448], [336, 644]]},
        }
    )
    assert [(p.key, p.kind) for p in params] == [
        ("model.backbone.train_blocks", "int"),
        ("train.lr", "float"),
        ("model.head.name", "choice"),
        ("data.image_size", "choice"),
    ]
    assert params[1].log and (params[0].low, params[0].high) == (0, 6)
    # a list choice travels as JSON text and comes back as the list
    data = apply_params({}, {"data.image_size": params[3].choices[1]})
    assert data == {"data": {"image_size": [336, 644]}}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "the search space is empty"),
        ({"train.lrr": {"float": [0.1, 0.2]}}, "unknown config key 'train.lrr'.*train.lr"),
        ({"train.lr": {"float": [0.2, 0.1]}}, r"bounds \[0.2, 0.1\] need low < high"),
        ({"train.lr": {"float": [0.0, 0.1], "log": True}}, "log scale needs low > 0"),
        ({"train.epochs": {"int": [1.5, 4]}}, "int needs \\[low, high\\] as two ints"),
        ({"model.head.name": {"choice": []}}, "choice needs a non-empty list"),
        ({"train.lr": [0.1, 0.2]}, "is not a distribution"),
        ({"train.lr": {"float": [0.1, 0.2], "int": [1, 2]}}, "exactly one of int / float / choice"),
    ],
)
def test_bad_spaces_are_one_line(space: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_space(space, source="space.yaml")


def test_values_the_config_refuses_are_caught_before_any_trial(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("train.epochs: {int: [0, 4]}\n")
    with pytest.raises(ConfigError, match=r"space.yaml: train.epochs=0 is refused by the config.*at least 1"):
        load_space(path, {})
    path.write_text("model.head.dropout: {choice: [0.1, 1.5]}\n")
    with pytest.raises(ConfigError, match="model.head.dropout=1.5 is refused"):
        load_space(path, {})


def test_one_store_per_size_holds_what_every_point_needs() -> None:
    """train_blocks 0..3 on ViT-S with layers [2, 5, 8, 11]: tokens entering blocks 9..12, layers' outputs."""
    base = {"model": {"backbone": {"name": "dinov2_vits14", "layers": [2, 5, 8, 11]}}}
    params = parse_space(
        {
            "model.backbone.train_blocks": {"int": [0, 3]},
            "data.image_size": {"choice": [[238, 448], [336, 644]]},
        }
    )
    blocks = space_store_blocks(base, params)
    # k=0: outputs of blocks 2,5,8,11 -> 3,6,9,12; k=3: tokens entering block 9 -> 9 (+3,6); k=1,2: 11, 10
    assert blocks == {(238, 448): [3, 6, 9, 10, 11, 12], (336, 644): [3, 6, 9, 10, 11, 12]}


def test_fold_objective_leaves_out_classes() -> None:
    row = {"miou": 0.5, "per_class_iou": {"a": 0.9, "b": 0.3, "puddle": 0.0, "c": None}}
    assert fold_objective(row, ()) == 0.5
    assert fold_objective(row, ("puddle",)) == pytest.approx(0.6)


# -- bad input at the command line ---------------------------------------------------------------------


def test_bad_storage_and_a_study_of_another_space_are_one_line(ycor: Path, tmp_path: Path, capsys) -> None:
    argv = _argv(ycor, tmp_path)
    bad = [a if not a.startswith("sqlite:") else "runs/tune.db" for a in argv]
    assert main(bad) == 2
    assert "is not a database URL; fix: sqlite:///runs/tune.db" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(_argv(ycor, tmp_path, trials=1)) == 0
    done = [t.number for t in _trials(tmp_path)]
    (tmp_path / "space2.yaml").write_text("train.lr: {float: [1.0e-4, 1.0e-1], log: true}\n")
    other = [
        a if not a.endswith("space.yaml") else str(tmp_path / "space2.yaml") for a in _argv(ycor, tmp_path)
    ]
    capsys.readouterr()
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "was made with another space" in err and "fix: pass a new --study NAME" in err
    assert [t.number for t in _trials(tmp_path)] == done  # nothing of the study lost or added


def _without_trials(argv: list[str]) -> list[str]:
    i = argv.index("--trials")
    return argv[:i] + argv[i + 2 :]


def test_report_writes_the_board_of_a_study_as_it_is_and_touches_nothing(
    ycor: Path, tmp_path: Path, capsys
) -> None:
    """``--report``: the leaderboard of the study now, a trial of a dead worker left RUNNING (not failed,
    not queued again: it may be another machine's), no trial run; a missing database or study, or another
    space, is one line (exit 2) and creates nothing."""
    import socket

    from offroadseg.config import parse_override, read_config_dict, set_dotted
    from offroadseg.experiments.tune import TuneOptions, _suggest, run_tune

    argv = _argv(ycor, tmp_path, study="rep")
    items = argv[1 : argv.index("--space")]
    base = read_config_dict(items[0])
    for text in items[1:]:
        set_dotted(base, *parse_override(text))
    params = load_space(tmp_path / "space.yaml", base)
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    opts = TuneOptions(trials=1, folds=2, storage=storage, study="rep", work_dir=str(tmp_path / "runs"))
    run_tune(base, params, opts, run_fold=_fold_runner(0.5))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    study = optuna.load_study(study_name="rep", storage=storage)
    dead = study.ask()
    _suggest(dead, params)
    dead.set_user_attr("pid", gone.pid)
    dead.set_user_attr("host", socket.gethostname())
    before = [(t.number, t.state.name) for t in _trials(tmp_path, "rep")]
    assert before == [(0, "COMPLETE"), (1, "RUNNING")]

    out = tmp_path / "board"
    capsys.readouterr()
    assert main([*_without_trials(argv), "--report", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tune: report only: 1 trials counted; no trial runs, nothing is recovered" in printed
    assert "1 complete, 0 pruned, 0 infeasible, 0 failed; 1 counted, 1 running" in printed
    assert [(t.number, t.state.name) for t in _trials(tmp_path, "rep")] == before
    board = json.loads((out / "leaderboard.json").read_text())
    assert [(r["trial"], r["state"]) for r in board["leaderboard"]] == [(0, "complete"), (1, "running")]
    assert board["best"]["cv_mean"] == pytest.approx(0.5) and "--report" not in board["command"]
    assert (out / "best.yaml").is_file()

    missing = tmp_path / "none.db"
    bad_db = [a if not a.startswith("sqlite:") else f"sqlite:///{missing}" for a in argv]
    bad_name = [a if a != "rep" else "nope" for a in argv]
    (tmp_path / "space2.yaml").write_text("train.lr: {float: [1.0e-4, 1.0e-1], log: true}\n")
    bad_space = [a if not a.endswith("space.yaml") else str(tmp_path / "space2.yaml") for a in argv]
    for bad, message in [
        (bad_db, f"no database at {missing}; fix: the --storage of the study's own command"),
        (bad_name, "--study 'nope' is not in"),
        (bad_space, "was made with another space; its trials would not compare; fix: the config, overrides"),
    ]:
        assert main([*bad, "--report", "--out", str(tmp_path / "board2")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not missing.exists() and not (tmp_path / "board2").exists()
    assert [(t.number, t.state.name) for t in _trials(tmp_path, "rep")] == before
    assert main(_without_trials(argv)) == 2  # running needs --trials
    assert "--trials N is required" in capsys.readouterr().err


# -- a whole study --------------------------------------------------------------------------------------


def test_a_trial_behind_after_its_first_fold_is_pruned(ycor: Path, tmp_path: Path) -> None:
    """Successive halving over fold rungs, with a fold runner whose scores are known: fold mIoU = lr."""
    from offroadseg.experiments.tune import TuneOptions, run_tune

    base = _tiny_base(ycor)
    params = parse_space({"train.lr": {"choice": [0.3, 0.2, 0.1, 0.4]}})
    ran: list[tuple[float, int]] = []

    def fake_fold(
        cfg, fold, k, run_dir, *, keep_checkpoints, on_epoch=None, progress=None, resume_after=None
    ):
        ran.append((cfg.train.lr, fold.index + 1))
        return {"fold": fold.index + 1, "miou": cfg.train.lr, "per_class_iou": {"a": cfg.train.lr}}

    opts = TuneOptions(
        trials=4, folds=3, storage=f"sqlite:///{tmp_path / 'tune.db'}", study="p", work_dir=str(tmp_path)
    )
    opts.enqueue = [{"train.lr": v} for v in (0.3, 0.2, 0.1, 0.4)]
    events: list[dict] = []
    run_tune(base, params, opts, on_event=events.append, run_fold=fake_fold)
    # 0.3 leads every rung (3 folds); 0.2 and 0.1 are behind after fold 1; 0.4 leads again: all 3 folds
    assert ran == [(0.3, 1), (0.3, 2), (0.3, 3), (0.2, 1), (0.1, 1), (0.4, 1), (0.4, 2), (0.4, 3)]
    states = {round(t.params["train.lr"], 1): (t.state.name, t.value) for t in _trials(tmp_path, "p")}
    assert states[0.3] == ("COMPLETE", pytest.approx(0.3)) and states[0.4] == ("COMPLETE", pytest.approx(0.4))
    assert states[0.2][0] == states[0.1][0] == "PRUNED"
    trial_events = [e for e in events if e["kind"] == "trial"]
    assert [e["pruned_after"] for e in trial_events] == [None, 1, 1, None]
    assert trial_events[-1]["best"] == {"trial": 3, "value": pytest.approx(0.4)}


def test_the_begin_line_shows_list_choices_as_lists(ycor: Path, tmp_path: Path) -> None:
    """A list choice travels through Optuna as JSON text; the trial's start line shows the list."""
    from offroadseg.cli.tune import _event_line
    from offroadseg.experiments.tune import TuneOptions, run_tune

    params = parse_space({"data.image_size": {"choice": [[56, 98], [70, 126]]}})
    opts = TuneOptions(
        trials=1, folds=2, storage=f"sqlite:///{tmp_path / 'tune.db'}", study="b", work_dir=str(tmp_path)
    )
    opts.enqueue = [{"data.image_size": [70, 126]}]
    events: list[dict] = []
    run_tune(_tiny_base(ycor), params, opts, on_event=events.append, run_fold=_fold_runner(0.5))
    (begin,) = [e for e in events if e["kind"] == "begin"]
    assert begin["values"] == {"data.image_size": [70, 126]}
    assert _event_line(begin) == f"  trial #{begin['trial']} starts: data.image_size=[70, 126]"


def test_a_retried_trial_keeps_the_folds_its_predecessor_finished(ycor: Path, tmp_path: Path) -> None:
    """A trial stopped in fold 2 is retried from fold 2: fold 1's row is reused, not re-run."""
    from offroadseg.experiments.tune import TuneOptions, run_tune

    base = _tiny_base(ycor)
    params = parse_space({"train.lr": {"choice": [0.3, 0.2]}})
    ran: list[int] = []

    stopped_in_fold_2 = _fold_runner(
        0.25, ran=ran, stop_in_fold=2, total_s=60.0
    )  # the worker stops mid-trial
    fold = _fold_runner(0.5, ran=ran)

    opts = TuneOptions(
        trials=1, folds=3, storage=f"sqlite:///{tmp_path / 'tune.db'}", study="r", work_dir=str(tmp_path)
    )
    opts.enqueue = [{"train.lr": 0.3}]
    with pytest.raises(KeyboardInterrupt):
        run_tune(base, params, opts, run_fold=stopped_in_fold_2)
    assert ran == [1]
    assert [t.state.name for t in _trials(tmp_path, "r")] == ["FAIL"]
    ran.clear()
    events: list[dict] = []
    run_tune(base, params, opts, on_event=events.append, run_fold=fold)
    assert ran == [2, 3]  # fold 1 came from the stopped trial
    trials = _trials(tmp_path, "r")
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 0)
    assert retry.state.name == "COMPLETE" and retry.value == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    rows = retry.user_attrs["fold_rows"]
    assert [r.get("reused_from") for r in rows] == [0, None, None] and retry.user_attrs["cost_s"] >= 60.0
    assert [e.get("reused_from") for e in events if e["kind"] == "fold"] == [0, None, None]
    (begin,) = [e for e in events if e["kind"] == "begin"]  # announced before its first fold
    assert begin["retry_of"] == 0 and begin["kept_folds"] == [1] and begin["trial"] == retry.number
    assert events.index(begin) < next(i for i, e in enumerate(events) if e["kind"] == "fold")
    from offroadseg.cli.tune import _event_line

    assert (
        _event_line(begin) == f"  trial #{retry.number} starts (retry of #0, keeps fold(s) [1]): train.lr=0.3"
    )
    from offroadseg.experiments.leaderboard import leaderboard_rows

    board = leaderboard_rows(optuna.load_study(study_name="r", storage=opts.storage))
    row = next(r for r in board if r["retry_of"] == 0)
    assert row["reused_min"] == pytest.approx(1.0)  # fold 1's 60 s, counted once in the study's time
    # one row counts for the chain: the stopped trial points at its retry and ranks after it
    assert [(r["trial"], r["state"]) for r in board] == [
        (row["trial"], "complete"),
        (0, f"fail after 1 fold(s), retried as #{row['trial']}"),
    ]


class _Stopped(Exception):
    """The worker's end mid-epoch, raised from a progress callback (a kill leaves the same files)."""


@pytest.mark.slow
def test_a_retry_continues_the_fold_its_predecessor_left_after_its_last_epoch(
    ycor: Path, tmp_path: Path
) -> None:
    """A worker stopped in fold 1's second (last) epoch: the retry runs that epoch only, in the folder the
    fold ran in, from the checkpoint of epoch 1, and the trial scores what an uninterrupted one scores."""
    from offroadseg.config import parse_override, set_dotted
    from offroadseg.experiments import cv
    from offroadseg.experiments.tune import TuneOptions, run_tune

    base = _tiny_base(ycor)
    for text in ["train.epochs=2", f"data.cache.dir={tmp_path / 'cache'}"]:
        set_dotted(base, *parse_override(text))
    params = parse_space({"train.lr": {"choice": [2e-3]}})

    def stopping(cfg, fold, k, run_dir, *, on_epoch, **kw):
        def report(row):
            on_epoch(row)
            if row["epoch"] == 2:  # epoch 1's last.ckpt is on disk, epoch 2's is not yet
                raise _Stopped

        return cv.run_fold(cfg, fold, k, run_dir, on_epoch=report, **kw)

    def options(study: str) -> TuneOptions:
        return TuneOptions(
            trials=1,
            folds=2,
            storage=f"sqlite:///{tmp_path / 'tune.db'}",
            study=study,
            work_dir=str(tmp_path),
        )

    first: list[dict] = []
    with pytest.raises(_Stopped):
        run_tune(base, params, options("a"), on_event=first.append, run_fold=stopping)
    (epoch_1,) = [e["epoch_time_s"] for e in first if e["kind"] == "epoch" and e["epoch"] == 1]
    (stopped,) = _trials(tmp_path, "a")
    fold_dir = tmp_path / "a" / "trial0000" / "fold1"
    assert stopped.state.name == "FAIL" and stopped.user_attrs["fold_dirs"] == {"1": str(fold_dir)}
    assert (fold_dir / "checkpoints" / "last.ckpt").is_file()
    events: list[dict] = []
    run_tune(base, params, options("a"), on_event=events.append)
    (resume,) = [e for e in events if e["kind"] == "resume"]
    assert resume == {
        "kind": "resume",
        "trial": 1,
        "fold": 1,
        "dir": str(fold_dir),
        "from_trial": 0,
        "epochs": 1,
    }
    assert [(e["fold"], e["epoch"]) for e in events if e["kind"] == "epoch"] == [(1, 2), (2, 1), (2, 2)]
    from offroadseg.cli.tune import _event_line

    assert _event_line(resume) == (
        f"  trial #1 fold 1: continues trial #0's interrupted run after its epoch 1 ({fold_dir})"
    )
    retry = next(t for t in _trials(tmp_path, "a") if t.user_attrs.get("retry_of") == 0)
    assert retry.state.name == "COMPLETE" and retry.user_attrs["fold_dirs"]["1"] == str(fold_dir)
    rows = retry.user_attrs["fold_rows"]
    assert [r.get("resumed_after_epochs") for r in rows] == [1, None] and [r["epochs"] for r in rows] == [
        2,
        2,
    ]
    # the trial's cost counts the epoch its predecessor trained, besides its own time
    assert rows[0]["resumed_epochs_s"] == pytest.approx(epoch_1)
    assert retry.user_attrs["cost_s"] >= epoch_1 + sum(r["total_s"] for r in rows)
    # the same point, never stopped, in another study: the same fold scores
    run_tune(base, params, options("b"))
    (whole,) = _trials(tmp_path, "b")
    assert [r["objective"] for r in rows] == pytest.approx(
        [r["objective"] for r in whole.user_attrs["fold_rows"]], abs=1e-6
    )
    # a checkpoint that cannot be continued (here: damaged) is said, and the fold runs from the start
    with pytest.raises(_Stopped):
        run_tune(base, params, options("c"), run_fold=stopping)
    last = tmp_path / "c" / "trial0000" / "fold1" / "checkpoints" / "last.ckpt"
    last.write_bytes(b"not a checkpoint")
    events.clear()
    run_tune(base, params, options("c"), on_event=events.append)
    (refused,) = [e for e in events if e["kind"] == "resume"]
    assert "not a readable checkpoint" in refused["epochs"]
    assert _event_line(refused).startswith(
        "  trial #1 fold 1: trial #0's interrupted run cannot be continued"
    )
    assert [(e["fold"], e["epoch"]) for e in events if e["kind"] == "epoch"] == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
    ]


def test_stop_after_ends_the_study_at_a_fold_boundary_and_the_same_command_continues(
    ycor: Path, tmp_path: Path, caplog, capsys
) -> None:
    """``--stop-after``: past the time, the fold under way is the last one run; its trial is kept (failed,
    its folds stored, no Optuna traceback) and the next run continues it from the next fold."""
    from offroadseg.cli.tune import _event_line
    from offroadseg.experiments.tune import TuneOptions, run_tune

    base = _tiny_base(ycor)
    params = parse_space({"train.lr": {"choice": [0.3, 0.2]}})
    ran: list[int] = []
    slow = _fold_runner(0.4, ran=ran)

    def slow_fold(*args, **kwargs):
        time.sleep(0.6)
        return slow(*args, **kwargs)

    opts = TuneOptions(
        trials=2, folds=3, storage=f"sqlite:///{tmp_path / 'tune.db'}", study="t", work_dir=str(tmp_path)
    )
    opts.enqueue = [{"train.lr": 0.3}, {"train.lr": 0.2}]
    opts.stop_after = 0.5 / 60  # half a second: passes during fold 1
    events: list[dict] = []
    result = run_tune(base, params, opts, on_event=events.append, run_fold=slow_fold)
    assert ran == [1]
    trial = _trials(tmp_path, "t")[0]
    assert trial.state.name == "FAIL" and trial.user_attrs["stopped_after_folds"] == 1
    assert [r["fold"] for r in trial.user_attrs["fold_rows"]] == [1]
    (ended,) = [e for e in events if e["kind"] == "trial"]
    assert _event_line(ended).startswith(
        "[trial 0/2] #0 stopped after 1 fold(s) (--stop-after; kept, continued by the next run); "
    )
    assert result["stopped"].endswith(
        "trial #0 stopped after fold 1, its folds kept; the same command continues it"
    )
    assert "Trial 0 failed" not in capsys.readouterr().err
    ran.clear()
    opts.stop_after = None
    run_tune(base, params, opts, run_fold=_fold_runner(0.4, ran=ran))
    assert ran == [2, 3, 1, 2, 3]  # #0's retry from fold 2, then the second point
    retry = next(t for t in _trials(tmp_path, "t") if t.user_attrs.get("retry_of") == 0)
    kept = [r.get("reused_from") for r in retry.user_attrs["fold_rows"]]
    assert retry.state.name == "COMPLETE" and kept == [0, None, None]
    opts.stop_after = -1.0
    with pytest.raises(ConfigError, match="--stop-after -1 must be a number of minutes >= 0"):
        run_tune(base, params, opts, run_fold=_fold_runner(0.4))


def test_a_retry_is_not_pruned_again_on_the_folds_its_predecessor_cleared(ycor: Path, tmp_path: Path) -> None:
    """Trials that reached rung 1 after the predecessor passed it must not prune the retry at rung 1."""
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    from offroadseg.experiments.tune import TuneOptions, run_tune

    base = _tiny_base(ycor)
    params = parse_space({"train.lr": {"choice": [0.3, 0.2]}})
    ran: list[int] = []

    stopped_in_fold_2 = _fold_runner(0.3, stop_in_fold=2, total_s=1.0)
    fold = _fold_runner(0.3, ran=ran)

    opts = TuneOptions(
        trials=4, folds=3, storage=f"sqlite:///{tmp_path / 'tune.db'}", study="c", work_dir=str(tmp_path)
    )
    opts.enqueue = [{"train.lr": 0.3}]
    with pytest.raises(KeyboardInterrupt):
        run_tune(base, params, opts, run_fold=stopped_in_fold_2)  # alone at rung 1: it passed it
    study = optuna.load_study(study_name="c", storage=opts.storage)
    for _ in range(3):  # since then, three trials reached rung 1 far ahead of it
        study.add_trial(
            create_trial(
                params={"train.lr": 0.2},
                distributions={"train.lr": CategoricalDistribution([0.3, 0.2])},
                value=0.9,
                intermediate_values={1: 0.9},
                system_attrs={"completed_rung_0": 0.9},
            )
        )
    opts.trials = 4
    run_tune(base, params, opts, run_fold=fold)
    retry = next(t for t in _trials(tmp_path, "c") if t.user_attrs.get("retry_of") == 0)
    assert ran[:2] == [2, 3]  # it went on from fold 2 instead of being pruned on its reused fold 1
    assert retry.state.name == "COMPLETE"


def test_a_retry_runs_before_the_points_queued_ahead_of_it(ycor: Path, tmp_path: Path) -> None:
    """The trial a stopped study was in is the next to run, not the last: retries jump the queue."""
    from offroadseg.experiments.tune import TuneOptions, run_tune

    base = _tiny_base(ycor)
    params = parse_space({"train.lr": {"choice": [0.3, 0.2, 0.1]}})
    order: list[float] = []

    stopped = _fold_runner(0.5, stop_in_fold=1)  # the worker stops in the first trial's first fold

    def fold(cfg, fold, k, run_dir, *, keep_checkpoints, on_epoch=None, progress=None, resume_after=None):
        if fold.index == 0:
            order.append(round(cfg.train.lr, 1))
        return {"fold": fold.index + 1, "miou": 0.5, "per_class_iou": {"a": 0.5}}

    opts = TuneOptions(
        trials=3,
        folds=2,
        storage=f"sqlite:///{tmp_path / 'tune.db'}",
        study="q",
        work_dir=str(tmp_path),
        pruner="none",
    )
    opts.enqueue = [{"train.lr": 0.3}, {"train.lr": 0.2}, {"train.lr": 0.1}]
    with pytest.raises(KeyboardInterrupt):
        run_tune(base, params, opts, run_fold=stopped)
    assert [t.state.name for t in _trials(tmp_path, "q")] == ["FAIL", "WAITING", "WAITING"]
    run_tune(base, params, opts, run_fold=fold)
    assert order == [0.3, 0.2, 0.1]  # the retry (queued last, as trial #3) ran first
    retry = next(t for t in _trials(tmp_path, "q") if t.user_attrs.get("retry_of") == 0)
    assert retry.number == 3 and retry.state.name == "COMPLETE"


@pytest.mark.slow
def test_three_trials_leaderboard_plots_best_recipe_and_ensemble(ycor: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "board.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        argv = _argv(ycor, tmp_path, "--json", str(out), "--pruner", "none", "--ensemble-top", "2")
        assert main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out
    # the shared store is built once, in the first trial's first fold, and says so by trial and fold
    assert re.search(
        r"^trial #0 fold 1/2: backbone pass \(feature cache\): \d+/\d+ img done in ", captured.err, re.M
    )
    assert captured.err.count("backbone pass (feature cache)") == 1
    assert (
        "[trial 1/3]" in printed
        and "[trial 3/3]" in printed
        and "ETA" in printed
        and "best so far" in printed
    )
    assert "fold 1/2 (rung 1)" in printed and "ensemble fold 2/2" in printed
    res = json.loads(out.read_text())
    rows = res["leaderboard"]
    assert res["complete"] == 3 and [r["state"] for r in rows] == ["complete"] * 3
    for r in rows:  # a complete trial's CV mean is the mean of its folds' values, best first
        assert r["folds_run"] == 2 and r["cv_mean"] == pytest.approx(sum(r["fold_values"]) / 2)
        assert f"trial #{r['trial']} starts: " in printed
        for fold, value in enumerate(r["fold_values"], start=1):  # a line per epoch (1 epoch, no TTA)
            line = f"trial #{r['trial']} fold {fold}/2 epoch 1/1: val mIoU {value:.4f} "
            assert re.search(re.escape(line) + r"\((\d+ s|\d+\.\d min) an epoch\)\n", printed)
    assert [r["cv_mean"] for r in rows] == sorted((r["cv_mean"] for r in rows), reverse=True)
    ens = res["ensemble"]
    assert ens["members"] == [rows[0]["trial"], rows[1]["trial"]] and len(ens["fold_values"]) == 2
    assert ens["cv_mean"] == pytest.approx(sum(ens["fold_values"]) / 2)
    board = tmp_path / "runs" / "s"
    assert (board / "leaderboard.md").read_text().count("\n| ") >= 3 and "Ensemble of trials" in (
        board / "leaderboard.md"
    ).read_text()
    assert (board / "leaderboard.csv").read_text().splitlines()[0].startswith("trial,state,cv_mean,cv_std")
    assert (board / "history.png").stat().st_size > 5000 and (board / "importance.png").stat().st_size > 5000
    # the best recipe is a small diff on the base that trains as is
    best = (board / "best.yaml").read_text()
    assert best.count("base: ") == 1 and "head:" in best and "lr:" in best
    from offroadseg.config import load_config

    cfg = load_config(board / "best.yaml")
    top = res["best"]
    assert (
        cfg.train.lr == pytest.approx(top["params"]["train.lr"])
        and cfg.model.head.name == top["params"]["model.head.name"]
    )
    assert cfg.data.root == str(ycor) and cfg.model.backbone.name == "dinov2_test"
    # each scored trial is a config file too (the finalists' unpruned re-run: `cv` on these files)
    assert sorted(res["trial_configs"]) == sorted(str(r["trial"]) for r in rows)
    for r in rows:
        trial_cfg = load_config(res["trial_configs"][str(r["trial"])])
        assert trial_cfg.train.lr == pytest.approx(r["params"]["train.lr"])
    # run again: the study is already at N, nothing more runs
    assert main(_argv(ycor, tmp_path)) == 0
    assert len(_trials(tmp_path)) == 3


def _spawn(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    code = "import sys; from offroadseg.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(pred, timeout: float = 600.0) -> None:
    """Until ``pred()`` holds: a precondition, not a timing check (a worker at nice 19 beside a study on 2
    cores took over 120 s to reach its second trial), so the limit only stops a worker that never gets there."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            if pred():
                return
        except Exception:  # noqa: BLE001 - the database may not exist yet
            pass
        time.sleep(0.3)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_kill_9_then_the_same_command_continues_the_study(ycor: Path, tmp_path: Path) -> None:
    argv = _argv(ycor, tmp_path, "--pruner", "none", trials=3)
    proc = _spawn(argv)
    # kill -9 while trial 1 runs (trial 0 complete), once the worker has recorded its pid on it (a kill in
    # the instant between ask and that record leaves a trial only the heartbeat's grace period recovers)
    _wait_for(
        lambda: any(
            t.number == 1 and t.state.name == "RUNNING" and "pid" in t.user_attrs for t in _trials(tmp_path)
        )
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: (t.state.name, t.value) for t in _trials(tmp_path)}
    assert before[0][0] == "COMPLETE" and before[1] == ("RUNNING", None)
    again = _spawn(argv)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert "trials [1] of a dead worker marked failed; failed trials [1] queued again" in out, out
    trials = {t.number: t for t in _trials(tmp_path)}
    assert (trials[0].state.name, trials[0].value) == before[0]  # the completed trial is kept as it was
    assert trials[1].state.name == "FAIL"
    retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == trials[1].params
    assert sum(t.state.name == "COMPLETE" for t in trials.values()) == 3  # the study continued to N


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(ycor: Path, tmp_path: Path) -> None:
    argv = _argv(ycor, tmp_path, "--pruner", "none", trials=4, study="shared")
    workers = [_spawn(argv) for _ in range(2)]
    outs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    trials = _trials(tmp_path, "shared")
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    pids = {t.user_attrs["pid"] for t in complete}
    assert pids == {w.pid for w in workers}  # the trials were split between the two workers
    # none ran twice: every trial folder holds one trial's folds, written by one worker
    folders = sorted(p.name for p in (tmp_path / "runs" / "shared").glob("trial*"))
    assert folders == sorted(f"trial{t.number:04d}" for t in trials if t.user_attrs.get("pid"))
    assert all(not t.user_attrs.get("surplus") for t in complete)


def test_recovery_reports_which_dead_trials_are_queued_again_and_which_are_at_the_retry_limit() -> None:
    """A dead trial is queued again unless its chain of retries is already MAX_RETRIES long; both are said."""
    import socket

    from offroadseg.experiments.tune_store import MAX_RETRIES, recover_trials

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid whose process is gone
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    asked = []
    for depth in (0, MAX_RETRIES):
        t = study.ask(dist)
        asked.append(t.params)
        for key, value in {"pid": gone.pid, "host": socket.gethostname(), "retry_depth": depth}.items():
            t.set_user_attr(key, value)
    got = recover_trials(study)
    assert got == {"failed": [0, 1], "requeued": [0], "at_limit": [1]}
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [
        (t.system_attrs["fixed_params"], t.user_attrs["retry_of"], t.user_attrs["retry_depth"])
        for t in waiting
    ] == [(asked[0], 0, 1)]
    assert recover_trials(study) == {"failed": [], "requeued": [], "at_limit": []}  # nothing twice
    # a trial failed by hand to take it off the queue stays off it
    t = study.ask(dist)
    t.set_user_attr("dequeued_by_hand", "the sampler proposes anew")
    study.tell(t, state=optuna.trial.TrialState.FAIL)
    assert recover_trials(study) == {"failed": [], "requeued": [], "at_limit": []}


def test_a_trial_whose_pid_went_to_a_later_process_is_dead() -> None:
    """A pid alone does not name a process once a later one gets it: a running trial recorded with this
    process's pid but another start time (its worker died, the pid was given again) is recovered; one
    recorded with this process's own start time, or with no start time (older trials), is not."""
    import socket

    from offroadseg.experiments.tune_store import recover_trials
    from offroadseg.processes import process_start

    started = process_start(os.getpid())
    if started is None:
        pytest.skip("no /proc on this system: the pid alone decides")
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for start in (started - 1, started, None):
        t = study.ask(dist)
        for key, value in {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": start}.items():
            t.set_user_attr(key, value)
    assert recover_trials(study)["failed"] == [0]


def test_a_retry_that_scored_a_fold_of_its_own_starts_a_new_count_of_retries() -> None:
    """The retry limit stops a trial that dies again and again, not one stopped between sessions after it
    scored a new fold: that one is queued again (depth 1) even at MAX_RETRIES; one whose only scored
    folds were kept from its predecessor is not."""
    import socket

    from offroadseg.experiments.tune_store import MAX_RETRIES, recover_trials

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    kept = {"fold": 1, "objective": 0.5, "reused_from": 7}
    own = {"fold": 2, "objective": 0.4}
    unscored = {"fold": 3, "objective": None}
    for rows in ([kept, own], [kept], [kept, unscored]):
        t = study.ask(dist)
        attrs = {"pid": gone.pid, "host": socket.gethostname(), "retry_depth": MAX_RETRIES, "fold_rows": rows}
        for key, value in attrs.items():
            t.set_user_attr(key, value)
    assert recover_trials(study) == {"failed": [0, 1, 2], "requeued": [0], "at_limit": [1, 2]}
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [(t.user_attrs["retry_of"], t.user_attrs["retry_depth"]) for t in waiting] == [(0, 1)]


def test_the_shipped_seed_points_fit_the_shipped_space_and_config() -> None:
    """Every point of configs/spaces/ycor_seed.yaml names every key of configs/spaces/ycor.yaml, lies inside
    its distributions (else Optuna would refuse it mid-study) and gives a config configs/ycor.yaml accepts."""
    import yaml

    from offroadseg.config import config_from_dict, read_config_dict
    from offroadseg.experiments.space import decode_choice, encode_choice

    base = read_config_dict(str(REPO / "configs" / "ycor.yaml"))
    params = {p.key: p for p in load_space(REPO / "configs" / "spaces" / "ycor.yaml", base)}
    points = yaml.safe_load((REPO / "configs" / "spaces" / "ycor_seed.yaml").read_text())
    assert len(points) >= 10
    for point in points:
        assert set(point) == set(params), point
        for key, value in point.items():
            p = params[key]
            if p.kind == "choice":
                assert value in [decode_choice(c) for c in p.choices], (key, value)
            else:
                assert p.low <= value <= p.high, (key, value)
        config_from_dict(apply_params(base, {k: encode_choice(v) for k, v in point.items()}), source="seed")

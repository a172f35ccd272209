"""The leaderboard compares unfinished trials with the leader on the folds both ran (known answers)."""

from __future__ import annotations

import pytest

from offroadseg.experiments.leaderboard import leaderboard_markdown, leaderboard_rows, same_folds_delta

optuna = pytest.importorskip("optuna")


def _folds(*values: float) -> list[dict]:
    return [{"fold": i, "objective": v} for i, v in enumerate(values, 1)]


def _adder(study, dists: dict):
    """``add(state, value, params, folds, **user_attrs)``: a finished trial with its fold rows."""
    from optuna.trial import create_trial

    def add(state, value, params: dict, folds: list[dict], **attrs) -> None:
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params=params,
                distributions=dists,
                user_attrs={"fold_rows": folds, **attrs},
            )
        )

    return add


def test_same_folds_delta_known_answer() -> None:
    leader = {1: 0.50, 2: 0.30, 3: 0.40}
    assert same_folds_delta({1: 0.55}, leader) == pytest.approx(0.05)
    assert same_folds_delta({1: 0.45, 2: 0.40}, leader) == pytest.approx(0.425 - 0.40)
    assert same_folds_delta({4: 0.9}, leader) is None


def test_rows_rank_complete_first_and_show_queued_values_and_differences() -> None:
    from optuna.distributions import CategoricalDistribution, IntDistribution
    from optuna.trial import TrialState

    dists = {"train.epochs": IntDistribution(1, 9), "model.head.name": CategoricalDistribution(["a", "b"])}
    study = optuna.create_study(direction="maximize")
    add = _adder(study, dists)

    add(TrialState.COMPLETE, 0.40, {"train.epochs": 5, "model.head.name": "a"}, _folds(0.5, 0.3, 0.4))
    add(TrialState.COMPLETE, 0.35, {"train.epochs": 2, "model.head.name": "a"}, _folds(0.4, 0.3, 0.35))
    add(
        TrialState.PRUNED,
        0.55,
        {"train.epochs": 5, "model.head.name": "b"},
        _folds(0.55),
        pruned_after_folds=1,
    )
    study.enqueue_trial({"train.epochs": 9, "model.head.name": "b"})
    rows = leaderboard_rows(study)
    assert [r["trial"] for r in rows[:2]] == [0, 1]  # complete by CV mean, the 1-fold 0.55 after them
    pruned = next(r for r in rows if r["trial"] == 2)
    assert pruned["vs_leader_same_folds"] == pytest.approx(0.05) and pruned["leader"] == 0
    assert rows[1]["vs_leader_same_folds"] == pytest.approx(-0.05)
    waiting = next(r for r in rows if r["state"] == "waiting")
    assert waiting["params"] == {"train.epochs": 9, "model.head.name": "b"}
    md = leaderboard_markdown(rows)
    assert "vs #0, same folds" in md and "+5.0 pt" in md and "-5.0 pt" in md
    assert "| as #0 but model.head.name=b |" not in md  # the cell drops the "model." prefix
    assert "| as #0 but head.name=b |" in md and "as #0 but head.name=b, train.epochs=9" in md


def test_a_retry_chain_is_one_row_and_the_trials_it_took_over_rank_last() -> None:
    """#0 fails after 2 folds, #1 retries it and is stopped, #2 (retry of #0 again) completes 3 folds; #3 was
    dequeued by hand before it ran. Only #2 stands for the chain; the others say which trial took over."""
    from optuna.distributions import IntDistribution
    from optuna.trial import TrialState

    study = optuna.create_study(direction="maximize")
    epochs_trial = _adder(study, {"train.epochs": IntDistribution(1, 9)})

    def add(state, value, epochs: int, folds: list[dict], **attrs) -> None:
        epochs_trial(state, value, {"train.epochs": epochs}, folds, **attrs)

    add(TrialState.FAIL, None, 5, _folds(0.5, 0.3))
    add(TrialState.FAIL, None, 5, _folds(0.5, 0.3), retry_of=0)
    add(TrialState.COMPLETE, 0.4, 5, _folds(0.5, 0.3, 0.4), retry_of=1)
    add(TrialState.FAIL, None, 2, [], dequeued_by_hand="to let another run first")
    add(TrialState.PRUNED, 0.35, 2, _folds(0.35), retry_of=3, pruned_after_folds=1)
    add(TrialState.COMPLETE, 0.2, 7, _folds(0.2, 0.2, 0.2))
    add(TrialState.FAIL, None, 9, _folds(0.45, 0.25, 0.5))
    add(TrialState.PRUNED, 0.45, 9, _folds(0.45), retry_of=6, pruned_after_folds=1)
    study.enqueue_trial({"train.epochs": 9}, user_attrs={"retry_of": 6})
    rows = leaderboard_rows(study)
    assert [r["trial"] for r in rows] == [2, 5, 6, 4, 8, 0, 1, 7, 3]
    by = {r["trial"]: r for r in rows}
    assert by[7]["state"] == "pruned after 1 fold(s), see #6"  # a later retry with fewer folds
    assert by[8]["state"] == "waiting" and by[8]["retried_as"] is None  # the chain's next step
    assert by[0]["state"] == "fail after 2 fold(s), retried as #2" and by[0]["retried_as"] == 2
    assert by[1]["retried_as"] == 2 and by[2]["retried_as"] is None
    assert by[3]["state"] == "dequeued by hand, retried as #4"
    assert by[4]["state"] == "pruned after 1 fold(s)" and by[5]["retried_as"] is None

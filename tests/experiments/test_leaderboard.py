"""The leaderboard compares unfinished trials with the leader on the folds both ran (known answers)."""

from __future__ import annotations

import pytest

from offroadseg.experiments.leaderboard import leaderboard_markdown, leaderboard_rows, same_folds_delta

optuna = pytest.importorskip("optuna")


def _folds(*values: float) -> list[dict]:
    return [{"fold": i, "objective": v} for i, v in enumerate(values, 1)]


def test_same_folds_delta_known_answer() -> None:
    leader = {1: 0.50, 2: 0.30, 3: 0.40}
    assert same_folds_delta({1: 0.55}, leader) == pytest.approx(0.05)
    assert same_folds_delta({1: 0.45, 2: 0.40}, leader) == pytest.approx(0.425 - 0.40)
    assert same_folds_delta({4: 0.9}, leader) is None


def test_rows_rank_complete_first_and_show_queued_values_and_differences() -> None:
    from optuna.distributions import CategoricalDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    dists = {"train.epochs": IntDistribution(1, 9), "model.head.name": CategoricalDistribution(["a", "b"])}
    study = optuna.create_study(direction="maximize")

    def add(state, value, params, folds, **attrs):
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params=params,
                distributions=dists,
                user_attrs={"fold_rows": folds, **attrs},
            )
        )

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

"""Where a ``tune`` study lives: its database, its fingerprint, and the recovery of dead workers' trials.

A study remembers the base config, the space, the folds and the excluded classes it was made with (its
fingerprint); opening it with another is refused, so trials always compare. Workers record host, process
id and a heartbeat on each running trial: a trial whose worker is gone is failed and its values queued
again (:func:`recover_trials`), carrying the folds it finished (``retry_of``) so the retry reuses them.
A queued retry runs before the other queued trials (:func:`retries_first`): the trial that was under way
when a study stopped is the next one to finish, not the last.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from offroadseg.config import config_from_dict
from offroadseg.errors import ConfigError
from offroadseg.experiments.space import Param
from offroadseg.processes import pid_alive

__all__ = [
    "OBJECTIVE",
    "counted",
    "finished_folds",
    "fingerprint",
    "inherit_rungs",
    "open_study",
    "predecessor",
    "recover_trials",
    "retries_first",
]

OBJECTIVE = "grouped-CV mean mIoU"
HEARTBEAT_S = 30
GRACE_S = 120
MAX_RETRIES = 2


def fingerprint(base: dict, params: Sequence[Param], folds: int, exclude: Sequence[str]) -> dict:
    space = {p.key: p.to_dict() for p in params}
    return {"config": base, "space": space, "folds": folds, "exclude": sorted(exclude)}


def _same(key: str, saved: Any, current: Any) -> bool:
    """Fingerprint parts agree; configs are compared resolved, so a file rewritten as ``base:`` + a diff
    (or with defaults spelled out) is the same config."""
    if key == "config":
        try:
            return _canon(config_from_dict(saved or {}).to_dict()) == _canon(
                config_from_dict(current).to_dict()
            )
        except ConfigError:
            return False
    return _canon(saved) == _canon(current)


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def open_study(
    storage_url: str,
    name: str,
    *,
    fingerprint: dict | None,
    seed: int = 0,
    pruner: str = "sha",
    create: bool = True,
):
    """Open (or create) a study; a study of the same name made for another config/space is refused.

    ``create=False`` opens only a study that exists (a report of it): a missing database file or study
    name is a one-line error, and nothing is written to the database."""
    import optuna  # noqa: PLC0415

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not create and storage_url.startswith("sqlite:///"):
        path = Path(storage_url[len("sqlite:///") :])
        if not path.is_file():
            raise ConfigError(
                f"--storage {storage_url}: no database at {path}; fix: the --storage of the study's own "
                f"command (--report reads a study, it starts none)"
            )
    storage = _storage(storage_url)
    if not create:
        names = [s.study_name for s in storage.get_all_studies()]
        if name not in names:
            raise ConfigError(
                f"--study {name!r} is not in {storage_url} (it holds {', '.join(map(repr, names)) or 'no study'}); "
                f"fix: the --study of the study's own command (--report reads a study, it starts none)"
            )
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=8)
    if pruner == "sha":
        pruner_obj = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    elif pruner == "hyperband":
        pruner_obj = optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    elif pruner == "none":
        pruner_obj = optuna.pruners.NopPruner()
    else:
        raise ConfigError(f"--pruner {pruner!r} is not one of sha, hyperband, none")
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=sampler,
        pruner=pruner_obj,
        load_if_exists=True,
    )
    if fingerprint is not None:
        saved = study.user_attrs.get("fingerprint")
        if saved is None and not create:
            raise ConfigError(
                f"study {name!r} in {storage_url} was not made by offroadseg tune (it has no fingerprint); "
                f"fix: optuna-dashboard {storage_url} shows any Optuna study"
            )
        if saved is None:
            study.set_user_attr("fingerprint", json.loads(_canon(fingerprint)))
            study.set_user_attr("objective", OBJECTIVE)
        else:
            diff = [
                k
                for k in ("config", "space", "folds", "exclude")
                if not _same(k, saved.get(k), fingerprint[k])
            ]
            if diff:
                fix = (
                    "pass a new --study NAME (the existing study is kept as it is)"
                    if create
                    else "the config, overrides, --space, --folds and --exclude-classes of the study's own command"
                )
                raise ConfigError(
                    f"study {name!r} in {storage_url} was made with another {' and '.join(diff)}; its trials "
                    f"would not compare; fix: {fix}"
                )
    retries_first(study)
    return study


def retries_first(study) -> None:
    """Make ``study`` take a queued retry before the other queued trials.

    Optuna takes queued (WAITING) trials in trial-number order, and a retry is queued when its
    predecessor is found dead, so it would wait behind every point enqueued before it -- the trial a
    stopped study was half-way through would be the last to finish. This replaces the study's queue
    pop (``Study._pop_waiting_trial_id``, which ``ask`` calls) with one that takes retries first, then
    the rest by number; claiming a trial stays the storage's atomic WAITING -> RUNNING update, so two
    workers never take the same one. Where Optuna has no such method the default order is kept.
    """
    import optuna  # noqa: PLC0415
    from optuna.trial import TrialState  # noqa: PLC0415

    if not callable(getattr(study, "_pop_waiting_trial_id", None)):
        return
    storage = study._storage

    def pop() -> int | None:
        waiting = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
        for t in sorted(waiting, key=lambda t: ("retry_of" not in t.user_attrs, t.number)):
            try:
                if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    return t._trial_id
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    study._pop_waiting_trial_id = pop


def _storage(url: str):
    import optuna  # noqa: PLC0415

    if "://" not in url:
        raise ConfigError(
            f"--storage {url!r} is not a database URL; fix: sqlite:///runs/tune.db (one machine) or "
            f"postgresql://user:password@host/db (several machines)"
        )
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if str(path) not in ("", ":memory:"):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"--storage {url}: cannot create {path.parent}: {exc.strerror}") from None
    for attempt in range(10):
        try:
            with _creation_lock(url), warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", optuna.exceptions.ExperimentalWarning
                )  # heartbeat: stable in use
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
                )
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"--storage {url}: the database driver {exc.name!r} is not installed; fix: pip install "
                f"{'psycopg2-binary' if 'postgres' in url else exc.name}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy's many URL / connection errors
            # two workers creating a new database at once: one sees the other's tables mid-creation
            racing = any(m in str(exc) for m in ("already exists", "UNIQUE constraint", "duplicate key"))
            if racing and attempt < 9:
                time.sleep(0.2 + 0.3 * attempt)
                continue
            raise ConfigError(
                f"--storage {url}: cannot open the database ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
            ) from None
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _creation_lock(url: str):
    """One process at a time creates a local SQLite study database (its tables and version row)."""
    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        yield
        return
    import fcntl  # noqa: PLC0415 (POSIX; a lock file beside the database)

    lock = Path(url[len("sqlite:///") :] + ".lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def recover_trials(study) -> dict[str, list[int]]:
    """Fail the trials whose worker is gone and queue their values again.

    A running trial is dead when it ran on this host and its process is gone (the pid, and the start time
    recorded with it where there is one), or (any host) when
    its heartbeat is older than the grace period. A failed trial is queued again once (up to
    ``MAX_RETRIES`` times along one chain of retries that scored no new fold: a trial that scored a fold
    of its own before it died made progress, so its retry starts a new count; a study stopped between
    sessions while a long trial runs resumes however many sessions the trial takes); surplus and
    finished trials never are, nor one failed by hand with the user attribute ``dequeued_by_hand``
    (taken off the queue on purpose).

    Returns:
        ``failed``: the trials this call marked failed; ``requeued``: the failed trials whose values
        it queued again; ``at_limit``: the trials it marked failed that are not queued again because
        their chain of retries is ``MAX_RETRIES`` long without a new fold.
    """
    import optuna  # noqa: PLC0415
    from optuna.trial import TrialState  # noqa: PLC0415

    storage = study._storage
    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, on, started = t.user_attrs.get("pid"), t.user_attrs.get("host"), t.user_attrs.get("pid_start")
        # the pid and its process's start time: a pid alone may have gone to a later process (this one too)
        if on == host and isinstance(pid, int) and not pid_alive(pid, started):
            try:
                storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                failed.append(t.number)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    requeued, at_limit = [], []
    for t in trials:
        if t.state != TrialState.FAIL or t.number in retried or t.user_attrs.get("surplus"):
            continue
        if t.user_attrs.get("dequeued_by_hand"):
            continue
        # the limit guards against a trial that dies again and again: one that scored a fold of its own
        # before it stopped (a study stopped between sessions) made progress, so its chain starts anew
        depth = 0 if _scored_own_fold(t) else int(t.user_attrs.get("retry_depth", 0))
        if depth >= MAX_RETRIES or not t.params:
            if t.number in failed:
                at_limit.append(t.number)
            continue
        study.enqueue_trial(
            dict(t.params), user_attrs={"retry_of": t.number, "retry_depth": depth + 1}, skip_if_exists=False
        )
        requeued.append(t.number)
    return {"failed": failed, "requeued": requeued, "at_limit": at_limit}


def _scored_own_fold(trial) -> bool:
    """The trial scored at least one fold itself (not one kept from the trial it retries)."""
    return any(
        r.get("objective") is not None and r.get("reused_from") is None
        for r in trial.user_attrs.get("fold_rows") or []
    )


def counted(trial) -> bool:
    """A trial that counts toward N: complete, or pruned (infeasible included), never a surplus one."""
    from optuna.trial import TrialState  # noqa: PLC0415

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and not trial.user_attrs.get("surplus")


def predecessor(study, trial):
    """The failed trial ``trial`` retries (``retry_of``), when it ran the same values; else None."""
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is None:
        return None
    origin = next((t for t in study.get_trials(deepcopy=False) if t.number == retry_of), None)
    if origin is None or dict(origin.params) != dict(trial.params):
        return None
    return origin


def inherit_rungs(study, trial) -> None:
    """Give a retry its predecessor's pruning state (the ``completed_rung_*`` marks successive halving and
    Hyperband keep per trial), so that it goes on from the rung its predecessor reached instead of being
    judged again at rung 0 against the trials that reached it since."""
    origin = predecessor(study, trial)
    if origin is None:
        return
    for key, value in origin.system_attrs.items():
        if key.startswith("completed_rung_"):
            study._storage.set_trial_system_attr(trial._trial_id, key, value)


def finished_folds(study, trial) -> dict[int, dict]:
    """The folds a retried trial's failed predecessor finished, ``{fold number: its fold row}``.

    A retry has the same values on the same folds (the fingerprint holds the base, the space and the
    folds), so a fold its predecessor finished (trained, scored and stored) is reused, not re-run: a study
    stopped mid-trial loses at most the fold that was running. Follows a chain of retries.
    """
    origin = predecessor(study, trial)
    if origin is None:
        return {}
    return {
        int(r["fold"]): r for r in origin.user_attrs.get("fold_rows") or [] if r.get("objective") is not None
    }
